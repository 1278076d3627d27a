//! `kmsfs rewrap` through the binary: every file's key moves to the new key and no data does,
//! it resumes after an interruption or a kill, between KMS keys and across providers, and in
//! bucket-key mode. Headers are inspected with the library to prove which key each file is
//! under.
// The mount tier: real FUSE mounts, run by `scripts/test` (`--features fuse-tests`).
#![cfg(feature = "fuse-tests")]

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::moto::{MotoServer, Proxy};
use common::mount::{Rng, Vault, stderr};
use common::ops::*;
use kmsfs::format::header::ProviderId;
use kmsfs::keys::aws::{AwsKmsProvider, KmsTimeouts};
use kmsfs::keys::local::LocalProvider;
use kmsfs::keys::{EncryptionContext, KeyProvider};
use kmsfs::vault::VaultConfig;

#[test]
fn rewrap_local_to_local_moves_every_key_and_no_data() {
    let mut rng = Rng::from_env("rewrap_local_to_local");
    let v = Vault::new();
    v.init(&[]);
    let files = sample_files(&mut rng);
    write_files(&v, &files, &[]);
    {
        // A hard link: one inode, rewrapped once.
        let m = v.mount(&[]);
        fs::hard_link(m.join("one-byte"), m.join("dir/one-byte-link")).expect("link");
        m.unmount();
    }
    let mut files = files;
    files.insert("dir/one-byte-link".into(), vec![b'K']);
    let vol = volume_id(&v);
    let old_key = LocalProvider::open(&v.key_file).expect("old key");
    let new_path = v.root().join("new.key");
    let before = bodies(&v);
    let all_before: Vec<Vec<u8>> = data_files(&v)
        .iter()
        .map(|p| fs::read(p).expect("read"))
        .collect();

    let out = ok(
        run(
            &v,
            [
                OsStr::new("rewrap"),
                v.backing.as_os_str(),
                OsStr::new("--to-key-file"),
                new_path.as_os_str(),
                OsStr::new("--dry-run"),
            ],
        ),
        "rewrap --dry-run",
    );
    let n = files.values().filter(|d| !d.is_empty()).count() - 1; // the link shares its inode
    assert!(out.contains(&format!("would rewrap {n},")), "{out}");
    assert!(!new_path.exists(), "a dry run creates no key");
    let unchanged: Vec<Vec<u8>> = data_files(&v)
        .iter()
        .map(|p| fs::read(p).expect("read"))
        .collect();
    assert_eq!(unchanged, all_before, "a dry run writes nothing");

    let out = ok(
        run(
            &v,
            [
                OsStr::new("rewrap"),
                v.backing.as_os_str(),
                OsStr::new("--to-key-file"),
                new_path.as_os_str(),
            ],
        ),
        "rewrap",
    );
    assert!(out.contains(&format!("rewrapped {n},")), "{out}");
    let new_key = LocalProvider::open(&new_path).expect("new key created");
    for (p, h) in headers(&v) {
        assert!(
            opens_under(&new_key, &vol, &h),
            "{} opens under the new key",
            p.display()
        );
        assert!(
            !opens_under(&old_key, &vol, &h),
            "{} no longer opens under the old key",
            p.display()
        );
        assert!(
            h.slots[1 - h.active].is_empty(),
            "{}: the old slot is erased",
            p.display()
        );
    }
    assert_eq!(bodies(&v), before, "no encrypted block changed");
    let cfg = config(&v);
    assert_eq!(cfg.key_id, new_key.key_id());
    assert!(
        trust_record(&v).contains(&new_path.display().to_string()),
        "host trust record names the new key"
    );

    check_files(&v, &files, &[]);
    let err = v
        .try_mount(&["--key-file", &v.key_file.display().to_string()])
        .err()
        .expect("old key refused");
    assert!(err.contains("refusing"), "{err}");
    let out = ok(
        run(
            &v,
            [
                OsStr::new("rewrap"),
                v.backing.as_os_str(),
                OsStr::new("--to-key-file"),
                new_path.as_os_str(),
            ],
        ),
        "rewrap again",
    );
    assert!(out.contains("nothing to do"), "{out}");
    ok(
        run(&v, [OsStr::new("fsck"), v.backing.as_os_str()]),
        "fsck after rewrap",
    );
}

#[test]
fn rewrap_refuses_a_mounted_vault() {
    let v = Vault::new();
    v.init(&[]);
    let m = v.mount(&[]);
    fs::write(m.join("f"), b"x").expect("write");
    let to = v.root().join("k2");
    let (_, err) = fails(
        run(
            &v,
            [
                OsStr::new("rewrap"),
                v.backing.as_os_str(),
                OsStr::new("--to-key-file"),
                to.as_os_str(),
            ],
        ),
        "rewrap of a mounted vault",
    );
    assert!(err.contains("mounted"), "{err}");
    m.unmount();
}

/// Copies of every backing file's header, the config and the trust record: the state before a
/// rewrap.
struct Snapshot {
    headers: Vec<(PathBuf, Vec<u8>)>,
    config: Vec<u8>,
    trust: String,
}

fn snapshot(v: &Vault) -> Snapshot {
    Snapshot {
        headers: headers(v)
            .into_iter()
            .map(|(p, h)| (p, h.encode().to_vec()))
            .collect(),
        config: fs::read(VaultConfig::path(&v.backing)).expect("config"),
        trust: trust_record(v),
    }
}

#[test]
fn rewrap_resumes_from_a_half_done_vault() {
    let mut rng = Rng::from_env("rewrap_resumes_from_a_half_done_vault");
    let v = Vault::new();
    v.init(&[]);
    let mut files = Files::new();
    for i in 0..40 {
        let n = rng.below(20_000) as usize + 1;
        files.insert(format!("d{}/f{i}", i % 3), rng.bytes(n));
    }
    write_files(&v, &files, &[]);
    let vol = volume_id(&v);
    let before = snapshot(&v);
    let new_path = v.root().join("new.key");
    ok(
        run(
            &v,
            [
                OsStr::new("rewrap"),
                v.backing.as_os_str(),
                OsStr::new("--to-key-file"),
                new_path.as_os_str(),
            ],
        ),
        "rewrap",
    );
    // Put back half the headers, the config and the trust record: the state of a run killed
    // after half of the files (config and trust change only at the very end).
    for (p, h) in before.headers.iter().step_by(2) {
        fs::OpenOptions::new()
            .write(true)
            .open(p)
            .expect("open")
            .write_all_at(h, 0)
            .expect("restore header");
    }
    fs::write(VaultConfig::path(&v.backing), &before.config).expect("restore config");
    let trust = v
        .root()
        .join("config/kmsfs/vaults")
        .join(format!("{}.json", config(&v).volume_id));
    fs::write(trust, &before.trust).expect("restore trust record");

    let (old_key, new_key) = (
        LocalProvider::open(&v.key_file).expect("old"),
        LocalProvider::open(&new_path).expect("new"),
    );
    let (mut old, mut new) = (0, 0);
    for (p, h) in headers(&v) {
        match (
            opens_under(&old_key, &vol, &h),
            opens_under(&new_key, &vol, &h),
        ) {
            (true, false) => old += 1,
            (false, true) => new += 1,
            other => panic!("{}: opens under (old, new) = {other:?}", p.display()),
        }
    }
    assert_eq!((old, new), (20, 20));
    let out = ok(
        run(
            &v,
            [
                OsStr::new("rewrap"),
                v.backing.as_os_str(),
                OsStr::new("--to-key-file"),
                new_path.as_os_str(),
            ],
        ),
        "rewrap resumed",
    );
    assert!(out.contains("rewrapped 20, already under it 20"), "{out}");
    assert!(
        headers(&v)
            .iter()
            .all(|(_, h)| opens_under(&new_key, &vol, h))
    );
    check_files(&v, &files, &[]);
}

#[test]
fn rewrap_killed_half_way_leaves_every_file_readable_and_resumes() {
    let mut rng = Rng::from_env("rewrap_killed_half_way");
    let v = Vault::new();
    v.init(&[]);
    let mut files = Files::new();
    for i in 0..300 {
        let n = rng.below(3000) as usize + 1;
        files.insert(format!("d{}/f{i}", i % 7), rng.bytes(n));
    }
    write_files(&v, &files, &[]);
    let vol = volume_id(&v);
    let old_key = LocalProvider::open(&v.key_file).expect("old");
    let new_path = v.root().join("new.key");
    let actives: BTreeMap<PathBuf, usize> = headers(&v)
        .into_iter()
        .map(|(p, h)| (p, h.active))
        .collect();

    let mut child = v
        .command([
            OsStr::new("rewrap"),
            v.backing.as_os_str(),
            OsStr::new("--to-key-file"),
            new_path.as_os_str(),
            OsStr::new("--jobs"),
            OsStr::new("1"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rewrap");
    // Kill it (SIGKILL) as soon as one file has flipped to the new key.
    let deadline = Instant::now() + Duration::from_secs(60);
    let killed = loop {
        if child.try_wait().expect("try_wait").is_some() {
            break false;
        }
        let flipped = actives
            .iter()
            .any(|(p, a)| header(p).is_some_and(|h| h.active != *a));
        if flipped {
            child.kill().expect("kill -9");
            break true;
        }
        assert!(Instant::now() < deadline, "rewrap made no progress");
        std::thread::sleep(Duration::from_millis(1));
    };
    child.wait().expect("reap");
    let new_key = LocalProvider::open(&new_path).expect("new key file exists once a file moved");
    let mut moved = 0;
    for (p, h) in headers(&v) {
        let (o, n) = (
            opens_under(&old_key, &vol, &h),
            opens_under(&new_key, &vol, &h),
        );
        assert!(
            o != n,
            "{}: opens under exactly one key, got (old, new) = ({o}, {n})",
            p.display()
        );
        moved += usize::from(n);
    }
    println!(
        "killed: {killed}; {moved} of {} files were under the new key",
        actives.len()
    );
    let out = ok(
        run(
            &v,
            [
                OsStr::new("rewrap"),
                v.backing.as_os_str(),
                OsStr::new("--to-key-file"),
                new_path.as_os_str(),
            ],
        ),
        "rewrap rerun",
    );
    if killed {
        assert!(
            out.contains(&format!("already under it {moved}")) || moved == actives.len(),
            "{out}"
        );
    }
    assert!(
        headers(&v)
            .iter()
            .all(|(_, h)| opens_under(&new_key, &vol, h)),
        "all under the new key"
    );
    check_files(&v, &files, &[]);
}

/// moto with two keys, a counting proxy in front of it, and a vault whose commands reach KMS
/// through the proxy.
struct Kms {
    proxy: Proxy,
    keys: [String; 2],
    _moto: MotoServer,
}

impl Kms {
    fn start() -> Kms {
        let moto = MotoServer::start();
        let keys = [moto.create_key(), moto.create_key()];
        let proxy = Proxy::forward_to(moto.addr());
        Kms {
            proxy,
            keys,
            _moto: moto,
        }
    }

    fn vault(&self) -> Vault {
        Vault::new().with_kms(&self.proxy.url())
    }

    /// A provider for `key` talking to the proxy (checks the KeyId of every reply).
    fn provider(&self, key: &str) -> AwsKmsProvider {
        AwsKmsProvider::new(
            key,
            common::moto::options(&self.proxy.url(), KmsTimeouts::default()),
        )
        .expect("provider")
    }
}

#[test]
fn rewrap_between_kms_keys_and_across_providers() {
    let mut rng = Rng::from_env("rewrap_between_kms_keys_and_across_providers");
    let kms = Kms::start();
    let v = kms.vault();
    v.init(&["--kms-key-id", &kms.keys[0]]);
    let mut files = Files::new();
    for i in 0..10 {
        files.insert(format!("f{i}"), rng.bytes(1000 * i + 1));
    }
    files.insert("sub/deep/g".into(), rng.bytes(9000));
    write_files(&v, &files, &[]);
    let vol = volume_id(&v);
    let (k1, k2) = (kms.provider(&kms.keys[0]), kms.provider(&kms.keys[1]));
    let before = bodies(&v);

    // AWS -> AWS in one region: ReEncrypt, the data keys never leave the KMS.
    kms.proxy.reset();
    let out = ok(
        run(
            &v,
            [
                OsStr::new("rewrap"),
                v.backing.as_os_str(),
                OsStr::new("--to-kms-key-id"),
                OsStr::new(&kms.keys[1]),
            ],
        ),
        "rewrap to the second KMS key",
    );
    assert!(
        out.contains(&format!("rewrapped {},", files.len())),
        "{out}"
    );
    assert_eq!(
        kms.proxy.count("ReEncrypt"),
        files.len() + 2,
        "one ReEncrypt per file, one for the name key, one for the config key"
    );
    assert_eq!(
        kms.proxy.count_with("Decrypt", "kmsfs:file-id"),
        0,
        "no data key was unwrapped"
    );
    assert_eq!(
        kms.proxy.count("Decrypt"),
        1,
        "only the config key, to verify and re-seal the config"
    );
    for (p, h) in headers(&v) {
        // The provider checks that moto's reply names the key it asked for.
        assert!(
            opens_under(&k2, &vol, &h),
            "{} opens under the new KMS key",
            p.display()
        );
        assert!(
            !opens_under(&k1, &vol, &h),
            "{} does not open under the old KMS key",
            p.display()
        );
        assert_eq!(h.provider, ProviderId::AwsKms);
    }
    assert_eq!(bodies(&v), before, "no encrypted block changed");
    assert_eq!(config(&v).key_id, kms.keys[1]);
    assert!(trust_record(&v).contains(&kms.keys[1]));
    kms.proxy.reset();
    check_files(&v, &files, &["--key-pool-size", "0"]);
    assert!(
        kms.proxy.count("Decrypt") > files.len(),
        "every file and the name key unwrapped: {:?}",
        kms.proxy.counts()
    );
    assert_eq!(kms.proxy.errors(), 0, "{:?}", kms.proxy.error_replies());

    // AWS -> local: the provider id and the header tag change with the slot.
    let local = v.root().join("local.key");
    ok(
        run(
            &v,
            [
                OsStr::new("rewrap"),
                v.backing.as_os_str(),
                OsStr::new("--to-key-file"),
                local.as_os_str(),
            ],
        ),
        "rewrap to a local key",
    );
    let lp = LocalProvider::open(&local).expect("local key");
    for (p, h) in headers(&v) {
        assert_eq!(h.provider, ProviderId::Local, "{}", p.display());
        assert!(opens_under(&lp, &vol, &h), "{}", p.display());
    }
    kms.proxy.reset();
    check_files(&v, &files, &[]);
    assert_eq!(kms.proxy.requests(), 0, "a local vault makes no KMS call");

    // local -> AWS.
    ok(
        run(
            &v,
            [
                OsStr::new("rewrap"),
                v.backing.as_os_str(),
                OsStr::new("--to-kms-key-id"),
                OsStr::new(&kms.keys[0]),
            ],
        ),
        "rewrap back to KMS",
    );
    for (p, h) in headers(&v) {
        assert_eq!(h.provider, ProviderId::AwsKms, "{}", p.display());
        assert!(opens_under(&k1, &vol, &h), "{}", p.display());
    }
    assert_eq!(
        bodies(&v),
        before,
        "no encrypted block changed across three rewraps"
    );
    check_files(&v, &files, &["--key-pool-size", "0"]);
    ok(run(&v, [OsStr::new("fsck"), v.backing.as_os_str()]), "fsck");
    let o = run(
        &v,
        [
            OsStr::new("cat"),
            v.backing.as_os_str(),
            OsStr::new("sub/deep/g"),
        ],
    );
    assert_eq!(o.stdout, files["sub/deep/g"], "cat: {}", stderr(&o));
}

#[test]
fn rewrap_of_a_bucket_key_vault_moves_only_the_bucket_key() {
    let mut rng = Rng::from_env("rewrap_of_a_bucket_key_vault");
    let kms = Kms::start();
    let v = kms.vault();
    v.init(&["--kms-key-id", &kms.keys[0], "--bucket-key"]);
    let mut files = Files::new();
    for i in 0..8 {
        files.insert(format!("b/f{i}"), rng.bytes(3000 * i + 5));
    }
    write_files(&v, &files, &[]);
    let whole = |v: &Vault| -> Vec<Vec<u8>> {
        data_files(v)
            .iter()
            .map(|p| fs::read(p).expect("read"))
            .collect()
    };
    let before = whole(&v);
    let old_bucket = config(&v).wrapped_bucket_key.expect("bucket key");

    kms.proxy.reset();
    let out = ok(
        run(
            &v,
            [
                OsStr::new("rewrap"),
                v.backing.as_os_str(),
                OsStr::new("--to-kms-key-id"),
                OsStr::new(&kms.keys[1]),
            ],
        ),
        "rewrap a bucket-key vault",
    );
    assert!(out.contains("bucket-key mode"), "{out}");
    assert_eq!(
        kms.proxy.count("ReEncrypt"),
        3,
        "the bucket key, the name key and the config key: {:?}",
        kms.proxy.counts()
    );
    assert_eq!(whole(&v), before, "no backing file changed");
    let cfg = config(&v);
    assert_ne!(cfg.wrapped_bucket_key.as_deref(), Some(old_bucket.as_str()));
    assert_eq!(cfg.key_id, kms.keys[1]);
    let ctx = EncryptionContext::for_volume(&volume_id(&v), "bucket");
    let bucket = hex::decode(cfg.wrapped_bucket_key.expect("bucket key kept")).expect("hex");
    assert!(
        kms.provider(&kms.keys[1]).decrypt(&bucket, &ctx).is_ok(),
        "the bucket key opens under the new KMS key"
    );
    assert!(
        kms.provider(&kms.keys[0]).decrypt(&bucket, &ctx).is_err(),
        "and not under the old one"
    );
    check_files(&v, &files, &[]);
    ok(
        run(&v, [OsStr::new("fsck"), v.backing.as_os_str()]),
        "fsck of a bucket-key vault",
    );
    let o = run(
        &v,
        [OsStr::new("cat"), v.backing.as_os_str(), OsStr::new("b/f3")],
    );
    assert_eq!(o.stdout, files["b/f3"], "cat: {}", stderr(&o));

    // To a local key: every file moves, the bucket key goes.
    let local = v.root().join("local.key");
    ok(
        run(
            &v,
            [
                OsStr::new("rewrap"),
                v.backing.as_os_str(),
                OsStr::new("--to-key-file"),
                local.as_os_str(),
            ],
        ),
        "rewrap to a local key",
    );
    assert_eq!(config(&v).wrapped_bucket_key, None);
    let lp = LocalProvider::open(&local).expect("local key");
    let vol = volume_id(&v);
    for (p, h) in headers(&v) {
        assert_eq!(h.provider, ProviderId::Local, "{}", p.display());
        assert!(opens_under(&lp, &vol, &h), "{}", p.display());
    }
    check_files(&v, &files, &[]);
}
