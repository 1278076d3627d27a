//! Test harness for the AWS provider: a guard around a `moto_server` process (moto's KMS),
//! helpers to create keys in it, and a small keep-alive HTTP proxy that counts requests (per
//! KMS operation, in flight, failed) and injects faults: delay, 503 outage, DisabledException
//! refusal, or swallowing requests (a KMS that accepts connections and never answers).
//!
//! Everything here stops what it started in `Drop`, so a panicking test cleans up too.
//! Nothing touches the process environment: tests run in parallel threads, so the provider gets
//! its endpoint, region and credentials through `AwsOptions` instead.
#![allow(dead_code)] // each test binary uses a different part of `common`

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use kmsfs::keys::aws::{AwsOptions, KmsTimeouts, StaticCredentials};

/// Region every test key lives in.
pub const REGION: &str = "us-east-1";
/// How long moto may take to start (a cold Python import on a slow CI runner).
const STARTUP_LIMIT: Duration = Duration::from_secs(60);
/// Fresh ports to try if another process grabs ours between probing and moto binding it.
const START_TRIES: usize = 5;

/// Provider options pointing at `endpoint` with moto's dummy credentials.
pub fn options(endpoint: &str, timeouts: KmsTimeouts) -> AwsOptions {
    AwsOptions {
        timeouts,
        endpoint_url: Some(endpoint.to_string()),
        region: Some(REGION.to_string()),
        credentials: Some(StaticCredentials {
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
        }),
    }
}

/// A running `moto_server` on a free 127.0.0.1 port; killed and reaped on drop.
pub struct MotoServer {
    child: Child,
    addr: SocketAddr,
}

impl MotoServer {
    /// Start moto (`$MOTO_SERVER` or `moto_server` on PATH) and wait until it answers HTTP.
    pub fn start() -> MotoServer {
        let program = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let mut last_log = String::new();
        for _ in 0..START_TRIES {
            let addr = free_port();
            let mut log = tempfile::tempfile().expect("moto log file");
            let child = Command::new(&program)
                .args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log.try_clone().expect("clone log fd")))
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run {program}: {e} (install it: pip install 'moto[server]')")
                });
            // From here on the guard owns the child: a panic below still kills it.
            let mut server = MotoServer { child, addr };
            if server.wait_ready() {
                return server;
            }
            last_log.clear();
            let _ = log.rewind();
            let _ = log.read_to_string(&mut last_log);
        }
        panic!("moto_server did not start; its last output:\n{last_log}");
    }

    /// Poll until moto answers an HTTP request; false if it exited (e.g. port taken).
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + STARTUP_LIMIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if http_answers(self.addr) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "moto_server on {} did not answer within {STARTUP_LIMIT:?}",
            self.addr
        );
    }

    /// moto's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// moto's endpoint URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Create a symmetric encryption key; returns its ARN.
    pub fn create_key(&self) -> String {
        self.create_key_in(REGION)
    }

    /// Create a symmetric encryption key in `region` (moto keeps keys per signing region);
    /// returns its ARN.
    pub fn create_key_in(&self, region: &str) -> String {
        self.with_client(region, |c| async move {
            let out = c
                .create_key()
                .description("kmsfs test key")
                .send()
                .await
                .expect("CreateKey");
            out.key_metadata()
                .and_then(|m| m.arn())
                .expect("CreateKey returns an ARN")
                .to_string()
        })
    }

    /// Point `alias` (`alias/...`) at `key`.
    pub fn create_alias(&self, alias: &str, key: &str) {
        let (alias, key) = (alias.to_string(), key.to_string());
        self.with_client(REGION, |c| async move {
            c.create_alias()
                .alias_name(alias)
                .target_key_id(key)
                .send()
                .await
                .expect("CreateAlias");
        })
    }

    /// Run one admin call on a throwaway runtime (the provider under test keeps its own).
    fn with_client<F, Fut, T>(&self, region: &str, f: F) -> T
    where
        F: FnOnce(aws_sdk_kms::Client) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let config = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .endpoint_url(self.url())
            .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
            .build();
        let client = aws_sdk_kms::Client::from_conf(config);
        rt.block_on(f(client))
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on right now (moto binds it a moment later; `start` retries on a race).
fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind probe port");
    l.local_addr().expect("probe addr")
}

/// Whether something on `addr` answers a plain HTTP request.
fn http_answers(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 5];
    s.read_exact(&mut head).is_ok() && &head == b"HTTP/"
}

/// A reply the proxy relayed or made up with an HTTP status >= 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// The KMS operation (`X-Amz-Target` after the dot, e.g. "Decrypt").
    pub op: String,
    /// The HTTP status.
    pub status: u16,
    /// The error type (`x-amzn-ErrorType`, else the body's `__type`), e.g.
    /// "InvalidCiphertextException"; empty when the reply names none.
    pub error_type: String,
    /// The request's body (the KMS JSON: key id, encryption context, ...).
    pub request: String,
}

/// A request the proxy received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The KMS operation (`X-Amz-Target` after the dot, e.g. "Decrypt").
    pub op: String,
    /// The body (the KMS JSON: key id, encryption context, ...).
    pub body: String,
    /// The region the request was signed for (SigV4 credential scope
    /// `Credential=AKID/DATE/REGION/kms/aws4_request`); empty when unsigned.
    pub region: String,
}

/// The region of a SigV4 `Authorization` header's credential scope.
fn signing_region(authorization: Option<&str>) -> String {
    authorization
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|c| c.split([',', ' ']).next())
        .and_then(|scope| scope.split('/').nth(2))
        .unwrap_or_default()
        .to_string()
}

/// Counters, reset by `Proxy::reset`.
#[derive(Default)]
struct Stats {
    /// Requests received, by operation.
    by_op: HashMap<String, usize>,
    /// Every request received, in order.
    log: Vec<Request>,
    /// Requests being answered now, by operation.
    in_flight_by_op: HashMap<String, usize>,
    /// Most requests answered at once, by operation.
    max_in_flight_by_op: HashMap<String, usize>,
    /// Every reply with status >= 400.
    errors: Vec<ErrorReply>,
}

/// State shared by a proxy's threads.
struct Shared {
    upstream: Option<SocketAddr>,
    stop: AtomicBool,
    hang: AtomicBool,
    down: AtomicBool,
    deny: AtomicBool,
    delay_ms: AtomicU64,
    requests: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    stats: Mutex<Stats>,
    /// Every open socket, by connection, so `Drop` can shut them down and unblock their threads.
    sockets: Mutex<HashMap<u64, Vec<TcpStream>>>,
    next_conn: AtomicU64,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    /// Keep a clone of `s` for `Drop`; false (and `s` shut down) when the proxy is stopping.
    fn register(&self, conn: u64, s: &TcpStream) -> bool {
        let mut sockets = lock(&self.sockets);
        if self.stop.load(Ordering::SeqCst) {
            let _ = s.shutdown(Shutdown::Both);
            return false;
        }
        if let Ok(c) = s.try_clone() {
            sockets.entry(conn).or_default().push(c);
        }
        true
    }
}

/// A request counted as in flight (per operation too) for as long as it lives.
struct InFlight<'a> {
    shared: &'a Shared,
    op: String,
}

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared, op: &str) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let mut st = lock(&shared.stats);
        let n = st.in_flight_by_op.entry(op.to_string()).or_default();
        *n += 1;
        let n = *n;
        let max = st.max_in_flight_by_op.entry(op.to_string()).or_default();
        *max = (*max).max(n);
        InFlight {
            shared,
            op: op.to_string(),
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Some(n) = lock(&self.shared.stats).in_flight_by_op.get_mut(&self.op) {
            *n = n.saturating_sub(1);
        }
    }
}

/// An HTTP/1.1 proxy on 127.0.0.1 in front of a KMS endpoint (moto), for fault injection.
///
/// It counts the requests it receives (in total and per KMS operation, from `X-Amz-Target`),
/// how many it answers at once, and every reply with status >= 400; and it can delay each
/// request (`set_delay`), answer 503 to everything (`set_down`), answer DisabledException to
/// everything (`set_deny`), or swallow requests and never answer (`set_hang`).
///
/// Each client connection is served keep-alive, one request at a time (the SDK does not
/// pipeline): a request is read whole (Content-Length), forwarded on an upstream connection
/// (opened again whenever upstream closes it: moto answers `Connection: close`) and the reply
/// relayed with a Content-Length, so the client may reuse its connection.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// A proxy forwarding to `upstream`.
    pub fn forward_to(upstream: SocketAddr) -> Proxy {
        Self::start(Some(upstream))
    }

    /// A server that accepts connections, reads requests and never answers.
    pub fn black_hole() -> Proxy {
        let p = Self::start(None);
        p.set_hang(true);
        p
    }

    fn start(upstream: Option<SocketAddr>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Shared {
            upstream,
            stop: AtomicBool::new(false),
            hang: AtomicBool::new(false),
            down: AtomicBool::new(false),
            deny: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            requests: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            stats: Mutex::new(Stats::default()),
            sockets: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            threads: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let accept = std::thread::spawn(move || accept_loop(listener, s));
        Proxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// The proxy's endpoint URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far (forwarded, answered by the proxy or swallowed).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Client connections accepted so far (far fewer than requests when keep-alive works).
    pub fn connections(&self) -> usize {
        self.shared.next_conn.load(Ordering::SeqCst) as usize
    }

    /// Requests received for KMS operation `op` ("Decrypt", "GenerateDataKey", ...).
    pub fn count(&self, op: &str) -> usize {
        lock(&self.shared.stats).by_op.get(op).copied().unwrap_or(0)
    }

    /// Requests received, by operation.
    pub fn counts(&self) -> HashMap<String, usize> {
        lock(&self.shared.stats).by_op.clone()
    }

    /// Requests received for operation `op` whose body contains `text` (e.g. an encryption
    /// context key such as "kmsfs:file-id").
    pub fn count_with(&self, op: &str, text: &str) -> usize {
        lock(&self.shared.stats)
            .log
            .iter()
            .filter(|r| r.op == op && r.body.contains(text))
            .count()
    }

    /// Every request received, in order.
    pub fn request_log(&self) -> Vec<Request> {
        lock(&self.shared.stats).log.clone()
    }

    /// Replies with status >= 400 (relayed or made up by the proxy).
    pub fn errors(&self) -> usize {
        lock(&self.shared.stats).errors.len()
    }

    /// Replies with status >= 400 to operation `op`.
    pub fn errors_for(&self, op: &str) -> usize {
        lock(&self.shared.stats)
            .errors
            .iter()
            .filter(|e| e.op == op)
            .count()
    }

    /// Every reply with status >= 400, in order.
    pub fn error_replies(&self) -> Vec<ErrorReply> {
        lock(&self.shared.stats).errors.clone()
    }

    /// Requests being answered right now (received, not yet answered; swallowed ones excluded).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Most requests answered at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Most requests of operation `op` answered at once.
    pub fn max_in_flight_for(&self, op: &str) -> usize {
        lock(&self.shared.stats)
            .max_in_flight_by_op
            .get(op)
            .copied()
            .unwrap_or(0)
    }

    /// Zero every counter (requests, per operation, errors, max in flight; requests in flight
    /// now still count toward the new maximum).
    pub fn reset(&self) {
        let mut st = lock(&self.shared.stats);
        self.shared.requests.store(0, Ordering::SeqCst);
        self.shared.max_in_flight.store(
            self.shared.in_flight.load(Ordering::SeqCst),
            Ordering::SeqCst,
        );
        st.by_op.clear();
        st.log.clear();
        st.errors.clear();
        let now = st.in_flight_by_op.clone();
        st.max_in_flight_by_op = now;
    }

    /// From now on, swallow requests (true) or answer them (false).
    pub fn set_hang(&self, hang: bool) {
        self.shared.hang.store(hang, Ordering::SeqCst);
    }

    /// Hold every request this long before answering it (requests are delayed concurrently).
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.shared.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// From now on, answer every request with HTTP 503 (true) or forward it (false).
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// From now on, answer every request with a DisabledException (HTTP 400: the key is
    /// refused) (true) or forward it (false).
    pub fn set_deny(&self, deny: bool) {
        self.shared.deny.store(deny, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the loop sees `stop`.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for s in lock(&self.shared.sockets).values().flatten() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let threads: Vec<_> = lock(&self.shared.threads).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

/// Lock, ignoring poison: a panicking test must still be able to clean up.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = conn else { continue };
        let _ = client.set_nodelay(true);
        let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
        if !shared.register(id, &client) {
            return;
        }
        let s = shared.clone();
        let t = std::thread::spawn(move || {
            serve_client(client, id, &s);
            // Close our clones of this connection's sockets now, not at Drop.
            lock(&s.sockets).remove(&id);
        });
        let mut threads = lock(&shared.threads);
        threads.retain(|t| !t.is_finished());
        threads.push(t);
    }
}

/// An upstream connection: a reader and a writer on one socket.
struct Upstream {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// A parsed HTTP message: the start line, headers (name, value) and body.
struct Message {
    start: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the sender will close the connection after this message.
    fn closes(&self) -> bool {
        let conn = self.header("connection").map(str::to_ascii_lowercase);
        if self.start.starts_with("HTTP/1.0") || self.start.ends_with("HTTP/1.0") {
            conn.as_deref() != Some("keep-alive")
        } else {
            conn.as_deref() == Some("close")
        }
    }

    /// The message as bytes: start line, headers (minus hop-by-hop ones), a Content-Length.
    fn encode(&self, extra: &[(&str, &str)]) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start);
        for (n, v) in &self.headers {
            let lower = n.to_ascii_lowercase();
            if matches!(
                lower.as_str(),
                "connection" | "keep-alive" | "content-length" | "transfer-encoding"
            ) {
                continue;
            }
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        for (n, v) in extra {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// Serve one client connection until it closes (or the proxy stops).
fn serve_client(client: TcpStream, conn: u64, shared: &Shared) {
    let Ok(reader) = client.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(reader);
    let mut writer = client;
    let mut upstream: Option<Upstream> = None;
    while let Some(request) = read_message(&mut reader, false) {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let op = request
            .header("x-amz-target")
            .map(|t| t.rsplit('.').next().unwrap_or(t).trim().to_string())
            .unwrap_or_else(|| "(none)".to_string());
        let body = String::from_utf8_lossy(&request.body).into_owned();
        shared.requests.fetch_add(1, Ordering::SeqCst);
        {
            let mut st = lock(&shared.stats);
            *st.by_op.entry(op.clone()).or_default() += 1;
            st.log.push(Request {
                op: op.clone(),
                body: body.clone(),
                region: signing_region(request.header("authorization")),
            });
        }
        if shared.hang.load(Ordering::SeqCst) {
            continue; // swallowed: the client times out
        }
        let flight = InFlight::enter(shared, &op);
        if !delay(shared) {
            break;
        }
        let reply = if shared.down.load(Ordering::SeqCst) {
            made_up(503, "ServiceUnavailableException", "KMS down (test proxy)")
        } else if shared.deny.load(Ordering::SeqCst) {
            made_up(400, "DisabledException", "key disabled")
        } else {
            match forward(&request, &mut upstream, conn, shared) {
                Some(r) => r,
                None => {
                    upstream = None;
                    made_up(502, "", "upstream unreachable (test proxy)")
                }
            }
        };
        let status = status_of(&reply);
        if status >= 400 {
            lock(&shared.stats).errors.push(ErrorReply {
                op: op.clone(),
                status,
                error_type: error_type(&reply),
                request: body,
            });
        }
        let close = request.closes();
        let extra: &[(&str, &str)] = if close {
            &[("Connection", "close")]
        } else {
            &[]
        };
        let sent = writer.write_all(&reply.encode(extra)).is_ok();
        drop(flight);
        if !sent || close {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
    if let Some(u) = upstream {
        let _ = u.writer.shutdown(Shutdown::Both);
    }
}

/// Sleep the configured delay in short steps; false if the proxy is stopping.
fn delay(shared: &Shared) -> bool {
    let total = Duration::from_millis(shared.delay_ms.load(Ordering::SeqCst));
    let until = Instant::now() + total;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(10)));
    }
}

/// Send `request` upstream and read the reply, (re)connecting as needed. A reused connection
/// that turns out closed is retried once on a fresh one. None if upstream cannot be reached.
fn forward(
    request: &Message,
    upstream: &mut Option<Upstream>,
    conn: u64,
    shared: &Shared,
) -> Option<Message> {
    let addr = shared.upstream?;
    let bytes = request.encode(&[]);
    for _ in 0..2 {
        let reused = upstream.is_some();
        if upstream.is_none() {
            let s = TcpStream::connect(addr).ok()?;
            let _ = s.set_nodelay(true);
            if !shared.register(conn, &s) {
                return None;
            }
            *upstream = Some(Upstream {
                reader: BufReader::new(s.try_clone().ok()?),
                writer: s,
            });
        }
        let u = upstream.as_mut()?;
        let reply = u
            .writer
            .write_all(&bytes)
            .ok()
            .and_then(|()| read_message(&mut u.reader, true));
        match reply {
            Some(reply) => {
                if reply.closes() {
                    if let Some(u) = upstream.take() {
                        let _ = u.writer.shutdown(Shutdown::Both);
                    }
                }
                return Some(reply);
            }
            None => {
                if let Some(u) = upstream.take() {
                    let _ = u.writer.shutdown(Shutdown::Both);
                }
                if !reused || shared.stop.load(Ordering::SeqCst) {
                    return None;
                }
            }
        }
    }
    None
}

/// A reply made up by the proxy, in the KMS JSON error shape.
fn made_up(status: u16, error_type: &str, message: &str) -> Message {
    let reason = match status {
        400 => "Bad Request",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut headers = vec![(
        "Content-Type".to_string(),
        "application/x-amz-json-1.1".to_string(),
    )];
    let body = if error_type.is_empty() {
        format!(r#"{{"message":"{message}"}}"#)
    } else {
        headers.push(("x-amzn-ErrorType".to_string(), error_type.to_string()));
        format!(r#"{{"__type":"{error_type}","message":"{message}"}}"#)
    };
    Message {
        start: format!("HTTP/1.1 {status} {reason}"),
        headers,
        body: body.into_bytes(),
    }
}

/// The status code of a reply (0 if unreadable).
fn status_of(reply: &Message) -> u16 {
    reply
        .start
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The error type a KMS error reply names: `x-amzn-ErrorType` (up to a ':'), else the body's
/// `__type` (after a '#'); empty if none.
fn error_type(reply: &Message) -> String {
    if let Some(t) = reply.header("x-amzn-errortype") {
        return t.split(':').next().unwrap_or(t).trim().to_string();
    }
    let body = String::from_utf8_lossy(&reply.body);
    body.split_once("\"__type\"")
        .and_then(|(_, rest)| rest.split('"').nth(1))
        .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())
        .unwrap_or_default()
}

/// One whole HTTP/1.1 message: start line, headers and a body by Content-Length, chunked
/// transfer encoding, or (replies only) up to EOF. None at EOF before a message, or on error.
fn read_message(r: &mut impl BufRead, is_reply: bool) -> Option<Message> {
    let mut line = String::new();
    // Tolerate stray blank lines between messages.
    let start = loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if !l.is_empty() {
            break l.to_string();
        }
    };
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':')?;
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let mut msg = Message {
        start,
        headers,
        body: Vec::new(),
    };
    let chunked = msg
        .header("transfer-encoding")
        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            line.clear();
            if r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let size = line.trim().split(';').next()?;
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            if size == 0 {
                // Trailers, up to the blank line.
                loop {
                    line.clear();
                    if r.read_line(&mut line).ok()? == 0 || line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let at = msg.body.len();
            msg.body.resize(at + size, 0);
            r.read_exact(&mut msg.body[at..]).ok()?;
            line.clear();
            r.read_line(&mut line).ok()?; // CRLF after the chunk
        }
    } else if let Some(len) = msg.header("content-length") {
        let len: usize = len.parse().ok()?;
        msg.body.resize(len, 0);
        r.read_exact(&mut msg.body).ok()?;
    } else if is_reply {
        let status = status_of(&msg);
        if !(status == 204 || status == 304 || (100..200).contains(&status)) {
            r.read_to_end(&mut msg.body).ok()?;
            // Read to EOF: the connection is done.
            msg.headers.push(("Connection".into(), "close".into()));
        }
    }
    Some(msg)
}
