//! The running daemon's operator interface: `kmsfs status`, `kmsfs forget`, and what stays in
//! its memory after `forget` (no copy of a data key, raw or base64).
// The mount tier: real FUSE mounts, run by `scripts/test` (`--features fuse-tests`).
#![cfg(feature = "fuse-tests")]

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use common::moto::{MotoServer, Proxy, options};
use common::mount::{MountGuard, Rng, Vault, assert_contents};
use kmsfs::format::header::{FileHeader, HEADER_SIZE};
use kmsfs::keys::aws::{AwsKmsProvider, KmsTimeouts};
use kmsfs::keys::{EncryptionContext, KeyProvider};

fn status(v: &Vault, m: &MountGuard) -> serde_json::Value {
    v.status_json(m.path())
}

fn num(j: &serde_json::Value, k: &str) -> u64 {
    j[k].as_u64()
        .unwrap_or_else(|| panic!("status lacks {k}: {j}"))
}

#[test]
fn status_reports_the_mount_and_its_counters_change_with_use() {
    let v = Vault::new();
    v.init(&[]);
    let m = v.mount(&["--key-ttl", "123"]);
    let data = Rng::new(1).bytes(10_000);
    fs::write(m.join("f"), &data).expect("write");
    let before = status(&v, &m);
    for k in [
        "provider",
        "key_id",
        "kms_calls",
        "kms_errors",
        "cache_capacity",
        "uptime_s",
    ] {
        assert!(before.get(k).is_some(), "status lacks {k}: {before}");
    }
    assert_eq!(before["provider"], "local");
    assert_eq!(num(&before, "ttl_s"), 123);
    assert_eq!(
        num(&before, "pid"),
        u64::from(m.daemon_pid().expect("daemon pid"))
    );
    assert_eq!(num(&before, "tamper_events"), 0);
    for _ in 0..5 {
        assert_contents(&m.join("f"), &data);
    }
    let after = status(&v, &m);
    assert!(
        num(&after, "hits") > num(&before, "hits"),
        "reads did not count as cache hits: {after}"
    );
    assert!(num(&after, "cache_entries") >= 1);
    // A file held open shows in open_files.
    let held = fs::File::open(m.join("f")).expect("open");
    assert_eq!(num(&status(&v, &m), "open_files"), 1);
    drop(held);
    m.unmount();
}

#[test]
fn status_of_something_else_is_a_clear_error() {
    let v = Vault::new();
    let out = v.command(["status", "/"]).output().expect("run status");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("kmsfs"),
        "no one-line error"
    );
}

/// The vault with the AWS provider, reached through a counting proxy in front of moto.
struct AwsVault {
    moto: MotoServer,
    proxy: Proxy,
    key: String,
    vault: Vault,
}

fn aws_vault() -> AwsVault {
    let moto = MotoServer::start();
    let key = moto.create_key();
    let proxy = Proxy::forward_to(moto.addr());
    let vault = Vault::new().with_kms(&proxy.url());
    vault.init(&["--kms-key-id", &key, "--plaintext-names"]);
    AwsVault {
        moto,
        proxy,
        key,
        vault,
    }
}

#[test]
fn forget_forces_a_new_decrypt() {
    let a = aws_vault();
    let m = a.vault.mount(&[]);
    let data = Rng::new(2).bytes(5000);
    fs::write(m.join("f"), &data).expect("write");
    assert_contents(&m.join("f"), &data);
    a.proxy.reset();
    assert_contents(&m.join("f"), &data);
    assert_eq!(a.proxy.count("Decrypt"), 0, "a cached key needs no Decrypt");
    a.vault.forget(m.path());
    assert_eq!(
        num(&status(&a.vault, &m), "cache_entries"),
        0,
        "forget left keys cached"
    );
    assert_contents(&m.join("f"), &data);
    assert_eq!(
        a.proxy.count("Decrypt"),
        1,
        "after forget the next read unwraps again"
    );
    m.unmount();
}

/// Every writable mapping of process `pid`, read through /proc/PID/mem (as root).
fn writable_memory(pid: u32) -> Vec<u8> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mut mem = fs::File::open(format!("/proc/{pid}/mem")).expect("open mem (needs root)");
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        if !perms.starts_with("rw") {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_ok() && mem.read_exact(&mut buf).is_ok() {
            out.extend_from_slice(&buf);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn base64(bytes: &[u8]) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .encode(bytes)
        .into_bytes()
}

#[test]
fn after_forget_no_copy_of_a_data_key_is_left_in_the_daemon() {
    let a = aws_vault();
    let m = a.vault.mount(&[]);
    let data = Rng::new(3).bytes(20_000);
    fs::write(m.join("secret"), &data).expect("write");
    m.unmount();
    // Remount so the key is unwrapped by Decrypt (the path whose reply carries it in base64).
    let m = a.vault.mount(&[]);
    assert_contents(&m.join("secret"), &data);
    let pid = m.daemon_pid().expect("daemon pid");

    // The test learns the data key the same way the daemon does.
    let mut header = vec![0u8; HEADER_SIZE];
    fs::File::open(a.vault.backing.join("secret"))
        .and_then(|mut f| f.read_exact(&mut header))
        .expect("read header");
    let h = FileHeader::decode(&header).expect("header");
    let provider: Arc<dyn KeyProvider> = Arc::new(
        AwsKmsProvider::new(&a.key, options(&a.moto.url(), KmsTimeouts::default()))
            .expect("provider"),
    );
    let key = provider
        .decrypt(
            h.wrapped_key(),
            &EncryptionContext::for_file(&h.volume_id, &h.file_id),
        )
        .expect("unwrap the file key");
    let raw = key.expose().to_vec();
    let b64 = base64(&raw);

    let before = writable_memory(pid);
    assert!(
        contains(&before, &raw),
        "the scan should find the key while it is cached (else it proves nothing)"
    );

    a.vault.forget(m.path());
    let after = writable_memory(pid);
    let raw_left = contains(&after, &raw);
    let b64_left = contains(&after, &b64);
    println!("after forget: raw key in memory: {raw_left}, base64 key in memory: {b64_left}");
    assert!(
        !raw_left,
        "a raw copy of the data key survived forget in daemon {pid}"
    );
    assert!(
        !b64_left,
        "a base64 copy of the data key (the KMS reply) survived forget in daemon {pid}"
    );
    m.unmount();
}
