//! What the crash, stress and spares tests share: deterministic file contents, killing a
//! daemon, reading a file back in aligned chunks after a crash.
#![allow(dead_code)]

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::mount::{MountGuard, process_state};

pub const BS: u64 = 4096;
pub const H: u64 = 1024;
pub const SB: u64 = BS + 28;

/// A well-mixed 64-bit hash of `z` (splitmix64, as `Rng`).
pub fn mix(z: u64) -> u64 {
    super::mount::Rng::hash(z)
}

/// `len` bytes at offset `off` of generation `g` of the deterministic content of file `seed`:
/// byte `o` depends only on (seed, g, o), so any written range can be checked later.
pub fn pattern(seed: u64, g: u64, off: u64, len: usize) -> Vec<u8> {
    (off..off + len as u64)
        .map(|o| {
            (mix(seed ^ g.wrapping_mul(0x5851_f42d_4c95_7f2d) ^ mix(o >> 3)) >> ((o & 7) * 8)) as u8
        })
        .collect()
}

/// A hex SHA-256 (for messages).
pub fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Kill the daemon of `m` with SIGKILL and wait until it is gone (or a zombie).
pub fn kill_daemon(m: &MountGuard) -> u32 {
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
pub type Chunk = Result<Vec<u8>, i32>;

/// Read `path` in aligned `BS` chunks: its size and the chunks.
pub fn read_chunks(path: &Path) -> io::Result<(u64, Vec<Chunk>)> {
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
