//! The mount helper form: `mount.fuse` (from `mount -t fuse.kmsfs`, /etc/fstab, or `mount -o
//! remount` of a kmsfs mount) runs `kmsfs VAULT MOUNTPOINT -o OPTS`. A mount becomes `kmsfs
//! mount VAULT MOUNTPOINT --option...`; a remount changes the mount's flags in place.

use std::ffi::OsString;
use std::path::PathBuf;

use super::CliError;
use super::mount_flags::MountFlags;

/// What the command line is.
#[derive(Debug, PartialEq, Eq)]
pub enum Helper {
    /// Not the helper form: parse it as it is.
    None,
    /// A mount, as `kmsfs mount` arguments.
    Mount(Vec<OsString>),
    /// `-o remount,...` of the mount at this path.
    Remount(PathBuf, MountFlags),
}

const SUBCOMMANDS: &[&str] = &[
    "init",
    "mount",
    "unmount",
    "status",
    "forget",
    "rewrap",
    "rekey",
    "fsck",
    "cat",
    "audit",
    "completions",
    "help",
];

/// Recognize and translate the helper form of `argv`.
pub fn parse(argv: Vec<OsString>) -> Result<Helper, CliError> {
    let Some(first) = argv.get(1).and_then(|a| a.to_str()) else {
        return Ok(Helper::None);
    };
    if argv.len() < 3 || first.starts_with('-') || SUBCOMMANDS.contains(&first) {
        return Ok(Helper::None);
    }
    let Some(from_mount) = helper_call(&argv) else {
        // A typo of a subcommand (`kmsfs umount MNT`): clap says so, with a suggestion.
        return Ok(Helper::None);
    };
    let mut out: Vec<OsString> = vec![
        "kmsfs".into(),
        "mount".into(),
        argv[1].clone(),
        argv[2].clone(),
    ];
    // mount(8) drops `dev` and `suid` (its defaults) before it calls a helper, and passes
    // `nodev`/`nosuid` when asked: for root, the helper form follows mount(8) as ext4 does.
    // `kmsfs mount` (and every mount by another user) stays nodev,nosuid unless asked.
    // Only for a call that looks like mount(8)'s: a root who forgot the subcommand gets
    // `kmsfs mount`'s nodev,nosuid.
    let root = crate::sys::process::euid() == 0 && from_mount;
    let mut flags = MountFlags {
        dev: root,
        suid: root,
        ..MountFlags::default()
    };
    let mut remount = false;
    let mut source = None;
    let mut rest = argv[3..].iter();
    while let Some(arg) = rest.next() {
        let opts = match arg.to_str() {
            Some("-o") => rest
                .next()
                .and_then(|o| o.to_str())
                .ok_or("-o needs a value")?
                .to_string(),
            Some(o) if o.starts_with("-o") => o[2..].to_string(),
            // mount.fuse adds these for its own bookkeeping.
            Some("-n" | "-s" | "-v") => continue,
            _ => {
                return Err(format!(
                    "unexpected argument {arg:?}: use kmsfs mount VAULT MOUNTPOINT"
                )
                .into());
            }
        };
        for opt in opts.split(',').filter(|o| !o.is_empty()) {
            let (name, value) = opt
                .split_once('=')
                .map_or((opt, None), |(n, v)| (n, Some(v)));
            let flag = |f: &str| -> Vec<OsString> { vec![f.into()] };
            let with = |f: &str| -> Result<Vec<OsString>, CliError> {
                let v = value
                    .ok_or_else(|| format!("mount option {name} needs a value ({name}=...)"))?;
                Ok(vec![f.into(), v.into()])
            };
            if value.is_none() && flags.take(name) {
                continue;
            }
            out.extend(match name {
                "key_ttl" => with("--key-ttl")?,
                "key_cache_size" => with("--key-cache-size")?,
                "key_pool_size" => with("--key-pool-size")?,
                "key_file" => with("--key-file")?,
                "kms_key_id" => with("--kms-key-id")?,
                "volume_id" => with("--volume-id")?,
                "host_id" => with("--host-id")?,
                "threads" => with("--threads")?,
                "fd_cache" => with("--fd-cache")?,
                "attr_ttl" => with("--attr-ttl")?,
                "readahead" => with("--readahead")?,
                "spare_files" => with("--spare-files")?,
                "log_file" => with("--log-file")?,
                "log_level" => with("--log-level")?,
                "allow_other" => flag("--allow-other"),
                "writeback_cache" => flag("--writeback-cache"),
                "read_only" => flag("--read-only"),
                "nonempty" => flag("--nonempty"),
                // `mount -t fuse.kmsfs TAG MNT -o source=VAULT`: the vault, with TAG as the
                // name the mount table shows (fstests names devices that way).
                "source" => {
                    source = Some(
                        value
                            .ok_or("mount option source needs a value")?
                            .to_string(),
                    );
                    vec![]
                }
                "remount" => {
                    remount = true;
                    vec![]
                }
                // mount(8) bookkeeping, and what the kernel shows of a FUSE mount (mount.fuse
                // passes the current options back on a remount).
                "defaults"
                | "auto"
                | "noauto"
                | "user"
                | "nouser"
                | "users"
                | "_netdev"
                | "nofail"
                | "user_id"
                | "group_id"
                | "default_permissions"
                | "fsname"
                | "subtype"
                | "max_read"
                | "blksize" => vec![],
                other => return Err(format!("unknown mount option {other} (see man kmsfs)").into()),
            });
        }
    }
    if remount {
        return Ok(Helper::Remount(PathBuf::from(&argv[2]), flags));
    }
    if let Some(vault) = source {
        out.extend(["--fsname".into(), argv[1].clone()]);
        out[2] = vault.into();
    }
    if flags.ro {
        out.push("--read-only".into());
    }
    let list = flags.to_list();
    if !list.is_empty() {
        out.extend(["--flags".into(), list.into()]);
    }
    Ok(Helper::Mount(out))
}

/// Whether `argv` is a mount helper's call rather than a mistyped subcommand: called as
/// `mount.*`, or given options (`-o`, as mount.fuse3 passes them) — then `Some(true)`, a call
/// from mount(8) — or two existing paths, the second a directory (`Some(false)`).
fn helper_call(argv: &[OsString]) -> Option<bool> {
    let called_as_mount = std::path::Path::new(&argv[0])
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("mount."));
    let has_options = argv[3..]
        .iter()
        .any(|a| a.to_str().is_some_and(|a| a.starts_with("-o")));
    let two_paths = argv.len() == 3
        && std::path::Path::new(&argv[1]).exists()
        && std::path::Path::new(&argv[2]).is_dir();
    if called_as_mount || has_options {
        Some(true)
    } else if two_paths {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(Into::into).collect()
    }

    #[test]
    fn the_helper_form_maps_options_and_remounts() {
        let got = parse(args(&[
            "kmsfs",
            "/v",
            "/m",
            "-o",
            "rw,key_ttl=5,allow_other,_netdev,noatime,dev,nosuid",
        ]))
        .expect("ok");
        let want = [
            "kmsfs",
            "mount",
            "/v",
            "/m",
            "--key-ttl",
            "5",
            "--allow-other",
            "--flags",
            "dev,noatime",
        ];
        assert_eq!(got, Helper::Mount(args(&want)));
        assert_eq!(
            parse(args(&["kmsfs", "mount", "/v", "/m"])).expect("ok"),
            Helper::None
        );
        // A typo is left to clap, even when the path after it exists.
        assert_eq!(
            parse(args(&["kmsfs", "umount", "/"])).expect("ok"),
            Helper::None
        );
        assert_eq!(
            parse(args(&["kmsfs", "umount", "/nonexistent-vault", "/"])).expect("ok"),
            Helper::None
        );
        // Two existing paths are a mount, as mount.fuse3 passes it without options; without
        // mount(8)'s options it keeps nodev,nosuid even for root.
        assert_eq!(
            parse(args(&["kmsfs", "/", "/"])).expect("ok"),
            Helper::Mount(args(&["kmsfs", "mount", "/", "/"]))
        );
        assert!(parse(args(&["kmsfs", "/v", "/m", "-o", "bogus"])).is_err());
        let tagged = parse(args(&[
            "kmsfs",
            "dev1",
            "/m",
            "-o",
            "source=/v,allow_other,nodev,nosuid",
        ]));
        let want = [
            "kmsfs",
            "mount",
            "/v",
            "/m",
            "--allow-other",
            "--fsname",
            "dev1",
        ];
        assert_eq!(tagged.expect("ok"), Helper::Mount(args(&want)));
        // Without nodev/nosuid, root gets mount(8)'s defaults; others never.
        let plain = parse(args(&["kmsfs", "/v", "/m", "-o", "rw"])).expect("ok");
        let root = crate::sys::process::euid() == 0;
        let with_flags =
            |l: &str| Helper::Mount(args(&["kmsfs", "mount", "/v", "/m", "--flags", l]));
        if root {
            assert_eq!(plain, with_flags("dev,suid"));
        } else {
            assert_eq!(plain, Helper::Mount(args(&["kmsfs", "mount", "/v", "/m"])));
        }
        // What mount.fuse passes on `mount -o remount,ro MOUNTPOINT`.
        let opts = "ro,nosuid,nodev,relatime,remount,user_id=0,group_id=0,default_permissions";
        match parse(args(&["kmsfs", "/v", "/m", "-o", opts])).expect("ok") {
            Helper::Remount(m, f) => {
                assert_eq!(m, PathBuf::from("/m"));
                assert!(f.ro && !f.dev && !f.suid);
            }
            other => panic!("{other:?}"),
        }
    }

    /// A subcommand missing from the list would make `kmsfs SUBCOMMAND ARG` a helper mount.
    #[test]
    fn every_subcommand_is_listed() {
        use clap::CommandFactory;
        for sub in super::super::Cli::command().get_subcommands() {
            assert!(SUBCOMMANDS.contains(&sub.get_name()), "{}", sub.get_name());
        }
        assert_eq!(
            parse(args(&["kmsfs", "completions", "bash"])).expect("ok"),
            Helper::None
        );
    }
}
