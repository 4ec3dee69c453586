//! Logging set-up: human text on a terminal, JSON lines with `--log-format json`, and under systemd
//! (`JOURNAL_STREAM` set) plain lines with a `<N>` syslog priority prefix that journald turns into the
//! entry's priority (no timestamps or colours: the journal adds its own). The level comes from
//! `CONNECTOR_LOG` (default `warn`; e.g. `info`, `york_connector=debug`).
//!
//! What the connector logs never includes personal data up to info level, nor secrets at any level:
//! records are named by key and resource id, never by name, NHS number, date of birth, address or free text.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Journald when started by systemd, else text.
    Auto,
    Text,
    Json,
    Journald,
}

/// Prefixes each line with its syslog priority for journald.
struct Journald(Format<Full, ()>);

impl<S, N> FormatEvent<S, N> for Journald
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Installs the global subscriber.
pub fn init(format: LogFormat) {
    let filter = || tracing_subscriber::EnvFilter::try_from_env("CONNECTOR_LOG").unwrap_or_else(|_| "warn".into());
    let format = match format {
        LogFormat::Auto if std::env::var_os("JOURNAL_STREAM").is_some() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        f => f,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter()).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Journald => builder
            .with_ansi(false)
            .event_format(Journald(tracing_subscriber::fmt::format().without_time().with_ansi(false)))
            .init(),
        _ => builder
            .with_ansi(std::env::var_os("NO_COLOR").is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}
