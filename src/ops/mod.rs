//! Operations: what lets an IT team run and watch the connector: systemd's notify protocol, the health and
//! metrics endpoints and the metrics behind them, logging, and safe writes of files an admin asked for.

pub mod files;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod notify;
