//! A partner's paged JSON API, small and hand-written (minimal HTTP/1.1 over tokio), for the API source tests.
//!
//! [`PagedApi::start`] serves a list of JSON records (each with an `updated_at`) on `127.0.0.1:0`, one
//! request per connection (`Connection: close`), in three shapes:
//!
//! - `GET /linked[?after=K][&modified_since=T]`: `{"data": [...], "links": {"next": "/linked?after=..."}}`,
//!   [`PagedApi::LINKED_PAGE_SIZE`] records a page, the next link relative and carrying the filter, `null` on
//!   the last page (or absolute, to another origin, after [`PagedApi::next_links_to`]);
//! - `GET /pages?page=N&per_page=M[&modified_since=T]`: a bare array, pages numbered from 1;
//! - `GET /offsets?offset=N&limit=M[&modified_since=T]`: `{"result": {"items": [...]}}`;
//! - `GET /not-json`: a 200 with an HTML login page, as a misconfigured gateway sends.
//!
//! `modified_since=T` keeps the records whose `updated_at` sorts after `T`. Every request must carry the
//! configured credential ([`Credential`]), else `401`. [`PagedApi::unavailable_once_at`] makes the request
//! for the Nth page served answer `503` with `Retry-After` once. Each request's path and query is recorded
//! ([`PagedApi::requests`]). The server runs on its own thread and runtime, so it works under any test
//! runtime; dropping it stops it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What a request must carry.
#[derive(Debug, Clone)]
pub enum Credential {
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// `<header>: <key>` (the header name case-insensitive).
    ApiKey { header: String, key: String },
}

#[derive(Debug, Default)]
struct State {
    records: Vec<Value>,
    requests: Vec<String>,
    /// Pages answered with 200 so far.
    pages_served: u64,
    /// Answer the request for this page (1-based, in serving order) with 503 and this `Retry-After`, once.
    unavailable_at: Option<(u64, u64)>,
    /// Next links absolute, to this origin (`http://other.example:8080`).
    next_origin: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    credential: Credential,
    /// How many 503s have been answered.
    unavailable: watch::Sender<u32>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The running server.
pub struct PagedApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl PagedApi {
    /// Records per page of `/linked`.
    pub const LINKED_PAGE_SIZE: usize = 2;

    pub fn start(records: Vec<Value>, credential: Credential) -> PagedApi {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the paged API's port");
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let addr = listener.local_addr().expect("the paged API's address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State { records, ..State::default() }),
            credential,
            unavailable: watch::channel(0).0,
        });
        let (stop, mut stopped) = watch::channel(false);
        let server = shared.clone();
        let thread = std::thread::Builder::new()
            .name("paged-api".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("a tokio listener");
                    loop {
                        tokio::select! {
                            _ = stopped.wait_for(|s| *s) => break,
                            accepted = listener.accept() => {
                                if let Ok((stream, _)) = accepted {
                                    tokio::spawn(serve(stream, server.clone()));
                                }
                            }
                        }
                    }
                });
            })
            .expect("starting the paged API's thread");
        PagedApi { addr, shared, stop, thread: Some(thread) }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request's path and query so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.shared.state().requests.clone()
    }

    /// Replaces the records served.
    pub fn set_records(&self, records: Vec<Value>) {
        self.shared.state().records = records;
    }

    /// Answers the request for the `page`th page served (1-based) with `503` and `Retry-After`, once.
    pub fn unavailable_once_at(&self, page: u64, retry_after_secs: u64) {
        self.shared.state().unavailable_at = Some((page, retry_after_secs));
    }

    /// Makes `/linked`'s next links absolute, to `origin` (such as `http://other.example:8080`).
    pub fn next_links_to(&self, origin: &str) {
        self.shared.state().next_origin = Some(origin.to_string());
    }

    /// Counts the 503s answered; `wait_for(|n| *n > 0)` on it waits for the first.
    pub fn unavailable_answered(&self) -> watch::Receiver<u32> {
        self.shared.unavailable.subscribe()
    }
}

impl Drop for PagedApi {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers one request on `stream`, then closes it.
async fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let target = lines.next().and_then(|l| l.split(' ').nth(1)).unwrap_or("/").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let (status, extra, body) = answer(&shared, &target, &headers);
    let body = if target == "/not-json" && status == 200 {
        "<html><body>Please log in</body></html>".to_string()
    } else {
        body.to_string()
    };
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\
         {extra}\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The status, extra header lines and body for a request.
fn answer(shared: &Shared, target: &str, headers: &[(String, String)]) -> (u16, String, Value) {
    let mut state = shared.state();
    state.requests.push(target.to_string());
    let header = |name: &str| headers.iter().find(|(k, _)| k == &name.to_ascii_lowercase()).map(|(_, v)| v.as_str());
    let authorised = match &shared.credential {
        Credential::Bearer(token) => header("authorization") == Some(format!("Bearer {token}").as_str()),
        Credential::ApiKey { header: name, key } => header(name) == Some(key.as_str()),
    };
    if !authorised {
        return (401, String::new(), json!({"error": "unauthorized"}));
    }
    if let Some((page, retry_after)) = state.unavailable_at
        && state.pages_served + 1 == page
    {
        state.unavailable_at = None;
        shared.unavailable.send_modify(|n| *n += 1);
        return (503, format!("Retry-After: {retry_after}\r\n"), json!({"error": "busy"}));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query: HashMap<String, String> = reqwest::Url::parse(&format!("http://x/?{query}"))
        .map(|u| u.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
        .unwrap_or_default();
    let number = |k: &str| query.get(k).and_then(|v| v.parse::<usize>().ok());
    let since = query.get("modified_since").cloned();
    let matching: Vec<Value> = state
        .records
        .iter()
        .filter(|r| since.as_deref().is_none_or(|s| r["updated_at"].as_str().is_some_and(|u| u > s)))
        .cloned()
        .collect();
    let slice = |from: usize, size: usize| -> Vec<Value> { matching.iter().skip(from).take(size).cloned().collect() };
    let body = match path {
        "/linked" => {
            let after = number("after").unwrap_or(0);
            let end = after + PagedApi::LINKED_PAGE_SIZE;
            let next = (end < matching.len()).then(|| {
                let mut link = format!("/linked?after={end}");
                if let Some(s) = &since {
                    link.push_str(&format!("&modified_since={}", s.replace(':', "%3A").replace('+', "%2B")));
                }
                match &state.next_origin {
                    Some(origin) => format!("{origin}{link}"),
                    None => link,
                }
            });
            json!({"data": slice(after, PagedApi::LINKED_PAGE_SIZE), "links": {"next": next}})
        }
        "/pages" => {
            let (page, size) = (number("page").unwrap_or(1).max(1), number("per_page").unwrap_or(10));
            json!(slice((page - 1) * size, size))
        }
        "/offsets" => json!({"result": {"items": slice(number("offset").unwrap_or(0), number("limit").unwrap_or(10))}}),
        "/not-json" => Value::Null,
        _ => return (404, String::new(), json!({"error": "not found"})),
    };
    state.pages_served += 1;
    (200, String::new(), body)
}
