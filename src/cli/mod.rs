//! Command line: `kmsfs init | mount | unmount`. Each subcommand lives in its own file.

mod audit;
mod cat;
mod completions;
mod control;
mod daemon;
mod error;
mod fsck;
mod helper;
mod init;
mod logging;
mod mount;
mod mount_flags;
mod notify;
mod provider;
mod readahead;
mod rekey;
mod rewrap;
mod runtime_dir;
mod status;
mod targets;
mod unmount;
mod walk;
mod when;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// kmsfs: a transparent encrypting filesystem. Every file gets its own data key, wrapped by a
/// KMS (AWS KMS) or a local master key; the mount shows plain files at plain paths.
#[derive(Debug, Parser)]
#[command(name = "kmsfs", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "Examples:
  kmsfs init ~/vault                          # local master key under ~/.config/kmsfs/keys/
  kmsfs init ~/vault --kms-key-id alias/app   # data keys wrapped by AWS KMS
  kmsfs mount ~/vault ~/plain                 # runs in the background until unmounted
  kmsfs unmount ~/plain                       # flush, forget every key, stop the daemon

Exit status: 0 success, 1 other failure, 2 usage, 3 vault or mount point, 4 key or KMS,
5 fsck found damage (one line on stderr says what to do).
Environment: AWS_REGION, AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_KMS
(the standard AWS chain); RUST_LOG sets the log filter; XDG_CONFIG_HOME moves ~/.config.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Make DIR a new vault (creating it if needed) and record its key on this host.
    Init(InitArgs),
    /// Mount a vault at MOUNTPOINT (in the background unless -f).
    Mount(MountArgs),
    /// Unmount a kmsfs mount: flush, zeroize every cached key, wait for the daemon to exit.
    Unmount(UnmountCmd),
    /// Show a running mount's key, key cache and counters (without MOUNTPOINT: every kmsfs
    /// mount of this host).
    Status(StatusArgs),
    /// Zeroize every cached key of a running mount (and its page cache) without unmounting.
    Forget(MountpointArgs),
    /// Move every file's wrapped data key (and the name key) to a new wrapping key, in place,
    /// without re-encrypting data; resumes after an interruption.
    Rewrap(RewrapArgs),
    /// Re-encrypt files of an unmounted vault under fresh data keys and file ids (after a data
    /// key leaked), crash-safe and resumable.
    Rekey(RekeyArgs),
    /// Verify every header, block, name and link target of an unmounted vault; report damage.
    Fsck(FsckArgs),
    /// Decrypt one file to stdout without mounting.
    Cat(CatArgs),
    /// Show who used which file's key, from CloudTrail's KMS events: one line per event with
    /// the file's current plain path (needs the config and name keys only, no data key).
    Audit(AuditArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions(completions::CompletionsArgs),
}

/// Which key protects a vault (at most one of the two).
#[derive(Debug, Args, Clone, Default)]
pub struct KeyArgs {
    /// Local provider: the master key file (kept outside the vault, a regular file of yours,
    /// mode 0600). `init` creates it when missing. Default for init:
    /// ~/.config/kmsfs/keys/VOLUME_ID.key
    #[arg(long, value_name = "PATH", conflicts_with = "kms_key_id")]
    key_file: Option<PathBuf>,
    /// AWS KMS provider: the wrapping key (ARN, key id or alias/NAME), reached through the
    /// standard AWS environment (region, credentials, AWS_ENDPOINT_URL_KMS).
    #[arg(long, value_name = "ID")]
    kms_key_id: Option<String>,
}

/// What a host trusts for an existing vault: its key, and (the first time, or to accept a
/// config changed elsewhere) its volume id.
#[derive(Debug, Args, Clone, Default)]
pub struct TrustArgs {
    #[command(flatten)]
    key: KeyArgs,
    /// The vault's volume id (32 hex digits; kmsfs init prints it, kmsfs status shows it).
    /// Needed with --key-file or --kms-key-id on a host that has not used this volume before,
    /// and to accept a vault config that changed since this host used it (a kmsfs rewrap on
    /// another host) or a vault path that now holds another volume.
    #[arg(long, value_name = "ID")]
    volume_id: Option<String>,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// The backing directory that will hold the encrypted files.
    vault: PathBuf,
    #[command(flatten)]
    key: KeyArgs,
    /// Plaintext bytes per encrypted block (a power of two, 512 to 1048576).
    #[arg(long, value_name = "BYTES", default_value_t = crate::format::layout::DEFAULT_BLOCK_SIZE)]
    block_size: u32,
    /// Make the vault in a directory that already holds files (they stay as they are,
    /// unencrypted, and fsck reports them as damaged).
    #[arg(long)]
    force: bool,
    /// Keep file names readable in the backing directory (contents stay encrypted).
    #[arg(long)]
    plaintext_names: bool,
    /// AWS KMS only: wrap file keys with one KMS-wrapped volume key (~99 % fewer KMS calls;
    /// the KMS audit log then names the volume, not each file).
    #[arg(long, requires = "kms_key_id")]
    bucket_key: bool,
    /// The backing store will be replicated to another region (disaster recovery): warn if
    /// the key could not open the copy there (a single-Region KMS key). Not recorded.
    #[arg(long)]
    replicated: bool,
}

#[derive(Debug, Args)]
struct MountArgs {
    /// The vault (backing directory made by `kmsfs init`).
    vault: PathBuf,
    /// Where the plain view appears (an existing directory).
    mountpoint: PathBuf,
    #[command(flatten)]
    trust: TrustArgs,
    /// Stay in the foreground and log to stderr.
    #[arg(short, long)]
    foreground: bool,
    /// Seconds an unwrapped data key stays cached, counted from the unwrap (0: only while
    /// the file is open).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    key_ttl: u64,
    /// Most data keys cached at once (least recently used go first, zeroized).
    #[arg(long, value_name = "N", default_value_t = crate::keys::cache::DEFAULT_CAPACITY)]
    key_cache_size: usize,
    /// AWS KMS: fresh data keys kept ready for new files (0: generate on first write).
    #[arg(long, value_name = "N", default_value_t = 32)]
    key_pool_size: usize,
    /// Mount read-only.
    #[arg(long)]
    read_only: bool,
    /// Mount even onto a directory that holds files (they are hidden until unmount) or onto
    /// another mount.
    #[arg(long)]
    nonempty: bool,
    /// Let other users use the mount (access follows the backing files' owners and modes).
    #[arg(long)]
    allow_other: bool,
    /// This host's name for the per-host mount lock (default: /etc/machine-id, else hostname).
    #[arg(long, value_name = "ID")]
    host_id: Option<String>,
    /// Seconds the kernel may cache attributes, names and directory listings. Default: 30
    /// where only this host writes the vault (every change goes through this mount, which
    /// keeps the kernel in step), 1 on a network or FUSE store; 0 for vaults that other hosts
    /// change too: every stat and open then asks the backing store.
    #[arg(long, value_name = "SECONDS")]
    attr_ttl: Option<f64>,
    /// Let the kernel hold written data in its page cache and send it in large writes later
    /// (FUSE writeback cache): small and unaligned writes (sqlite, tar) are faster, but data
    /// not yet fsynced is lost if the daemon is killed, as on a local file system when the
    /// machine crashes. Refused on a network or FUSE store (other hosts would not see it).
    #[arg(long)]
    writeback_cache: bool,
    /// FUSE worker threads.
    #[arg(long, value_name = "N", default_value_t = 8)]
    threads: usize,
    /// Most descriptors kept open for files and directories the kernel knows but no handle has
    /// open; others are reopened by name on use (default: a quarter of the open-file limit,
    /// from 64 to 16384).
    #[arg(long, value_name = "N")]
    fd_cache: Option<usize>,
    /// Kernel readahead of the mount in KiB (set through sysfs; needs root, else the kernel's
    /// 128 KiB stays). Large reads keep several FUSE requests, and both cores, busy.
    #[arg(long, value_name = "KIB", default_value_t = 4096)]
    readahead: u32,
    /// Empty backing files made ahead so a create is a rename, not an inode allocation (0:
    /// off, e.g. when a sync tool watches the vault and should not see them come and go).
    #[arg(long, value_name = "N", default_value_t = 64)]
    spare_files: usize,
    /// Log to this file (default: stderr with -f, else syslog).
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// Log filter, e.g. info, debug, kmsfs=trace (RUST_LOG wins when set).
    #[arg(long, value_name = "FILTER", default_value = "info")]
    log_level: String,
    /// The name the mount table shows as the mount's source (default: the vault's path).
    #[arg(long, value_name = "NAME")]
    fsname: Option<String>,
    /// Generic mount flags, as mount(8) takes them: noatime, nodiratime, strictatime,
    /// noexec, sync, dirsync; dev and suid (root only: the default is nodev,nosuid).
    #[arg(long, value_name = "LIST", default_value = "", value_parser = mount_flags::MountFlags::parse)]
    flags: mount_flags::MountFlags,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The mount point of a kmsfs mount (default: list this host's kmsfs mounts).
    mountpoint: Option<PathBuf>,
    /// Print JSON (fields: provider, key_id, key_region, vault_key_id, vault_key_region,
    /// multi_region_replica, ttl_s, cache_entries, cache_capacity, hits,
    /// misses, kms_calls, kms_errors, tamper_events, oldest_key_made, open_files, inodes_known, fds_held,
    /// fds_open, fd_cache_limit, rss_kib, uptime_s, pid, ...).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RekeyArgs {
    /// The vault (backing directory). Unmount it first: the mount lock is held meanwhile.
    vault: PathBuf,
    #[command(flatten)]
    trust: TrustArgs,
    /// Only files at or under this plain path (relative to the vault root, e.g. finance/q3).
    #[arg(long, value_name = "PREFIX")]
    path: Option<PathBuf>,
    /// Only files whose data key was made more than DAYS days ago (and files of format-2
    /// vaults, whose key age is unknown).
    #[arg(long, value_name = "DAYS")]
    older_than: Option<u64>,
    /// Only list the files that would be rekeyed; write nothing, unwrap no data key.
    #[arg(long)]
    dry_run: bool,
    /// Files re-encrypted in parallel.
    #[arg(short, long, value_name = "N", default_value_t = 4)]
    jobs: usize,
    /// This host's name for the per-host mount lock (default: /etc/machine-id, else hostname).
    #[arg(long, value_name = "ID")]
    host_id: Option<String>,
}

#[derive(Debug, Args)]
struct RewrapArgs {
    /// The vault (backing directory). Unmount it first: the mount lock is held meanwhile.
    vault: PathBuf,
    /// The current key (default: the key this host trusts for the vault).
    #[command(flatten)]
    trust: TrustArgs,
    #[command(flatten)]
    to: ToKeyArgs,
    /// Only report what would change; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Files rewrapped in parallel (KMS calls overlap).
    #[arg(short, long, value_name = "N", default_value_t = 4)]
    jobs: usize,
    /// This host's name for the per-host mount lock (default: /etc/machine-id, else hostname).
    #[arg(long, value_name = "ID")]
    host_id: Option<String>,
}

/// The new wrapping key of `rewrap` (exactly one).
#[derive(Debug, Args, Clone, Default)]
#[group(required = true, multiple = false)]
struct ToKeyArgs {
    /// Move to this AWS KMS key (ARN, key id or alias/NAME); KMS ReEncrypt when the current
    /// key is a KMS key in the same region.
    #[arg(long, value_name = "ID")]
    to_kms_key_id: Option<String>,
    /// Move to this local master key file (created, mode 0600, when it does not exist).
    #[arg(long, value_name = "PATH")]
    to_key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct FsckArgs {
    /// The vault (backing directory).
    vault: PathBuf,
    #[command(flatten)]
    trust: TrustArgs,
    /// Empty (truncate to 0 bytes) files that hold a header of this vault but no complete
    /// block: they hold no data and then read as empty files.
    #[arg(long)]
    repair_headerless: bool,
    /// Remove hole maps (`.kmsfs/holes/`) whose file no longer exists (a crash between a
    /// file's deletion and its map's).
    #[arg(long)]
    repair_orphans: bool,
    /// Files checked in parallel.
    #[arg(short, long, value_name = "N", default_value_t = 4)]
    jobs: usize,
    /// This host's name for the per-host mount lock (default: /etc/machine-id, else hostname).
    #[arg(long, value_name = "ID")]
    host_id: Option<String>,
}

#[derive(Debug, Args)]
struct CatArgs {
    /// The vault, followed by PLAIN_PATH; or alone, a backing file inside a vault.
    path: PathBuf,
    /// The file's plain path inside the vault (as seen in the mount).
    plain_path: Option<PathBuf>,
    #[command(flatten)]
    trust: TrustArgs,
}

#[derive(Debug, Args)]
struct AuditArgs {
    /// The vault (backing directory) whose files the events are about.
    vault: PathBuf,
    #[command(flatten)]
    trust: TrustArgs,
    /// CloudTrail log files (.json or .json.gz, as the trail delivers them to S3) or
    /// directories holding them, searched recursively (symbolic links inside not followed).
    #[arg(long, value_name = "PATH", required = true, num_args = 1..)]
    cloudtrail: Vec<PathBuf>,
    /// Only events about files at or under this plain path (whole components: "finance"
    /// matches /finance/q3/x, not /financed); events naming no file are left out.
    #[arg(long, value_name = "PREFIX")]
    path: Option<PathBuf>,
    /// Only events whose principal (userIdentity.arn) contains this text.
    #[arg(long, value_name = "TEXT")]
    principal: Option<String>,
    /// Only events at or after this time (RFC 3339 as CloudTrail writes it,
    /// 2026-12-01T16:30:00Z, or a date: its midnight UTC).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only events at or before this time (RFC 3339, or a date: up to the end of that day).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Print JSON Lines, one object per event (type, time, principal, operation, result,
    /// region, source_ip, key_arn, file_id, path, path_status, bucket_key_mode).
    #[arg(long)]
    json: bool,
    /// Log files read, and file headers indexed, in parallel.
    #[arg(short, long, value_name = "N", default_value_t = 4)]
    jobs: usize,
}

#[derive(Debug, Args)]
struct MountpointArgs {
    /// The mount point of a kmsfs mount.
    mountpoint: PathBuf,
}

#[derive(Debug, Args)]
struct UnmountCmd {
    /// The mount point of a kmsfs mount.
    mountpoint: PathBuf,
    /// While programs still use the mount (a shell in it, a detached `git gc`), wait this
    /// many seconds for them to finish before giving up (0: do not wait).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    wait: u64,
}

/// `kmsfs forget MOUNTPOINT`.
fn forget(args: &MountpointArgs) -> CliResult {
    let mnt = args
        .mountpoint
        .canonicalize()
        .map_err(|e| format!("{}: {e}", args.mountpoint.display()))?;
    let v = control::request(&mnt, "forget")?;
    println!(
        "forgot {} cached keys",
        v.get("keys_dropped").and_then(|x| x.as_u64()).unwrap_or(0)
    );
    Ok(())
}

/// Run the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = match helper::parse(std::env::args_os().collect()) {
        Ok(helper::Helper::Mount(argv)) => Cli::parse_from(argv),
        Ok(helper::Helper::Remount(mnt, flags)) => {
            return report(mount_flags::remount(&mnt, flags).map_err(CliError::from));
        }
        Ok(helper::Helper::None) => Cli::parse(),
        Err(e) => return report(Err(e)),
    };
    report(match cli.command {
        Command::Init(a) => init::run(&a),
        Command::Mount(a) => mount::run(a),
        Command::Unmount(a) => unmount::run(&a),
        Command::Status(a) => status::run(&a),
        Command::Forget(a) => forget(&a),
        Command::Rewrap(a) => rewrap::run(&a),
        Command::Rekey(a) => rekey::run(&a),
        Command::Fsck(a) => fsck::run(&a),
        Command::Cat(a) => cat::run(&a),
        Command::Audit(a) => audit::run(&a),
        Command::Completions(a) => completions::run(&a),
    })
}

/// Print a failure's one line; the exit status for `result`.
fn report(result: CliResult) -> i32 {
    match result {
        Ok(()) => error::exit::OK,
        Err(e) => {
            eprintln!("kmsfs: {e}");
            e.exit_code()
        }
    }
}

pub use error::CliError;

/// A subcommand's outcome; the error is one line for the user that says what to do.
pub type CliResult = Result<(), CliError>;
