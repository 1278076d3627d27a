//! Content: one open encrypted file over a backing file — read and write at any offset,
//! partial-block read-modify-write, truncate, and the plain size ↔ backing size translation.
//! `read` (the block pipeline and its two-core split), `write` (sealing, extension, headers),
//! `coherence` (shared stores: backing locks, stale pages, the locked re-read) and `direct`
//! (large cold reads with O_DIRECT) hold the parts.
//!
//! Writes go straight through to the backing file (no write-back buffer), so the backing size
//! always encodes the plain size and `getattr` needs no header. One `RwLock` per file lets
//! reads run in parallel while writes and truncates are exclusive.

use std::borrow::Cow;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;

mod coherence;
#[allow(unsafe_code)]
pub mod direct;
mod holes;
mod read;
mod sparse;
mod write;

pub use holes::HoleStore;

use crate::crypto::{self, BlockCipher};
use crate::format::header::{
    FileHeader, HEADER_SIZE, KEY_MADE_VERSION, ProviderId, offset as header_offset,
};
use crate::format::holes::HoleGeometry;
use crate::format::layout::BLOCK_OVERHEAD;
use crate::format::{FormatError, Id, Layout};
use crate::keys::{EncryptionContext, KeyCache, KeyError};
use direct::DirectReader;

/// Blocks sealed or opened per backing I/O call, bounding memory for huge writes and holes.
const BATCH_BLOCKS: u64 = 256;
/// Reads and writes of at least this many blocks are decrypted or sealed on two cores.
const PARALLEL_MIN_BLOCKS: u64 = 32;
/// The plaintext of blocks in a gap a write or truncate opens.
static ZEROS: [u8; crate::format::layout::MAX_BLOCK_SIZE as usize] =
    [0; crate::format::layout::MAX_BLOCK_SIZE as usize];

/// The cores worth using for one request.
fn parallelism() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Large writes that extend a file (a stream being written) start their own writeback.
const STREAM_WRITEBACK_MIN: usize = 256 * 1024;

/// Start writing `len` bytes at `offset` of `file` to the disk without waiting. A file written
/// as a stream then reaches the disk while the rest is still being encrypted, instead of all
/// at the final fsync (the kernel would wait for its dirty limits); overwrites in place are
/// left to the kernel, which may merge them.
fn start_writeback(file: &File, offset: u64, len: usize) {
    crate::sys::start_writeback(std::os::fd::AsFd::as_fd(file), offset, len);
}

/// Reads and writes in progress in this process.
static IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts one read or write in progress while it lives.
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        IN_FLIGHT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether a run of `blocks` blocks is worth a second thread: it is large, and cores are idle
/// (with several requests in flight, as under readahead, each already has a core).
fn split_worthwhile(blocks: u64) -> bool {
    blocks >= PARALLEL_MIN_BLOCKS
        && IN_FLIGHT.load(std::sync::atomic::Ordering::Relaxed) < parallelism()
}

/// A run of blocks being read: which blocks, the file size, and the plain range asked for.
#[derive(Clone, Copy)]
struct Span {
    first: u64,
    last: u64,
    size: u64,
    offset: u64,
    end: u64,
}

/// What went wrong with an encrypted file.
#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    /// The backing file system failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The backing file is damaged, tampered with or not a kmsfs file.
    #[error("integrity error in {path}{}: {what}", block.map(|b| format!(" block {b}")).unwrap_or_default())]
    Integrity {
        /// The backing file.
        path: String,
        /// The block, when one block is at fault.
        block: Option<u64>,
        /// What is wrong.
        what: String,
    },
    /// The data key could not be obtained.
    #[error("key for {path}: {err}")]
    Key {
        /// The backing file.
        path: String,
        /// Why.
        err: KeyError,
    },
}

/// What every file of one vault shares: ids, geometry, the key cache and a damage counter.
#[derive(Debug)]
pub struct Volume {
    /// The backing store is shared with other hosts (network or FUSE file system): every open
    /// drops the backing file's cached pages, for close-to-open consistency.
    pub shared_store: std::sync::atomic::AtomicBool,
    /// Integrity errors seen (tampered, cut or foreign files), for `kmsfs status`.
    pub tamper_events: std::sync::atomic::AtomicU64,
    /// The vault's volume id.
    pub volume_id: Id,
    /// Header and block sizes.
    pub layout: Layout,
    /// The provider new files are wrapped with.
    pub provider: ProviderId,
    /// Unwrapped data keys.
    pub keys: Arc<KeyCache>,
    /// Where files' hole maps live (None: holes are stored as encrypted zeros).
    pub holes: Option<HoleStore>,
    /// The format version of the headers new files get (the vault config's).
    pub header_version: u16,
    /// The oldest key time (Unix seconds) of the headers loaded so far (`u64::MAX`: none with
    /// a recorded time yet), for `kmsfs status`.
    pub oldest_key_made: std::sync::atomic::AtomicU64,
}

impl Volume {
    /// A vault's shared state.
    pub fn new(volume_id: Id, layout: Layout, provider: ProviderId, keys: Arc<KeyCache>) -> Self {
        Volume {
            shared_store: Default::default(),
            tamper_events: Default::default(),
            volume_id,
            layout,
            provider,
            keys,
            holes: None,
            header_version: crate::format::header::FORMAT_VERSION,
            oldest_key_made: u64::MAX.into(),
        }
    }

    /// The same, writing headers of format `version` (the vault config's).
    pub fn with_header_version(mut self, version: u16) -> Self {
        self.header_version = version;
        self
    }

    /// Note a loaded header's key time for the oldest-key figure.
    fn saw_key_made(&self, made: Option<u64>) {
        if let Some(t) = made {
            self.oldest_key_made
                .fetch_min(t, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The same, with files' holes kept sparse through the maps in `store`.
    pub fn with_holes(mut self, store: Option<HoleStore>) -> Self {
        self.holes = store;
        self
    }

    /// The geometry of this vault's hole maps.
    pub fn hole_geometry(&self) -> HoleGeometry {
        HoleGeometry::new(self.layout.block_size())
    }

    /// Plain size of a backing file of `backing` bytes (lossy for damaged files: stat must work).
    pub fn plain_size(&self, backing: u64) -> u64 {
        self.layout.plain_size_lossy(backing)
    }
}

/// The decoded, authenticated header of a file that has content. The data key is not kept
/// here: every operation asks the key cache, so the TTL holds for open files too.
#[derive(Debug)]
struct Keyed {
    header: FileHeader,
    /// Which blocks may read as holes.
    holes: parking_lot::Mutex<holes::HoleMap>,
}

impl Keyed {
    fn new(header: FileHeader) -> Self {
        Keyed {
            header,
            holes: Default::default(),
        }
    }
}

/// One open encrypted file.
#[derive(Debug)]
pub struct CryptFile {
    file: File,
    /// The kernel may hold pages of this file read since its key was last found stale (or
    /// kept from an earlier open).
    pages_cached: std::sync::atomic::AtomicBool,
    direct: DirectReader,
    vault: Arc<Volume>,
    state: RwLock<Option<Keyed>>,
    /// Shared stores: the backing file's size and times when this host last dropped its cached
    /// pages (see `drop_stale_pages`).
    seen: parking_lot::Mutex<Option<crate::sys::Stamp>>,
}

/// Stored blocks as read from the backing file.
enum StoredBytes {
    Buffered(Vec<u8>),
    Direct(direct::Stored),
}

impl std::ops::Deref for StoredBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            StoredBytes::Buffered(v) => v,
            StoredBytes::Direct(d) => d,
        }
    }
}

impl CryptFile {
    /// Wrap an open backing file (opened read-write where possible).
    pub fn new(file: File, vault: Arc<Volume>) -> Self {
        if vault
            .shared_store
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            // Another host may have rewritten the file since this host cached its pages.
            crate::sys::drop_page_cache(std::os::fd::AsFd::as_fd(&file));
        }
        CryptFile {
            file,
            pages_cached: true.into(),
            direct: DirectReader::default(),
            vault,
            state: RwLock::new(None),
            seen: Default::default(),
        }
    }

    /// The backing file itself (for its metadata: owner, mode, xattrs).
    pub fn backing_file(&self) -> &File {
        &self.file
    }

    /// The backing path, for log lines (resolved now, so renames are followed).
    pub fn backing_path(&self) -> String {
        std::fs::read_link(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| PathBuf::from("<unknown>").display().to_string())
    }

    fn integrity(&self, block: Option<u64>, what: impl Into<String>) -> CryptError {
        CryptError::Integrity {
            path: self.backing_path(),
            block,
            what: what.into(),
        }
    }

    fn backing_len(&self) -> Result<u64, CryptError> {
        Ok(self.file.metadata()?.len())
    }

    /// The plain size, validated against the format (a damaged size is an integrity error).
    pub fn size(&self) -> Result<u64, CryptError> {
        let backing = self.backing_len()?;
        self.vault
            .layout
            .plain_size(backing)
            .map_err(|e| self.integrity(None, e.to_string()))
    }

    /// When the file's data key was made (Unix seconds; `None`: no content, or a format-2
    /// header), from its authenticated header.
    pub fn key_made(&self) -> Result<Option<u64>, CryptError> {
        if self.size()? == 0 && self.state.read().is_none() {
            return Ok(None);
        }
        self.ensure_loaded()?;
        Ok(self.state.read().as_ref().and_then(|k| k.header.key_made))
    }

    /// The file id, once the file has content (for the key cache's release on close).
    pub fn file_id(&self) -> Option<Id> {
        self.state.read().as_ref().map(|k| k.header.file_id)
    }

    /// The file id of the loaded header, or else the one the backing file's header names
    /// (not authenticated; no key needed). None for an empty or foreign file.
    pub fn stored_file_id(&self) -> Option<Id> {
        if let Some(id) = self.file_id() {
            return Some(id);
        }
        header_file_id(&self.file)
    }

    /// The block cipher of a loaded file, its key from the cache (or the KMS after expiry).
    fn cipher(&self, keyed: &Keyed) -> Result<BlockCipher, CryptError> {
        let key = self.key_for(&keyed.header)?;
        Ok(BlockCipher::new(
            key,
            self.vault.volume_id,
            keyed.header.file_id,
        ))
    }

    fn key_for(&self, header: &FileHeader) -> Result<Arc<crypto::DataKey>, CryptError> {
        let ctx = EncryptionContext::for_file(&self.vault.volume_id, &header.file_id);
        self.vault
            .keys
            .get(&header.file_id, header.wrapped_key(), &ctx)
            .map_err(|err| match err {
                // A wrapped key that will not open is a damaged or misplaced header.
                KeyError::BadWrappedKey(why) => self.integrity(None, why),
                err => CryptError::Key {
                    path: self.backing_path(),
                    err,
                },
            })
    }

    /// Read and authenticate the header (getting its data key from the cache or KMS).
    fn load(&self) -> Result<Keyed, CryptError> {
        let mut buf = vec![0u8; HEADER_SIZE];
        let n = read_full(&self.file, &mut buf, 0)?;
        let header = FileHeader::decode(&buf[..n])
            .map_err(|e| self.integrity(None, format!("header: {e}")))?;
        if header.volume_id != self.vault.volume_id {
            return Err(self.integrity(None, "header belongs to another vault"));
        }
        if u64::from(header.block_size) != self.vault.layout.block_size() as u64 {
            return Err(self.integrity(None, "header block size differs from the vault's"));
        }
        let key = self.key_for(&header)?;
        crypto::verify_header(&key, &header)
            .map_err(|_| self.integrity(None, "header tag does not verify"))?;
        self.vault.saw_key_made(header.key_made);
        Ok(Keyed::new(header))
    }

    /// A file with content but no loaded header: load it (under the write lock).
    fn ensure_loaded(&self) -> Result<(), CryptError> {
        if self.state.read().is_some() {
            return Ok(());
        }
        let mut state = self.state.write();
        if state.is_none() {
            *state = Some(self.load()?);
        }
        Ok(())
    }

    /// Read up to `len` plaintext bytes at `offset` (short at end of file).
    ///
    /// A file whose backing size is invalid (cut, torn by a crash, extended, foreign) still
    /// reads up to its last whole block; any read reaching its end fails, naming that block.
    ///
    /// On a shared store, a read that fails authentication may have raced another host's write
    /// (readers take no lock): it is read once more under the backing lock before it counts as
    /// damage, so readers on other hosts see old or new data, not `EIO`.
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, CryptError> {
        let _busy = InFlight::enter();
        if self.shared() {
            self.drop_stale_pages()?;
        }
        let r = match self.read_once(offset, len) {
            Err(CryptError::Integrity { .. }) if self.shared() => {
                self.reread_under_lock(offset, len)
            }
            r => r,
        };
        if r.is_ok() {
            self.pages_cached
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.counted(r)
    }

    /// Whether the kernel may hold pages of this file read since the last `take_pages_cached`.
    pub fn pages_may_be_cached(&self) -> bool {
        self.pages_cached.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the kernel may hold pages of this file read since the last call.
    pub fn take_pages_cached(&self) -> bool {
        self.pages_cached
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// Count an operation that fails on damage as one tamper event (`kmsfs status`).
    fn counted<T>(&self, r: Result<T, CryptError>) -> Result<T, CryptError> {
        if let Err(CryptError::Integrity { .. }) = &r {
            self.vault
                .tamper_events
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    /// Write `data` at `offset`, extending the file (a gap reads as zeros).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<usize, CryptError> {
        let r = self.write_uncounted(offset, data);
        if r.is_ok() {
            // Written data sits in the kernel's page cache too.
            self.pages_cached
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.counted(r)
    }

    /// Set the plain size: cut (re-sealing the new final block) or extend with zeros.
    pub fn truncate(&self, new_size: u64) -> Result<(), CryptError> {
        self.counted(self.truncate_uncounted(new_size))
    }

    /// Flush the backing file (and its hole map) to stable storage.
    pub fn sync(&self, data_only: bool) -> Result<(), CryptError> {
        if let Some(keyed) = self.state.read().as_ref() {
            keyed.holes.lock().sync()?;
        }
        if data_only {
            self.file.sync_data()?
        } else {
            self.file.sync_all()?
        }
        Ok(())
    }

    /// The loaded header of a file with content, loading it if needed.
    fn keyed<'a>(&self, state: &'a mut Option<Keyed>) -> Result<&'a Keyed, CryptError> {
        if state.is_none() {
            *state = Some(self.load()?);
        }
        state
            .as_ref()
            .ok_or_else(|| self.integrity(None, "header vanished"))
    }
}

/// The header of backing file `file` as stored: structure checked, not authenticated (no key
/// needed). None for an empty or foreign file.
pub fn stored_header(file: &File) -> Option<FileHeader> {
    let mut buf = vec![0u8; HEADER_SIZE];
    let n = read_full(file, &mut buf, 0).ok()?;
    FileHeader::decode(&buf[..n]).ok()
}

/// The file id the header of backing file `file` names (not authenticated; no key needed).
/// None for an empty or foreign file.
pub fn header_file_id(file: &File) -> Option<Id> {
    stored_header(file).map(|h| h.file_id)
}

/// Unwrap the key of the backing file `file` ahead of use, if it is a kmsfs file of `vault`
/// whose key is not cached. Returns whether a key was fetched. Damaged files are left for the
/// reader to report.
pub fn prefetch_key(file: &File, vault: &Volume) -> Result<bool, KeyError> {
    let Some(header) = stored_header(file) else {
        return Ok(false);
    };
    if header.volume_id != vault.volume_id || vault.keys.contains(&header.file_id) {
        return Ok(false);
    }
    let ctx = EncryptionContext::for_file(&vault.volume_id, &header.file_id);
    vault
        .keys
        .prefetch(&header.file_id, header.wrapped_key(), &ctx)?;
    Ok(true)
}

/// Whether the key of the open file is cached (false for a file whose header is not loaded
/// and whose key would need the KMS). Reads the header, no KMS call.
pub fn key_is_cached(file: &CryptFile) -> bool {
    // Empty or foreign: no key to fetch.
    file.stored_file_id()
        .is_none_or(|id| file.vault.keys.contains(&id))
}

/// Whether stored bytes are all zero: a hole (or data removed from the backing file). A sealed
/// block never is: its nonce is random.
fn is_zero(stored: &[u8]) -> bool {
    stored.iter().all(|&b| b == 0)
}

/// pread until `buf` is full or end of file; returns the bytes read.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod sparse_tests;
#[cfg(test)]
mod tests;
