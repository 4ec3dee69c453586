//! York Hub connector: maps partners' records to UK Core FHIR R4 and syncs them to the central record (Cito)
//! and the patient-held record (PKB), reads back what others changed there, and feeds the unified record back
//! to partners. The binary in `main.rs` is a thin shell over this library, so integration tests and benchmarks
//! run the same code.
//!
//! # Layout, in pipeline order
//!
//! - [`model`]: the shared vocabulary (record kinds, categories, consent decisions, audit actions, conflict
//!   statuses, job names, FHIR systems). It imports nothing from the crate; everything may use it.
//! - [`config`]: the TOML file, typed as it is read (schedules, time zone, addresses).
//! - [`source`]: where a partner's exports come from each cycle: a fixed file, an inbox folder (each new
//!   complete file once, oldest first, then archived), a partner API (pages spooled); snapshots compared.
//! - [`ingest`]: partner exports (CSV, XLSX, JSON, NDJSON) read into rows, defensively.
//! - [`mapping`]: declarative mappings compiled once (templates into JSON writers checked against FHIR R4 at
//!   load); rows mapped to FHIR resources or quarantined.
//! - [`validate`]: checks on every produced resource (the typed FHIR check is the `fhir-check` crate).
//! - [`quarantine`]: rows that could not be mapped, kept for an admin.
//! - [`policy`]: the sharing rules: may this resource go to this destination, and on what basis.
//! - [`store`]: the durable state (ledger, outbox, audit, consent, conflicts, jobs), SQLite or PostgreSQL.
//! - [`context`]: what every stage above the store works with, built whole from one configuration.
//! - [`plan`]: planning: consent read first, then per chunk of mapped resources and per destination decide
//!   (the sharing rules), shape, compare with the ledger, record the outbox.
//! - [`deliver`]: draining an outbox to a destination (bundles, retries, Patient matching, merges).
//! - [`conflict`]: the three-way comparison of a resource changed on both sides.
//! - [`reconcile`]: proving each destination holds what it should; reading back others' changes (pull);
//!   an admin's resolution of a conflict.
//! - [`feed`]: partner feeds of the unified record.
//! - [`sync`]: the orchestrator: a cycle of ingest, planning and delivery over a [`context::Context`].
//! - [`schedule`]: cron schedules across clock changes, and the scheduler that runs the jobs.
//! - [`ops`]: systemd notify, health and metrics endpoints, logging, safe file writes.
//! - [`daemon`]: `connector run`: the jobs on their schedules, reloads, shutdown.
//! - [`cli`]: the admin's commands; [`build_info`]: what this binary is (`connector --version`).
//!
//! Only [`daemon`] and [`cli`] use [`sync`]; `scripts/import-graph.py` checks that no module imports one
//! that imports it back.
#![forbid(unsafe_code)]

pub mod build_info;
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
pub mod source;
pub mod store;
pub mod sync;
pub mod validate;
