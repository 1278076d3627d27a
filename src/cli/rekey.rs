//! `kmsfs rekey VAULT [--path PREFIX] [--older-than DAYS] [--dry-run]`: re-encrypt files under
//! fresh data keys and file ids (after a data key leaked: a core dump, a compromised host), on
//! an unmounted vault.
//!
//! Per file, crash-safe: the new file is written complete under `.kmsfs/rekey/` (same file
//! system), with the old one's owner, mode, extended attributes and times, and fsynced; only
//! then does one `rename` put it in the old one's place, and the directory is fsynced. A kill
//! at any moment leaves the old file or the new one, never a mix. The old file's hole map goes
//! after the rename (a crash in between leaves an orphan map, which grants nothing and which
//! `fsck --repair-orphans` removes). Every file is reached from the vault's root descriptor
//! without following a symbolic link (openat2 RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), so a
//! directory swapped for a link meanwhile cannot lead a write outside the vault.
//!
//! Resumable: `.kmsfs/rekey/journal` lists the new file ids of files done; a run that finds it
//! skips them, removes half-written new files left by a kill, and deletes the journal once
//! every selected file is done. Holding this host's mount lock, it refuses a mounted vault (the
//! mount's open files still use their old keys).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::walk::{self, FileItem, Progress};
use super::{CliError, CliResult, RekeyArgs, status};
use crate::content::{CryptError, CryptFile, Volume, stored_header};
use crate::format::Id;
use crate::sys::{self, TimeSpec};
use crate::vault::{self, MetaDir, VaultConfig};

/// The directory under `.kmsfs` holding new files being written and the journal.
const REKEY_DIR: &str = "rekey";
/// The journal's name inside it.
const JOURNAL: &str = "journal";
/// Prefix of a new file being written.
const TEMP_PREFIX: &str = "new-";
/// Plain bytes copied per read.
const CHUNK: usize = 1 << 20;

/// What happened to one file.
enum Outcome {
    /// Re-encrypted under a new key (dry run: would be); its plain size.
    Rekeyed(u64),
    /// Done by an earlier, interrupted run.
    Already,
    /// No content: no key.
    Empty,
    /// Its key is younger than `--older-than`.
    Young,
    /// Outside `--path`.
    Outside,
    /// Has more than one name: a rename would split the link.
    Linked(u64),
    /// Damaged or foreign: left as it was.
    Damaged(String),
    /// Gone, replaced by a link, or refused by the backing store: left as it was.
    Skipped(String),
    /// The key service or the backing store failed: the run stops, to be resumed.
    Failed(String),
}

/// What every file needs.
struct Job<'a> {
    vault: &'a Arc<Volume>,
    /// The vault directory (canonical) and its descriptor, which every file is reached from.
    dir: &'a Path,
    root: &'a File,
    /// `.kmsfs/holes`, synced before a new file with a hole map takes its place.
    holes_dir: Option<&'a File>,
    /// File ids that more than one backing file carries (copies made in the backing store):
    /// their hole maps stay after a rekey of one of them.
    shared_ids: &'a HashSet<Id>,
    /// `.kmsfs/rekey` (None in a dry run).
    work: Option<&'a File>,
    /// New file ids of files done, by this run or an interrupted one.
    done: &'a HashSet<Id>,
    journal: Option<&'a Mutex<File>>,
    prefix: Option<&'a Path>,
    /// Keys made before this (Unix seconds) are old enough; None: every key.
    made_before: Option<u64>,
    dry_run: bool,
    serial: AtomicU64,
}

/// Run `kmsfs rekey`.
pub fn run(args: &RekeyArgs) -> CliResult {
    let dir = args
        .vault
        .canonicalize()
        .map_err(|e| CliError::target(format!("vault {}: {e}", args.vault.display())))?;
    let cfg = VaultConfig::load(&dir)?;
    let _lock = walk::hold_unmounted(
        &dir,
        args.host_id.as_deref(),
        &cfg.volume_id,
        args.dry_run,
        "rekey",
    )?;
    // Made when missing (a real run): new files keep their holes only where the vault has
    // hole maps.
    let holes_dir = vault::hole_dir(&dir, !args.dry_run)?.map(File::from);
    let off = walk::open(&dir, &args.trust, false)?;
    let tree = walk::walk(&dir, off.encrypted_names(), off.names.as_ref());
    let meta = MetaDir::open(&dir, false)?;
    let work = if args.dry_run {
        None
    } else {
        Some(open_work_dir(&meta)?)
    };
    let done = match &work {
        Some(w) => resume(w, &off.vault)?,
        None => HashSet::new(),
    };
    if !done.is_empty() {
        println!(
            "resuming an interrupted rekey: {} files were done",
            done.len()
        );
    }
    let journal = match &work {
        Some(w) => Some(Mutex::new(open_journal(w)?)),
        None => None,
    };
    let made_before = args
        .older_than
        .map(|days| sys::unix_now().saturating_sub(days.saturating_mul(86_400)));
    let root = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(&dir)
        .map_err(|e| CliError::target(format!("vault {}: {e}", dir.display())))?;
    // Only a real run removes hole maps, and only ids that have one can share one.
    let shared_ids = match &off.vault.holes {
        Some(store) if !args.dry_run && !store.ids().unwrap_or_default().is_empty() => {
            shared_file_ids(&tree.files)
        }
        _ => HashSet::new(),
    };
    let job = Job {
        vault: &off.vault,
        dir: &dir,
        root: &root,
        holes_dir: holes_dir.as_ref(),
        shared_ids: &shared_ids,
        work: work.as_ref(),
        done: &done,
        journal: journal.as_ref(),
        prefix: args.path.as_deref(),
        made_before,
        dry_run: args.dry_run,
        serial: AtomicU64::new(0),
    };
    let started = Instant::now();
    let label = if args.dry_run {
        "rekey (dry run)"
    } else {
        "rekey"
    };
    let progress = Progress::new(label, tree.files.len() as u64);
    let stop = AtomicBool::new(false);
    let outcomes = walk::parallel(&tree.files, args.jobs, &stop, &progress, |f| {
        let o = rekey_one(&job, f);
        if let Outcome::Failed(_) = o {
            stop.store(true, Ordering::Relaxed);
        }
        o
    });
    progress.finish();
    report(&tree, outcomes, args, started, work.as_ref())
}

/// Print the per-file problems and the summary; the exit status says whether all is done.
fn report(
    tree: &walk::Tree,
    outcomes: Vec<Option<Outcome>>,
    args: &RekeyArgs,
    started: Instant,
    work: Option<&File>,
) -> CliResult {
    let (mut rekeyed, mut bytes, mut already, mut empty, mut young) = (0u64, 0u64, 0, 0, 0);
    let (mut linked, mut damaged, mut failed, mut not_started) = (0u64, 0u64, 0u64, 0u64);
    let mut skipped = 0u64;
    for (f, o) in tree.files.iter().zip(outcomes) {
        let name = walk::describe(f.plain.as_deref(), &f.backing);
        match o {
            Some(Outcome::Rekeyed(n)) => {
                rekeyed += 1;
                bytes += n;
                if args.dry_run {
                    println!("would rekey {name}");
                }
            }
            Some(Outcome::Already) => already += 1,
            Some(Outcome::Empty) => empty += 1,
            Some(Outcome::Young) => young += 1,
            Some(Outcome::Outside) => {}
            Some(Outcome::Linked(n)) => {
                linked += 1;
                println!(
                    "{} {name}: it has {n} names (hard links), which one rename cannot keep together; copy it to a new name and delete the old links, then rekey again",
                    if args.dry_run {
                        "WOULD SKIP"
                    } else {
                        "SKIPPED"
                    }
                );
            }
            Some(Outcome::Damaged(why)) => {
                damaged += 1;
                println!("DAMAGED {name}: {why} (left as it was)");
            }
            Some(Outcome::Skipped(why)) => {
                skipped += 1;
                println!("SKIPPED {name}: {why} (left as it was)");
            }
            Some(Outcome::Failed(why)) => {
                failed += 1;
                println!("FAILED {name}: {why}");
            }
            None => not_started += 1,
        }
    }
    let verb = if args.dry_run {
        "would rekey"
    } else {
        "rekeyed"
    };
    println!(
        "{verb} {rekeyed} files ({}) in {:.1} s: new data keys and file ids; skipped {empty} empty{}{}",
        status::bytes(bytes),
        started.elapsed().as_secs_f64(),
        if already > 0 {
            format!(", {already} done by the interrupted run")
        } else {
            String::new()
        },
        match args.older_than {
            Some(d) => format!(", {young} with keys younger than {d} days"),
            None => String::new(),
        },
    );
    if tree.problems.iter().any(|p| p.plain.is_none()) && args.path.is_some() {
        println!(
            "note: some names do not decrypt (see kmsfs fsck): files under them were not considered"
        );
    }
    if failed > 0 || not_started > 0 {
        return Err(CliError::key(format!(
            "rekey stopped ({failed} failed, {not_started} not started): run kmsfs rekey again to resume"
        )));
    }
    if let Some(w) = work {
        // Every selected file is done: the next rekey starts afresh.
        match sys::unlinkat(w.as_fd(), OsStr::new(JOURNAL), 0) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                eprintln!("kmsfs: warning: cannot remove the rekey journal: {e}")
            }
            _ => {}
        }
    }
    if damaged > 0 {
        return Err(CliError::damage(format!(
            "{damaged} damaged files were not rekeyed (kmsfs fsck tells more)"
        )));
    }
    if (linked > 0 || skipped > 0) && !args.dry_run {
        return Err(format!(
            "{} files were not rekeyed ({linked} hard-linked, {skipped} skipped: listed above)",
            linked + skipped
        )
        .into());
    }
    Ok(())
}

/// Rekey one file (or, in a dry run, decide whether it would be).
fn rekey_one(job: &Job<'_>, f: &FileItem) -> Outcome {
    if let Some(prefix) = job.prefix {
        if !f
            .plain
            .as_deref()
            .is_some_and(|p| walk::is_under(p, prefix))
        {
            return Outcome::Outside;
        }
    }
    let (parent, name) = match parent_of(job, &f.backing) {
        Ok(p) => p,
        Err(e) => return Outcome::Skipped(format!("cannot open its directory: {e}")),
    };
    let file = match sys::openat(
        parent.as_fd(),
        &name,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
        0,
    ) {
        Ok(fd) => File::from(fd),
        Err(e) => return Outcome::Skipped(format!("cannot open: {e}")),
    };
    let meta = match file.metadata() {
        Ok(m) if m.is_file() => m,
        Ok(_) => return Outcome::Skipped("no longer a regular file".into()),
        Err(e) => return Outcome::Skipped(e.to_string()),
    };
    if meta.len() == 0 {
        return Outcome::Empty;
    }
    let Some(header) = stored_header(&file) else {
        return Outcome::Damaged("its header does not decode".into());
    };
    if job.done.contains(&header.file_id) {
        return Outcome::Already;
    }
    // Chosen by the recorded time (no key needed); a forged time breaks the key commitment,
    // which every file rekeyed is checked against, and which every read checks.
    if let (Some(before), Some(made)) = (job.made_before, header.key_made) {
        if made >= before {
            return Outcome::Young;
        }
    }
    if meta.nlink() > 1 {
        return Outcome::Linked(meta.nlink());
    }
    let old = CryptFile::new(file, job.vault.clone());
    let size = match old.size() {
        Ok(s) => s,
        Err(e) => return Outcome::Damaged(e.to_string()),
    };
    if job.dry_run {
        return Outcome::Rekeyed(size);
    }
    let Some(work) = job.work else {
        return Outcome::Failed("no work directory".into());
    };
    let n = job.serial.fetch_add(1, Ordering::Relaxed);
    let temp = OsString::from(format!("{TEMP_PREFIX}{}-{n}", hex::encode(header.file_id)));
    match replace(job, work, &temp, &old, &meta, (&parent, &name), size) {
        Ok(new_id) => {
            if let Some(j) = job.journal {
                let mut j = j.lock().unwrap_or_else(|p| p.into_inner());
                // One write per line, not synced: a lost line only means the file is done
                // once more.
                if let Err(e) = j.write_all(format!("{}\n", hex::encode(new_id)).as_bytes()) {
                    eprintln!("kmsfs: warning: rekey journal: {e}");
                }
            }
            if job.shared_ids.contains(&header.file_id) {
                // Another backing file carries this id (a copy): its holes need the map.
            } else if let Some(store) = &job.vault.holes {
                if let Err(e) = store.remove(&header.file_id) {
                    eprintln!(
                        "kmsfs: warning: the old hole map of {} stays (fsck --repair-orphans removes it): {e}",
                        f.backing.display()
                    );
                }
            }
            Outcome::Rekeyed(size)
        }
        Err(e) => {
            // Nothing replaced: drop the half-made copy and its hole map.
            discard(job.vault, work, &temp);
            match e {
                Step::Damaged(why) => Outcome::Damaged(why),
                Step::Skipped(why) => Outcome::Skipped(why),
                Step::Failed(why) => Outcome::Failed(why),
            }
        }
    }
}

/// Why a file could not be rekeyed.
enum Step {
    /// Its content does not authenticate.
    Damaged(String),
    /// The backing store refused something about this one file (its metadata, its name).
    Skipped(String),
    /// The key service, or writing the new copy (space, I/O): the run stops.
    Failed(String),
}

impl From<CryptError> for Step {
    fn from(e: CryptError) -> Self {
        match e {
            CryptError::Integrity { .. } => Step::Damaged(e.to_string()),
            e => Step::Failed(e.to_string()),
        }
    }
}

impl From<std::io::Error> for Step {
    fn from(e: std::io::Error) -> Self {
        Step::Skipped(e.to_string())
    }
}

/// Write the new copy of `old` as `work/temp` and rename it over `backing`; its new file id.
fn replace(
    job: &Job<'_>,
    work: &File,
    temp: &OsStr,
    old: &CryptFile,
    meta: &std::fs::Metadata,
    (parent, name): (&File, &OsStr),
    size: u64,
) -> Result<Id, Step> {
    // Authenticated first: a damaged or foreign file is not given a new key.
    old.key_made()?;
    let fd = sys::openat(
        work.as_fd(),
        temp,
        libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        0o600,
    )
    .map_err(|e| Step::Failed(format!("cannot make the new copy: {e}")))?;
    let new_file = File::from(fd);
    let new = CryptFile::new(new_file.try_clone()?, job.vault.clone());
    copy_content(old, &new, size)?;
    new.sync(false)?;
    let new_id = new
        .file_id()
        .ok_or_else(|| Step::Failed("the new copy has no header".into()))?;
    copy_metadata(old_fd(old)?.as_fd(), new_file.as_fd(), meta)?;
    // Like the writes before it, a failed sync of the new copy (space, I/O) stops the run.
    new_file
        .sync_all()
        .map_err(|e| Step::Failed(format!("cannot sync the new copy: {e}")))?;
    if let Some(d) = job.holes_dir {
        // The new map's directory entry, before the file that needs it is in place.
        sys::fsync(d.as_fd())?;
    }
    // The name must still be the file read (nothing else runs here, but check anyway).
    let now = sys::stat_at(parent.as_fd(), name)?;
    if (now.st_dev, now.st_ino) != (meta.dev(), meta.ino()) {
        return Err(Step::Failed(
            "the file was replaced while being rekeyed".into(),
        ));
    }
    sys::renameat2(work.as_fd(), temp, parent.as_fd(), name, 0)?;
    sys::fsync(parent.as_fd())?;
    sys::fsync(work.as_fd())?;
    Ok(new_id)
}

/// A second descriptor of `old`'s backing file (for its metadata).
fn old_fd(old: &CryptFile) -> std::io::Result<File> {
    old.backing_file().try_clone()
}

/// Copy the plain content of `old` to `new` (empty), keeping holes holes.
fn copy_content(old: &CryptFile, new: &CryptFile, size: u64) -> Result<(), Step> {
    let mut at = 0u64;
    while at < size {
        let Some(start) = old.seek(at, true)? else {
            break;
        };
        let end = old.seek(start, false)?.unwrap_or(size).min(size);
        let mut pos = start;
        while pos < end {
            let want = CHUNK.min((end - pos) as usize);
            let data = old.read(pos, want)?;
            if data.is_empty() {
                return Err(Step::Damaged(
                    "ends before its size says (changed while reading?)".into(),
                ));
            }
            new.write(pos, &data)?;
            pos += data.len() as u64;
        }
        at = end;
    }
    // A trailing hole: the size alone.
    if new.size()? != size {
        new.truncate(size)?;
    }
    Ok(())
}

/// Give `to` the owner, mode, extended attributes and times of `from` (`meta`).
fn copy_metadata(
    from: std::os::fd::BorrowedFd<'_>,
    to: std::os::fd::BorrowedFd<'_>,
    meta: &std::fs::Metadata,
) -> Result<(), Step> {
    // The owner first: chown clears set-ID bits and file capabilities (security.capability),
    // which the xattrs and the mode below then restore.
    sys::chown_fd(to, meta.uid(), meta.gid())?;
    let list = match sys::xattr::list(from) {
        Ok(l) => l,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = std::ffi::CString::new(name)
            .map_err(|_| Step::Failed("an xattr name holds a NUL".into()))?;
        let value = sys::xattr::get(from, &name)?;
        sys::xattr::set(to, &name, &value, 0)?;
    }
    sys::fchmod(to, meta.mode() & 0o7777)?;
    sys::set_times(
        to,
        TimeSpec::At(meta.atime(), meta.atime_nsec()),
        TimeSpec::At(meta.mtime(), meta.mtime_nsec()),
    )?;
    Ok(())
}

/// The parent directory of backing path `path`, reached from the vault's root descriptor
/// without following a link on the way, and the last name.
fn parent_of(job: &Job<'_>, path: &Path) -> std::io::Result<(File, OsString)> {
    let rel = path
        .strip_prefix(job.dir)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EXDEV))?;
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let fd = sys::open_beneath(job.root.as_fd(), parent, libc::O_RDONLY | libc::O_DIRECTORY)?;
    Ok((File::from(fd), name.to_os_string()))
}

/// The file ids that more than one of `files` carries in its header.
fn shared_file_ids(files: &[FileItem]) -> HashSet<Id> {
    let mut seen = HashSet::new();
    let mut shared = HashSet::new();
    for f in files {
        if let Some(h) = walk::stored_header(&f.backing) {
            if !seen.insert(h.file_id) {
                shared.insert(h.file_id);
            }
        }
    }
    shared
}

/// `.kmsfs/rekey`, made (mode 0700) when missing, opened without following a link.
fn open_work_dir(meta: &MetaDir) -> Result<File, CliError> {
    let io = |e: std::io::Error| {
        CliError::from(vault::VaultError::Io(
            meta.path_of(REKEY_DIR).display().to_string(),
            e,
        ))
    };
    match sys::mkdirat(meta.fd(), OsStr::new(REKEY_DIR), 0o700) {
        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(io(e)),
        _ => {}
    }
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    sys::openat(meta.fd(), OsStr::new(REKEY_DIR), flags, 0)
        .map(File::from)
        .map_err(io)
}

/// After a kill: remove half-written new files (and their hole maps); the ids the journal
/// lists as done.
fn resume(work: &File, vault: &Volume) -> Result<HashSet<Id>, CliError> {
    let entries = sys::read_dir(work.as_fd()).map_err(|e| format!("the rekey directory: {e}"))?;
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name();
        if name.as_bytes().starts_with(TEMP_PREFIX.as_bytes()) {
            discard(vault, work, &name);
        }
    }
    let text = match sys::read_regular(work.as_fd(), OsStr::new(JOURNAL), 64 << 20) {
        Ok(t) => t,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(HashSet::new()),
        Err(e) => return Err(format!("the rekey journal: {e}").into()),
    };
    Ok(text
        .split(|&b| b == b'\n')
        .filter_map(|l| hex::decode(l).ok()?.try_into().ok())
        .collect())
}

/// Remove the half-written new file `work/name` and the hole map its header names.
fn discard(vault: &Volume, work: &File, name: &OsStr) {
    if let (Some(store), Ok(fd)) = (
        &vault.holes,
        sys::openat(
            work.as_fd(),
            name,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
            0,
        ),
    ) {
        if let Some(h) = stored_header(&File::from(fd)) {
            let _ = store.remove(&h.file_id);
        }
    }
    let _ = sys::unlinkat(work.as_fd(), name, 0);
}

/// The journal, opened for appending (made when missing).
fn open_journal(work: &File) -> Result<File, CliError> {
    let fd = sys::openat(
        work.as_fd(),
        OsStr::new(JOURNAL),
        libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        0o600,
    )
    .map_err(|e| format!("the rekey journal: {e}"))?;
    Ok(File::from(fd))
}
