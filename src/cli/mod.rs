//! Command line: `kmsfs init | mount | unmount`. Each subcommand lives in its own file.

mod daemon;
mod init;
mod logging;
mod mount;
mod provider;
mod runtime_dir;
mod unmount;

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

Exit status: 0 on success, 1 on any error (one line on stderr says what to do).
Environment: AWS_REGION, AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_KMS
(the standard AWS chain); RUST_LOG sets the log filter; XDG_CONFIG_HOME moves ~/.config.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Make DIR a new vault (creating it if needed) and record its key on this host.
    Init(InitArgs),
    /// Mount a vault at MOUNTPOINT (in the background unless -f).
    Mount(MountArgs),
    /// Unmount a kmsfs mount: flush, zeroize every cached key, wait for the daemon to exit.
    Unmount(UnmountArgs),
}

/// Which key protects a vault (at most one of the two).
#[derive(Debug, Args, Clone, Default)]
#[group(multiple = false)]
pub struct KeyArgs {
    /// Local provider: the master key file (kept outside the vault, mode 0600). `init` creates
    /// it when missing. Default for init: ~/.config/kmsfs/keys/VOLUME_ID.key
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// AWS KMS provider: the wrapping key (ARN, key id or alias/NAME), reached through the
    /// standard AWS environment (region, credentials, AWS_ENDPOINT_URL_KMS).
    #[arg(long, value_name = "ID")]
    kms_key_id: Option<String>,
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
    /// Keep file names readable in the backing directory (contents stay encrypted).
    #[arg(long)]
    plaintext_names: bool,
}

#[derive(Debug, Args)]
struct MountArgs {
    /// The vault (backing directory made by `kmsfs init`).
    vault: PathBuf,
    /// Where the plain view appears (an existing directory).
    mountpoint: PathBuf,
    #[command(flatten)]
    key: KeyArgs,
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
    /// Let other users use the mount (access follows the backing files' owners and modes).
    #[arg(long)]
    allow_other: bool,
    /// This host's name for the per-host mount lock (default: /etc/machine-id, else hostname).
    #[arg(long, value_name = "ID")]
    host_id: Option<String>,
    /// FUSE worker threads.
    #[arg(long, value_name = "N", default_value_t = 8)]
    threads: usize,
    /// Log to this file (default: stderr with -f, else syslog).
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// Log filter, e.g. info, debug, kmsfs=trace (RUST_LOG wins when set).
    #[arg(long, value_name = "FILTER", default_value = "info")]
    log_level: String,
}

#[derive(Debug, Args)]
struct UnmountArgs {
    /// The mount point of a kmsfs mount.
    mountpoint: PathBuf,
}

/// Run the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init(a) => init::run(&a),
        Command::Mount(a) => mount::run(a),
        Command::Unmount(a) => unmount::run(&a),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kmsfs: {e}");
            1
        }
    }
}

/// An error for the user: one line that says what to do.
pub type CliResult = Result<(), String>;
