//! A small pool of fresh data keys, refilled in the background, so the first write of a new
//! file does not wait on KMS latency. Each pooled key was generated with its own random file
//! id in the encryption context, and is handed out once: every key serves one file only. A
//! pooled key lives at most `max_age` (the mount's key TTL) from its generation: older ones
//! are dropped (zeroized) unused, by `take` and by the mount's expiry tick.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::{EncryptionContext, KeyProvider};
use crate::crypto::DataKey;
use crate::format::Id;

/// One pre-generated key and the file id it is bound to.
#[derive(Debug)]
pub struct PooledKey {
    /// The file id used in the key's encryption context.
    pub file_id: Id,
    /// The plaintext key (zeroized on drop).
    pub key: DataKey,
    /// The wrapped key for the header.
    pub wrapped: Vec<u8>,
    /// When it was generated.
    made: Instant,
}

#[derive(Debug, Default)]
struct State {
    keys: VecDeque<PooledKey>,
    stopped: bool,
    /// Set by the first `take`: a mount that only reads never pays for a pool.
    armed: bool,
    /// Keys being generated right now (counted, so the pool never overshoots its target).
    in_flight: usize,
}

/// The pool and its refill workers.
#[derive(Debug)]
pub struct KeyPool {
    provider: Arc<dyn KeyProvider>,
    volume_id: Id,
    target: usize,
    max_age: Duration,
    state: Mutex<State>,
    wake: Condvar,
    generated: AtomicU64,
    failures: AtomicU64,
}

const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl KeyPool {
    /// A pool of up to `target` keys for volume `volume_id`, each kept at most `max_age`,
    /// refilled by `workers` threads (several, so refills overlap KMS latency).
    pub fn start(
        provider: Arc<dyn KeyProvider>,
        volume_id: Id,
        target: usize,
        max_age: Duration,
        workers: usize,
    ) -> std::io::Result<Arc<Self>> {
        let pool = Arc::new(KeyPool {
            provider,
            volume_id,
            target,
            max_age,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            generated: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        });
        for i in 0..workers.max(1) {
            let p = pool.clone();
            std::thread::Builder::new()
                .name(format!("kmsfs-keypool-{i}"))
                .spawn(move || p.refill())?;
        }
        Ok(pool)
    }

    /// Take one key younger than `max_age`, if the pool has one; wakes the refill workers.
    pub fn take(&self) -> Option<PooledKey> {
        let key = {
            let mut s = self.state.lock();
            s.armed = true;
            self.drop_old(&mut s);
            s.keys.pop_front()
        };
        self.wake.notify_all();
        key
    }

    /// Drop (zeroize) the keys older than `max_age` (the oldest are in front).
    fn drop_old(&self, s: &mut State) -> usize {
        let before = s.keys.len();
        while s
            .keys
            .front()
            .is_some_and(|k| k.made.elapsed() >= self.max_age)
        {
            s.keys.pop_front();
        }
        before - s.keys.len()
    }

    /// Drop the keys older than `max_age` now (the mount's expiry tick); the workers refill.
    pub fn purge_expired(&self) {
        let dropped = self.drop_old(&mut self.state.lock());
        if dropped > 0 {
            self.wake.notify_all();
        }
    }

    /// Keys waiting in the pool.
    pub fn len(&self) -> usize {
        self.state.lock().keys.len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// GenerateDataKey calls made by the refill workers (successful, failed).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.generated.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }

    /// Drop (zeroize) every pooled key and stop the workers (unmount).
    pub fn stop(&self) {
        let mut s = self.state.lock();
        s.stopped = true;
        s.keys.clear();
        drop(s);
        self.wake.notify_all();
    }

    /// Stop refilling but keep the keys (tests).
    #[cfg(test)]
    fn stop_refills_for_test(&self) {
        self.state.lock().armed = false;
    }

    /// Drop (zeroize) every pooled key; the workers refill with new ones (forget).
    pub fn clear(&self) {
        self.state.lock().keys.clear();
        self.wake.notify_all();
    }

    fn refill(&self) {
        let mut backoff = Duration::from_millis(200);
        loop {
            {
                let mut s = self.state.lock();
                while !s.stopped && (!s.armed || s.keys.len() + s.in_flight >= self.target) {
                    self.wake.wait(&mut s);
                }
                if s.stopped {
                    return;
                }
                s.in_flight += 1;
            }
            let generated = self.generate_one();
            self.state.lock().in_flight -= 1;
            match generated {
                Ok(k) => {
                    backoff = Duration::from_millis(200);
                    let mut s = self.state.lock();
                    if s.stopped {
                        return;
                    }
                    s.keys.push_back(k);
                }
                Err(e) => {
                    tracing::warn!("data-key pool refill failed (retrying in {backoff:?}): {e}");
                    let mut s = self.state.lock();
                    if !s.stopped {
                        self.wake.wait_for(&mut s, backoff);
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn generate_one(&self) -> Result<PooledKey, super::KeyError> {
        let file_id: Id =
            crate::crypto::random_array().map_err(|e| super::KeyError::Config(e.to_string()))?;
        let ctx = EncryptionContext::for_file(&self.volume_id, &file_id);
        let generated = self.provider.generate_data_key(&ctx);
        crate::crypto::scrub_stack();
        match generated {
            Ok(g) => {
                self.generated.fetch_add(1, Ordering::Relaxed);
                Ok(PooledKey {
                    file_id,
                    key: g.key,
                    wrapped: g.wrapped,
                    made: Instant::now(),
                })
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::local::LocalProvider;

    #[test]
    fn pool_fills_hands_out_distinct_keys_and_stops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p: Arc<dyn KeyProvider> =
            Arc::new(LocalProvider::create(&dir.path().join("k")).expect("key"));
        let pool =
            KeyPool::start(p.clone(), [1; 16], 4, Duration::from_secs(300), 2).expect("start");
        assert!(
            pool.take().is_none(),
            "nothing is generated before the first new file"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while pool.len() < 4 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(pool.len(), 4, "filled exactly to its target");
        let a = pool.take().expect("a");
        let b = pool.take().expect("b");
        assert_ne!(a.file_id, b.file_id);
        assert_ne!(a.key.expose(), b.key.expose());
        // each key unwraps only with its own file id in the context
        let ctx = EncryptionContext::for_file(&[1; 16], &a.file_id);
        assert_eq!(
            p.decrypt(&a.wrapped, &ctx).expect("unwrap").expose(),
            a.key.expose()
        );
        assert!(p.decrypt(&b.wrapped, &ctx).is_err());
        pool.stop();
        assert!(pool.is_empty());
    }

    /// Item 9 of the hostile-store issue: pooled keys expire; an expired one is never handed
    /// out, and the expiry tick drops them while nobody takes any.
    #[test]
    fn pooled_keys_expire() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p: Arc<dyn KeyProvider> =
            Arc::new(LocalProvider::create(&dir.path().join("k")).expect("key"));
        let pool = KeyPool::start(p, [1; 16], 2, Duration::from_millis(200), 1).expect("start");
        assert!(pool.take().is_none(), "arms the pool");
        let wait_full = |pool: &KeyPool| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while pool.len() < 2 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        wait_full(&pool);
        let born = Instant::now();
        std::thread::sleep(Duration::from_millis(250));
        if let Some(k) = pool.take() {
            assert!(k.made > born, "an expired key was handed out");
        }
        wait_full(&pool);
        std::thread::sleep(Duration::from_millis(250));
        pool.stop_refills_for_test();
        pool.purge_expired();
        assert!(pool.is_empty(), "expired keys stayed in memory");
    }
}
