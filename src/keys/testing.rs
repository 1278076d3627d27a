//! A fault-injecting key provider for tests: a local provider whose KMS calls can be made to
//! refuse, fail as unreachable, fail a number of times, throttle, be delayed or hang, and
//! which counts them. Cache, pool, prefetch, refusal and outage behaviour above the provider is
//! tested in-process with it; moto covers the AWS wire contract.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::local::LocalProvider;
use super::{EncryptionContext, GeneratedKey, KeyError, KeyProvider};
use crate::crypto::DataKey;
use crate::format::header::ProviderId;

/// How the next calls behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer normally.
    None,
    /// Refuse (access denied, key disabled): `KeyError::Refused`.
    Refuse,
    /// Fail as unreachable (network error, 5xx): `KeyError::Unreachable`.
    Unreachable,
    /// Fail as throttled (an unreachable kind of error, as KMS throttling is treated).
    Throttle,
    /// Answer after this long.
    Delay(Duration),
    /// Do not answer until `release` (or `set(Fault::None)`), then fail as a timeout.
    Hang,
}

#[derive(Debug)]
struct State {
    fault: Fault,
    /// Fail this many calls (as unreachable) before the fault applies.
    fail_next: u64,
}

/// The fault-injecting provider.
#[derive(Debug)]
pub struct FaultyProvider {
    inner: LocalProvider,
    /// What the calls report as the provider (AWS KMS by default, so callers act as for one).
    id: ProviderId,
    /// The key id reported instead of the local key's (e.g. a KMS key ARN).
    key_id: Option<String>,
    state: Mutex<State>,
    released: Condvar,
    decrypts: AtomicU64,
    generates: AtomicU64,
}

impl FaultyProvider {
    /// A provider over a new local key in `dir`, answering normally.
    pub fn new(dir: &Path) -> Result<Self, KeyError> {
        Self::over(LocalProvider::create(&dir.join("faulty.key"))?)
    }

    /// A provider over the existing key file `key_file` (e.g. another's `dir/faulty.key`: two
    /// providers with one key material, as a multi-Region primary and its replica).
    pub fn open(key_file: &Path) -> Result<Self, KeyError> {
        Self::over(LocalProvider::open(key_file)?)
    }

    fn over(inner: LocalProvider) -> Result<Self, KeyError> {
        Ok(FaultyProvider {
            inner,
            id: ProviderId::AwsKms,
            key_id: None,
            state: Mutex::new(State {
                fault: Fault::None,
                fail_next: 0,
            }),
            released: Condvar::new(),
            decrypts: AtomicU64::new(0),
            generates: AtomicU64::new(0),
        })
    }

    /// Report `id` as the provider kind.
    pub fn reporting(mut self, id: ProviderId) -> Self {
        self.id = id;
        self
    }

    /// Report `key_id` as the key id (e.g. a KMS key ARN).
    pub fn naming(mut self, key_id: &str) -> Self {
        self.key_id = Some(key_id.to_string());
        self
    }

    /// From now on, calls behave as `fault` (a `Hang` in progress is released by any change).
    pub fn set(&self, fault: Fault) {
        self.state.lock().fault = fault;
        self.released.notify_all();
    }

    /// Release calls hanging now (they fail as a timeout) and answer normally from now on.
    pub fn release(&self) {
        self.set(Fault::None);
    }

    /// Fail the next `n` calls as unreachable, then behave as set.
    pub fn fail_next(&self, n: u64) {
        self.state.lock().fail_next = n;
    }

    /// Decrypt calls made so far.
    pub fn decrypts(&self) -> u64 {
        self.decrypts.load(Ordering::SeqCst)
    }

    /// GenerateDataKey calls made so far.
    pub fn generates(&self) -> u64 {
        self.generates.load(Ordering::SeqCst)
    }

    /// Apply the current fault to one call.
    fn fault(&self) -> Result<(), KeyError> {
        let mut s = self.state.lock();
        if s.fail_next > 0 {
            s.fail_next -= 1;
            return Err(KeyError::Unreachable("injected failure".into()));
        }
        let fault = s.fault;
        match fault {
            Fault::None => Ok(()),
            Fault::Refuse => Err(KeyError::Refused("AccessDeniedException (injected)".into())),
            Fault::Unreachable => Err(KeyError::Unreachable(
                "connection refused (injected)".into(),
            )),
            Fault::Throttle => Err(KeyError::Unreachable(
                "ThrottlingException (injected)".into(),
            )),
            Fault::Delay(d) => {
                drop(s);
                std::thread::sleep(d);
                Ok(())
            }
            Fault::Hang => {
                let started = Instant::now();
                while s.fault == Fault::Hang {
                    self.released.wait(&mut s);
                }
                Err(KeyError::Unreachable(format!(
                    "operation timed out after {:?} (injected hang)",
                    started.elapsed()
                )))
            }
        }
    }
}

impl KeyProvider for FaultyProvider {
    fn provider_id(&self) -> ProviderId {
        self.id
    }

    fn key_id(&self) -> &str {
        self.key_id.as_deref().unwrap_or(self.inner.key_id())
    }

    fn generate_data_key(&self, ctx: &EncryptionContext) -> Result<GeneratedKey, KeyError> {
        self.generates.fetch_add(1, Ordering::SeqCst);
        self.fault()?;
        self.inner.generate_data_key(ctx)
    }

    fn decrypt(&self, wrapped: &[u8], ctx: &EncryptionContext) -> Result<DataKey, KeyError> {
        self.decrypts.fetch_add(1, Ordering::SeqCst);
        self.fault()?;
        self.inner.decrypt(wrapped, ctx)
    }

    fn wrap(&self, key: &DataKey, ctx: &EncryptionContext) -> Result<Vec<u8>, KeyError> {
        self.fault()?;
        self.inner.wrap(key, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyCache;
    use crate::keys::pool::KeyPool;
    use std::sync::Arc;

    fn provider() -> (tempfile::TempDir, Arc<FaultyProvider>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Arc::new(FaultyProvider::new(dir.path()).expect("key"));
        (dir, p)
    }

    /// A wrapped key for file `n` of volume 1, and its context.
    fn wrapped(p: &FaultyProvider, n: u8) -> (crate::format::Id, Vec<u8>, EncryptionContext) {
        let id = [n; 16];
        let ctx = EncryptionContext::for_file(&[1; 16], &id);
        let g = p.inner.generate_data_key(&ctx).expect("generate");
        (id, g.wrapped, ctx)
    }

    #[test]
    fn concurrent_cold_unwraps_of_one_file_make_one_decrypt() {
        let (_d, p) = provider();
        p.set(Fault::Delay(Duration::from_millis(100)));
        let cache = Arc::new(KeyCache::new(
            p.clone(),
            Duration::from_secs(60),
            Duration::ZERO,
            8,
        ));
        let (id, w, ctx) = wrapped(&p, 1);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (c, w, ctx) = (cache.clone(), w.clone(), ctx.clone());
                std::thread::spawn(move || c.get(&id, &w, &ctx).map(drop))
            })
            .collect();
        for t in threads {
            t.join().expect("join").expect("unwrap");
        }
        assert_eq!(p.decrypts(), 1);
    }

    #[test]
    fn an_unreachable_kms_serves_expired_keys_within_the_grace_period() {
        let (_d, p) = provider();
        let ttl = Duration::from_millis(50);
        let cache = KeyCache::new(p.clone(), ttl, Duration::from_secs(60), 8);
        let (id, w, ctx) = wrapped(&p, 2);
        cache.get(&id, &w, &ctx).expect("first");
        std::thread::sleep(ttl * 2);
        p.set(Fault::Throttle);
        cache
            .get(&id, &w, &ctx)
            .expect("stale key served while throttled");
        p.set(Fault::Unreachable);
        cache
            .get(&id, &w, &ctx)
            .expect("stale key served while unreachable");
        assert!(cache.stats().stale_served >= 1);
        let (other, w2, ctx2) = wrapped(&p, 3);
        assert!(matches!(
            cache.get(&other, &w2, &ctx2),
            Err(KeyError::Unreachable(_))
        ));
    }

    #[test]
    fn a_refusal_drops_the_expired_key_at_once() {
        let (_d, p) = provider();
        let ttl = Duration::from_millis(50);
        let cache = KeyCache::new(p.clone(), ttl, Duration::from_secs(60), 8);
        let (id, w, ctx) = wrapped(&p, 4);
        cache.get(&id, &w, &ctx).expect("first");
        std::thread::sleep(ttl * 2);
        p.set(Fault::Refuse);
        assert!(matches!(
            cache.get(&id, &w, &ctx),
            Err(KeyError::Refused(_))
        ));
        assert!(!cache.contains(&id), "a refused key stayed cached");
    }

    #[test]
    fn after_a_countdown_of_outage_failures_unwraps_recover() {
        let (_d, p) = provider();
        let cache = KeyCache::new(p.clone(), Duration::from_secs(60), Duration::ZERO, 8);
        let (id, w, ctx) = wrapped(&p, 5);
        p.fail_next(2);
        for _ in 0..2 {
            assert!(matches!(
                cache.get(&id, &w, &ctx),
                Err(KeyError::Unreachable(_))
            ));
        }
        cache.get(&id, &w, &ctx).expect("the third try");
        assert_eq!(p.decrypts(), 3);
    }

    #[test]
    fn a_hang_holds_only_the_callers_that_wait_for_it() {
        let (_d, p) = provider();
        let cache = Arc::new(
            KeyCache::new(p.clone(), Duration::from_secs(60), Duration::ZERO, 8)
                .with_max_waiters(1),
        );
        let (hot, hw, hctx) = wrapped(&p, 6);
        cache.get(&hot, &hw, &hctx).expect("hot key cached");
        p.set(Fault::Hang);
        let (cold, cw, cctx) = wrapped(&p, 7);
        let hung = {
            let (c, cw, cctx) = (cache.clone(), cw.clone(), cctx.clone());
            std::thread::spawn(move || c.get(&cold, &cw, &cctx).map(drop))
        };
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        cache
            .get(&hot, &hw, &hctx)
            .expect("cached key during the hang");
        let (third, tw, tctx) = wrapped(&p, 8);
        let refused_fast = cache.get(&third, &tw, &tctx);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a caller waited on the hang"
        );
        assert!(
            matches!(refused_fast, Err(KeyError::Unreachable(_))),
            "over the waiter bound"
        );
        p.release();
        assert!(
            hung.join().expect("join").is_err(),
            "the hung unwrap fails as a timeout"
        );
    }

    #[test]
    fn the_pool_refills_after_throttling() {
        let (_d, p) = provider();
        p.fail_next(3);
        let pool = KeyPool::start(p.clone(), [1; 16], 2, Duration::from_secs(60), 1).expect("pool");
        assert!(pool.take().is_none(), "arms the pool");
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(pool.len(), 2, "refilled after the failures");
        assert!(p.generates() >= 5, "three failed, two made");
        pool.stop();
    }
}
