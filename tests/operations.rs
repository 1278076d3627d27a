//! The offline operations commands through the binary (issue 9): `kmsfs cat`, `kmsfs fsck` and
//! `kmsfs rewrap`, on vaults filled through real mounts. Headers are inspected with the library
//! (`FileHeader::decode` and a provider per key) to prove which key each file is under.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::moto::{MotoServer, Proxy};
use common::mount::{Rng, Vault, assert_contents, stderr};
use kmsfs::crypto::verify_header;
use kmsfs::format::Id;
use kmsfs::format::header::{FileHeader, HEADER_SIZE, ProviderId};
use kmsfs::keys::aws::{AwsKmsProvider, KmsTimeouts};
use kmsfs::keys::local::LocalProvider;
use kmsfs::keys::{EncryptionContext, KeyProvider};
use kmsfs::vault::VaultConfig;

/// Plain relative path → contents.
type Files = BTreeMap<String, Vec<u8>>;

/// A mixed set of files: sizes around block boundaries, nested directories, a long name that
/// needs a sidecar, an empty file.
fn sample_files(rng: &mut Rng) -> Files {
    let mut f = Files::new();
    f.insert("one-byte".into(), vec![b'K']);
    f.insert("empty".into(), Vec::new());
    f.insert("dir/block-multiple.bin".into(), rng.bytes(3 * 4096));
    f.insert("dir/sub/almost-a-block".into(), rng.bytes(4095));
    f.insert("dir/sub/big.bin".into(), rng.bytes(1_500_000));
    f.insert("L".repeat(200), rng.bytes(777));
    f.insert("dir/ünïcødé name.txt".into(), b"plain text\n".to_vec());
    f
}

/// Write `files` through a mount of `v` (mounted with `extra`), then unmount.
fn write_files(v: &Vault, files: &Files, extra: &[&str]) {
    let m = v.mount(extra);
    for (rel, data) in files {
        let p = m.join(rel);
        if let Some(dir) = p.parent() {
            fs::create_dir_all(dir).expect("mkdir in mount");
        }
        fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }
    m.unmount();
}

/// Mount `v` (with `extra`) and check that every file reads back exactly.
fn check_files(v: &Vault, files: &Files, extra: &[&str]) {
    let m = v.mount(extra);
    for (rel, data) in files {
        assert_contents(&m.join(rel), data);
    }
    m.unmount();
}

/// Run a `kmsfs` command of `v` to completion.
fn run<I, S>(v: &Vault, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    v.command(args).output().expect("run kmsfs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Assert success and return stdout.
fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed: {}\nstdout: {}",
        stderr(&o),
        stdout(&o)
    );
    stdout(&o)
}

/// Assert exit status 1 with a one-line error and return (stdout, stderr).
fn fails(o: Output, what: &str) -> (String, String) {
    assert_eq!(
        o.status.code(),
        Some(1),
        "{what} should fail: stdout {}",
        stdout(&o)
    );
    let err = stderr(&o);
    assert!(err.starts_with("kmsfs: "), "{what}: {err}");
    (stdout(&o), err)
}

fn config(v: &Vault) -> VaultConfig {
    VaultConfig::load(&v.backing).expect("vault config")
}

fn volume_id(v: &Vault) -> Id {
    config(v).volume_id_bytes().expect("volume id")
}

/// This vault's host-side trust record, as text.
fn trust_record(v: &Vault) -> String {
    let p = v
        .root()
        .join("config/kmsfs/vaults")
        .join(format!("{}.json", config(v).volume_id));
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The backing files of plain regular files (long-name sidecars left out).
fn data_files(v: &Vault) -> Vec<PathBuf> {
    v.backing_files()
        .into_iter()
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| kmsfs::names::cipher::is_sidecar(n.as_encoded_bytes()))
        })
        .collect()
}

/// The decoded header of a backing file (`None` for an empty file).
fn header(p: &Path) -> Option<FileHeader> {
    let f = fs::File::open(p).expect("open backing file");
    if f.metadata().expect("stat").len() == 0 {
        return None;
    }
    let mut b = vec![0u8; HEADER_SIZE];
    f.read_exact_at(&mut b, 0).expect("read header");
    Some(FileHeader::decode(&b).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

/// Whether the active slot of `h` opens under `key` and the header tag verifies.
fn opens_under(key: &dyn KeyProvider, vol: &Id, h: &FileHeader) -> bool {
    key.decrypt(
        h.wrapped_key(),
        &EncryptionContext::for_file(vol, &h.file_id),
    )
    .is_ok_and(|k| verify_header(&k, h).is_ok())
}

/// Every non-empty backing file with its header.
fn headers(v: &Vault) -> Vec<(PathBuf, FileHeader)> {
    data_files(v)
        .into_iter()
        .filter_map(|p| header(&p).map(|h| (p, h)))
        .collect()
}

/// Bytes after the header of every backing file (the encrypted data rewrap must not touch).
fn bodies(v: &Vault) -> BTreeMap<PathBuf, Vec<u8>> {
    data_files(v)
        .into_iter()
        .map(|p| {
            let b = fs::read(&p).expect("read backing");
            let body = b.get(HEADER_SIZE..).unwrap_or_default().to_vec();
            (p, body)
        })
        .collect()
}

/// The backing file of the largest plain file (backing sizes grow with plain sizes).
fn largest_backing(v: &Vault) -> PathBuf {
    data_files(v)
        .into_iter()
        .max_by_key(|p| fs::metadata(p).expect("stat").len())
        .expect("a backing file")
}

fn flip_byte(p: &Path, from_end: u64) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .expect("open for tamper");
    let at = f.metadata().expect("stat").len() - from_end;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).expect("read byte");
    b[0] ^= 1;
    f.write_all_at(&b, at).expect("write byte");
}

#[test]
fn cat_prints_what_the_mount_shows() {
    let mut rng = Rng::from_env("cat_prints_what_the_mount_shows");
    let v = Vault::new();
    v.init(&[]);
    let files = sample_files(&mut rng);
    write_files(&v, &files, &[]);
    // What the mount shows is the reference.
    let m = v.mount(&[]);
    let mounted: Files = files
        .keys()
        .map(|k| (k.clone(), fs::read(m.join(k)).expect("read mount")))
        .collect();
    m.unmount();
    assert_eq!(mounted, files);

    for (rel, data) in &mounted {
        let o = run(
            &v,
            [OsStr::new("cat"), v.backing.as_os_str(), OsStr::new(rel)],
        );
        assert!(o.status.success(), "cat {rel}: {}", stderr(&o));
        assert!(
            o.stdout == *data,
            "cat {rel}: {} bytes differ from the mounted file",
            o.stdout.len()
        );
    }
    // One argument: a backing file (names are encrypted, so every backing name differs) ...
    let mut seen: Vec<Vec<u8>> = data_files(&v)
        .iter()
        .map(|p| {
            let o = run(&v, [OsStr::new("cat"), p.as_os_str()]);
            assert!(o.status.success(), "cat {}: {}", p.display(), stderr(&o));
            o.stdout
        })
        .collect();
    let mut want: Vec<Vec<u8>> = mounted.values().cloned().collect();
    seen.sort();
    want.sort();
    assert_eq!(
        seen, want,
        "cat of every backing file gives every plain file once"
    );
    // ... or VAULT/PLAIN/PATH, which does not exist in the backing dir.
    let o = run(
        &v,
        [
            OsStr::new("cat"),
            v.backing.join("dir/sub/big.bin").as_os_str(),
        ],
    );
    assert!(
        o.status.success() && o.stdout == files["dir/sub/big.bin"],
        "cat VAULT/plain: {}",
        stderr(&o)
    );

    // Errors: one line, exit 1.
    fails(
        run(
            &v,
            [OsStr::new("cat"), v.backing.as_os_str(), OsStr::new("nope")],
        ),
        "cat of a missing file",
    );
    fails(
        run(
            &v,
            [OsStr::new("cat"), v.backing.as_os_str(), OsStr::new("dir")],
        ),
        "cat of a directory",
    );
    fails(
        run(
            &v,
            [
                OsStr::new("cat"),
                v.backing.as_os_str(),
                OsStr::new(".kmsfs/config.json"),
            ],
        ),
        "cat of the config",
    );
    let big = largest_backing(&v);
    flip_byte(&big, 5000);
    let o = run(
        &v,
        [
            OsStr::new("cat"),
            v.backing.as_os_str(),
            OsStr::new("dir/sub/big.bin"),
        ],
    );
    let (_, err) = fails(o, "cat of a tampered file");
    assert!(
        err.contains("block") && !err.contains('\n'),
        "names the bad block, on one line: {err}"
    );
}

/// stdout of `kmsfs cat VAULT rel` (bytes).
fn run_raw(v: &Vault, rel: &str) -> Vec<u8> {
    run(
        v,
        [OsStr::new("cat"), v.backing.as_os_str(), OsStr::new(rel)],
    )
    .stdout
}

#[test]
fn cat_in_a_plaintext_names_vault_and_with_an_explicit_key() {
    let v = Vault::new();
    v.init(&["--plaintext-names"]);
    let mut files = Files::new();
    files.insert("a/b.txt".into(), b"hello".to_vec());
    write_files(&v, &files, &[]);
    assert_eq!(run_raw(&v, "a/b.txt"), b"hello");
    let o = run(
        &v,
        [OsStr::new("cat"), v.backing.join("a/b.txt").as_os_str()],
    );
    assert_eq!(ok(o, "cat BACKING"), "hello");
    // Another key is refused (the vault names the trusted one), with a one-line reason.
    let other = v.root().join("other.key");
    LocalProvider::create(&other).expect("other key");
    let o = run(
        &v,
        [
            OsStr::new("cat"),
            v.backing.as_os_str(),
            OsStr::new("a/b.txt"),
            OsStr::new("--key-file"),
            other.as_os_str(),
        ],
    );
    fails(o, "cat with a foreign key");
}

#[test]
fn fsck_finds_tampered_and_headerless_files_and_nothing_in_a_clean_vault() {
    let mut rng = Rng::from_env("fsck_finds_tampered_and_headerless_files");
    let v = Vault::new();
    v.init(&[]);
    let mut files = sample_files(&mut rng);
    for i in 0..12 {
        files.insert(format!("many/f{i:02}"), rng.bytes(1000 * (i + 1)));
    }
    write_files(&v, &files, &[]);
    let out = ok(
        run(&v, [OsStr::new("fsck"), v.backing.as_os_str()]),
        "fsck of a clean vault",
    );
    assert!(
        out.contains(" 0 damaged") && !out.contains("DAMAGED"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{} files", files.len())),
        "counts every file: {out}"
    );

    // One flipped byte near the end of the largest file.
    let big = largest_backing(&v);
    flip_byte(&big, 10);
    let (out, _) = fails(
        run(&v, [OsStr::new("fsck"), v.backing.as_os_str()]),
        "fsck of a tampered vault",
    );
    let bad: Vec<&str> = out.lines().filter(|l| l.starts_with("DAMAGED")).collect();
    assert_eq!(bad.len(), 1, "exactly the tampered file: {out}");
    assert!(
        bad[0].contains("dir/sub/big.bin") && bad[0].contains(&big.display().to_string()),
        "plain and backing path: {out}"
    );
    assert!(
        bad[0].contains("block 366"),
        "the last block of 1.5 MB at 4 KiB: {out}"
    );
    flip_byte(&big, 10);
    ok(
        run(&v, [OsStr::new("fsck"), v.backing.as_os_str()]),
        "fsck after undoing the tamper",
    );

    // A header without blocks (a crash during a first write, or a cut).
    let victim = data_files(&v)
        .into_iter()
        .find(|p| fs::metadata(p).expect("stat").len() == 1024 + 28 + 3000)
        .expect("backing file of many/f02");
    fs::OpenOptions::new()
        .write(true)
        .open(&victim)
        .expect("open")
        .set_len(1024)
        .expect("cut");
    let (out, _) = fails(
        run(&v, [OsStr::new("fsck"), v.backing.as_os_str()]),
        "fsck of a header-only file",
    );
    assert!(
        out.contains("many/f02") && out.contains("header without blocks"),
        "{out}"
    );
    let out = ok(
        run(
            &v,
            [
                OsStr::new("fsck"),
                v.backing.as_os_str(),
                OsStr::new("--repair-headerless"),
            ],
        ),
        "fsck --repair-headerless",
    );
    assert!(out.contains("REPAIRED many/f02"), "{out}");
    assert_eq!(fs::metadata(&victim).expect("stat").len(), 0, "emptied");
    files.insert("many/f02".into(), Vec::new());
    check_files(&v, &files, &[]);

    // A name that no longer decrypts (moved in from another directory).
    let moved = v.backing.join(victim.file_name().expect("name"));
    assert_ne!(moved, victim, "many/f02 is in a sub directory");
    fs::rename(&victim, &moved).expect("move into the root");
    let (out, _) = fails(
        run(&v, [OsStr::new("fsck"), v.backing.as_os_str()]),
        "fsck of a moved entry",
    );
    assert!(
        out.contains(&moved.display().to_string()) && out.contains("does not decrypt"),
        "{out}"
    );
    fs::rename(&moved, &victim).expect("move back");

    // Without .kmsfs/ contents are still checked, with a warning.
    let meta = v.root().join("meta-away");
    fs::rename(v.backing.join(".kmsfs"), &meta).expect("move .kmsfs away");
    let o = run(&v, [OsStr::new("fsck"), v.backing.as_os_str()]);
    let err = stderr(&o);
    assert!(err.contains(".kmsfs/ is missing"), "warns: {err}");
    assert!(
        o.status.success(),
        "contents are clean: {err} {}",
        stdout(&o)
    );
    fs::rename(&meta, v.backing.join(".kmsfs")).expect("restore .kmsfs");
}

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

/// The manual pages name every subcommand and every long option of `--help`.
#[test]
fn man_page_covers_every_command_and_option() {
    let page = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("man/kmsfs.1"))
        .expect("man/kmsfs.1");
    let page = page.replace('\\', "");
    let help = |args: &[&str]| {
        let o = Command::new(common::mount::KMSFS)
            .args(args)
            .output()
            .expect("help");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let top = help(&["--help"]);
    let commands: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() >= 8, "{top}");
    for c in &commands {
        assert!(
            page.contains(&format!(".Cm {c}")),
            "man/kmsfs.1 lacks the command {c}"
        );
        for word in help(&[c, "--help"]).split_whitespace() {
            let opt = word.trim_end_matches(',');
            if opt.starts_with("--") && opt.len() > 2 && opt != "--help" {
                assert!(
                    page.contains(&format!("Fl -{}", &opt[2..])),
                    "man/kmsfs.1 lacks {opt} of {c}"
                );
            }
        }
    }
    if let Ok(o) = Command::new("mandoc")
        .args(["-T", "lint", "-W", "warning", "man/kmsfs.1", "man/kmsfs.5"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
    {
        assert!(
            o.status.success() && o.stdout.is_empty(),
            "mandoc lint: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
}
