//! The key cache: unwrapped data keys by file id, bounded in entries (LRU) and in time (TTL
//! from the unwrap, not sliding). Keys are `Arc<DataKey>`; a key is zeroized when its last
//! reference goes (eviction, expiry, `clear`, unmount).
//!
//! Policy (DESIGN.md §4): a fresh entry is served without a KMS call; a missing or expired one
//! is unwrapped once however many threads ask at the same moment (single flight). When the
//! KMS is unreachable, an expired key is served for a grace period (retrying at most every
//! few seconds); when the KMS refuses, the key is dropped at once and the call fails.
//! `ttl == 0` means "no caching across opens": entries stay only until `release`.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::{Condvar, Mutex};

use super::pool::KeyPool;
use super::{EncryptionContext, KeyError, KeyProvider};
use crate::crypto::DataKey;
use crate::format::Id;

/// Default time an unwrapped key stays usable.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Default number of cached keys.
pub const DEFAULT_CAPACITY: usize = 4096;
/// How long to wait before asking an unreachable KMS again while serving a stale key.
const RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// How long a caller beyond the waiter bound may wait for an unwrap already in flight.
const OVERFLOW_WAIT: Duration = Duration::from_secs(1);
/// How long a failed unwrap is answered from memory: long enough to absorb the kernel's
/// immediate retry of a failed read, short enough that a recovered KMS is used at once.
const FAILURE_MEMORY: Duration = Duration::from_millis(100);
/// An unwrap failing after this long met a hung KMS rather than a refused connection.
const HUNG_AFTER: Duration = Duration::from_secs(1);

struct Entry {
    key: Arc<DataKey>,
    unwrapped_at: Instant,
    retry_at: Option<Instant>,
}

type FlightResult = Option<Result<Arc<DataKey>, KeyError>>;

#[derive(Default)]
struct Flight {
    result: Mutex<FlightResult>,
    done: Condvar,
}

/// Counters the mount reports (`kmsfs status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KeyStats {
    /// Lookups served from the cache.
    pub hits: u64,
    /// Lookups that needed an unwrap.
    pub misses: u64,
    /// KMS Decrypt calls made.
    pub kms_decrypt: u64,
    /// KMS GenerateDataKey calls made.
    pub kms_generate: u64,
    /// KMS calls that failed.
    pub kms_errors: u64,
    /// Expired keys served because the KMS was unreachable.
    pub stale_served: u64,
    /// GenerateDataKey calls made by the pool's refill workers.
    pub pool_generated: u64,
    /// New files whose key came from the pre-generated pool.
    pub pool_hits: u64,
    /// New files that had to wait for a GenerateDataKey (pool empty or off).
    pub pool_misses: u64,
    /// Keys cached now.
    pub entries: u64,
    /// Most keys the cache holds.
    pub capacity: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    kms_decrypt: AtomicU64,
    kms_generate: AtomicU64,
    kms_errors: AtomicU64,
    stale_served: AtomicU64,
    pool_hits: AtomicU64,
    pool_misses: AtomicU64,
}

/// Unwrapped data keys, by file id.
pub struct KeyCache {
    provider: Arc<dyn KeyProvider>,
    ttl: Duration,
    grace: Duration,
    capacity: usize,
    entries: Mutex<LruCache<Id, Entry>>,
    flights: Mutex<HashMap<Id, Arc<Flight>>>,
    /// Recent unwrap failures by file id: the kernel retries a failed read at once, and the
    /// retry should not pay (or hang on) the KMS again.
    failures: Mutex<HashMap<Id, (Instant, KeyError)>>,
    pool: Mutex<Option<Arc<KeyPool>>>,
    max_waiters: usize,
    waiters: AtomicUsize,
    counters: Counters,
    /// How many times the cache was emptied (`clear`).
    clears: AtomicU64,
}

/// One caller counted as waiting on the KMS, for as long as it lives.
struct WaiterSlot<'a> {
    count: &'a AtomicUsize,
    /// How many were waiting, this caller included.
    level: usize,
}

impl<'a> WaiterSlot<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        let level = count.fetch_add(1, Ordering::SeqCst) + 1;
        WaiterSlot { count, level }
    }
}

impl Drop for WaiterSlot<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("provider", &self.provider)
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl KeyCache {
    /// A cache over `provider` holding at most `capacity` keys, each for `ttl` from its unwrap,
    /// plus `grace` while the KMS is unreachable.
    pub fn new(
        provider: Arc<dyn KeyProvider>,
        ttl: Duration,
        grace: Duration,
        capacity: usize,
    ) -> Self {
        let capacity = capacity.max(1);
        KeyCache {
            provider,
            ttl,
            grace,
            capacity,
            entries: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN),
            )),
            flights: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            pool: Mutex::new(None),
            max_waiters: usize::MAX,
            waiters: AtomicUsize::new(0),
            counters: Counters::default(),
            clears: AtomicU64::new(0),
        }
    }

    /// How long a key stays cached after its unwrap.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How many times the cache was emptied: what was fetched before a change of this number
    /// is gone.
    pub fn clear_count(&self) -> u64 {
        self.clears.load(Ordering::Relaxed)
    }

    /// Let at most `n` callers wait on the KMS at once; beyond that a caller only joins an
    /// unwrap already in flight (briefly) or fails at once, so a hanging KMS cannot take every
    /// FUSE worker.
    pub fn with_max_waiters(mut self, n: usize) -> Self {
        self.max_waiters = n.max(1);
        self
    }

    /// The provider behind the cache.
    pub fn provider(&self) -> &Arc<dyn KeyProvider> {
        &self.provider
    }

    fn is_fresh(&self, e: &Entry, now: Instant) -> bool {
        self.ttl.is_zero() || now.duration_since(e.unwrapped_at) < self.ttl
    }

    /// The data key of `file_id`, from the cache or by unwrapping `wrapped` under `ctx`.
    pub fn get(
        &self,
        file_id: &Id,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Arc<DataKey>, KeyError> {
        let now = Instant::now();
        {
            let mut entries = self.entries.lock();
            if let Some(e) = entries.get(file_id) {
                if self.is_fresh(e, now) {
                    self.counters.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(e.key.clone());
                }
                // Stale and the KMS failed recently: serve the old key until the next retry.
                if e.retry_at.is_some_and(|t| now < t) && self.within_grace(e, now) {
                    self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                    return Ok(e.key.clone());
                }
            }
        }
        let result = match self.recent_failure(file_id, now) {
            Some(err) => Err(err),
            None => {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                let slot = WaiterSlot::enter(&self.waiters);
                let may_lead = slot.level <= self.max_waiters;
                self.unwrap_once(file_id, wrapped, ctx, may_lead)
            }
        };
        match result {
            Ok(key) => Ok(key),
            Err(KeyError::Unreachable(msg)) => self
                .serve_stale(file_id, now)
                .ok_or(KeyError::Unreachable(msg)),
            Err(e) => {
                // A refusal drops the key at once: no plaintext key outlives the KMS's "no".
                self.entries.lock().pop(file_id);
                Err(e)
            }
        }
    }

    /// Whether `file_id` has a fresh key in the cache (no KMS call needed to use it).
    pub fn contains(&self, file_id: &Id) -> bool {
        let entries = self.entries.lock();
        entries
            .peek(file_id)
            .is_some_and(|e| self.is_fresh(e, Instant::now()))
    }

    /// Unwrap `file_id`'s key ahead of use (directory prefetch). Runs on the prefetcher's own
    /// threads, so it does not count against the FUSE workers' KMS-waiter bound; a foreground
    /// open of the same file joins this unwrap instead of starting another.
    pub fn prefetch(
        &self,
        file_id: &Id,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<(), KeyError> {
        if self.contains(file_id) {
            return Ok(());
        }
        self.unwrap_once(file_id, wrapped, ctx, true).map(drop)
    }

    /// How long to wait before asking the KMS again after a failure.
    fn retry_interval(&self) -> Duration {
        RETRY_INTERVAL.min(self.ttl.max(Duration::from_millis(100)))
    }

    /// The error of an unwrap of `file_id` that failed less than `FAILURE_MEMORY` ago.
    fn recent_failure(&self, file_id: &Id, now: Instant) -> Option<KeyError> {
        let mut failures = self.failures.lock();
        match failures.get(file_id) {
            Some((at, err)) if now.duration_since(*at) < FAILURE_MEMORY => Some(err.clone()),
            Some(_) => {
                failures.remove(file_id);
                None
            }
            None => None,
        }
    }

    fn within_grace(&self, e: &Entry, now: Instant) -> bool {
        now.duration_since(e.unwrapped_at) < self.ttl + self.grace
    }

    fn serve_stale(&self, file_id: &Id, now: Instant) -> Option<Arc<DataKey>> {
        let mut entries = self.entries.lock();
        let e = entries.get_mut(file_id)?;
        if !self.within_grace(e, now) {
            entries.pop(file_id);
            return None;
        }
        e.retry_at = Some(now + self.retry_interval());
        self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(file_id = %hex::encode(file_id), "KMS unreachable: serving a cached key within its grace period");
        Some(e.key.clone())
    }

    /// One Decrypt per file id at a time; concurrent callers wait for the leader's result.
    /// A caller beyond the waiter bound (`!may_lead`) never starts a KMS call and waits for
    /// one in flight at most `OVERFLOW_WAIT`.
    fn unwrap_once(
        &self,
        file_id: &Id,
        wrapped: &[u8],
        ctx: &EncryptionContext,
        may_lead: bool,
    ) -> Result<Arc<DataKey>, KeyError> {
        let busy = || KeyError::Unreachable("too many operations are waiting on the KMS".into());
        let (flight, leader) = {
            let mut flights = self.flights.lock();
            match flights.get(file_id) {
                Some(f) => (f.clone(), false),
                None if !may_lead => return Err(busy()),
                None => {
                    let f = Arc::new(Flight::default());
                    flights.insert(*file_id, f.clone());
                    (f, true)
                }
            }
        };
        if !leader {
            let deadline = (!may_lead).then(|| Instant::now() + OVERFLOW_WAIT);
            let mut result = flight.result.lock();
            while result.is_none() {
                match deadline {
                    Some(d) => {
                        if flight.done.wait_until(&mut result, d).timed_out() {
                            return Err(busy());
                        }
                    }
                    None => flight.done.wait(&mut result),
                }
            }
            return result.clone().unwrap_or_else(|| Err(busy()));
        }
        self.counters.kms_decrypt.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = self.provider.decrypt(wrapped, ctx).map(Arc::new);
        crate::crypto::scrub_stack();
        match &result {
            Ok(key) => self.insert(file_id, key.clone()),
            Err(e) => {
                self.counters.kms_errors.fetch_add(1, Ordering::Relaxed);
                // A definite "no" is remembered, and so is a KMS that did not answer for a
                // while (a hang: the kernel's immediate retry of the failed read must not wait
                // out the timeout again). A quick "unreachable" is not: it may be back any moment.
                let hung = started.elapsed() >= HUNG_AFTER;
                if hung || !matches!(e, KeyError::Unreachable(_)) {
                    let mut failures = self.failures.lock();
                    if failures.len() >= self.capacity {
                        failures.clear();
                    }
                    failures.insert(*file_id, (Instant::now(), e.clone()));
                }
            }
        }
        *flight.result.lock() = Some(result.clone());
        self.flights.lock().remove(file_id);
        flight.done.notify_all();
        result
    }

    /// A new data key for `file_id` (GenerateDataKey), cached; returns the key and its wrapped form.
    pub fn generate(
        &self,
        file_id: &Id,
        ctx: &EncryptionContext,
    ) -> Result<(Arc<DataKey>, Vec<u8>), KeyError> {
        self.counters.kms_generate.fetch_add(1, Ordering::Relaxed);
        let generated = self.provider.generate_data_key(ctx);
        crate::crypto::scrub_stack();
        let generated = generated.inspect_err(|_| {
            self.counters.kms_errors.fetch_add(1, Ordering::Relaxed);
        })?;
        let key = Arc::new(generated.key);
        self.insert(file_id, key.clone());
        Ok((key, generated.wrapped))
    }

    /// Serve new files' keys from `pool` (started by the mount, after daemonizing).
    pub fn set_pool(&self, pool: Arc<KeyPool>) {
        *self.pool.lock() = Some(pool);
    }

    /// A key for a new file of volume `volume_id`: from the pool when it has one, else a
    /// GenerateDataKey now. Returns the file id the key is bound to, the key and its wrapped form.
    pub fn new_file_key(&self, volume_id: &Id) -> Result<(Id, Arc<DataKey>, Vec<u8>), KeyError> {
        let pooled = self.pool.lock().as_ref().and_then(|p| p.take());
        if let Some(p) = pooled {
            self.counters.pool_hits.fetch_add(1, Ordering::Relaxed);
            let key = Arc::new(p.key);
            self.insert(&p.file_id, key.clone());
            return Ok((p.file_id, key, p.wrapped));
        }
        self.counters.pool_misses.fetch_add(1, Ordering::Relaxed);
        let slot = WaiterSlot::enter(&self.waiters);
        if slot.level > self.max_waiters {
            return Err(KeyError::Unreachable(
                "too many operations are waiting on the KMS".into(),
            ));
        }
        let file_id: Id =
            crate::crypto::random_array().map_err(|e| KeyError::Config(e.to_string()))?;
        let (key, wrapped) =
            self.generate(&file_id, &EncryptionContext::for_file(volume_id, &file_id))?;
        Ok((file_id, key, wrapped))
    }

    /// Cache `key` for `file_id`, its TTL starting now.
    pub fn insert(&self, file_id: &Id, key: Arc<DataKey>) {
        self.entries.lock().put(
            *file_id,
            Entry {
                key,
                unwrapped_at: Instant::now(),
                retry_at: None,
            },
        );
    }

    /// The last handle of `file_id` closed: with `ttl == 0` its key goes now.
    pub fn release(&self, file_id: &Id) {
        if self.ttl.is_zero() {
            self.entries.lock().pop(file_id);
        }
    }

    /// Drop every key past its TTL plus grace (called periodically by the mount).
    pub fn purge_expired(&self) {
        if let Some(pool) = self.pool.lock().as_ref() {
            pool.purge_expired();
        }
        let now = Instant::now();
        let mut entries = self.entries.lock();
        let dead: Vec<Id> = entries
            .iter()
            .filter(|(_, e)| !self.ttl.is_zero() && !self.within_grace(e, now))
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            entries.pop(&id);
        }
    }

    /// Drop every key (forget, unmount). Keys still borrowed by an in-flight operation are
    /// zeroized when that operation ends.
    pub fn clear(&self) {
        self.clears.fetch_add(1, Ordering::Relaxed);
        self.entries.lock().clear();
        self.failures.lock().clear();
        self.provider.forget();
        if let Some(pool) = self.pool.lock().as_ref() {
            pool.clear();
        }
    }

    /// Stop the pool's workers and drop every key (unmount).
    pub fn shutdown(&self) {
        if let Some(pool) = self.pool.lock().take() {
            pool.stop();
        }
        self.entries.lock().clear();
        self.provider.forget();
    }

    /// The counters and current size.
    pub fn stats(&self) -> KeyStats {
        let c = &self.counters;
        KeyStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            kms_decrypt: c.kms_decrypt.load(Ordering::Relaxed),
            kms_generate: c.kms_generate.load(Ordering::Relaxed),
            kms_errors: c.kms_errors.load(Ordering::Relaxed),
            stale_served: c.stale_served.load(Ordering::Relaxed),
            pool_generated: self.pool.lock().as_ref().map_or(0, |p| p.counts().0),
            pool_hits: c.pool_hits.load(Ordering::Relaxed),
            pool_misses: c.pool_misses.load(Ordering::Relaxed),
            entries: self.entries.lock().len() as u64,
            capacity: self.capacity as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::header::ProviderId;
    use crate::keys::GeneratedKey;
    use std::sync::atomic::AtomicUsize;

    /// A provider that counts calls and can be told to fail, slow down or refuse.
    #[derive(Debug, Default)]
    struct FakeProvider {
        decrypts: AtomicUsize,
        mode: Mutex<Option<KeyError>>,
        delay: Mutex<Duration>,
    }

    impl KeyProvider for FakeProvider {
        fn provider_id(&self) -> ProviderId {
            ProviderId::Local
        }
        fn key_id(&self) -> &str {
            "fake"
        }
        fn generate_data_key(&self, _: &EncryptionContext) -> Result<GeneratedKey, KeyError> {
            Ok(GeneratedKey {
                key: DataKey::from_slice(&[7; 32]).map_err(|e| KeyError::Config(e.to_string()))?,
                wrapped: vec![7],
            })
        }
        fn decrypt(&self, wrapped: &[u8], _: &EncryptionContext) -> Result<DataKey, KeyError> {
            self.decrypts.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(*self.delay.lock());
            if let Some(e) = self.mode.lock().clone() {
                return Err(e);
            }
            DataKey::from_slice(&[wrapped[0]; 32]).map_err(|e| KeyError::Config(e.to_string()))
        }
        fn wrap(&self, _: &DataKey, _: &EncryptionContext) -> Result<Vec<u8>, KeyError> {
            Ok(vec![7])
        }
    }

    fn setup(ttl_ms: u64, grace_ms: u64, cap: usize) -> (Arc<FakeProvider>, KeyCache) {
        let p = Arc::new(FakeProvider::default());
        let c = KeyCache::new(
            p.clone(),
            Duration::from_millis(ttl_ms),
            Duration::from_millis(grace_ms),
            cap,
        );
        (p, c)
    }

    fn ctx() -> EncryptionContext {
        EncryptionContext::for_file(&[0; 16], &[1; 16])
    }

    #[test]
    fn second_get_is_a_hit() {
        let (p, c) = setup(60_000, 0, 10);
        c.get(&[1; 16], &[3], &ctx()).expect("first");
        c.get(&[1; 16], &[3], &ctx()).expect("second");
        assert_eq!(p.decrypts.load(Ordering::SeqCst), 1);
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.kms_decrypt, s.entries), (1, 1, 1, 1));
    }

    #[test]
    fn expiry_unwraps_again() {
        let (p, c) = setup(30, 0, 10);
        c.get(&[1; 16], &[3], &ctx()).expect("first");
        std::thread::sleep(Duration::from_millis(40));
        c.get(&[1; 16], &[3], &ctx()).expect("after expiry");
        assert_eq!(p.decrypts.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn lru_bound_evicts() {
        let (_, c) = setup(60_000, 0, 2);
        for i in 0..5u8 {
            c.get(&[i; 16], &[i], &ctx()).expect("get");
        }
        assert_eq!(c.stats().entries, 2);
    }

    #[test]
    fn single_flight_for_concurrent_misses() {
        let (p, c) = setup(60_000, 0, 10);
        *p.delay.lock() = Duration::from_millis(100);
        let c = Arc::new(c);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || c.get(&[1; 16], &[3], &ctx()).map(|k| *k.expose()))
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().expect("join").expect("key"), [3; 32]);
        }
        assert_eq!(p.decrypts.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn unreachable_serves_stale_within_grace_refusal_drops() {
        let (p, c) = setup(30, 10_000, 10);
        c.get(&[1; 16], &[3], &ctx()).expect("first");
        std::thread::sleep(Duration::from_millis(40));
        *p.mode.lock() = Some(KeyError::Unreachable("down".into()));
        assert!(
            c.get(&[1; 16], &[3], &ctx()).is_ok(),
            "stale key served in grace"
        );
        // within the retry interval no further KMS call is made
        let before = p.decrypts.load(Ordering::SeqCst);
        assert!(c.get(&[1; 16], &[3], &ctx()).is_ok());
        assert_eq!(p.decrypts.load(Ordering::SeqCst), before);
        *p.mode.lock() = Some(KeyError::Refused("disabled".into()));
        std::thread::sleep(Duration::from_millis(120));
        assert!(matches!(
            c.get(&[1; 16], &[3], &ctx()),
            Err(KeyError::Refused(_))
        ));
        assert_eq!(c.stats().entries, 0, "refusal drops the key");
    }

    #[test]
    fn waiters_beyond_the_bound_fail_fast_on_a_hung_kms() {
        let (p, c) = setup(60_000, 0, 10);
        *p.delay.lock() = Duration::from_millis(1500);
        let c = Arc::new(c.with_max_waiters(1));
        let hung = {
            let c = c.clone();
            std::thread::spawn(move || c.get(&[1; 16], &[3], &ctx()).is_ok())
        };
        while c.waiters.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        let start = Instant::now();
        // another file: no flight to join, so no second worker is taken by the KMS
        assert!(matches!(
            c.get(&[2; 16], &[4], &ctx()),
            Err(KeyError::Unreachable(_))
        ));
        assert!(start.elapsed() < Duration::from_millis(500));
        // the same file: joins the flight for at most a second, then gives up
        assert!(c.get(&[1; 16], &[3], &ctx()).is_err());
        assert!(hung.join().expect("join"), "the leader still gets its key");
        assert_eq!(p.decrypts.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_failure_is_remembered_briefly_so_retries_do_not_call_the_kms_again() {
        let (p, c) = setup(60_000, 0, 10);
        *p.mode.lock() = Some(KeyError::BadWrappedKey("InvalidCiphertextException".into()));
        assert!(c.get(&[1; 16], &[3], &ctx()).is_err());
        assert!(
            c.get(&[1; 16], &[3], &ctx()).is_err(),
            "the kernel's immediate retry"
        );
        assert_eq!(p.decrypts.load(Ordering::SeqCst), 1);
        *p.mode.lock() = None;
        std::thread::sleep(FAILURE_MEMORY + Duration::from_millis(20));
        assert!(
            c.get(&[1; 16], &[3], &ctx()).is_ok(),
            "asked again soon after"
        );
        assert_eq!(p.decrypts.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_hung_kms_is_remembered_briefly_a_refused_connection_is_not() {
        let (p, c) = setup(60_000, 0, 10);
        *p.mode.lock() = Some(KeyError::Unreachable("connection refused".into()));
        assert!(c.get(&[1; 16], &[3], &ctx()).is_err());
        assert!(c.get(&[1; 16], &[3], &ctx()).is_err());
        assert_eq!(
            p.decrypts.load(Ordering::SeqCst),
            2,
            "a quick failure is asked again"
        );
        *p.delay.lock() = HUNG_AFTER + Duration::from_millis(50);
        *p.mode.lock() = Some(KeyError::Unreachable("timed out".into()));
        assert!(c.get(&[2; 16], &[3], &ctx()).is_err());
        *p.delay.lock() = Duration::ZERO;
        assert!(
            c.get(&[2; 16], &[3], &ctx()).is_err(),
            "the kernel's immediate retry"
        );
        assert_eq!(
            p.decrypts.load(Ordering::SeqCst),
            3,
            "the retry waits on no hung KMS"
        );
        *p.mode.lock() = None;
        std::thread::sleep(FAILURE_MEMORY + Duration::from_millis(20));
        assert!(c.get(&[2; 16], &[3], &ctx()).is_ok(), "the KMS is back");
    }

    #[test]
    fn zero_ttl_keeps_keys_until_release() {
        let (p, c) = setup(0, 0, 10);
        c.get(&[1; 16], &[3], &ctx()).expect("first");
        c.get(&[1; 16], &[3], &ctx()).expect("while open");
        assert_eq!(p.decrypts.load(Ordering::SeqCst), 1);
        c.release(&[1; 16]);
        c.get(&[1; 16], &[3], &ctx()).expect("reopen");
        assert_eq!(p.decrypts.load(Ordering::SeqCst), 2);
    }
}
