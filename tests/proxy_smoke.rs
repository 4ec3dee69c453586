//! The fault proxy (tests/common/proxy.rs) on its own, in front of a tiny in-test upstream rather than HFS:
//! each fault at probability 1 is seen by a reqwest client as intended, a clean plan passes requests and
//! answers through unchanged, and faults follow the plan's filter, seed and mid-test changes.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proxy::{Fault, FaultPlan, FaultProxy};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the upstream received: method, target, headers, body.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 server standing in for a FHIR server: `POST`/`PUT` answer 201 with `Location` and
/// `ETag`, other methods 200 with `ETag`; `/chunked` answers with a chunked body. One request per connection.
struct Upstream {
    base_url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let (origin, log) = (base_url.clone(), received.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, origin.clone(), log.clone()));
            }
        });
        Upstream { base_url, received }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn answer(mut stream: TcpStream, origin: String, log: Arc<Mutex<Vec<Received>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_string();
    let target = request_line.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_string(), v.trim().to_string())).collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    log.lock().unwrap().push(Received { method: method.clone(), target: target.clone(), headers, body: body.clone() });

    let json = serde_json::json!({
        "resourceType": "Patient",
        "id": "p1",
        "meta": { "versionId": "1" },
        "echo": { "method": method, "target": target, "body": String::from_utf8_lossy(&body) },
    })
    .to_string();
    let response = if target == "/chunked" {
        let (a, b) = json.split_at(json.len() / 2);
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nETag: W/\"7\"\r\n\
             Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        )
    } else if method == "POST" || method == "PUT" {
        format!(
            "HTTP/1.1 201 Created\r\nContent-Type: application/fhir+json\r\nETag: W/\"1\"\r\n\
             Location: {origin}/Patient/p1/_history/1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
            json.len()
        )
    } else {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nETag: W/\"1\"\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{json}",
            json.len()
        )
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap()
}

const PATIENT: &str = r#"{"resourceType":"Patient","id":"p1","active":true}"#;

async fn post_patient(client: &reqwest::Client, base: &str) -> reqwest::Result<reqwest::Response> {
    client.post(format!("{base}/Patient")).header("content-type", "application/fhir+json").body(PATIENT).send().await
}

/// The error and its sources, for messages and "what kind of failure" checks.
fn chain(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[tokio::test]
async fn without_faults_requests_and_answers_pass_through_unchanged() {
    let upstream = Upstream::start().await;
    let proxy = FaultProxy::start(&upstream.base_url, FaultPlan::none());
    let client = client();

    // A write with a body and conditional headers.
    let response = client
        .put(format!("{}/Patient/p1", proxy.base_url()))
        .header("content-type", "application/fhir+json")
        .header("if-match", "W/\"1\"")
        .header("x-request-id", "req-42")
        .body(PATIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["etag"], "W/\"1\"");
    assert_eq!(response.headers()["content-type"], "application/fhir+json");
    // The upstream's absolute Location points back through the proxy.
    assert_eq!(response.headers()["location"], format!("{}/Patient/p1/_history/1", proxy.base_url()).as_str());
    let via_proxy: Value = response.json().await.unwrap();

    let seen = upstream.received();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "PUT");
    assert_eq!(seen[0].target, "/Patient/p1");
    assert_eq!(seen[0].body, PATIENT.as_bytes());
    assert_eq!(seen[0].header("if-match"), Some("W/\"1\""));
    assert_eq!(seen[0].header("x-request-id"), Some("req-42"));
    let authority = upstream.base_url.trim_start_matches("http://");
    assert_eq!(seen[0].header("host"), Some(authority));

    // The body is exactly what the upstream sends when asked directly.
    let direct: Value = client
        .put(format!("{}/Patient/p1", upstream.base_url))
        .body(PATIENT)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(via_proxy, direct);

    // A chunked answer and a GET with a query string.
    let response = client.get(format!("{}/chunked", proxy.base_url())).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "W/\"7\"");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["echo"]["target"], "/chunked");
    let response = client.get(format!("{}/Patient?identifier=x%7C1&_count=5", proxy.base_url())).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["echo"]["target"], "/Patient?identifier=x%7C1&_count=5");

    let log = proxy.log();
    assert_eq!(log.len(), 3);
    assert!(log.iter().all(|r| r.fault.is_none()));
    assert_eq!(log.iter().map(|r| r.upstream_status).collect::<Vec<_>>(), [Some(201), Some(200), Some(200)]);
    assert_eq!(log[0].method, "PUT");
    assert_eq!(log[0].body, PATIENT.as_bytes());
    assert_eq!(proxy.writes().len(), 1);
}

#[tokio::test]
async fn unavailable_answers_503_with_an_operation_outcome_and_does_not_forward() {
    let upstream = Upstream::start().await;
    let proxy = FaultProxy::start(&upstream.base_url, FaultPlan::always(Fault::Unavailable));

    let response = post_patient(&client(), proxy.base_url()).await.unwrap();
    assert_eq!(response.status(), 503);
    let outcome: Value = response.json().await.unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["code"], "transient");

    assert!(upstream.received().is_empty());
    let log = proxy.log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].fault, Some(Fault::Unavailable));
    assert!(!log[0].reached_upstream());
}

#[tokio::test]
async fn too_many_requests_answers_429_with_retry_after() {
    let upstream = Upstream::start().await;
    let proxy = FaultProxy::start(&upstream.base_url, FaultPlan::always(Fault::TooManyRequests).retry_after(7));

    let response = post_patient(&client(), proxy.base_url()).await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    let outcome: Value = response.json().await.unwrap();
    assert_eq!(outcome["issue"][0]["code"], "throttled");
    assert!(upstream.received().is_empty());

    // The default is one second.
    proxy.set_plan(FaultPlan::always(Fault::TooManyRequests));
    let response = post_patient(&client(), proxy.base_url()).await.unwrap();
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(proxy.count_faults(Fault::TooManyRequests), 2);
}

#[tokio::test]
async fn timeout_leaves_the_client_waiting_past_its_timeout() {
    let upstream = Upstream::start().await;
    let proxy =
        FaultProxy::start(&upstream.base_url, FaultPlan::always(Fault::Timeout).hang_for(Duration::from_secs(30)));
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_millis(200)).build().unwrap();

    let started = Instant::now();
    let err = post_patient(&client, proxy.base_url()).await.unwrap_err();
    assert!(err.is_timeout(), "expected a timeout, got {}", chain(&err));
    // The client gave up on its own timeout, not when the proxy's 30 s hang ended.
    assert!(started.elapsed() < Duration::from_secs(25));
    assert!(upstream.received().is_empty());
    assert_eq!(proxy.log()[0].fault, Some(Fault::Timeout));
}

#[tokio::test]
async fn reset_is_a_connection_error_and_does_not_forward() {
    let upstream = Upstream::start().await;
    let proxy = FaultProxy::start(&upstream.base_url, FaultPlan::always(Fault::Reset));

    let err = post_patient(&client(), proxy.base_url()).await.unwrap_err();
    assert!(!err.is_timeout() && err.status().is_none(), "{}", chain(&err));
    let text = chain(&err).to_lowercase();
    // SO_LINGER 0 makes the close a TCP reset, not an orderly end of stream.
    assert!(text.contains("reset"), "{text}");
    assert!(upstream.received().is_empty());
    assert_eq!(proxy.log()[0].fault, Some(Fault::Reset));
}

#[tokio::test]
async fn after_forward_reset_fails_the_client_although_the_upstream_wrote() {
    let upstream = Upstream::start().await;
    let proxy = FaultProxy::start(&upstream.base_url, FaultPlan::always(Fault::AfterForwardReset));

    let err = post_patient(&client(), proxy.base_url()).await.unwrap_err();
    assert!(!err.is_timeout() && err.status().is_none(), "{}", chain(&err));

    assert!(chain(&err).to_lowercase().contains("reset"), "{}", chain(&err));

    let seen = upstream.received();
    assert_eq!(seen.len(), 1, "the upstream received the write");
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].body, PATIENT.as_bytes());
    let log = proxy.log();
    assert_eq!(log[0].fault, Some(Fault::AfterForwardReset));
    assert_eq!(log[0].upstream_status, Some(201));
}

#[tokio::test]
async fn faults_follow_the_filter_the_seed_and_plan_changes() {
    let upstream = Upstream::start().await;
    let proxy = FaultProxy::start(&upstream.base_url, FaultPlan::always(Fault::Unavailable).only_writes());
    let client = client();

    let read = client.get(format!("{}/Patient/p1", proxy.base_url())).send().await.unwrap();
    assert_eq!(read.status(), 200, "reads are not faulted");
    let write = post_patient(&client, proxy.base_url()).await.unwrap();
    assert_eq!(write.status(), 503, "writes are");

    // Half the requests fail, in an order fixed by the seed.
    let outcomes = |proxy: &FaultProxy| -> Vec<bool> { proxy.log().iter().map(|r| r.fault.is_some()).collect() };
    let plan = || FaultPlan::none().with(Fault::Unavailable, 0.5).seed(42);
    proxy.set_plan(plan());
    proxy.clear_log();
    for _ in 0..40 {
        client.get(format!("{}/Patient/p1", proxy.base_url())).send().await.unwrap();
    }
    let first = outcomes(&proxy);
    let failed = first.iter().filter(|f| **f).count();
    assert!((10..=30).contains(&failed), "{failed} of 40 failed at p = 0.5");

    let again = FaultProxy::start(&upstream.base_url, plan());
    for _ in 0..40 {
        client.get(format!("{}/Patient/p1", again.base_url())).send().await.unwrap();
    }
    assert_eq!(outcomes(&again), first, "the same seed gives the same faults");

    // Back to a clean plan mid-test; the rate helper sees the burst.
    proxy.set_plan(FaultPlan::none());
    let response = post_patient(&client, proxy.base_url()).await.unwrap();
    assert_eq!(response.status(), 201);
    assert!(proxy.max_in_window(Duration::from_secs(60)) >= 41);
    assert_eq!(proxy.max_in_window(Duration::ZERO), 0);
}
