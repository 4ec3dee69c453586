//! HL7 v2 over MLLP: the transport for a trust's integration engine (Cito's only way in). Each write becomes
//! one message built from a message definition (`<mappings.dir>/hl7v2/*.toml`, one per resource type, so a
//! trust's local variant is configuration), sent in an MLLP frame, one at a time, and settled by the engine's
//! ACK: AA is delivered; AE/AR is a refusal carrying the ERR text (a dead letter); no ACK within the timeout
//! or a dropped connection is transient, and the retry sends the same message control id (MSH-10, derived
//! from the resource, its content and the version it replaces), so the engine can recognise a duplicate.
//!
//! The destination can only be written: searches, reads and history are refused with a plain reason, and
//! [`Transport::capabilities`] says so, so Patient matching, pull, reconcile and retraction use what they have.
//! Values from records are escaped for every HL7 delimiter, and carriage returns or line feeds in them become
//! spaces, so no value can start a segment. Logs name record ids and control ids, never a field's content.
//!
//! A record's message names its person (PID) from the subject Patient planning attaches for this kind of
//! destination ([`Capabilities::subject`]); a message whose definition needs it is never sent without it.
//!
//! # Layout
//! - `mod.rs`: the transport: a write made a message, sent, and settled by its ACK.
//! - `message.rs`: message definitions (`mappings/hl7v2/README.md`) and the segments they make of a resource.
//! - `mllp.rs`: the connection (TCP or TLS) and MLLP framing.

mod message;
mod mllp;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tracing::{debug, warn};

use super::limit::RateLimiter;
use super::transport::{BoxFuture, Capabilities, Found, Method, Transport, TransportError, Write, Written};
use crate::config::Hl7v2Config;
use message::unescape;
pub use message::{DefinitionError, MessageDefinition, escape};
use mllp::{Connection, Endpoint, round_trip};

/// MSH-10: the same for the same resource, content and replaced version (so a resend is a recognisable
/// duplicate), different after any change. 20 characters, the field's length in 2.5.1.
pub fn control_id(write: &Write) -> String {
    let mut h = Sha256::new();
    for part in [write.resource_type.as_str(), write.id.as_str(), write.if_match.as_deref().unwrap_or("")] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    if let Some(body) = &write.body {
        h.update(body.hash().as_bytes());
    }
    h.finalize().iter().take(10).map(|b| format!("{b:02X}")).collect()
}

/// The engine's answer to one message.
#[derive(Debug, PartialEq, Eq)]
struct Ack {
    code: String,
    control_id: String,
    /// The ERR segments' text (ERR-8, else ERR-3's text), for the dead letter.
    error: String,
}

fn parse_ack(text: &str) -> Option<Ack> {
    let mut ack = None;
    let mut errors = Vec::new();
    for seg in text.split(['\r', '\n']) {
        let f: Vec<&str> = seg.split('|').collect();
        match f[0] {
            "MSA" => {
                ack = Some(Ack {
                    code: f.get(1)?.to_string(),
                    control_id: f.get(2).unwrap_or(&"").to_string(),
                    error: f.get(3).map(|t| unescape(t)).unwrap_or_default(),
                });
            }
            "ERR" => {
                let user = f.get(8).filter(|t| !t.is_empty());
                let code = f.get(3).filter(|t| !t.is_empty()).or(f.get(1));
                if let Some(t) = user.or(code) {
                    errors.push(unescape(t));
                }
            }
            _ => {}
        }
    }
    let mut ack = ack?;
    if !errors.is_empty() {
        ack.error = errors.join("; ");
    }
    Some(ack)
}

/// The HL7 v2 transport for one destination.
pub struct Hl7v2Transport {
    destination: String,
    settings: Hl7v2Config,
    definitions: BTreeMap<String, MessageDefinition>,
    endpoint: Endpoint,
    ack_timeout: Duration,
    limiter: Arc<RateLimiter>,
    /// One connection, one message at a time: the engine's ACKs answer in order.
    conn: Mutex<Option<Box<dyn Connection>>>,
}

impl Hl7v2Transport {
    /// `ca_file`: for `mllps://`, CA certificates trusted besides the system's (resolved against the config).
    pub fn new(
        destination: &str,
        settings: &Hl7v2Config,
        messages_dir: &Path,
        ca_file: Option<&Path>,
        timeout: Duration,
        limiter: Arc<RateLimiter>,
    ) -> Result<Self, TransportError> {
        let definitions = MessageDefinition::load_dir(messages_dir)
            .map_err(|e| TransportError::Setup(format!("destination {destination}: {e}")))?;
        let endpoint = Endpoint::new(&settings.address, ca_file, timeout)
            .map_err(|e| TransportError::Setup(format!("destination {destination}: {e}")))?;
        Ok(Self {
            destination: destination.to_string(),
            settings: settings.clone(),
            definitions,
            endpoint,
            ack_timeout: Duration::from_secs(settings.ack_timeout_seconds.max(1)),
            limiter,
            conn: Mutex::new(None),
        })
    }

    /// The resource types this destination has a message for.
    pub fn resource_types(&self) -> Vec<String> {
        self.definitions.keys().cloned().collect()
    }

    /// The whole message for one write: MSH, then the definition's segments.
    pub fn message(&self, write: &Write, now: &str) -> Result<(String, String), TransportError> {
        let Some(def) = self.definitions.get(&write.resource_type) else {
            return Err(refused(format!(
                "no HL7 v2 message is defined for {} on destination {}: add a definition for it to the \
                 destination's messages folder, or stop sharing {} with this destination",
                write.resource_type, self.destination, write.resource_type
            )));
        };
        let (Method::Put, Some(queued)) = (write.method, &write.body) else {
            return Err(refused(format!(
                "destination {} cannot delete: the connector does not send retractions there",
                self.destination
            )));
        };
        let body = queued.resource().map_err(|e| {
            refused(format!(
                "{}/{} was not sent to destination {}: its body is not JSON: {e}",
                write.resource_type, write.id, self.destination
            ))
        })?;
        let update = write.if_match.is_some();
        if def.needs_subject() && super::transport::attached_subject(&body).is_none() {
            return Err(refused(format!(
                "{}/{} was not sent to destination {}: its HL7 v2 message names the person (PID) from the subject \
                 Patient, and the Patient was not available when it was planned (withheld from this destination, \
                 or not in the same export run as the record). Share the Patient with {} or send the person file \
                 with the export; the record is planned and sent again once its Patient is read with it",
                write.resource_type, write.id, self.destination, self.destination
            )));
        }
        let kind = def.message_type(update);
        let control = control_id(write);
        let s = &self.settings;
        let msh = format!(
            "MSH|^~\\&|{}|{}|{}|{}|{now}||{kind}|{control}|P|{}\r",
            s.sending_application,
            s.sending_facility,
            s.receiving_application,
            s.receiving_facility,
            s.version.as_str()
        );
        Ok((control, msh + &def.body(&body, &write.id, now, update)))
    }

    /// Connects without sending anything (`connector config check`); over TLS, the handshake checks the
    /// engine's certificate.
    pub async fn probe(
        settings: &Hl7v2Config,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        Endpoint::new(&settings.address, ca_file, timeout)?.connect().await.map(drop)
    }

    /// Sends one message and waits for its ACK on the open connection (opened first if need be). Any
    /// failure drops the connection, so a late ACK is never read as the next message's.
    async fn exchange(&self, control: &str, message: &str) -> Result<Ack, TransportError> {
        let mut guard = self.conn.lock().await;
        let stream = match guard.as_mut() {
            Some(s) => s,
            None => guard.insert(self.endpoint.connect().await?),
        };
        let answer = tokio::time::timeout(self.ack_timeout, round_trip(stream.as_mut(), message)).await;
        let outcome = match answer {
            Ok(Ok(raw)) => match parse_ack(&raw) {
                Some(ack) if ack.control_id == control => Ok(ack),
                Some(_) => Err(TransportError::transient("the engine acknowledged another message id")),
                None => Err(TransportError::transient("the engine's answer has no MSA segment")),
            },
            Ok(Err(e)) => Err(e),
            Err(_) => Err(TransportError::transient(format!(
                "no ACK from the HL7 v2 engine within {} s; the message will be sent again with the same control id",
                self.ack_timeout.as_secs()
            ))),
        };
        if outcome.is_err() {
            *guard = None;
        }
        outcome
    }

    async fn send_one(&self, write: &Write) -> Result<Written, TransportError> {
        let now = chrono::Local::now().format("%Y%m%d%H%M%S%z").to_string();
        let (control, message) = self.message(write, &now)?;
        self.limiter.acquire().await;
        let ack = self.exchange(&control, &message).await?;
        match ack.code.as_str() {
            "AA" | "CA" => {
                debug!(destination = %self.destination, resource_type = %write.resource_type, resource = %write.id, control_id = %control, "Acknowledged.");
                Ok(Written { version_id: Some(control) })
            }
            code => {
                warn!(destination = %self.destination, resource_type = %write.resource_type, resource = %write.id, control_id = %control, ack = %code, "The engine refused a message.");
                Err(TransportError::Rejected {
                    // The HTTP status nearest in meaning: AR (the message itself refused) 400, AE/CE/CR 422.
                    status: if code == "AR" { 400 } else { 422 },
                    message: format!("HL7 v2 {code} for control id {control}: {}", ack.error),
                    outcome: None,
                })
            }
        }
    }
}

fn refused(message: String) -> TransportError {
    TransportError::Rejected { status: 422, message, outcome: None }
}

fn not_available(what: &str) -> TransportError {
    TransportError::Setup(format!(
        "{what} is not available on an HL7 v2 destination: it can only be written (the connector's ledger and audit \
         trail say what was sent there)"
    ))
}

impl Transport for Hl7v2Transport {
    /// Sends each write as one message, in order, waiting for each ACK. Delivery gives this transport one
    /// write at a time ([`Capabilities::atomic_batches`] is false), so a refusal never undoes another's.
    fn send<'a>(&'a self, writes: &'a [Write]) -> BoxFuture<'a, Result<Vec<Written>, TransportError>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(writes.len());
            for w in writes {
                out.push(self.send_one(w).await?);
            }
            Ok(out)
        })
    }

    fn find<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<Vec<Found>, TransportError>> {
        Box::pin(async { Err(not_available("Searching")) })
    }

    fn read<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<Option<Found>, TransportError>> {
        Box::pin(async { Err(not_available("Reading back")) })
    }

    fn vread<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<Option<Found>, TransportError>> {
        Box::pin(async { Err(not_available("Reading back")) })
    }

    fn page<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Value, TransportError>> {
        Box::pin(async { Err(not_available("History and search")) })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::WRITE_ONLY
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::transport::Body;
    use serde_json::json;

    #[test]
    fn the_control_id_is_stable_for_a_resend_and_changes_with_the_content() {
        let w = |name: &str, v: Option<&str>| Write {
            resource_type: "Patient".into(),
            id: "p1".into(),
            method: Method::Put,
            body: Some(Body::new(&json!({"name": name}), "").unwrap()),
            if_match: v.map(str::to_string),
        };
        assert_eq!(control_id(&w("a", None)), control_id(&w("a", None)));
        assert_ne!(control_id(&w("a", None)), control_id(&w("b", None)));
        assert_ne!(control_id(&w("a", None)), control_id(&w("a", Some("X"))));
        assert_eq!(control_id(&w("a", None)).len(), 20);
    }

    fn transport() -> Hl7v2Transport {
        let settings: Hl7v2Config = toml::from_str(
            "address = \"mllp://127.0.0.1:9\"\nreceiving_application = \"CITO\"\nreceiving_facility = \"YTHFT\"",
        )
        .unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/hl7v2");
        let limiter = Arc::new(RateLimiter::per_second(0.0));
        Hl7v2Transport::new("cito-hl7", &settings, &dir, None, Duration::from_secs(1), limiter).unwrap()
    }

    #[test]
    fn a_record_without_its_subject_patient_is_refused_naming_it_and_what_to_do() {
        let mut goal = json!({"resourceType": "Goal", "subject": {"reference": "Patient/p1"},
            "description": {"text": "Getting to college"}});
        let write = |body: &Value| Write {
            resource_type: "Goal".into(),
            id: "g1".into(),
            method: Method::Put,
            body: Some(Body::new(body, "").unwrap()),
            if_match: None,
        };
        let Err(TransportError::Rejected { message, .. }) = transport().message(&write(&goal), "now") else {
            panic!("sent without a person")
        };
        assert!(message.contains("Goal/g1 was not sent to destination cito-hl7"), "{message}");
        assert!(message.contains("Share the Patient with cito-hl7"), "{message}");
        assert!(!message.contains("college"), "{message}");
        let patient = json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Walsh"}]});
        super::super::transport::attach_subject(&mut goal, patient);
        let (control, message) = transport().message(&write(&goal), "20260101120000").unwrap();
        assert!(
            message.starts_with(&format!(
                "MSH|^~\\&|YORKHUB|YORKHUB|CITO|YTHFT|20260101120000||MDM^T02^MDM_T02|{control}|P|2.5.1\r"
            )),
            "{message}"
        );
        assert!(message.contains("\rPID|1||p1^^^YORKHUB^PI||Walsh^"), "{message}");
    }

    #[test]
    fn an_ack_is_read_with_its_error_text() {
        let a = parse_ack(
            "MSH|^~\\&|E|T|C|H|2026||ACK^A28^ACK|1|P|2.5.1\rMSA|AE|C1\rERR|||207^x^HL70357|E||||No \\T\\ way\r",
        );
        assert_eq!(a, Some(Ack { code: "AE".into(), control_id: "C1".into(), error: "No & way".into() }));
        assert_eq!(parse_ack("garbage"), None);
    }
}
