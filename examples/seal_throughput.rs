//! Seal / open throughput of one block on one core, per block size, and what a 4 KiB random
//! write or read costs in crypto at each block size (the whole block is sealed or opened).
//! The numbers behind the default block size in docs/FORMAT.md.
//!
//! ```text
//! cargo run --release --example seal_throughput [SECONDS_PER_MEASUREMENT]
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kmsfs::crypto::{BlockCipher, DataKey};

const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let budget = Duration::from_secs_f64(secs);
    let key = DataKey::from_slice(&[7; 32]).expect("32-byte key");
    let cipher = BlockCipher::new(Arc::new(key), [1; 16], [2; 16]);

    println!("one core, {secs} s per measurement; MiB/s of plaintext");
    println!(
        "{:>8} {:>11} {:>11} {:>17} {:>18}",
        "block", "seal MiB/s", "open MiB/s", "4 KiB read, µs", "4 KiB write, µs"
    );
    for bs in [4096usize, 16384, 65536] {
        let plain = vec![0x5au8; bs];
        let mut stored = Vec::with_capacity(bs + 28);
        // Seal: a fresh random nonce each time, as real writes do.
        let (n, t) = run(budget, || {
            stored.clear();
            cipher
                .seal(black_box(3), black_box(&plain), &mut stored)
                .expect("seal");
            black_box(&stored);
        });
        let seal = (n * bs) as f64 / MIB / t.as_secs_f64();
        let seal_us = t.as_secs_f64() * 1e6 / n as f64;

        let mut out = vec![0u8; bs];
        let (n, t) = run(budget, || {
            cipher
                .open(black_box(3), black_box(&stored), &mut out)
                .expect("open");
            black_box(&out);
        });
        let open = (n * bs) as f64 / MIB / t.as_secs_f64();
        let open_us = t.as_secs_f64() * 1e6 / n as f64;

        // A 4 KiB random read opens one whole block. An aligned 4 KiB write seals one block
        // when the block is 4 KiB; a larger block is opened, modified and sealed again.
        let write_us = if bs == 4096 {
            seal_us
        } else {
            open_us + seal_us
        };
        println!("{bs:>8} {seal:>11.0} {open:>11.0} {open_us:>17.2} {write_us:>18.2}");
    }
}

/// Run `f` repeatedly for about `budget`; the number of runs and the time taken.
fn run(budget: Duration, mut f: impl FnMut()) -> (usize, Duration) {
    for _ in 0..16 {
        f(); // warm up
    }
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < budget {
        for _ in 0..64 {
            f();
        }
        n += 64;
    }
    (n, start.elapsed())
}
