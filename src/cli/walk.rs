//! What the offline commands (`cat`, `fsck`, `rewrap`, `audit`) share: open a vault without mounting
//! it, walk its backing tree (decoding names where it can), run per-file work on a few
//! threads, and draw a progress line on a terminal.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{CliError, TrustArgs, provider};
use crate::content::Volume;
use crate::format::header::{FileHeader, HEADER_SIZE};
use crate::names::{DIRIV_NAME, Names, cipher};
use crate::vault::open::KeyPolicy;
use crate::vault::{self, META_DIR, VaultConfig, VaultError};

/// Keys the offline commands keep unwrapped at once (each file's key is dropped after use).
const KEY_CACHE: usize = 64;

/// A vault opened for offline work.
pub struct Offline {
    /// The vault's backing directory (canonical).
    pub dir: PathBuf,
    /// Its config (rebuilt from a file header when `.kmsfs/config.json` is missing).
    pub cfg: VaultConfig,
    /// Whether `.kmsfs/config.json` was missing.
    pub config_missing: bool,
    /// What every file shares: ids, geometry, keys (a cache that keeps nothing past its use).
    pub vault: Arc<Volume>,
    /// The name translation; `None` when names are encrypted but the name key is lost with
    /// the config (contents can still be checked, plain paths not shown).
    pub names: Option<Names>,
}

impl Offline {
    /// Whether file names are encrypted in this vault.
    pub fn encrypted_names(&self) -> bool {
        !self.cfg.plaintext_names
    }
}

/// Open the vault in `dir` with the key from `key` (else this host's trust record), refusing a
/// vault whose config names another key. A vault without `.kmsfs/config.json` is opened from
/// the first file header found (with a warning) when `allow_missing_config`.
pub fn open(
    dir: &Path,
    trust: &TrustArgs,
    allow_missing_config: bool,
) -> Result<Offline, CliError> {
    let dir = canonical(dir)?;
    let (cfg, config_missing) = match VaultConfig::load(&dir) {
        Ok(cfg) => (cfg, false),
        Err(VaultError::NotInitialised(_)) if allow_missing_config && dir.is_dir() => {
            eprintln!(
                "kmsfs: warning: {}/{META_DIR}/ is missing: restore it from a backup (it holds the wrapped file-name key); \
                 checking contents with the volume id and block size of the first file header",
                dir.display()
            );
            (config_from_headers(&dir)?, true)
        }
        Err(e) => return Err(e.into()),
    };
    let p = if config_missing {
        // Nothing to verify: the key from the command line, else this host's volume record.
        let trusted = match provider::from_args(&trust.key) {
            Some(k) => k,
            None => vault::trust::trusted_key_of(&vault::config_home(), &cfg.volume_id)?
                .ok_or_else(|| VaultError::NoTrustedKey(dir.display().to_string()).to_string())?,
        };
        provider::open(&trusted)?
    } else {
        provider::open_verified(&provider::resolve(trust, &cfg, &dir)?)?
    };
    let with_names = !config_missing || cfg.plaintext_names;
    let opened = vault::open::open(
        &dir,
        &cfg,
        p,
        &KeyPolicy::offline(KEY_CACHE),
        with_names,
        false,
    )?;
    let (vault, names) = (opened.volume, opened.names);
    Ok(Offline {
        dir,
        cfg,
        config_missing,
        vault,
        names,
    })
}

/// A vault opened for its names only (`kmsfs audit`): its config verified and its name key
/// unwrapped, but no data key and no bucket key (the bucket key opens every file key), so
/// whoever runs it needs no right to those.
pub struct NamesOnly {
    /// The vault's backing directory (canonical).
    pub dir: PathBuf,
    /// Its verified config.
    pub cfg: VaultConfig,
    /// The name translation.
    pub names: Names,
}

/// Open the vault in `dir` for its names: KMS Decrypt of the config key (verification) and,
/// when names are encrypted, of the name key; nothing else.
pub fn open_names(dir: &Path, trust: &TrustArgs) -> Result<NamesOnly, CliError> {
    let dir = canonical(dir)?;
    let cfg = VaultConfig::load(&dir)?;
    let p = provider::open_verified(&provider::resolve(trust, &cfg, &dir)?)?;
    let names = Names::for_vault(&dir, &cfg, p)?;
    Ok(NamesOnly { dir, cfg, names })
}

/// `dir` made canonical, or a vault error naming it.
fn canonical(dir: &Path) -> Result<PathBuf, CliError> {
    dir.canonicalize()
        .map_err(|e| CliError::target(format!("vault {}: {e}", dir.display())))
}

/// The header of the backing file at `path` as stored (structure checked, not authenticated);
/// None when it cannot be opened (a link, a FIFO: never followed, never waited on) or has none.
pub fn stored_header(path: &Path) -> Option<FileHeader> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    crate::content::stored_header(&file)
}

/// A config for a vault whose `.kmsfs/` is lost: volume id and block size from the first file
/// with a valid header; names taken as encrypted when the root holds a `.kmsfs.diriv`.
fn config_from_headers(dir: &Path) -> Result<VaultConfig, CliError> {
    let encrypted = dir.join(DIRIV_NAME).exists();
    let tree = walk(dir, encrypted, None);
    for f in &tree.files {
        if let Some(h) = stored_header(&f.backing) {
            return Ok(VaultConfig {
                format_version: h.version,
                volume_id: hex::encode(h.volume_id),
                block_size: h.block_size,
                header_size: HEADER_SIZE as u32,
                provider: vault::provider_name(h.provider).to_string(),
                key_id: String::new(),
                plaintext_names: !encrypted,
                wrapped_name_key: None,
                wrapped_bucket_key: None,
                wrapped_config_key: String::new(),
                config_tag: String::new(),
            });
        }
    }
    Err(CliError::target(format!(
        "{} has no {META_DIR}/config.json and no kmsfs file header to learn the volume id from: it is not a kmsfs vault",
        dir.display()
    )))
}

/// For a command that changes an unmounted vault (`rewrap`, `rekey`): this host's mount lock,
/// held until the result is dropped (a mounted vault is refused). A dry run takes no lock and
/// only warns when the vault is mounted here.
pub fn hold_unmounted(
    dir: &Path,
    host_id: Option<&str>,
    volume_id: &str,
    dry_run: bool,
    command: &str,
) -> Result<Option<vault::MountLock>, CliError> {
    let host_id = host_id.map_or_else(vault::default_host_id, str::to_string);
    if dry_run {
        if let Some(pid) = vault::MountLock::holder(dir, &host_id, volume_id) {
            eprintln!(
                "kmsfs: warning: {} is mounted on this host (pid {pid}): unmount it before the real {command}",
                dir.display()
            );
        }
        return Ok(None);
    }
    let mut lock = vault::MountLock::acquire(dir, &host_id, volume_id)?;
    lock.write_pid(std::process::id())?;
    Ok(Some(lock))
}

/// The vault holding backing path `path`: the nearest ancestor with `.kmsfs/config.json`.
pub fn find_vault(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .skip(1)
        .find(|d| VaultConfig::path(d).is_file())
        .map(Path::to_path_buf)
}

/// A regular file found in the backing tree.
#[derive(Debug, Clone)]
pub struct FileItem {
    /// Its backing path.
    pub backing: PathBuf,
    /// Its plain path relative to the vault root, when every name on the way decodes.
    pub plain: Option<PathBuf>,
}

/// Damage found while walking: a name, IV file or symlink target that does not decode.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The backing path concerned.
    pub backing: PathBuf,
    /// Its plain path, when known.
    pub plain: Option<PathBuf>,
    /// What is wrong.
    pub what: String,
}

/// The result of walking a backing tree.
#[derive(Debug, Default)]
pub struct Tree {
    /// Regular files, one per inode (hard links are visited once).
    pub files: Vec<FileItem>,
    /// Name-level damage.
    pub problems: Vec<Problem>,
    /// Directories visited (the root included).
    pub dirs: u64,
    /// Symbolic links seen.
    pub links: u64,
}

/// Walk the backing tree under `root`. `encrypted`: names are encrypted (kmsfs's own
/// `.kmsfs.diriv` and long-name sidecars are skipped); `names`: decode plain paths and check
/// names and symlink targets with it (`None`: backing paths only).
pub fn walk(root: &Path, encrypted: bool, names: Option<&Names>) -> Tree {
    let mut tree = Tree::default();
    let mut seen = HashSet::new();
    let mut todo = vec![(root.to_path_buf(), Some(PathBuf::new()))];
    while let Some((dir, plain_dir)) = todo.pop() {
        tree.dirs += 1;
        let in_root = dir == root;
        let problem = |what: String| Problem {
            backing: dir.clone(),
            plain: plain_dir.clone(),
            what,
        };
        let fd = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(&dir)
        {
            Ok(f) => f,
            Err(e) => {
                tree.problems
                    .push(problem(format!("cannot open directory: {e}")));
                continue;
            }
        };
        let lister = match names {
            Some(n) if encrypted => match n.lister(fd.as_fd(), in_root) {
                Ok(l) => Some(l),
                Err(e) => {
                    tree.problems.push(problem(format!(
                        "{DIRIV_NAME} is missing or damaged ({e}): the names in this directory cannot be decrypted"
                    )));
                    None
                }
            },
            _ => None,
        };
        // Listed through the descriptor opened above (no symlink followed), not by path again.
        let mut entries: Vec<_> = match crate::sys::read_dir(fd.as_fd()) {
            Ok(rd) => rd.filter_map(Result::ok).collect(),
            Err(e) => {
                tree.problems
                    .push(problem(format!("cannot list directory: {e}")));
                continue;
            }
        };
        entries.sort_by_key(|e| e.file_name());
        // Pushed in reverse so directories are visited in name order.
        let mut subdirs = Vec::new();
        for e in entries {
            let name = e.file_name();
            if in_root && name == OsStr::new(META_DIR) {
                continue;
            }
            if encrypted && (name == OsStr::new(DIRIV_NAME) || cipher::is_sidecar(name.as_bytes()))
            {
                continue;
            }
            let backing = dir.join(&name);
            let plain = match (&plain_dir, encrypted, &lister) {
                (Some(p), false, _) => Some(p.join(&name)),
                (Some(p), true, Some(l)) => match l.plain(&name) {
                    Some(n) => Some(p.join(n)),
                    None => {
                        tree.problems.push(Problem {
                            backing: backing.clone(),
                            plain: None,
                            what: "the name does not decrypt (tampered, moved from another directory, or a long name without its sidecar)"
                                .into(),
                        });
                        None
                    }
                },
                _ => None,
            };
            let Ok(meta) = std::fs::symlink_metadata(&backing) else {
                continue;
            };
            let ft = meta.file_type();
            if ft.is_dir() {
                subdirs.push((backing, plain));
            } else if ft.is_file() {
                if meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
                    continue;
                }
                tree.files.push(FileItem { backing, plain });
            } else if ft.is_symlink() {
                tree.links += 1;
                if let (true, Some(n)) = (encrypted, names) {
                    let target = OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
                        .open(&backing)
                        .and_then(|f| n.read_link(f.as_fd()));
                    if let Err(e) = target {
                        tree.problems.push(Problem {
                            backing,
                            plain,
                            what: format!("the symbolic link's target does not decrypt ({e})"),
                        });
                    }
                }
            }
        }
        todo.extend(subdirs.into_iter().rev());
    }
    tree
}

/// Whether plain path `path` (relative to the vault root) is `prefix` or inside it, compared
/// by whole names ("finance" holds "finance/q3/x", not "financed"); a leading "/" is ignored.
pub fn is_under(path: &Path, prefix: &Path) -> bool {
    let strip = |p: &Path| -> Vec<OsString> {
        p.components()
            .filter_map(|c| match c {
                std::path::Component::Normal(n) => Some(n.to_os_string()),
                _ => None,
            })
            .collect()
    };
    let (path, prefix) = (strip(path), strip(prefix));
    path.starts_with(&prefix)
}

/// "PLAIN (backing BACKING)" or just the backing path, for report lines.
pub fn describe(plain: Option<&Path>, backing: &Path) -> String {
    match plain {
        Some(p) => format!("{} (backing {})", p.display(), backing.display()),
        None => format!("? (backing {})", backing.display()),
    }
}

/// Run `work` on every item on `jobs` threads, in any order; results in item order. Items not
/// started once `stop` is set get `None`.
pub fn parallel<T, R, F>(
    items: &[T],
    jobs: usize,
    stop: &AtomicBool,
    progress: &Progress,
    work: F,
) -> Vec<Option<R>>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync,
{
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                loop {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = work(item);
                    results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
                    progress.tick();
                }
            });
        }
    });
    results.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// A one-line progress display on stderr (only when stderr is a terminal): done/total, rate
/// and time left.
pub struct Progress {
    label: &'static str,
    total: u64,
    done: AtomicU64,
    start: Instant,
    last_draw: Mutex<Instant>,
    enabled: bool,
}

impl Progress {
    /// Progress over `total` items, shown as "LABEL: done/total files ...".
    pub fn new(label: &'static str, total: u64) -> Self {
        let now = Instant::now();
        Progress {
            label,
            total,
            done: AtomicU64::new(0),
            start: now,
            last_draw: Mutex::new(now),
            enabled: std::io::stderr().is_terminal(),
        }
    }

    /// One more item done.
    pub fn tick(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.enabled {
            return;
        }
        let mut last = self.last_draw.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() < Duration::from_millis(100) && done < self.total {
            return;
        }
        *last = Instant::now();
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        let left = if rate > 0.0 {
            (self.total.saturating_sub(done)) as f64 / rate
        } else {
            0.0
        };
        eprint!(
            "\r{}: {done}/{} files, {rate:.0}/s, {:.0} s left\x1b[K",
            self.label, self.total, left
        );
    }

    /// Clear the line.
    pub fn finish(&self) {
        if self.enabled {
            eprint!("\r\x1b[K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_names() {
        let p = Path::new("finance/q3/minutes.txt");
        for yes in ["finance", "/finance", "finance/", "finance/q3", "/", ""] {
            assert!(is_under(p, Path::new(yes)), "{yes}");
        }
        for no in ["fin", "financed", "finance/q4", "finance/q3/minutes.txt/x"] {
            assert!(!is_under(p, Path::new(no)), "{no}");
        }
    }
}
