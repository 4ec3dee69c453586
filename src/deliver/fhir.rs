//! FHIR R4 REST transport: writes as transaction bundles of PUT/DELETE with `If-Match`, searches by identifier,
//! reads by id. Classifies every failure as transient (retry) or permanent (dead letter) with the server's
//! OperationOutcome. Speaks `application/fhir+json` without a `fhirVersion` parameter, which R4 servers accept.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Client, Method as HttpMethod, RequestBuilder, Response, StatusCode, header};
use serde_json::{Value, json};

use super::auth::TokenProvider;
use super::limit::RateLimiter;
use super::transport::{BoxFuture, Found, Method, Transport, TransportError, Write, Written};

const FHIR_JSON: &str = "application/fhir+json";

pub struct FhirTransport {
    base: String,
    client: Client,
    limiter: Arc<RateLimiter>,
    token: Option<TokenProvider>,
    org_public_id: Option<String>,
}

impl FhirTransport {
    pub fn new(
        base_url: &str,
        timeout: Duration,
        limiter: Arc<RateLimiter>,
        token: Option<TokenProvider>,
        org_public_id: Option<String>,
    ) -> Result<Self, TransportError> {
        let client = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("york-connector/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TransportError::Setup(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { base: base_url.trim_end_matches('/').to_string(), client, limiter, token, org_public_id })
    }

    fn url(&self, path: &str) -> String {
        if path.is_empty() { self.base.clone() } else { format!("{}/{}", self.base, path.trim_start_matches('/')) }
    }

    async fn request(&self, method: HttpMethod, path: &str, body: Option<&Value>) -> Result<Response, TransportError> {
        let mut retried_auth = false;
        loop {
            self.limiter.acquire().await;
            let mut req: RequestBuilder =
                self.client.request(method.clone(), self.url(path)).header(header::ACCEPT, FHIR_JSON);
            if let Some(b) = body {
                req = req.header(header::CONTENT_TYPE, FHIR_JSON).body(b.to_string());
            }
            if let Some(org) = &self.org_public_id {
                req = req.header("X-Org-Public-Id", org);
            }
            if let Some(t) = &self.token {
                req = req.bearer_auth(t.token().await?);
            }
            let resp = req.send().await.map_err(network_error)?;
            if resp.status() == StatusCode::UNAUTHORIZED && self.token.is_some() && !retried_auth {
                // The token may have been revoked or expired early: get a fresh one, once.
                if let Some(t) = &self.token {
                    t.invalidate().await;
                }
                retried_auth = true;
                continue;
            }
            return Ok(resp);
        }
    }
}

impl FhirTransport {
    /// Reads the server's CapabilityStatement (`GET metadata`, with the token when one is configured) and
    /// returns its `fhirVersion`. Sends no data: used by `connector config check`.
    pub async fn capability(&self) -> Result<String, TransportError> {
        let resp = self.request(HttpMethod::GET, "metadata", None).await?;
        if !resp.status().is_success() {
            return Err(failure(resp).await);
        }
        let body: Value = resp.json().await.map_err(|e| TransportError::Transient {
            message: format!("the metadata answer is not JSON: {e}"),
            retry_after: None,
        })?;
        if body["resourceType"] != "CapabilityStatement" {
            return Err(TransportError::Setup(format!(
                "metadata answered with {} instead of a CapabilityStatement",
                body["resourceType"]
            )));
        }
        Ok(body["fhirVersion"].as_str().unwrap_or("unknown").to_string())
    }
}

fn network_error(e: reqwest::Error) -> TransportError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "network error"
    };
    TransportError::Transient { message: format!("{kind}: {e}"), retry_after: None }
}

/// Reads `Retry-After` as seconds (the HTTP-date form is rare from FHIR servers; it falls back to backoff).
fn retry_after(resp: &Response) -> Option<Duration> {
    resp.headers().get(header::RETRY_AFTER)?.to_str().ok()?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Turns a non-success response into the right kind of error.
async fn failure(resp: Response) -> TransportError {
    let status = resp.status();
    let wait = retry_after(&resp);
    let text = resp.text().await.unwrap_or_default();
    let outcome: Option<Value> = serde_json::from_str(&text).ok();
    let message = outcome
        .as_ref()
        .and_then(|o| o["issue"].as_array())
        .map(|issues| {
            issues
                .iter()
                .filter_map(|i| i["diagnostics"].as_str().or(i["details"]["text"].as_str()))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| text.chars().take(500).collect());
    match status.as_u16() {
        412 => TransportError::PreconditionFailed { outcome },
        408 | 429 | 500..=599 => {
            TransportError::Transient { message: format!("{status}: {message}"), retry_after: wait }
        }
        // A failed transaction may report an entry's 412 inside a 400.
        400 if message.contains("412") || message.to_lowercase().contains("precondition") => {
            TransportError::PreconditionFailed { outcome }
        }
        s => TransportError::Rejected { status: s, message, outcome },
    }
}

fn version_of(etag: Option<&str>, location: Option<&str>, resource: Option<&Value>) -> Option<String> {
    if let Some(v) = resource.and_then(|r| r["meta"]["versionId"].as_str()) {
        return Some(v.to_string());
    }
    if let Some(e) = etag {
        let v = e.trim().trim_start_matches("W/").trim_matches('"');
        if !v.is_empty() {
            return Some(v.to_string());
        }
    }
    location.and_then(|l| l.split("/_history/").nth(1)).map(|v| v.trim_matches('/').to_string())
}

impl Transport for FhirTransport {
    fn send<'a>(&'a self, writes: &'a [Write]) -> BoxFuture<'a, Result<Vec<Written>, TransportError>> {
        Box::pin(async move {
            let entries: Vec<Value> = writes
                .iter()
                .map(|w| {
                    let url = format!("{}/{}", w.resource_type, w.id);
                    let mut request = json!({ "method": match w.method { Method::Put => "PUT", Method::Delete => "DELETE" }, "url": url });
                    if let Some(v) = &w.if_match {
                        request["ifMatch"] = Value::String(format!("W/\"{v}\""));
                    }
                    let mut entry = json!({ "fullUrl": self.url(&url), "request": request });
                    if let Some(b) = &w.body {
                        entry["resource"] = b.clone();
                    }
                    entry
                })
                .collect();
            let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries });
            let resp = self.request(HttpMethod::POST, "", Some(&bundle)).await?;
            if !resp.status().is_success() {
                return Err(failure(resp).await);
            }
            let body: Value = resp.json().await.map_err(|e| TransportError::Transient {
                message: format!("unreadable transaction response: {e}"),
                retry_after: None,
            })?;
            let answers = body["entry"].as_array().cloned().unwrap_or_default();
            if answers.len() != writes.len() {
                return Err(TransportError::Transient {
                    message: format!("transaction response has {} entries for {} writes", answers.len(), writes.len()),
                    retry_after: None,
                });
            }
            Ok(answers
                .iter()
                .map(|a| Written {
                    version_id: version_of(
                        a["response"]["etag"].as_str(),
                        a["response"]["location"].as_str(),
                        a.get("resource"),
                    ),
                })
                .collect())
        })
    }

    fn find<'a>(
        &'a self,
        resource_type: &'a str,
        identifier: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Found>, TransportError>> {
        Box::pin(async move {
            let query: String = url_encode(identifier);
            let resp = self.request(HttpMethod::GET, &format!("{resource_type}?identifier={query}"), None).await?;
            if !resp.status().is_success() {
                return Err(failure(resp).await);
            }
            let bundle: Value = resp.json().await.map_err(|e| TransportError::Transient {
                message: format!("unreadable search response: {e}"),
                retry_after: None,
            })?;
            Ok(bundle["entry"]
                .as_array()
                .map(|es| {
                    es.iter()
                        .filter(|e| e["search"]["mode"].as_str().is_none_or(|m| m == "match"))
                        .filter_map(|e| {
                            let r = e["resource"].clone();
                            (r["resourceType"] == resource_type).then(|| Found {
                                id: r["id"].as_str().unwrap_or_default().to_string(),
                                version_id: r["meta"]["versionId"].as_str().map(str::to_string),
                                resource: r,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default())
        })
    }

    fn read<'a>(&'a self, resource_type: &'a str, id: &'a str) -> BoxFuture<'a, Result<Option<Found>, TransportError>> {
        Box::pin(self.read_path(format!("{resource_type}/{id}"), id))
    }

    fn vread<'a>(
        &'a self,
        resource_type: &'a str,
        id: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Option<Found>, TransportError>> {
        Box::pin(self.read_path(format!("{resource_type}/{id}/_history/{version}"), id))
    }

    fn page<'a>(&'a self, path_or_link: &'a str) -> BoxFuture<'a, Result<Value, TransportError>> {
        Box::pin(async move {
            let path = self.relative(path_or_link)?;
            let resp = self.request(HttpMethod::GET, &path, None).await?;
            if !resp.status().is_success() {
                return Err(failure(resp).await);
            }
            resp.json()
                .await
                .map_err(|e| TransportError::Transient { message: format!("unreadable page: {e}"), retry_after: None })
        })
    }
}

impl FhirTransport {
    /// A `next` link as a path under our base: the server may name itself differently (another host name
    /// for the same address), but a link elsewhere is refused, so the token never goes to another server.
    fn relative(&self, link: &str) -> Result<String, TransportError> {
        if !link.contains("://") {
            return Ok(link.trim_start_matches('/').to_string());
        }
        if let Some(rest) = link.strip_prefix(&self.base) {
            return Ok(rest.trim_start_matches('/').to_string());
        }
        let base_path = self.base.splitn(4, '/').nth(3).unwrap_or("");
        let link_path = link.splitn(4, '/').nth(3).unwrap_or("");
        let same_scheme = link.split("://").next() == self.base.split("://").next();
        match link_path.strip_prefix(base_path) {
            // Only a loopback server may call itself by another loopback name (localhost for 127.0.0.1).
            Some(rest)
                if same_scheme
                    && crate::config::is_loopback_url(link)
                    && crate::config::is_loopback_url(&self.base) =>
            {
                Ok(rest.trim_start_matches('/').to_string())
            }
            _ => Err(TransportError::Setup(format!("the server's next link {link} is not under {}", self.base))),
        }
    }

    async fn read_path(&self, path: String, id: &str) -> Result<Option<Found>, TransportError> {
        {
            let resp = self.request(HttpMethod::GET, &path, None).await?;
            if matches!(resp.status().as_u16(), 404 | 410) {
                return Ok(None);
            }
            if !resp.status().is_success() {
                return Err(failure(resp).await);
            }
            let etag = resp.headers().get(header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_string);
            let r: Value = resp.json().await.map_err(|e| TransportError::Transient {
                message: format!("unreadable resource: {e}"),
                retry_after: None,
            })?;
            Ok(Some(Found { id: id.to_string(), version_id: version_of(etag.as_deref(), None, Some(&r)), resource: r }))
        }
    }
}

/// Percent-encodes a query value (identifier `system|value`).
pub(crate) fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_from_etag_location_or_meta() {
        use super::version_of;
        assert_eq!(version_of(Some("W/\"3\""), None, None).as_deref(), Some("3"));
        assert_eq!(version_of(None, Some("Patient/a/_history/7"), None).as_deref(), Some("7"));
        assert_eq!(
            version_of(None, None, Some(&serde_json::json!({"meta": {"versionId": "2"}}))).as_deref(),
            Some("2")
        );
        assert_eq!(
            super::url_encode("https://fhir.nhs.uk/Id/nhs-number|999"),
            "https%3A%2F%2Ffhir.nhs.uk%2FId%2Fnhs-number%7C999"
        );
    }
}
