//! The HTTP plumbing every outgoing call shares (destinations, the token endpoint, partner feeds), so each
//! safety rule lives in one place: clients never follow redirects (a 307 would re-send personal data to
//! wherever it points); errors never carry a URL (a search URL can carry an NHS number); server-sent numbers
//! are clamped (`Retry-After`); and no response body is read past a byte limit (a hostile or broken server
//! cannot make the connector hold hundreds of megabytes).

use std::time::Duration;

use reqwest::{Client, Response};
use serde_json::Value;

use super::transport::TransportError;

/// Largest search, history or transaction answer read (a page of 1000 resources is a few megabytes).
pub const MAX_PAGE_BYTES: usize = 64 * 1024 * 1024;
/// Largest CapabilityStatement read (`metadata`).
pub const MAX_METADATA_BYTES: usize = 8 * 1024 * 1024;
/// Largest token answer, error body or webhook answer read.
pub const MAX_SMALL_BYTES: usize = 1024 * 1024;
// `Retry-After` is read and clamped by the retry vocabulary (`retry.rs`); re-exported where it always was.
pub use super::retry::{MAX_RETRY_AFTER, retry_after};

/// An HTTP client that never follows redirects, with the connector's user agent and timeouts.
pub fn client(timeout: Duration) -> Result<Client, TransportError> {
    Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("york-connector/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| TransportError::Setup(format!("cannot build the HTTP client: {}", e.without_url())))
}

/// A failed request as a transient error naming what was called (`what`), never the URL: a search URL may
/// carry an identifier, and reqwest's own message includes it.
pub fn network_error(what: &str, e: reqwest::Error) -> TransportError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "network error"
    };
    TransportError::transient(format!("{what}: {kind}: {}", error_chain(&e.without_url())))
}

/// The error and its sources, joined, as reqwest's top-level message alone says little ("error sending
/// request"). Callers pass an error already stripped of its URL.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A 3xx answer, which the connector does not follow: said plainly, with where it pointed left out.
pub fn redirect_error(what: &str, status: reqwest::StatusCode) -> TransportError {
    TransportError::Setup(format!(
        "{what} answered {status} (a redirect), which the connector does not follow so that data never goes \
         anywhere but the configured URL; configure the URL it redirects to instead"
    ))
}

/// Reads a response body, refusing one longer than `limit` bytes (by its `Content-Length`, or as it
/// arrives). `what` names the answer in the error.
pub async fn read_body(mut resp: Response, limit: usize, what: &str) -> Result<Vec<u8>, TransportError> {
    let too_big = || {
        TransportError::transient(format!(
            "{what} is larger than {} MB, the most the connector reads; the server may be misbehaving",
            limit / (1024 * 1024)
        ))
    };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| network_error(what, e))? {
        if body.len().saturating_add(chunk.len()) > limit {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads a JSON body within `limit` bytes.
pub async fn read_json(resp: Response, limit: usize, what: &str) -> Result<Value, TransportError> {
    let body = read_body(resp, limit, what).await?;
    // serde_json's message gives a line and column, never the text around it.
    serde_json::from_slice(&body).map_err(|e| TransportError::transient(format!("{what} is not JSON: {e}")))
}

/// The `issue.code`s of an OperationOutcome (`invalid`, `processing`, ...): what may be logged of it. Its
/// `diagnostics` often quote the refused resource and go to `last_error` only.
pub fn issue_codes(outcome: Option<&Value>) -> Vec<String> {
    let mut codes: Vec<String> = outcome
        .and_then(|o| o["issue"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|i| i["code"].as_str())
        .filter(|c| c.len() <= 40 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .map(str::to_string)
        .collect();
    codes.dedup();
    codes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_codes_leave_the_diagnostics_out() {
        let o = serde_json::json!({"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "invalid", "diagnostics": "Patient.name Brontë is wrong"},
            {"severity": "error", "code": "Brontë said"}
        ]});
        assert_eq!(issue_codes(Some(&o)), vec!["invalid".to_string()]);
    }
}
