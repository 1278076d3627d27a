//! What the operations and rewrap tests share: sample files, running the binary, reading
//! headers and the host's records.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use super::mount::{Rng, Vault, assert_contents, stderr};
use kmsfs::crypto::verify_header;
use kmsfs::format::Id;
use kmsfs::format::header::{FileHeader, HEADER_SIZE};
use kmsfs::keys::{EncryptionContext, KeyProvider};
use kmsfs::vault::VaultConfig;

/// Plain relative path → contents.
pub type Files = BTreeMap<String, Vec<u8>>;

/// A mixed set of files: sizes around block boundaries, nested directories, a long name that
/// needs a sidecar, an empty file.
pub fn sample_files(rng: &mut Rng) -> Files {
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
pub fn write_files(v: &Vault, files: &Files, extra: &[&str]) {
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
pub fn check_files(v: &Vault, files: &Files, extra: &[&str]) {
    let m = v.mount(extra);
    for (rel, data) in files {
        assert_contents(&m.join(rel), data);
    }
    m.unmount();
}

/// Run a `kmsfs` command of `v` to completion.
pub fn run<I, S>(v: &Vault, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    v.command(args).output().expect("run kmsfs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Assert success and return stdout.
pub fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed: {}\nstdout: {}",
        stderr(&o),
        stdout(&o)
    );
    stdout(&o)
}

/// Assert a failure exit status (1 to 5, kmsfs.1 EXIT STATUS) with a one-line error and
/// return (stdout, stderr).
pub fn fails(o: Output, what: &str) -> (String, String) {
    assert!(
        o.status.code().is_some_and(|c| (1..=5).contains(&c)),
        "{what} should fail (exit {:?}): stdout {}",
        o.status.code(),
        stdout(&o)
    );
    let err = stderr(&o);
    assert!(err.starts_with("kmsfs: "), "{what}: {err}");
    (stdout(&o), err)
}

pub fn config(v: &Vault) -> VaultConfig {
    VaultConfig::load(&v.backing).expect("vault config")
}

pub fn volume_id(v: &Vault) -> Id {
    config(v).volume_id_bytes().expect("volume id")
}

/// This vault's host-side trust record, as text.
pub fn trust_record(v: &Vault) -> String {
    let p = v
        .root()
        .join("config/kmsfs/vaults")
        .join(format!("{}.json", config(v).volume_id));
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The backing files of plain regular files (long-name sidecars left out).
pub fn data_files(v: &Vault) -> Vec<PathBuf> {
    v.backing_files()
        .into_iter()
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| kmsfs::names::cipher::is_sidecar(n.as_encoded_bytes()))
        })
        .collect()
}

/// The decoded header of a backing file (`None` for an empty file).
pub fn header(p: &Path) -> Option<FileHeader> {
    let f = fs::File::open(p).expect("open backing file");
    if f.metadata().expect("stat").len() == 0 {
        return None;
    }
    let mut b = vec![0u8; HEADER_SIZE];
    f.read_exact_at(&mut b, 0).expect("read header");
    Some(FileHeader::decode(&b).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

/// Whether the active slot of `h` opens under `key` and the header tag verifies.
pub fn opens_under(key: &dyn KeyProvider, vol: &Id, h: &FileHeader) -> bool {
    key.decrypt(
        h.wrapped_key(),
        &EncryptionContext::for_file(vol, &h.file_id),
    )
    .is_ok_and(|k| verify_header(&k, h).is_ok())
}

/// Every non-empty backing file with its header.
pub fn headers(v: &Vault) -> Vec<(PathBuf, FileHeader)> {
    data_files(v)
        .into_iter()
        .filter_map(|p| header(&p).map(|h| (p, h)))
        .collect()
}

/// Bytes after the header of every backing file (the encrypted data rewrap must not touch).
pub fn bodies(v: &Vault) -> BTreeMap<PathBuf, Vec<u8>> {
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
pub fn largest_backing(v: &Vault) -> PathBuf {
    data_files(v)
        .into_iter()
        .max_by_key(|p| fs::metadata(p).expect("stat").len())
        .expect("a backing file")
}

pub fn flip_byte(p: &Path, from_end: u64) {
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
