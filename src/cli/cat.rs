//! `kmsfs cat VAULT PLAIN_PATH` and `kmsfs cat VAULT/BACKING/PATH`: decrypt one file to stdout
//! without mounting. Every block is authenticated before any of its bytes are written; on
//! damage the output stops there and the command fails.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use super::walk::{self, Offline};
use super::{CatArgs, CliError, CliResult};
use crate::content::CryptFile;

/// Plain bytes decrypted per read (a multiple of every block size up to 1 MiB).
const CHUNK: usize = 1 << 20;

/// Run `kmsfs cat`.
pub fn run(args: &CatArgs) -> CliResult {
    let (vault_dir, target) = match &args.plain_path {
        Some(plain) => (args.path.clone(), Target::Plain(plain.clone())),
        None => locate(&args.path)?,
    };
    let off = walk::open(&vault_dir, &args.trust, false)?;
    let backing = match target {
        Target::Backing(p) => p,
        Target::Plain(p) => resolve(&off, &p)?,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&backing)
        .map_err(|e| format!("{}: {e}", backing.display()))?;
    if !file
        .metadata()
        .map_err(|e| format!("{}: {e}", backing.display()))?
        .is_file()
    {
        return Err(format!("{} is not a regular file", backing.display()).into());
    }
    let cf = CryptFile::new(file, off.vault.clone());
    let size = cf.size()?;
    let mut out = std::io::stdout().lock();
    let mut at = 0u64;
    while at < size {
        let data = cf.read(at, CHUNK)?;
        if data.is_empty() {
            return Err(format!(
                "{}: ends before its size says (changed while reading?)",
                backing.display()
            )
            .into());
        }
        at += data.len() as u64;
        match out.write_all(&data) {
            Ok(()) => {}
            // The reader went away (`kmsfs cat ... | head`): not an error of ours.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(format!("writing to stdout: {e}").into()),
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(format!("writing to stdout: {e}").into())
        }
        _ => Ok(()),
    }
}

enum Target {
    Backing(PathBuf),
    Plain(PathBuf),
}

/// One argument: a backing file inside a vault (found by walking up to `.kmsfs/`), or, when no
/// such backing file exists, `VAULT/PLAIN/PATH`.
fn locate(path: &Path) -> Result<(PathBuf, Target), CliError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_symlink() {
            return Err(format!(
                "{} is a symbolic link: cat reads regular files",
                path.display()
            )
            .into());
        }
        let canon = path
            .canonicalize()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let vault = walk::find_vault(&canon).ok_or_else(|| {
            format!(
                "{} is not inside a kmsfs vault (no .kmsfs/config.json above it): use kmsfs cat VAULT PLAIN_PATH",
                path.display()
            )
        })?;
        return Ok((vault, Target::Backing(canon)));
    }
    let abs = super::provider::absolute(path);
    for vault in abs.ancestors().skip(1) {
        if vault.exists() && crate::vault::VaultConfig::path(vault).is_file() {
            let rest = abs.strip_prefix(vault).map_err(|e| e.to_string())?;
            let vault = vault
                .canonicalize()
                .map_err(|e| format!("{}: {e}", vault.display()))?;
            return Ok((vault, Target::Plain(rest.to_path_buf())));
        }
    }
    Err(format!(
        "{}: no such file, and no kmsfs vault above it",
        path.display()
    )
    .into())
}

/// The backing path of plain path `plain` (relative to the vault root; symlinks not followed).
fn resolve(off: &Offline, plain: &Path) -> Result<PathBuf, CliError> {
    let names = off
        .names
        .as_ref()
        .ok_or("file names cannot be decrypted without .kmsfs/config.json")?;
    let parts: Vec<&OsStr> = plain
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(Ok(n)),
            Component::RootDir | Component::CurDir => None,
            _ => Some(Err(format!(
                "{}: \"..\" is not allowed in a plain path",
                plain.display()
            ))),
        })
        .collect::<Result<_, String>>()?;
    if parts.is_empty() {
        return Err(format!("{}: name a file inside the vault", plain.display()).into());
    }
    let not_found = || {
        format!(
            "{}: no such file in vault {}",
            plain.display(),
            off.dir.display()
        )
    };
    let mut backing = off.dir.clone();
    for (i, name) in parts.iter().enumerate() {
        if names.is_reserved(i == 0, name) {
            return Err(not_found().into());
        }
        let dir = File::open(&backing).map_err(|e| format!("{}: {e}", backing.display()))?;
        let b = names
            .backing(dir.as_fd(), name)
            .map_err(|e| format!("{}: {e}", plain.display()))?;
        backing.push(&*b);
        let meta = std::fs::symlink_metadata(&backing).map_err(|_| not_found())?;
        let is_last = i + 1 == parts.len();
        if meta.file_type().is_symlink() {
            return Err(format!(
                "{}: a symbolic link in the path (cat does not follow links)",
                plain.display()
            )
            .into());
        }
        if !is_last && !meta.is_dir() {
            return Err(not_found().into());
        }
        if is_last && !meta.is_file() {
            return Err(format!("{} is not a regular file", plain.display()).into());
        }
    }
    Ok(backing)
}
