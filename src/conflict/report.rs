//! What an admin reads to decide conflicts, as a self-contained HTML page (`conflicts report`): each conflict
//! named by its partner's reference and record kind, each differing element in words with what each side
//! changed since the version last sent (see [`super::view`]), and the commands that decide it. The page holds
//! personal data and says so; it runs no script and loads nothing (a Content-Security-Policy forbids both),
//! and every value from the data is escaped, since a partner's free text may contain markup.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::readable::Change;
use super::view::{ConflictView, SideView};
use crate::store::ConflictRecord;

pub use super::view::{ElementRow, element_rows};

/// Nothing but the inline style runs or loads: no script, no remote fetch, no form, no `<base>`.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'";

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
h2{font-size:1.2rem;margin:0 0 .2rem}
h3{font-size:1rem;margin:1rem 0 .4rem}
.banner{background:#fdecea;border:2px solid #c62828;color:#8e0000;padding:.6rem .9rem;font-weight:600;margin:1rem 0}
.meta{color:#444;margin:.2rem 0}
.ids{color:#666;font-size:.8rem;margin:0 0 .6rem;font-family:ui-monospace,Menlo,Consolas,monospace}
section{border:1px solid #ccc;border-radius:6px;padding:1rem;margin:1.5rem 0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;margin:.5rem 0 1rem}
dt{font-weight:600}dd{margin:0}
.what{color:#555}
table{border-collapse:collapse;width:100%;table-layout:fixed}
th,td{border:1px solid #bbb;padding:.45rem;vertical-align:top;text-align:left;overflow-wrap:anywhere}
thead th{background:#eceff1}
col.name{width:17%}
tbody th{font-weight:600}
tbody th code{display:block;font-weight:400;font-size:.75rem;color:#555}
tr.conflict th,tr.conflict td{background:#fff8e1}
td.moved{background:#ffe9a8 !important;box-shadow:inset 4px 0 0 #e65100}
.item,.change{margin:0 0 .3rem}
.label{font-weight:600}
.value,.was,.now{display:inline-block;vertical-align:top}
.was{color:#555}
.now{font-weight:600}
.arrow{margin:0 .35rem;color:#e65100;font-weight:700}
.multi .was,.multi .now{display:block;padding-left:1.4rem}
.multi .now{text-indent:-1.4rem}
.multi .arrow{display:inline-block;width:1.4rem;margin:0;text-indent:0}
.badge{display:inline-block;font-size:.72rem;font-weight:700;padding:.05rem .4rem;border-radius:3px;margin-top:.3rem}
.badge.conflict{background:#e65100;color:#fff}
.badge.changed{background:#78909c;color:#fff}
.missing{color:#777;font-style:italic}
.decide{background:#f1f8e9;border:1px solid #9ccc65;border-radius:4px;padding:.4rem .8rem;margin-top:1rem}
.decide ul{margin:.2rem 0;padding-left:1.2rem}
.decide li{margin:.3rem 0}
.decide code{font-size:.95rem;font-weight:700;background:#fff;border:1px solid #c5e1a5;padding:.05rem .3rem;white-space:pre-wrap}
.empty{font-size:1.1rem;margin:2rem 0}
@media print{
body{margin:0;font-size:10pt}
section{border:none;padding:0;margin:0}
section+section{break-before:page;page-break-before:always}
table{table-layout:auto}
thead{display:table-header-group}
tr{break-inside:avoid;page-break-inside:avoid}
th,td,code,.value,.was,.now{white-space:normal;overflow:visible;overflow-wrap:anywhere}
.banner,.badge,tr.conflict th,tr.conflict td,td.moved,.decide{-webkit-print-color-adjust:exact;print-color-adjust:exact}
}
";

/// A self-contained HTML page (inline style, no script, nothing fetched) of the conflicts. `program` is how
/// the admin runs the connector, for the commands that decide each conflict.
pub fn html(conflicts: &[ConflictRecord], generated_at: DateTime<Utc>, program: &str) -> String {
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    let _ = writeln!(out, "<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">");
    out.push_str("<meta name=\"referrer\" content=\"no-referrer\">\n");
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
        section(&mut out, &ConflictView::new(c), program);
    }
    out.push_str("</body>\n</html>\n");
    out
}

fn section(out: &mut String, view: &ConflictView<'_>, program: &str) {
    let e = escape;
    let c = view.record;
    let _ = writeln!(out, "<section id=\"conflict-{}\">\n<h2>{}</h2>", c.id, e(&view.title()));
    let at = if c.remote_id == c.resource_id {
        String::new()
    } else {
        format!(" (id at {}: {})", c.destination, c.remote_id)
    };
    let _ = writeln!(out, "<p class=\"ids\">{}/{}{}</p>\n<dl>", e(&c.resource_type), e(&c.resource_id), e(&at));
    let reference = match &view.reference {
        Some(r) => format!("{} <span class=\"what\">({})</span>", e(&r.value), e(&r.what)),
        None => "<span class=\"missing\">(not in the versions kept)</span>".into(),
    };
    let _ = writeln!(out, "<dt>Partner&#39;s reference</dt><dd>{reference}</dd>");
    let _ = writeln!(out, "<dt>Partner</dt><dd>{}</dd>", e(&view.partner));
    let _ = writeln!(out, "<dt>Status</dt><dd>{}</dd>", status(view));
    let in_conflict: Vec<String> = view
        .rows
        .iter()
        .filter(|r| r.conflict)
        .map(|r| format!("{} (<code>{}</code>)", e(&r.words), e(&r.element)))
        .collect();
    let in_conflict = if in_conflict.is_empty() { "(none kept)".to_string() } else { in_conflict.join(", ") };
    let _ = writeln!(out, "<dt>In conflict</dt><dd>{in_conflict}</dd>\n</dl>");
    if !view.base_kept && c.status == crate::model::ConflictStatus::Open {
        out.push_str(
            "<p class=\"meta\">The version last sent is not kept: both sides&#39; values are shown in full.</p>\n",
        );
    }
    table(out, view);
    let resolutions = view.resolutions(program);
    if !resolutions.is_empty() {
        out.push_str("<div class=\"decide\"><h3>Decide with one of</h3>\n<ul>\n");
        for r in resolutions {
            let _ = writeln!(out, "<li>{}:<br><code>{}</code></li>", e(&r.effect), e(&r.command));
        }
        out.push_str("</ul></div>\n");
    }
    out.push_str("</section>\n");
}

fn status(view: &ConflictView<'_>) -> String {
    let c = view.record;
    let mut status = escape(c.status.as_str());
    match &c.resolution {
        Some(r) => {
            let _ = write!(status, " (kept {}", escape(r));
            if let Some(by) = &c.resolved_by {
                let _ = write!(status, " by {}", escape(by));
            }
            if let Some(at) = c.resolved_at {
                let _ = write!(status, ", {}", time(at));
            }
            status.push(')');
        }
        None => {
            let _ = write!(status, " since {}", time(c.created_at));
        }
    }
    status
}

fn table(out: &mut String, view: &ConflictView<'_>) {
    let e = escape;
    let c = view.record;
    let version = |v: &Option<String>| v.as_ref().map(|v| format!(" (version {})", e(v))).unwrap_or_default();
    let _ = writeln!(
        out,
        "<table>\n<colgroup><col class=\"name\"><col><col><col></colgroup>\n<thead><tr><th>Element</th>\
         <th>Last sent{}</th><th>{}&#39;s new version</th><th>{} now{}</th></tr></thead>\n<tbody>",
        version(&c.base_version),
        e(&view.partner),
        e(&c.destination),
        version(&c.remote_version)
    );
    if view.rows.is_empty() {
        out.push_str("<tr><td colspan=\"4\" class=\"missing\">No differing elements kept.</td></tr>\n");
    }
    for row in &view.rows {
        let class = if row.conflict { "conflict" } else { "changed" };
        let _ = write!(
            out,
            "<tr class=\"{class}\"><th scope=\"row\">{}<code>{}</code><span class=\"badge {class}\">{}</span></th>",
            e(&row.words),
            e(&row.element),
            e(&view.sides_words(row.sides))
        );
        for side in [&row.last_sent, &row.partner, &row.destination] {
            cell(out, side);
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
}

fn cell(out: &mut String, side: &SideView) {
    let e = escape;
    let lines = |lines: &[String]| lines.iter().map(|l| e(l)).collect::<Vec<_>>().join("<br>");
    let (class, body) = match side {
        SideView::NotKept => ("", "<span class=\"missing\">(version not kept)</span>".to_string()),
        SideView::Unchanged => ("", "<span class=\"missing\">(unchanged)</span>".to_string()),
        SideView::Holds(items) if items.is_empty() => ("", "<span class=\"missing\">(absent)</span>".to_string()),
        SideView::Holds(items) => {
            let body = items.iter().map(|i| {
                format!(
                    "<div class=\"item\"><span class=\"label\">{}:</span> <span class=\"value\">{}</span></div>",
                    e(&i.label),
                    lines(&i.lines)
                )
            });
            ("", body.collect())
        }
        SideView::Changed(changes) => {
            let body = changes.iter().map(|ch| {
                let (multi, inner) = match ch {
                    // An address: the old lines, then the new ones under them, the arrow before the first.
                    Change::Changed { label, was, now } => (
                        was.len() > 1 || now.len() > 1,
                        format!(
                            "<span class=\"label\">{}:</span> <span class=\"was\">{}</span><span class=\"now\">\
                             <span class=\"arrow\">→</span>{}</span>",
                            e(label),
                            lines(was),
                            lines(now)
                        ),
                    ),
                    Change::Added(i) | Change::Removed(i) => {
                        let (class, word) =
                            if matches!(ch, Change::Added(_)) { ("now", "added") } else { ("was", "removed") };
                        let label = e(&i.label);
                        let value = lines(&i.lines);
                        (
                            false,
                            format!(
                                "<span class=\"label\">{label}:</span> <span class=\"{class}\">{value}</span> \
                                 <span class=\"missing\">({word})</span>"
                            ),
                        )
                    }
                };
                format!("<div class=\"change{}\">{inner}</div>", if multi { " multi" } else { "" })
            });
            (" class=\"moved\"", body.collect())
        }
    };
    let _ = write!(out, "<td{class}>{body}</td>");
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::super::view::fixture;
    use super::*;

    #[test]
    fn page_names_the_record_shows_values_in_words_and_the_commands() {
        let page = html(&[fixture::conflict()], Utc::now(), "connector");
        assert!(page.contains("<h2>Conflict 7: Person (Patient) HUB-1008 from hub, at cito</h2>"), "{page}");
        assert!(page.contains("<p class=\"ids\">Patient/p1</p>"));
        assert!(
            page.contains("<dt>Partner&#39;s reference</dt><dd>HUB-1008 <span class=\"what\">(hub client ID)</span>")
        );
        assert!(page.contains(
            "<div class=\"change\"><span class=\"label\">Mobile phone:</span> <span class=\"was\">07700 900678</span>\
             <span class=\"now\"><span class=\"arrow\">→</span>07700 900679</span></div>"
        ));
        assert!(page.contains("<span class=\"label\">Home email:</span> <span class=\"was\">alex.t@example.com</span> <span class=\"missing\">(removed)</span>"));
        // An address as lines; the row says who changed it.
        assert!(page.contains(
            "<div class=\"change multi\"><span class=\"label\">Home address:</span> <span class=\"was\">9 Hull Road<br>York<br>\
             YO10 3JL</span><span class=\"now\"><span class=\"arrow\">→</span>1 Clinician Street<br>York<br>YO10 3JL</span></div>"
        ));
        assert!(page.contains("<span class=\"badge changed\">changed on cito only</span>"));
        assert!(page.contains(
            "Phone and email<code>telecom</code><span class=\"badge conflict\">changed on both sides</span>"
        ));
        assert!(
            page.contains("<th>Last sent (version 3)</th><th>hub&#39;s new version</th><th>cito now (version 5)</th>")
        );
        assert!(page.contains(
            "<li>Write hub&#39;s version to cito (the sharing rules are checked again first):<br>\
             <code>connector conflicts resolve 7 --keep source</code></li>"
        ));
        assert!(page.contains(
            "<li>Keep cito&#39;s version as it is; hub&#39;s is not proposed again:<br>\
             <code>connector conflicts resolve 7 --keep remote</code></li>"
        ));
        assert!(page.contains("Contains personal data"));
    }

    #[test]
    fn page_forbids_scripts_and_remote_loads_and_prints_each_conflict_on_its_own_pages() {
        let page =
            html(&[fixture::conflict(), ConflictRecord { id: 8, ..fixture::conflict() }], Utc::now(), "connector");
        assert!(page.contains(
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; \
             base-uri 'none'; form-action 'none'\">"
        ));
        // The policy comes before anything it governs.
        assert!(page.find("Content-Security-Policy") < page.find("<style>"));
        assert!(
            !page.contains("<script") && !page.contains("<link") && !page.contains("<img") && !page.contains("http://")
        );
        assert!(page.contains("@media print{"));
        assert!(page.contains("section+section{break-before:page;page-break-before:always}"));
        assert!(page.contains("thead{display:table-header-group}"));
        assert_eq!(page.matches("<section id=\"conflict-").count(), 2);
    }

    #[test]
    fn markup_in_the_data_is_shown_as_text() {
        let mut c = fixture::conflict();
        let mut source = fixture::patient("07700900679", true, "9 Hull Road", "3");
        source["name"] = json!([{"family": "Turner", "given": ["<script>alert(1)</script>"]}]);
        let mut remote = fixture::patient("07700 900111", false, "\"><img src=x onerror=alert(1)>", "5");
        remote["identifier"][1]["value"] = json!("HUB-<b>1008</b>");
        c.source_json = Some(source.to_string());
        c.remote_json = Some(remote.to_string());
        c.destination = "pkb'<b>".into();
        let page = html(&[c], Utc::now(), "connector --config '/tmp/a<b>.toml'");
        assert!(!page.contains("<script"), "unescaped markup in the page");
        assert!(!page.contains("<img") && !page.contains("<b>"));
        assert!(page.contains("→</span>&lt;script&gt;alert(1)&lt;/script&gt; Turner</span>"), "{page}");
        assert!(page.contains("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;<br>York"));
        assert!(page.contains("from hub, at pkb&#39;&lt;b&gt;</h2>"));
        assert!(page.contains(
            "<code>connector --config &#39;/tmp/a&lt;b&gt;.toml&#39; conflicts resolve 7 --keep source</code>"
        ));
    }

    #[test]
    fn a_missing_base_shows_both_sides_whole() {
        let c = ConflictRecord { base_json: None, base_version: None, ..fixture::conflict() };
        let page = html(&[c], Utc::now(), "connector");
        assert!(page.contains("The version last sent is not kept"));
        assert!(page.contains("<td><span class=\"missing\">(version not kept)</span></td>"));
        assert!(page.contains("<span class=\"label\">Mobile phone:</span> <span class=\"value\">07700 900111</span>"));
        assert!(page.contains("<span class=\"badge conflict\">changed on both sides</span>"));
    }

    #[test]
    fn page_without_conflicts_says_so() {
        let page = html(&[], Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap(), "connector");
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("<meta charset=\"utf-8\">") && page.contains("<meta name=\"viewport\""));
        assert!(page.contains("Content-Security-Policy"));
        assert!(page.contains("<title>Conflicts — York Hub connector</title>"));
        assert!(page.contains("No open conflicts."));
        assert!(page.contains("Generated 2025-01-02 03:04:05 UTC. 0 conflict(s)."));
        assert!(!page.contains("<section"));
    }
}
