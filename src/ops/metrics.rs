//! The counters and gauges behind `/metrics`: plain numbers by metric name and label set, added to by every
//! stage and rendered by [`super::http`]. It knows nothing of the stages (they record into it), so any
//! module may use it.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Counters the engine adds to as it works, by metric name and label set.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(super) counters: Mutex<BTreeMap<(&'static str, String), u64>>,
    pub(super) last_cycle_ok: Mutex<Option<chrono::DateTime<chrono::Utc>>>,
}

/// Counter names and their help text.
pub(super) const COUNTERS: &[(&str, &str)] = &[
    ("connector_records_ingested_total", "Source rows read, per partner."),
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
}
