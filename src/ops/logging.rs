//! Logging set-up: human text on a terminal, JSON lines with `--log-format json`, and under systemd
//! (`JOURNAL_STREAM` set) journald's native protocol, so each entry carries its fields as journal fields:
//! `MESSAGE`, `PRIORITY`, `TARGET` (the module), `CODE_FILE`/`CODE_LINE`, `SYSLOG_IDENTIFIER=connector`, and
//! each structured field of the event with a `CONNECTOR_` prefix (`destination = %d` becomes
//! `CONNECTOR_DESTINATION`), so `journalctl -u connector CONNECTOR_DESTINATION=pkb` selects one destination's
//! lines. When the journal's socket is not there (a container, journald stopped) the same events go to stderr as
//! plain lines with a `<N>` syslog priority prefix, which journald's stream reader also turns into the entry's
//! priority (no timestamps or colours: the journal adds its own). The level comes from `CONNECTOR_LOG` (default
//! `warn`; e.g. `info`, `york_connector=debug`).
//!
//! What the connector logs never includes personal data up to info level, nor secrets at any level:
//! records are named by key and resource id, never by name, NHS number, date of birth, address or free text.
//! Event fields are the same in every format, so the journal's fields hold nothing the text lines do not.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Journald when started by systemd, else text.
    Auto,
    Text,
    Json,
    /// journald's native protocol (structured fields); `<N>`-prefixed lines on stderr when its socket is absent.
    Journald,
}

impl LogFormat {
    /// `Auto` decided: journald when systemd connected stderr to the journal (`JOURNAL_STREAM` set).
    fn resolve(self, journal_stream: bool) -> LogFormat {
        match self {
            LogFormat::Auto if journal_stream => LogFormat::Journald,
            LogFormat::Auto => LogFormat::Text,
            f => f,
        }
    }
}

/// The syslog priority of each level, in both journald forms: ERROR is err (3), WARN warning (4), INFO info
/// (6), DEBUG and TRACE debug (7). (tracing-journald's own default would make INFO notice and DEBUG info.)
fn priorities() -> PriorityMappings {
    PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// The priority number of `level` (journald's [`Priority`] is the digit's ASCII code).
fn priority(level: Level) -> u8 {
    let p = priorities();
    let digit = match level {
        Level::ERROR => p.error,
        Level::WARN => p.warn,
        Level::INFO => p.info,
        Level::DEBUG => p.debug,
        Level::TRACE => p.trace,
    } as u8;
    digit - b'0'
}

/// The journald layer, or why the journal cannot be reached (its socket is missing or refuses).
fn journald() -> std::io::Result<tracing_journald::Layer> {
    Ok(tracing_journald::layer()?
        .with_priority_mappings(priorities())
        .with_field_prefix(Some("CONNECTOR".into()))
        .with_syslog_identifier("connector".into()))
}

/// Prefixes each line with its syslog priority for journald: the fallback when its socket is not there.
struct Prefixed(Format<Full, ()>);

impl<S, N> FormatEvent<S, N> for Prefixed
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Installs the global subscriber.
pub fn init(format: LogFormat) {
    let filter = || tracing_subscriber::EnvFilter::try_from_env("CONNECTOR_LOG").unwrap_or_else(|_| "warn".into());
    let format = format.resolve(std::env::var_os("JOURNAL_STREAM").is_some());
    let builder = tracing_subscriber::fmt().with_env_filter(filter()).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Journald => match journald() {
            Ok(layer) => tracing_subscriber::registry().with(filter()).with(layer).init(),
            Err(e) => {
                builder
                    .with_ansi(false)
                    .event_format(Prefixed(tracing_subscriber::fmt::format().without_time().with_ansi(false)))
                    .init();
                tracing::info!(error = %e, "The journal's socket cannot be reached; logging priority-prefixed lines to stderr.");
            }
        },
        _ => builder
            .with_ansi(std::env::var_os("NO_COLOR").is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_journald_only_under_systemd() {
        assert_eq!(LogFormat::Auto.resolve(true), LogFormat::Journald);
        assert_eq!(LogFormat::Auto.resolve(false), LogFormat::Text);
        assert_eq!(LogFormat::Json.resolve(true), LogFormat::Json);
        assert_eq!(LogFormat::Journald.resolve(false), LogFormat::Journald);
    }

    #[test]
    fn both_journald_forms_give_the_same_syslog_priorities() {
        let levels = [Level::ERROR, Level::WARN, Level::INFO, Level::DEBUG, Level::TRACE];
        assert_eq!(levels.map(priority), [3, 4, 6, 7, 7]);
    }

    /// The `<N>` fallback: what journald's stream reader sees when the socket is missing.
    #[test]
    fn fallback_lines_carry_the_priority_and_the_fields() {
        use std::io::Write;
        use std::sync::{Arc, Mutex};

        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .event_format(Prefixed(tracing_subscriber::fmt::format().without_time().with_ansi(false)))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(destination = "pkb", attempt = 2, "Retrying batch.");
            tracing::error!("Delivery failed.");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with("<4>") && lines[0].contains("Retrying batch. destination=\"pkb\" attempt=2"),
            "{text}"
        );
        assert!(lines[1].starts_with("<3>") && lines[1].contains("Delivery failed."), "{text}");
    }
}
