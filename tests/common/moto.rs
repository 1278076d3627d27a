//! Test harness for the AWS provider: a guard around a `moto_server` process (moto's KMS),
//! helpers to create keys in it, and a tiny HTTP proxy that counts requests and can be told to
//! swallow them (a KMS that accepts connections and never answers).
//!
//! Everything here stops what it started in `Drop`, so a panicking test cleans up too.
//! Nothing touches the process environment: tests run in parallel threads, so the provider gets
//! its endpoint, region and credentials through `AwsOptions` instead.
#![allow(dead_code)] // each test binary uses a different part of `common`

use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
        self.with_client(|c| async move {
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
        self.with_client(|c| async move {
            c.create_alias()
                .alias_name(alias)
                .target_key_id(key)
                .send()
                .await
                .expect("CreateAlias");
        })
    }

    /// Run one admin call on a throwaway runtime (the provider under test keeps its own).
    fn with_client<F, Fut, T>(&self, f: F) -> T
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
            .region(Region::new(REGION))
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

/// State shared by a proxy's threads.
struct Shared {
    upstream: Option<SocketAddr>,
    stop: AtomicBool,
    hang: AtomicBool,
    requests: AtomicUsize,
    /// Every socket opened, so `Drop` can shut them down and unblock their threads.
    sockets: Mutex<Vec<TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// An HTTP/1.1 proxy on 127.0.0.1 that counts requests it receives and either forwards them
/// upstream or (when hanging) swallows them and never answers.
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
            requests: AtomicUsize::new(0),
            sockets: Mutex::new(Vec::new()),
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

    /// Requests received so far (forwarded or swallowed).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// From now on, swallow requests (true) or forward them (false).
    pub fn set_hang(&self, hang: bool) {
        self.shared.hang.store(hang, Ordering::SeqCst);
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
        for s in lock(&self.shared.sockets).iter() {
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
        let upstream = match shared.upstream {
            Some(addr) => match TcpStream::connect(addr) {
                Ok(u) => {
                    let _ = u.set_nodelay(true);
                    Some(u)
                }
                Err(_) => continue, // drop the client: it sees a closed connection
            },
            None => None,
        };
        {
            let mut sockets = lock(&shared.sockets);
            sockets.extend(client.try_clone().ok());
            if let Some(u) = &upstream {
                sockets.extend(u.try_clone().ok());
            }
        }
        let mut threads = Vec::new();
        if let (Some(u), Ok(c)) = (
            upstream.as_ref().and_then(|u| u.try_clone().ok()),
            client.try_clone(),
        ) {
            threads.push(std::thread::spawn(move || copy_replies(u, c)));
        }
        let s = shared.clone();
        threads.push(std::thread::spawn(move || {
            pump_requests(client, upstream, &s)
        }));
        lock(&shared.threads).extend(threads);
    }
}

/// Upstream → client, byte for byte; when upstream closes, close the client too.
fn copy_replies(mut upstream: TcpStream, mut client: TcpStream) {
    let _ = std::io::copy(&mut upstream, &mut client);
    let _ = client.shutdown(Shutdown::Both);
}

/// Client → upstream, one request at a time: count it, then forward it or drop it.
fn pump_requests(client: TcpStream, mut upstream: Option<TcpStream>, shared: &Shared) {
    let Ok(reader) = client.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(reader);
    while let Some(request) = read_request(&mut reader) {
        shared.requests.fetch_add(1, Ordering::SeqCst);
        if shared.hang.load(Ordering::SeqCst) {
            continue;
        }
        let sent = upstream
            .as_mut()
            .is_some_and(|u| u.write_all(&request).is_ok());
        if !sent {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    if let Some(u) = upstream {
        let _ = u.shutdown(Shutdown::Both);
    }
}

/// One whole HTTP/1.1 request (headers + Content-Length body; the SDK sends no chunked
/// requests), or None at EOF or error.
fn read_request(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut length = 0usize;
    loop {
        let start = buf.len();
        if r.read_until(b'\n', &mut buf).ok()? == 0 {
            return None;
        }
        let line = String::from_utf8_lossy(&buf[start..]).to_ascii_lowercase();
        if let Some(v) = line.strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
        if line == "\r\n" {
            break;
        }
    }
    let start = buf.len();
    buf.resize(start + length, 0);
    r.read_exact(&mut buf[start..]).ok()?;
    Some(buf)
}
