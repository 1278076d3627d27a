//! The generic mount flags of mount(8) (`-o noatime,dev,...`): parsed once, applied at mount
//! (through fuser's options, the mount point's flags and O_NOATIME opens) and by `-o remount`.

/// What a flag list asks for. Defaults: nodev, nosuid, exec, relatime, async.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MountFlags {
    /// Device files work (root only).
    pub dev: bool,
    /// Set-ID bits work (root only).
    pub suid: bool,
    /// Programs may not be executed.
    pub noexec: bool,
    /// Reads do not update access times.
    pub noatime: bool,
    /// Directory reads do not update access times.
    pub nodiratime: bool,
    /// Every access updates the access time (not only the first after a change).
    pub strictatime: bool,
    /// Writes are synchronous.
    pub sync: bool,
    /// Directory changes are synchronous.
    pub dirsync: bool,
    /// Read-only (for a remount; a mount takes `--read-only`).
    pub ro: bool,
}

impl MountFlags {
    /// Parse a comma-separated list; unknown flags are an error naming them.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut f = MountFlags::default();
        for flag in list.split(',').filter(|s| !s.is_empty()) {
            if flag == "ro" {
                return Err("ro is not a --flags flag: use --read-only".into());
            }
            if !f.take(flag) {
                return Err(format!(
                    "unknown mount flag {flag} (known: dev, nodev, suid, nosuid, exec, noexec, atime, noatime, diratime, nodiratime, relatime, norelatime, strictatime, lazytime, sync, async, dirsync, rw; --read-only for ro)"
                ));
            }
        }
        Ok(f)
    }

    /// Take one flag if it is a generic mount flag; false otherwise.
    pub fn take(&mut self, flag: &str) -> bool {
        match flag {
            "dev" => self.dev = true,
            "nodev" => self.dev = false,
            "suid" => self.suid = true,
            "nosuid" => self.suid = false,
            "exec" => self.noexec = false,
            "noexec" => self.noexec = true,
            "noatime" => self.noatime = true,
            "atime" => self.noatime = false,
            "nodiratime" => self.nodiratime = true,
            "diratime" => self.nodiratime = false,
            "relatime" | "norelatime" | "lazytime" | "nolazytime" => {
                self.strictatime = false;
            }
            "strictatime" => self.strictatime = true,
            "sync" => self.sync = true,
            "async" => self.sync = false,
            "dirsync" => self.dirsync = true,
            "ro" => self.ro = true,
            "rw" => self.ro = false,
            _ => return false,
        }
        true
    }

    /// The list back, for the fstab form's translation into `--flags`.
    pub fn to_list(self) -> String {
        let pairs = [
            (self.dev, "dev"),
            (self.suid, "suid"),
            (self.noexec, "noexec"),
            (self.noatime, "noatime"),
            (self.nodiratime, "nodiratime"),
            (self.strictatime, "strictatime"),
            (self.sync, "sync"),
            (self.dirsync, "dirsync"),
        ];
        pairs
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The mount(2) flags: everything but read-only for the mount point, `ro` added for a
    /// remount.
    pub fn ms_flags(self) -> libc::c_ulong {
        let mut f = 0;
        let on = |b: bool, flag: libc::c_ulong| if b { flag } else { 0 };
        f |= on(!self.dev, libc::MS_NODEV);
        f |= on(!self.suid, libc::MS_NOSUID);
        f |= on(self.noexec, libc::MS_NOEXEC);
        f |= on(self.noatime, libc::MS_NOATIME);
        f |= on(self.nodiratime, libc::MS_NODIRATIME);
        f |= on(self.strictatime, libc::MS_STRICTATIME);
        f |= on(!self.noatime && !self.strictatime, libc::MS_RELATIME);
        f |= on(self.sync, libc::MS_SYNCHRONOUS);
        f |= on(self.dirsync, libc::MS_DIRSYNC);
        f | on(self.ro, libc::MS_RDONLY)
    }
}

/// `mount -o remount,...` of a kmsfs mount (mount(8) runs the helper form): change the mount's
/// flags in place. The daemon keeps running; a remount read-only makes the kernel refuse
/// writes, and back to read-write lets them through again.
pub fn remount(mountpoint: &std::path::Path, flags: MountFlags) -> Result<(), String> {
    crate::sys::process::remount(mountpoint, flags.ms_flags(), false)
        .map_err(|e| format!("remount of {}: {e}", mountpoint.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_map_to_mount_flags() {
        let f = MountFlags::parse("noatime,dev,suid,nodiratime").expect("parse");
        assert!(f.dev && f.suid && f.noatime && f.nodiratime && !f.noexec);
        assert_eq!(f.to_list(), "dev,suid,noatime,nodiratime");
        let ms = f.ms_flags();
        assert_eq!(ms & (libc::MS_NODEV | libc::MS_NOSUID), 0);
        assert_ne!(ms & libc::MS_NOATIME, 0);
        assert_eq!(ms & libc::MS_RELATIME, 0);
        let d = MountFlags::default().ms_flags();
        assert_eq!(d, libc::MS_NODEV | libc::MS_NOSUID | libc::MS_RELATIME);
        assert!(MountFlags::parse("ro,remount").is_err());
        // --flags has no ro (--read-only says it); a remount's ro comes through take().
        assert!(MountFlags::parse("ro").is_err());
        let mut r = MountFlags::default();
        assert!(r.take("ro"));
        assert_ne!(r.ms_flags() & libc::MS_RDONLY, 0);
    }
}
