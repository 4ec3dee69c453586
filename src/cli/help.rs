//! What `connector --help` and the man page say beyond the options: the exit codes and the environment that
//! scripts, cron and systemd act on. One table for both (src/cli/generate.rs writes the man page), so they
//! cannot disagree.

/// Exit codes: the code, and what it means.
pub const EXIT_CODES: &[(&str, &str)] = &[
    ("0", "success"),
    ("1", "failure (the error is on stderr)"),
    ("2", "usage error: unknown command or option, or a bad value"),
    (
        "3",
        "ran, and found something an admin should look at: quarantined rows, drift, open conflicts, a refused snapshot",
    ),
];

/// Environment variables that are not an option's (those are listed with their option).
pub const ENVIRONMENT: &[(&str, &str)] = &[
    ("CONNECTOR_LOG", "log level or filter: warn (the default), info (a line per job), york_connector=debug"),
    ("NO_COLOR", "no colours on a terminal"),
];

/// Where to read more.
pub const MANUAL: &str = "man connector, man connector-COMMAND; /usr/share/doc/york-connector/README.md.gz";

/// The end of `connector --help`.
pub fn footer() -> String {
    let mut out = String::from("Exit codes:\n");
    table(&mut out, EXIT_CODES);
    out.push_str("\nLogging:\n");
    table(&mut out, ENVIRONMENT);
    out.push_str("\nManual: ");
    out.push_str(MANUAL);
    out
}

/// Two columns, the second wrapped with a hanging indent (clap does not wrap this part of the help).
fn table(out: &mut String, rows: &[(&str, &str)]) {
    const WIDTH: usize = 98;
    let key_width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let indent = 2 + key_width + 2;
    for (key, text) in rows {
        let mut line = format!("  {key:key_width$}  ");
        for word in text.split(' ') {
            if line.len() + word.len() > WIDTH && line.len() > indent {
                out.push_str(line.trim_end());
                out.push('\n');
                line = " ".repeat(indent);
            }
            line.push_str(word);
            line.push(' ');
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_footer_wraps_long_rows_under_their_text() {
        let text = footer();
        assert!(text.lines().all(|l| l.len() <= 98), "{text}");
        let last = text.lines().find(|l| l.contains("snapshot")).unwrap_or_default();
        assert!(last.starts_with("     ") && !last.starts_with("      "), "{text}");
    }
}
