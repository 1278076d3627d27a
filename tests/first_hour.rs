//! A new user's mistakes and a system administrator's tools, through the binary (issue "a
//! sysadmin's first hour"): dangerous targets refused and nothing left behind, typos answered
//! by clap, exit codes by kind, missing AWS credentials named; with mounts: a dead mount
//! cleaned up, sd_notify readiness, logs without colour and with a first line.

mod common;

use std::ffi::OsStr;
use std::fs;

use common::mount::{KMSFS, Vault, stderr};

/// The exit statuses kmsfs.1 documents.
const USAGE: i32 = 2;
const TARGET: i32 = 3;
const KEY: i32 = 4;

#[test]
fn init_refuses_a_directory_that_holds_files_unless_forced() {
    let v = Vault::new();
    fs::create_dir(&v.backing).expect("mkdir");
    fs::write(v.backing.join("old.txt"), b"keep").expect("write");
    let out = v.try_init(&[]);
    assert_eq!(out.status.code(), Some(TARGET), "{}", stderr(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert!(
        !v.backing.join(".kmsfs").exists(),
        "a refused init left .kmsfs"
    );
    assert!(!v.key_file.exists(), "a refused init made a key file");
    assert_eq!(fs::read(v.backing.join("old.txt")).expect("kept"), b"keep");
    v.init(&["--force"]);
    assert!(v.backing.join(".kmsfs").exists());
}

#[test]
fn a_failed_init_leaves_nothing_behind() {
    let v = Vault::new()
        .with_env("AWS_ENDPOINT_URL_KMS", "http://127.0.0.1:9")
        .with_env("AWS_REGION", "us-east-1")
        .with_env("AWS_ACCESS_KEY_ID", "x")
        .with_env("AWS_SECRET_ACCESS_KEY", "y");
    let target = v.backing.join("deeper");
    let out = v
        .command([
            OsStr::new("init"),
            target.as_os_str(),
            OsStr::new("--kms-key-id"),
            OsStr::new("alias/none"),
        ])
        .output()
        .expect("run init");
    assert_eq!(out.status.code(), Some(KEY), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("127.0.0.1:9"),
        "the unreachable endpoint is not named: {}",
        stderr(&out)
    );
    assert!(
        !v.backing.exists(),
        "a failed init left {}",
        v.backing.display()
    );
}

#[test]
fn missing_aws_credentials_are_named_as_such() {
    let v = Vault::new();
    let out = std::process::Command::new(KMSFS)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", v.root())
        .env("XDG_CONFIG_HOME", v.root().join("config"))
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args([OsStr::new("init"), v.backing.as_os_str()])
        .args(["--kms-key-id", "alias/none"])
        .output()
        .expect("run init");
    assert_eq!(out.status.code(), Some(KEY), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no AWS credentials found"),
        "{}",
        stderr(&out)
    );
    assert!(!v.backing.exists());
}

#[test]
fn a_mistyped_subcommand_gets_clap_and_a_suggestion() {
    let v = Vault::new();
    let out = v.command(["umount", "/tmp"]).output().expect("run");
    assert_eq!(out.status.code(), Some(USAGE), "{}", stderr(&out));
    assert!(stderr(&out).contains("unmount"), "{}", stderr(&out));
    let version = v.command(["--version"]).output().expect("run");
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn fsck_tells_a_wrong_key_from_a_missing_vault() {
    let v = Vault::new();
    v.init(&[]);
    let wrong = v.root().join("wrong.key");
    kmsfs::keys::local::LocalProvider::create(&wrong).expect("a second key");
    let out = v
        .command([
            OsStr::new("fsck"),
            v.backing.as_os_str(),
            OsStr::new("--key-file"),
            wrong.as_os_str(),
        ])
        .output()
        .expect("run fsck");
    assert_eq!(out.status.code(), Some(KEY), "{}", stderr(&out));
    let missing = v.root().join("no-such-vault");
    let out = v
        .command([OsStr::new("fsck"), missing.as_os_str()])
        .output()
        .expect("run fsck");
    assert_eq!(out.status.code(), Some(TARGET), "{}", stderr(&out));
}

#[cfg(feature = "fuse-tests")]
mod mounted {
    use super::*;
    use common::mount::is_mounted;
    use std::os::unix::net::UnixDatagram;

    /// Exit status of `fsck` that found damage.
    const DAMAGE: i32 = 5;

    #[test]
    fn mount_refuses_a_busy_mount_point_one_in_the_vault_and_a_live_mount() {
        let v = Vault::new();
        v.init(&[]);
        fs::write(v.mnt.join("here"), b"x").expect("write");
        let e = v.try_mount(&[]).err().expect("a non-empty mount point");
        assert!(e.contains("--nonempty"), "{e}");
        let m = v.mount(&["--nonempty"]);
        m.unmount();
        fs::remove_file(v.mnt.join("here")).expect("rm");
        let inside = v.backing.join("inside");
        fs::create_dir(&inside).expect("mkdir");
        let e = v
            .try_mount_at(&inside, &[])
            .err()
            .expect("inside the vault");
        assert!(e.contains("inside the vault"), "{e}");
        fs::remove_dir(&inside).expect("rmdir");
        let m = v.mount(&[]);
        let other = Vault::new();
        other.init(&[]);
        let out = other
            .command([
                OsStr::new("mount"),
                other.backing.as_os_str(),
                v.mnt.as_os_str(),
            ])
            .output()
            .expect("mount over a live mount");
        assert_eq!(out.status.code(), Some(TARGET), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("already a mount point"),
            "{}",
            stderr(&out)
        );
        assert!(is_mounted(&v.mnt), "the first mount went away");
        m.unmount();
    }

    #[test]
    fn fsck_damage_has_its_own_exit_status() {
        let v = Vault::new();
        v.init(&[]);
        let m = v.mount(&[]);
        fs::write(m.join("f"), vec![7u8; 10_000]).expect("write");
        m.unmount();
        let b = v
            .backing_files()
            .into_iter()
            .next()
            .expect("a backing file");
        let mut bytes = fs::read(&b).expect("read");
        bytes[1100] ^= 0x55;
        fs::write(&b, bytes).expect("tamper");
        let out = v
            .command([OsStr::new("fsck"), v.backing.as_os_str()])
            .output()
            .expect("fsck");
        assert_eq!(out.status.code(), Some(DAMAGE), "{}", stderr(&out));
    }

    #[test]
    fn a_dead_mount_is_cleaned_up_by_the_next_mount() {
        let v = Vault::new();
        v.init(&[]);
        let m = v.mount(&[]);
        let pid = m.daemon_pid().expect("daemon pid");
        // SAFETY: a plain kill(2) of the daemon this test started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // Dead once the kernel says so: the last of its threads closed /dev/fuse (the leader
        // shows as a zombie earlier).
        let dead = || {
            fs::read_dir(v.mnt.as_path()).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN))
        };
        while !(common::mount::process_state(pid).is_none() || dead())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // `m` stays until the end: its drop would unmount the dead mount itself.
        let again = v.mount(&[]);
        fs::write(again.join("f"), b"works").expect("write after the cleanup");
        again.unmount();
        drop(m);
    }

    #[test]
    fn a_foreground_mount_notifies_systemd_and_logs_without_colour() {
        let v = Vault::new();
        v.init(&[]);
        let sock = v.root().join("notify.sock");
        let rx = UnixDatagram::bind(&sock).expect("bind");
        rx.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .expect("timeout");
        let err_log = v.root().join("fg.err");
        let mut child = v
            .command([
                OsStr::new("mount"),
                v.backing.as_os_str(),
                v.mnt.as_os_str(),
                OsStr::new("-f"),
            ])
            .env("NOTIFY_SOCKET", &sock)
            .stderr(fs::File::create(&err_log).expect("log file"))
            .spawn()
            .expect("mount -f");
        let mut buf = [0u8; 512];
        let got = rx
            .recv(&mut buf)
            .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
        let mounted = is_mounted(&v.mnt);
        let out = v
            .command([OsStr::new("unmount"), v.mnt.as_os_str()])
            .output()
            .expect("unmount");
        let _ = child.wait();
        let got = got.expect("no sd_notify message within 30 s");
        assert!(got.contains("READY=1"), "{got}");
        assert!(mounted, "READY=1 before the mount was usable");
        assert!(out.status.success(), "{}", stderr(&out));
        let log = fs::read_to_string(&err_log).expect("log");
        assert!(!log.contains("\x1b["), "ANSI escapes in a piped log: {log}");
        assert!(
            log.contains(&format!("kmsfs {} mounting", env!("CARGO_PKG_VERSION"))),
            "{log}"
        );
    }
}
