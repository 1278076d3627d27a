//! `kmsfs mount VAULT MOUNTPOINT`: check everything that can fail in the foreground, fork,
//! start the key provider and FUSE session in the daemon, report ready, serve until unmounted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, Session, SessionACL};

use super::daemon::{self, Ready};
use super::error::exit;
use super::mount_flags::MountFlags;
use super::{
    CliError, CliResult, MountArgs, control, logging, provider, readahead, runtime_dir, targets,
};
use crate::format::header::ProviderId;
use crate::fs::{FsOptions, KmsFs};
use crate::keys::KeyProvider;

/// Threads refilling the data-key pool: enough to overlap KMS latency.
const POOL_WORKERS: usize = 16;
/// Directory key prefetch: unwraps in flight at once.
const PREFETCH_WORKERS: usize = 32;
/// Seconds the kernel caches attributes, names and listings by default where this host is the
/// vault's one writer (it is told of every change).
const SINGLE_WRITER_ATTR_TTL: f64 = 30.0;
/// The same on a network or FUSE store, which other hosts may change.
const SHARED_ATTR_TTL: f64 = 1.0;
use crate::vault::open::KeyPolicy;
use crate::vault::{self, MountLock, Trust, TrustedKey, VaultConfig};

/// Run `kmsfs mount`.
pub fn run(args: MountArgs) -> CliResult {
    let vault_dir = args
        .vault
        .canonicalize()
        .map_err(|e| CliError::target(format!("vault {}: {e}", args.vault.display())))?;
    let mnt = targets::check_mountpoint(&vault_dir, &args.mountpoint, args.nonempty)?;
    if (args.flags.dev || args.flags.suid) && crate::sys::process::euid() != 0 {
        return Err(CliError::usage(
            "the dev and suid mount flags need a mount by root (the default is nodev,nosuid)",
        ));
    }
    let cfg = VaultConfig::load(&vault_dir)?;
    let trust = provider::resolve(&args.trust, &cfg, &vault_dir)?;
    // A local key (and the config it verifies) is checked before forking, so a bad key file or
    // a tampered config fails in the foreground.
    let early = match &trust.key {
        TrustedKey::Local { .. } => Some(provider::open_verified(&trust)?),
        TrustedKey::AwsKms { .. } => None,
    };
    let mut args = args;
    if !args.foreground && args.log_file.is_none() && !logging::syslog_available() {
        // Without a syslog daemon the lines would be lost: keep them in the runtime directory.
        let path = runtime_dir::log_path(&mnt)
            .map_err(|e| format!("no system log (/dev/log) and no runtime directory for a log file: {e}; pass --log-file PATH"))?;
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!(
                "kmsfs: no system log here (/dev/log): the daemon logs to {}",
                path.display()
            );
        }
        args.log_file = Some(path);
    }
    let host_id = args.host_id.clone().unwrap_or_else(vault::default_host_id);
    let lock = MountLock::acquire(&vault_dir, &host_id, &cfg.volume_id)?;
    let mut ready = if args.foreground {
        Ready::none()
    } else {
        match daemon::daemonize() {
            Ok(ready) => ready,
            Err(code) => std::process::exit(code),
        }
    };
    let checked = Checked {
        vault_dir,
        mnt,
        cfg,
        trust,
        early,
        lock,
    };
    serve(&args, checked, &mut ready).inspect_err(|e| ready.fail(e.exit_code(), &e.to_string()))
}

/// What the foreground checked before forking, handed to the daemon.
struct Checked {
    /// The vault's backing directory (canonical).
    vault_dir: PathBuf,
    /// The mount point (canonical).
    mnt: PathBuf,
    /// The vault's config (verified already when the key is local).
    cfg: VaultConfig,
    /// What this host trusts for the vault.
    trust: Trust,
    /// The local key's provider, opened and verified before forking (None for AWS KMS).
    early: Option<Arc<dyn KeyProvider>>,
    /// This host's mount lock on the vault.
    lock: MountLock,
}

/// fuser's options for the generic mount flags (nodev,nosuid unless asked otherwise).
fn kernel_options(f: MountFlags) -> Vec<MountOption> {
    let pick = |on: bool, yes: MountOption, no: Option<MountOption>| {
        if on { Some(yes) } else { no }
    };
    [
        pick(f.dev, MountOption::Dev, Some(MountOption::NoDev)),
        pick(f.suid, MountOption::Suid, Some(MountOption::NoSuid)),
        pick(f.noexec, MountOption::NoExec, None),
        pick(f.noatime, MountOption::NoAtime, None),
        pick(f.sync, MountOption::Sync, None),
        pick(f.dirsync, MountOption::DirSync, None),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The daemon's life: provider, session, ready, serve, clean up.
fn serve(args: &MountArgs, checked: Checked, ready: &mut Ready) -> CliResult {
    let Checked {
        vault_dir,
        mnt,
        cfg,
        trust,
        early,
        mut lock,
    } = checked;
    let (vault_dir, mnt, cfg, trust) = (vault_dir.as_path(), mnt.as_path(), &cfg, &trust);
    // Before any thread exists, so every thread inherits the blocked set.
    let signals = daemon::block_signals();
    let sink = match (&args.log_file, args.foreground) {
        (Some(p), _) => logging::Sink::File(p),
        (None, true) => logging::Sink::Stderr,
        (None, false) => logging::Sink::Syslog,
    };
    logging::init(sink, &args.log_level)?;
    tracing::info!(
        "kmsfs {} mounting {} at {}: {} key {}; {}",
        env!("CARGO_PKG_VERSION"),
        vault_dir.display(),
        mnt.display(),
        cfg.provider,
        cfg.key_id,
        describe_options(args)
    );
    daemon::harden();
    let fd_limit = daemon::raise_open_file_limit();
    lock.write_pid(std::process::id())?;
    let kms_provider = match early {
        Some(p) => p,
        None => provider::open_verified(trust)?,
    };
    if crate::keys::arn::is_replica_of(kms_provider.key_id(), &cfg.key_id) {
        tracing::info!(
            "KMS key {} serves the vault's key {}: its multi-Region replica",
            kms_provider.key_id(),
            cfg.key_id
        );
    }
    let ttl = Duration::from_secs(args.key_ttl);
    // Two FUSE workers always stay free of KMS waits, for cached files and metadata.
    let policy = KeyPolicy {
        ttl,
        grace: ttl,
        bucket_ttl: ttl,
        cache_size: args.key_cache_size,
        max_waiters: args.threads.saturating_sub(2).max(1),
        pool: (args.key_pool_size, POOL_WORKERS),
    };
    let opened = vault::open::open(
        vault_dir,
        cfg,
        kms_provider.clone(),
        &policy,
        true,
        !args.read_only,
    )?;
    let (vault, names) = (opened.volume, opened.names.unwrap_or_default());
    let keys = vault.keys.clone();
    let provider_id: ProviderId = vault.provider;
    let shared = is_shared_store(vault_dir);
    let attr_ttl_secs = args.attr_ttl.unwrap_or(if shared {
        SHARED_ATTR_TTL
    } else {
        SINGLE_WRITER_ATTR_TTL
    });
    if args.writeback_cache && shared {
        return Err(CliError::usage(
            "--writeback-cache needs a vault only this host writes; this one is on a network or FUSE file system",
        ));
    }
    let attr_ttl = Duration::try_from_secs_f64(attr_ttl_secs)
        .map_err(|_| format!("--attr-ttl {attr_ttl_secs} is not a number of seconds"))?;
    if shared {
        tracing::info!(
            "the vault is on a network or FUSE file system: close-to-open consistency on"
        );
        vault
            .shared_store
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(holes) = &vault.holes {
            holes.set_shared();
        }
    }
    let name_key = names.key_handle();
    if let Some(handle) = name_key.clone() {
        spawn_name_key_refresh(handle, ttl)?;
    }
    if let Some(unsynced) = names.unsynced() {
        spawn_name_file_sync(unsynced)?;
    }
    let mut fs = KmsFs::new(
        vault_dir,
        vault,
        names,
        FsOptions {
            read_only: args.read_only,
            attr_ttl,
            fd_cache: args
                .fd_cache
                .unwrap_or_else(|| crate::fs::default_fd_cache(fd_limit)),
            noatime: args.flags.noatime,
            writeback_cache: args.writeback_cache && !args.read_only,
        },
    )
    .map_err(|e| format!("cannot open vault {}: {e}", vault_dir.display()))?;
    // Spares are private to one host: not on a store other hosts write, not read-only.
    if args.spare_files > 0 && !args.read_only && !shared && !has_default_acl(vault_dir) {
        if let Err(e) = fs.enable_spares(args.spare_files, lock.host_part()) {
            tracing::warn!("spare backing files disabled: {e}");
        }
    }
    // Per-file KMS mode pays a round trip per cold file: prefetch directories' keys.
    if provider_id == ProviderId::AwsKms {
        fs.enable_prefetch(PREFETCH_WORKERS)
            .map_err(|e| format!("cannot start key prefetch: {e}"))?;
    }
    // Backing files get exactly the modes the kernel asks for (it applied the umask).
    crate::sys::process::set_umask(0);
    let mut options = vec![
        MountOption::FSName(
            args.fsname
                .clone()
                .unwrap_or_else(|| vault_dir.display().to_string()),
        ),
        // As a kernel option (fuser passes Subtype only to fusermount): the mount then shows
        // as fuse.kmsfs, and mount(8) finds kmsfs again for `-o remount`.
        MountOption::CUSTOM("subtype=kmsfs".into()),
        MountOption::DefaultPermissions,
    ];
    options.extend(kernel_options(args.flags));
    if args.read_only {
        options.push(MountOption::RO);
    }
    let mut config = Config::default();
    config.mount_options = options;
    config.acl = if args.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(args.threads.max(1));
    config.clone_fd = true;
    let (fs_vault, fs_handles, notifier_slot, fs_inodes) = (
        fs.vault().clone(),
        fs.handles(),
        fs.invalidator_slot(),
        fs.inode_table(),
    );
    let (expiry_vault, expiry_handles) = (fs_vault.clone(), fs_handles.clone());
    let mut session = Session::new(crate::fuse::FuseFs(fs), mnt, &config)
        .map_err(|e| format!("cannot mount at {}: {e}", mnt.display()))?;
    let mut unmounter = session.unmount_callable();
    let invalidator: Arc<dyn crate::fs::Invalidator> =
        Arc::new(crate::fuse::Notify(session.notifier()));
    let _ = notifier_slot.set(invalidator.clone());
    control::serve(control::Daemon {
        name_key,
        inodes: fs_inodes,
        vault: fs_vault,
        handles: fs_handles,
        invalidator: invalidator.clone(),
        vault_dir: vault_dir.to_path_buf(),
        mountpoint: mnt.to_path_buf(),
        vault_key_id: cfg.key_id.clone(),
        ttl,
        started: std::time::Instant::now(),
    })
    .map_err(|e| format!("cannot open the control socket: {e}"))?;
    runtime_dir::record(mnt, std::process::id())
        .map_err(|e| format!("cannot record the mount: {e}"))?;
    // Report ready only once the kernel has finished the FUSE handshake, which the session
    // serves below; the readahead window can only be widened after it.
    let mut ready = std::mem::replace(ready, Ready::none());
    let (ready_mnt, readahead_kib) = (mnt.to_path_buf(), args.readahead);
    let mount_point_flags = MountFlags {
        ro: args.read_only,
        ..args.flags
    };
    std::thread::Builder::new()
        .name("kmsfs-ready".into())
        .spawn(move || {
            // The stat waits for the handshake; a mount that cannot answer it is not usable,
            // and one that is gone meanwhile shows the directory under it.
            if let Err(e) = std::fs::metadata(&ready_mnt) {
                ready.fail(
                    exit::FAILURE,
                    &format!("mount {} not usable: {e}", ready_mnt.display()),
                );
                return;
            }
            if fs_type(&ready_mnt) != Some(FUSE_MAGIC) {
                ready.fail(
                    exit::FAILURE,
                    &format!("mount {} vanished", ready_mnt.display()),
                );
                return;
            }
            if mount_point_flags.nodiratime || mount_point_flags.strictatime {
                // fuser has no option for these: set them on the mount point itself.
                let flags = mount_point_flags.ms_flags();
                if let Err(e) = crate::sys::process::remount(&ready_mnt, flags, true) {
                    tracing::warn!("nodiratime/strictatime not set on the mount point: {e}");
                }
            }
            match readahead::set(&ready_mnt, readahead_kib) {
                Ok(()) => tracing::debug!(kib = readahead_kib, "readahead set"),
                Err(e) => tracing::info!("readahead stays at the kernel default: {e}"),
            }
            tracing::info!(mountpoint = %ready_mnt.display(), "mounted");
            ready.ok();
            super::notify::notify("READY=1");
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;

    std::thread::Builder::new()
        .name("kmsfs-signals".into())
        .spawn(move || {
            let sig = daemon::wait_for_signal(&signals);
            tracing::info!(signal = sig, "unmounting on signal");
            super::notify::notify("STOPPING=1");
            if let Err(e) = unmounter.unmount() {
                tracing::error!("unmount on signal failed: {e}");
            }
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    let purge_keys = keys.clone();
    let (expiry_handles, expiry_vault, expiry_notifier) =
        (expiry_handles, expiry_vault, invalidator);
    // Often enough that pages are dropped well within a tenth of the TTL of their key.
    let tick = (ttl / 8).clamp(Duration::from_millis(100), Duration::from_secs(1));
    std::thread::Builder::new()
        .name("kmsfs-key-expiry".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                crate::fs::drop_pages_of_stale_keys(
                    &expiry_handles,
                    &expiry_vault,
                    expiry_notifier.as_ref(),
                );
                purge_keys.purge_expired();
            }
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;

    let result = session.run();
    super::notify::notify("STOPPING=1");
    keys.shutdown();
    runtime_dir::remove(mnt);
    tracing::info!(mountpoint = %mnt.display(), "unmounted; keys zeroized");
    result.map_err(|e| format!("FUSE session ended with an error: {e}").into())
}

/// The options of a mount, for its first log line.
fn describe_options(args: &MountArgs) -> String {
    let mut out = vec![
        if args.read_only { "ro" } else { "rw" }.to_string(),
        format!("key_ttl={}s", args.key_ttl),
        format!("key_cache_size={}", args.key_cache_size),
        match args.attr_ttl {
            Some(t) => format!("attr_ttl={t}s"),
            None => "attr_ttl=auto".to_string(),
        },
        format!("threads={}", args.threads),
    ];
    if args.allow_other {
        out.push("allow_other".into());
    }
    if args.writeback_cache {
        out.push("writeback_cache".into());
    }
    let flags = args.flags.to_list();
    if !flags.is_empty() {
        out.push(flags);
    }
    out.join(",")
}

/// Sync new directory IV files and sidecars every `FLUSH_EVERY` (names::unsynced).
fn spawn_name_file_sync(unsynced: Arc<crate::names::Unsynced>) -> CliResult {
    std::thread::Builder::new()
        .name("kmsfs-name-sync".into())
        .spawn(move || {
            loop {
                std::thread::sleep(crate::names::FLUSH_EVERY);
                unsynced.flush_unasked();
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start a thread: {e}").into())
}

/// Re-unwrap the file-name key once per TTL in the background (lookups keep using the current
/// key meanwhile), so a KMS refusal of the vault's key reaches file names too.
fn spawn_name_key_refresh(handle: crate::names::NameKeyHandle, ttl: Duration) -> CliResult {
    // TTL 0 means "no caching across opens"; names have no opens, so refresh every minute.
    let every = if ttl.is_zero() {
        Duration::from_secs(60)
    } else {
        ttl
    };
    std::thread::Builder::new()
        .name("kmsfs-name-key".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                handle.refresh();
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start a thread: {e}").into())
}

/// The statfs magic number of FUSE file systems.
const FUSE_MAGIC: i64 = 0x6573_5546;

/// Whether `dir` has a default POSIX ACL, which files made in place inherit but spares
/// (made elsewhere and renamed in) would not.
fn has_default_acl(dir: &Path) -> bool {
    crate::sys::xattr::path_has(dir, c"system.posix_acl_default")
}

/// Whether `dir` is on a file system other hosts may write too (FUSE, e.g. GlusterFS or
/// rclone; NFS; CephFS; SMB).
fn is_shared_store(dir: &Path) -> bool {
    const SHARED: &[i64] = &[
        FUSE_MAGIC,
        0x6969,      /* NFS */
        0x00c3_6400, /* Ceph */
        0xfe53_4d42, /* SMB2 */
        0xff53_4d42, /* CIFS */
    ];
    fs_type(dir).is_some_and(|t| SHARED.contains(&t))
}

/// The statfs type of the file system holding `dir`.
fn fs_type(dir: &Path) -> Option<i64> {
    crate::sys::process::fs_type(dir)
}
