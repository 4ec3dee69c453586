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

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use super::limit::RateLimiter;
use super::transport::{BoxFuture, Capabilities, Found, Method, Transport, TransportError, Write, Written};
use crate::config::{Hl7v2Config, MllpAddress};

/// MLLP's frame: start block, then end block and carriage return.
const START: u8 = 0x0b;
const END: [u8; 2] = [0x1c, 0x0d];
/// The largest ACK read before the answer is treated as garbage.
const MAX_ACK_BYTES: usize = 64 * 1024;

/// Why a message definition could not be loaded: names the file and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("reading HL7 v2 message definitions in {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// One message definition file: which resource it is for and the segments after MSH.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefinitionFile {
    /// The FHIR resource type this file turns into a message.
    resource: String,
    /// MSH-9 when the destination has not had this resource from us, e.g. `ADT^A28^ADT_A05`.
    create: String,
    /// MSH-9 when it has (default: `create`).
    update: Option<String>,
    #[serde(rename = "segment")]
    segments: Vec<SegmentFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SegmentFile {
    /// The segment id, e.g. `PID`.
    id: String,
    /// Only when this path has a value (e.g. PD1 only where a GP is known).
    when: Option<String>,
    /// Field number -> template: literal HL7 (components `^`, repetitions `~`) with `{path}` or
    /// `{path|filter}` placeholders whose values are escaped.
    fields: BTreeMap<String, String>,
}

/// A loaded message definition.
#[derive(Debug, Clone)]
pub struct MessageDefinition {
    pub resource: String,
    create: String,
    update: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone)]
struct Segment {
    id: String,
    when: Option<Path_>,
    /// (field number, template), in order.
    fields: Vec<(usize, Template)>,
}

/// A field template: repetitions of parts, each literal text or a placeholder.
#[derive(Debug, Clone)]
struct Template {
    repetitions: Vec<Vec<Part>>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Value(Path_, Option<Filter>),
}

/// What a placeholder's value goes through before it is escaped.
#[derive(Debug, Clone, Copy)]
enum Filter {
    /// FHIR date or dateTime to HL7 DT/DTM.
    Date,
    /// FHIR administrative gender to HL7 table 0001.
    Sex,
    /// A reference's id (`Patient/x` -> `x`).
    RefId,
}

/// A path into the resource: `name.name[0].name[system=...]`, or `$id` (the resource id), `$now`.
#[derive(Debug, Clone)]
enum Path_ {
    Id,
    Now,
    Steps(Vec<Step>),
}

#[derive(Debug, Clone)]
enum Step {
    Field(String),
    Index(usize),
    /// The first element whose keys equal these values.
    Where(Vec<(String, String)>),
}

impl MessageDefinition {
    /// Loads every `*.toml` in `dir`, by resource type.
    pub fn load_dir(dir: &Path) -> Result<BTreeMap<String, MessageDefinition>, DefinitionError> {
        let read = |e: std::io::Error| DefinitionError::Read { path: dir.display().to_string(), source: e };
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(read)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        let mut out = BTreeMap::new();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(read)?;
            let def = Self::parse(&text)
                .map_err(|message| DefinitionError::Invalid { path: path.display().to_string(), message })?;
            if let Some(before) = out.insert(def.resource.clone(), def) {
                return Err(DefinitionError::Invalid {
                    path: path.display().to_string(),
                    message: format!("a second definition for {}; keep one", before.resource),
                });
            }
        }
        Ok(out)
    }

    fn parse(text: &str) -> Result<Self, String> {
        let file: DefinitionFile = toml::from_str(text).map_err(|e| e.to_string())?;
        for t in [Some(&file.create), file.update.as_ref()].into_iter().flatten() {
            if t.split('^').count() < 2 || !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '^' || c == '_') {
                return Err(format!("message type \"{t}\" must look like ADT^A28^ADT_A05"));
            }
        }
        let mut segments = Vec::new();
        for s in file.segments {
            if s.id.len() != 3 || !s.id.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()) || s.id == "MSH" {
                return Err(format!(
                    "segment id \"{}\" must be three capitals (MSH is written by the connector)",
                    s.id
                ));
            }
            let mut fields = Vec::new();
            for (n, t) in &s.fields {
                let n: usize = n
                    .parse()
                    .ok()
                    .filter(|n| (1..=99).contains(n))
                    .ok_or_else(|| format!("{}: field \"{n}\" must be a number from 1 to 99", s.id))?;
                fields.push((n, Template::parse(t).map_err(|m| format!("{}-{n}: {m}", s.id))?));
            }
            fields.sort_by_key(|(n, _)| *n);
            let when = s.when.as_deref().map(Path_::parse).transpose().map_err(|m| format!("{}: when: {m}", s.id))?;
            segments.push(Segment { id: s.id, when, fields });
        }
        let update = file.update.unwrap_or_else(|| file.create.clone());
        Ok(Self { resource: file.resource, create: file.create, update, segments })
    }

    /// The segments after MSH for `resource`, each ending in a carriage return.
    fn body(&self, resource: &Value, id: &str, now: &str) -> String {
        let mut out = String::new();
        for s in &self.segments {
            if s.when.as_ref().is_some_and(|p| !p.present(resource)) {
                continue;
            }
            let last = s.fields.last().map_or(0, |(n, _)| *n);
            let mut values = vec![String::new(); last];
            for (n, t) in &s.fields {
                values[n - 1] = t.render(resource, id, now);
            }
            while values.last().is_some_and(String::is_empty) {
                values.pop();
            }
            out.push_str(&s.id);
            for v in values {
                out.push('|');
                out.push_str(&v);
            }
            out.push('\r');
        }
        out
    }
}

impl Template {
    fn parse(text: &str) -> Result<Self, String> {
        if text.contains(['\r', '\n']) {
            return Err("a template must not hold a carriage return or a line feed".into());
        }
        let mut repetitions = Vec::new();
        for rep in text.split('~') {
            let mut parts = Vec::new();
            let mut rest = rep;
            while let Some(open) = rest.find('{') {
                if open > 0 {
                    parts.push(Part::Text(rest[..open].to_string()));
                }
                let close = rest[open..].find('}').ok_or("a '{' without its '}'")? + open;
                let inner = &rest[open + 1..close];
                let (path, filter) = match inner.split_once('|') {
                    Some((p, f)) => (p, Some(Filter::parse(f)?)),
                    None => (inner, None),
                };
                parts.push(Part::Value(Path_::parse(path)?, filter));
                rest = &rest[close + 1..];
            }
            if !rest.is_empty() {
                parts.push(Part::Text(rest.to_string()));
            }
            if parts.iter().any(|p| matches!(p, Part::Text(t) if t.contains('|'))) {
                return Err("'|' separates fields: write each field as its own fields.N".into());
            }
            repetitions.push(parts);
        }
        Ok(Self { repetitions })
    }

    /// The field's text: a repetition whose placeholders are all empty is left out (so `{nhs}^^^NHS^NH`
    /// disappears for someone without an NHS number).
    fn render(&self, resource: &Value, id: &str, now: &str) -> String {
        let mut reps = Vec::new();
        for parts in &self.repetitions {
            let mut text = String::new();
            let (mut placeholders, mut filled) = (0, 0);
            for p in parts {
                match p {
                    Part::Text(t) => text.push_str(t),
                    Part::Value(path, filter) => {
                        placeholders += 1;
                        let v = path.eval(resource, id, now).map(|v| filter.map_or(v.clone(), |f| f.apply(&v)));
                        if let Some(v) = v.filter(|v| !v.is_empty()) {
                            filled += 1;
                            text.push_str(&escape(&v));
                        }
                    }
                }
            }
            if placeholders == 0 || filled > 0 {
                reps.push(text);
            }
        }
        reps.join("~")
    }
}

impl Filter {
    fn parse(name: &str) -> Result<Self, String> {
        match name.trim() {
            "date" => Ok(Self::Date),
            "sex" => Ok(Self::Sex),
            "ref_id" => Ok(Self::RefId),
            other => Err(format!("unknown filter \"{other}\" (date, sex, ref_id)")),
        }
    }

    fn apply(self, v: &str) -> String {
        match self {
            Self::Date => hl7_date(v),
            Self::Sex => match v {
                "male" => "M",
                "female" => "F",
                "other" => "O",
                _ => "U",
            }
            .to_string(),
            Self::RefId => v.rsplit('/').next().unwrap_or_default().to_string(),
        }
    }
}

/// A FHIR date or dateTime as HL7 DT/DTM: `1980-01-02` -> `19800102`, `2024-05-01T10:20:30+01:00` ->
/// `20240501102030+0100`. Anything else: empty (never a malformed date on the wire).
fn hl7_date(v: &str) -> String {
    let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
    let (date, rest) = v.split_at(v.len().min(10));
    let d = digits(date);
    if !matches!(d.len(), 4 | 6 | 8) {
        return String::new();
    }
    let Some(time) = rest.strip_prefix('T') else { return d };
    let (clock, zone) = match time.find(['+', '-', 'Z']) {
        Some(i) => time.split_at(i),
        None => (time, ""),
    };
    let clock = digits(clock.split('.').next().unwrap_or_default());
    let zone = if zone == "Z" { "+0000".to_string() } else { zone.replace(':', "") };
    format!("{d}{clock}{zone}")
}

impl Path_ {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        match text {
            "$id" => return Ok(Self::Id),
            "$now" => return Ok(Self::Now),
            "" => return Err("an empty placeholder".into()),
            _ => {}
        }
        let mut steps = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('[') {
                let close = r.find(']').ok_or_else(|| format!("\"{text}\": a '[' without its ']'"))?;
                let inner = &r[..close];
                steps.push(if inner.contains('=') {
                    let pairs = inner.split(',').map(|kv| {
                        let (k, v) =
                            kv.split_once('=').ok_or_else(|| format!("\"{text}\": [{kv}] is not key=value"))?;
                        Ok((k.trim().to_string(), v.trim().to_string()))
                    });
                    Step::Where(pairs.collect::<Result<_, String>>()?)
                } else {
                    Step::Index(inner.parse().map_err(|_| format!("\"{text}\": [{inner}] is not an index"))?)
                });
                rest = &r[close + 1..];
            } else {
                let r = rest.strip_prefix('.').unwrap_or(rest);
                let end = r.find(['.', '[']).unwrap_or(r.len());
                if end == 0 {
                    return Err(format!("\"{text}\" is not a path (name.name[0].name[key=value])"));
                }
                steps.push(Step::Field(r[..end].to_string()));
                rest = &r[end..];
            }
        }
        Ok(Self::Steps(steps))
    }

    /// Whether the path leads anywhere (an element, whatever its kind): `when` on a segment.
    fn present(&self, resource: &Value) -> bool {
        match self {
            Self::Id | Self::Now => true,
            Self::Steps(s) => Self::walk(s, resource).is_some_and(|v| !v.is_null()),
        }
    }

    fn walk<'v>(steps: &[Step], resource: &'v Value) -> Option<&'v Value> {
        let mut v = resource;
        for step in steps {
            v = match step {
                // A name on an array reads its first element, as FHIRPath-light: `name.family`.
                Step::Field(f) => first(v).get(f)?,
                Step::Index(i) => v.as_array()?.get(*i)?,
                Step::Where(pairs) => v
                    .as_array()?
                    .iter()
                    .find(|e| pairs.iter().all(|(k, want)| e.get(k).and_then(Value::as_str) == Some(want.as_str())))?,
            };
        }
        Some(v)
    }

    fn eval(&self, resource: &Value, id: &str, now: &str) -> Option<String> {
        let steps = match self {
            Self::Id => return Some(id.to_string()),
            Self::Now => return Some(now.to_string()),
            Self::Steps(s) => s,
        };
        match first(Self::walk(steps, resource)?) {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

fn first(v: &Value) -> &Value {
    v.as_array().and_then(|a| a.first()).unwrap_or(v)
}

/// Escapes HL7's delimiters (`| ^ ~ \ &`) and turns carriage returns and line feeds (which would end the
/// segment) into spaces.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\E\\"),
            '|' => out.push_str("\\F\\"),
            '^' => out.push_str("\\S\\"),
            '&' => out.push_str("\\T\\"),
            '~' => out.push_str("\\R\\"),
            '\r' | '\n' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Reverses [`escape`] for text read from an ACK (the ERR text).
fn unescape(text: &str) -> String {
    text.replace("\\F\\", "|").replace("\\S\\", "^").replace("\\T\\", "&").replace("\\R\\", "~").replace("\\E\\", "\\")
}

/// MSH-10: the same for the same resource, content and replaced version (so a resend is a recognisable
/// duplicate), different after any change. 20 characters, the field's length in 2.5.1.
pub fn control_id(write: &Write) -> String {
    let mut h = Sha256::new();
    for part in [write.resource_type.as_str(), write.id.as_str(), write.if_match.as_deref().unwrap_or("")] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    if let Some(body) = &write.body {
        h.update(crate::conflict::content_hash(body).as_bytes());
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
    connect_timeout: Duration,
    ack_timeout: Duration,
    limiter: Arc<RateLimiter>,
    /// One connection, one message at a time: the engine's ACKs answer in order.
    conn: Mutex<Option<TcpStream>>,
}

impl Hl7v2Transport {
    pub fn new(
        destination: &str,
        settings: &Hl7v2Config,
        messages_dir: &Path,
        timeout: Duration,
        limiter: Arc<RateLimiter>,
    ) -> Result<Self, TransportError> {
        let definitions = MessageDefinition::load_dir(messages_dir)
            .map_err(|e| TransportError::Setup(format!("destination {destination}: {e}")))?;
        Ok(Self {
            destination: destination.to_string(),
            settings: settings.clone(),
            definitions,
            connect_timeout: timeout,
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
        let (Method::Put, Some(body)) = (write.method, &write.body) else {
            return Err(refused(format!(
                "destination {} cannot delete: the connector does not send retractions there",
                self.destination
            )));
        };
        let kind = if write.if_match.is_some() { &def.update } else { &def.create };
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
        Ok((control, msh + &def.body(body, &write.id, now)))
    }

    /// Connects without sending anything (`connector config check`).
    pub async fn probe(address: &MllpAddress, timeout: Duration) -> Result<(), TransportError> {
        connect(address, timeout).await.map(drop)
    }

    /// Sends one message and waits for its ACK on the open connection (opened first if need be). Any
    /// failure drops the connection, so a late ACK is never read as the next message's.
    async fn exchange(&self, control: &str, message: &str) -> Result<Ack, TransportError> {
        let mut guard = self.conn.lock().await;
        let stream = match guard.as_mut() {
            Some(s) => s,
            None => guard.insert(connect(&self.settings.address, self.connect_timeout).await?),
        };
        let answer = tokio::time::timeout(self.ack_timeout, round_trip(stream, message)).await;
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

async fn connect(address: &MllpAddress, timeout: Duration) -> Result<TcpStream, TransportError> {
    let target = (address.host.as_str(), address.port);
    match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(Ok(s)) => {
            info!(address = %address, "Connected to the HL7 v2 engine.");
            Ok(s)
        }
        Ok(Err(e)) => Err(TransportError::transient(format!(
            "cannot connect to the HL7 v2 engine at {address}: {} (is it listening? is a firewall in the way?)",
            e.kind()
        ))),
        Err(_) => Err(TransportError::transient(format!("connecting to the HL7 v2 engine at {address} timed out"))),
    }
}

/// Writes one framed message and reads one framed answer.
async fn round_trip(stream: &mut TcpStream, message: &str) -> Result<String, TransportError> {
    let lost = |what: &str, e: std::io::Error| {
        TransportError::transient(format!("the HL7 v2 connection failed while {what} ({})", e.kind()))
    };
    let mut frame = Vec::with_capacity(message.len() + 3);
    frame.push(START);
    frame.extend_from_slice(message.as_bytes());
    frame.extend_from_slice(&END);
    stream.write_all(&frame).await.map_err(|e| lost("sending", e))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| lost("waiting for the ACK", e))?;
        if n == 0 {
            return Err(TransportError::transient("the HL7 v2 engine closed the connection before acknowledging"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(2).position(|w| w == END) {
            let start = buf.iter().position(|b| *b == START).map_or(0, |i| i + 1);
            return Ok(String::from_utf8_lossy(&buf[start.min(end)..end]).into_owned());
        }
        if buf.len() > MAX_ACK_BYTES {
            return Err(TransportError::transient("the HL7 v2 engine's answer is not an MLLP frame"));
        }
    }
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
    use serde_json::json;

    fn patient_def() -> MessageDefinition {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/hl7v2");
        MessageDefinition::load_dir(&dir).unwrap().remove("Patient").unwrap()
    }

    #[test]
    fn every_delimiter_is_escaped_and_no_value_can_start_a_segment() {
        assert_eq!(escape("a|b^c~d\\e&f"), "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f");
        assert_eq!(escape("x\rMSH|evil\ny"), "x MSH\\F\\evil y");
        assert_eq!(unescape(&escape("a|b^c~d\\e&f")), "a|b^c~d\\e&f");
    }

    #[test]
    fn a_patient_becomes_pid_with_the_nhs_number_and_its_status() {
        let p = json!({"resourceType": "Patient", "identifier": [
            {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990000018", "extension": [{"url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus",
              "valueCodeableConcept": {"coding": [{"code": "01"}]}}]}],
            "name": [{"family": "O'Neil|Smith", "given": ["Jo^an"]}], "birthDate": "1980-01-02", "gender": "female",
            "address": [{"line": ["1 Road"], "city": "York", "postalCode": "YO1 1AA"}]});
        let body = patient_def().body(&p, "p1", "20260101120000");
        let pid = body.split('\r').find(|s| s.starts_with("PID")).unwrap();
        let f: Vec<&str> = pid.split('|').collect();
        assert_eq!(f[3], "9990000018^^^NHS^NH~p1^^^YORKHUB^PI");
        assert_eq!(f[5], "O'Neil\\F\\Smith^Jo\\S\\an^^^^^L");
        assert_eq!(f[7], "19800102");
        assert_eq!(f[8], "F");
        assert_eq!(f[32], "01");
        assert!(body.contains("\rPV1|1|N\r"), "{body}");
    }

    #[test]
    fn pd1_is_written_only_where_a_gp_is_known() {
        let def = patient_def();
        let without = def.body(&json!({"name": [{"family": "A"}]}), "p1", "now");
        assert!(!without.contains("PD1"), "{without}");
        let gp =
            json!({"generalPractitioner": [{"display": "Old Station Surgery", "identifier": {"value": "B82001"}}]});
        let with = def.body(&gp, "p1", "now");
        assert!(with.contains("\rPD1|||Old Station Surgery^^^^^^^^^B82001\r"), "{with}");
    }

    #[test]
    fn a_placeholder_with_no_value_leaves_out_its_repetition() {
        let t = Template::parse("{a}^^^NHS^NH~{b}^^^X^PI").unwrap();
        assert_eq!(t.render(&json!({"b": "7"}), "id", "now"), "7^^^X^PI");
        assert_eq!(t.render(&json!({}), "id", "now"), "");
    }

    #[test]
    fn dates_become_hl7_dates_or_nothing() {
        assert_eq!(hl7_date("1980-01-02"), "19800102");
        assert_eq!(hl7_date("2024-05-01T10:20:30+01:00"), "20240501102030+0100");
        assert_eq!(hl7_date("2024-05-01T10:20:30.123Z"), "20240501102030+0000");
        assert_eq!(hl7_date("soon"), "");
    }

    #[test]
    fn the_control_id_is_stable_for_a_resend_and_changes_with_the_content() {
        let w = |name: &str, v: Option<&str>| Write {
            resource_type: "Patient".into(),
            id: "p1".into(),
            method: Method::Put,
            body: Some(json!({"name": name})),
            if_match: v.map(str::to_string),
        };
        assert_eq!(control_id(&w("a", None)), control_id(&w("a", None)));
        assert_ne!(control_id(&w("a", None)), control_id(&w("b", None)));
        assert_ne!(control_id(&w("a", None)), control_id(&w("a", Some("X"))));
        assert_eq!(control_id(&w("a", None)).len(), 20);
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
