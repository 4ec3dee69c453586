//! HL7 v2 message definitions: the files under `<mappings.dir>/hl7v2/` (format: `mappings/hl7v2/README.md`)
//! loaded once, and the segments after MSH they make of one resource. A definition is data, so a trust's
//! local variant of a message is configuration: segments in order, each field a template of literal HL7 with
//! `{path}` placeholders whose values are escaped for every delimiter. Beyond the resource's own elements a
//! placeholder can read the subject Patient the planner attached (`$subject`, for PID), the element a repeated
//! segment stands for (`$each`, e.g. one OBX per questionnaire answer), the segment's set id (`$seq`), whether
//! the destination had the resource before (`$update`), and the resource as a readable plain-text document
//! (`$document`: the conflict views' labelled lines, [`crate::conflict::readable`], one TX repetition each).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::deliver::transport::attached_subject;

/// The longest line of a `$document`, escapes included: each line is one repetition of a TX field (the
/// repeat delimiter is TX's line break), and strict parsers (hl7apy among them) hold each to ST's 199
/// characters. Longer lines are wrapped at spaces.
const MAX_LINE_CHARS: usize = 199;
/// The longest `$document` written, in characters (a field holds 65536; the rest is room to spare).
const MAX_DOCUMENT_CHARS: usize = 60_000;
/// Elements a `$document` never shows: what the message states elsewhere (the person is PID) or what is not
/// the record's content (labels, the attached subject).
const DOCUMENT_NEVER: [&str; 6] = ["resourceType", "id", "meta", "contained", "subject", "text"];

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
    /// Elements `$document` leaves out besides resourceType, id, meta, contained, subject and text (e.g.
    /// references to records the destination does not hold).
    #[serde(default)]
    document_omit: Vec<String>,
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
    /// One segment for each element of the list at this path (e.g. `item`: one OBX per answer), which the
    /// fields read as `$each`; none when the list is empty or absent.
    each: Option<String>,
    /// Field number -> template: literal HL7 (components `^`, repetitions `~`) with `{path}` or
    /// `{path|filter|filter}` placeholders whose values are escaped.
    fields: BTreeMap<String, String>,
}

/// A loaded message definition.
#[derive(Debug, Clone)]
pub struct MessageDefinition {
    pub resource: String,
    create: String,
    update: String,
    document_omit: Vec<String>,
    segments: Vec<Segment>,
    /// Some placeholder reads `$subject`: without an attached subject Patient the message is not sent.
    needs_subject: bool,
}

#[derive(Debug, Clone)]
struct Segment {
    id: String,
    when: Option<Path_>,
    each: Option<Path_>,
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
    Value(Path_, Vec<Filter>),
}

/// What a placeholder's value goes through, in order, before it is escaped.
#[derive(Debug, Clone)]
enum Filter {
    /// FHIR date or dateTime to HL7 DT/DTM.
    Date,
    /// FHIR administrative gender to HL7 table 0001.
    Sex,
    /// The last part of a reference or URL (`Patient/x` -> `x`).
    RefId,
    /// A code translated: `map:final=F,amended=C,*=F` (`*` for anything else; without it, anything else is
    /// left empty).
    Map(Vec<(String, String)>, Option<String>),
    /// At most this many characters (free text in a field of bounded length).
    Max(usize),
}

/// A placeholder's path.
#[derive(Debug, Clone)]
enum Path_ {
    /// `$id`: the resource id.
    Id,
    /// `$now`: the message time.
    Now,
    /// `$seq`: this segment's set id, 1 for the first segment of its id in the message, then 2, 3...
    Seq,
    /// `$update`: `true` when the destination has had this resource from us, else `false`.
    Update,
    /// `$document`: the resource as readable lines, each a repetition (TX).
    Document,
    /// Elements from a root: `name.name[0].name[key=value]`.
    Steps(Root, Vec<Step>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    /// The resource.
    Resource,
    /// `$subject`: the subject Patient attached by the planner.
    Subject,
    /// `$each`: the element a repeated segment stands for.
    Each,
}

#[derive(Debug, Clone)]
enum Step {
    Field(String),
    Index(usize),
    /// The first element whose keys equal these values.
    Where(Vec<(String, String)>),
}

/// What placeholders are read from, for one segment.
#[derive(Clone, Copy)]
struct Scope<'a> {
    resource: &'a Value,
    id: &'a str,
    now: &'a str,
    update: bool,
    subject: Option<&'a Value>,
    each: Option<&'a Value>,
    seq: usize,
    document_omit: &'a [String],
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

    pub(super) fn parse(text: &str) -> Result<Self, String> {
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
            let path = |what: &str, p: Option<&str>| {
                p.map(Path_::parse).transpose().map_err(|m| format!("{}: {what}: {m}", s.id))
            };
            let when = path("when", s.when.as_deref())?;
            let each = path("each", s.each.as_deref())?;
            if each.as_ref().is_some_and(|p| !matches!(p, Path_::Steps(..))) {
                return Err(format!("{}: each must name a list of elements, e.g. each = \"item\"", s.id));
            }
            let reads_each =
                when.iter().chain(fields.iter().flat_map(|(_, t)| t.paths())).any(|p| p.root() == Some(Root::Each));
            if reads_each && each.is_none() {
                return Err(format!("{}: $each is only for a segment with each = \"<list>\"", s.id));
            }
            segments.push(Segment { id: s.id, when, each, fields });
        }
        let needs_subject = segments.iter().any(|s| {
            let mut paths = s.when.iter().chain(&s.each).chain(s.fields.iter().flat_map(|(_, t)| t.paths()));
            paths.any(|p| p.root() == Some(Root::Subject))
        });
        let update = file.update.unwrap_or_else(|| file.create.clone());
        Ok(Self {
            resource: file.resource,
            create: file.create,
            update,
            document_omit: file.document_omit,
            segments,
            needs_subject,
        })
    }

    /// MSH-9 for a first message about the resource, or for a later one.
    pub fn message_type(&self, update: bool) -> &str {
        if update { &self.update } else { &self.create }
    }

    /// Whether the message names the person from the attached subject Patient (`$subject`).
    pub fn needs_subject(&self) -> bool {
        self.needs_subject
    }

    /// The segments after MSH for `resource`, each ending in a carriage return.
    pub fn body(&self, resource: &Value, id: &str, now: &str, update: bool) -> String {
        let mut scope = Scope {
            resource,
            id,
            now,
            update,
            subject: attached_subject(resource),
            each: None,
            seq: 0,
            document_omit: &self.document_omit,
        };
        let mut counters: HashMap<&str, usize> = HashMap::new();
        let mut out = String::new();
        for s in &self.segments {
            let elements: Vec<Option<&Value>> = match &s.each {
                None => vec![None],
                Some(p) => match p.walk(&scope) {
                    Some(Value::Array(a)) => a.iter().map(Some).collect(),
                    Some(Value::Null) | None => vec![],
                    Some(v) => vec![Some(v)],
                },
            };
            for each in elements {
                scope.each = each;
                if s.when.as_ref().is_some_and(|p| !p.present(&scope)) {
                    continue;
                }
                let seq = counters.entry(&s.id).or_default();
                *seq += 1;
                scope.seq = *seq;
                out.push_str(&s.render(&scope));
            }
        }
        out
    }
}

impl Segment {
    fn render(&self, scope: &Scope<'_>) -> String {
        let last = self.fields.last().map_or(0, |(n, _)| *n);
        let mut values = vec![String::new(); last];
        for (n, t) in &self.fields {
            values[n - 1] = t.render(scope);
        }
        while values.last().is_some_and(String::is_empty) {
            values.pop();
        }
        let mut out = self.id.clone();
        for v in values {
            out.push('|');
            out.push_str(&v);
        }
        out.push('\r');
        out
    }
}

impl Template {
    pub(super) fn parse(text: &str) -> Result<Self, String> {
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
                let mut inner = rest[open + 1..close].split('|');
                let path = Path_::parse(inner.next().unwrap_or_default())?;
                let filters = inner.map(Filter::parse).collect::<Result<Vec<_>, _>>()?;
                if matches!(path, Path_::Document) && !filters.is_empty() {
                    return Err("{$document} takes no filter".into());
                }
                parts.push(Part::Value(path, filters));
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

    fn paths(&self) -> impl Iterator<Item = &Path_> {
        self.repetitions.iter().flatten().filter_map(|p| match p {
            Part::Value(path, _) => Some(path),
            Part::Text(_) => None,
        })
    }

    /// The field's text: a repetition whose placeholders are all empty is left out (so `{nhs}^^^NHS^NH`
    /// disappears for someone without an NHS number).
    fn render(&self, scope: &Scope<'_>) -> String {
        let mut reps = Vec::new();
        for parts in &self.repetitions {
            let mut text = String::new();
            let (mut placeholders, mut filled) = (0, 0);
            for p in parts {
                match p {
                    Part::Text(t) => text.push_str(t),
                    Part::Value(Path_::Document, _) => {
                        placeholders += 1;
                        let doc = document(scope);
                        if !doc.is_empty() {
                            filled += 1;
                            text.push_str(&doc);
                        }
                    }
                    Part::Value(path, filters) => {
                        placeholders += 1;
                        let v = path.eval(scope).map(|v| filters.iter().fold(v, |v, f| f.apply(&v)));
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

/// The resource as a person reads it (the conflict views' labelled lines): each line escaped, wrapped to
/// [`MAX_LINE_CHARS`], and one repetition (TX's line break); cut at a line, and said so, when it would not fit.
fn document(scope: &Scope<'_>) -> String {
    let omit: Vec<&str> =
        DOCUMENT_NEVER.iter().copied().chain(scope.document_omit.iter().map(String::as_str)).collect();
    let mut out: Vec<String> = Vec::new();
    let mut total = 0;
    for line in crate::conflict::readable::lines(scope.resource, &omit) {
        for piece in wrap(&line, MAX_LINE_CHARS) {
            total += piece.len() + 1;
            if total > MAX_DOCUMENT_CHARS {
                out.push("(cut here: the rest is in the source record)".into());
                return out.join("~");
            }
            out.push(piece);
        }
    }
    out.join("~")
}

/// `line` escaped and cut into pieces of at most `max` characters, at spaces where it can be (a word longer
/// than a line is cut between characters, never inside an escape).
fn wrap(line: &str, max: usize) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    for word in line.split(' ') {
        let escaped = escape(word);
        let space = usize::from(!current.is_empty());
        if current.len() + space + escaped.len() <= max {
            if space == 1 {
                current.push(' ');
            }
            current.push_str(&escaped);
            continue;
        }
        if !current.is_empty() {
            pieces.push(std::mem::take(&mut current));
        }
        for c in word.chars() {
            let unit = escape(c.encode_utf8(&mut [0; 4]));
            if current.len() + unit.len() > max {
                pieces.push(std::mem::take(&mut current));
            }
            current.push_str(&unit);
        }
    }
    if !current.is_empty() || pieces.is_empty() {
        pieces.push(current);
    }
    pieces
}

impl Filter {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (name, arg) = text.split_once(':').map_or((text, None), |(n, a)| (n.trim(), Some(a)));
        match (name, arg) {
            ("date", None) => Ok(Self::Date),
            ("sex", None) => Ok(Self::Sex),
            ("ref_id", None) => Ok(Self::RefId),
            ("max", Some(n)) => n
                .trim()
                .parse()
                .map(Self::Max)
                .map_err(|_| format!("max:{n}: give a number of characters, e.g. max:199")),
            ("map", Some(pairs)) => {
                let (mut table, mut default) = (Vec::new(), None);
                for pair in pairs.split(',') {
                    let (from, to) =
                        pair.split_once('=').ok_or_else(|| format!("map: \"{pair}\" is not from=to (e.g. final=F)"))?;
                    if from.trim() == "*" {
                        default = Some(to.trim().to_string());
                    } else {
                        table.push((from.trim().to_string(), to.trim().to_string()));
                    }
                }
                Ok(Self::Map(table, default))
            }
            _ => Err(format!("unknown filter \"{text}\" (date, sex, ref_id, map:a=X,b=Y,*=Z, max:N)")),
        }
    }

    fn apply(&self, v: &str) -> String {
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
            Self::Map(table, default) => table
                .iter()
                .find(|(from, _)| from == v)
                .map(|(_, to)| to.clone())
                .or_else(|| default.clone())
                .unwrap_or_default(),
            Self::Max(n) => v.chars().take(*n).collect(),
        }
    }
}

/// A FHIR date or dateTime as HL7 DT/DTM: `1980-01-02` -> `19800102`, `2024-05-01T10:20:30+01:00` ->
/// `20240501102030+0100`. Anything else: empty (never a malformed date on the wire).
pub(super) fn hl7_date(v: &str) -> String {
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
            "$seq" => return Ok(Self::Seq),
            "$update" => return Ok(Self::Update),
            "$document" => return Ok(Self::Document),
            "" => return Err("an empty placeholder".into()),
            _ => {}
        }
        let (root, mut rest) = if let Some(name) = text.strip_prefix('$') {
            let end = name.find(['.', '[']).unwrap_or(name.len());
            let root = match &name[..end] {
                "subject" => Root::Subject,
                "each" => Root::Each,
                other => {
                    return Err(format!(
                        "\"${other}\" is not a name (known: $id, $now, $seq, $update, $document, $subject, $each)"
                    ));
                }
            };
            (root, &name[end..])
        } else {
            (Root::Resource, text)
        };
        let mut steps = Vec::new();
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
        Ok(Self::Steps(root, steps))
    }

    fn root(&self) -> Option<Root> {
        match self {
            Self::Steps(root, _) => Some(*root),
            _ => None,
        }
    }

    /// Whether the path leads anywhere (an element, whatever its kind): `when` on a segment.
    fn present(&self, scope: &Scope<'_>) -> bool {
        match self {
            Self::Steps(..) => self.walk(scope).is_some_and(|v| !v.is_null()),
            _ => true,
        }
    }

    /// The element the path leads to (a list stays a list at the last step).
    fn walk<'v>(&self, scope: &Scope<'v>) -> Option<&'v Value> {
        let Self::Steps(root, steps) = self else { return None };
        let mut v = match root {
            Root::Resource => scope.resource,
            Root::Subject => scope.subject?,
            Root::Each => scope.each?,
        };
        for step in steps {
            v = match step {
                // A name on a list reads its first element, as FHIRPath-light: `name.family`.
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

    fn eval(&self, scope: &Scope<'_>) -> Option<String> {
        match self {
            Self::Id => Some(scope.id.to_string()),
            Self::Now => Some(scope.now.to_string()),
            Self::Seq => Some(scope.seq.to_string()),
            Self::Update => Some(scope.update.to_string()),
            Self::Document => None,
            Self::Steps(..) => match first(self.walk(scope)?) {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            },
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
pub(super) fn unescape(text: &str) -> String {
    text.replace("\\F\\", "|").replace("\\S\\", "^").replace("\\T\\", "&").replace("\\R\\", "~").replace("\\E\\", "\\")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn definitions() -> BTreeMap<String, MessageDefinition> {
        MessageDefinition::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/hl7v2")).unwrap()
    }

    fn segments<'a>(body: &'a str, id: &str) -> Vec<Vec<&'a str>> {
        body.split('\r').filter(|s| s.starts_with(id)).map(|s| s.split('|').collect()).collect()
    }

    fn scope(resource: &Value) -> Scope<'_> {
        Scope { resource, id: "id", now: "now", update: false, subject: None, each: None, seq: 1, document_omit: &[] }
    }

    fn with_subject(mut resource: Value) -> Value {
        let patient = json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Brontë", "given": ["Zoë"]}],
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990123403"}],
            "birthDate": "1987-04-03", "gender": "female"});
        resource["subject"] = json!({"reference": "Patient/p1"});
        crate::deliver::transport::attach_subject(&mut resource, patient);
        resource
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
        let body = definitions()["Patient"].body(&p, "p1", "20260101120000", false);
        let pid = &segments(&body, "PID")[0];
        assert_eq!(pid[3], "9990000018^^^NHS^NH~p1^^^YORKHUB^PI");
        assert_eq!(pid[5], "O'Neil\\F\\Smith^Jo\\S\\an^^^^^L");
        assert_eq!(pid[7], "19800102");
        assert_eq!(pid[8], "F");
        assert_eq!(pid[32], "01");
        assert!(body.contains("\rPV1|1|N\r"), "{body}");
    }

    #[test]
    fn pd1_is_written_only_where_a_gp_is_known() {
        let def = &definitions()["Patient"];
        let without = def.body(&json!({"name": [{"family": "A"}]}), "p1", "now", false);
        assert!(!without.contains("PD1"), "{without}");
        let gp =
            json!({"generalPractitioner": [{"display": "Old Station Surgery", "identifier": {"value": "B82001"}}]});
        let with = def.body(&gp, "p1", "now", false);
        assert!(with.contains("\rPD1|||Old Station Surgery^^^^^^^^^B82001\r"), "{with}");
    }

    #[test]
    fn a_placeholder_with_no_value_leaves_out_its_repetition() {
        let t = Template::parse("{a}^^^NHS^NH~{b}^^^X^PI").unwrap();
        assert_eq!(t.render(&scope(&json!({"b": "7"}))), "7^^^X^PI");
        assert_eq!(t.render(&scope(&json!({}))), "");
    }

    #[test]
    fn filters_translate_codes_cut_free_text_and_chain() {
        let t = Template::parse("{status|map:final=F,amended=C,*=X}").unwrap();
        assert_eq!(t.render(&scope(&json!({"status": "amended"}))), "C");
        assert_eq!(t.render(&scope(&json!({"status": "odd"}))), "X");
        let strict = Template::parse("{status|map:final=F}").unwrap();
        assert_eq!(strict.render(&scope(&json!({"status": "odd"}))), "");
        let cut = Template::parse("{text|max:3}").unwrap();
        assert_eq!(cut.render(&scope(&json!({"text": "a|bcdef"}))), "a\\F\\b");
        let chained = Template::parse("{questionnaire|ref_id|max:5}").unwrap();
        assert_eq!(chained.render(&scope(&json!({"questionnaire": "https://x/Questionnaire/reqol-10"}))), "reqol");
        assert!(Template::parse("{a|upper}").unwrap_err().contains("unknown filter"));
        assert!(Template::parse("{a|max:ten}").unwrap_err().contains("number"));
        assert!(Template::parse("{$document|date}").unwrap_err().contains("no filter"));
        assert!(Template::parse("{$patient.name}").unwrap_err().contains("not a name"));
    }

    #[test]
    fn dates_become_hl7_dates_or_nothing() {
        assert_eq!(hl7_date("1980-01-02"), "19800102");
        assert_eq!(hl7_date("2024-05-01T10:20:30+01:00"), "20240501102030+0100");
        assert_eq!(hl7_date("2024-05-01T10:20:30.123Z"), "20240501102030+0000");
        assert_eq!(hl7_date("soon"), "");
    }

    #[test]
    fn a_segment_repeats_for_each_element_with_its_own_set_id() {
        let head = "resource = \"QuestionnaireResponse\"\ncreate = \"ORU^R01^ORU_R01\"\n";
        let each = "[[segment]]\nid = \"OBX\"\neach = \"item\"\nwhen = \"$each.answer.valueInteger\"\n\
                    fields.1 = \"{$seq}\"\nfields.3 = \"{$each.linkId}\"\nfields.5 = \"{$each.answer.valueInteger}\"\n";
        let stray = "[[segment]]\nid = \"OBX\"\nfields.1 = \"{$seq}\"\nfields.3 = \"{$each.linkId}\"\n";
        let def = MessageDefinition::parse(&format!("{head}{stray}{each}"));
        assert!(def.unwrap_err().contains("$each is only for a segment with each"));
        let obr = "[[segment]]\nid = \"OBR\"\nfields.1 = \"{$seq}\"\n";
        let def = MessageDefinition::parse(&format!("{head}{obr}{each}")).unwrap();
        let qr = json!({"item": [
            {"linkId": "1", "answer": [{"valueInteger": 3}]},
            {"linkId": "2", "answer": [{"valueString": "skipped: not an integer"}]},
            {"linkId": "3", "answer": [{"valueInteger": 0}]}]});
        let body = def.body(&qr, "qr1", "now", false);
        assert_eq!(body, "OBR|1\rOBX|1||1||3\rOBX|2||3||0\r");
        assert_eq!(def.body(&json!({}), "qr1", "now", false), "OBR|1\r");
        assert!(!def.needs_subject());
    }

    #[test]
    fn the_subject_is_read_from_the_attached_patient() {
        let defs = definitions();
        let obs = with_subject(json!({"resourceType": "Observation", "status": "final", "valueInteger": 12,
            "code": {"coding": [{"code": "reqol-10-total", "display": "ReQoL-10 total score"}]},
            "effectiveDateTime": "2023-03-24"}));
        let def = &defs["Observation"];
        assert!(def.needs_subject());
        let body = def.body(&obs, "o1", "now", false);
        let pid = &segments(&body, "PID")[0];
        assert_eq!(pid[3], "9990123403^^^NHS^NH~p1^^^YORKHUB^PI");
        assert_eq!(pid[5], "Brontë^Zoë^^^^^L");
        assert_eq!(pid[7], "19870403");
        let obx = &segments(&body, "OBX")[0];
        assert_eq!((obx[1], obx[2], obx[5], obx[11]), ("1", "NM", "12", "F"));
        // A later message about the same result is a correction.
        let again = def.body(&obs, "o1", "now", true);
        assert_eq!(segments(&again, "OBX")[0][11], "C");
    }

    #[test]
    fn a_document_is_the_readable_record_in_tx_lines_without_the_person() {
        let defs = definitions();
        let goal = with_subject(json!({"resourceType": "Goal", "lifecycleStatus": "active",
            "description": {"text": "Getting out | about"}, "startDate": "2023-03-24",
            "meta": {"source": "urn:x"}}));
        let body = defs["Goal"].body(&goal, "g1", "now", false);
        let obx = &segments(&body, "OBX")[0];
        assert_eq!(obx[2], "TX");
        assert_eq!(obx[5], "Description: Getting out \\F\\ about~Lifecycle status: active~Start date: 24 Mar 2023");
        assert!(!obx[5].contains("Brontë") && !obx[5].contains("urn:x"), "{}", obx[5]);
        let txa = &segments(&body, "TXA")[0];
        assert_eq!(txa[12], "g1^YORKHUB");
        let long = json!({"resourceType": "Goal", "note": [{"text": "x".repeat(70_000)}], "startDate": "2023-03-24"});
        let cut = document(&scope(&long));
        assert!(cut.len() <= MAX_DOCUMENT_CHARS + 60 && cut.ends_with("~(cut here: the rest is in the source record)"));
        assert!(cut.split('~').all(|l| l.len() <= MAX_LINE_CHARS));
    }

    #[test]
    fn long_lines_wrap_at_spaces_and_never_inside_an_escape() {
        let line = format!("Note: {} and|{}", "word ".repeat(50).trim_end(), "y".repeat(300));
        let pieces = wrap(&line, 40);
        assert!(pieces.iter().all(|p| p.len() <= 40), "{pieces:?}");
        assert!(pieces[0].starts_with("Note: word word") && pieces[0].ends_with("word"), "{pieces:?}");
        assert_eq!(unescape(&pieces.concat().replace(' ', "")), line.replace(' ', ""));
        for p in &pieces {
            assert_eq!(p.matches('\\').count() % 2, 0, "an escape cut in two: {p}");
        }
        assert_eq!(wrap("", 40), [""]);
    }
}
