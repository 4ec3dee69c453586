//! FHIR R4 REST transport: writes as transaction bundles of PUT/DELETE with `If-Match`, searches by identifier,
//! reads by id. Classifies every failure as transient (retry) or permanent (dead letter) with the server's
//! OperationOutcome. Speaks `application/fhir+json` without a `fhirVersion` parameter, which R4 servers accept.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::{Client, Method as HttpMethod, RequestBuilder, Response, StatusCode, header};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::answer::{self, WriteAnswer};
use super::auth::TokenProvider;
use super::http::{self, MAX_METADATA_BYTES, MAX_PAGE_BYTES, MAX_SMALL_BYTES};
use super::limit::RateLimiter;
use super::retry::{self, Answer};
use super::transport::{Body, BoxFuture, Found, Method, Transport, TransportError, Write, Written};
use crate::ops::metrics::{Metrics, RequestOutcome};

const FHIR_JSON: &str = "application/fhir+json";

/// Asked of every transaction until the server leaves a version out: the answer's entries carry each write's
/// status, location and ETag (the version, all the ledger keeps of the answer) without the resources sent,
/// which the server would otherwise write out again and the connector read and throw away (HFS, a plain client
/// posting a 10,000-person first load with and without it: 5-7% less of the server's CPU time, 4% less time).
/// See [`FhirTransport::whole_answers`].
const PREFER_MINIMAL: &str = "return=minimal";

pub struct FhirTransport {
    base: String,
    client: Client,
    limiter: Arc<RateLimiter>,
    token: Option<TokenProvider>,
    org_public_id: Option<String>,
    /// Where each request's duration is recorded, under the destination's name.
    observer: Option<(String, Arc<Metrics>)>,
    /// The server refused a batch bundle of searches: look-ups use one search of OR-ed values from then on.
    no_batch_search: std::sync::atomic::AtomicBool,
    /// The server answered a minimal transaction response without the versions written: transactions ask
    /// for the resources back from then on (see [`PREFER_MINIMAL`]).
    whole_answers: std::sync::atomic::AtomicBool,
}

impl FhirTransport {
    pub fn new(
        base_url: &str,
        timeout: Duration,
        limiter: Arc<RateLimiter>,
        token: Option<TokenProvider>,
        org_public_id: Option<String>,
    ) -> Result<Self, TransportError> {
        let client = http::client(timeout)?;
        Ok(Self {
            base: base_url.trim_end_matches('/').to_string(),
            client,
            limiter,
            token,
            org_public_id,
            observer: None,
            no_batch_search: std::sync::atomic::AtomicBool::new(false),
            whole_answers: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Records each request's duration in `metrics` (`connector_request_duration_seconds`) as `destination`'s.
    pub fn observed_by(mut self, destination: &str, metrics: Arc<Metrics>) -> Self {
        self.observer = Some((destination.to_string(), metrics));
        self
    }

    /// Records how long one request took (the rate limiter's wait and the token's renewal not included).
    fn observe(&self, method: &HttpMethod, sent: &reqwest::Result<Response>, took: Duration) {
        let Some((destination, metrics)) = &self.observer else { return };
        let outcome = match sent {
            Ok(r) => RequestOutcome::Status(r.status().as_u16()),
            Err(e) if e.is_timeout() => RequestOutcome::Timeout,
            Err(_) => RequestOutcome::Error,
        };
        metrics.observe_request(destination, method.as_str(), outcome, took);
    }

    fn url(&self, path: &str) -> String {
        if path.is_empty() { self.base.clone() } else { format!("{}/{}", self.base, path.trim_start_matches('/')) }
    }

    async fn request(&self, method: HttpMethod, path: &str, body: Option<&Value>) -> Result<Response, TransportError> {
        self.request_with(method, path, body.map(|b| (FHIR_JSON, b.to_string().into())), None).await
    }

    /// Sends a request with an optional body (content type, bytes: each attempt shares them, not a copy); the
    /// token is renewed once on a 401. A redirect is an error: it is never followed.
    async fn request_with(
        &self,
        method: HttpMethod,
        path: &str,
        body: Option<(&'static str, Bytes)>,
        prefer: Option<&'static str>,
    ) -> Result<Response, TransportError> {
        let mut retried_auth = false;
        loop {
            self.limiter.acquire().await;
            let mut req: RequestBuilder =
                self.client.request(method.clone(), self.url(path)).header(header::ACCEPT, FHIR_JSON);
            if let Some((content_type, b)) = &body {
                req = req.header(header::CONTENT_TYPE, *content_type).body(b.clone());
            }
            if let Some(p) = prefer {
                req = req.header("Prefer", p);
            }
            if let Some(org) = &self.org_public_id {
                req = req.header("X-Org-Public-Id", org);
            }
            if let Some(t) = &self.token {
                req = req.bearer_auth(t.token().await?);
            }
            let started = tokio::time::Instant::now();
            let sent = req.send().await;
            self.observe(&method, &sent, started.elapsed());
            let resp = sent.map_err(|e| http::network_error("the destination", e))?;
            if resp.status().is_redirection() {
                return Err(http::redirect_error("the destination", resp.status()));
            }
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
        let body = http::read_json(resp, MAX_METADATA_BYTES, "the metadata answer").await?;
        if body["resourceType"] != "CapabilityStatement" {
            return Err(TransportError::Setup(format!(
                "metadata answered with {} instead of a CapabilityStatement",
                body["resourceType"]
            )));
        }
        Ok(body["fhirVersion"].as_str().unwrap_or("unknown").to_string())
    }
}

/// Turns a non-success response into the right kind of error. The server's text (OperationOutcome
/// diagnostics, which often quote the refused resource) goes into the error's detail, kept for `last_error`;
/// what is logged is the status and the issue codes.
async fn failure(resp: Response) -> TransportError {
    let status = resp.status();
    let answer = retry::classify(status, resp.headers());
    let body = http::read_body(resp, MAX_SMALL_BYTES, "the error answer").await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body).into_owned();
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
    match answer {
        Answer::PreconditionFailed => TransportError::PreconditionFailed { outcome },
        Answer::Unavailable { retry_after } => {
            let codes = http::issue_codes(outcome.as_ref());
            let codes = if codes.is_empty() { String::new() } else { format!(" (issue codes: {})", codes.join(", ")) };
            TransportError::Unavailable {
                message: format!("the destination answered {status}{codes}"),
                detail: message,
                retry_after,
            }
        }
        // A failed transaction may report an entry's 412 inside a 400.
        Answer::Permanent
            if status == StatusCode::BAD_REQUEST
                && (message.contains("412") || message.to_lowercase().contains("precondition")) =>
        {
            TransportError::PreconditionFailed { outcome }
        }
        Answer::Permanent => TransportError::Rejected { status: status.as_u16(), message, outcome },
    }
}

/// The version a write made: the resource's `meta.versionId` when the server sent it back, else the ETag, else
/// the location's `_history` part.
fn version_of(etag: Option<&str>, location: Option<&str>, meta_version: Option<&str>) -> Option<String> {
    if let Some(v) = meta_version {
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
            // Each entry refers to its write's body: the bundle is written out from the bodies as they are.
            let entries: Vec<TransactionEntry<'_>> = writes
                .iter()
                .map(|w| {
                    let url = format!("{}/{}", w.resource_type, w.id);
                    TransactionEntry {
                        full_url: self.url(&url),
                        request: EntryRequest {
                            method: match w.method {
                                Method::Put => "PUT",
                                Method::Delete => "DELETE",
                            },
                            url,
                            if_match: w.if_match.as_ref().map(|v| format!("W/\"{v}\"")),
                        },
                        resource: w.body.as_ref().map(Body::json),
                    }
                })
                .collect();
            use std::sync::atomic::Ordering::Relaxed;
            let minimal = !self.whole_answers.load(Relaxed);
            let answers: Vec<WriteAnswer> = self
                .post_bundle("transaction", &entries, "the transaction response", minimal.then_some(PREFER_MINIMAL))
                .await?;
            let mut written: Vec<Written> = answers
                .iter()
                .map(|a| Written {
                    version_id: version_of(a.etag.as_deref(), a.location.as_deref(), a.version_id.as_deref()),
                })
                .collect();
            let unversioned: Vec<usize> = (0..writes.len())
                .filter(|&i| minimal && written[i].version_id.is_none() && writes[i].method == Method::Put)
                .collect();
            if !unversioned.is_empty() {
                tracing::warn!(
                    writes = unversioned.len(),
                    "The destination answered a transaction without the versions written; reading them back, and asking for the resources in the answer from now on."
                );
                self.whole_answers.store(true, Relaxed);
                for i in unversioned {
                    written[i].version_id = self.version_written(&writes[i]).await;
                }
            }
            Ok(written)
        })
    }

    fn find<'a>(
        &'a self,
        resource_type: &'a str,
        identifier: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Found>, TransportError>> {
        Box::pin(async move {
            let (page, _) = self.search_identifiers(resource_type, &[identifier], None).await?;
            Ok(matches_of(&page, resource_type, identifier))
        })
    }

    fn find_each<'a>(
        &'a self,
        resource_type: &'a str,
        identifiers: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<Found>>, TransportError>> {
        Box::pin(async move {
            use std::sync::atomic::Ordering::Relaxed;
            if !self.no_batch_search.load(Relaxed) {
                match self.search_batch(resource_type, identifiers).await {
                    Err(TransportError::Rejected { status, .. }) => {
                        tracing::warn!(
                            status,
                            "The destination refused a batch of searches; looking Patients up with one search of many values instead."
                        );
                        self.no_batch_search.store(true, Relaxed);
                    }
                    found => return found,
                }
            }
            let mut out: Vec<Vec<Found>> = vec![Vec::new(); identifiers.len()];
            // Identifiers with a comma would read as several values: each of those is searched alone.
            let (alone, together): (Vec<usize>, Vec<usize>) =
                (0..identifiers.len()).partition(|&i| identifiers[i].contains(','));
            let mut todo: Vec<Vec<usize>> = together.chunks(LOOKUP_CHUNK).map(<[usize]>::to_vec).collect();
            todo.extend(alone.into_iter().map(|i| vec![i]));
            while let Some(group) = todo.pop() {
                let wanted: Vec<&str> = group.iter().map(|&i| identifiers[i].as_str()).collect();
                let count = (2 * wanted.len()).clamp(20, 1000);
                let (page, more) = self.search_identifiers(resource_type, &wanted, Some(count)).await?;
                if more && group.len() > 1 {
                    // More matches than one page holds: ask again in halves rather than follow the `next`
                    // link, which would carry the identifiers in a URL.
                    let mut first = group;
                    let second = first.split_off(first.len() / 2);
                    todo.push(second);
                    todo.push(first);
                    continue;
                }
                for (&i, identifier) in group.iter().zip(&wanted) {
                    out[i] = matches_of(&page, resource_type, identifier);
                }
            }
            Ok(out)
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
            let body = self.page_bytes(path_or_link).await?;
            // serde_json's message gives a line and column, never the text around it.
            serde_json::from_slice(&body).map_err(|e| TransportError::transient(format!("the page is not JSON: {e}")))
        })
    }

    fn page_bytes<'a>(&'a self, path_or_link: &'a str) -> BoxFuture<'a, Result<Vec<u8>, TransportError>> {
        Box::pin(async move {
            let path = self.relative(path_or_link)?;
            let resp = self.request(HttpMethod::GET, &path, None).await?;
            if !resp.status().is_success() {
                return Err(failure(resp).await);
            }
            http::read_body(resp, MAX_PAGE_BYTES, "the page").await
        })
    }
}

/// A bundle as sent: its entries are serialised where they are.
#[derive(serde::Serialize)]
struct BundleOut<'a, E> {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    #[serde(rename = "type")]
    kind: &'a str,
    entry: &'a [E],
}

/// One entry of a transaction: the request, and the write's body (its text, as it is) by reference.
#[derive(serde::Serialize)]
struct TransactionEntry<'a> {
    #[serde(rename = "fullUrl")]
    full_url: String,
    request: EntryRequest,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<&'a RawValue>,
}

#[derive(serde::Serialize)]
struct EntryRequest {
    method: &'static str,
    url: String,
    #[serde(rename = "ifMatch", skip_serializing_if = "Option::is_none")]
    if_match: Option<String>,
}

/// Identifiers per search (or per batch of searches) when looking many up at once: well under what servers
/// take in one search (HFS fails somewhere between 800 and 1000 OR-ed values).
const LOOKUP_CHUNK: usize = 100;
/// Matches asked for per identifier in a batch of searches; more means asking again for that one alone.
const LOOKUP_PAGE: usize = 20;

impl FhirTransport {
    /// Posts a bundle of `kind` (transaction, batch) holding `entries` to the base; returns the answer's
    /// entries, each read as `A`, one per entry sent (a different count is transient: the answer cannot be
    /// matched up).
    async fn post_bundle<E: serde::Serialize, A: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        entries: &[E],
        what: &str,
        prefer: Option<&'static str>,
    ) -> Result<Vec<A>, TransportError> {
        let sent = entries.len();
        // The bundle's text with the entries serialised in place (no tree of them is built), no larger than
        // it is: it is held until the answer comes.
        let mut text = serde_json::to_vec(&BundleOut { resource_type: "Bundle", kind, entry: entries })
            .map_err(|e| TransportError::Setup(format!("writing the bundle: {e}")))?;
        text.shrink_to_fit();
        let resp = self.request_with(HttpMethod::POST, "", Some((FHIR_JSON, text.into())), prefer).await?;
        if !resp.status().is_success() {
            return Err(failure(resp).await);
        }
        let body = http::read_body(resp, MAX_PAGE_BYTES, what).await?;
        // serde_json's message gives a line and column, never the text around it.
        let answers: Vec<A> =
            answer::entries(&body).map_err(|e| TransportError::transient(format!("{what} is not JSON: {e}")))?;
        if answers.len() != sent {
            return Err(TransportError::transient(format!(
                "{kind} response has {} entries for {sent} sent",
                answers.len()
            )));
        }
        Ok(answers)
    }

    /// Looks `identifiers` up with one `batch` bundle per [`LOOKUP_CHUNK`], an entry
    /// `GET [type]?identifier=…` each: the server runs one indexed search per identifier, where a search of
    /// OR-ed values may not use its index (HFS answers 100 single searches in a batch in a third of the time of
    /// one search for the same 100 values, and 17 in a ninth). The identifiers (NHS numbers) travel in the
    /// body, never in a URL. An entry the server could not answer whole (an error, a next page) is asked again
    /// alone with [`FhirTransport::search_identifiers`].
    async fn search_batch(
        &self,
        resource_type: &str,
        identifiers: &[String],
    ) -> Result<Vec<Vec<Found>>, TransportError> {
        let mut out = Vec::with_capacity(identifiers.len());
        for chunk in identifiers.chunks(LOOKUP_CHUNK) {
            let entries: Vec<Value> = chunk
                .iter()
                .map(|i| {
                    let url = format!("{resource_type}?identifier={}&_count={LOOKUP_PAGE}", url_encode(i));
                    json!({ "request": { "method": "GET", "url": url } })
                })
                .collect();
            let answers: Vec<Value> = self.post_bundle("batch", &entries, "the batch of searches", None).await?;
            for (identifier, a) in chunk.iter().zip(&answers) {
                let page = &a["resource"];
                let whole = a["response"]["status"].as_str().is_some_and(|s| s.starts_with('2'))
                    && page["resourceType"] == "Bundle"
                    && !page["link"].as_array().is_some_and(|ls| ls.iter().any(|l| l["relation"] == "next"));
                if whole {
                    out.push(matches_of(page, resource_type, identifier));
                } else {
                    let (page, _) = self.search_identifiers(resource_type, &[identifier], Some(1000)).await?;
                    out.push(matches_of(&page, resource_type, identifier));
                }
            }
        }
        Ok(out)
    }

    /// One `POST [type]/_search` for resources carrying any of `identifiers`, with a form body: the
    /// identifiers (NHS numbers) stay out of the URL, so out of error messages and the destination's access
    /// logs. Returns the first page and whether the server has more (a `next` link, never followed here).
    async fn search_identifiers(
        &self,
        resource_type: &str,
        identifiers: &[&str],
        count: Option<usize>,
    ) -> Result<(Value, bool), TransportError> {
        let mut form =
            format!("identifier={}", identifiers.iter().map(|i| url_encode(i)).collect::<Vec<_>>().join(","));
        if let Some(n) = count {
            form.push_str(&format!("&_count={n}"));
        }
        let resp = self
            .request_with(
                HttpMethod::POST,
                &format!("{resource_type}/_search"),
                Some(("application/x-www-form-urlencoded", form.into())),
                None,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(failure(resp).await);
        }
        let bundle = http::read_json(resp, MAX_PAGE_BYTES, "the search response").await?;
        let more = bundle["link"].as_array().is_some_and(|ls| ls.iter().any(|l| l["relation"] == "next"));
        Ok((bundle, more))
    }
}

/// The resources of a search answer that are matches of type `resource_type` and carry `identifier`: a
/// server that ignored the search (or the form body), or another identifier's match, must not make another
/// person's record a match.
fn matches_of(bundle: &Value, resource_type: &str, identifier: &str) -> Vec<Found> {
    bundle["entry"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter(|e| e["search"]["mode"].as_str().is_none_or(|m| m == "match"))
                .filter(|e| e["resource"]["resourceType"] == resource_type && carries(&e["resource"], identifier))
                .map(|e| {
                    let r = e["resource"].clone();
                    Found {
                        id: r["id"].as_str().unwrap_or_default().to_string(),
                        version_id: r["meta"]["versionId"].as_str().map(str::to_string),
                        resource: r,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

impl FhirTransport {
    /// A `next` link as a path under our base: the server may name itself differently (another loopback
    /// name for the same address), but a link elsewhere is refused, so the token never goes to another server.
    /// The link is parsed (never matched as text), so user-info tricks such as `http://evil?@127.0.0.1/` fail.
    fn relative(&self, link: &str) -> Result<String, TransportError> {
        if !link.contains("://") {
            return Ok(link.trim_start_matches('/').to_string());
        }
        let refuse = || TransportError::Setup(format!("the server's next link is not under {}", self.base));
        let (Ok(l), Ok(b)) = (reqwest::Url::parse(link), reqwest::Url::parse(&self.base)) else {
            return Err(refuse());
        };
        let loopback = crate::config::is_loopback_url;
        let same_server = l.host() == b.host() && l.port_or_known_default() == b.port_or_known_default();
        // Only a loopback server may call itself by another loopback name (localhost for 127.0.0.1).
        let both_loopback = loopback(link) && loopback(&self.base);
        if l.scheme() != b.scheme()
            || !l.username().is_empty()
            || l.password().is_some()
            || !(same_server || both_loopback)
        {
            return Err(refuse());
        }
        let base_path = b.path().trim_end_matches('/');
        let Some(rest) = l.path().strip_prefix(base_path).filter(|r| r.is_empty() || r.starts_with('/')) else {
            return Err(refuse());
        };
        Ok(match l.query() {
            Some(q) => format!("{}?{q}", rest.trim_start_matches('/')),
            None => rest.trim_start_matches('/').to_string(),
        })
    }

    /// The version `write` made, read back after a minimal answer left it out: the version the destination
    /// holds when it holds exactly what was sent (else someone wrote since, and which version was ours is
    /// not known: none, as from a server that keeps no versions). Never an error: the transaction landed, and
    /// sending it again would write twice.
    async fn version_written(&self, write: &Write) -> Option<String> {
        let sent = write.body.as_ref()?;
        match self.read_path(format!("{}/{}", write.resource_type, write.id), &write.id).await {
            Ok(Some(found)) if crate::conflict::content_hash(&found.resource) == sent.hash() => found.version_id,
            Ok(_) => {
                tracing::warn!(resource_type = %write.resource_type, resource = %write.id, "Written, but the destination now holds something else (or nothing) there; its version is not recorded.");
                None
            }
            Err(e) => {
                tracing::warn!(resource_type = %write.resource_type, resource = %write.id, error = %e, "Written, but its version could not be read back; it is not recorded.");
                None
            }
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
            let r = http::read_json(resp, MAX_PAGE_BYTES, "the resource").await?;
            Ok(Some(Found {
                id: id.to_string(),
                version_id: version_of(etag.as_deref(), None, r["meta"]["versionId"].as_str()),
                resource: r,
            }))
        }
    }
}

/// Whether `resource` has the identifier `system|value` (or `value`, any system).
fn carries(resource: &Value, identifier: &str) -> bool {
    let (system, value) = match identifier.split_once('|') {
        Some((s, v)) => (Some(s), v),
        None => (None, identifier),
    };
    resource["identifier"].as_array().into_iter().flatten().any(|i| {
        i["value"].as_str() == Some(value) && system.is_none_or(|s| s.is_empty() || i["system"].as_str() == Some(s))
    })
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server answering every request with `head` (status line and headers, without the blank line)
    /// and then `body_len` bytes of JSON-ish filler, counting connections.
    async fn server(head: String, body_len: usize) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let head = head.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes()).await;
                    let chunk = vec![b' '; 64 * 1024];
                    let mut sent = 0;
                    while sent < body_len {
                        let n = chunk.len().min(body_len - sent);
                        if s.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        sent += n;
                    }
                });
            }
        });
        (format!("http://{addr}"), hits)
    }

    fn transport(base: &str) -> FhirTransport {
        FhirTransport::new(base, Duration::from_secs(5), Arc::new(RateLimiter::per_second(1000.0)), None, None).unwrap()
    }

    /// A 307/308 used to be followed, re-sending the bundle (personal data) to wherever it pointed.
    #[tokio::test]
    async fn redirects_are_not_followed() {
        let (elsewhere, hits) = server("HTTP/1.1 200 OK\r\nContent-Length: 2".into(), 2).await;
        for status in ["307 Temporary Redirect", "308 Permanent Redirect", "302 Found"] {
            let (base, _) =
                server(format!("HTTP/1.1 {status}\r\nLocation: {elsewhere}/\r\nContent-Length: 0"), 0).await;
            let err = transport(&base)
                .send(&[Write {
                    resource_type: "Patient".into(),
                    id: "p1".into(),
                    method: Method::Put,
                    body: Some(Body::new(&json!({"resourceType": "Patient", "id": "p1"}), "").unwrap()),
                    if_match: None,
                }])
                .await
                .unwrap_err();
            assert!(err.to_string().contains("redirect") && !err.to_string().contains(&elsewhere), "{err}");
        }
        assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing reached the redirect's target");
    }

    /// A 300 MB `metadata` answer used to be read whole; now reading stops at the limit, by the
    /// `Content-Length` or, without one, as the bytes arrive.
    #[tokio::test]
    async fn response_bodies_are_read_up_to_a_limit() {
        let big = MAX_METADATA_BYTES + 1024 * 1024;
        let (base, _) = server(format!("HTTP/1.1 200 OK\r\nContent-Length: {big}"), big).await;
        let err = transport(&base).capability().await.unwrap_err().to_string();
        assert!(err.contains("larger than 8 MB"), "{err}");
        // No Content-Length: the body ends when the connection closes.
        let (base, _) = server("HTTP/1.1 200 OK".into(), big).await;
        let err = transport(&base).capability().await.unwrap_err().to_string();
        assert!(err.contains("larger than 8 MB"), "{err}");
    }

    /// A network error names what was called and never the URL (a search URL used to carry the NHS number).
    #[tokio::test]
    async fn network_errors_carry_no_url() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let t = transport(&format!("http://127.0.0.1:{port}/fhir"));
        let err = t.find("Patient", "https://fhir.nhs.uk/Id/nhs-number|9990123403").await.unwrap_err();
        let text = err.full_text();
        assert!(text.contains("could not connect"), "{text}");
        assert!(!text.contains("9990123403") && !text.contains("/fhir") && !text.contains("nhs-number"), "{text}");
    }

    /// A 5xx's diagnostics (which quote the resource) are in `full_text` for `last_error`, not in the
    /// message that is logged.
    #[tokio::test]
    async fn server_text_is_kept_out_of_the_logged_message() {
        let body = r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"exception","diagnostics":"Patient Zoë Brontë 9990123403 failed"}]}"#;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 65536];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 99999999999\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        let err = transport(&format!("http://{addr}")).read("Patient", "p1").await.unwrap_err();
        assert_eq!(err.to_string(), "the destination answered 503 Service Unavailable (issue codes: exception)");
        assert!(err.full_text().contains("Brontë"), "{}", err.full_text());
        assert_eq!(err.retry_after(), Some(http::MAX_RETRY_AFTER));
    }

    /// A search answer holding records without the identifier searched for (a server that ignored the
    /// search) yields only the records that carry it.
    #[tokio::test]
    async fn search_results_must_carry_the_identifier() {
        let bundle = json!({"resourceType": "Bundle", "type": "searchset", "entry": [
            {"resource": {"resourceType": "Patient", "id": "other", "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9992115785"}]}},
            {"resource": {"resourceType": "Patient", "id": "same", "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990123403"}]}}
        ]})
        .to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 65536];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    bundle.len()
                );
                let _ = s.write_all(format!("{head}{bundle}").as_bytes()).await;
            }
        });
        let found = transport(&format!("http://{addr}"))
            .find("Patient", "https://fhir.nhs.uk/Id/nhs-number|9990123403")
            .await
            .unwrap();
        assert_eq!(found.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(), vec!["same"]);
    }

    /// On a server that refuses a batch of searches, many identifiers are looked up with one
    /// `POST Patient/_search` (the identifiers OR-ed in the form body, none in the request line), and the batch
    /// is not tried again; the answer is matched back by identifier; a page with a `next` link is asked again
    /// in halves instead of following the link (which carries the identifiers in its URL).
    #[tokio::test]
    async fn many_identifiers_are_found_with_few_posted_searches() {
        let nhs = |v: &str| format!("https://fhir.nhs.uk/Id/nhs-number|{v}");
        let held = [("a", "9990123403"), ("b", "9992115785"), ("b2", "9992115785")];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = lines.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 65536];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                let first = text.lines().next().unwrap_or_default().to_string();
                seen.lock().unwrap().push(first.clone());
                if first == "POST /fhir HTTP/1.1" {
                    let refusal =
                        r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-supported"}]}"#;
                    let head = format!(
                        "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        refusal.len()
                    );
                    let _ = s.write_all(format!("{head}{refusal}").as_bytes()).await;
                    continue;
                }
                let form = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
                let wanted = form.split('&').find_map(|p| p.strip_prefix("identifier=")).unwrap_or_default();
                let values: Vec<&str> = wanted.split(',').collect();
                let entry: Vec<Value> = held
                    .iter()
                    .filter(|(_, v)| values.iter().any(|w| w.ends_with(v)))
                    .map(|(id, v)| json!({"resource": {"resourceType": "Patient", "id": id, "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": v}]}}))
                    .collect();
                // Pretend a page holds two people's answers at most.
                let link = if values.len() > 2 {
                    json!([{"relation": "next", "url": "http://x/Patient?identifier=..."}])
                } else {
                    json!([])
                };
                let body =
                    json!({"resourceType": "Bundle", "type": "searchset", "link": link, "entry": entry}).to_string();
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                            .as_bytes(),
                    )
                    .await;
            }
        });
        let t = transport(&format!("http://{addr}/fhir"));
        let two = [nhs("9990123403"), nhs("9992115785")];
        let found = t.find_each("Patient", &two).await.unwrap();
        let ids = |f: &Vec<Found>| f.iter().map(|f| f.id.clone()).collect::<Vec<_>>();
        assert_eq!(found.iter().map(ids).collect::<Vec<_>>(), [vec!["a"], vec!["b", "b2"]]);
        assert_eq!(
            lines.lock().unwrap().clone(),
            ["POST /fhir HTTP/1.1", "POST /fhir/Patient/_search HTTP/1.1"],
            "the batch refused, then one search"
        );
        // Three: the first page is not whole, so two searches more, in halves.
        lines.lock().unwrap().clear();
        let three = [nhs("9990123403"), nhs("9990000018"), nhs("9992115785")];
        let found = t.find_each("Patient", &three).await.unwrap();
        assert_eq!(found.iter().map(ids).collect::<Vec<_>>(), [vec!["a"], vec![], vec!["b", "b2"]]);
        let lines = lines.lock().unwrap().clone();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines.iter().all(|l| l == "POST /fhir/Patient/_search HTTP/1.1"), "{lines:?}");
    }

    /// Many identifiers are looked up with one `batch` bundle of single searches posted to the base (the
    /// identifiers in the body, none in the request line) and matched back by identifier; an entry the
    /// server could not answer whole (a `next` page, an error) is asked again alone with a posted search.
    #[tokio::test]
    async fn many_identifiers_are_found_with_one_batch_of_searches() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = lines.clone();
        let patient = |id: &str, v: &str| json!({"resource": {"resourceType": "Patient", "id": id, "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": v}]}});
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 65536];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                let first = text.lines().next().unwrap_or_default().to_string();
                seen.lock().unwrap().push(first.clone());
                let body = if first == "POST /fhir HTTP/1.1" {
                    let searchset = |entry: Vec<Value>, link: Value| json!({"resourceType": "Bundle", "type": "searchset", "link": link, "entry": entry});
                    json!({"resourceType": "Bundle", "type": "batch-response", "entry": [
                        // The first: one match; the second: none; the third: more than a page holds.
                        {"response": {"status": "200 OK"}, "resource": searchset(vec![patient("a", "9990123403")], json!([]))},
                        {"response": {"status": "200 OK"}, "resource": searchset(vec![], json!([]))},
                        {"response": {"status": "200 OK"}, "resource": searchset(vec![patient("b", "9992115785")], json!([{"relation": "next", "url": "http://x/Patient?identifier=..."}]))},
                    ]})
                } else {
                    json!({"resourceType": "Bundle", "type": "searchset", "entry": [patient("b", "9992115785"), patient("b2", "9992115785")]})
                }
                .to_string();
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = s.write_all(format!("{head}{body}").as_bytes()).await;
            }
        });
        let t = transport(&format!("http://{addr}/fhir"));
        let nhs = |v: &str| format!("https://fhir.nhs.uk/Id/nhs-number|{v}");
        let three = [nhs("9990123403"), nhs("9990000018"), nhs("9992115785")];
        let found = t.find_each("Patient", &three).await.unwrap();
        let ids = |f: &Vec<Found>| f.iter().map(|f| f.id.clone()).collect::<Vec<_>>();
        assert_eq!(found.iter().map(ids).collect::<Vec<_>>(), [vec!["a"], vec![], vec!["b", "b2"]]);
        assert_eq!(
            lines.lock().unwrap().clone(),
            ["POST /fhir HTTP/1.1", "POST /fhir/Patient/_search HTTP/1.1"],
            "one batch, then the paged one alone"
        );
    }

    /// A `next` link is parsed: user-info tricks and other servers are refused before the token goes there.
    #[test]
    fn next_links_elsewhere_are_refused() {
        let t = transport("http://127.0.0.1:8080/fhir");
        assert_eq!(t.relative("http://127.0.0.1:8080/fhir/Patient?page=2").unwrap(), "Patient?page=2");
        assert_eq!(t.relative("http://localhost:9999/fhir/Patient?page=2").unwrap(), "Patient?page=2");
        assert_eq!(t.relative("Patient?page=2").unwrap(), "Patient?page=2");
        for link in [
            "http://evil.example?@127.0.0.1:8080/fhir/Patient",
            "http://evil.example#@127.0.0.1:8080/fhir/Patient",
            "http://evil.example/fhir/Patient",
            "https://127.0.0.1:8080/fhir/Patient",
            "http://127.0.0.1:8080/fhirevil/Patient",
            "http://u:p@127.0.0.1:8080/fhir/Patient",
        ] {
            assert!(t.relative(link).is_err(), "{link}");
        }
        let t = transport("https://cito.example/fhir");
        assert!(t.relative("https://cito.example:8443/fhir/Patient").is_err());
        assert_eq!(t.relative("https://cito.example/fhir/Patient?p=1").unwrap(), "Patient?p=1");
    }

    #[test]
    fn versions_from_etag_location_or_meta() {
        use super::version_of;
        assert_eq!(version_of(Some("W/\"3\""), None, None).as_deref(), Some("3"));
        assert_eq!(version_of(None, Some("Patient/a/_history/7"), None).as_deref(), Some("7"));
        assert_eq!(version_of(Some("W/\"3\""), Some("Patient/a/_history/7"), Some("2")).as_deref(), Some("2"));
        assert_eq!(
            super::url_encode("https://fhir.nhs.uk/Id/nhs-number|999"),
            "https%3A%2F%2Ffhir.nhs.uk%2FId%2Fnhs-number%7C999"
        );
    }

    /// A server scripted with one answer per request (status line and headers, body), recording each
    /// request's head.
    async fn scripted(answers: Vec<(&'static str, String)>) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            for (head, body) in answers {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 65536];
                // The head, then as many bytes as its Content-Length says.
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len: usize = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if n == 0 || buf.len() >= end + 4 + len {
                            seen.lock().unwrap().push(text[..end].to_string());
                            break;
                        }
                    }
                    if n == 0 {
                        break;
                    }
                }
                let reply = format!("{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        });
        (format!("http://{addr}"), heads)
    }

    /// Transactions ask for minimal answers (the ETag carries the version). A server that leaves the version
    /// out is asked for the resource, whose version is recorded when it holds what was sent (and not when it
    /// holds something else), and is asked for whole answers from then on.
    #[tokio::test]
    async fn minimal_answers_without_versions_are_read_back_and_whole_answers_asked_for_after() {
        let patient = json!({"resourceType": "Patient", "id": "p1", "gender": "female"});
        let write = |r: &Value| Write {
            resource_type: "Patient".into(),
            id: "p1".into(),
            method: Method::Put,
            body: Some(Body::new(r, "").unwrap()),
            if_match: None,
        };
        let ok = "HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json";
        let unversioned = json!({"resourceType": "Bundle", "type": "transaction-response",
            "entry": [{"response": {"status": "200 OK"}}]})
        .to_string();
        let mut held = patient.clone();
        held["meta"] = json!({"versionId": "3", "lastUpdated": "2026-12-03T10:00:00Z"});
        let mut changed = held.clone();
        changed["gender"] = json!("male");
        let versioned = json!({"resourceType": "Bundle", "type": "transaction-response",
            "entry": [{"response": {"status": "200 OK", "etag": "W/\"5\""}}]})
        .to_string();
        let (base, heads) = scripted(vec![(ok, unversioned.clone()), (ok, held.to_string()), (ok, versioned)]).await;
        let t = transport(&base);
        let written = t.send(&[write(&patient)]).await.unwrap();
        assert_eq!(written[0].version_id.as_deref(), Some("3"), "read back: the server holds what was sent");
        let written = t.send(&[write(&patient)]).await.unwrap();
        assert_eq!(written[0].version_id.as_deref(), Some("5"));
        let heads = heads.lock().unwrap().clone();
        let prefer = |h: &str| h.lines().any(|l| l.eq_ignore_ascii_case("prefer: return=minimal"));
        assert!(heads[0].starts_with("POST ") && prefer(&heads[0]), "{heads:?}");
        assert!(heads[1].starts_with("GET ") && heads[1].contains("/Patient/p1"), "{heads:?}");
        assert!(heads[2].starts_with("POST ") && !prefer(&heads[2]), "whole answers from then on: {heads:?}");

        // Someone wrote between: which version was ours is not known, so none is recorded.
        let (base, _) = scripted(vec![(ok, unversioned), (ok, changed.to_string())]).await;
        let written = transport(&base).send(&[write(&patient)]).await.unwrap();
        assert_eq!(written[0].version_id, None);
    }
}
