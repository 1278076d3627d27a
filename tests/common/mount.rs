//! Test harness for the mounted file system: a `Vault` fixture (a temporary directory holding a
//! backing dir, a mount point, a key file, a log file and this test's own XDG config and runtime
//! dirs) and a `MountGuard` that always unmounts, also when the test panics.
//!
//! The `kmsfs` binary is run as a child process; its environment (XDG dirs, AWS settings) is set
//! per command with `Command::env`, never on the test process, because tests run in parallel
//! threads of one process.
#![allow(dead_code)] // each test binary uses a different part of `common`

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The binary under test.
pub const KMSFS: &str = env!("CARGO_BIN_EXE_kmsfs");
/// How long a mount may take to appear or disappear (a slow CI runner, a cold KMS client).
const MOUNT_WAIT: Duration = Duration::from_secs(30);
/// Poll interval while waiting for a condition.
const POLL: Duration = Duration::from_millis(10);

/// A vault in a fresh temporary directory under /var/tmp:
/// `ROOT/vault` (backing dir), `ROOT/mnt` (mount point), `ROOT/master.key`, `ROOT/kmsfs.log`,
/// `ROOT/config` (XDG_CONFIG_HOME) and `ROOT/run` (XDG_RUNTIME_DIR).
pub struct Vault {
    /// The backing directory (made by `init`).
    pub backing: PathBuf,
    /// The mount point (exists, empty).
    pub mnt: PathBuf,
    /// The local provider's master key file (created by `init`).
    pub key_file: PathBuf,
    /// Where the daemon logs (`--log-file`).
    pub log_file: PathBuf,
    env: Vec<(String, String)>,
    /// Mount under this open-file limit (soft and hard), when set.
    fd_limit: Option<u64>,
    path: PathBuf,
    // Last, so the paths above stay valid while a guard holding copies is dropped first.
    root: TempDir,
}

impl Vault {
    /// A fresh, uninitialised vault.
    pub fn new() -> Vault {
        let root = tempfile::Builder::new()
            .prefix("kmsfs-test-")
            .tempdir_in("/var/tmp")
            .expect("temp dir under /var/tmp");
        let path = root.path().canonicalize().expect("canonical temp dir");
        let (config, run) = (path.join("config"), path.join("run"));
        for d in [&config, &run, &path.join("mnt")] {
            std::fs::create_dir(d).expect("create fixture dir");
        }
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).expect("chmod run");
        Vault {
            backing: path.join("vault"),
            mnt: path.join("mnt"),
            key_file: path.join("master.key"),
            log_file: path.join("kmsfs.log"),
            env: vec![
                ("XDG_CONFIG_HOME".into(), config.display().to_string()),
                ("XDG_RUNTIME_DIR".into(), run.display().to_string()),
            ],
            fd_limit: None,
            path,
            root,
        }
    }

    /// The temporary directory holding everything.
    pub fn root(&self) -> &Path {
        &self.path
    }

    /// A new empty directory `ROOT/name` (another mount point, a scratch dir).
    pub fn dir(&self, name: &str) -> PathBuf {
        let p = self.root().join(name);
        std::fs::create_dir(&p).expect("create dir");
        p
    }

    /// Start this vault's mounts under an open-file limit of `n` (soft and hard), as
    /// `ulimit -n` before mounting would.
    pub fn with_fd_limit(mut self, n: u64) -> Vault {
        self.fd_limit = Some(n);
        self
    }

    /// Also pass `key=value` to every `kmsfs` command of this vault.
    pub fn with_env(mut self, key: &str, value: &str) -> Vault {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Let this vault's `kmsfs` commands reach KMS only at `endpoint` (moto or a proxy in front
    /// of it), with moto's dummy credentials and empty AWS config files of their own, so
    /// nothing from the host's ~/.aws or instance metadata leaks in.
    pub fn with_kms(self, endpoint: &str) -> Vault {
        let (config, credentials) = (
            self.root().join("aws-config"),
            self.root().join("aws-credentials"),
        );
        for f in [&config, &credentials] {
            std::fs::write(f, "").expect("empty AWS config file");
        }
        self.with_env("AWS_ACCESS_KEY_ID", "testing")
            .with_env("AWS_SECRET_ACCESS_KEY", "testing")
            .with_env("AWS_REGION", super::moto::REGION)
            .with_env("AWS_ENDPOINT_URL_KMS", endpoint)
            .with_env("AWS_EC2_METADATA_DISABLED", "true")
            .with_env("AWS_CONFIG_FILE", &config.display().to_string())
            .with_env(
                "AWS_SHARED_CREDENTIALS_FILE",
                &credentials.display().to_string(),
            )
    }

    /// Let other users reach the mount point and the backing dir (mode 0755 on the temp root,
    /// which `TempDir` makes 0700).
    pub fn open_to_others(&self) {
        for p in [self.root(), &self.mnt, &self.backing] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
        }
    }

    /// A `kmsfs` command with this vault's environment.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        command(&self.env, args)
    }

    /// Run `kmsfs init BACKING --key-file KEY EXTRA...` (no `--key-file` when `extra` names a
    /// key itself) and return its output, successful or not.
    pub fn try_init(&self, extra: &[&str]) -> Output {
        let mut cmd = self.command([OsStr::new("init"), self.backing.as_os_str()]);
        if !extra
            .iter()
            .any(|a| *a == "--kms-key-id" || *a == "--key-file")
        {
            cmd.arg("--key-file").arg(&self.key_file);
        }
        run(cmd.args(extra))
    }

    /// `try_init`, asserting success.
    pub fn init(&self, extra: &[&str]) {
        let out = self.try_init(extra);
        assert!(out.status.success(), "kmsfs init failed: {}", stderr(&out));
    }

    /// Run `kmsfs mount BACKING MNT --log-file LOG EXTRA...` (daemonized) and wait for the mount.
    pub fn mount(&self, extra: &[&str]) -> MountGuard {
        self.mount_at(&self.mnt, extra)
    }

    /// `mount` on another mount point.
    pub fn mount_at(&self, mnt: &Path, extra: &[&str]) -> MountGuard {
        self.try_mount_at(mnt, extra)
            .unwrap_or_else(|e| panic!("kmsfs mount failed: {e}"))
    }

    /// Run `kmsfs mount`; on failure its stderr (and nothing is left mounted).
    pub fn try_mount(&self, extra: &[&str]) -> Result<MountGuard, String> {
        self.try_mount_at(&self.mnt, extra)
    }

    /// `try_mount` on another mount point.
    pub fn try_mount_at(&self, mnt: &Path, extra: &[&str]) -> Result<MountGuard, String> {
        let mut cmd = self.command([
            OsStr::new("mount"),
            self.backing.as_os_str(),
            mnt.as_os_str(),
        ]);
        if let Some(n) = self.fd_limit {
            cmd = Command::new("prlimit");
            cmd.arg(format!("--nofile={n}:{n}"))
                .arg("--")
                .arg(KMSFS)
                .args([
                    OsStr::new("mount"),
                    self.backing.as_os_str(),
                    mnt.as_os_str(),
                ])
                .stdin(Stdio::null());
            for (k, v) in &self.env {
                cmd.env(k, v);
            }
        }
        cmd.arg("--log-file").arg(&self.log_file).args(extra);
        let out = run(&mut cmd);
        // The guard exists before any check, so whatever got mounted is unmounted again.
        let mut guard = MountGuard {
            mnt: mnt.to_path_buf(),
            env: self.env.clone(),
            unmounted: false,
        };
        if !out.status.success() {
            assert!(
                !is_mounted(mnt),
                "kmsfs mount failed but {} is mounted: {}",
                mnt.display(),
                stderr(&out)
            );
            guard.unmounted = true;
            return Err(stderr(&out));
        }
        let deadline = Instant::now() + MOUNT_WAIT;
        while !is_mounted(mnt) {
            assert!(
                Instant::now() < deadline,
                "{} not mounted after {MOUNT_WAIT:?}",
                mnt.display()
            );
            std::thread::sleep(POLL);
        }
        Ok(guard)
    }

    /// Every backing entry made for a plain file, directory or link (recursively), leaving out
    /// the vault's own `.kmsfs*` entries (config dir, per-directory IV files).
    pub fn backing_entries(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut todo = vec![self.backing.clone()];
        while let Some(d) = todo.pop() {
            for e in
                std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read_dir {}: {e}", d.display()))
            {
                let e = e.expect("dir entry");
                if e.file_name().as_encoded_bytes().starts_with(b".kmsfs") {
                    continue;
                }
                if e.file_type().expect("file type").is_dir() {
                    todo.push(e.path());
                }
                out.push(e.path());
            }
        }
        out
    }

    /// The backing files of plain regular files (see `backing_entries`).
    pub fn backing_files(&self) -> Vec<PathBuf> {
        self.backing_entries()
            .into_iter()
            .filter(|p| p.symlink_metadata().is_ok_and(|m| m.is_file()))
            .collect()
    }

    /// Run `kmsfs forget` on the mount at `mnt` (drop every cached key) and assert it worked.
    pub fn forget(&self, mnt: &Path) {
        let out = run(&mut self.command(["forget".as_ref(), mnt.as_os_str()]));
        assert!(
            out.status.success(),
            "kmsfs forget failed: {}",
            stderr(&out)
        );
    }

    /// The daemon's log so far (empty when there is none yet).
    /// `kmsfs status --json` of the mount at `mnt`.
    pub fn status_json(&self, mnt: &Path) -> serde_json::Value {
        let out = self
            .command([OsStr::new("status"), mnt.as_os_str(), OsStr::new("--json")])
            .output()
            .expect("run kmsfs status");
        assert!(
            out.status.success(),
            "kmsfs status failed: {}",
            stderr(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "kmsfs status --json: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// The runtime dir where mounts record their daemon (this vault's XDG_RUNTIME_DIR/kmsfs).
    pub fn runtime_dir(&self) -> PathBuf {
        self.root().join("run").join("kmsfs")
    }
}

/// A mounted file system; unmounted on drop, whatever happened in the test.
pub struct MountGuard {
    mnt: PathBuf,
    env: Vec<(String, String)>,
    unmounted: bool,
}

impl MountGuard {
    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// `MNT/rel`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The daemon pid recorded in the runtime dir (`$XDG_RUNTIME_DIR/kmsfs/*.pid`: the pid, then
    /// the mount point).
    pub fn daemon_pid(&self) -> Option<u32> {
        let dir = self
            .env
            .iter()
            .find(|(k, _)| k == "XDG_RUNTIME_DIR")?
            .1
            .clone();
        let want = self.mnt.display().to_string();
        std::fs::read_dir(Path::new(&dir).join("kmsfs"))
            .ok()?
            .flatten()
            .find_map(|e| {
                let text = std::fs::read_to_string(e.path()).ok()?;
                let mut lines = text.lines();
                let pid = lines.next()?.trim().parse().ok()?;
                (lines.next()? == want).then_some(pid)
            })
    }

    /// Run `kmsfs unmount` and assert that it succeeded and the mount is gone.
    pub fn unmount(mut self) {
        let out = run(&mut command(
            &self.env,
            [OsStr::new("unmount"), self.mnt.as_os_str()],
        ));
        self.unmounted = !is_mounted(&self.mnt);
        assert!(
            out.status.success(),
            "kmsfs unmount {} failed: {}",
            self.mnt.display(),
            stderr(&out)
        );
        assert!(
            self.unmounted,
            "kmsfs unmount succeeded but {} is still mounted",
            self.mnt.display()
        );
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.unmounted {
            return;
        }
        // Errors are ignored: this may run while a failed test unwinds.
        let _ = command(&self.env, [OsStr::new("unmount"), self.mnt.as_os_str()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.mnt)
                .stderr(Stdio::null())
                .status();
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mnt)
                .stderr(Stdio::null())
                .status();
        }
        if is_mounted(&self.mnt) && !std::thread::panicking() {
            panic!("cannot unmount {}", self.mnt.display());
        }
    }
}

/// A `kmsfs` command with `env` added to the inherited environment.
fn command<I, S>(env: &[(String, String)], args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(KMSFS);
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Run to completion, capturing stdout and stderr.
fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {KMSFS}: {e}"))
}

/// A command's stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// Whether something is mounted exactly at `mnt` (per /proc/self/mountinfo).
pub fn is_mounted(mnt: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    let want = mnt.to_str().expect("utf-8 mount point");
    info.lines()
        .any(|line| line.split(' ').nth(4).map(unescape).as_deref() == Some(want))
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let octal = |c: &u8| (b'0'..=b'7').contains(c);
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(octal) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The state letter of process `pid` (R, S, Z, ...), or `None` when it no longer exists.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
}

/// A small seeded PRNG (splitmix64): reproducible test data without extra dependencies.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A seed from `KMSFS_TEST_SEED`, else the clock; printed so a failure can be replayed.
    pub fn from_env(test: &str) -> Rng {
        let seed = std::env::var("KMSFS_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_nanos() as u64
            });
        println!("{test}: seed {seed} (replay with KMSFS_TEST_SEED={seed})");
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let out = Rng::hash(self.0);
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        out
    }

    /// The splitmix64 output for state `z`: a well-mixed 64-bit hash, for data that must be
    /// computable at any offset (the generator's n-th output is `hash(seed + (n-1)·γ)`).
    pub fn hash(z: u64) -> u64 {
        let mut z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

/// Assert that `path` holds exactly `want` (compared by length and sha256, naming the first
/// differing offset rather than dumping megabytes).
pub fn assert_contents(path: &Path, want: &[u8]) {
    use sha2::{Digest, Sha256};
    let got = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    if Sha256::digest(&got) != Sha256::digest(want) {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{}: {} bytes, expected {}; first difference at offset {at}",
            path.display(),
            got.len(),
            want.len()
        );
    }
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read_dir {}: {e}", d.display())) {
            let e = e.expect("dir entry");
            let t = e.file_type().expect("file type");
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}
