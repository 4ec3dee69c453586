//! York Hub connector: maps partners' records to UK Core FHIR R4 and (later stages) syncs them to the central
//! record (Cito) and the patient-held record (PKB). The binary in `main.rs` is a thin shell over this library,
//! so integration tests and benchmarks run the same code.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod conflict;
pub mod context;
pub mod daemon;
pub mod deliver;
pub mod feed;
pub mod ingest;
pub mod mapping;
pub mod model;
pub mod ops;
pub mod plan;
pub mod policy;
pub mod quarantine;
pub mod reconcile;
pub mod schedule;
pub mod store;
pub mod sync;
pub mod validate;
