//! The counters, gauges and histograms behind `/metrics`: plain numbers by metric name and label set, added to
//! by every stage and rendered by [`super::http`]. It knows nothing of the stages (they record into it), so any
//! module may use it. It also holds what describes the process itself: its build and its start time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

/// Counters the engine adds to as it works, by metric name and label set.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(super) counters: Mutex<BTreeMap<(&'static str, String), u64>>,
    pub(super) last_cycle_ok: Mutex<Option<chrono::DateTime<chrono::Utc>>>,
    /// `connector_request_duration_seconds`, by label set (destination, method, outcome).
    requests: Mutex<BTreeMap<String, Histogram>>,
}

/// Counter names and their help text.
pub(super) const COUNTERS: &[(&str, &str)] = &[
    ("connector_records_ingested_total", "Source rows read, per partner."),
    (
        "connector_plans_unchanged_total",
        "Ingests not planned again: exports, mappings, configuration and state as at the last plan, which changed nothing.",
    ),
    ("connector_records_quarantined_total", "Source rows quarantined, per partner."),
    ("connector_resources_withheld_total", "Resources the sharing rules kept from a destination while planning."),
    ("connector_resources_sent_total", "Resources written to a destination (created, updated or deleted)."),
    ("connector_resources_withheld_at_send_total", "Resources the sharing rules stopped just before sending."),
    ("connector_resources_retried_total", "Resources put back for a later attempt after transient failures."),
    ("connector_resources_dead_lettered_total", "Resources a destination refused (dead letters)."),
];

impl Metrics {
    pub fn add(&self, name: &'static str, labels: String, n: u64) {
        if n == 0 {
            // Still create the series, so a scrape shows it at 0.
            self.counters.lock().unwrap_or_else(|p| p.into_inner()).entry((name, labels)).or_insert(0);
            return;
        }
        *self.counters.lock().unwrap_or_else(|p| p.into_inner()).entry((name, labels)).or_insert(0) += n;
    }

    pub fn get(&self, name: &str, labels: &str) -> u64 {
        let c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        c.iter().find(|((n, l), _)| *n == name && l == labels).map_or(0, |(_, v)| *v)
    }

    /// Records that a cycle finished without failures (`connector_last_successful_cycle_timestamp_seconds`).
    pub fn mark_cycle_ok(&self) {
        *self.last_cycle_ok.lock().unwrap_or_else(|p| p.into_inner()) = Some(chrono::Utc::now());
    }

    /// Records one request to a destination: how long it took until the answer's headers arrived (or until it
    /// failed), by HTTP method and [`RequestOutcome`]. The labels are bounded: no URL, id or status beyond its
    /// class.
    pub fn observe_request(&self, destination: &str, method: &str, outcome: RequestOutcome, took: Duration) {
        let labels = format!("{},{},{}", label("destination", destination), label("method", method), outcome.label());
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        requests.entry(labels).or_default().observe(took.as_secs_f64());
    }

    /// Writes `connector_request_duration_seconds` in the Prometheus text format.
    pub(super) fn render_requests(&self, out: &mut String) {
        let name = "connector_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from sending a request to a destination until its answer's headers arrived, \
             by destination, HTTP method and outcome.\n# TYPE {name} histogram"
        );
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (labels, h) in &requests {
            h.render(out, name, labels);
        }
    }
}

/// How a request to a destination ended, as the `outcome` label of `connector_request_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// The server answered with this status (its class is the label: `2xx` .. `5xx`).
    Status(u16),
    /// No answer within the timeout.
    Timeout,
    /// No answer: the connection failed or broke.
    Error,
}

impl RequestOutcome {
    fn label(self) -> String {
        let value = match self {
            Self::Status(s @ 100..=599) => ["1xx", "2xx", "3xx", "4xx", "5xx"][usize::from(s / 100 - 1)],
            Self::Status(_) => "other",
            Self::Timeout => "timeout",
            Self::Error => "error",
        };
        label("outcome", value)
    }
}

/// Upper bounds (seconds) of the request duration buckets: from a quick read to a large transaction bundle
/// near the default 30 s timeout.
const BUCKETS: [f64; 11] = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// One histogram series: observations per bucket (not cumulative; the text format's cumulative counts are
/// summed when rendered), their sum and count.
#[derive(Debug, Clone, Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|&le| seconds <= le) {
            self.buckets[i] += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (le, n) in BUCKETS.iter().zip(self.buckets) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// The connector's version and the git commit it was built from (`unknown` when built outside a checkout).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = match option_env!("CONNECTOR_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

static PROCESS_START: OnceLock<SystemTime> = OnceLock::new();

/// When this process started: the first call fixes it, so `main` calls it first thing (and the engine
/// does, for library users); a reload (SIGHUP) does not move it.
pub fn process_start() -> SystemTime {
    *PROCESS_START.get_or_init(SystemTime::now)
}

/// Writes `connector_build_info` and `process_start_time_seconds` (the Prometheus convention, so
/// `changes(process_start_time_seconds[1h])` counts restarts).
pub(super) fn render_process(out: &mut String) {
    let start = process_start().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let _ = writeln!(
        out,
        "# HELP connector_build_info The connector's version and the git commit it was built from; always 1.\n\
         # TYPE connector_build_info gauge\nconnector_build_info{{{},{}}} 1\n\
         # HELP process_start_time_seconds Start time of the process since the Unix epoch, in seconds.\n\
         # TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {start:.3}",
        label("version", VERSION),
        label("commit", COMMIT),
    );
}

/// `name="value"` with the value escaped as the Prometheus text format requires (backslash, double quote,
/// line feed), so a partner or destination name cannot break or forge a line of `/metrics`.
pub fn label(name: &str, value: &str) -> String {
    let mut out = String::with_capacity(name.len() + value.len() + 3);
    out.push_str(name);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("partner", "hub"), "partner=\"hub\"");
        assert_eq!(label("partner", "a\"b\\c\nd"), "partner=\"a\\\"b\\\\c\\nd\"");
        let m = Metrics::default();
        m.add("connector_resources_sent_total", label("destination", "x\"} 1\nforged_total{a=\""), 1);
        let key = m.counters.lock().unwrap().keys().next().unwrap().1.clone();
        assert!(!key.contains('\n') && key.starts_with("destination=\"x\\\"}"), "{key}");
    }

    #[test]
    fn request_histogram_is_cumulative_and_ends_in_the_count() {
        let m = Metrics::default();
        for ms in [10, 30, 30, 700, 90_000] {
            m.observe_request("cito", "POST", RequestOutcome::Status(201), Duration::from_millis(ms));
        }
        m.observe_request("cito", "GET", RequestOutcome::Timeout, Duration::from_secs(30));
        let mut out = String::new();
        m.render_requests(&mut out);
        let post = "destination=\"cito\",method=\"POST\",outcome=\"2xx\"";
        for (le, n) in [("0.025", 1), ("0.05", 3), ("0.5", 3), ("1", 4), ("60", 4), ("+Inf", 5)] {
            let line = format!("connector_request_duration_seconds_bucket{{{post},le=\"{le}\"}} {n}\n");
            assert!(out.contains(&line), "{line} in\n{out}");
        }
        assert!(out.contains(&format!("connector_request_duration_seconds_count{{{post}}} 5\n")), "{out}");
        assert!(out.contains(&format!("connector_request_duration_seconds_sum{{{post}}} 90.77\n")), "{out}");
        assert!(out.contains("method=\"GET\",outcome=\"timeout\",le=\"30\"} 1\n"), "{out}");
        assert_eq!(out.matches("# TYPE connector_request_duration_seconds histogram").count(), 1);
    }

    #[test]
    fn outcomes_are_status_classes() {
        assert_eq!(RequestOutcome::Status(412).label(), "outcome=\"4xx\"");
        assert_eq!(RequestOutcome::Status(503).label(), "outcome=\"5xx\"");
        assert_eq!(RequestOutcome::Status(42).label(), "outcome=\"other\"");
        assert_eq!(RequestOutcome::Error.label(), "outcome=\"error\"");
    }
}
