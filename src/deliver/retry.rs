//! One retry vocabulary for every outgoing call (destinations, their token endpoint, partner feeds), after
//! Vector's `sinks/util/retries.rs`: [`classify`] turns an HTTP answer into what it means for trying again
//! (with the server's `Retry-After`, clamped), and a [`RetryPolicy`] says how often and how long to try
//! within one pass, and how long rows wait afterwards. [`RetryPolicy::call`] runs a call under a policy;
//! its backoff sleeps end at once when the daemon stops.
//!
//! The rule for `Retry-After` is one: a wait no longer than the policy's `max_wait` is waited for within the
//! pass; a longer one ends the call, and the rows wait at least that long in the outbox.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use reqwest::{StatusCode, header};
use tokio::sync::watch;

use super::Destination;
use super::transport::TransportError;

/// The longest a server's `Retry-After` is honoured: beyond it the outbox's own deferral takes over, so a
/// worker never sits on its lease for a server-chosen eternity.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What a non-success HTTP answer means for trying again. Redirects are not classified: they are refused
/// before (see `http::redirect_error`), as the connector never follows one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 408, 429 or 5xx: the server cannot take it now. Worth trying again, after `retry_after` when the
    /// server said so (clamped to [`MAX_RETRY_AFTER`]).
    Unavailable { retry_after: Option<Duration> },
    /// 412: `If-Match` failed (someone changed the resource since).
    PreconditionFailed,
    /// Any other status: refused for good; trying again will not help until something changes.
    Permanent,
}

/// Classifies a non-success answer by its status and headers.
pub fn classify(status: StatusCode, headers: &header::HeaderMap) -> Answer {
    match status.as_u16() {
        412 => Answer::PreconditionFailed,
        408 | 429 | 500..=599 => Answer::Unavailable { retry_after: retry_after(headers) },
        _ => Answer::Permanent,
    }
}

/// `Retry-After` in seconds, clamped to [`MAX_RETRY_AFTER`] (the HTTP-date form falls back to backoff).
pub fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    let secs = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim().parse::<u64>().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// How a kind of call is retried: within a pass (exponential backoff with jitter, `Retry-After` honoured up
/// to `max_wait`), and, once the pass gives up, how long the rows wait in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first backoff; each next one doubles (with jitter) up to `max_delay`.
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Tries within one pass, the first included.
    pub max_attempts: usize,
    /// The longest `Retry-After` waited for within the pass; a longer one ends the call at once.
    pub max_wait: Duration,
    /// How long rows wait in the outbox after the pass gave up on them: the first deferral, doubled for
    /// each attempt already made up to `defer_doublings` times (0: always the same). Never shorter than the
    /// server's `Retry-After`.
    pub defer: Duration,
    pub defer_doublings: u32,
}

impl RetryPolicy {
    /// A destination's writes and reads: `max_attempts` and `defer` come from its configuration. Backoff
    /// 200 ms to 30 s; a `Retry-After` up to a minute is waited for in the pass.
    pub const fn destination(max_attempts: usize, defer: Duration) -> Self {
        Self {
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            max_attempts,
            max_wait: Duration::from_secs(60),
            defer,
            defer_doublings: 0,
        }
    }

    /// A partner feed's document: three tries half a second apart and doubling, then the document waits a
    /// minute, doubled for each failed attempt up to 64 minutes, until the feed's `max_attempts` makes it a
    /// dead letter. A `Retry-After` up to 30 s is waited for in the pass: three tries with two such waits
    /// stay within a feed's lease (four timeouts and a minute).
    pub const fn feed() -> Self {
        Self {
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
            max_attempts: 3,
            max_wait: Duration::from_secs(30),
            defer: Duration::from_secs(60),
            defer_doublings: 6,
        }
    }

    /// A partner API source's page: `max_attempts` from the source's configuration, backoff half a second to
    /// 30 s, a `Retry-After` up to a minute waited for. There is no outbox behind a read, so nothing is
    /// deferred: a read that gives up is tried again, from its stored cursor, next cycle.
    pub const fn partner_api(max_attempts: usize) -> Self {
        Self {
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_attempts,
            max_wait: Duration::from_secs(60),
            defer: Duration::ZERO,
            defer_doublings: 0,
        }
    }

    /// How long rows wait in the outbox after the pass gave up on them, `attempts` tries having failed
    /// before: the policy's deferral, or the server's `Retry-After` when longer.
    pub fn defer_for(&self, attempts: i32, retry_after: Option<Duration>) -> Duration {
        let doublings = u32::try_from(attempts).unwrap_or(0).min(self.defer_doublings);
        let own = self.defer.saturating_mul(1 << doublings);
        retry_after.map_or(own, |ra| own.max(ra))
    }

    /// The backoff before each retry, in order (`max_attempts - 1` of them).
    fn backoff(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_attempts.saturating_sub(1))
            .with_jitter()
            .build()
    }

    /// Runs `call`, retrying transient failures under this policy. `notify` hears of each retry and its
    /// wait before the wait begins. Each wait is raced against `stop`: when the daemon stops, the call ends
    /// at once with [`TransportError::Stopped`] (a call in flight is not interrupted: its answer must be
    /// recorded). Waits use tokio's clock, so tests can pause time.
    pub async fn call<T, F, Fut>(
        &self,
        stop: &watch::Receiver<bool>,
        mut call: F,
        mut notify: impl FnMut(&TransportError, Duration),
    ) -> Result<T, TransportError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, TransportError>>,
    {
        let mut backoff = self.backoff();
        loop {
            let e = match call().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if !e.is_transient() {
                return Err(e);
            }
            let Some(next) = backoff.next() else { return Err(e) };
            let wait = match e.retry_after() {
                // Longer than a worker should hold its lease: the rows are deferred until then instead.
                Some(ra) if ra > self.max_wait => return Err(e),
                Some(ra) => ra,
                None => next,
            };
            notify(&e, wait);
            if sleep_or_stop(stop, wait).await {
                return Err(TransportError::Stopped);
            }
        }
    }
}

/// Calls the destination under its policy, logging each retry (ends with [`TransportError::Stopped`] when
/// `stop` comes during a backoff).
pub(super) async fn send_retrying<T, F, Fut>(
    dest: &Destination,
    stop: &watch::Receiver<bool>,
    mut call: F,
) -> Result<T, TransportError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, TransportError>>,
{
    // Each attempt holds one of the destination's `concurrency` permits while it is in flight (not while it
    // backs off), so workers preparing the next bundles never add to the server's load.
    let attempt = || {
        let request = call();
        async move {
            let _permit = dest.in_flight.acquire().await;
            request.await
        }
    };
    dest.retry_policy()
        .call(stop, attempt, |e, after| {
            let retry_in_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
            tracing::warn!(destination = %dest.name, error = %e, retry_in_ms, "Retrying.");
        })
        .await
}

/// Sleeps for `wait` unless `stop` is (or becomes) true first; returns whether it stopped.
pub async fn sleep_or_stop(stop: &watch::Receiver<bool>, wait: Duration) -> bool {
    let mut stop = stop.clone();
    let stopped = async {
        // The sender gone means no stop can come any more: sleep the whole wait.
        if stop.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = stopped => true,
        () = tokio::time::sleep(wait) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn unavailable(retry_after: Option<u64>) -> TransportError {
        TransportError::Unavailable {
            message: "the destination answered 503 Service Unavailable".into(),
            detail: String::new(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn statuses_are_classified_once() {
        let mut h = header::HeaderMap::new();
        h.insert(header::RETRY_AFTER, "7".parse().unwrap());
        let wait = Some(Duration::from_secs(7));
        for s in [408, 429, 500, 502, 503, 504] {
            let status = StatusCode::from_u16(s).unwrap();
            assert_eq!(classify(status, &h), Answer::Unavailable { retry_after: wait }, "{s}");
        }
        assert_eq!(classify(StatusCode::PRECONDITION_FAILED, &h), Answer::PreconditionFailed);
        for s in [400, 401, 403, 404, 409, 410, 422] {
            assert_eq!(classify(StatusCode::from_u16(s).unwrap(), &h), Answer::Permanent, "{s}");
        }
    }

    #[test]
    fn retry_after_is_clamped_to_an_hour() {
        let mut h = header::HeaderMap::new();
        h.insert(header::RETRY_AFTER, "18446744073709551615".parse().unwrap());
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert(header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(header::RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn deferral_doubles_up_to_its_cap_and_is_never_shorter_than_retry_after() {
        let feed = RetryPolicy::feed();
        assert_eq!(feed.defer_for(0, None), Duration::from_secs(60));
        assert_eq!(feed.defer_for(2, None), Duration::from_secs(240));
        assert_eq!(feed.defer_for(40, None), Duration::from_secs(60 << 6));
        assert_eq!(feed.defer_for(0, Some(Duration::from_secs(600))), Duration::from_secs(600));
        let dest = RetryPolicy::destination(5, Duration::from_secs(60));
        assert_eq!(dest.defer_for(9, None), Duration::from_secs(60));
        assert_eq!(dest.defer_for(9, Some(Duration::from_secs(90))), Duration::from_secs(90));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_waited_for_up_to_max_wait() {
        let (_tx, stop) = watch::channel(false);
        let calls = Arc::new(AtomicUsize::new(0));
        let policy = RetryPolicy::destination(3, Duration::from_secs(60));
        let start = tokio::time::Instant::now();
        let c = calls.clone();
        let r: Result<(), _> = policy
            .call(
                &stop,
                || {
                    c.fetch_add(1, Ordering::SeqCst);
                    async { Err(unavailable(Some(50))) }
                },
                |_, _| {},
            )
            .await;
        assert!(r.unwrap_err().is_transient());
        assert_eq!(calls.load(Ordering::SeqCst), 3, "tried max_attempts times");
        assert_eq!(start.elapsed(), Duration::from_secs(100), "waited Retry-After between tries");

        // Longer than max_wait: no retry within the pass.
        calls.store(0, Ordering::SeqCst);
        let c = calls.clone();
        let r: Result<(), _> = policy
            .call(
                &stop,
                || {
                    c.fetch_add(1, Ordering::SeqCst);
                    async { Err(unavailable(Some(61))) }
                },
                |_, _| {},
            )
            .await;
        assert_eq!(r.unwrap_err().retry_after(), Some(Duration::from_secs(61)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_the_backoff_sleep_at_once() {
        let (tx, stop) = watch::channel(false);
        let policy = RetryPolicy::destination(5, Duration::from_secs(60));
        let start = tokio::time::Instant::now();
        let call = policy.call(&stop, || async { Err::<(), _>(unavailable(Some(50))) }, |_, _| {});
        let stopper = async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            tx.send(true).unwrap();
        };
        let (r, ()) = tokio::join!(call, stopper);
        assert!(matches!(r, Err(TransportError::Stopped)), "{r:?}");
        assert_eq!(start.elapsed(), Duration::from_secs(3), "the 50 s wait ended when the stop came");

        // Already stopped: the first failure ends the call without sleeping.
        let start = tokio::time::Instant::now();
        let r = policy.call(&stop, || async { Err::<(), _>(unavailable(None)) }, |_, _| {}).await;
        assert!(matches!(r, Err(TransportError::Stopped)));
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_are_not_retried() {
        let (_tx, stop) = watch::channel(false);
        let calls = AtomicUsize::new(0);
        let r: Result<(), _> = RetryPolicy::feed()
            .call(
                &stop,
                || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { Err(TransportError::Rejected { status: 400, message: String::new(), outcome: None }) }
                },
                |_, _| {},
            )
            .await;
        assert!(matches!(r, Err(TransportError::Rejected { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
