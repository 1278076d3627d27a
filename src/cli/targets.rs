//! The directories a user names, checked before anything is written: `init` wants an empty
//! (or new) directory, `mount` an empty directory outside the vault that is not a mount
//! already. A dead kmsfs mount left at the mount point is cleaned up.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::{CliError, provider, unmount};

/// The first few entries of `dir` (at most `n`), for a message.
fn some_entries(dir: &Path, n: usize) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)?.take(n) {
        out.push(e?.file_name().to_string_lossy().into_owned());
    }
    Ok(out)
}

/// "'a', 'b' ..." for a message.
fn listing(names: &[String]) -> String {
    let shown: Vec<String> = names.iter().take(3).map(|n| format!("'{n}'")).collect();
    let more = if names.len() > 3 { ", ..." } else { "" };
    format!("{}{more}", shown.join(", "))
}

/// `init` into `dir`: it must not exist, or be an empty directory (`force` accepts one that
/// holds files). Returns whether `dir` exists.
pub fn check_init_dir(dir: &Path, force: bool) -> Result<bool, CliError> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(CliError::target(format!("{}: {e}", dir.display()))),
        Ok(m) if m.is_dir() => {
            let entries = some_entries(dir, 4)
                .map_err(|e| CliError::target(format!("{}: {e}", dir.display())))?;
            if !entries.is_empty() && !force {
                return Err(CliError::target(format!(
                    "{} is not empty (it holds {}): kmsfs init makes a vault in a new or empty directory, as files already there would stay unencrypted and show as damaged; pass --force to init it anyway",
                    dir.display(),
                    listing(&entries)
                )));
            }
            Ok(true)
        }
        Ok(_) if std::fs::metadata(dir).is_ok_and(|m| m.is_dir()) => {
            Err(CliError::target(format!(
                "{} is a symbolic link: name the directory itself",
                dir.display()
            )))
        }
        Ok(_) => Err(CliError::target(format!(
            "{} exists and is not a directory",
            dir.display()
        ))),
    }
}

/// The mount point for `vault` (canonical), checked: an existing directory, outside the
/// vault, not containing it, not a mount point already and empty (unless `nonempty`). A dead
/// kmsfs mount there (its daemon killed) is unmounted first.
pub fn check_mountpoint(vault: &Path, arg: &Path, nonempty: bool) -> Result<PathBuf, CliError> {
    // realpath does not look inside the last component: a dead mount shows at the stat.
    let mnt = match arg
        .canonicalize()
        .and_then(|m| std::fs::metadata(&m).map(|_| m))
    {
        Ok(m) => m,
        Err(e) if not_connected(&e) => clean_dead_mount(arg)?,
        Err(e) => {
            return Err(CliError::target(format!(
                "mount point {}: {e} (create it with mkdir first)",
                arg.display()
            )));
        }
    };
    if !mnt.is_dir() {
        return Err(CliError::target(format!(
            "mount point {} is not a directory",
            mnt.display()
        )));
    }
    if mnt.starts_with(vault) {
        return Err(CliError::target(format!(
            "mount point {} is inside the vault {}: the mount would store its files in itself; choose a directory outside the vault",
            mnt.display(),
            vault.display()
        )));
    }
    if vault.starts_with(&mnt) {
        return Err(CliError::target(format!(
            "the vault {} is inside the mount point {}: the mount would hide it; choose another mount point",
            vault.display(),
            mnt.display()
        )));
    }
    if nonempty {
        return Ok(mnt);
    }
    if let Some((fstype, source)) = unmount::mounted_at(&mnt) {
        // A killed daemon's mount may still answer stat from the kernel's cache; a listing
        // reaches the daemon.
        if matches!(&fstype[..], "fuse" | "fuse.kmsfs") && listing_is_dead(&mnt) {
            return clean_dead_mount(&mnt);
        }
        return Err(CliError::target(format!(
            "{} is already a mount point ({fstype} from {source}): unmount it first (one unmount would otherwise take down both), or pass --nonempty to mount over it",
            mnt.display()
        )));
    }
    let entries = some_entries(&mnt, 4)
        .map_err(|e| CliError::target(format!("mount point {}: {e}", mnt.display())))?;
    if !entries.is_empty() {
        return Err(CliError::target(format!(
            "mount point {} is not empty (it holds {}): the mount would hide them; use an empty directory, or pass --nonempty (-o nonempty) to mount over them",
            mnt.display(),
            listing(&entries)
        )));
    }
    Ok(mnt)
}

/// The error of a FUSE mount whose daemon is gone.
fn not_connected(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOTCONN)
}

/// Whether listing `dir` reaches a dead FUSE daemon (a stat may still answer from cache).
fn listing_is_dead(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_err_and(|e| not_connected(&e))
}

/// `arg` answers ENOTCONN: a FUSE mount whose daemon is gone. If it is kmsfs's, detach it and
/// return the mount point now uncovered.
fn clean_dead_mount(arg: &Path) -> Result<PathBuf, CliError> {
    // The kernel's path: the parent resolved (symlinks too), then the last component.
    let abs = provider::absolute(arg);
    let at = match (abs.parent().map(Path::canonicalize), abs.file_name()) {
        (Some(Ok(parent)), Some(name)) => parent.join(name),
        _ => unmount::normalize(&abs),
    };
    let died = || {
        CliError::target(format!(
            "the previous kmsfs mount at {0} died (its daemon is gone): run kmsfs unmount {0}, then mount again",
            at.display()
        ))
    };
    let recorded = super::runtime_dir::lookup(&at).is_some();
    match unmount::mounted_at(&at) {
        // Only a kmsfs mount: another FUSE file system's dead mount is its owner's to clear.
        Some((fstype, source)) if unmount::is_kmsfs(&fstype, &source, recorded) => {}
        Some((fstype, _)) => {
            return Err(CliError::target(format!(
                "mount point {}: its {fstype} mount does not answer (transport endpoint not connected): unmount it first",
                at.display()
            )));
        }
        None => return Err(died()),
    }
    // Still dead right before it goes (another mount may have cleaned it up and mounted).
    if !listing_is_dead(&at) {
        return Err(died());
    }
    let fusermount = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(&at)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !fusermount && crate::sys::process::umount_lazy(&at).is_err() {
        return Err(died());
    }
    super::runtime_dir::remove(&at);
    eprintln!(
        "kmsfs: the previous kmsfs mount at {} had died; unmounted it",
        at.display()
    );
    at.canonicalize()
        .map_err(|e| CliError::target(format!("mount point {}: {e}", at.display())))
}
