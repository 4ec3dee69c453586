//! Calling a destination with retries on transient failures.

use std::time::Duration;

use tracing::warn;

use super::Destination;
use super::transport::TransportError;

use backon::{ExponentialBuilder, Retryable};

/// The longest `Retry-After` waited for within a delivery pass; a longer one defers the rows instead.
const MAX_WAIT_IN_PASS: Duration = Duration::from_secs(60);

/// Calls the destination with retries on transient failures: exponential backoff with jitter, honouring
/// `Retry-After`.
pub(super) async fn send_retrying<T, F, Fut>(dest: &Destination, call: F) -> Result<T, TransportError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, TransportError>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .with_max_times(dest.max_attempts.saturating_sub(1))
        .with_jitter();
    call.retry(backoff)
        .when(TransportError::is_transient)
        .adjust(|e: &TransportError, next: Option<Duration>| {
            // A wait longer than a worker should hold its lease ends this pass: the rows are deferred
            // until then instead (the server's value is already clamped to an hour).
            match e.retry_after() {
                Some(ra) if ra > MAX_WAIT_IN_PASS => None,
                Some(ra) => next.map(|d| ra.max(d.min(ra))),
                None => next,
            }
        })
        .notify(|e: &TransportError, after: Duration| {
            warn!(destination = %dest.name, error = %e, retry_in_ms = after.as_millis() as u64, "Retrying.");
        })
        .await
}
