//! What the KMS tests share: moto behind a counting proxy, a vault using it, reading files.
#![allow(dead_code)]

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use super::moto::{MotoServer, Proxy};
use super::mount::Vault;

pub const DECRYPT: &str = "Decrypt";
/// The encryption-context key naming a file: present in a file key's KMS requests, absent
/// from the vault's file-name key (unwrapped at mount and again once per TTL).
pub const FILE_CTX: &str = "kmsfs:file-id";
pub const GENERATE: &str = "GenerateDataKey";
/// The mount's default data-key pool size.
pub const POOL: usize = 32;
/// The mount's pool refill threads (each may have one key in flight beyond the target).
pub const POOL_WORKERS: usize = 4;

/// moto, a proxy in front of it, and a key in it.
pub struct Kms {
    pub proxy: Proxy,
    pub key: String,
    // Last: stopped after the proxy.
    pub _moto: MotoServer,
}

impl Kms {
    /// Decrypt requests for file keys (not the file-name key).
    pub fn file_decrypts(&self) -> usize {
        self.proxy.count_with(DECRYPT, FILE_CTX)
    }

    pub fn start() -> Kms {
        let moto = MotoServer::start();
        let key = moto.create_key();
        let proxy = Proxy::forward_to(moto.addr());
        Kms {
            proxy,
            key,
            _moto: moto,
        }
    }

    /// A vault whose `kmsfs` commands reach KMS only through the proxy, initialised with the key.
    pub fn vault(&self) -> Vault {
        let v = Vault::new().with_kms(&self.proxy.url());
        v.init(&["--kms-key-id", &self.key]);
        v
    }

    /// Wait until the proxy has been idle (no request received, none in flight) for `quiet`:
    /// the mount's pool refill is done. Panics after a minute.
    pub fn settle(&self, quiet: Duration) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = (self.proxy.requests(), Instant::now());
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let n = self.proxy.requests();
            if n != last.0 || self.proxy.in_flight() > 0 {
                last = (n, Instant::now());
            } else if last.1.elapsed() >= quiet {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "KMS traffic did not settle: {:?}",
                self.proxy.counts()
            );
        }
    }

    /// Settle after a mount (the pool fills), then zero the counters.
    pub fn quiet_and_reset(&self) {
        self.settle(Duration::from_millis(700));
        self.proxy.reset();
    }
}

/// Open, read whole, close.
pub fn read_file(p: &Path) -> io::Result<Vec<u8>> {
    let mut f = File::open(p)?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(buf)
}
