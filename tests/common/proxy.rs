//! A fault-injecting HTTP/1.1 reverse proxy, put in front of a real server (HFS) for fault tests.
//!
//! [`FaultProxy::start`] listens on `127.0.0.1:0` and forwards each request over a fresh connection to the
//! upstream with `Connection: close`, streaming the response back and then closing the client connection
//! (so every request is one connection: simple, and a client's retry is always visible as a new request).
//! A [`FaultPlan`] decides, with a seeded PRNG so runs repeat, whether a matching request instead gets:
//!
//! - [`Fault::Unavailable`]: `503` with an OperationOutcome (and `Retry-After` if
//!   [`FaultPlan::retry_after_on_unavailable`] says so), not forwarded;
//! - [`Fault::TooManyRequests`]: `429` with `Retry-After: N` (seconds), not forwarded;
//! - [`Fault::Timeout`]: no answer for [`FaultPlan::hang_for`], longer than any client timeout, not forwarded;
//! - [`Fault::Reset`]: the connection reset (RST, `SO_LINGER` 0) after the request is read, not forwarded;
//! - [`Fault::AfterForwardReset`]: forwarded and answered by the upstream, then the client's connection reset
//!   without the answer: the write happened, the client sees an error (the idempotency case).
//!
//! Every request is logged ([`ProxyRecord`]: method, target, headers, body, arrival, fault, upstream status)
//! so a test can count writes or check the request rate. The proxy runs on its own thread and runtime, so it
//! works the same under any test runtime (and is not affected by a paused tokio clock); dropping it stops it
//! and cuts any connections still open.
//!
//! Limits, fine for a test proxy: request bodies must have a `Content-Length` (chunked request bodies get
//! `501`); the upstream must close its side after answering a `Connection: close` request (hyper-based
//! servers such as HFS do); absolute upstream URLs in `Location` and `Content-Location` are rewritten to the
//! proxy, URLs inside bodies are not.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Largest request or response head the proxy reads.
const MAX_HEAD: usize = 64 * 1024;

/// Headers that describe one hop and are not forwarded.
const HOP_BY_HOP: &[&str] = &["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"];

/// What the proxy does to a request instead of passing it through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// `503 Service Unavailable` with an OperationOutcome; not forwarded.
    Unavailable,
    /// `429 Too Many Requests` with `Retry-After`; not forwarded.
    TooManyRequests,
    /// No answer for [`FaultPlan::hang_for`], then the connection closes; not forwarded.
    Timeout,
    /// Connection reset after the request is read; not forwarded.
    Reset,
    /// Forwarded (the upstream acts on it), then the connection is reset without the answer.
    AfterForwardReset,
}

/// The parts of a request a [`FaultPlan`] filter can look at.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: String,
    /// The request target as sent, e.g. `/Patient/p1?_format=json`.
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// `POST`, `PUT`, `PATCH` or `DELETE`.
    pub fn is_write(&self) -> bool {
        is_write(&self.method)
    }
}

type Filter = Arc<dyn Fn(&RequestHead) -> bool + Send + Sync>;

/// Which faults to inject, how often, and to which requests.
#[derive(Clone)]
pub struct FaultPlan {
    faults: Vec<(Fault, f64)>,
    retry_after_secs: u64,
    unavailable_retry_after_secs: Option<u64>,
    hang_for: Duration,
    seed: u64,
    filter: Option<Filter>,
}

impl Default for FaultPlan {
    fn default() -> Self {
        Self::none()
    }
}

impl fmt::Debug for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultPlan")
            .field("faults", &self.faults)
            .field("retry_after_secs", &self.retry_after_secs)
            .field("unavailable_retry_after_secs", &self.unavailable_retry_after_secs)
            .field("hang_for", &self.hang_for)
            .field("seed", &self.seed)
            .field("filtered", &self.filter.is_some())
            .finish()
    }
}

impl FaultPlan {
    /// Pass everything through.
    pub fn none() -> Self {
        Self {
            faults: Vec::new(),
            retry_after_secs: 1,
            unavailable_retry_after_secs: None,
            hang_for: Duration::from_secs(30),
            seed: 0x5eed_1e55_c0ff_ee00,
            filter: None,
        }
    }

    /// `fault` on every matching request.
    pub fn always(fault: Fault) -> Self {
        Self::none().with(fault, 1.0)
    }

    /// Adds `fault` with `probability` per matching request. The probabilities of all faults add up to at
    /// most 1; the rest of the requests pass through.
    pub fn with(mut self, fault: Fault, probability: f64) -> Self {
        assert!(
            (0.0..=1.0).contains(&probability),
            "fault probability {probability} for {fault:?} is not between 0 and 1"
        );
        self.faults.retain(|(f, _)| *f != fault);
        self.faults.push((fault, probability));
        let total: f64 = self.faults.iter().map(|(_, p)| p).sum();
        assert!(total <= 1.0 + 1e-9, "fault probabilities add up to {total}, over 1");
        self
    }

    /// The `Retry-After` seconds of [`Fault::TooManyRequests`] (default 1).
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_secs = seconds;
        self
    }

    /// [`Fault::Unavailable`] answers with `Retry-After: seconds` too (default: no `Retry-After`).
    pub fn retry_after_on_unavailable(mut self, seconds: u64) -> Self {
        self.unavailable_retry_after_secs = Some(seconds);
        self
    }

    /// How long [`Fault::Timeout`] keeps the client waiting (default 30 s).
    pub fn hang_for(mut self, duration: Duration) -> Self {
        self.hang_for = duration;
        self
    }

    /// The PRNG seed: the same plan and the same request order give the same faults.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Only requests for which `filter` is true can get a fault (default: all).
    pub fn only(mut self, filter: impl Fn(&RequestHead) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Arc::new(filter));
        self
    }

    /// Only requests with one of these methods can get a fault.
    pub fn only_methods(self, methods: &[&str]) -> Self {
        let methods: Vec<String> = methods.iter().map(|m| m.to_ascii_uppercase()).collect();
        self.only(move |request| methods.contains(&request.method))
    }

    /// Only `POST`, `PUT`, `PATCH` and `DELETE` can get a fault.
    pub fn only_writes(self) -> Self {
        self.only(RequestHead::is_write)
    }
}

/// One request the proxy received.
#[derive(Debug, Clone)]
pub struct ProxyRecord {
    /// Arrival order, from 0.
    pub seq: usize,
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the request had been read (real time; the proxy does not follow a paused tokio clock).
    pub arrived: Instant,
    pub fault: Option<Fault>,
    /// The upstream's status code, when the request was forwarded and answered.
    pub upstream_status: Option<u16>,
    /// What went wrong talking to the upstream or reading the request, if anything.
    pub error: Option<String>,
}

impl ProxyRecord {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// `POST`, `PUT`, `PATCH` or `DELETE`, except a posted `batch` bundle of searches (reads).
    pub fn is_write(&self) -> bool {
        is_write(&self.method) && self.searches().is_empty()
    }

    /// The search URLs of a posted `batch` bundle whose entries are all `GET`s (the connector's Patient
    /// look-ups); empty for any other request.
    pub fn searches(&self) -> Vec<String> {
        let bundle: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        let entries = bundle["entry"].as_array().map_or(&[][..], Vec::as_slice);
        if bundle["type"] != "batch" || entries.iter().any(|e| e["request"]["method"] != "GET") {
            return Vec::new();
        }
        entries.iter().filter_map(|e| e["request"]["url"].as_str().map(str::to_string)).collect()
    }

    /// Whether the upstream received the request (passed through, or [`Fault::AfterForwardReset`]).
    pub fn reached_upstream(&self) -> bool {
        self.upstream_status.is_some()
    }
}

/// The running proxy; stops on drop.
pub struct FaultProxy {
    addr: SocketAddr,
    base_url: String,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy for `upstream_base_url` (`http://host:port[/path]`). Panics if it cannot, as test
    /// setup does.
    pub fn start(upstream_base_url: &str, plan: FaultPlan) -> FaultProxy {
        let upstream = reqwest::Url::parse(upstream_base_url)
            .unwrap_or_else(|e| panic!("upstream URL {upstream_base_url:?} is not a URL: {e}"));
        assert_eq!(upstream.scheme(), "http", "the fault proxy speaks plain HTTP only; upstream {upstream_base_url:?}");
        let host =
            upstream.host_str().unwrap_or_else(|| panic!("upstream URL {upstream_base_url:?} has no host")).to_string();
        let port = upstream.port_or_known_default().unwrap_or(80);
        let path = upstream.path().trim_end_matches('/').to_string();

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy on 127.0.0.1:0");
        listener.set_nonblocking(true).expect("make the fault proxy's listener non-blocking");
        let addr = listener.local_addr().expect("the fault proxy's address");

        let shared = Arc::new(Shared {
            state: Mutex::new(PlanState::new(plan)),
            log: Mutex::new(Vec::new()),
            upstream_host: host.clone(),
            upstream_port: port,
            upstream_authority: format!("{host}:{port}"),
            upstream_origin: format!("http://{host}:{port}"),
            proxy_origin: format!("http://{addr}"),
        });
        let (stop, stopped) = watch::channel(false);
        let serving = shared.clone();
        let thread = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the fault proxy's runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("the fault proxy's listener");
                    serve(listener, serving, stopped).await;
                });
                // Dropping the runtime here cancels the connections still open (hanging timeouts).
            })
            .expect("start the fault proxy's thread");

        FaultProxy { addr, base_url: format!("http://{addr}{path}"), shared, stop, thread: Some(thread) }
    }

    /// The proxy's URL with the upstream's path, e.g. `http://127.0.0.1:40123`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the plan (and restarts the PRNG from its seed) for the requests that arrive from now on.
    pub fn set_plan(&self, plan: FaultPlan) {
        *lock(&self.shared.state) = PlanState::new(plan);
    }

    /// Every request received so far, in arrival order.
    pub fn log(&self) -> Vec<ProxyRecord> {
        lock(&self.shared.log).clone()
    }

    /// Forgets the requests received so far (sequence numbers go on).
    pub fn clear_log(&self) {
        lock(&self.shared.log).clear();
    }

    /// The `POST`/`PUT`/`PATCH`/`DELETE` requests received so far.
    pub fn writes(&self) -> Vec<ProxyRecord> {
        self.log().into_iter().filter(ProxyRecord::is_write).collect()
    }

    /// How many requests got `fault`.
    pub fn count_faults(&self, fault: Fault) -> usize {
        lock(&self.shared.log).iter().filter(|r| r.fault == Some(fault)).count()
    }

    /// The most requests that arrived within any span of `window` (for "the rate stays under N per
    /// second" assertions).
    pub fn max_in_window(&self, window: Duration) -> usize {
        let mut arrivals: Vec<Instant> = lock(&self.shared.log).iter().map(|r| r.arrived).collect();
        arrivals.sort();
        let mut best = 0;
        let mut start = 0;
        for end in 0..arrivals.len() {
            while start <= end && arrivals[end].duration_since(arrivals[start]) >= window {
                start += 1;
            }
            best = best.max(end + 1 - start);
        }
        best
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Shared {
    state: Mutex<PlanState>,
    log: Mutex<Vec<ProxyRecord>>,
    upstream_host: String,
    upstream_port: u16,
    /// `host:port`, for the `Host` header.
    upstream_authority: String,
    upstream_origin: String,
    proxy_origin: String,
}

struct PlanState {
    plan: FaultPlan,
    rng: XorShift,
    /// Sequence numbers keep counting across [`FaultProxy::clear_log`].
    next_seq: usize,
}

impl PlanState {
    fn new(plan: FaultPlan) -> Self {
        let rng = XorShift::new(plan.seed);
        Self { plan, rng, next_seq: 0 }
    }

    fn decide(&mut self, request: &RequestHead) -> Option<Fault> {
        if self.plan.faults.is_empty() {
            return None;
        }
        if let Some(filter) = &self.plan.filter
            && !filter(request)
        {
            return None;
        }
        let draw = self.rng.next_unit();
        let mut cumulative = 0.0;
        for (fault, probability) in &self.plan.faults {
            cumulative += probability;
            if draw < cumulative {
                return Some(*fault);
            }
        }
        None
    }
}

/// xorshift64*: small, seedable, good enough to spread faults.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    /// Uniform in `[0, 1)`.
    fn next_unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let out = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (out >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn is_write(method: &str) -> bool {
    matches!(method, "POST" | "PUT" | "PATCH" | "DELETE")
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(handle(stream, shared.clone()));
                }
            }
            _ = stopped.changed() => return,
        }
    }
}

async fn handle(mut client: TcpStream, shared: Arc<Shared>) {
    let (head, body) = match read_request(&mut client).await {
        Ok(Some(request)) => request,
        // The client connected and went away, or sent something that is not HTTP/1.1.
        Ok(None) | Err(_) => return,
    };

    let (seq, fault) = {
        let mut state = lock(&shared.state);
        let seq = state.next_seq;
        state.next_seq += 1;
        (seq, state.decide(&head))
    };
    let chunked = head.header("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    lock(&shared.log).push(ProxyRecord {
        seq,
        method: head.method.clone(),
        target: head.target.clone(),
        headers: head.headers.clone(),
        body: body.clone(),
        arrived: Instant::now(),
        fault,
        upstream_status: None,
        error: chunked.then(|| "chunked request bodies are not supported by the fault proxy".to_string()),
    });
    let update = |change: &dyn Fn(&mut ProxyRecord)| {
        if let Some(record) = lock(&shared.log).iter_mut().find(|r| r.seq == seq) {
            change(record);
        }
    };

    if chunked {
        let _ = write_simple(
            &mut client,
            501,
            "Not Implemented",
            &[],
            "not-supported",
            "The fault proxy does not forward chunked request bodies.",
        )
        .await;
        return;
    }

    match fault {
        Some(Fault::Unavailable) => {
            let retry_after = lock(&shared.state).plan.unavailable_retry_after_secs.map(|s| s.to_string());
            let headers: Vec<(&str, &str)> = retry_after.iter().map(|s| ("Retry-After", s.as_str())).collect();
            let _ = write_simple(
                &mut client,
                503,
                "Service Unavailable",
                &headers,
                "transient",
                "Injected by the test fault proxy: the server is unavailable.",
            )
            .await;
        }
        Some(Fault::TooManyRequests) => {
            let retry_after = lock(&shared.state).plan.retry_after_secs.to_string();
            let _ = write_simple(
                &mut client,
                429,
                "Too Many Requests",
                &[("Retry-After", &retry_after)],
                "throttled",
                "Injected by the test fault proxy: too many requests.",
            )
            .await;
        }
        Some(Fault::Timeout) => {
            let hang_for = lock(&shared.state).plan.hang_for;
            tokio::time::sleep(hang_for).await;
        }
        Some(Fault::Reset) => reset(client),
        Some(Fault::AfterForwardReset) => {
            match forward(&shared, &head, &body).await {
                Ok((status, _head, mut upstream, _rest)) => {
                    update(&|r| r.upstream_status = Some(status));
                    // Let the upstream finish its answer, so its write is complete before the reset.
                    let _ = tokio::io::copy(&mut upstream, &mut tokio::io::sink()).await;
                }
                Err(e) => update(&|r| r.error = Some(e.clone())),
            }
            reset(client);
        }
        None => match forward(&shared, &head, &body).await {
            Ok((status, response_head, mut upstream, rest)) => {
                update(&|r| r.upstream_status = Some(status));
                if client.write_all(&response_head).await.is_ok() && client.write_all(&rest).await.is_ok() {
                    let _ = tokio::io::copy(&mut upstream, &mut client).await;
                }
                let _ = client.shutdown().await;
            }
            Err(e) => {
                update(&|r| r.error = Some(e.clone()));
                let _ = write_simple(
                    &mut client,
                    502,
                    "Bad Gateway",
                    &[],
                    "transient",
                    &format!("The test fault proxy could not reach the upstream: {e}"),
                )
                .await;
            }
        },
    }
}

/// Closes with RST instead of FIN: `SO_LINGER` 0, then drop.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Reads one request: head and `Content-Length` body. `None` when the client closed before a full head.
async fn read_request(stream: &mut TcpStream) -> Result<Option<(RequestHead, Vec<u8>)>, String> {
    let Some((head_bytes, mut rest)) = read_head(stream).await? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&head_bytes);
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("malformed request line {request_line:?}"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("unsupported version {version:?}"));
    }
    let headers = parse_headers(lines);
    let length: usize = header(&headers, "content-length")
        .map(|v| v.trim().parse().map_err(|_| format!("bad Content-Length {v:?}")))
        .transpose()?
        .unwrap_or(0);
    while rest.len() < length {
        let mut chunk = vec![0; (length - rest.len()).min(64 * 1024)];
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the client closed the connection inside the body".into());
        }
        rest.extend_from_slice(&chunk[..n]);
    }
    rest.truncate(length);
    Ok(Some((RequestHead { method: method.to_string(), target: target.to_string(), headers }, rest)))
}

/// Reads up to the blank line; returns the head (without the blank line) and any bytes read past it.
async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> Result<Option<(Vec<u8>, Vec<u8>)>, String> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            buf.truncate(end);
            return Ok(Some((buf, rest)));
        }
        if buf.len() > MAX_HEAD {
            return Err(format!("head longer than {MAX_HEAD} bytes"));
        }
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn parse_headers<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<(String, String)> {
    lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect()
}

/// Sends the request upstream over a fresh connection; returns the status, the response head rewritten
/// for the client, the upstream connection and the body bytes already read.
async fn forward(
    shared: &Shared,
    head: &RequestHead,
    body: &[u8],
) -> Result<(u16, Vec<u8>, TcpStream, Vec<u8>), String> {
    let mut upstream = TcpStream::connect((shared.upstream_host.as_str(), shared.upstream_port))
        .await
        .map_err(|e| format!("connect to {}: {e}", shared.upstream_authority))?;
    let mut request = format!("{} {} HTTP/1.1\r\n", head.method, head.target);
    for (name, value) in &head.headers {
        let lower = name.to_ascii_lowercase();
        if lower == "host" || HOP_BY_HOP.contains(&lower.as_str()) {
            continue;
        }
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Host: {}\r\nConnection: close\r\n\r\n", shared.upstream_authority));
    upstream.write_all(request.as_bytes()).await.map_err(|e| format!("send request upstream: {e}"))?;
    upstream.write_all(body).await.map_err(|e| format!("send body upstream: {e}"))?;

    let (head_bytes, rest) =
        read_head(&mut upstream).await?.ok_or("the upstream closed the connection without answering")?;
    let text = String::from_utf8_lossy(&head_bytes);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default().to_string();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("malformed status line {status_line:?}"))?;

    let mut response = format!("{status_line}\r\n");
    for (name, value) in parse_headers(lines) {
        let lower = name.to_ascii_lowercase();
        if HOP_BY_HOP.contains(&lower.as_str()) {
            continue;
        }
        let value =
            if (lower == "location" || lower == "content-location") && value.starts_with(&shared.upstream_origin) {
                format!("{}{}", shared.proxy_origin, &value[shared.upstream_origin.len()..])
            } else {
                value
            };
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("Connection: close\r\n\r\n");
    Ok((status, response.into_bytes(), upstream, rest))
}

/// Answers with an OperationOutcome of one issue, then closes.
async fn write_simple(
    stream: &mut TcpStream,
    status: u16,
    reason: &str,
    extra_headers: &[(&str, &str)],
    code: &str,
    diagnostics: &str,
) -> std::io::Result<()> {
    let body = serde_json::json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": "error", "code": code, "diagnostics": diagnostics }],
    })
    .to_string();
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in extra_headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    response.push_str(&body);
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
