//! One open encrypted file over a backing file: read and write at any offset, partial-block
//! read-modify-write, truncate, and the plain size ↔ backing size translation.
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

use crate::crypto::{self, BlockCipher};
use crate::direct_read::{self, DirectReader};
use crate::format::header::{FileHeader, HEADER_SIZE, ProviderId};
use crate::format::layout::BLOCK_OVERHEAD;
use crate::format::{FormatError, Id, Layout};
use crate::keys::{EncryptionContext, KeyCache, KeyError};

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
    // SAFETY: valid fd; the call only schedules I/O.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
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
pub struct Vault {
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
}

impl Vault {
    /// A vault's shared state.
    pub fn new(volume_id: Id, layout: Layout, provider: ProviderId, keys: Arc<KeyCache>) -> Self {
        Vault {
            shared_store: Default::default(),
            tamper_events: Default::default(),
            volume_id,
            layout,
            provider,
            keys,
        }
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
}

/// One open encrypted file.
#[derive(Debug)]
pub struct CryptFile {
    file: File,
    /// The kernel may hold pages of this file read since its key was last found stale (or
    /// kept from an earlier open).
    pages_cached: std::sync::atomic::AtomicBool,
    direct: DirectReader,
    vault: Arc<Vault>,
    state: RwLock<Option<Keyed>>,
    /// Shared stores: the backing file's size and times when this host last dropped its cached
    /// pages (see `drop_stale_pages`).
    seen: parking_lot::Mutex<Option<crate::sys::Stamp>>,
}

/// Stored blocks as read from the backing file.
enum StoredBytes {
    Buffered(Vec<u8>),
    Direct(direct_read::Stored),
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
    pub fn new(file: File, vault: Arc<Vault>) -> Self {
        if vault
            .shared_store
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            // Another host may have rewritten the file since this host cached its pages.
            // SAFETY: valid fd; advice only.
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
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
        let mut buf = vec![0u8; HEADER_SIZE];
        let n = read_full(&self.file, &mut buf, 0).ok()?;
        FileHeader::decode(&buf[..n]).ok().map(|h| h.file_id)
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
        Ok(Keyed { header })
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

    /// `read` without the retry.
    fn read_once(&self, offset: u64, len: usize) -> Result<Vec<u8>, CryptError> {
        loop {
            // Size and header under one read lock: a write or truncate cannot change the size
            // between computing it and opening the final block.
            let state = self.state.read();
            if state.is_none() && len > 0 && self.backing_len()? > 0 {
                drop(state);
                self.ensure_loaded()?;
                continue;
            }
            return self.read_locked(&state, offset, len);
        }
    }

    /// `read` with the state lock held.
    fn read_locked(
        &self,
        state: &Option<Keyed>,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, CryptError> {
        let backing = self.backing_len()?;
        let layout = &self.vault.layout;
        let (size, damaged_end) = match layout.plain_size(backing) {
            Ok(size) => (size, false),
            Err(_) => (layout.plain_size_lossy(backing), true),
        };
        if len == 0 || (offset >= size && !damaged_end) {
            return Ok(Vec::new());
        }
        let end = size.min(offset.saturating_add(len as u64));
        if damaged_end && (offset >= size || layout.block_of(end - 1) >= layout.block_of(size - 1))
        {
            let what = format!(
                "backing size {backing} is not a valid kmsfs size: the end of the file is missing or damaged"
            );
            return Err(self.integrity(Some(layout.block_of(size - 1)), what));
        }
        let keyed = state
            .as_ref()
            .ok_or_else(|| self.integrity(None, "header vanished"))?;
        let cipher = self.cipher(keyed)?;
        let mut out = vec![0u8; (end - offset) as usize];
        let first = layout.block_of(offset);
        let last = layout.block_of(end - 1);
        let mut index = first;
        while index <= last {
            let batch_end = last.min(index + BATCH_BLOCKS - 1);
            let stored = self.read_stored(index, batch_end, size)?;
            let lo = (offset.max(layout.plain_offset(index)) - offset) as usize;
            let hi = (end.min(layout.plain_offset(batch_end + 1)) - offset) as usize;
            let span = Span {
                first: index,
                last: batch_end,
                size,
                offset,
                end,
            };
            self.open_blocks(&cipher, &span, &stored, &mut out[lo..hi], true)?;
            index = batch_end + 1;
        }
        Ok(out)
    }

    /// Open blocks `span.first..=span.last` from `stored` into `out` (the part of the read range
    /// they cover). Large spans are split in two and opened on two cores at once.
    fn open_blocks(
        &self,
        cipher: &BlockCipher,
        span: &Span,
        stored: &[u8],
        out: &mut [u8],
        may_split: bool,
    ) -> Result<(), CryptError> {
        let layout = &self.vault.layout;
        let count = span.last - span.first + 1;
        if may_split && split_worthwhile(count) {
            // Every block before the last is full, so the split points are plain arithmetic.
            let mid = span.first + count / 2;
            let at_stored = ((mid - span.first) * layout.stored_block_size()) as usize;
            let at_out = (layout.plain_offset(mid)
                - span.offset.max(layout.plain_offset(span.first)))
                as usize;
            let (s1, s2) = stored.split_at(at_stored.min(stored.len()));
            let (o1, o2) = out.split_at_mut(at_out.min(out.len()));
            let (left, right) = (
                Span {
                    last: mid - 1,
                    ..*span
                },
                Span {
                    first: mid,
                    ..*span
                },
            );
            return std::thread::scope(|scope| {
                // No thread to be had (out of resources): the request fails, the daemon stays.
                let second = std::thread::Builder::new()
                    .spawn_scoped(scope, || self.open_blocks(cipher, &right, s2, o2, false))?;
                let r1 = self.open_blocks(cipher, &left, s1, o1, false);
                let r2 = second
                    .join()
                    .unwrap_or_else(|_| Err(self.integrity(Some(mid), "decryption thread failed")));
                r1.and(r2)
            });
        }
        let mut plain = vec![0u8; layout.block_size()];
        let (mut at, mut put) = (0usize, 0usize);
        for i in span.first..=span.last {
            let blen = layout.block_len(i, span.size);
            let slen = blen + BLOCK_OVERHEAD as usize;
            let block = stored
                .get(at..at + slen)
                .ok_or_else(|| self.integrity(Some(i), "block cut short"))?;
            let bstart = layout.plain_offset(i);
            let from = (span.offset.max(bstart) - bstart) as usize;
            let to = (span.end.min(bstart + blen as u64) - bstart) as usize;
            // A block the read covers whole is opened straight into the reply.
            let whole = from == 0 && to == blen;
            let target = if whole {
                &mut out[put..put + blen]
            } else {
                &mut plain[..blen]
            };
            cipher
                .open(i, block, target)
                .map_err(|e| self.integrity(Some(i), e.to_string()))?;
            if !whole {
                out[put..put + (to - from)].copy_from_slice(&plain[from..to]);
            }
            put += to - from;
            at += slen;
        }
        plain.fill(0);
        Ok(())
    }

    /// The stored bytes of blocks `first..=last` of a file of plain size `size`, in one read
    /// (large cold reads straight from the disk, see `direct_read`).
    fn read_stored(&self, first: u64, last: u64, size: u64) -> Result<StoredBytes, CryptError> {
        let layout = &self.vault.layout;
        let start = layout.backing_offset(first);
        let end =
            layout.backing_offset(last) + BLOCK_OVERHEAD + layout.block_len(last, size) as u64;
        let len = (end - start) as usize;
        // Shared stores drop their page cache on their own terms; keep them buffered.
        let direct = len >= direct_read::MIN_DIRECT_LEN
            && !self
                .vault
                .shared_store
                .load(std::sync::atomic::Ordering::Relaxed);
        let bytes = match direct
            .then(|| self.direct.read(&self.file, start, len))
            .flatten()
        {
            Some(stored) => StoredBytes::Direct(stored),
            None => {
                let mut buf = vec![0u8; len];
                let n = read_full(&self.file, &mut buf, start)?;
                buf.truncate(n);
                StoredBytes::Buffered(buf)
            }
        };
        if bytes.len() < len {
            return Err(self.integrity(
                Some(layout.block_of(layout.plain_offset(first) + bytes.len() as u64)),
                "block cut short",
            ));
        }
        Ok(bytes)
    }

    /// Decrypt block `index` of a file of plain size `size` (empty if it does not exist).
    fn read_block(
        &self,
        cipher: &BlockCipher,
        index: u64,
        size: u64,
    ) -> Result<Vec<u8>, CryptError> {
        let layout = &self.vault.layout;
        if index >= layout.block_count(size) {
            return Ok(Vec::new());
        }
        let stored = self.read_stored(index, index, size)?;
        let mut plain = vec![0u8; layout.block_len(index, size)];
        cipher
            .open(index, &stored, &mut plain)
            .map_err(|e| self.integrity(Some(index), e.to_string()))?;
        Ok(plain)
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

    fn write_uncounted(&self, offset: u64, data: &[u8]) -> Result<usize, CryptError> {
        if data.is_empty() {
            return Ok(0);
        }
        let _busy = InFlight::enter();
        let mut state = self.state.write();
        let _lock = self.lock_for_change(&mut state)?;
        let size = self.size()?;
        let new_size = size.max(offset.saturating_add(data.len() as u64));
        self.rewrite(&mut state, size, new_size, offset, data)?;
        Ok(data.len())
    }

    /// Serialize changes with writers on other hosts (a POSIX lock on the backing file, which
    /// GlusterFS and NFS honour) and drop a cached header that another host has replaced, so a
    /// read-modify-write never mixes two file ids. On one host the `RwLock` already serializes.
    fn lock_for_change(&self, state: &mut Option<Keyed>) -> Result<BackingLock<'_>, CryptError> {
        self.lock_backing(state, true)
    }

    /// `lock_for_change` with an exclusive (`write`) or shared lock.
    fn lock_backing(
        &self,
        state: &mut Option<Keyed>,
        write: bool,
    ) -> Result<BackingLock<'_>, CryptError> {
        let lock = BackingLock::acquire(&self.file, self.shared(), write)?;
        if let Some(keyed) = state.as_ref() {
            let mut id = [0u8; 16];
            let n = read_full(&self.file, &mut id, 32)?;
            if n < id.len() || id != keyed.header.file_id {
                *state = None;
            }
        }
        Ok(lock)
    }

    /// The second try of a failed read on a shared store: under a shared lock on the backing
    /// file no other host is halfway through a write, the pages are fresh and a header another
    /// host replaced is reloaded. Success means the first try raced a write (not counted as
    /// tampering); failure is damage.
    fn reread_under_lock(&self, offset: u64, len: usize) -> Result<Vec<u8>, CryptError> {
        let mut state = self.state.write();
        let _lock = self.lock_backing(&mut state, false)?;
        if state.is_none() && len > 0 && self.backing_len()? > 0 {
            *state = Some(self.load()?);
        }
        self.read_locked(&state, offset, len)
    }

    /// Shared stores: drop the backing file's cached pages if it changed (size, mtime or ctime)
    /// since they were last dropped. Another host's writes do not invalidate them, and a file
    /// opened again while a handle keeps it open on this host is served by the same
    /// `CryptFile`: without this, that open would read what was cached before the other
    /// host's write and close (close-to-open).
    fn drop_stale_pages(&self) -> Result<(), CryptError> {
        let stamp = crate::sys::stamp(&crate::sys::stat_fd(std::os::fd::AsFd::as_fd(&self.file))?);
        let mut seen = self.seen.lock();
        if *seen != Some(stamp) {
            // SAFETY: valid fd; advice only.
            unsafe { libc::posix_fadvise(self.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            *seen = Some(stamp);
        }
        Ok(())
    }

    fn shared(&self) -> bool {
        self.vault
            .shared_store
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Set the plain size: cut (re-sealing the new final block) or extend with zeros.
    pub fn truncate(&self, new_size: u64) -> Result<(), CryptError> {
        self.counted(self.truncate_uncounted(new_size))
    }

    fn truncate_uncounted(&self, new_size: u64) -> Result<(), CryptError> {
        let mut state = self.state.write();
        if new_size == 0 && self.backing_len()? == 0 {
            *state = None;
            return Ok(());
        }
        let _lock = self.lock_for_change(&mut state)?;
        if new_size == 0 {
            // An empty file has no header; its next write makes a new file id and key. This
            // also works on a damaged file: O_TRUNC replaces it.
            self.file.set_len(0)?;
            *state = None;
            return Ok(());
        }
        let size = self.size()?;
        if new_size == size {
            return Ok(());
        }
        if new_size > size {
            return self.rewrite(&mut state, size, new_size, new_size, &[]);
        }
        let layout = self.vault.layout;
        let cipher = self.cipher(self.keyed(&mut state)?)?;
        let last = layout.block_of(new_size);
        let mut plain = self.read_block(&cipher, last, size)?;
        plain.truncate(layout.block_len(last, new_size));
        let mut out = Vec::with_capacity(plain.len() + BLOCK_OVERHEAD as usize);
        cipher
            .seal(last, &plain, &mut out)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        plain.fill(0);
        self.file.write_all_at(&out, layout.backing_offset(last))?;
        self.file.set_len(layout.backing_size(new_size))?;
        Ok(())
    }

    /// Overwrite the plain range `offset .. offset + len` with zeros, keeping the size
    /// (punch hole / zero range: the zeros stay encrypted and authenticated).
    pub fn zero_range(&self, offset: u64, len: u64) -> Result<(), CryptError> {
        let size = self.size()?;
        let end = size.min(offset.saturating_add(len));
        let mut at = offset;
        let chunk = BATCH_BLOCKS * self.vault.layout.block_size() as u64;
        while at < end {
            let n = chunk.min(end - at);
            self.write(at, &vec![0u8; n as usize])?;
            at += n;
        }
        Ok(())
    }

    /// Flush the backing file to stable storage.
    pub fn sync(&self, data_only: bool) -> Result<(), CryptError> {
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

    /// A new header and data key (from the pool when it has one) for a file with no content.
    fn create_header(&self) -> Result<(Keyed, BlockCipher), CryptError> {
        let (file_id, key, wrapped) = self
            .vault
            .keys
            .new_file_key(&self.vault.volume_id)
            .map_err(|err| CryptError::Key {
                path: self.backing_path(),
                err,
            })?;
        let block_size = self.vault.layout.block_size() as u32;
        let mut header = FileHeader::new(
            block_size,
            self.vault.volume_id,
            file_id,
            self.vault.provider,
            wrapped,
        )
        .map_err(|e: FormatError| std::io::Error::other(e.to_string()))?;
        header.commitment = crypto::key_commitment(&key, &header);
        let cipher = BlockCipher::new(key, self.vault.volume_id, file_id);
        Ok((Keyed { header }, cipher))
    }

    /// Re-seal the blocks a write of `data` at `offset` changes, growing the file from `size`
    /// to `new_size`. Blocks before the old final block are never rewritten unless written to.
    fn rewrite(
        &self,
        state: &mut Option<Keyed>,
        size: u64,
        new_size: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<(), CryptError> {
        let layout = self.vault.layout;
        let mut new_header = None;
        let cipher = if size == 0 {
            let (keyed, cipher) = self.create_header()?;
            new_header = Some(keyed.header.encode());
            *state = Some(keyed);
            cipher
        } else {
            self.cipher(self.keyed(state)?)?
        };
        let data_end = offset + data.len() as u64;
        // The old final block changes whenever the file grows; written blocks change anyway.
        let first = if new_size > size {
            layout.block_of(offset.min(size))
        } else {
            layout.block_of(offset)
        };
        let last = if new_size > size {
            layout.block_count(new_size) - 1
        } else {
            layout.block_of(data_end - 1)
        };
        let old_count = layout.block_count(size);
        let mut index = first;
        while index <= last {
            let batch_end = last.min(index + BATCH_BLOCKS - 1);
            // Each block's new plaintext: borrowed from `data` or the zero page when the write
            // or a gap covers it whole; only the (at most two) partly written blocks that hold
            // old data are decrypted and merged.
            let mut plains: Vec<Cow<'_, [u8]>> =
                Vec::with_capacity((batch_end - index + 1) as usize);
            for i in index..=batch_end {
                let blen = layout.block_len(i, new_size);
                let bstart = layout.plain_offset(i);
                let from = offset.max(bstart).min(bstart + blen as u64);
                let to = data_end.min(bstart + blen as u64).max(from);
                let src = if to > from {
                    &data[(from - offset) as usize..(to - offset) as usize]
                } else {
                    &[]
                };
                plains.push(if src.len() == blen {
                    Cow::Borrowed(src)
                } else if i >= old_count && src.is_empty() {
                    Cow::Borrowed(&ZEROS[..blen])
                } else {
                    let mut plain = self.read_block(&cipher, i, size)?;
                    plain.resize(blen, 0);
                    plain[(from - bstart) as usize..(to - bstart) as usize].copy_from_slice(src);
                    Cow::Owned(plain)
                });
            }
            let header = new_header.take();
            let head_len = header.as_ref().map_or(0, |h| h.len());
            let sealed_len: usize = plains
                .iter()
                .map(|p| p.len() + BLOCK_OVERHEAD as usize)
                .sum();
            let mut out = vec![0u8; head_len + sealed_len];
            let sealed = self.seal_blocks(&cipher, index, &plains, &mut out[head_len..], true);
            for p in &mut plains {
                if let Cow::Owned(merged) = p {
                    merged.fill(0);
                }
            }
            sealed?;
            // The first write of a file puts header and blocks down in one call.
            let at = match header {
                Some(h) => {
                    out[..head_len].copy_from_slice(&h);
                    0
                }
                None => layout.backing_offset(index),
            };
            self.file.write_all_at(&out, at)?;
            if new_size > size && out.len() >= STREAM_WRITEBACK_MIN {
                start_writeback(&self.file, at, out.len());
            }
            index = batch_end + 1;
        }
        Ok(())
    }

    /// Seal blocks `first..` from `plains` into `out` (exactly their stored sizes). Large runs
    /// are split in two and sealed on two cores at once.
    fn seal_blocks(
        &self,
        cipher: &BlockCipher,
        first: u64,
        plains: &[Cow<'_, [u8]>],
        out: &mut [u8],
        may_split: bool,
    ) -> Result<(), CryptError> {
        let sealing_failed = |e: crypto::CryptoError| std::io::Error::other(e.to_string());
        if may_split && split_worthwhile(plains.len() as u64) {
            let mid = plains.len() / 2;
            let at: usize = plains[..mid]
                .iter()
                .map(|p| p.len() + BLOCK_OVERHEAD as usize)
                .sum();
            let (p1, p2) = plains.split_at(mid);
            let (o1, o2) = out.split_at_mut(at);
            return std::thread::scope(|scope| {
                let second = std::thread::Builder::new().spawn_scoped(scope, || {
                    self.seal_blocks(cipher, first + mid as u64, p2, o2, false)
                })?;
                let r1 = self.seal_blocks(cipher, first, p1, o1, false);
                let r2 = second.join().unwrap_or_else(|_| {
                    Err(std::io::Error::other("encryption thread failed").into())
                });
                r1.and(r2)
            });
        }
        cipher
            .seal_run(first, plains, out)
            .map_err(sealing_failed)?;
        Ok(())
    }
}

/// Unwrap the key of the backing file `file` ahead of use, if it is a kmsfs file of `vault`
/// whose key is not cached. Returns whether a key was fetched. Damaged files are left for the
/// reader to report.
pub fn prefetch_key(file: &File, vault: &Vault) -> Result<bool, KeyError> {
    let mut buf = vec![0u8; HEADER_SIZE];
    let Ok(n) = read_full(file, &mut buf, 0) else {
        return Ok(false);
    };
    let Ok(header) = FileHeader::decode(&buf[..n]) else {
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

/// A whole-file OFD lock on a backing file, exclusive for changes or shared for a second try
/// at a read, released on drop.
struct BackingLock<'a> {
    file: Option<&'a File>,
    /// On a shared store: drop stale cached pages after locking, flush (a write lock) before
    /// unlocking, so the next host's read-modify-write or read starts from what this one wrote
    /// (as NFS does).
    shared: bool,
    write: bool,
}

impl<'a> BackingLock<'a> {
    fn acquire(file: &'a File, shared: bool, write: bool) -> std::io::Result<Self> {
        static UNSUPPORTED: std::sync::atomic::AtomicBool =
            std::sync::atomic::AtomicBool::new(false);
        let none = BackingLock {
            file: None,
            shared,
            write,
        };
        // On one host the state lock already serializes writers, and other local users must
        // not be able to stall the mount by locking a backing file they can open.
        if !shared || UNSUPPORTED.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(none);
        }
        let kind = if write { libc::F_WRLCK } else { libc::F_RDLCK };
        match ofd_lock_within(file, kind as libc::c_short, LOCK_WAIT) {
            Ok(()) => {
                if shared {
                    // SAFETY: valid fd; advice only.
                    unsafe {
                        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED)
                    };
                }
                Ok(BackingLock {
                    file: Some(file),
                    ..none
                })
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::ENOLCK | libc::EOPNOTSUPP | libc::ENOSYS)
                ) =>
            {
                // A backing store without locks: one host per vault stays safe.
                tracing::warn!(
                    "the backing file system has no POSIX locks ({e}): concurrent writers on several hosts are not serialized"
                );
                UNSUPPORTED.store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(none)
            }
            Err(e) => Err(e),
        }
    }
}

impl Drop for BackingLock<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.file {
            if self.shared && self.write {
                if let Err(e) = f.sync_data() {
                    tracing::error!("flushing a shared backing file before unlocking: {e}");
                }
            }
            let _ = ofd_lock(f, libc::F_UNLCK as libc::c_short, libc::F_OFD_SETLK);
        }
    }
}

/// How long a writer on a shared store waits for another host's lock on a backing file before
/// the operation fails (EIO, logged): long enough for any honest write, short enough that a
/// lock held forever (a hung host, or anyone who can open the backing file) cannot hang it.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Take an OFD lock of `kind`, polling (1 ms doubling to 100 ms) until `wait` has passed.
fn ofd_lock_within(
    file: &File,
    kind: libc::c_short,
    wait: std::time::Duration,
) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + wait;
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match ofd_lock(file, kind, libc::F_OFD_SETLK) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => {
                let now = std::time::Instant::now();
                if now >= deadline {
                    tracing::error!(
                        file = %crate::sys::describe(std::os::fd::AsFd::as_fd(file)),
                        "another process has held a lock on this backing file for {} s: failing the operation",
                        wait.as_secs()
                    );
                    return Err(std::io::Error::from_raw_os_error(libc::EIO));
                }
                std::thread::sleep(pause.min(deadline - now));
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            r => return r,
        }
    }
}

fn ofd_lock(file: &File, kind: libc::c_short, cmd: libc::c_int) -> std::io::Result<()> {
    // SAFETY: zeroed flock is valid; l_pid must be 0 for OFD locks.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    loop {
        // SAFETY: valid fd and flock pointer.
        if unsafe { libc::fcntl(file.as_raw_fd(), cmd, &fl) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
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
mod tests {
    use super::*;
    use crate::keys::local::LocalProvider;
    use std::time::Duration;

    struct Fixture {
        _dir: tempfile::TempDir,
        vault: Arc<Vault>,
        path: PathBuf,
    }

    fn fixture(bs: u32) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let provider = LocalProvider::create(&dir.path().join("key")).expect("key");
        let keys = Arc::new(KeyCache::new(
            Arc::new(provider),
            Duration::from_secs(60),
            Duration::ZERO,
            16,
        ));
        let layout = Layout::new(HEADER_SIZE as u64, bs).expect("layout");
        let vault = Arc::new(Vault::new([3; 16], layout, ProviderId::Local, keys));
        let path = dir.path().join("f");
        File::create(&path).expect("create");
        Fixture {
            _dir: dir,
            vault,
            path,
        }
    }

    impl Fixture {
        fn open(&self) -> CryptFile {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.path)
                .expect("open");
            CryptFile::new(f, self.vault.clone())
        }
        fn backing(&self) -> Vec<u8> {
            std::fs::read(&self.path).expect("read backing")
        }
        fn set_backing(&self, b: &[u8]) {
            std::fs::write(&self.path, b).expect("write backing");
        }
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn round_trip_sizes_at_both_block_sizes() {
        for bs in [4096u32, 65536] {
            let b = bs as usize;
            for n in [0, 1, b - 1, b, b + 1, 3 * b + 7] {
                let fx = fixture(bs);
                let f = fx.open();
                let data = pattern(n, 1);
                f.write(0, &data).expect("write");
                assert_eq!(
                    fx.backing().len() as u64,
                    fx.vault.layout.backing_size(n as u64)
                );
                let g = fx.open();
                assert_eq!(g.read(0, n + 10).expect("read"), data, "bs {bs} size {n}");
            }
        }
    }

    #[test]
    fn large_reads_split_across_cores_match() {
        let fx = fixture(4096);
        let f = fx.open();
        let data = pattern((1 << 20) + 3, 9);
        f.write(0, &data).expect("write");
        for (off, len) in [
            (0usize, data.len()),
            (5, 700_000),
            (4096 * 31, 4096 * 40 + 1),
            (1 << 19, 1 << 20),
        ] {
            let got = f.read(off as u64, len).expect("read");
            assert_eq!(
                got,
                &data[off..data.len().min(off + len)],
                "read at {off} of {len}"
            );
        }
        // a damaged block in the second half is still reported
        let mut b = fx.backing();
        let at = fx.vault.layout.backing_offset(200) as usize + 50;
        b[at] ^= 1;
        fx.set_backing(&b);
        match fx.open().read(0, 1 << 20) {
            Err(CryptError::Integrity {
                block: Some(200), ..
            }) => {}
            other => panic!("expected block 200 damaged, got {other:?}"),
        }
    }

    #[test]
    fn random_writes_match_a_model() {
        let fx = fixture(4096);
        let f = fx.open();
        let mut model: Vec<u8> = Vec::new();
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 33
        };
        for round in 0..200 {
            let op = next() % 10;
            if op < 7 {
                let off = next() % 40_000;
                let len = (next() % 9000) as usize;
                let data = pattern(len, round as u8);
                f.write(off, &data).expect("write");
                let end = off as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].copy_from_slice(&data);
            } else if op < 9 {
                let n = next() % 45_000;
                f.truncate(n).expect("truncate");
                model.resize(n as usize, 0);
            } else {
                let off = next() % 40_000;
                let len = next() % 10_000;
                f.zero_range(off, len).expect("zero");
                let end = model.len().min((off + len) as usize);
                if (off as usize) < end {
                    model[off as usize..end].fill(0);
                }
            }
            assert_eq!(f.size().expect("size"), model.len() as u64);
            let off = (next() % 45_000) as usize;
            let got = f.read(off as u64, 5000).expect("read");
            let want = model.get(off..model.len().min(off + 5000)).unwrap_or(&[]);
            assert_eq!(got, want, "round {round}");
        }
        assert_eq!(fx.open().read(0, 1 << 20).expect("reread"), model);
    }

    #[test]
    fn empty_file_needs_no_key_until_first_byte() {
        let fx = fixture(4096);
        let f = fx.open();
        assert_eq!(f.read(0, 100).expect("read"), Vec::<u8>::new());
        f.truncate(0).expect("truncate");
        assert_eq!(fx.vault.keys.stats().kms_generate, 0);
        assert!(fx.backing().is_empty());
    }

    #[test]
    fn append_never_changes_earlier_full_blocks() {
        let fx = fixture(4096);
        let f = fx.open();
        f.write(0, &pattern(3 * 4096 + 100, 2)).expect("write");
        let before = fx.backing();
        let full_end = fx.vault.layout.backing_offset(3) as usize;
        f.write(3 * 4096 + 100, &pattern(5000, 3)).expect("append");
        assert_eq!(&fx.backing()[..full_end], &before[..full_end]);
    }

    fn expect_integrity(f: &CryptFile, what: &str) {
        match f.read(0, 1 << 20) {
            Err(CryptError::Integrity { .. }) => {}
            other => panic!("{what}: expected integrity error, got {other:?}"),
        }
    }

    #[test]
    fn every_changed_byte_is_rejected() {
        let fx = fixture(512);
        fx.open().write(0, &pattern(1200, 4)).expect("write");
        let good = fx.backing();
        // every byte of the blocks and of the header but the inactive slot (580..1024)
        for at in (0..good.len()).filter(|&i| !(580..1024).contains(&i)) {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            fx.set_backing(&bad);
            fx.vault.keys.clear();
            expect_integrity(&fx.open(), &format!("byte {at}"));
        }
    }

    #[test]
    fn moved_blocks_and_cuts_are_rejected() {
        let fx = fixture(512);
        fx.open().write(0, &pattern(2000, 5)).expect("write");
        let good = fx.backing();
        let l = fx.vault.layout;
        let sb = l.stored_block_size() as usize;
        let b0 = l.backing_offset(0) as usize;
        // swap blocks 0 and 1
        let mut swapped = good.clone();
        swapped[b0..b0 + 2 * sb].rotate_left(sb);
        fx.set_backing(&swapped);
        expect_integrity(&fx.open(), "swapped blocks");
        // truncation at every block boundary, and a header without blocks
        for k in 0..l.block_count(2000) {
            fx.set_backing(&good[..l.backing_offset(k) as usize]);
            expect_integrity(&fx.open(), &format!("cut at block {k}"));
        }
        // a stray block appended
        let mut longer = good.clone();
        longer.extend_from_slice(&good[b0..b0 + sb]);
        fx.set_backing(&longer);
        expect_integrity(&fx.open(), "stray block");
    }

    #[test]
    fn shared_store_reads_retry_under_the_lock() {
        // Host B keeps the file open while host A replaces it (O_TRUNC, new file id and key):
        // B's cached header no longer opens the blocks, and on a shared store the read is
        // retried under the backing lock with the new header instead of failing.
        let fx = fixture(512);
        fx.vault
            .shared_store
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let (a, b) = (fx.open(), fx.open());
        a.write(0, &pattern(3000, 1)).expect("first version");
        assert_eq!(b.read(0, 5000).expect("B reads v1"), pattern(3000, 1));
        a.truncate(0).expect("truncate");
        a.write(0, &pattern(2500, 2)).expect("second version");
        assert_eq!(b.read(0, 5000).expect("B reads v2"), pattern(2500, 2));
        let events = std::sync::atomic::Ordering::Relaxed;
        assert_eq!(
            fx.vault.tamper_events.load(events),
            0,
            "a race is no damage"
        );
        // Real damage still fails after the retry, and counts.
        let mut bad = fx.backing();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        fx.set_backing(&bad);
        expect_integrity(&b, "damaged after the retry");
        assert!(fx.vault.tamper_events.load(events) > 0);
        // Not shared: no retry, the stale header fails.
        fx.vault
            .shared_store
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let c = fx.open();
        assert_eq!(c.read(0, 10).expect("C reads"), pattern(10, 2));
        a.truncate(0).expect("truncate");
        a.write(0, &pattern(2500, 3)).expect("third version");
        expect_integrity(&c, "stale header, no retry");
    }

    #[test]
    fn blocks_and_headers_from_another_file_are_rejected() {
        let a = fixture(512);
        a.open().write(0, &pattern(2000, 6)).expect("write a");
        let b_path = a.path.with_file_name("g");
        File::create(&b_path).expect("create g");
        let open_b = || {
            CryptFile::new(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&b_path)
                    .expect("open g"),
                a.vault.clone(),
            )
        };
        open_b().write(0, &pattern(2000, 7)).expect("write b");
        let fa = a.backing();
        let fb = std::fs::read(&b_path).expect("read g");
        let l = a.vault.layout;
        let (b1, sb) = (l.backing_offset(1) as usize, l.stored_block_size() as usize);
        // block 1 of b copied into a at the same index
        let mut x = fa.clone();
        x[b1..b1 + sb].copy_from_slice(&fb[b1..b1 + sb]);
        a.set_backing(&x);
        expect_integrity(&a.open(), "block from another file");
        // the whole header of b on a's blocks
        let mut y = fa.clone();
        y[..HEADER_SIZE].copy_from_slice(&fb[..HEADER_SIZE]);
        a.set_backing(&y);
        expect_integrity(&a.open(), "header from another file");
        // only b's wrapped key slot in a's header
        let mut z = fa.clone();
        z[128..HEADER_SIZE].copy_from_slice(&fb[128..HEADER_SIZE]);
        a.set_backing(&z);
        a.vault.keys.clear();
        expect_integrity(&a.open(), "wrapped key from another file");
    }

    #[test]
    fn foreign_files_are_integrity_errors() {
        let fx = fixture(4096);
        fx.set_backing(b"abc");
        assert!(matches!(
            fx.open().size(),
            Err(CryptError::Integrity { .. })
        ));
        expect_integrity(&fx.open(), "three bytes");
        fx.set_backing(&[0u8; 5000]);
        expect_integrity(&fx.open(), "zeros");
    }

    #[test]
    fn a_torn_tail_keeps_the_intact_prefix_readable() {
        let fx = fixture(4096);
        let data = pattern(5 * 4096 + 10, 8);
        fx.open().write(0, &data).expect("write");
        let good = fx.backing();
        // a crash mid-append: the backing file ends inside block 4
        fx.set_backing(&good[..fx.vault.layout.backing_offset(4) as usize + 100]);
        let f = fx.open();
        assert_eq!(
            f.read(0, 3 * 4096).expect("intact prefix"),
            &data[..3 * 4096]
        );
        match f.read(0, 10 * 4096) {
            Err(CryptError::Integrity { block: Some(4), .. }) => {}
            other => panic!("torn end not reported as block 4: {other:?}"),
        }
    }
}
