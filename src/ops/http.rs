//! Health and metrics on a loopback listener (`[ops] listen`): `/healthz` (the process answers), `/readyz`
//! (the state store answers and no destination's circuit has been open longer than `[ops]
//! unready_after_seconds`) and `/metrics` (Prometheus text format). A tiny HTTP/1.1 responder on tokio: GET
//! only, one request per connection, no request bodies; it never serves personal data.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use super::metrics::{COUNTERS, label, render_process};
use crate::context::Context;

/// The text of `/metrics`.
pub async fn render(engine: &Context) -> String {
    let mut out = String::new();
    render_process(&mut out);
    let counters = engine.metrics.counters.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (name, help) in COUNTERS {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for ((n, labels), v) in counters.iter().filter(|((n, _), _)| n == name) {
            let _ = writeln!(out, "{n}{{{labels}}} {v}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP connector_outbox_pending Writes waiting to be sent, per destination.\n# TYPE connector_outbox_pending gauge"
    );
    let depths = engine.store.queue_depths().await.unwrap_or_default();
    let mut dead = String::new();
    for d in &engine.destinations {
        let q = depths.iter().find(|q| q.destination == d.name);
        let l = label("destination", &d.name);
        let _ = writeln!(out, "connector_outbox_pending{{{l}}} {}", q.map_or(0, |q| q.pending));
        let _ = writeln!(dead, "connector_outbox_dead{{{l}}} {}", q.map_or(0, |q| q.dead));
    }
    let _ = writeln!(
        out,
        "# HELP connector_outbox_dead Dead letters waiting for an admin, per destination.\n# TYPE connector_outbox_dead gauge\n{dead}\
         # HELP connector_circuit_open 1 when a destination's circuit breaker is open.\n# TYPE connector_circuit_open gauge"
    );
    for d in &engine.destinations {
        let _ = writeln!(
            out,
            "connector_circuit_open{{{}}} {}",
            label("destination", &d.name),
            u8::from(d.breaker.open_since().is_some())
        );
    }
    let last = *engine.metrics.last_cycle_ok.lock().unwrap_or_else(|p| p.into_inner());
    let _ = writeln!(
        out,
        "# HELP connector_last_successful_cycle_timestamp_seconds Unix time of the last cycle that finished without failures.\n\
         # TYPE connector_last_successful_cycle_timestamp_seconds gauge\n\
         connector_last_successful_cycle_timestamp_seconds {}",
        last.map_or(0, |t| t.timestamp())
    );
    let open = engine.store.conflicts_open_count().await.unwrap_or_default();
    let _ = writeln!(
        out,
        "# HELP connector_conflicts_open Conflicts waiting for an admin, per destination.\n# TYPE connector_conflicts_open gauge"
    );
    for d in &engine.destinations {
        let n = open.iter().find(|(name, _)| *name == d.name).map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "connector_conflicts_open{{{}}} {n}", label("destination", &d.name));
    }
    if let Ok(counts) = engine.store.quarantine_counts().await {
        let _ = writeln!(
            out,
            "# HELP connector_quarantine_rows Source rows waiting in the quarantine for a fixed export or a replay, \
             per partner.\n# TYPE connector_quarantine_rows gauge"
        );
        for p in &engine.config.partners {
            let n = counts.iter().find(|(name, _)| *name == p.id).map_or(0, |(_, n)| *n);
            let _ = writeln!(out, "connector_quarantine_rows{{{}}} {n}", label("partner", &p.id));
        }
    }
    source_gauges(&mut out, &engine.store.source_statuses().await.unwrap_or_default());
    success_gauges(&mut out, engine).await;
    engine.metrics.render_requests(&mut out);
    out
}

/// When each scheduled job last succeeded, and when each destination last accepted a write (0: never), read
/// from the state store: every instance sharing a PostgreSQL store shows the same values, and a restart or a
/// reload loses nothing. Only the jobs and destinations of the running configuration are listed, so one removed
/// from it does not alert for ever.
async fn success_gauges(out: &mut String, engine: &Context) {
    let _ = writeln!(
        out,
        "# HELP connector_job_last_success_timestamp_seconds Unix time a scheduled job last finished without \
         failures (0: never).\n# TYPE connector_job_last_success_timestamp_seconds gauge"
    );
    for (job, _) in engine.config.jobs() {
        // A store that does not answer leaves the series out (it is not "never"): `/readyz` says so.
        let Ok(at) = engine.store.job_last_success(&job).await else { continue };
        let _ = writeln!(
            out,
            "connector_job_last_success_timestamp_seconds{{{}}} {}",
            label("job_name", &job.to_string()),
            at.map_or(0, |t| t.timestamp())
        );
    }
    let _ = writeln!(
        out,
        "# HELP connector_destination_last_write_timestamp_seconds Unix time a destination last accepted a \
         write (0: never).\n# TYPE connector_destination_last_write_timestamp_seconds gauge"
    );
    for d in &engine.destinations {
        let Ok(at) = engine.store.last_write_at(&d.name).await else { continue };
        let _ = writeln!(
            out,
            "connector_destination_last_write_timestamp_seconds{{{}}} {}",
            label("destination", &d.name),
            at.map_or(0, |t| t.timestamp())
        );
    }
}

/// Each partner source's freshness, so "no export for two days" can alert: when it was last read through, and
/// the modification time of the newest file it gave.
fn source_gauges(out: &mut String, statuses: &[crate::store::SourceStatus]) {
    type Gauge = (&'static str, &'static str, fn(&crate::store::SourceStatus) -> Option<i64>);
    let gauges: [Gauge; 3] = [
        (
            "connector_source_last_success_timestamp_seconds",
            "Unix time a partner source was last read through to planning.",
            |s| s.last_success_at.map(|t| t.timestamp()),
        ),
        (
            "connector_source_newest_file_timestamp_seconds",
            "Modification time of the newest export a partner source gave.",
            |s| s.last_file_mtime.map(|t| t.timestamp()),
        ),
        ("connector_source_gone_records", "Records gone at source in a snapshot source's last export.", |s| {
            Some(s.gone)
        }),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for s in statuses {
            if let Some(v) = value(s) {
                let _ = writeln!(out, "{name}{{{},{}}} {v}", label("partner", &s.partner), label("kind", &s.source));
            }
        }
    }
}

/// Whether the connector is ready: `Err(why)` when not.
pub async fn ready(engine: &Context, unready_after: Duration) -> Result<(), String> {
    engine.store.queue_depths().await.map_err(|e| format!("state store: {e}"))?;
    for d in &engine.destinations {
        if let Some(since) = d.breaker.open_since()
            && since.elapsed() >= unready_after
        {
            return Err(format!("destination {}: circuit open for {} s", d.name, since.elapsed().as_secs()));
        }
    }
    Ok(())
}

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 32;

/// The wait after a failed `accept` (file descriptors exhausted, say): growing from 100 ms to 5 s, so the
/// loop never spins a core while the failure lasts; back to the start after a connection is accepted.
#[derive(Debug)]
pub struct AcceptBackoff {
    next: Duration,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    pub fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// The wait after one more failure.
    pub fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        wait
    }

    pub fn accepted(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(listener: Arc<TcpListener>, engine: Arc<Context>, unready_after: Duration) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = AcceptBackoff::new();
    loop {
        // A slot first, so at most MAX_CONNECTIONS are open; the rest wait in the kernel's backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff.accepted();
                stream
            }
            Err(e) => {
                let wait = backoff.failed();
                warn!(error = %e, wait_ms = wait.as_millis() as u64, "Ops endpoint: accepting a connection failed; waiting.");
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut buf = vec![0u8; 2048];
            let n = match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let mut parts = request.split_whitespace();
            let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
            let (status, content_type, body) = match (method, path) {
                ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
                ("GET", "/readyz") => match ready(&engine, unready_after).await {
                    Ok(()) => ("200 OK", "text/plain", "ready\n".to_string()),
                    Err(why) => ("503 Service Unavailable", "text/plain", format!("not ready: {why}\n")),
                },
                ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", render(&engine).await),
                ("GET", _) => ("404 Not Found", "text/plain", "try /healthz, /readyz or /metrics\n".to_string()),
                _ => ("405 Method Not Allowed", "text/plain", "GET only\n".to_string()),
            };
            debug!(path, status, "ops request");
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(body.as_bytes()).await.is_err() {
                warn!("ops endpoint: the client went away");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_back_off_and_reset() {
        let mut b = AcceptBackoff::new();
        let waits: Vec<u128> = (0..8).map(|_| b.failed().as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.accepted();
        assert_eq!(b.failed(), Duration::from_millis(100));
    }
}
