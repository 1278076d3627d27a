//! Crash safety and concurrency through a real mount (issue 6).
//!
//! # What a crash of the daemon can and cannot lose
//!
//! kmsfs has no write-back buffer: every FUSE write is sealed and `pwrite`n to the backing file
//! before it is acknowledged, and the mount enables no kernel write-back cache. So:
//!
//! - **`kill -9` of the daemon** (the host keeps running): every acknowledged write is already
//!   in the backing file system and survives, fsynced or not. Only the write in flight at the
//!   kill is uncertain: it may be absent, complete, or torn (the kernel stops a `pwrite` at a page
//!   boundary on a fatal signal). A torn block does not authenticate and reads as `EIO` naming
//!   the block, never as other bytes.
//! - **Power loss / host crash**: fsynced data is on disk; writes after the last fsync may be
//!   absent, complete or torn (per the backing file system), each torn block again `EIO`.
//! - **What a torn write can take with it.** Blocks are rewritten in place (no journal). A write
//!   re-seals every block it touches, and an append re-seals the old final block (which holds
//!   0 … bs−1 bytes). A tear inside such a block makes the whole block unreadable — including
//!   its older bytes, fsynced or not. So a crash mid-append can make the last `size mod bs`
//!   bytes written before it (up to bs−1 = 4095 bytes, possibly fsynced) read as `EIO`; a crash
//!   mid-overwrite can do the same to the blocks it overwrites. Full blocks that the in-flight
//!   write does not touch are never at risk, and nothing is ever returned that was not written
//!   at that offset of that file. `torn_append_is_reported_never_silently_wrong` shows both
//!   outcomes; `kmsfs fsck` lists the damaged files.
//! - Like ext4's `data=ordered`, metadata (names, renames, sizes) follows the backing file
//!   system's own rules.

mod common;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::mount::{MountGuard, Rng, Vault, assert_contents, is_mounted, process_state};
use sha2::{Digest, Sha256};

const BS: u64 = 4096;
const H: u64 = 1024;
const SB: u64 = BS + 28;

/// The splitmix64 finalizer: a well-mixed 64-bit hash of `z`.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `len` bytes at offset `off` of generation `g` of the deterministic content of file `seed`:
/// byte `o` depends only on (seed, g, o), so any written range can be checked later.
fn pattern(seed: u64, g: u64, off: u64, len: usize) -> Vec<u8> {
    (off..off + len as u64)
        .map(|o| {
            (mix(seed ^ g.wrapping_mul(0x5851_f42d_4c95_7f2d) ^ mix(o >> 3)) >> ((o & 7) * 8)) as u8
        })
        .collect()
}

/// A hex SHA-256 (for messages).
fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Kill the daemon of `m` with SIGKILL and wait until it is gone (or a zombie).
fn kill_daemon(m: &MountGuard) -> u32 {
    let pid = m.daemon_pid().expect("daemon pid recorded");
    // SAFETY: plain kill(2).
    assert_eq!(
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) },
        0,
        "kill -9 {pid}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_state(pid).is_some_and(|s| s != 'Z' && s != 'X') {
        assert!(Instant::now() < deadline, "daemon {pid} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(5));
    }
    pid
}

/// One aligned chunk of a file read after a crash: its bytes, or the errno of its failure.
type Chunk = Result<Vec<u8>, i32>;

/// Read `path` in aligned `BS` chunks: its size and the chunks.
fn read_chunks(path: &Path) -> io::Result<(u64, Vec<Chunk>)> {
    let f = File::open(path)?;
    let size = f.metadata()?.len();
    let mut out = Vec::new();
    let mut at = 0;
    while at < size {
        let len = BS.min(size - at) as usize;
        let mut buf = vec![0u8; len];
        out.push(match f.read_exact_at(&mut buf, at) {
            Ok(()) => Ok(buf),
            Err(e) => Err(e.raw_os_error().unwrap_or(-1)),
        });
        at += len as u64;
    }
    Ok((size, out))
}

// ---------------------------------------------------------------------------------------------
// kill -9 during concurrent writes.

/// The write a writer had started when it failed (the one in flight at the kill).
#[derive(Debug, Clone, Copy)]
enum InFlight {
    /// Appending at `at` to the log file.
    LogAppend { at: u64 },
    /// Writing `off .. off + len` of the rw file whose size was `size`.
    RwWrite { off: u64, len: u64, size: u64 },
    /// An fsync (changes no byte).
    Sync,
}

/// What one crash writer did: its files, what was acknowledged and fsynced.
#[derive(Debug, Default)]
struct WriterReport {
    log_name: String,
    log_seed: u64,
    /// Bytes of the log file acknowledged (every append returned).
    log_acked: u64,
    /// (fsynced length, SHA-256 of the first fsynced-length bytes), after each fsync.
    fsynced: Vec<(u64, [u8; 32])>,
    rw_name: String,
    rw_seed: u64,
    /// Acknowledged size of the rw file.
    rw_acked: u64,
    /// Generations written to the rw file (byte o is pattern(rw_seed, g, o) for one of them).
    rw_gens: u64,
    ops: u64,
    /// The error that stopped the writer, and whether the daemon had been killed by then.
    error: Option<(io::Error, bool)>,
    in_flight: Option<InFlight>,
}

/// A writer: appends to its log file (fsync after every 4th append, recorded), appends to and
/// overwrites its rw file with generation-tagged patterns, until an error or `stop`.
fn crash_writer(
    dir: &Path,
    t: usize,
    seed: u64,
    stop: &AtomicBool,
    killed: &AtomicBool,
    fsyncs: &AtomicU64,
) -> WriterReport {
    const GENS: u64 = 4;
    let mut rng = Rng::new(seed);
    let mut r = WriterReport {
        log_name: format!("log-{t}"),
        log_seed: rng.next_u64(),
        rw_name: format!("rw-{t}"),
        rw_seed: rng.next_u64(),
        rw_gens: GENS,
        ..Default::default()
    };
    let open = |name: &str| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.join(name))
    };
    let (log, rw) = match (open(&r.log_name), open(&r.rw_name)) {
        (Ok(l), Ok(w)) => (l, w),
        (Err(e), _) | (_, Err(e)) => {
            r.error = Some((e, killed.load(Ordering::SeqCst)));
            return r;
        }
    };
    let mut log_hash = Sha256::new();
    let mut appends = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let op = rng.below(10);
        let result = if op < 4 {
            let len = 1 + rng.below(12_000);
            let data = pattern(r.log_seed, 0, r.log_acked, len as usize);
            r.in_flight = Some(InFlight::LogAppend { at: r.log_acked });
            log.write_all_at(&data, r.log_acked)
                .map(|()| {
                    log_hash.update(&data);
                    r.log_acked += len;
                    appends += 1;
                })
                .and_then(|()| {
                    if appends % 4 != 0 {
                        return Ok(());
                    }
                    r.in_flight = Some(InFlight::Sync);
                    let synced = if appends % 8 == 0 {
                        log.sync_all()
                    } else {
                        log.sync_data()
                    };
                    synced.map(|()| {
                        r.fsynced
                            .push((r.log_acked, log_hash.clone().finalize().into()));
                        fsyncs.fetch_add(1, Ordering::SeqCst);
                    })
                })
        } else {
            // Appends (op 4..7) and overwrites inside the current size (op 7..10).
            let g = rng.below(GENS);
            let (off, len) = if op < 7 || r.rw_acked == 0 {
                (r.rw_acked, 1 + rng.below(16_000))
            } else {
                let off = rng.below(r.rw_acked);
                (off, (1 + rng.below(16_000)).min(r.rw_acked - off))
            };
            let data = pattern(r.rw_seed, g, off, len as usize);
            r.in_flight = Some(InFlight::RwWrite {
                off,
                len,
                size: r.rw_acked,
            });
            rw.write_all_at(&data, off)
                .map(|()| r.rw_acked = r.rw_acked.max(off + len))
                .and_then(|()| {
                    if rng.below(20) == 0 {
                        r.in_flight = Some(InFlight::Sync);
                        rw.sync_data()
                    } else {
                        Ok(())
                    }
                })
        };
        match result {
            Ok(()) => {
                r.in_flight = None;
                r.ops += 1;
            }
            Err(e) => {
                r.error = Some((e, killed.load(Ordering::SeqCst)));
                break;
            }
        }
    }
    r
}

/// Whether the first block that `w` may have torn is at or before block `b` (plain block
/// index) of the file it wrote: blocks from there on may read as EIO after the crash.
fn may_be_torn(w: Option<InFlight>, log: bool, b: u64) -> bool {
    match (w, log) {
        // An append re-seals the old final block, then writes new ones.
        (Some(InFlight::LogAppend { at }), true) => b >= at / BS,
        (Some(InFlight::RwWrite { off, len, size }), false) => {
            let first = off.min(size) / BS;
            let last = if off + len > size {
                u64::MAX
            } else {
                (off + len - 1) / BS
            };
            (first..=last).contains(&b)
        }
        _ => false,
    }
}

#[test]
fn kill_9_during_concurrent_writes_keeps_closed_and_fsynced_data() {
    const WRITERS: usize = 6;
    let v = Vault::new();
    v.init(&["--plaintext-names"]);
    let mut rng = Rng::from_env("kill -9 during writes");
    let m = v.mount(&[]);

    // Files written and closed before the writers start (some fsynced, some not).
    let stable: Vec<(String, Vec<u8>)> =
        [0usize, 1, 4095, 4096, 4097, 3 * 4096 + 5, 100_000, 1 << 20]
            .iter()
            .enumerate()
            .map(|(i, &n)| (format!("stable-{i}"), rng.bytes(n)))
            .collect();
    for (i, (name, data)) in stable.iter().enumerate() {
        let mut f = File::create(m.join(name)).expect("create stable file");
        io::Write::write_all(&mut f, data).expect("write stable file");
        if i % 2 == 0 {
            f.sync_all().expect("fsync stable file");
        }
    }

    let stop = AtomicBool::new(false);
    let killed = AtomicBool::new(false);
    let fsyncs = AtomicU64::new(0);
    let kill_after = Duration::from_millis(300 + rng.below(900));
    let seeds: Vec<u64> = (0..WRITERS).map(|_| rng.next_u64()).collect();
    let mnt = m.path().to_path_buf();
    let (reports, pid, ran) = std::thread::scope(|s| {
        let handles: Vec<_> = seeds
            .iter()
            .enumerate()
            .map(|(t, &seed)| {
                let (mnt, stop, killed, fsyncs) = (&mnt, &stop, &killed, &fsyncs);
                s.spawn(move || crash_writer(mnt, t, seed, stop, killed, fsyncs))
            })
            .collect();
        // Kill once every writer has had a chance to fsync, at a random moment after.
        let start = Instant::now();
        while fsyncs.load(Ordering::SeqCst) < 2 * WRITERS as u64
            && start.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(kill_after);
        killed.store(true, Ordering::SeqCst);
        let pid = kill_daemon(&m);
        let ran = start.elapsed();
        // The writers now get ENOTCONN; anything still looping stops here.
        stop.store(true, Ordering::SeqCst);
        let reports: Vec<WriterReport> = handles
            .into_iter()
            .map(|h| h.join().expect("writer panicked"))
            .collect();
        (reports, pid, ran)
    });
    let total_ops: u64 = reports.iter().map(|r| r.ops).sum();
    println!(
        "killed daemon {pid} after {ran:?} ({kill_after:?} after the first fsyncs): {total_ops} writes, {} fsyncs",
        fsyncs.load(Ordering::SeqCst)
    );
    for r in &reports {
        if let Some((e, after_kill)) = &r.error {
            assert!(
                after_kill,
                "{}: writer failed BEFORE the kill: {e}",
                r.log_name
            );
            println!(
                "  {} / {}: stopped by {e} (in flight: {:?})",
                r.log_name, r.rw_name, r.in_flight
            );
        }
    }

    // Clean up the dead mount (the guard runs `kmsfs unmount`, falling back to fusermount3 -uz
    // and umount -l), then mount again.
    let t = Instant::now();
    drop(m);
    assert!(!is_mounted(&v.mnt), "the dead mount is still there");
    println!("dead mount cleaned up in {:?}", t.elapsed());
    let m = v.mount(&[]);

    let mut failures = Vec::new();
    let mut torn = Vec::new();
    // Files not being written: intact.
    for (name, data) in &stable {
        match fs::read(m.join(name)) {
            Ok(got) if got == *data => {}
            Ok(got) => failures.push(format!(
                "{name}: closed before the writers, now {} bytes that differ",
                got.len()
            )),
            Err(e) => failures.push(format!(
                "{name}: closed before the writers, now unreadable: {e}"
            )),
        }
    }
    // Whole-file reads (as `cat` does, with the kernel's readahead) of the files being written:
    // either the bytes that per-block reads below vouch for, or EIO.
    for r in &reports {
        for name in [&r.log_name, &r.rw_name] {
            let (_, chunks) = read_chunks(&m.join(name)).expect("open");
            match fs::read(m.join(name)) {
                Ok(got) => {
                    let by_block: Option<Vec<u8>> = chunks
                        .iter()
                        .map(|c| c.as_ref().ok().cloned())
                        .collect::<Option<Vec<_>>>()
                        .map(|v| v.concat());
                    if by_block.as_ref() != Some(&got) {
                        failures.push(format!("{name}: a whole-file read returned {} bytes that block reads do not vouch for", got.len()));
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {}
                Err(e) => failures.push(format!(
                    "{name}: whole-file read: {e} (expected success or EIO)"
                )),
            }
        }
    }
    for r in &reports {
        // The log file: append-only, so every readable byte equals the pattern; blocks before
        // the in-flight append read; the fsynced prefix is intact.
        let path = m.join(&r.log_name);
        let (size, chunks) = read_chunks(&path).expect("open log file after the crash");
        if size < r.log_acked.saturating_sub(BS) {
            failures.push(format!(
                "{}: size {size} < acknowledged {}",
                r.log_name, r.log_acked
            ));
        }
        for (b, chunk) in chunks.iter().enumerate() {
            let b = b as u64;
            match chunk {
                Ok(got) if *got == pattern(r.log_seed, 0, b * BS, got.len()) => {}
                Ok(_) => failures.push(format!(
                    "{}: block {b} reads bytes that were never written there",
                    r.log_name
                )),
                Err(libc::EIO) if may_be_torn(r.in_flight, true, b) => {
                    torn.push(format!("{} block {b}", r.log_name))
                }
                Err(e) => failures.push(format!(
                    "{}: block {b}: errno {e} (in flight: {:?})",
                    r.log_name, r.in_flight
                )),
            }
        }
        if let Some(&(len, hash)) = r.fsynced.last() {
            let mut got = vec![0u8; len as usize];
            match File::open(&path).and_then(|f| f.read_exact_at(&mut got, 0)) {
                Ok(()) if sha(&got) == hash => {}
                Ok(()) => failures.push(format!(
                    "{}: fsynced prefix of {len} bytes differs",
                    r.log_name
                )),
                // Only the old final block, re-sealed by the append in flight, may be lost
                // (module comment); the per-block loop above has checked which block failed.
                Err(e)
                    if e.raw_os_error() == Some(libc::EIO)
                        && may_be_torn(r.in_flight, true, (len - 1) / BS) =>
                {
                    println!(
                        "NOTE {}: the fsynced tail in block {} was lost to a torn append (EIO)",
                        r.log_name,
                        (len - 1) / BS
                    )
                }
                Err(e) => failures.push(format!(
                    "{}: fsynced prefix of {len} bytes: {e}",
                    r.log_name
                )),
            }
        }
        // The rw file: every readable byte is one of the generations written at that offset.
        let (size, chunks) =
            read_chunks(&m.join(&r.rw_name)).expect("open rw file after the crash");
        if size < r.rw_acked.saturating_sub(BS) {
            failures.push(format!(
                "{}: size {size} < acknowledged {}",
                r.rw_name, r.rw_acked
            ));
        }
        for (b, chunk) in chunks.iter().enumerate() {
            let b = b as u64;
            match chunk {
                Ok(got) => {
                    let gens: Vec<Vec<u8>> = (0..r.rw_gens)
                        .map(|g| pattern(r.rw_seed, g, b * BS, got.len()))
                        .collect();
                    if let Some(i) = (0..got.len()).find(|&i| !gens.iter().any(|g| g[i] == got[i]))
                    {
                        failures.push(format!(
                            "{}: byte {} was never written there",
                            r.rw_name,
                            b * BS + i as u64
                        ));
                    }
                }
                Err(libc::EIO) if may_be_torn(r.in_flight, false, b) => {
                    torn.push(format!("{} block {b}", r.rw_name))
                }
                Err(e) => failures.push(format!(
                    "{}: block {b}: errno {e} (in flight: {:?})",
                    r.rw_name, r.in_flight
                )),
            }
        }
    }
    // A torn block is logged naming the backing file and the block.
    for t in &torn {
        let (name, block) = t.split_once(" block ").expect("name block n");
        let want = format!("{} block {block}", v.backing.join(name).display());
        if !v.log().lines().any(|l| l.contains(&want)) {
            failures.push(format!("torn {t}: no log line contains {want:?}"));
        }
    }
    println!("torn blocks (EIO, allowed only where a write was in flight): {torn:?}");
    m.unmount();

    // fsck agrees: it names the files that had torn blocks and no other.
    if v.command(["fsck", "--help"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let out = v
            .command([OsStr::new("fsck"), v.backing.as_os_str()])
            .output()
            .expect("run fsck");
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("fsck: {}", stdout.lines().last().unwrap_or(""));
        let torn_files: Vec<&str> = torn
            .iter()
            .map(|t| t.split_once(" block ").expect("name").0)
            .collect();
        for r in &reports {
            for name in [&r.log_name, &r.rw_name] {
                let blamed = stdout.lines().any(|l| {
                    l.starts_with("DAMAGED")
                        && l.contains(&format!("(backing {})", v.backing.join(name).display()))
                });
                if blamed != torn_files.contains(&name.as_str()) {
                    failures.push(format!(
                        "fsck {} {name}, reads disagree:\n{stdout}",
                        if blamed { "blames" } else { "passes" }
                    ));
                }
            }
        }
        assert_eq!(
            out.status.success(),
            torn.is_empty(),
            "fsck exit status:\n{stdout}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} failures after kill -9:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A torn append (the state a crash mid-`pwrite` leaves) is reported as EIO naming the torn
/// block — never as wrong bytes — and shows what it can cost: torn inside the old final block,
/// the fsynced bytes of that block are lost (EIO) while all full blocks before it read; torn
/// later, the fsynced prefix is whole and only the new blocks are lost.
#[test]
fn torn_append_is_reported_never_silently_wrong() {
    let v = Vault::new();
    v.init(&["--plaintext-names"]);
    let mut rng = Rng::from_env("torn append");
    let first = rng.bytes(2 * BS as usize + 1000); // blocks 0, 1 full; final block 2: 1000 bytes
    let more = rng.bytes(3 * BS as usize);
    let m = v.mount(&[]);
    let p = m.join("f");
    let f = File::create(&p).expect("create");
    f.write_all_at(&first, 0).expect("write");
    f.sync_all().expect("fsync");
    let before = fs::read(v.backing.join("f")).expect("backing before");
    f.write_all_at(&more, first.len() as u64).expect("append");
    f.sync_all().expect("fsync");
    drop(f);
    let after = fs::read(v.backing.join("f")).expect("backing after");
    m.unmount();
    // The append's pwrite started at stored block 2 (the old final block, re-sealed).
    let start = (H + 2 * SB) as usize;
    assert_eq!(before.len(), start + 28 + 1000);
    assert_eq!(
        before[..start],
        after[..start],
        "the append rewrote a full block before the final one"
    );

    // Tears at page boundaries of the backing file (where the kernel stops a killed pwrite).
    let page = 4096usize;
    let tear_in_final = start.next_multiple_of(page); // inside stored block 2
    let tear_later = (start + SB as usize + 1).next_multiple_of(page); // inside stored block 3
    for (tear, lost_block, fsynced_intact) in [(tear_in_final, 2u64, false), (tear_later, 3, true)]
    {
        let mut torn = before.clone();
        torn.resize(tear.max(before.len()), 0);
        torn[start..tear].copy_from_slice(&after[start..tear]);
        torn.truncate(tear.max(before.len()));
        fs::write(v.backing.join("f"), &torn).expect("write torn backing");

        let m = v.mount(&[]);
        let err = fs::read(m.join("f")).expect_err("a torn file must not read whole");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "tear at {tear}: {err}");
        let (_, chunks) = read_chunks(&m.join("f")).expect("open");
        let mut want = first.clone();
        want.extend_from_slice(&more);
        for (b, chunk) in chunks.iter().enumerate() {
            match chunk {
                Ok(got) => assert_eq!(
                    got[..],
                    want[b * BS as usize..][..got.len()],
                    "tear at {tear}: block {b} wrong"
                ),
                Err(e) => {
                    assert_eq!(*e, libc::EIO, "tear at {tear}: block {b}");
                    assert!(
                        b as u64 >= lost_block,
                        "tear at {tear}: block {b} before the tear is lost"
                    );
                }
            }
        }
        assert!(
            chunks[..lost_block as usize].iter().all(Result::is_ok),
            "tear at {tear}: full blocks before it"
        );
        assert!(
            chunks[lost_block as usize].is_err(),
            "tear at {tear}: torn block {lost_block} read"
        );
        let mut prefix = vec![0u8; first.len()];
        let fsynced = File::open(m.join("f")).and_then(|f| f.read_exact_at(&mut prefix, 0));
        assert_eq!(
            fsynced.is_ok(),
            fsynced_intact,
            "tear at {tear}: fsynced prefix readable?"
        );
        if fsynced_intact {
            assert_eq!(prefix, first);
        }
        let want_log = format!("{} block {lost_block}", v.backing.join("f").display());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !v.log().contains(&want_log) {
            assert!(
                Instant::now() < deadline,
                "no log line contains {want_log:?}:\n{}",
                v.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m.unmount();
        if v.command(["fsck", "--help"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            let out = v
                .command([OsStr::new("fsck"), v.backing.as_os_str()])
                .output()
                .expect("fsck");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(!out.status.success(), "fsck passes a torn file:\n{stdout}");
            assert!(
                stdout.contains(&format!("block {lost_block}")),
                "fsck does not name block {lost_block}:\n{stdout}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrency stress.

/// Blocks of the shared file.
const SHARED_BLOCKS: u64 = 64;
/// Words (u64) per block.
const WORDS: usize = BS as usize / 8;
/// Writer id of the shared file's initial content.
const INITIAL: u64 = 255;
/// No progress by any thread for this long is a deadlock.
const DEADLOCK: Duration = Duration::from_secs(30);

/// Word `w` of version (`t`, `seq`) of shared block `k`: the version in the top 32 bits and a
/// check value of (k, t, seq, w) in the low 32, so each aligned word read is checkable alone.
fn shared_word(k: u64, t: u64, seq: u64, w: usize) -> u64 {
    let check = mix(k << 40 ^ t << 32 ^ seq ^ mix(w as u64)) & 0xffff_ffff;
    t << 56 | (seq & 0xff_ffff) << 32 | check
}

fn shared_block(k: u64, t: u64, seq: u64) -> Vec<u8> {
    (0..WORDS)
        .flat_map(|w| shared_word(k, t, seq, w).to_le_bytes())
        .collect()
}

/// Check bytes read from the shared file at `off`: every whole aligned word must belong to a
/// version of its block that was written (`issued[t]` is the highest sequence number writer
/// `t` has started). Returns the first bad word, and the number of blocks whose words come
/// from more than one version (a torn read).
///
/// With `buffered` (a read racing writes), bad words are a tear, not an error: a buffered read
/// copies from the kernel's page while a concurrent buffered write copies into it, and Linux
/// makes no promise about what mix of the two that copy sees (string copies store in no fixed
/// order). kmsfs itself only ever returns authenticated blocks: what it gave the page cache is
/// checked exactly by the O_DIRECT readers and by the buffered and O_DIRECT reads of the whole
/// file once the writers have stopped.
fn check_shared(
    off: u64,
    data: &[u8],
    issued: &[AtomicU64],
    buffered: bool,
) -> (Option<String>, u64) {
    let mut mixed = 0;
    let mut torn_blocks = std::collections::HashSet::new();
    let mut version_of_block: HashMap<u64, (u64, u64)> = HashMap::new();
    let first_word = off.div_ceil(8) * 8;
    let mut at = first_word;
    while at + 8 <= off + data.len() as u64 {
        let i = (at - off) as usize;
        let word = u64::from_le_bytes(data[i..i + 8].try_into().expect("8 bytes"));
        let (k, w) = (at / BS, ((at % BS) / 8) as usize);
        let (t, seq) = (word >> 56, (word >> 32) & 0xff_ffff);
        let written = (t == INITIAL && seq == 0)
            || ((t as usize) < issued.len()
                && seq >= 1
                && seq <= issued[t as usize].load(Ordering::SeqCst));
        if !written || shared_word(k, t, seq, w) != word {
            if buffered {
                if torn_blocks.insert(k) {
                    mixed += 1;
                }
                at += 8;
                continue;
            }
            return (
                Some(format!(
                    "shared offset {at} (block {k} word {w}): {word:#018x} was never written there"
                )),
                mixed,
            );
        }
        match version_of_block.insert(k, (t, seq)) {
            Some(prev) if prev != (t, seq) => {
                mixed += 1;
                version_of_block.insert(k, prev);
            }
            _ => {}
        }
        at += 8;
    }
    (None, mixed)
}

/// A buffer of `len` bytes aligned for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, 4096).expect("layout");
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "alloc");
        Aligned { ptr, layout }
    }
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for layout.size() bytes, owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// One private file of a stress thread: where it is now and what it must hold.
struct Private {
    path: PathBuf,
    model: Vec<u8>,
}

/// What the threads share: the stop flag, progress, the shared file's issued versions,
/// failures, and each thread's current operation (for a deadlock report).
struct Stress {
    mnt: PathBuf,
    deadline: Instant,
    stop: AtomicBool,
    progress: AtomicU64,
    issued: Vec<AtomicU64>,
    failures: Mutex<Vec<String>>,
    doing: Vec<Mutex<(&'static str, Instant)>>,
    direct: bool,
    counts: Mutex<HashMap<&'static str, u64>>,
    torn_buffered_reads: AtomicU64,
    max_latency: Mutex<(Duration, &'static str)>,
}

impl Stress {
    fn fail(&self, msg: String) {
        self.failures.lock().expect("failures").push(msg);
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One stress thread: random operations on the shared file and its own files until the
/// deadline; returns its private files for the final check.
fn stress_thread(s: &Stress, t: usize, seed: u64) -> Vec<Private> {
    let mut rng = Rng::new(seed);
    let dir = s.mnt.join(format!("d{t}"));
    let mut files: Vec<Private> = (0..3)
        .map(|i| Private {
            path: s.mnt.join(format!("p{t}-{i}-0")),
            model: Vec::new(),
        })
        .collect();
    for f in &files {
        if let Err(e) = File::create(&f.path) {
            s.fail(format!("thread {t}: create {}: {e}", f.path.display()));
        }
    }
    // Odd threads use O_DIRECT on the shared file (served by the daemon, no page cache).
    let direct = s.direct && t % 2 == 1;
    let shared = {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        o.open(s.mnt.join("shared")).expect("open shared")
    };
    let mut buf = Aligned::new(8 * BS as usize);
    let mut renames = 0u64;
    while !s.stop.load(Ordering::SeqCst) && Instant::now() < s.deadline {
        let op = rng.below(100);
        let which = rng.below(files.len() as u64) as usize;
        let name: &'static str = match op {
            0..=24 => "shared-write",
            25..=49 => "shared-read",
            50..=61 => "private-write",
            62..=71 => "private-read",
            72..=76 => "private-truncate",
            77..=79 => "private-fsync",
            80..=89 => "rename",
            90..=94 => "unlink-recreate",
            _ => "readdir-stat",
        };
        *s.doing[t].lock().expect("doing") = (name, Instant::now());
        let started = Instant::now();
        let r: Result<(), String> = (|| {
            let err = |what: &str, e: io::Error| format!("thread {t} {name} {what}: {e}");
            match name {
                "shared-write" => {
                    let k = rng.below(SHARED_BLOCKS);
                    let seq = s.issued[t].fetch_add(1, Ordering::SeqCst) + 1;
                    let data = shared_block(k, t as u64, seq);
                    let b = &mut buf.as_mut()[..BS as usize];
                    b.copy_from_slice(&data);
                    shared.write_all_at(b, k * BS).map_err(|e| err("pwrite", e))
                }
                "shared-read" => {
                    let (off, len) = if direct {
                        let k = rng.below(SHARED_BLOCKS);
                        let n = (1 + rng.below(8)).min(SHARED_BLOCKS - k);
                        (k * BS, (n * BS) as usize)
                    } else {
                        let off = rng.below(SHARED_BLOCKS * BS - 1);
                        (
                            off,
                            (1 + rng.below(8 * BS)).min(SHARED_BLOCKS * BS - off) as usize,
                        )
                    };
                    let b = &mut buf.as_mut()[..len];
                    shared.read_exact_at(b, off).map_err(|e| err("pread", e))?;
                    let (bad, mixed) = check_shared(off, b, &s.issued, !direct);
                    if let Some(bad) = bad {
                        return Err(format!(
                            "thread {t} ({}): {bad}",
                            if direct { "O_DIRECT" } else { "buffered" }
                        ));
                    }
                    if mixed > 0 && direct {
                        return Err(format!(
                            "thread {t}: O_DIRECT read at {off}+{len}: {mixed} blocks mix two versions"
                        ));
                    }
                    s.torn_buffered_reads.fetch_add(mixed, Ordering::Relaxed);
                    Ok(())
                }
                "private-write" => {
                    let f = &mut files[which];
                    let off = rng.below(150_000) as usize;
                    let n = 1 + rng.below(20_000) as usize;
                    let data = rng.bytes(n);
                    let h = OpenOptions::new()
                        .write(true)
                        .open(&f.path)
                        .map_err(|e| err("open", e))?;
                    h.write_all_at(&data, off as u64)
                        .map_err(|e| err("pwrite", e))?;
                    if f.model.len() < off + data.len() {
                        f.model.resize(off + data.len(), 0);
                    }
                    f.model[off..off + data.len()].copy_from_slice(&data);
                    Ok(())
                }
                "private-read" => {
                    let f = &files[which];
                    let off = rng.below(f.model.len() as u64 + 100) as usize;
                    let len = rng.below(30_000) as usize;
                    let h = File::open(&f.path).map_err(|e| err("open", e))?;
                    let mut got = vec![0u8; len];
                    let mut n = 0;
                    while n < len {
                        match h
                            .read_at(&mut got[n..], (off + n) as u64)
                            .map_err(|e| err("pread", e))?
                        {
                            0 => break,
                            m => n += m,
                        }
                    }
                    let want = f
                        .model
                        .get(off..(off + len).min(f.model.len()))
                        .unwrap_or(&[]);
                    if got[..n] != *want {
                        return Err(format!(
                            "thread {t}: {} at {off}+{len}: read {n} bytes that differ from the model ({} expected)",
                            f.path.display(),
                            want.len()
                        ));
                    }
                    Ok(())
                }
                "private-truncate" => {
                    let f = &mut files[which];
                    let n = rng.below(150_000) as usize;
                    let h = OpenOptions::new()
                        .write(true)
                        .open(&f.path)
                        .map_err(|e| err("open", e))?;
                    h.set_len(n as u64).map_err(|e| err("ftruncate", e))?;
                    f.model.resize(n, 0);
                    Ok(())
                }
                "private-fsync" => {
                    let h = OpenOptions::new()
                        .write(true)
                        .open(&files[which].path)
                        .map_err(|e| err("open", e))?;
                    h.sync_all().map_err(|e| err("fsync", e))
                }
                "rename" => {
                    // Alternate between the root and this thread's directory.
                    renames += 1;
                    let f = &mut files[which];
                    let base = format!("p{t}-{which}-{renames}");
                    let to = if f.path.parent() == Some(&s.mnt) {
                        dir.join(base)
                    } else {
                        s.mnt.join(base)
                    };
                    fs::rename(&f.path, &to).map_err(|e| err("rename", e))?;
                    f.path = to;
                    Ok(())
                }
                "unlink-recreate" => {
                    let f = &mut files[which];
                    fs::remove_file(&f.path).map_err(|e| err("unlink", e))?;
                    f.model.clear();
                    File::create(&f.path).map_err(|e| err("create", e))?;
                    Ok(())
                }
                _ => {
                    // Another thread's files, being renamed and unlinked meanwhile: only
                    // "gone" is an acceptable error.
                    let entries: Vec<PathBuf> = fs::read_dir(&s.mnt)
                        .map_err(|e| err("readdir", e))?
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .collect();
                    for p in entries
                        .iter()
                        .filter(|p| {
                            p.file_name()
                                .is_some_and(|n| n.as_encoded_bytes().starts_with(b"p"))
                        })
                        .take(3)
                    {
                        match File::open(p).and_then(|f| {
                            let mut b = [0u8; 100];
                            f.read_at(&mut b, 0)
                        }) {
                            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                                return Err(err("read other", e));
                            }
                            _ => {}
                        }
                    }
                    Ok(())
                }
            }
        })();
        let took = started.elapsed();
        {
            let mut max = s.max_latency.lock().expect("latency");
            if took > max.0 {
                *max = (took, name);
            }
        }
        *s.counts.lock().expect("counts").entry(name).or_default() += 1;
        match r {
            Ok(()) => {
                s.progress.fetch_add(1, Ordering::SeqCst);
            }
            Err(msg) => {
                s.fail(msg);
                break;
            }
        }
    }
    *s.doing[t].lock().expect("doing") = ("done", Instant::now());
    files
}

/// What the daemon's threads are blocked in (for a deadlock report).
fn daemon_threads(pid: u32) -> String {
    let mut out = String::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let p = t.path();
            let comm = fs::read_to_string(p.join("comm")).unwrap_or_default();
            let wchan = fs::read_to_string(p.join("wchan")).unwrap_or_default();
            let stack = fs::read_to_string(p.join("stack")).unwrap_or_default();
            out += &format!(
                "  {} {} wchan={wchan}\n{stack}",
                t.file_name().to_string_lossy(),
                comm.trim()
            );
        }
    }
    out
}

/// Read the whole shared file through `path` with O_DIRECT when possible: every block must be
/// one whole written version. Returns its bytes.
fn read_shared_whole(path: &Path, issued: &[AtomicU64], direct: bool) -> Vec<u8> {
    let mut o = OpenOptions::new();
    o.read(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    let f = o.open(path).expect("open shared");
    let mut buf = Aligned::new((SHARED_BLOCKS * BS) as usize);
    f.read_exact_at(buf.as_mut(), 0).expect("read shared");
    let (bad, mixed) = check_shared(0, buf.as_mut(), issued, false);
    assert!(bad.is_none(), "{}", bad.unwrap_or_default());
    assert_eq!(
        mixed, 0,
        "quiescent shared file: {mixed} blocks mix two versions"
    );
    buf.as_mut().to_vec()
}

/// N threads for KMSFS_STRESS_SECS (default 20; the issue asks for 2 minutes without deadlock:
/// KMSFS_STRESS_SECS=120) on one shared file (aligned whole-block writes of self-checking
/// versions, reads anywhere) and their own files (model-checked writes, reads, truncates,
/// renames across directories, unlinks), with a watchdog that fails the test when no thread
/// makes progress for 30 s.
#[test]
fn stress_shared_and_private_files_with_renames_and_unlinks() {
    const THREADS: usize = 8;
    let secs: u64 = std::env::var("KMSFS_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    println!(
        "stress: {THREADS} threads for {secs} s (KMSFS_STRESS_SECS), deadlock after {DEADLOCK:?} without progress"
    );
    let v = Vault::new();
    v.init(&["--plaintext-names"]);
    let mut rng = Rng::from_env("stress");
    let m = v.mount(&[]);
    let initial: Vec<u8> = (0..SHARED_BLOCKS)
        .flat_map(|k| shared_block(k, INITIAL, 0))
        .collect();
    fs::write(m.join("shared"), &initial).expect("write shared");
    for t in 0..THREADS {
        fs::create_dir(m.join(format!("d{t}"))).expect("mkdir");
    }
    let direct = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.join("shared"))
        .is_ok();
    println!(
        "O_DIRECT on the mount: {}",
        if direct {
            "yes (odd threads)"
        } else {
            "refused: all threads buffered"
        }
    );
    let pid = m.daemon_pid().expect("daemon pid");

    let s = Stress {
        mnt: m.path().to_path_buf(),
        deadline: Instant::now() + Duration::from_secs(secs),
        stop: AtomicBool::new(false),
        progress: AtomicU64::new(0),
        issued: (0..THREADS).map(|_| AtomicU64::new(0)).collect(),
        failures: Mutex::new(Vec::new()),
        doing: (0..THREADS)
            .map(|_| Mutex::new(("start", Instant::now())))
            .collect(),
        direct,
        counts: Mutex::new(HashMap::new()),
        torn_buffered_reads: AtomicU64::new(0),
        max_latency: Mutex::new((Duration::ZERO, "")),
    };
    let deadlock: Arc<Mutex<Option<String>>> = Arc::default();
    let seeds: Vec<u64> = (0..THREADS).map(|_| rng.next_u64()).collect();
    let started = Instant::now();
    let privates: Vec<Vec<Private>> = std::thread::scope(|scope| {
        let handles: Vec<_> = seeds
            .iter()
            .enumerate()
            .map(|(t, &seed)| {
                let s = &s;
                scope.spawn(move || stress_thread(s, t, seed))
            })
            .collect();
        // The watchdog: no progress for DEADLOCK → report, then kill the daemon so the blocked
        // threads get ENOTCONN and the test can fail instead of hanging.
        let (s, deadlock) = (&s, deadlock.clone());
        let watchdog = scope.spawn(move || {
            let (mut last, mut since) = (0, Instant::now());
            while s.doing.iter().any(|d| d.lock().expect("doing").0 != "done") {
                std::thread::sleep(Duration::from_millis(200));
                let now = s.progress.load(Ordering::SeqCst);
                if now != last {
                    (last, since) = (now, Instant::now());
                } else if since.elapsed() > DEADLOCK {
                    let threads: Vec<String> = s.doing.iter().enumerate().map(|(t, d)| {
                        let (op, at) = *d.lock().expect("doing");
                        format!("  thread {t}: {op} for {:?}", at.elapsed())
                    }).collect();
                    *deadlock.lock().expect("deadlock") = Some(format!(
                        "no progress for {DEADLOCK:?} after {last} operations:\n{}\ndaemon {pid} threads:\n{}",
                        threads.join("\n"),
                        daemon_threads(pid)
                    ));
                    s.stop.store(true, Ordering::SeqCst);
                    // SAFETY: plain kill(2).
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    return;
                }
            }
        });
        let privates = handles
            .into_iter()
            .map(|h| h.join().expect("stress thread panicked"))
            .collect();
        watchdog.join().expect("watchdog panicked");
        privates
    });
    let ran = started.elapsed();
    if let Some(report) = deadlock.lock().expect("deadlock").take() {
        drop(m);
        panic!("DEADLOCK: {report}");
    }
    let failures = s.failures.lock().expect("failures").clone();
    assert!(
        failures.is_empty(),
        "stress failures:\n{}",
        failures.join("\n")
    );
    let ops = s.progress.load(Ordering::SeqCst);
    let mut counts: Vec<_> = s
        .counts
        .lock()
        .expect("counts")
        .clone()
        .into_iter()
        .collect();
    counts.sort();
    let (lat, lat_op) = *s.max_latency.lock().expect("latency");
    println!(
        "stress ran {ran:?}: {ops} operations ({:.0}/s), slowest {lat:?} ({lat_op}); {counts:?}",
        ops as f64 / ran.as_secs_f64()
    );
    println!(
        "buffered reads that saw a block mid-write (kernel page cache, not kmsfs): {}",
        s.torn_buffered_reads.load(Ordering::Relaxed)
    );

    // Quiescent: the shared file is whole versions, the private files equal their models, the
    // tree holds exactly the files the models say — also after a remount (from the backing dir).
    let check = |m: &MountGuard| {
        let shared = read_shared_whole(&m.join("shared"), &s.issued, direct);
        if direct {
            // What the page cache holds now came from kmsfs too: whole versions only (maybe
            // older ones: Linux keeps buffered and O_DIRECT I/O coherent only loosely).
            read_shared_whole(&m.join("shared"), &s.issued, false);
        }
        let mut want_names: Vec<PathBuf> = vec![m.join("shared")];
        for (t, files) in privates.iter().enumerate() {
            want_names.push(m.join(format!("d{t}")));
            for f in files {
                let rel = f.path.strip_prefix(&s.mnt).expect("under the mount");
                assert_contents(&m.join(rel), &f.model);
                if rel.parent().is_none_or(|p| p.as_os_str().is_empty()) {
                    want_names.push(m.join(rel));
                }
            }
            let mut in_dir: Vec<PathBuf> = fs::read_dir(m.join(format!("d{t}")))
                .expect("readdir")
                .map(|e| e.expect("entry").path())
                .collect();
            let mut want_dir: Vec<PathBuf> = files
                .iter()
                .map(|f| m.join(f.path.strip_prefix(&s.mnt).expect("rel")))
                .filter(|p| p.parent() == Some(&m.join(format!("d{t}"))))
                .collect();
            in_dir.sort();
            want_dir.sort();
            assert_eq!(in_dir, want_dir, "d{t}");
        }
        let mut root: Vec<PathBuf> = fs::read_dir(m.path())
            .expect("readdir")
            .map(|e| e.expect("entry").path())
            .collect();
        root.sort();
        want_names.sort();
        assert_eq!(root, want_names, "root directory");
        shared
    };
    let before = check(&m);
    m.unmount();
    let m = v.mount(&[]);
    let after = check(&m);
    assert!(before == after, "the shared file changed across a remount");
    m.unmount();
    // No operation of the stress may make the daemon see damage (even a readahead whose error
    // the kernel hides from the reader): the vault was never tampered with.
    let log = v.log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("integrity error"))
        .collect();
    assert!(
        errors.is_empty(),
        "{} integrity errors logged during the stress of an undamaged vault, e.g.:\n{}",
        errors.len(),
        errors
            .iter()
            .take(10)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Reads racing size changes of the same file: one thread appends to a file and cuts it back,
/// always with the same content at each offset; readers (half O_DIRECT, so each read reaches
/// the daemon; half buffered) read anywhere, most near the end of the file. A read must never
/// fail with EIO, the daemon must log no integrity error (nothing is damaged), and every byte
/// returned must be the content at its offset — except that, as on ext4, a read racing a
/// truncation may see zeros at or past the smallest size the file had during the read.
#[test]
fn reads_racing_appends_and_truncates_never_fail() {
    const MAX: u64 = 256 * 1024;
    const READERS: usize = 4;
    let v = Vault::new();
    v.init(&["--plaintext-names"]);
    let mut rng = Rng::from_env("reads racing size changes");
    let content = pattern(rng.next_u64(), 0, 0, MAX as usize);
    let m = v.mount(&[]);
    let p = m.join("growing");
    fs::write(&p, &content[..10_000]).expect("write");
    // Every size the file takes, in order; a cut is recorded before it is made.
    let sizes = Mutex::new(vec![10_000u64]);
    let stop = AtomicBool::new(false);
    let (reads, eio) = (AtomicU64::new(0), AtomicU64::new(0));
    let wrong = Mutex::new(Vec::<String>::new());
    let (p, content, sizes, stop, reads, eio, wrong) =
        (&p, &content, &sizes, &stop, &reads, &eio, &wrong);
    let run_for = Duration::from_secs(5);
    std::thread::scope(|s| {
        let writer_seed = rng.next_u64();
        s.spawn(move || {
            let mut rng = Rng::new(writer_seed);
            let f = OpenOptions::new().write(true).open(p).expect("open writer");
            let mut size = 10_000u64;
            let end = Instant::now() + run_for;
            while Instant::now() < end {
                if size < MAX && rng.below(3) != 0 {
                    let len = (1 + rng.below(20_000)).min(MAX - size);
                    f.write_all_at(&content[size as usize..(size + len) as usize], size)
                        .expect("append");
                    size += len;
                    sizes.lock().expect("sizes").push(size);
                } else {
                    size = rng.below(size + 1);
                    sizes.lock().expect("sizes").push(size);
                    f.set_len(size).expect("truncate");
                }
            }
            stop.store(true, Ordering::SeqCst);
        });
        for r in 0..READERS {
            let reader_seed = rng.next_u64();
            s.spawn(move || {
                let mut rng = Rng::new(reader_seed);
                let direct = r % 2 == 0;
                let mode = if direct { "O_DIRECT" } else { "buffered" };
                let flags = if direct { libc::O_DIRECT } else { 0 };
                let f = OpenOptions::new().read(true).custom_flags(flags).open(p).expect("open reader");
                let mut buf = Aligned::new(16 * 1024);
                while !stop.load(Ordering::SeqCst) {
                    let (g0, size0) = {
                        let sz = sizes.lock().expect("sizes");
                        (sz.len(), sz[sz.len() - 1])
                    };
                    // Mostly near the end of the file, where sizes change.
                    let off = if rng.below(4) == 0 { rng.below(MAX) } else { size0.saturating_sub(rng.below(32 * 1024)) } / 512 * 512;
                    let res = f.read_at(buf.as_mut(), off);
                    let low = sizes.lock().expect("sizes")[g0 - 1..].iter().copied().min().unwrap_or(0);
                    match res {
                        Ok(n) => {
                            let got = &buf.as_mut()[..n];
                            let bad = (0..n).find(|&i| {
                                let at = off + i as u64;
                                got[i] != content[at as usize] && (at < low || got[i] != 0)
                            });
                            if let Some(i) = bad {
                                wrong.lock().expect("wrong").push(format!(
                                    "reader {r} ({mode}): read {n} bytes at {off}: byte {} is {:#04x}, written {:#04x} (smallest size during the read {low})",
                                    off + i as u64,
                                    got[i],
                                    content[off as usize + i]
                                ));
                            }
                        }
                        Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                            eio.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => wrong.lock().expect("wrong").push(format!("reader {r} ({mode}): read at {off}: {e}")),
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    m.unmount();
    let log = v.log();
    let logged: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("integrity error"))
        .collect();
    println!(
        "{} reads racing {} size changes: {} EIO, {} integrity errors logged",
        reads.load(Ordering::Relaxed),
        sizes.lock().expect("sizes").len() - 1,
        eio.load(Ordering::Relaxed),
        logged.len()
    );
    let wrong = wrong.lock().expect("wrong");
    assert!(
        wrong.is_empty(),
        "{} reads returned bytes never written there, e.g.:\n{}",
        wrong.len(),
        wrong
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        eio.load(Ordering::Relaxed),
        0,
        "reads of an undamaged file failed with EIO; the daemon logged e.g.:\n{}",
        logged
            .iter()
            .take(5)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        logged.is_empty(),
        "integrity errors logged for an undamaged file"
    );
}

// ---------------------------------------------------------------------------------------------
// Spare backing files (`--spare-files`) across unmount and kill -9.

/// The spares waiting in the vault's `.kmsfs/spares-HOST` directories.
fn spares_of(v: &Vault) -> Vec<PathBuf> {
    let meta = fs::read_dir(v.backing.join(".kmsfs")).expect("list .kmsfs");
    meta.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("spares-"))
        .flat_map(|d| fs::read_dir(d.path()).expect("list spares").flatten())
        .map(|e| e.path())
        .collect()
}

/// The spare directory of this host (made by the first mount).
fn spare_dir(v: &Vault) -> PathBuf {
    fs::read_dir(v.backing.join(".kmsfs"))
        .expect("list .kmsfs")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("spares-"))
        .expect("a spares- directory")
        .path()
}

#[test]
fn spare_files_become_new_files_and_none_outlive_the_mount_or_a_crash() {
    let v = Vault::new();
    v.init(&[]);
    let m = v.mount(&["--spare-files", "8"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while spares_of(&v).len() < 8 {
        assert!(Instant::now() < deadline, "the pool never filled");
        std::thread::sleep(Duration::from_millis(10));
    }
    // More creates than spares: the pool refills, and every file is a proper new file.
    for i in 0..20 {
        let p = m.join(format!("f{i}"));
        fs::write(&p, format!("file {i}")).expect("create");
        let md = fs::metadata(&p).expect("stat");
        assert_eq!(md.permissions().mode() & 0o7777, 0o644, "mode of f{i}");
        let age = std::time::SystemTime::now()
            .duration_since(md.modified().expect("mtime"))
            .unwrap_or_default();
        assert!(
            age < Duration::from_secs(5),
            "f{i} has the spare's old mtime"
        );
    }
    let listed: Vec<_> = fs::read_dir(m.path())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(listed.len(), 20, "spares are never listed: {listed:?}");
    for i in 0..20 {
        assert_contents(&m.join(format!("f{i}")), format!("file {i}").as_bytes());
    }
    // A set-group-ID directory gives its group to new files (no spare, which keeps its own);
    // a spare taken and not used would outlive the unmount below.
    let g = m.join("shared");
    fs::create_dir(&g).expect("mkdir shared");
    std::os::unix::fs::chown(&g, None, Some(65534)).expect("chgrp shared");
    fs::set_permissions(&g, fs::Permissions::from_mode(0o2775)).expect("chmod g+s");
    for i in 0..3 {
        let p = g.join(format!("s{i}"));
        fs::write(&p, b"in a setgid dir").expect("create in setgid dir");
        assert_eq!(
            fs::metadata(&p).expect("stat").gid(),
            65534,
            "group of {}",
            p.display()
        );
    }
    // O_EXCL on an existing name fails and the file keeps its content.
    let excl = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.join("f0"));
    assert_eq!(
        excl.map(|_| ()).map_err(|e| e.kind()),
        Err(io::ErrorKind::AlreadyExists)
    );
    assert_contents(&m.join("f0"), b"file 0");
    m.unmount();
    assert_eq!(
        spares_of(&v),
        Vec::<PathBuf>::new(),
        "unmount removes the spares"
    );

    // A crash leaves spares behind; the next mount clears them before making its own.
    let m = v.mount(&["--spare-files", "8"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while spares_of(&v).len() < 8 {
        assert!(Instant::now() < deadline, "the pool never filled");
        std::thread::sleep(Duration::from_millis(10));
    }
    kill_daemon(&m);
    drop(m);
    fs::write(spare_dir(&v).join("s999"), b"stale").expect("plant a stale spare");
    let m = v.mount(&["--spare-files", "8"]);
    std::thread::sleep(Duration::from_millis(200));
    let left = spares_of(&v);
    assert!(
        left.len() <= 8 && !left.iter().any(|p| p.ends_with("s999")),
        "stale spares survive a remount: {left:?}"
    );
    fs::write(m.join("after"), b"x").expect("create after the crash");
    assert_contents(&m.join("after"), b"x");
    m.unmount();

    // --spare-files 0: no pool at all.
    let m = v.mount(&["--spare-files", "0"]);
    fs::write(m.join("plain-create"), b"y").expect("create without spares");
    assert_eq!(
        spares_of(&v),
        Vec::<PathBuf>::new(),
        "--spare-files 0 makes none"
    );
    m.unmount();
}
