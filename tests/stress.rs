//! Concurrency stress through a real mount: many threads on shared and private files, with
//! renames and unlinks, checked word by word; reads racing appends and truncates.
// The mount tier: real FUSE mounts, run by `scripts/test` (`--features fuse-tests`).
#![cfg(feature = "fuse-tests")]

mod common;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::crashkit::*;
use common::mount::{MountGuard, Rng, Vault, assert_contents};

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
        "stress failures:\n{}\ndaemon log (last lines):\n{}",
        failures.join("\n"),
        tail(&v.log(), 20)
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

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
