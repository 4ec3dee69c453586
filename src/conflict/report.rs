//! What an admin reads to decide a conflict: the three versions of a resource (last sent, the partner's new one,
//! the destination's current one) side by side, element by element, for the terminal (`conflicts show`) and as a
//! self-contained HTML page (`conflicts report`). The page holds personal data and says so; every value from the
//! data is escaped, since a partner's free text may contain markup.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::store::ConflictRecord;

/// One element of the resource as the three versions hold it. A value is `None` when that version lacks the
/// element or the version itself is not kept.
#[derive(Debug, Clone, PartialEq)]
pub struct ElementRow {
    pub name: String,
    pub base: Option<Value>,
    pub source: Option<Value>,
    pub remote: Option<Value>,
    /// Changed on both sides to different values (named in the conflict).
    pub conflict: bool,
}

/// A version's content (see [`super::comparable`]); `None` when it is not kept or not JSON.
fn document(text: Option<&str>) -> Option<Value> {
    text.and_then(|t| serde_json::from_str::<Value>(t).ok()).map(|v| super::comparable(&v))
}

/// The versions kept for a conflict: last sent, the partner's new one, the destination's current one.
fn documents(c: &ConflictRecord) -> [Option<Value>; 3] {
    [document(c.base_json.as_deref()), document(c.source_json.as_deref()), document(c.remote_json.as_deref())]
}

/// The elements whose value is not the same in every version kept: the conflicting ones first, then by name.
pub fn element_rows(c: &ConflictRecord) -> Vec<ElementRow> {
    let docs = documents(c);
    let names: BTreeSet<&String> = docs
        .iter()
        .flatten()
        .filter_map(Value::as_object)
        .flat_map(|o| o.keys())
        .chain(c.elements.iter())
        .filter(|k| !super::NOT_ELEMENTS.contains(&k.as_str()))
        .collect();
    let mut rows: Vec<ElementRow> = names
        .into_iter()
        .filter_map(|name| {
            let present: Vec<Option<&Value>> = docs.iter().flatten().map(|d| d.get(name)).collect();
            let conflict = c.elements.contains(name);
            let differ = present.windows(2).any(|w| w[0] != w[1]);
            if !differ && !conflict {
                return None;
            }
            let value = |i: usize| docs[i].as_ref().and_then(|d| d.get(name)).cloned();
            Some(ElementRow { name: name.clone(), base: value(0), source: value(1), remote: value(2), conflict })
        })
        .collect();
    rows.sort_by(|a, b| b.conflict.cmp(&a.conflict).then_with(|| a.name.cmp(&b.name)));
    rows
}

/// A value on one line: strings as they are, anything else as compact JSON.
pub fn value_text(v: Option<&Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Text made safe for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:1.5rem;color:#1b1b1b;background:#fff}
h1{font-size:1.5rem;margin:0 0 .25rem}
h2{font-size:1.15rem;margin:0 0 .5rem}
.banner{background:#fdecea;border:2px solid #c62828;color:#8e0000;padding:.6rem .9rem;font-weight:600;margin:1rem 0}
.meta{color:#444;margin:.2rem 0}
section{border:1px solid #ccc;border-radius:6px;padding:1rem;margin:1.5rem 0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;margin:.5rem 0 1rem}
dt{font-weight:600}dd{margin:0}
table{border-collapse:collapse;width:100%;table-layout:fixed}
th,td{border:1px solid #bbb;padding:.4rem;vertical-align:top;text-align:left}
th{background:#eceff1}
col.name{width:13%}
pre{margin:0;white-space:pre-wrap;word-break:break-word;overflow-wrap:anywhere;font-size:.85rem;\
font-family:ui-monospace,Menlo,Consolas,monospace}
tr.conflict td{background:#fff3cd}
tr.conflict th{background:#ffe8a1}
tr.conflict td.differs{background:#ffd54f;box-shadow:inset 4px 0 0 #e65100}
tr.changed td{background:#f5f9ff}
.badge{display:inline-block;font-size:.75rem;font-weight:700;padding:.05rem .4rem;border-radius:3px;margin-left:.3rem}
.badge.conflict{background:#e65100;color:#fff}
.badge.changed{background:#90a4ae;color:#fff}
.note{display:block;font-size:.75rem;color:#6d4c00;font-weight:600;margin-top:.3rem}
.missing{color:#777;font-style:italic}
.empty{font-size:1.1rem;margin:2rem 0}
";

/// A self-contained HTML page (inline style, no script, nothing fetched) showing each conflict side by side.
pub fn html(conflicts: &[ConflictRecord], generated_at: DateTime<Utc>) -> String {
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    out.push_str("<title>Conflicts — York Hub connector</title>\n<style>\n");
    out.push_str(STYLE);
    out.push_str("</style>\n</head>\n<body>\n<h1>Conflicts — York Hub connector</h1>\n");
    let _ = writeln!(out, "<p class=\"meta\">Generated {}. {} conflict(s).</p>", time(generated_at), conflicts.len());
    out.push_str(
        "<p class=\"banner\">Contains personal data: keep it on the admin's machine and delete it after use.</p>\n",
    );
    if conflicts.is_empty() {
        out.push_str("<p class=\"empty\">No open conflicts.</p>\n");
    }
    for c in conflicts {
        section(&mut out, c);
    }
    out.push_str("</body>\n</html>\n");
    out
}

fn section(out: &mut String, c: &ConflictRecord) {
    let e = escape;
    let _ = writeln!(
        out,
        "<section id=\"conflict-{}\">\n<h2>Conflict {}: {}/{} at {}</h2>\n<dl>",
        c.id,
        c.id,
        e(&c.resource_type),
        e(&c.resource_id),
        e(&c.destination)
    );
    let mut status = e(c.status.as_str());
    if let Some(r) = &c.resolution {
        let _ = write!(status, " ({}", e(r));
        if let Some(by) = &c.resolved_by {
            let _ = write!(status, " by {}", e(by));
        }
        if let Some(at) = c.resolved_at {
            let _ = write!(status, ", {}", time(at));
        }
        status.push(')');
    }
    let _ = writeln!(out, "<dt>Status</dt><dd>{status}</dd>");
    let _ = writeln!(out, "<dt>Created</dt><dd>{}</dd>", time(c.created_at));
    let partner = c.origin.as_ref().and_then(crate::model::Provenance::partner);
    let _ = writeln!(out, "<dt>Partner</dt><dd>{}</dd>", e(partner.unwrap_or("(unknown)")));
    if c.remote_id != c.resource_id {
        let _ = writeln!(out, "<dt>Id at destination</dt><dd>{}</dd>", e(&c.remote_id));
    }
    let elements = if c.elements.is_empty() {
        "(none)".to_string()
    } else {
        c.elements.iter().map(|n| format!("<code>{}</code>", e(n))).collect::<Vec<_>>().join(", ")
    };
    let _ = writeln!(out, "<dt>Conflicting elements</dt><dd>{elements}</dd>\n</dl>");

    let version = |label: &str, v: &Option<String>| match v {
        Some(v) => format!("{label} (version {})", e(v)),
        None => label.to_string(),
    };
    let _ = writeln!(
        out,
        "<table>\n<colgroup><col class=\"name\"><col><col><col></colgroup>\n<thead><tr><th>Element</th><th>{}</th>\
         <th>Partner&#39;s new version</th><th>{}</th></tr></thead>\n<tbody>",
        version("Last sent", &c.base_version),
        version("Destination now", &c.remote_version)
    );
    let kept = documents(c).map(|d| d.is_some());
    let rows = element_rows(c);
    if rows.is_empty() {
        out.push_str("<tr><td colspan=\"4\" class=\"missing\">No differing elements kept.</td></tr>\n");
    }
    for row in &rows {
        let (class, badge) = if row.conflict {
            ("conflict", "<span class=\"badge conflict\">conflict</span>")
        } else {
            ("changed", "<span class=\"badge changed\">changed</span>")
        };
        let _ = write!(out, "<tr class=\"{class}\"><th scope=\"row\"><code>{}</code>{badge}", e(&row.name));
        if !row.conflict {
            let side = match (kept[0], row.source == row.base, row.remote == row.base) {
                (true, false, true) => "by the partner; merged",
                (true, true, false) => "at the destination; kept",
                _ => "",
            };
            if !side.is_empty() {
                let _ = write!(out, "<span class=\"note\">{side}</span>");
            }
        }
        out.push_str("</th>");
        cell(out, kept[0], row.base.as_ref(), false);
        for (i, value) in [(1, row.source.as_ref()), (2, row.remote.as_ref())] {
            // Within a conflict, point at the sides that moved away from what was last sent.
            let differs = row.conflict && kept[0] && kept[i] && value != row.base.as_ref();
            cell(out, kept[i], value, differs);
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

fn cell(out: &mut String, kept: bool, value: Option<&Value>, differs: bool) {
    let body = match (kept, value) {
        (false, _) => "<span class=\"missing\">(version not kept)</span>".to_string(),
        (true, None) => "<span class=\"missing\">(absent)</span>".to_string(),
        (true, Some(v)) => {
            let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
            format!("<pre>{}</pre>", escape(&text))
        }
    };
    if differs {
        let _ = write!(out, "<td class=\"differs\">{body}<span class=\"note\">≠ last sent</span></td>");
    } else {
        let _ = write!(out, "<td>{body}</td>");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn patient(telecom: &str, city: &str, version: &str) -> String {
        json!({
            "resourceType": "Patient", "id": "p1",
            "meta": {"versionId": version, "lastUpdated": "2025-01-01T00:00:00Z"},
            "text": {"status": "generated", "div": "<div>generated</div>"},
            "name": [{"family": "Smith", "given": ["Ann"]}],
            "telecom": [{"system": "phone", "value": telecom}],
            "address": [{"city": city}]
        })
        .to_string()
    }

    fn conflict() -> ConflictRecord {
        let t = Utc.with_ymd_and_hms(2025, 3, 4, 5, 6, 7).unwrap();
        ConflictRecord {
            id: 7,
            destination: "cito".into(),
            resource_type: "Patient".into(),
            resource_id: "p1".into(),
            remote_id: "p1".into(),
            origin: Some(crate::model::Provenance::decode("hub|patient|nfp-1|123")),
            elements: vec!["telecom".into()],
            base_version: Some("3".into()),
            base_json: Some(patient("01904 000001", "York", "3")),
            source_json: Some(patient("01904 000002", "York", "3")),
            remote_version: Some("5".into()),
            remote_json: Some(patient("01904 000003", "Selby", "5")),
            status: crate::model::ConflictStatus::Open,
            created_at: t,
            updated_at: t,
            ..Default::default()
        }
    }

    #[test]
    fn rows_put_the_conflict_first_and_show_one_sided_changes() {
        let rows = element_rows(&conflict());
        let names: Vec<(&str, bool)> = rows.iter().map(|r| (r.name.as_str(), r.conflict)).collect();
        // name, meta (server fields only) and text are the same everywhere, so they are not rows.
        assert_eq!(names, [("telecom", true), ("address", false)]);
        assert_eq!(value_text(rows[0].source.as_ref()), r#"[{"system":"phone","value":"01904 000002"}]"#);
        assert_eq!(value_text(rows[1].remote.as_ref()), r#"[{"city":"Selby"}]"#);
        assert_eq!(value_text(None), "(absent)");
        assert_eq!(value_text(Some(&json!("male"))), "male");
    }

    #[test]
    fn a_missing_base_still_gives_rows() {
        let c = ConflictRecord { base_json: None, base_version: None, ..conflict() };
        let rows = element_rows(&c);
        assert_eq!(rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["telecom", "address"]);
        assert!(rows[0].base.is_none());
        let page = html(&[c], Utc::now());
        assert!(page.contains("(version not kept)"));
    }

    #[test]
    fn page_escapes_data_and_marks_the_conflict() {
        let mut c = conflict();
        let evil = r#"<script>alert("x")</script>"#;
        c.source_json = Some(
            json!({"resourceType": "Patient", "id": "p1", "name": [{"family": evil}],
                   "telecom": [{"system": "phone", "value": "01904 000002"}], "address": [{"city": "York"}]})
            .to_string(),
        );
        c.destination = "pkb'<b>".into();
        let page = html(&[c], Utc::now());
        assert!(!page.contains("<script"), "unescaped markup in the page");
        assert!(page.contains("&lt;script&gt;alert(\\&quot;x\\&quot;)&lt;/script&gt;"));
        assert!(page.contains("Conflict 7: Patient/p1 at pkb&#39;&lt;b&gt;"));
        assert!(page.contains("Last sent (version 3)") && page.contains("Destination now (version 5)"));
        assert!(page.contains("<tr class=\"conflict\"><th scope=\"row\"><code>telecom</code>"));
        assert!(page.contains("class=\"differs\""));
        assert!(page.contains("<dt>Partner</dt><dd>hub</dd>"));
        assert!(page.contains("Contains personal data"));
    }

    #[test]
    fn page_without_conflicts_says_so() {
        let page = html(&[], Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap());
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("<meta charset=\"utf-8\">") && page.contains("<meta name=\"viewport\""));
        assert!(page.contains("<title>Conflicts — York Hub connector</title>"));
        assert!(page.contains("No open conflicts."));
        assert!(page.contains("Generated 2025-01-02 03:04:05 UTC. 0 conflict(s)."));
        assert!(!page.contains("<section"));
    }
}
