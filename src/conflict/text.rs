//! A conflict on a terminal (`connector conflicts show ID`): the same reading as the page (see [`super::view`])
//! in plain text, bold only when asked (a terminal without `NO_COLOR`).

use std::fmt::Write as _;

use super::readable::Change;
use super::view::{ConflictView, SideView};

const LABEL_WIDTH: usize = 16;

/// The conflict as text. `program` is how the admin runs the connector (for the commands to decide it);
/// `colour` adds bold and yellow for a terminal.
pub fn text(view: &ConflictView<'_>, program: &str, colour: bool) -> String {
    let style = |code: &str, s: &str| if colour { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() };
    let c = view.record;
    let mut out = String::new();
    let _ = writeln!(out, "{}", style("1", &view.title()));
    let mut fact = |label: &str, value: String| {
        let _ = writeln!(out, "  {label:<22}{value}");
    };
    match &view.reference {
        Some(r) => fact("Partner's reference", format!("{} ({})", r.value, r.what)),
        None => fact("Partner's reference", "(not in the versions kept)".into()),
    }
    let at =
        if c.remote_id == c.resource_id { String::new() } else { format!(" ({} id {})", c.destination, c.remote_id) };
    fact("Resource", format!("{}/{}{at}", c.resource_type, c.resource_id));
    fact("Status", status(view));
    let version =
        |v: &Option<String>| v.as_deref().map_or_else(|| "version not known".into(), |v| format!("version {v}"));
    fact(
        "Versions",
        format!("last sent {}; {} now {}", version(&c.base_version), c.destination, version(&c.remote_version)),
    );
    if !view.base_kept && c.status == crate::model::ConflictStatus::Open {
        fact("", "The version last sent is not kept: both sides' values are shown in full.".into());
    }
    for row in &view.rows {
        let mark = if row.conflict { "! " } else { "  " };
        let heading = format!("{mark}{} ({}): {}", row.words, row.element, view.sides_words(row.sides));
        let _ = writeln!(out, "\n{}", if row.conflict { style("1;33", &heading) } else { heading });
        let partner = format!("{} {}", view.partner, verb(&row.partner));
        let destination = format!("{} {}", c.destination, verb(&row.destination));
        for (label, side) in
            [("last sent", &row.last_sent), (partner.as_str(), &row.partner), (destination.as_str(), &row.destination)]
        {
            side_lines(&mut out, label, side);
        }
    }
    let resolutions = view.resolutions(program);
    if !resolutions.is_empty() {
        let _ = writeln!(out, "\n! = in conflict. Decide with one of:");
        for r in resolutions {
            let _ = writeln!(out, "  {}:\n    {}", r.effect, r.command);
        }
    }
    out
}

fn status(view: &ConflictView<'_>) -> String {
    let c = view.record;
    let since = c.created_at.format("%Y-%m-%d %H:%M UTC");
    match &c.resolution {
        Some(kept) => {
            let by = c.resolved_by.as_deref().map(|b| format!(" by {b}")).unwrap_or_default();
            let at = c.resolved_at.map(|t| t.format(", %Y-%m-%d %H:%M UTC").to_string()).unwrap_or_default();
            format!("{} (kept {kept}{by}{at}); its versions are cleared", c.status)
        }
        None => format!("{} since {since}", c.status),
    }
}

/// "changed" or "has", by what the side shows.
fn verb(side: &SideView) -> &'static str {
    match side {
        SideView::Changed(_) => "changed",
        _ => "has",
    }
}

/// One side of an element: its first line after the label, the rest under it.
fn side_lines(out: &mut String, label: &str, side: &SideView) {
    let lines: Vec<String> = match side {
        SideView::NotKept => vec!["(version not kept)".into()],
        SideView::Unchanged => vec!["(unchanged)".into()],
        SideView::Holds(items) if items.is_empty() => vec!["(absent)".into()],
        SideView::Holds(items) => items.iter().flat_map(|i| labelled(&i.label, &i.lines)).collect(),
        SideView::Changed(changes) => changes.iter().flat_map(change_lines).collect(),
    };
    for (i, line) in lines.iter().enumerate() {
        let label = if i == 0 { label } else { "" };
        let _ = writeln!(out, "    {label:<LABEL_WIDTH$}{line}");
    }
}

/// "Home address: 9 Hull Road" and its further lines aligned under the first.
fn labelled(label: &str, lines: &[String]) -> Vec<String> {
    let head = format!("{label}: ");
    let indent = " ".repeat(head.chars().count());
    lines.iter().enumerate().map(|(i, l)| if i == 0 { format!("{head}{l}") } else { format!("{indent}{l}") }).collect()
}

/// A change on one line, or, when a value has several lines (an address), as "was" and "now" blocks.
fn change_lines(change: &Change) -> Vec<String> {
    match change {
        Change::Changed { label, was, now } if was.len() > 1 || now.len() > 1 => {
            let mut out = vec![format!("{label}:")];
            for (word, lines) in [("was", was), ("now", now)] {
                out.extend(
                    lines.iter().enumerate().map(|(i, l)| format!("  {:<4}{l}", if i == 0 { word } else { "" })),
                );
            }
            out
        }
        Change::Added(item) if item.lines.len() > 1 => labelled(&format!("{} (added)", item.label), &item.lines),
        Change::Removed(item) if item.lines.len() > 1 => labelled(&format!("{} (removed)", item.label), &item.lines),
        other => vec![other.one_line()],
    }
}

#[cfg(test)]
mod tests {
    use super::super::view::fixture;
    use super::*;
    use crate::store::ConflictRecord;

    #[test]
    fn show_reads_like_the_page_in_plain_text() {
        let c = fixture::conflict();
        let shown = text(&ConflictView::new(&c), "connector", false);
        let expected = "\
Conflict 7: Person (Patient) HUB-1008 from hub, at cito
  Partner's reference   HUB-1008 (hub client ID)
  Resource              Patient/p1
  Status                open since 2025-03-04 05:06 UTC
  Versions              last sent version 3; cito now version 5

! Phone and email (telecom): changed on both sides
    last sent       Mobile phone: 07700 900678
                    Home email: alex.t@example.com
    hub changed     Mobile phone: 07700 900678 → 07700 900679
    cito changed    Mobile phone: 07700 900678 → 07700 900111
                    Home email: alex.t@example.com (removed)

  Address (address): changed on cito only
    last sent       Home address: 9 Hull Road
                                  York
                                  YO10 3JL
    hub has         (unchanged)
    cito changed    Home address:
                      was 9 Hull Road
                          York
                          YO10 3JL
                      now 1 Clinician Street
                          York
                          YO10 3JL

! = in conflict. Decide with one of:
  Write hub's version to cito (the sharing rules are checked again first):
    connector conflicts resolve 7 --keep source
  Keep cito's version as it is; hub's is not proposed again:
    connector conflicts resolve 7 --keep remote
";
        assert_eq!(shown, expected, "\n{shown}");
        assert!(!shown.contains('\x1b'));
        assert!(text(&ConflictView::new(&c), "connector", true).contains("\x1b[1mConflict 7"));
    }

    #[test]
    fn a_resolved_conflict_says_who_kept_what_and_offers_no_command() {
        let c = ConflictRecord {
            status: crate::model::ConflictStatus::Resolved,
            resolution: Some("remote".into()),
            resolved_by: Some("admin".into()),
            base_json: None,
            source_json: None,
            remote_json: None,
            ..fixture::conflict()
        };
        let shown = text(&ConflictView::new(&c), "connector", false);
        assert!(shown.starts_with("Conflict 7: Patient from hub, at cito\n"), "{shown}");
        assert!(shown.contains("resolved (kept remote by admin); its versions are cleared"), "{shown}");
        assert!(shown.contains("(not in the versions kept)") && !shown.contains("--keep"), "{shown}");
    }
}
