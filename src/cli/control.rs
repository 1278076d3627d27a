//! The control socket of a running mount: `kmsfs status` and `kmsfs forget` talk to the daemon
//! over a Unix socket that only the mount's owner can use (0600, in the runtime directory).
//!
//! Protocol, version 1: the client sends one JSON line `{"version":1,"command":"status"}` (or
//! `"forget"`), the daemon answers one JSON line `{"version":1,"ok":true,...}` or
//! `{"version":1,"ok":false,"error":"..."}`, then closes the connection.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{CliError, runtime_dir};
use crate::content::Volume;
use crate::fs::handles::Handles;
use crate::keys::arn;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u64 = 1;

/// What the daemon reports and acts on.
pub struct Daemon {
    /// The inode table (inodes known, descriptors held).
    pub inodes: Arc<crate::fs::inodes::InodeTable>,
    /// The file-name key (encrypted names), dropped by `forget` too.
    pub name_key: Option<crate::names::NameKeyHandle>,
    /// The vault's shared state (key cache, counters).
    pub vault: Arc<Volume>,
    /// Open handles (for open_files and page-cache invalidation).
    pub handles: Arc<Handles>,
    /// Tells the kernel to drop cached pages.
    pub invalidator: Arc<dyn crate::fs::Invalidator>,
    /// The vault directory.
    pub vault_dir: PathBuf,
    /// The mount point.
    pub mountpoint: PathBuf,
    /// The key the vault config records (the key in use may be its multi-Region replica).
    pub vault_key_id: String,
    /// Key TTL.
    pub ttl: Duration,
    /// When the mount started.
    pub started: Instant,
}

impl Daemon {
    fn status(&self) -> Value {
        let keys = &self.vault.keys;
        let s = keys.stats();
        let provider = keys.provider();
        json!({
            "version": PROTOCOL_VERSION,
            "ok": true,
            "vault": self.vault_dir.display().to_string(),
            "mountpoint": self.mountpoint.display().to_string(),
            "provider": crate::vault::provider_name(provider.provider_id()),
            "key_id": provider.key_id(),
            "key_region": arn::region(provider.key_id()),
            "vault_key_id": self.vault_key_id,
            "vault_key_region": arn::region(&self.vault_key_id),
            "multi_region_replica": arn::is_replica_of(provider.key_id(), &self.vault_key_id),
            "ttl_s": self.ttl.as_secs(),
            "cache_entries": s.entries,
            "cache_capacity": s.capacity,
            "hits": s.hits,
            "misses": s.misses,
            "kms_calls": { "Decrypt": s.kms_decrypt, "GenerateDataKey": s.kms_generate + s.pool_generated },
            "kms_errors": s.kms_errors,
            "stale_served": s.stale_served,
            "pool_hits": s.pool_hits,
            "pool_misses": s.pool_misses,
            "tamper_events": self.vault.tamper_events.load(Ordering::Relaxed),
            // Of the files opened since the mount (format-3 headers; null: none yet).
            "oldest_key_made": match self.vault.oldest_key_made.load(Ordering::Relaxed) {
                u64::MAX => serde_json::Value::Null,
                t => t.into(),
            },
            "open_files": self.handles.open_files(),
            "inodes_known": self.inodes.len(),
            "fds_held": self.inodes.fds_held(),
            "fds_open": open_descriptors(),
            "fd_cache_limit": self.inodes.limit(),
            "rss_kib": rss_kib(),
            "uptime_s": self.started.elapsed().as_secs(),
            "pid": std::process::id(),
            "warnings": self.warnings(),
        })
    }

    /// Problems an operator should fix now.
    fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if !crate::vault::VaultConfig::path(&self.vault_dir).exists() {
            w.push(format!(
                "{}/.kmsfs/config.json is missing: restore it from a backup (it holds the wrapped name key)",
                self.vault_dir.display()
            ));
        }
        w
    }

    /// Drop every cached and pooled key, the name key, the bucket key and the local master key
    /// (the provider's `forget`), and the kernel's cached pages of open files, so nothing
    /// decrypted outlives the keys; each is unwrapped (or read) again on next use.
    fn forget(&self) -> Value {
        let dropped = self.vault.keys.stats().entries;
        self.vault.keys.clear();
        if let Some(k) = &self.name_key {
            k.forget();
        }
        for ino in self.handles.open_inodes() {
            self.invalidator.inval_inode(ino);
        }
        tracing::info!(keys = dropped, "forget: every cached key zeroized");
        json!({ "version": PROTOCOL_VERSION, "ok": true, "keys_dropped": dropped })
    }

    fn answer(&self, line: &str) -> Value {
        let req: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => return error(&format!("bad request: {e}")),
        };
        if req.get("version").and_then(Value::as_u64) != Some(PROTOCOL_VERSION) {
            return error("unsupported protocol version");
        }
        match req.get("command").and_then(Value::as_str) {
            Some("status") => self.status(),
            Some("forget") => self.forget(),
            _ => error("unknown command"),
        }
    }
}

/// Descriptors this process has open now (all kinds).
fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// This process's resident memory, KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn error(msg: &str) -> Value {
    json!({ "version": PROTOCOL_VERSION, "ok": false, "error": msg })
}

/// Bind the socket (0600, made under umask 077 so it is never open to others, in the private
/// runtime directory) and serve requests on a thread of its own. Only this user (and root)
/// may talk to it: the peer's uid is checked on every connection (SO_PEERCRED).
pub fn serve(daemon: Daemon) -> std::io::Result<()> {
    runtime_dir::ensure_dir()?;
    let path = runtime_dir::socket_path(&daemon.mountpoint);
    let _ = std::fs::remove_file(&path);
    let listener = crate::sys::with_umask(0o077, || UnixListener::bind(&path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let me = crate::sys::euid();
    std::thread::Builder::new()
        .name("kmsfs-control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut line = String::new();
                if BufReader::new(&stream)
                    .take(64 * 1024)
                    .read_line(&mut line)
                    .is_err()
                {
                    continue;
                }
                // The request is read first, so the refusal reaches a client still writing.
                let reply = match crate::sys::peer_uid(std::os::fd::AsFd::as_fd(&stream)) {
                    Ok(uid) if uid == me || uid == 0 => daemon.answer(line.trim()),
                    Ok(uid) => {
                        tracing::warn!(uid, "control socket: refused a request from another user");
                        error("not your mount")
                    }
                    Err(_) => continue,
                };
                let _ = writeln!(stream, "{reply}");
            }
        })?;
    Ok(())
}

/// Send `command` to the daemon serving `mountpoint`; returns its JSON answer.
pub fn request(mountpoint: &Path, command: &str) -> Result<Value, CliError> {
    let path = runtime_dir::socket_path(mountpoint);
    let mut stream = UnixStream::connect(&path).map_err(|e| {
        format!(
            "no kmsfs daemon answers for {} ({}: {e}): is it mounted by this user?",
            mountpoint.display(),
            path.display()
        )
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| format!("control socket {}: {e}", path.display()))?;
    writeln!(
        stream,
        "{}",
        json!({ "version": PROTOCOL_VERSION, "command": command })
    )
    .map_err(|e| format!("control socket {}: {e}", path.display()))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| format!("reading the daemon's answer: {e}"))?;
    let v: Value =
        serde_json::from_str(&line).map_err(|e| format!("bad answer from the daemon: {e}"))?;
    if v.get("ok").and_then(Value::as_bool) != Some(true) {
        let why = v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("unknown error");
        return Err(format!("the daemon refused {command}: {why}").into());
    }
    Ok(v)
}

use std::io::Read as _;
