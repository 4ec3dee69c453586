//! Operations: what lets an IT team run and watch the connector (systemd integration; health and metrics
//! endpoints arrive with the operations issue).

pub mod files;
pub mod http;
pub mod logging;
pub mod notify;
