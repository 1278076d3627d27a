//! The volume name key while a vault is open: unwrapped at mount, re-unwrapped once per TTL in
//! the background (so a KMS refusal reaches names too), dropped by `forget` and unwrapped again
//! on the next name operation.

use std::io;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::cipher::NameCipher;
use crate::crypto::DataKey;
use crate::keys::{EncryptionContext, KeyError, KeyProvider};

/// Where the name key comes from: the trusted provider and the wrapped key of the config.
pub struct NameKeySource {
    provider: Arc<dyn KeyProvider>,
    wrapped: Vec<u8>,
    ctx: EncryptionContext,
}

impl NameKeySource {
    /// The name key `wrapped` under `ctx`, unwrapped by `provider`.
    pub fn new(provider: Arc<dyn KeyProvider>, wrapped: Vec<u8>, ctx: EncryptionContext) -> Self {
        NameKeySource {
            provider,
            wrapped,
            ctx,
        }
    }

    fn unwrap(&self) -> Result<DataKey, KeyError> {
        let key = self.provider.decrypt(&self.wrapped, &self.ctx);
        crate::crypto::scrub_stack();
        key
    }
}

enum State {
    /// Unwrapped and usable.
    Ready(Arc<NameCipher>),
    /// Dropped by `forget`: unwrapped again on next use.
    Forgotten,
    /// The KMS refused it: name operations fail with EACCES until a refresh succeeds.
    Refused,
}

struct Slot {
    state: RwLock<State>,
    source: Option<NameKeySource>,
    /// One unwrap after `forget` at a time.
    unwrapping: Mutex<()>,
}

/// The slot holding the unwrapped name key, shared with the mount's background re-unwrap.
#[derive(Clone)]
pub struct NameKeyHandle(Arc<Slot>);

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl NameKeyHandle {
    /// A slot holding `key`, unwrapped again from `source` after `forget` (never, without one).
    pub fn new(key: DataKey, source: Option<NameKeySource>) -> Self {
        NameKeyHandle(Arc::new(Slot {
            state: RwLock::new(State::Ready(Arc::new(NameCipher::new(key)))),
            source,
            unwrapping: Mutex::new(()),
        }))
    }

    /// The name cipher: EACCES once the KMS has refused the key; after `forget`, the key is
    /// unwrapped now (EIO, logged, when the KMS cannot be reached).
    pub fn cipher(&self) -> io::Result<Arc<NameCipher>> {
        match &*self.0.state.read() {
            State::Ready(c) => return Ok(c.clone()),
            State::Refused => return Err(errno(libc::EACCES)),
            State::Forgotten => {}
        }
        let Some(source) = &self.0.source else {
            return Err(errno(libc::EACCES));
        };
        let _one = self.0.unwrapping.lock();
        if let State::Ready(c) = &*self.0.state.read() {
            return Ok(c.clone());
        }
        match source.unwrap() {
            Ok(key) => {
                let c = Arc::new(NameCipher::new(key));
                *self.0.state.write() = State::Ready(c.clone());
                Ok(c)
            }
            Err(e @ (KeyError::Refused(_) | KeyError::BadWrappedKey(_))) => {
                tracing::error!("the KMS refused the file-name key: {e}");
                *self.0.state.write() = State::Refused;
                Err(errno(libc::EACCES))
            }
            Err(e) => {
                tracing::warn!("cannot unwrap the file-name key: {e}");
                Err(errno(libc::EIO))
            }
        }
    }

    /// Re-unwrap the key after its TTL (the background refresh): a key replaces the old one; a
    /// refusal drops it at once (name operations then fail with EACCES); an unreachable KMS
    /// keeps the old key, so lookups never wait on the KMS. A forgotten key stays forgotten:
    /// nothing is unwrapped until a name is used.
    pub fn refresh(&self) {
        let Some(source) = &self.0.source else { return };
        if matches!(*self.0.state.read(), State::Forgotten) {
            return;
        }
        self.rekey(source.unwrap());
    }

    /// Apply the result of re-unwrapping the name key (see `refresh`).
    pub fn rekey(&self, result: Result<DataKey, KeyError>) {
        match result {
            Ok(key) => {
                let mut state = self.0.state.write();
                if !matches!(*state, State::Forgotten) {
                    *state = State::Ready(Arc::new(NameCipher::new(key)));
                }
            }
            Err(e @ (KeyError::Refused(_) | KeyError::BadWrappedKey(_))) => {
                tracing::error!(
                    "the KMS refused the file-name key; names are unreadable until it is allowed again: {e}"
                );
                *self.0.state.write() = State::Refused;
            }
            Err(e) => {
                tracing::warn!("cannot re-unwrap the file-name key, keeping the current one: {e}")
            }
        }
    }

    /// Drop (zeroize) the unwrapped key now; the next name operation unwraps it again.
    /// Without a source (tests) nothing is dropped: there would be no way back.
    pub fn forget(&self) {
        if self.0.source.is_none() {
            return;
        }
        let mut state = self.0.state.write();
        if matches!(*state, State::Ready(_)) {
            *state = State::Forgotten;
        }
    }

    /// Whether the key is unwrapped now.
    pub fn is_unwrapped(&self) -> bool {
        matches!(*self.0.state.read(), State::Ready(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::local::LocalProvider;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug)]
    struct Counting(LocalProvider, AtomicUsize);

    impl KeyProvider for Counting {
        fn provider_id(&self) -> crate::format::header::ProviderId {
            self.0.provider_id()
        }
        fn key_id(&self) -> &str {
            self.0.key_id()
        }
        fn generate_data_key(
            &self,
            ctx: &EncryptionContext,
        ) -> Result<crate::keys::GeneratedKey, KeyError> {
            self.0.generate_data_key(ctx)
        }
        fn decrypt(&self, wrapped: &[u8], ctx: &EncryptionContext) -> Result<DataKey, KeyError> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.decrypt(wrapped, ctx)
        }
        fn wrap(&self, key: &DataKey, ctx: &EncryptionContext) -> Result<Vec<u8>, KeyError> {
            self.0.wrap(key, ctx)
        }
    }

    /// Item 9 of the hostile-store issue: forget drops the name key; the next name operation
    /// unwraps it again (one Decrypt), the background refresh does not.
    #[test]
    fn forget_drops_the_key_and_the_next_use_unwraps_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Arc::new(Counting(
            LocalProvider::create(&dir.path().join("k")).expect("key"),
            AtomicUsize::new(0),
        ));
        let ctx = EncryptionContext::for_volume(&[1; 16], "names");
        let g = p.generate_data_key(&ctx).expect("gen");
        let h = NameKeyHandle::new(g.key, Some(NameKeySource::new(p.clone(), g.wrapped, ctx)));
        let before = h.cipher().expect("ready").encrypt_name(&[0; 16], b"x");
        h.forget();
        assert!(!h.is_unwrapped());
        h.refresh();
        assert_eq!(
            p.1.load(Ordering::SeqCst),
            0,
            "no unwrap while forgotten and unused"
        );
        let after = h
            .cipher()
            .expect("unwrapped again")
            .encrypt_name(&[0; 16], b"x");
        assert_eq!(before, after);
        assert_eq!(p.1.load(Ordering::SeqCst), 1);
        h.cipher().expect("cached");
        assert_eq!(p.1.load(Ordering::SeqCst), 1);
    }
}
