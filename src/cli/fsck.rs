//! `kmsfs fsck VAULT [--repair-headerless]`: authenticate every header and block of every
//! file, and every name, directory IV and symlink target, without mounting. Reports each damaged
//! file with its plain path (when its name decodes), its backing path and the first bad block.
//!
//! Repair is deliberately narrow. `--repair-headerless` empties (truncates to 0 bytes) files
//! that hold a kmsfs header of this vault but not one complete block: such a file held no data
//! that could ever be read back (a crash during its first write, or a cut; a header and only
//! an empty block counts too, as in docs/FORMAT.md §4), and as a 0-byte
//! file it reads as an empty file again. Nothing else is changed.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::walk::{self, Offline, Progress};
use super::{CliError, CliResult, FsckArgs};
use crate::content::{CryptError, CryptFile};
use crate::format::header::{FileHeader, HEADER_SIZE, MAGIC, offset};
use crate::format::layout::BLOCK_OVERHEAD;
use crate::keys::KeyError;
use crate::vault::{self, MountLock};

/// Plain bytes authenticated per read.
const CHUNK: usize = 1 << 20;

/// What one file turned out to be.
enum Outcome {
    /// Every block authenticates; `bytes` plain bytes; when its data key was made (format 3).
    Clean { bytes: u64, key_made: Option<u64> },
    /// A 0-byte file (an empty plain file: nothing to check).
    Empty,
    /// Damaged: what, and the first bad block when one block is at fault.
    Damaged {
        what: String,
        block: Option<u64>,
        headerless: bool,
    },
    /// A header without blocks, emptied by `--repair-headerless`.
    Repaired,
    /// The key could not be had for a reason other than damage (refused, misconfigured).
    KeyFailure(String),
    /// The key service is unreachable: fsck stops.
    Unreachable(String),
}

/// Run `kmsfs fsck`.
pub fn run(args: &FsckArgs) -> CliResult {
    let off = walk::open(&args.vault, &args.trust, true)?;
    let host_id = args.host_id.clone().unwrap_or_else(vault::default_host_id);
    // Repairs write: keep a mount (on this host) away meanwhile. Checking only reads.
    let _lock = if (args.repair_headerless || args.repair_orphans) && !off.config_missing {
        let mut lock = MountLock::acquire(&off.dir, &host_id, &off.cfg.volume_id)?;
        lock.write_pid(std::process::id())?;
        Some(lock)
    } else {
        if let Some(pid) = MountLock::holder(&off.dir, &host_id, &off.cfg.volume_id) {
            eprintln!(
                "kmsfs: warning: {} is mounted on this host (pid {pid}): files being written now may be reported as damaged",
                off.dir.display()
            );
        }
        None
    };
    let tree = walk::walk(&off.dir, off.encrypted_names(), off.names.as_ref());
    let progress = Progress::new("fsck", tree.files.len() as u64);
    let stop = AtomicBool::new(false);
    let ids = std::sync::Mutex::new(std::collections::HashSet::new());
    let outcomes = walk::parallel(&tree.files, args.jobs, &stop, &progress, |f| {
        let (o, id) = check(&off, &f.backing, args.repair_headerless);
        if let (Some(id), Ok(mut ids)) = (id, ids.lock()) {
            ids.insert(id);
        }
        if matches!(o, Outcome::Unreachable(_)) {
            stop.store(true, Ordering::Relaxed);
        }
        o
    });
    progress.finish();
    let orphans = match (&off.vault.holes, ids.into_inner()) {
        (Some(store), Ok(ids)) if unreachable_none(&stop) => {
            orphan_maps(store, &ids, args.repair_orphans)?
        }
        _ => 0,
    };

    let (mut clean, mut empty, mut damaged, mut repaired, mut bytes) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut key_failures = 0u64;
    let mut unreachable = None;
    let mut ages = KeyAges::default();
    for p in &tree.problems {
        damaged += 1;
        println!(
            "DAMAGED {}: {}",
            walk::describe(p.plain.as_deref(), &p.backing),
            p.what
        );
    }
    for (f, o) in tree.files.iter().zip(outcomes) {
        let who = walk::describe(f.plain.as_deref(), &f.backing);
        match o {
            Some(Outcome::Clean { bytes: b, key_made }) => {
                clean += 1;
                bytes += b;
                ages.add(key_made);
            }
            Some(Outcome::Empty) => empty += 1,
            Some(Outcome::Damaged {
                what,
                block,
                headerless,
            }) => {
                damaged += 1;
                let at = block.map(|b| format!("block {b}: ")).unwrap_or_default();
                let hint = if headerless {
                    " (holds no data: --repair-headerless empties it)"
                } else {
                    ""
                };
                println!("DAMAGED {who}: {at}{what}{hint}");
            }
            Some(Outcome::Repaired) => {
                repaired += 1;
                println!(
                    "REPAIRED {who}: a header without blocks, emptied to 0 bytes (it held no data)"
                );
            }
            Some(Outcome::KeyFailure(why)) => {
                key_failures += 1;
                println!("UNREADABLE {who}: {why}");
            }
            Some(Outcome::Unreachable(why)) => unreachable = Some(why),
            None => {}
        }
    }
    let checked = clean + empty + damaged + repaired + key_failures;
    let names = if off.encrypted_names() {
        "encrypted names"
    } else {
        "plaintext names"
    };
    if orphans > 0 {
        println!(
            "{orphans} hole maps of files that no longer exist (left by a crash; harmless){}",
            if args.repair_orphans {
                ": removed"
            } else {
                ": --repair-orphans removes them"
            }
        );
    }
    println!(
        "fsck {}: {} files ({} with data, {} bytes; {} empty), {} directories, {} symlinks, {names}: {} damaged, {} unreadable, {} repaired",
        off.dir.display(),
        tree.files.len(),
        clean,
        bytes,
        empty,
        tree.dirs,
        tree.links,
        damaged,
        key_failures,
        repaired,
    );
    if let Some(line) = ages.describe(crate::sys::unix_now()) {
        println!("{line}");
    }
    if off.config_missing {
        eprintln!(
            "kmsfs: warning: {}/.kmsfs/ is missing: contents were checked, file names were not; restore .kmsfs/ from a backup",
            off.dir.display()
        );
    }
    if let Some(why) = unreachable {
        return Err(CliError::key(format!(
            "fsck stopped after {checked} of {} files: the key service is unreachable ({why}); run fsck again when it is back",
            tree.files.len()
        )));
    }
    if damaged + key_failures > 0 {
        let msg = format!(
            "{} damaged and {key_failures} unreadable entries in {} (listed above)",
            damaged,
            off.dir.display()
        );
        // Damage wins: a key failure alone means fsck could not check those files.
        return Err(if damaged > 0 {
            CliError::damage(msg)
        } else {
            CliError::key(msg)
        });
    }
    Ok(())
}

/// Whether the check ran to the end (it stops when the key service is unreachable).
fn unreachable_none(stop: &AtomicBool) -> bool {
    !stop.load(Ordering::Relaxed)
}

/// The hole maps in `store` whose file id is none of `ids` (the ids of every file's header):
/// counted, and removed when `remove`.
fn orphan_maps(
    store: &crate::content::HoleStore,
    ids: &std::collections::HashSet<crate::format::Id>,
    remove: bool,
) -> Result<u64, super::CliError> {
    let listed = store
        .ids()
        .map_err(|e| format!("cannot list the hole maps: {e}"))?;
    let mut n = 0;
    for id in listed.iter().filter(|id| !ids.contains(*id)) {
        n += 1;
        println!("ORPHAN hole map .kmsfs/holes/{}", hex::encode(id));
        if remove {
            store
                .remove(id)
                .map_err(|e| format!("cannot remove hole map {}: {e}", hex::encode(id)))?;
        }
    }
    Ok(n)
}

/// Check one backing file (and repair it if it is headerless and `repair`); with the file id
/// its header names, if any.
fn check(off: &Offline, path: &Path, repair: bool) -> (Outcome, Option<crate::format::Id>) {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => return (damaged(format!("cannot open: {e}")), None),
    };
    let id = crate::content::header_file_id(&file);
    (check_file(off, file, path, repair), id)
}

fn damaged(what: String) -> Outcome {
    Outcome::Damaged {
        what,
        block: None,
        headerless: false,
    }
}

/// `check` of the opened backing file.
fn check_file(off: &Offline, file: File, path: &Path, repair: bool) -> Outcome {
    let len = match file.metadata() {
        Ok(m) if !m.is_file() => return damaged("not a regular file".into()),
        Ok(m) => m.len(),
        Err(e) => return damaged(format!("cannot stat: {e}")),
    };
    if len == 0 {
        return Outcome::Empty;
    }
    let layout = off.vault.layout;
    // Up to a header and an empty block 0: no data (an empty file has no header; docs/FORMAT.md §4).
    if len <= layout.header_size() + BLOCK_OVERHEAD {
        return headerless(off, &file, path, len, repair);
    }
    let cf = CryptFile::new(file, off.vault.clone());
    let mut outcome = read_all(&cf);
    if let Outcome::Clean { key_made, .. } = &mut outcome {
        // The header is loaded and authenticated by now: no key service call.
        *key_made = cf.key_made().ok().flatten();
    }
    if let Some(id) = cf.file_id() {
        off.vault.keys.release(&id);
    }
    outcome
}

/// Authenticate every block of `cf`.
fn read_all(cf: &CryptFile) -> Outcome {
    let size = match cf.size() {
        Ok(s) => s,
        Err(e) => return crypt_outcome(e),
    };
    let mut at = 0u64;
    while at < size {
        // Granted holes read as zeros: skip them (a 1 TiB sparse file is checked in a moment).
        match cf.seek(at, true) {
            Ok(Some(data)) => at = data,
            // Holes to the end: the final block is still checked (a hole there must be
            // granted, stored data must authenticate).
            Ok(None) => {
                match cf.read(size - 1, 1) {
                    Ok(d) if !d.is_empty() => at = size,
                    Ok(_) => {}
                    Err(e) => return crypt_outcome(e),
                }
                break;
            }
            Err(e) => return crypt_outcome(e),
        }
        match cf.read(at, CHUNK) {
            Ok(d) if d.is_empty() => break,
            Ok(d) => at += d.len() as u64,
            Err(e) => return crypt_outcome(e),
        }
    }
    if at < size {
        return Outcome::Damaged {
            what: "shorter than its size (changed while checking?)".into(),
            block: None,
            headerless: false,
        };
    }
    Outcome::Clean {
        bytes: size,
        key_made: None,
    }
}

/// The ages of the data keys of the files checked.
#[derive(Default)]
struct KeyAges {
    oldest: Option<u64>,
    newest: Option<u64>,
    unknown: u64,
}

impl KeyAges {
    fn add(&mut self, made: Option<u64>) {
        match made {
            Some(t) => {
                self.oldest = Some(self.oldest.map_or(t, |o| o.min(t)));
                self.newest = Some(self.newest.map_or(t, |n| n.max(t)));
            }
            None => self.unknown += 1,
        }
    }

    /// "data keys: oldest made …, newest made …" (None when no file had data).
    fn describe(&self, now: u64) -> Option<String> {
        let unknown = match self.unknown {
            0 => String::new(),
            n => format!("; {n} of unknown age (format-2 headers)"),
        };
        match (self.oldest, self.newest) {
            (Some(o), Some(n)) => Some(format!(
                "data keys: oldest {}; newest {}{unknown}",
                super::when::key_age(o, now),
                super::when::key_age(n, now)
            )),
            _ if self.unknown > 0 => Some(format!(
                "data keys: {} of unknown age (format-2 headers)",
                self.unknown
            )),
            _ => None,
        }
    }
}

fn crypt_outcome(e: CryptError) -> Outcome {
    match e {
        CryptError::Integrity { block, what, .. } => Outcome::Damaged {
            what,
            block,
            headerless: false,
        },
        CryptError::Io(e) => Outcome::Damaged {
            what: format!("read error: {e}"),
            block: None,
            headerless: false,
        },
        CryptError::Key {
            err: KeyError::Unreachable(why),
            ..
        } => Outcome::Unreachable(why),
        CryptError::Key { err, .. } => Outcome::KeyFailure(err.to_string()),
    }
}

/// A file too short to hold one block: a header (or part of one) without data.
fn headerless(off: &Offline, file: &File, path: &Path, len: u64, repair: bool) -> Outcome {
    let mut buf = vec![0u8; (len as usize).min(HEADER_SIZE)];
    if let Err(e) = file.read_exact_at(&mut buf, 0) {
        return Outcome::Damaged {
            what: format!("read error: {e}"),
            block: None,
            headerless: false,
        };
    }
    let vol = offset::VOLUME_ID..offset::VOLUME_ID + 16;
    let ours =
        buf.len() >= vol.end && buf[..MAGIC.len()] == MAGIC && buf[vol] == off.vault.volume_id;
    let decodes = buf.len() < HEADER_SIZE
        || FileHeader::decode(&buf).is_ok_and(|h| h.volume_id == off.vault.volume_id);
    if !(ours && decodes) {
        return Outcome::Damaged {
            what: format!(
                "{len} bytes: not a kmsfs file of this vault (too short for a header and a block)"
            ),
            block: None,
            headerless: false,
        };
    }
    let what = match len {
        l if l < HEADER_SIZE as u64 => format!("a header cut to {len} bytes, no blocks"),
        l if l == off.vault.layout.header_size() + BLOCK_OVERHEAD => {
            "a header with only an empty block (an empty file has no header)".to_string()
        }
        _ => "a header without blocks".to_string(),
    };
    if !repair {
        return Outcome::Damaged {
            what,
            block: Some(0),
            headerless: true,
        };
    }
    let emptied = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .and_then(|f| f.set_len(0).and_then(|()| f.sync_all()));
    match emptied {
        Ok(()) => Outcome::Repaired,
        Err(e) => Outcome::Damaged {
            what: format!("{what}; cannot empty it: {e}"),
            block: Some(0),
            headerless: true,
        },
    }
}
