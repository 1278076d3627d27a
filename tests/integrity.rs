//! Integrity through a real mount (issue 6, DESIGN.md §3, docs/FORMAT.md §8).
//!
//! - The tamper matrix: every change to a backing file that docs/FORMAT.md lists as detected is
//!   made to its own victim file; each read of a victim fails with `EIO`, the daemon logs a line
//!   naming the backing file (and the block, where one block is at fault), the mount stays up and
//!   untouched files still read. The matrix runs twice: tampered while unmounted (a fresh mount,
//!   cold key cache) and tampered while mounted.
//! - The documented NOT-detected cases, one test each, showing the behaviour: whole-file rollback,
//!   single-block rollback, whole files swapped between paths, truncation to 0 bytes (and the
//!   harmless one: bytes of the inactive key slot).
//! - fallocate punch hole / zero range make holes the file's hole map grants; a written block
//!   zeroed or punched out of the backing file is still `EIO`.
//! - Backing files that are not kmsfs files read as `EIO` with a clear log line.
//!
//! Vaults use `--plaintext-names` so a test finds the backing file of `NAME` at `vault/NAME`.
// The mount tier: real FUSE mounts, run by `scripts/test` (`--features fuse-tests`).
#![cfg(feature = "fuse-tests")]

mod common;

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::mount::{MountGuard, Rng, Vault, assert_contents, is_mounted};

/// Header size (docs/FORMAT.md §2).
const H: usize = 1024;
/// Block size of the test vaults (the default).
const BS: usize = 4096;
/// Nonce and tag of a stored block.
const OVERHEAD: usize = 28;
/// A stored full block.
const SB: usize = BS + OVERHEAD;
/// Plain size of every victim file: blocks 0–3 full, the final block 4 holds 1000 bytes.
const SIZE: usize = 4 * BS + 1000;
/// Its backing size.
const BACKING_SIZE: usize = H + 4 * SB + OVERHEAD + 1000;
/// First byte of a key slot (slot `s` at 136 + 444·s: 2-byte length, 442 bytes).
const SLOT0: usize = 136;
const SLOT_LEN: usize = 2 + 442;

/// Backing offset of stored block `i`.
fn block_at(i: usize) -> usize {
    H + i * SB
}

/// Backing byte range of full stored block `i`.
fn block(i: usize) -> Range<usize> {
    block_at(i)..block_at(i) + SB
}

/// Backing offset of the active key slot of header `b` (its length field).
fn active_slot(b: &[u8]) -> usize {
    SLOT0 + SLOT_LEN * usize::from(b[128])
}

/// What the daemon must blame for a case.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// The header (or its key): the log line names the file, no block.
    Header,
    /// Block `n`: the log line names the file and `block n`.
    Block(u64),
    /// The end of the file (an invalid backing size): the log line names the file and a block.
    End,
}

/// A tampering: change the victim's backing bytes, given the donor file's backing bytes.
type Tamper = Box<dyn Fn(&mut Vec<u8>, &[u8])>;

/// One row of the tamper matrix.
struct Case {
    name: String,
    fault: Fault,
    tamper: Tamper,
}

impl Case {
    /// The plain (and, with plaintext names, backing) name of this case's victim file.
    fn file(&self) -> String {
        format!("case-{}", self.name)
    }
}

/// Every detected tampering of docs/FORMAT.md §8 as a named case. The victim and the donor are
/// both `SIZE` bytes (5 blocks) of different random content in the same vault.
fn cases() -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    let mut add = |name: String, fault: Fault, tamper: Tamper| {
        cases.push(Case {
            name,
            fault,
            tamper,
        })
    };

    // One flipped byte of a block: nonce, ciphertext, tag, the final (partial) block.
    let block_flips = [
        ("b0-nonce", block_at(0), 0),
        ("b1-ciphertext", block_at(1) + 12 + 2000, 1),
        ("b2-ciphertext-last", block_at(2) + 12 + BS - 1, 2),
        ("b3-tag", block_at(3) + SB - 1, 3),
        ("b4-final-nonce", block_at(4) + 5, 4),
        ("b4-final-ciphertext", block_at(4) + 12 + 500, 4),
        ("b4-final-last-byte", BACKING_SIZE - 1, 4),
    ];
    for (what, at, n) in block_flips {
        add(
            format!("flip-{what}"),
            Fault::Block(n),
            Box::new(move |b, _| b[at] ^= 0x01),
        );
    }

    // One flipped byte of the header: every field of 0..128 (padding 52..112 included), the
    // active-slot byte, the reserved bytes, and the active slot's length, blob and padding.
    let header_flips = [
        ("magic", 0),
        ("magic-last", 7),
        ("version", 8),
        ("header-size", 10),
        ("block-size", 13),
        ("volume-id", 16),
        ("volume-id-last", 31),
        ("file-id", 32),
        ("file-id-last", 47),
        ("provider", 48),
        ("reserved-49", 49),
        ("slot-capacity", 50),
        ("padding-52", 52),
        ("padding-80", 80),
        ("padding-111", 111),
        ("tag-first", 112),
        ("tag-last", 127),
        ("active-slot-byte", 128),
        ("reserved-129", 129),
        ("reserved-135", 135),
    ];
    for (what, at) in header_flips {
        add(
            format!("flip-header-{what}"),
            Fault::Header,
            Box::new(move |b, _| b[at] ^= 0x01),
        );
    }
    // Offsets within the active slot (located from the header's active-slot byte).
    let slot_flips = [
        ("slot-length-low", 0),
        ("slot-length-high", 1),
        ("slot-blob-first", 2),
        ("slot-blob-middle", 2 + 30),
        ("slot-blob-last", 2 + 60), // the local provider's blob is 61 bytes
        ("slot-padding-first", 2 + 61),
        ("slot-padding-last", SLOT_LEN - 1),
    ];
    for (what, rel) in slot_flips {
        add(
            format!("flip-header-{what}"),
            Fault::Header,
            Box::new(move |b, _| {
                let at = active_slot(b) + rel;
                b[at] ^= 0x01;
            }),
        );
    }

    // Blocks reordered within the file, or moved in from another file at the same index.
    add(
        "swap-blocks-1-2".into(),
        Fault::Block(1),
        Box::new(|b, _| {
            let b1 = b[block(1)].to_vec();
            b.copy_within(block(2), block_at(1));
            b[block(2)].copy_from_slice(&b1);
        }),
    );
    add(
        "block-2-from-other-file".into(),
        Fault::Block(2),
        Box::new(|b, d| b[block(2)].copy_from_slice(&d[block(2)])),
    );
    // A header, or only the wrapped-key slots, moved in from another file.
    add(
        "header-from-other-file".into(),
        Fault::Block(0),
        Box::new(|b, d| b[..H].copy_from_slice(&d[..H])),
    );
    add(
        "key-slots-from-other-file".into(),
        Fault::Header,
        Box::new(|b, d| b[128..H].copy_from_slice(&d[128..H])),
    );

    // Truncation at each block boundary (a header without blocks is the boundary of block 0),
    // inside a block, and by one byte.
    for i in 0..=4 {
        add(
            match i {
                0 => "cut-to-header-without-blocks".to_string(),
                _ => format!("cut-at-block-{i}"),
            },
            Fault::End,
            Box::new(move |b, _| b.truncate(block_at(i))),
        );
    }
    add(
        "cut-inside-block-2".into(),
        Fault::Block(2),
        Box::new(|b, _| b.truncate(block_at(2) + 100)),
    );
    add(
        "cut-last-byte".into(),
        Fault::Block(4),
        Box::new(|b, _| b.truncate(BACKING_SIZE - 1)),
    );

    // Stray data appended: copies of block 0 (the size stays valid, the old final block is then
    // read as a full block), a few bytes (the final block is read longer).
    add(
        "append-block-0".into(),
        Fault::Block(4),
        Box::new(|b, _| {
            let b0 = b[block(0)].to_vec();
            b.extend_from_slice(&b0);
        }),
    );
    add(
        "append-two-blocks".into(),
        Fault::Block(4),
        Box::new(|b, _| {
            let b0 = b[block(0)].to_vec();
            let b3 = b[block(3)].to_vec();
            b.extend_from_slice(&b0);
            b.extend_from_slice(&b3);
        }),
    );
    add(
        "append-ten-bytes".into(),
        Fault::Block(4),
        Box::new(|b, _| b.extend_from_slice(&[0u8; 10])),
    );

    // A whole block zeroed: no "all-zero block is a hole" shortcut.
    add(
        "zero-block-1".into(),
        Fault::Block(1),
        Box::new(|b, _| b[block(1)].fill(0)),
    );
    add(
        "zero-final-block".into(),
        Fault::Block(4),
        Box::new(|b, _| b[block_at(4)..].fill(0)),
    );
    cases
}

/// The files of a tamper-matrix vault: the victims' contents, the donor's and the control's.
struct Matrix {
    cases: Vec<Case>,
    contents: Vec<Vec<u8>>,
    control: Vec<u8>,
}

/// Write a victim per case, a donor and a control file of `SIZE` bytes through `m`.
fn write_matrix(m: &MountGuard, rng: &mut Rng) -> Matrix {
    let cases = cases();
    let contents: Vec<Vec<u8>> = cases.iter().map(|_| rng.bytes(SIZE)).collect();
    for (c, data) in cases.iter().zip(&contents) {
        fs::write(m.join(c.file()), data).expect("write victim");
    }
    fs::write(m.join("donor"), rng.bytes(SIZE)).expect("write donor");
    let control = rng.bytes(SIZE);
    fs::write(m.join("control"), &control).expect("write control");
    Matrix {
        cases,
        contents,
        control,
    }
}

/// Apply every case to its victim's backing file, in place (same inode, as an attacker with
/// write access to the backing directory would; also safe while mounted).
fn tamper_all(v: &Vault, cases: &[Case]) {
    let donor = fs::read(v.backing.join("donor")).expect("read donor backing");
    assert_eq!(donor.len(), BACKING_SIZE, "donor backing size");
    for c in cases {
        rewrite_backing(&v.backing.join(c.file()), |b| {
            assert_eq!(
                b.len(),
                BACKING_SIZE,
                "{}: backing size before tampering",
                c.name
            );
            (c.tamper)(b, &donor);
        });
    }
}

/// Change a backing file in place: read it, let `f` change the bytes, write them back over the
/// same inode and cut it to the new length.
fn rewrite_backing(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let before = bytes.clone();
    f(&mut bytes);
    assert_ne!(
        bytes,
        before,
        "{}: tampering changed nothing",
        path.display()
    );
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open backing for writing");
    file.write_all_at(&bytes, 0).expect("write backing");
    file.set_len(bytes.len() as u64).expect("cut backing");
}

/// Read the whole of `path` (open and read), as `cat` would.
fn read_all(path: &Path) -> io::Result<Vec<u8>> {
    fs::read(path)
}

/// Read `len` bytes at `offset` with one pread loop.
fn read_at(path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let f = File::open(path)?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// The log lines naming `backing` (as `PATH: ` or `PATH block N: `), waiting up to 10 s for at
/// least one to appear (the daemon writes its log asynchronously to our reads).
fn log_lines_naming(v: &Vault, backing: &Path) -> Vec<String> {
    let path = backing.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<String> = v
            .log()
            .lines()
            .filter(|l| l.contains(&format!("{path}: ")) || l.contains(&format!("{path} block ")))
            .map(str::to_string)
            .collect();
        if !lines.is_empty() || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Check every case through mount `m`: the whole-file read fails with EIO; the blocks before a
/// faulty block still read; a log line names the backing file and the block. Returns the
/// failures (all of them, not only the first).
fn check_matrix(v: &Vault, m: &MountGuard, mx: &Matrix) -> Vec<String> {
    let mut failures = Vec::new();
    let mut refused = Vec::new();
    for (c, data) in mx.cases.iter().zip(&mx.contents) {
        let p = m.join(c.file());
        let r = read_all(&p);
        refused.push(r.is_err());
        match r {
            Ok(got) => failures.push(format!(
                "{}: read {} bytes without error (expected EIO){}",
                c.name,
                got.len(),
                if got == *data {
                    ", the original content"
                } else {
                    ", NOT the original content"
                }
            )),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {}
            Err(e) => failures.push(format!("{}: expected EIO, got {e}", c.name)),
        }
        // The intact blocks before a damaged one are still served, and correctly.
        if let Fault::Block(n) = c.fault {
            if n > 0 {
                let len = n as usize * BS;
                match read_at(&p, 0, len) {
                    Ok(got) if got == data[..len] => {}
                    Ok(_) => {
                        failures.push(format!("{}: intact blocks 0..{n} read WRONG bytes", c.name))
                    }
                    Err(e) => failures.push(format!("{}: intact blocks 0..{n}: {e}", c.name)),
                }
            }
        }
    }
    // The log line of every refused read (a read that succeeded is already a failure).
    for c in mx
        .cases
        .iter()
        .zip(refused)
        .filter_map(|(c, r)| r.then_some(c))
    {
        let backing = v.backing.join(c.file());
        let path = backing.display().to_string();
        let lines = log_lines_naming(v, &backing);
        let want = match c.fault {
            Fault::Header => None,
            Fault::Block(n) => Some(format!("{path} block {n}: ")),
            Fault::End => Some(format!("{path} block ")),
        };
        match want {
            _ if lines.is_empty() => failures.push(format!("{}: no log line names {path}", c.name)),
            Some(w) if !lines.iter().any(|l| l.contains(&w)) => failures.push(format!(
                "{}: no log line contains {w:?}; lines: {lines:#?}",
                c.name
            )),
            _ => {}
        }
    }
    failures
}

/// The mount is still up, its daemon alive, and the untouched control file reads correctly.
fn assert_mount_healthy(m: &MountGuard, control: &[u8]) {
    assert!(is_mounted(m.path()), "the mount went away");
    let pid = m.daemon_pid().expect("daemon pid recorded");
    assert!(
        common::mount::process_state(pid).is_some_and(|s| s != 'Z' && s != 'X'),
        "daemon {pid} died"
    );
    assert_contents(&m.join("control"), control);
}

/// Whether `kmsfs fsck` exists in this build.
fn have_fsck(v: &Vault) -> bool {
    v.command(["fsck", "--help"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `kmsfs fsck` of the (unmounted) vault: its success and stdout.
fn fsck(v: &Vault) -> (bool, String) {
    let out = v
        .command([OsStr::new("fsck"), v.backing.as_os_str()])
        .output()
        .expect("run kmsfs fsck");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The DAMAGED lines of fsck output naming backing file `backing`.
fn fsck_lines<'a>(out: &'a str, backing: &Path) -> Vec<&'a str> {
    let want = format!("(backing {})", backing.display());
    out.lines()
        .filter(|l| l.starts_with("DAMAGED") && l.contains(&want))
        .collect()
}

#[test]
fn tamper_matrix_offline_every_case_reads_eio_and_is_logged() {
    let v = Vault::new();
    v.init(&["--plaintext-names"]);
    let mut rng = Rng::from_env("tamper matrix (offline)");
    let m = v.mount(&[]);
    let mx = write_matrix(&m, &mut rng);
    m.unmount();

    tamper_all(&v, &mx.cases);
    let m = v.mount(&[]);
    let failures = check_matrix(&v, &m, &mx);
    assert_mount_healthy(&m, &mx.control);
    m.unmount();
    assert!(
        failures.is_empty(),
        "{} of {} tamper cases failed:\n{}",
        failures.len(),
        mx.cases.len(),
        failures.join("\n")
    );
    println!(
        "{} tamper cases: each read EIO, logged with file (and block)",
        mx.cases.len()
    );

    // fsck (when this build has it) reports every victim and nothing else.
    if have_fsck(&v) {
        let (ok, out) = fsck(&v);
        assert!(!ok, "fsck succeeded on a tampered vault:\n{out}");
        let mut missed = Vec::new();
        for c in &mx.cases {
            let lines = fsck_lines(&out, &v.backing.join(c.file()));
            let want = match c.fault {
                Fault::Block(n) => Some(format!("block {n}: ")),
                _ => None,
            };
            if lines.is_empty() || want.is_some_and(|w| !lines.iter().any(|l| l.contains(&w))) {
                missed.push(format!("{} ({:?}): {lines:?}", c.name, c.fault));
            }
        }
        for intact in ["control", "donor"] {
            assert!(
                fsck_lines(&out, &v.backing.join(intact)).is_empty(),
                "fsck blames intact {intact}:\n{out}"
            );
        }
        assert!(
            missed.is_empty(),
            "fsck did not report as expected:\n{}\n--- fsck output ---\n{out}",
            missed.join("\n")
        );
    } else {
        println!("kmsfs fsck not in this build: fsck cross-check skipped");
    }
}

/// The same matrix, tampered while the vault is mounted (after the victims were closed).
///
/// Mounted with `--key-ttl 0`: with a warm key cache a key is looked up by file id, so a changed
/// wrapped-key slot (same file id) goes unnoticed until the key is next unwrapped (after the
/// TTL) — the cached key is the right one for the header, so this never yields wrong
/// plaintext, only later detection. `--key-ttl 0` drops keys when a file's last handle closes,
/// so every slot case must read EIO here as in the offline matrix; a slot case that reads its
/// original content here means that file's key outlived its last close.
#[test]
fn tamper_matrix_while_mounted_every_case_reads_eio_and_is_logged() {
    let v = Vault::new();
    v.init(&["--plaintext-names"]);
    let mut rng = Rng::from_env("tamper matrix (mounted)");
    let m = v.mount(&["--key-ttl", "0"]);
    let mx = write_matrix(&m, &mut rng);
    // Let the kernel deliver the (asynchronous) releases of the files just written.
    std::thread::sleep(Duration::from_millis(500));
    tamper_all(&v, &mx.cases);
    // Cached attributes (sizes) expire after the mount's 1 s TTL.
    std::thread::sleep(Duration::from_millis(1100));
    let failures = check_matrix(&v, &m, &mx);
    assert_mount_healthy(&m, &mx.control);
    m.unmount();
    assert!(
        failures.is_empty(),
        "{} of {} tamper cases failed:\n{}",
        failures.len(),
        mx.cases.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// NOT detected, by design (docs/FORMAT.md §8): each test shows the behaviour.

/// A vault with `files` written through a mount (then unmounted).
fn vault_with(files: &[(&str, &[u8])]) -> Vault {
    let v = Vault::new();
    v.init(&["--plaintext-names"]);
    let m = v.mount(&[]);
    for (name, data) in files {
        fs::write(m.join(name), data).expect("write");
    }
    m.unmount();
    v
}

/// Assert that the daemon logged no integrity error.
fn assert_no_integrity_errors(v: &Vault) {
    let log = v.log();
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("integrity error"))
        .collect();
    assert!(
        bad.is_empty(),
        "unexpected integrity errors:\n{}",
        bad.join("\n")
    );
}

#[test]
fn not_detected_whole_file_rollback_reads_the_old_content() {
    let mut rng = Rng::from_env("whole-file rollback");
    let (old, new) = (rng.bytes(SIZE), rng.bytes(SIZE + 3 * BS));
    let v = vault_with(&[("f", &old)]);
    let backing = v.backing.join("f");
    let saved = fs::read(&backing).expect("save backing");

    // Change the file through the mount (overwrite and grow), then put the old bytes back.
    let m = v.mount(&[]);
    fs::write(m.join("f"), &new).expect("rewrite");
    assert_contents(&m.join("f"), &new);
    m.unmount();
    rewrite_backing(&backing, |b| *b = saved.clone());

    // NOT detected: the old version reads back without error (no per-file version counter).
    let m = v.mount(&[]);
    assert_contents(&m.join("f"), &old);
    m.unmount();
    assert_no_integrity_errors(&v);
}

#[test]
fn not_detected_single_block_rollback_mixes_old_and_new_blocks() {
    let mut rng = Rng::from_env("single-block rollback");
    let old = rng.bytes(SIZE);
    let v = vault_with(&[("f", &old)]);
    let backing = v.backing.join("f");
    let saved = fs::read(&backing).expect("save backing");

    // Rewrite blocks 1 and 2 through the mount (aligned, so only they are re-sealed).
    let fresh = rng.bytes(2 * BS);
    let m = v.mount(&[]);
    let f = OpenOptions::new()
        .write(true)
        .open(m.join("f"))
        .expect("open");
    f.write_all_at(&fresh, BS as u64)
        .expect("overwrite blocks 1-2");
    drop(f);
    m.unmount();
    // Roll back block 2 only.
    rewrite_backing(&backing, |b| b[block(2)].copy_from_slice(&saved[block(2)]));

    // NOT detected: block 1 is new, block 2 is old — a mix that never existed — and no error.
    let mut want = old.clone();
    want[BS..2 * BS].copy_from_slice(&fresh[..BS]);
    let m = v.mount(&[]);
    assert_contents(&m.join("f"), &want);
    m.unmount();
    assert_no_integrity_errors(&v);
}

#[test]
fn not_detected_whole_files_swapped_between_paths() {
    let mut rng = Rng::from_env("swap whole files");
    let (a, b) = (rng.bytes(SIZE), rng.bytes(2 * BS + 17));
    let v = vault_with(&[("a", &a), ("b", &b)]);
    let (pa, pb, tmp) = (
        v.backing.join("a"),
        v.backing.join("b"),
        v.backing.join("swap.tmp"),
    );
    fs::rename(&pa, &tmp).expect("rename");
    fs::rename(&pb, &pa).expect("rename");
    fs::rename(&tmp, &pb).expect("rename");

    // NOT detected: each path reads the other's content (the header binds no path or name).
    let m = v.mount(&[]);
    assert_contents(&m.join("a"), &b);
    assert_contents(&m.join("b"), &a);
    m.unmount();
    assert_no_integrity_errors(&v);
}

#[test]
fn not_detected_truncation_to_zero_bytes_reads_as_an_empty_file() {
    let mut rng = Rng::from_env("truncate to 0");
    let v = vault_with(&[("f", &rng.bytes(SIZE))]);
    File::options()
        .write(true)
        .open(v.backing.join("f"))
        .expect("open")
        .set_len(0)
        .expect("cut to 0");

    // NOT detected: a 0-byte backing file is a valid empty file.
    let m = v.mount(&[]);
    assert_eq!(fs::metadata(m.join("f")).expect("stat").len(), 0);
    assert_eq!(read_all(&m.join("f")).expect("read"), b"");
    m.unmount();
    assert_no_integrity_errors(&v);
}

#[test]
fn harmless_inactive_key_slot_bytes_are_ignored() {
    let mut rng = Rng::from_env("inactive slot");
    let data = rng.bytes(SIZE);
    let v = vault_with(&[("f", &data)]);
    // The inactive slot is never used (rewrap writes it, then flips the active-slot byte):
    // changing its length, blob or padding changes nothing.
    rewrite_backing(&v.backing.join("f"), |b| {
        let inactive = SLOT0 + SLOT_LEN * usize::from(1 - b[128]);
        b[inactive] ^= 0x3d;
        b[inactive + 2..inactive + 40].fill(0xa5);
        b[inactive + SLOT_LEN - 1] = 0xff;
    });
    let m = v.mount(&[]);
    assert_contents(&m.join("f"), &data);
    m.unmount();
    assert_no_integrity_errors(&v);
}

// ---------------------------------------------------------------------------------------------
// fallocate: punched and zeroed whole blocks become granted holes; written blocks stay
// authenticated.

/// fallocate(2) on `f`.
fn fallocate(f: &File, mode: libc::c_int, offset: usize, len: usize) {
    // SAFETY: a valid open fd.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, len as i64) };
    assert_eq!(
        rc,
        0,
        "fallocate mode {mode:#x} {offset}+{len}: {}",
        io::Error::last_os_error()
    );
}

#[test]
fn punch_hole_and_zero_range_make_holes_but_a_punched_written_block_is_eio() {
    let v = Vault::new();
    v.init(&["--plaintext-names"]);
    let mut rng = Rng::from_env("punch hole");
    let mut want = rng.bytes(SIZE);
    let m = v.mount(&[]);
    let p = m.join("f");
    fs::write(&p, &want).expect("write");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .expect("open");

    // Block 1 punched whole, part of block 2 punched, block 3 zeroed whole: size kept.
    fallocate(
        &f,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        BS,
        BS,
    );
    fallocate(
        &f,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        2 * BS + 100,
        1000,
    );
    fallocate(
        &f,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        3 * BS,
        BS,
    );
    want[BS..2 * BS].fill(0);
    want[2 * BS + 100..2 * BS + 1100].fill(0);
    want[3 * BS..4 * BS].fill(0);
    drop(f);
    assert_eq!(
        fs::metadata(&p).expect("stat").len(),
        SIZE as u64,
        "size kept"
    );
    assert_contents(&p, &want);

    // Whole blocks punched or zeroed are holes (nothing stored); the partly punched block is
    // re-sealed; the backing file keeps its size.
    let backing = fs::read(v.backing.join("f")).expect("read backing");
    assert_eq!(backing.len(), BACKING_SIZE);
    for i in [1, 3] {
        assert!(
            backing[block(i)].iter().all(|&x| x == 0),
            "block {i} is a hole"
        );
    }
    let zeros = backing[block(2)].iter().filter(|&&x| x == 0).count();
    assert!(zeros < SB / 16, "block 2 is encrypted ({zeros} zero bytes)");
    m.unmount();

    // Still there after a remount.
    let m = v.mount(&[]);
    assert_contents(&m.join("f"), &want);
    // A written block zeroed, or punched out of the backing file, is not a hole: EIO naming it.
    rewrite_backing(&v.backing.join("f"), |b| b[block(2)].fill(0));
    let backing = OpenOptions::new()
        .write(true)
        .open(v.backing.join("f"))
        .expect("open backing");
    fallocate(
        &backing,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        block_at(0),
        SB,
    );
    let path = v.backing.join("f").display().to_string();
    for (b, at) in [(2, 2 * BS), (0, 0)] {
        let err = read_at(&m.join("f"), at as u64, 10).expect_err("a removed block must not read");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "block {b}: {err}");
        let lines = log_lines_naming(&v, &v.backing.join("f"));
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("{path} block {b}: "))),
            "log lines: {lines:#?}"
        );
    }
    // The holes still read as zeros.
    assert!(
        read_at(&m.join("f"), BS as u64, BS)
            .expect("hole")
            .iter()
            .all(|&x| x == 0)
    );
    assert!(is_mounted(m.path()));
    m.unmount();
}

// ---------------------------------------------------------------------------------------------
// Backing files that are not kmsfs files.

#[test]
fn foreign_backing_files_read_as_eio_with_a_clear_log_line() {
    let v = Vault::new();
    v.init(&["--plaintext-names"]);
    let control = Rng::from_env("foreign files").bytes(SIZE);
    let m = v.mount(&[]);
    fs::write(m.join("control"), &control).expect("write control");
    m.unmount();
    // A plain text file of a valid kmsfs size (wrong magic), a 3-byte file, a header-sized
    // run of zeros and a file of the vault's magic alone.
    let foreign: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "text.txt",
            b"just some plain text, not encrypted\n".repeat(60),
            "header",
        ),
        ("three-bytes", b"abc".to_vec(), "not a kmsfs file"),
        ("zeros", vec![0u8; H + OVERHEAD + 100], "header"),
        ("magic-only", b"KMSFSENC".to_vec(), "truncated"),
    ];
    for (name, bytes, _) in &foreign {
        fs::write(v.backing.join(name), bytes).expect("write foreign backing file");
    }
    let m = v.mount(&[]);
    let mut failures = Vec::new();
    for (name, bytes, why) in &foreign {
        match read_all(&m.join(name)) {
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {}
            other => failures.push(format!(
                "{name} ({} backing bytes): expected EIO, got {other:?}",
                bytes.len()
            )),
        }
        let lines = log_lines_naming(&v, &v.backing.join(name));
        if !lines.iter().any(|l| l.contains(why)) {
            failures.push(format!(
                "{name}: no log line naming it says {why:?}: {lines:#?}"
            ));
        }
    }
    assert_mount_healthy(&m, &control);
    m.unmount();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
