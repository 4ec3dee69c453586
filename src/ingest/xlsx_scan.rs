//! Checks an XLSX package before calamine opens it, so that reading it keeps to the bounds in `limits`.
//!
//! calamine unpacks parts as it goes and holds whole XML events, whole cells and the whole shared-strings
//! table; it trusts the cell references and counts it finds. A few KB of zip can therefore claim gigabytes.
//! This pass streams every part once (nothing is kept but counters), and refuses the file when a part
//! unpacks to more than its share, an XML event or a cell is too long, a cell reference lies beyond XFD or
//! row 1,048,576, or a count would make calamine reserve memory for strings that are not there.

use std::fs::File;
use std::io::{BufReader, Read};

use super::limits::{
    MAX_XLSX_BINARY_PART_BYTES, MAX_XLSX_COLUMNS, MAX_XLSX_OPEN_PARTS_BYTES, MAX_XLSX_ROWS, MAX_XLSX_UNPACKED_BYTES,
    MAX_XML_CELL_BYTES,
};

const MIB: u64 = 1024 * 1024;
const REEXPORT: &str =
    "the file is damaged or was not written by a spreadsheet program; re-export it from the case system";

/// Streams every part of the package; `Err` says which part broke which bound, and what to do.
pub(super) fn check(file: &File) -> Result<(), String> {
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| format!("not a readable XLSX workbook (an XLSX is a zip file): {e}"))?;
    let open_parts = parts_read_on_open(&mut zip)?;
    let mut unpacked_total = 0u64;
    let mut open_total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| format!("part {i} of the zip cannot be read: {e}"))?;
        if entry.is_dir() {
            continue;
        }
        let raw_name =
            entry.name().map_err(|e| format!("part {i} of the zip has an unreadable name: {e}"))?.into_owned();
        let name = shown(&raw_name);
        let normalised = normalise(&raw_name);
        let is_open_part = open_parts.contains(&normalised);
        let lower = normalised.as_str();
        let mut scanner: Option<Scanner> =
            (lower.ends_with(".xml") || lower.ends_with(".rels")).then(|| Scanner::new(&name));
        let mut first = true;
        let mut size = 0u64;
        loop {
            let n = entry.read(&mut buf).map_err(|e| format!("part {name} cannot be unpacked: {e}"))?;
            if n == 0 {
                break;
            }
            let chunk = &buf[..n];
            if first {
                first = false;
                // Whatever calamine may be pointed at as a sheet is read as XML, so XML is scanned by content.
                let start = chunk.iter().position(|b| !b" \t\r\n\xef\xbb\xbf".contains(b));
                if scanner.is_none() && start.is_some_and(|s| chunk[s] == b'<') {
                    scanner = Some(Scanner::new(&name));
                }
            }
            size += n as u64;
            unpacked_total += n as u64;
            if is_open_part {
                open_total += n as u64;
            }
            if is_open_part && open_total > MAX_XLSX_OPEN_PARTS_BYTES {
                return Err(format!(
                    "the workbook's shared strings, styles and relationships unpack to more than {} MiB (part {name}), over the limit; {REEXPORT}, or split the export",
                    MAX_XLSX_OPEN_PARTS_BYTES / MIB
                ));
            }
            if unpacked_total > MAX_XLSX_UNPACKED_BYTES {
                return Err(format!(
                    "the workbook unpacks to more than {} MiB (part {name}), over the limit; split the export",
                    MAX_XLSX_UNPACKED_BYTES / MIB
                ));
            }
            match scanner.as_mut() {
                Some(s) => s.feed(chunk)?,
                None if size > MAX_XLSX_BINARY_PART_BYTES => {
                    return Err(format!(
                        "part {name} unpacks to more than {} MiB; {REEXPORT}, without images or macros",
                        MAX_XLSX_BINARY_PART_BYTES / MIB
                    ));
                }
                None => {}
            }
        }
        if let Some(s) = scanner {
            s.finish()?;
        }
    }
    Ok(())
}

/// The parts calamine reads whole when it opens a workbook, as calamine finds them (`_rels/.rels` names the
/// workbook; the others sit beside it), normalised.
fn parts_read_on_open<R: Read + std::io::Seek>(zip: &mut zip::ZipArchive<R>) -> Result<Vec<String>, String> {
    let mut target = None;
    let index = (0..zip.len())
        .find(|&i| zip.name_for_index(i).and_then(Result::ok).is_some_and(|n| normalise(&n) == "_rels/.rels"));
    if let Some(i) = index {
        let mut entry = zip.by_index(i).map_err(|e| format!("part _rels/.rels cannot be read: {e}"))?;
        let mut scanner = Scanner::new("_rels/.rels");
        scanner.relationships = Some(Vec::new());
        let mut buf = vec![0u8; 16 * 1024];
        let mut size = 0u64;
        loop {
            let n = entry.read(&mut buf).map_err(|e| format!("part _rels/.rels cannot be unpacked: {e}"))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            if size > MAX_XLSX_OPEN_PARTS_BYTES {
                return Err(format!("part _rels/.rels unpacks to more than {} MiB; {REEXPORT}", size / MIB));
            }
            scanner.feed(&buf[..n])?;
        }
        target = scanner
            .relationships
            .unwrap_or_default()
            .into_iter()
            .find(|(kind, _)| kind.ends_with("/relationships/officeDocument"))
            .map(|(_, target)| target);
    }
    let target = target.unwrap_or_else(|| "xl/workbook.xml".into());
    let (dir, name) = match target.rfind('/') {
        Some(i) => target.split_at(i + 1),
        None => ("", target.as_str()),
    };
    let dir = dir.strip_prefix('/').unwrap_or(dir);
    let name = if name.is_empty() { "workbook.xml" } else { name };
    Ok(["_rels/.rels".to_string(), format!("{dir}{name}"), format!("{dir}_rels/{name}.rels")]
        .into_iter()
        .chain(["sharedStrings.xml", "styles.xml", "theme/theme1.xml"].iter().map(|p| format!("{dir}{p}")))
        .map(|p| normalise(&p))
        .collect())
}

/// Zip part names as calamine compares them: case-insensitive, forward slashes, no leading slash.
fn normalise(name: &str) -> String {
    name.replace('\\', "/").trim_start_matches('/').to_lowercase()
}

/// A part name or attribute value as shown in a message: printable and short.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(80).collect();
    if s.chars().count() > 80 {
        out.push('…');
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Markup {
    Undecided,
    Element,
    Comment,
    CData,
    Instruction,
}

/// A streaming XML scanner that measures, without building anything: the bytes of each event, of each cell,
/// and the references and counts calamine trusts.
struct Scanner {
    part: String,
    in_markup: bool,
    text_run: usize,
    markup: Vec<u8>,
    kind: Markup,
    quote: u8,
    /// Open `<c>` / `<si>` elements, and the bytes since the outermost opened.
    cell_depth: u32,
    cell_bytes: usize,
    strings: u64,
    unique_count: Option<u64>,
    /// `(Type, Target)` of each `<Relationship>`, when wanted.
    relationships: Option<Vec<(String, String)>>,
}

impl Scanner {
    fn new(part: &str) -> Self {
        Self {
            part: shown(part),
            in_markup: false,
            text_run: 0,
            markup: Vec::new(),
            kind: Markup::Undecided,
            quote: 0,
            cell_depth: 0,
            cell_bytes: 0,
            strings: 0,
            unique_count: None,
            relationships: None,
        }
    }

    fn too_long(&self, what: &str) -> String {
        format!(
            "part {}: {what} is longer than {} KiB, which no spreadsheet cell needs (a cell holds at most 32,767 characters); {REEXPORT}",
            self.part,
            MAX_XML_CELL_BYTES / 1024
        )
    }

    fn feed(&mut self, bytes: &[u8]) -> Result<(), String> {
        for &b in bytes {
            if self.cell_depth > 0 {
                self.cell_bytes += 1;
                if self.cell_bytes > MAX_XML_CELL_BYTES {
                    return Err(self.too_long("a cell"));
                }
            }
            if !self.in_markup {
                if b == b'<' {
                    self.in_markup = true;
                    self.markup.clear();
                    self.markup.push(b);
                    self.kind = Markup::Undecided;
                    self.quote = 0;
                } else {
                    self.text_run += 1;
                    if self.text_run > MAX_XML_CELL_BYTES {
                        return Err(self.too_long("a text"));
                    }
                }
                continue;
            }
            self.markup.push(b);
            if self.markup.len() > MAX_XML_CELL_BYTES {
                return Err(self.too_long("a tag or comment"));
            }
            if self.kind == Markup::Undecided {
                self.kind = self.decide()?;
                if self.kind == Markup::Undecided {
                    continue;
                }
            }
            let m = &self.markup;
            let done = match self.kind {
                Markup::Element => {
                    if self.quote != 0 {
                        if b == self.quote {
                            self.quote = 0;
                        }
                        false
                    } else if b == b'"' || b == b'\'' {
                        self.quote = b;
                        false
                    } else {
                        b == b'>'
                    }
                }
                Markup::Comment => m.len() >= 7 && m.ends_with(b"-->"),
                Markup::CData => m.len() >= 12 && m.ends_with(b"]]>"),
                Markup::Instruction => m.len() >= 4 && m.ends_with(b"?>"),
                Markup::Undecided => false,
            };
            if done {
                if self.kind == Markup::Element {
                    self.element()?;
                }
                self.in_markup = false;
                self.text_run = 0;
            }
        }
        Ok(())
    }

    /// What kind of markup has started, once enough of it is in; a DTD is refused (spreadsheets have none,
    /// and entity declarations are how small XML files become large).
    fn decide(&self) -> Result<Markup, String> {
        let m = &self.markup;
        let dtd =
            || format!("part {}: the XML declares a document type, which spreadsheets never do; {REEXPORT}", self.part);
        Ok(match m.get(1) {
            None => Markup::Undecided,
            Some(b'?') => Markup::Instruction,
            Some(b'!') => {
                if m.starts_with(b"<!--") {
                    Markup::Comment
                } else if m.starts_with(b"<![CDATA[") {
                    Markup::CData
                } else if b"<!--".starts_with(m) || b"<![CDATA[".starts_with(m) {
                    Markup::Undecided
                } else {
                    return Err(dtd());
                }
            }
            Some(_) => Markup::Element,
        })
    }

    /// A complete start, end or empty-element tag: `<` .. `>`.
    fn element(&mut self) -> Result<(), String> {
        let markup = std::mem::take(&mut self.markup);
        let result = self.tag(&markup[1..markup.len() - 1]);
        self.markup = markup;
        result
    }

    fn tag(&mut self, inner: &[u8]) -> Result<(), String> {
        if let Some(rest) = inner.strip_prefix(b"/") {
            let local = local_name(rest);
            if (local == b"c" || local == b"si") && self.cell_depth > 0 {
                self.cell_depth -= 1;
                if self.cell_depth == 0 {
                    self.cell_bytes = 0;
                }
            }
            return Ok(());
        }
        let empty = inner.ends_with(b"/");
        let local = local_name(inner).to_vec();
        match local.as_slice() {
            b"c" | b"si" => {
                if local == b"si" {
                    self.strings += 1;
                }
                if !empty {
                    self.cell_depth += 1;
                }
                if local == b"c"
                    && let Some(r) = attribute(inner, b"r")
                {
                    self.cell_reference(&r, "cell")?;
                }
            }
            b"row" => {
                if let Some(r) = attribute(inner, b"r") {
                    let row = std::str::from_utf8(&r).ok().and_then(|s| s.parse::<u32>().ok());
                    if !row.is_some_and(|n| (1..=MAX_XLSX_ROWS).contains(&n)) {
                        return Err(format!(
                            "part {}: row number \"{}\" is not between 1 and {MAX_XLSX_ROWS}, the rows a spreadsheet can have; {REEXPORT}",
                            self.part,
                            shown(&String::from_utf8_lossy(&r))
                        ));
                    }
                }
            }
            b"dimension" => {
                if let Some(r) = attribute(inner, b"ref") {
                    let parts: Vec<&[u8]> = r.split(|&b| b == b':').collect();
                    let mut corners = Vec::new();
                    for p in &parts {
                        corners.push(self.cell_reference(p, "the sheet's dimension")?);
                    }
                    let backwards = corners.len() == 2 && (corners[1].0 < corners[0].0 || corners[1].1 < corners[0].1);
                    if corners.len() > 2 || backwards {
                        return Err(format!(
                            "part {}: the sheet's dimension \"{}\" is not a range of cells; {REEXPORT}",
                            self.part,
                            shown(&String::from_utf8_lossy(&r))
                        ));
                    }
                }
            }
            b"sst" => {
                self.unique_count = attribute(inner, b"uniqueCount")
                    .and_then(|v| std::str::from_utf8(&v).ok().and_then(|s| s.trim().parse().ok()));
            }
            b"Relationship" => {
                if let Some(list) = self.relationships.as_mut() {
                    let get = |name: &[u8]| {
                        attribute(inner, name).map(|v| unescape(&String::from_utf8_lossy(&v))).unwrap_or_default()
                    };
                    list.push((get(b"Type"), get(b"Target")));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A reference such as `B12`: at most XFD and row 1,048,576. Returns (row, column), 1-based.
    fn cell_reference(&self, r: &[u8], what: &str) -> Result<(u32, u32), String> {
        let letters = r.iter().take_while(|b| b.is_ascii_alphabetic()).count();
        let digits = &r[letters..];
        let column = r[..letters]
            .iter()
            .try_fold(0u32, |acc, b| acc.checked_mul(26)?.checked_add(u32::from(b.to_ascii_uppercase() - b'A') + 1));
        let row = std::str::from_utf8(digits)
            .ok()
            .filter(|d| !d.is_empty() && d.len() <= 7 && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u32>().ok());
        match (column, row) {
            (Some(c), Some(row)) if letters > 0 && c <= MAX_XLSX_COLUMNS && (1..=MAX_XLSX_ROWS).contains(&row) => {
                Ok((row, c))
            }
            _ => Err(format!(
                "part {}: {what} \"{}\" lies beyond column XFD or row {MAX_XLSX_ROWS}, the last a spreadsheet can have (or is not a cell reference); {REEXPORT}",
                self.part,
                shown(&String::from_utf8_lossy(r))
            )),
        }
    }

    fn finish(self) -> Result<(), String> {
        if let Some(claimed) = self.unique_count
            && claimed > self.strings
        {
            return Err(format!(
                "part {}: the shared strings claim {claimed} strings but hold {}; {REEXPORT}",
                self.part, self.strings
            ));
        }
        Ok(())
    }
}

/// The element name after any namespace prefix: `x:c` -> `c`.
fn local_name(tag: &[u8]) -> &[u8] {
    let end = tag.iter().position(|b| b.is_ascii_whitespace() || *b == b'/').unwrap_or(tag.len());
    let name = &tag[..end];
    match name.iter().rposition(|&b| b == b':') {
        Some(i) => &name[i + 1..],
        None => name,
    }
}

/// The raw value of an attribute in a tag's inside (`c r="A1" t="s"`), by exact name.
fn attribute(inner: &[u8], wanted: &[u8]) -> Option<Vec<u8>> {
    let mut i = inner.iter().position(|b| b.is_ascii_whitespace())?;
    while i < inner.len() {
        while i < inner.len() && (inner[i].is_ascii_whitespace() || inner[i] == b'/') {
            i += 1;
        }
        let start = i;
        while i < inner.len() && inner[i] != b'=' && !inner[i].is_ascii_whitespace() {
            i += 1;
        }
        let name = &inner[start..i];
        while i < inner.len() && (inner[i].is_ascii_whitespace() || inner[i] == b'=') {
            i += 1;
        }
        let quote = *inner.get(i)?;
        if quote != b'"' && quote != b'\'' {
            return None;
        }
        let value_start = i + 1;
        let len = inner[value_start..].iter().position(|&b| b == quote)?;
        if name == wanted {
            return Some(inner[value_start..value_start + len].to_vec());
        }
        i = value_start + len + 1;
    }
    None
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
}
