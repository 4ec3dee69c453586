//! The transport seam: how writes reach a destination. FHIR REST is the one transport today; another (a
//! document upload, HL7 v2) is one new implementation of `Transport` in one file, and one `TransportKind`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::Value;
use serde_json::value::RawValue;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One write in a batch.
#[derive(Debug, Clone)]
pub struct Write {
    pub resource_type: String,
    /// The id on the destination (ours, unless we linked to someone else's resource).
    pub id: String,
    pub method: Method,
    pub body: Option<Body>,
    /// The version we last wrote, so the destination refuses the write if someone changed it since.
    pub if_match: Option<String>,
}

/// The resource a write sends, kept as the JSON text it goes out as: a batch holds hundreds of them until
/// its bundle lands, and parsed trees would take several times the text's memory. What the ledger records of
/// it is taken from the tree it was written from, which is then dropped; the paths that work on the resource
/// itself (merging, HL7 v2 messages) parse it again.
#[derive(Debug, Clone)]
pub struct Body {
    json: Box<RawValue>,
    /// [`crate::conflict::content_hash`] of the resource: the intent's and, once it lands, the ledger's
    /// `held_hash`.
    hash: String,
    /// Its elements' salted fingerprints ([`crate::conflict::fingerprints`], encoded): the ledger's `source_fp`
    /// when the resource is the partner's version.
    fingerprints: String,
}

impl Body {
    /// The body for `resource`, its fingerprints salted with `salt` (the destination's).
    pub fn new(resource: &Value, salt: &str) -> Result<Self, serde_json::Error> {
        Ok(Self {
            json: serde_json::value::to_raw_value(resource)?,
            hash: crate::conflict::content_hash(resource),
            fingerprints: crate::conflict::encode(&crate::conflict::fingerprints(salt, resource)),
        })
    }
    /// The resource's JSON text, as sent.
    pub fn json(&self) -> &RawValue {
        &self.json
    }
    pub fn hash(&self) -> &str {
        &self.hash
    }
    pub fn fingerprints(&self) -> &str {
        &self.fingerprints
    }
    /// The resource, parsed again from its text.
    pub fn resource(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(self.json.get())
    }
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

/// Why a call to a destination failed. The `Display` text is safe for logs: it names statuses and
/// OperationOutcome issue codes, never a URL or the server's own words (which often quote the refused
/// resource); [`TransportError::full_text`] adds those for the outbox's `last_error` and dead letters.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// Worth trying again: network errors, timeouts. The message is safe to log (no URL, no server text).
    #[error("{message}")]
    Transient { message: String, retry_after: Option<Duration> },
    /// Worth trying again: the server answered 408, 429 or 5xx.
    #[error("{message}")]
    Unavailable {
        /// The status and OperationOutcome issue codes: safe to log.
        message: String,
        /// The server's own text, for `last_error` only.
        detail: String,
        retry_after: Option<Duration>,
    },
    /// The destination refused the batch for good (a 4xx other than 408, 409-on-busy, 412, 429).
    #[error("rejected with {status}{}", codes(outcome.as_ref()))]
    Rejected {
        status: u16,
        /// The server's own text, for the dead letter only.
        message: String,
        outcome: Option<Value>,
    },
    /// `If-Match` failed: someone changed the resource since our last write.
    #[error("changed on the destination since the connector last wrote it (412)")]
    PreconditionFailed { outcome: Option<Value> },
    /// The connector itself cannot talk to the destination (bad configuration, credentials).
    #[error("{0}")]
    Setup(String),
    /// The daemon is stopping: a retry's backoff was cut short. Nothing failed; the rows stay as they
    /// were (their leases are released on the way out).
    #[error("stopped before trying again: the connector is shutting down")]
    Stopped,
}

fn codes(outcome: Option<&Value>) -> String {
    let codes = super::http::issue_codes(outcome);
    if codes.is_empty() { String::new() } else { format!(" (issue codes: {})", codes.join(", ")) }
}

impl TransportError {
    /// A transient failure with a message safe to log.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::Transient { message: message.into(), retry_after: None }
    }
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. } | Self::Unavailable { .. })
    }
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } | Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
    /// The message with the server's own text, capped: for `last_error` and dead letters in the state
    /// store (shown by `connector outbox list`), never for logs.
    pub fn full_text(&self) -> String {
        let detail = match self {
            Self::Unavailable { detail, .. } => detail.as_str(),
            Self::Rejected { message, .. } => message.as_str(),
            _ => "",
        };
        if detail.is_empty() {
            return self.to_string();
        }
        let detail: String = detail.chars().take(2000).collect();
        format!("{self}: {detail}")
    }
}

/// What a destination can do besides being written to. FHIR servers can do everything; an HL7 v2 engine can
/// only be written. Delivery, pull, reconcile and retraction ask before they use a capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Search by identifier, read, vread and history: Patient matching, pull, reconcile, settling writes in doubt.
    pub read: bool,
    /// Delete: retraction.
    pub delete: bool,
    /// A batch of writes is applied whole or not at all; without it, delivery sends one write at a time.
    pub atomic_batches: bool,
    /// Each write must name its person in full (an HL7 v2 message's PID), and the destination cannot be asked
    /// who a `Patient/<id>` is: planning attaches the subject Patient to every other resource
    /// ([`attach_subject`]).
    pub subject: bool,
}

impl Capabilities {
    pub const ALL: Self = Self { read: true, delete: true, atomic_batches: true, subject: false };
    pub const WRITE_ONLY: Self = Self { read: false, delete: false, atomic_batches: false, subject: true };
}

/// The id of the subject Patient attached to a resource as a contained resource ([`attach_subject`]).
pub const SUBJECT_ID: &str = "subject";

/// Attaches the subject Patient (as shaped for the same destination) to a resource bound for a destination
/// that needs it ([`Capabilities::subject`]): a contained Patient with id `subject`. Planning hashes the
/// resource without it, so a change of the person's details alone never sends the resource again.
pub fn attach_subject(resource: &mut Value, mut patient: Value) {
    let Some(obj) = resource.as_object_mut() else { return };
    if let Some(p) = patient.as_object_mut() {
        p.insert("id".into(), Value::String(SUBJECT_ID.into()));
    }
    let contained = obj.entry("contained").or_insert_with(|| Value::Array(Vec::new()));
    if let Some(list) = contained.as_array_mut() {
        list.retain(|r| r["id"] != SUBJECT_ID);
        list.push(patient);
    }
}

/// The subject Patient attached by [`attach_subject`], if any.
pub fn attached_subject(resource: &Value) -> Option<&Value> {
    resource["contained"].as_array()?.iter().find(|r| r["resourceType"] == "Patient" && r["id"] == SUBJECT_ID)
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
    /// Finds resources of a type for each of several identifiers (`system|value`): the answer holds, in the
    /// order of `identifiers`, the resources carrying each. A transport that can ask for many at once does
    /// (FHIR: one search with the identifiers OR-ed); this default asks for each in turn.
    fn find_each<'a>(
        &'a self,
        resource_type: &'a str,
        identifiers: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<Found>>, TransportError>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(identifiers.len());
            for identifier in identifiers {
                out.push(self.find(resource_type, identifier).await?);
            }
            Ok(out)
        })
    }
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
    /// As [`Transport::page`], the answer's bytes, unparsed: for a reader that parses them its own way
    /// (reconcile, which hashes each resource without building a `Value`).
    fn page_bytes<'a>(&'a self, path_or_link: &'a str) -> BoxFuture<'a, Result<Vec<u8>, TransportError>> {
        Box::pin(async move { self.page(path_or_link).await.map(|v| v.to_string().into_bytes()) })
    }
    /// What this destination can do besides being written to.
    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }
}
