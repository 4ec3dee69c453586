//! The transport seam: how writes reach a destination. FHIR REST is the one transport today; another (a
//! document upload, HL7 v2) is one new implementation of `Transport` in one file, and one `TransportKind`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::Value;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One write in a batch.
#[derive(Debug, Clone)]
pub struct Write {
    pub resource_type: String,
    /// The id on the destination (ours, unless we linked to someone else's resource).
    pub id: String,
    pub method: Method,
    pub body: Option<Value>,
    /// The version we last wrote, so the destination refuses the write if someone changed it since.
    pub if_match: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Put,
    Delete,
}

/// What the destination says about one accepted write.
#[derive(Debug, Clone, Default)]
pub struct Written {
    pub version_id: Option<String>,
}

/// A resource found on the destination by search.
#[derive(Debug, Clone)]
pub struct Found {
    pub id: String,
    pub version_id: Option<String>,
    pub resource: Value,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// Worth trying again: network errors, timeouts, 408, 429, 5xx.
    #[error("{message}")]
    Transient { message: String, retry_after: Option<Duration> },
    /// The destination refused the batch for good (a 4xx other than 408, 409-on-busy, 412, 429).
    #[error("rejected with {status}: {message}")]
    Rejected { status: u16, message: String, outcome: Option<Value> },
    /// `If-Match` failed: someone changed the resource since our last write.
    #[error("changed on the destination since the connector last wrote it (412)")]
    PreconditionFailed { outcome: Option<Value> },
    /// The connector itself cannot talk to the destination (bad configuration, credentials).
    #[error("{0}")]
    Setup(String),
}

impl TransportError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A way of delivering resources to a destination.
pub trait Transport: Send + Sync {
    /// Sends writes as one unit (a FHIR transaction): all are applied or none.
    fn send<'a>(&'a self, writes: &'a [Write]) -> BoxFuture<'a, Result<Vec<Written>, TransportError>>;
    /// Finds resources of a type by identifier (`system|value`).
    fn find<'a>(
        &'a self,
        resource_type: &'a str,
        identifier: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Found>, TransportError>>;
    /// Reads one resource; `None` when it does not exist (or was deleted).
    fn read<'a>(&'a self, resource_type: &'a str, id: &'a str) -> BoxFuture<'a, Result<Option<Found>, TransportError>>;
    /// Reads one version of a resource; `None` when the destination does not have it (any more).
    fn vread<'a>(
        &'a self,
        resource_type: &'a str,
        id: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Option<Found>, TransportError>>;
    /// Reads a page of a search or history: a path relative to the base (`Patient?_count=500`), or the
    /// `next` link of the page before (which must point at the same server).
    fn page<'a>(&'a self, path_or_link: &'a str) -> BoxFuture<'a, Result<Value, TransportError>>;
}
