//! `kmsfs status [MOUNTPOINT] [--json]`: one mount's provider, key cache and counters, or,
//! without a mount point, every kmsfs mount of this host.

use std::path::Path;

use super::{CliError, CliResult, StatusArgs, control, unmount};

/// Run `kmsfs status`.
pub fn run(args: &StatusArgs) -> CliResult {
    let Some(mountpoint) = &args.mountpoint else {
        return list(args.json);
    };
    let mnt = mountpoint
        .canonicalize()
        .map_err(|e| CliError::target(format!("{}: {e}", mountpoint.display())))?;
    let v = control::request(&mnt, "status")?;
    if args.json {
        println!("{v}");
        return Ok(());
    }
    print!("{}", describe(&v));
    Ok(())
}

/// The kmsfs mounts of this host, one line each (status where this user may ask for it).
fn list(json: bool) -> CliResult {
    let mounts: Vec<_> = unmount::mounts()
        .into_iter()
        .filter(|(_, fstype, _)| fstype == "fuse.kmsfs")
        .collect();
    if json {
        let all: Vec<serde_json::Value> = mounts
            .iter()
            .map(|(point, _, source)| {
                let status = control::request(Path::new(point), "status").ok();
                serde_json::json!({ "mountpoint": point, "source": source, "status": status })
            })
            .collect();
        println!("{}", serde_json::Value::Array(all));
        return Ok(());
    }
    if mounts.is_empty() {
        println!("no kmsfs mounts on this host");
        return Ok(());
    }
    for (point, _, source) in &mounts {
        match control::request(Path::new(point), "status") {
            Ok(v) => println!(
                "{point}  vault {source}  {}  up {}  {} keys cached",
                provider_of(&v),
                duration(num(&v, "uptime_s")),
                num(&v, "cache_entries")
            ),
            // Another user's mount (its control socket is theirs), or a dead one.
            Err(e) => println!("{point}  vault {source}  ({e})"),
        }
    }
    Ok(())
}

/// A number field of a status answer (0 when missing).
fn num(v: &serde_json::Value, key: &str) -> u64 {
    v.get(key).and_then(|x| x.as_u64()).unwrap_or(0)
}

/// A text field of a status answer.
fn text(v: &serde_json::Value, key: &str) -> String {
    v.get(key)
        .map(|x| x.to_string().trim_matches('"').to_string())
        .unwrap_or_default()
}

/// "local key local:ab12..." or "AWS KMS key arn:... (us-west-2)" for people.
fn provider_of(v: &serde_json::Value) -> String {
    let kind = match text(v, "provider").as_str() {
        "local" => "local key",
        "aws-kms" => "AWS KMS key",
        "aws-kms-bucket-key" => "AWS KMS bucket key under",
        other => return format!("{other} key {}", text(v, "key_id")),
    };
    format!("{kind} {}{}", text(v, "key_id"), region_of(v))
}

/// " (us-west-2)", or " (us-west-2; multi-Region replica of the vault's key in us-east-1)"
/// when the key serving the mount is not the one the vault records; "" without a region.
fn region_of(v: &serde_json::Value) -> String {
    let Some(region) = v.get("key_region").and_then(|r| r.as_str()) else {
        return String::new();
    };
    let replica = v.get("multi_region_replica").and_then(|r| r.as_bool()) == Some(true);
    match v.get("vault_key_region").and_then(|r| r.as_str()) {
        Some(primary) if replica => {
            format!(" ({region}; multi-Region replica of the vault's key in {primary})")
        }
        _ => format!(" ({region})"),
    }
}

/// The status of one mount for people.
fn describe(v: &serde_json::Value) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "mount      {} (pid {}, up {})",
        text(v, "mountpoint"),
        text(v, "pid"),
        duration(num(v, "uptime_s"))
    ));
    line(format!("vault      {}", text(v, "vault")));
    line(format!("key        {}", provider_of(v)));
    if let Some(made) = v.get("oldest_key_made").and_then(|t| t.as_u64()) {
        line(format!(
            "data keys  oldest in use {}",
            super::when::key_age(made, crate::sys::unix_now())
        ));
    }
    line(format!(
        "key cache  {} of {} keys, each kept {}; {} hits, {} misses",
        num(v, "cache_entries"),
        num(v, "cache_capacity"),
        duration(num(v, "ttl_s")),
        num(v, "hits"),
        num(v, "misses")
    ));
    if text(v, "provider") != "local" {
        line(format!(
            "KMS        {} calls, {} errors",
            num(v, "kms_calls"),
            num(v, "kms_errors")
        ));
    }
    line(format!(
        "files      {} open, {} integrity errors",
        num(v, "open_files"),
        num(v, "tamper_events")
    ));
    line(format!(
        "inodes     {} known, {} descriptors held for them (limit {}), {} open in all",
        num(v, "inodes_known"),
        num(v, "fds_held"),
        num(v, "fd_cache_limit"),
        num(v, "fds_open")
    ));
    line(format!(
        "memory     {} resident",
        bytes(num(v, "rss_kib") * 1024)
    ));
    for w in v
        .get("warnings")
        .and_then(|w| w.as_array())
        .into_iter()
        .flatten()
    {
        line(format!("WARNING    {}", w.as_str().unwrap_or_default()));
    }
    out
}

/// A byte count for people: "512 B", "1.5 KiB", "1.2 GiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A duration for people: "45 s", "4 m 30 s", "3 h 5 m", "2 d 4 h".
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, _) => format!("{m} m {s} s"),
        (0, _, _) => format!("{h} h {m} m"),
        _ => format!("{d} d {h} h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_as_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(1_288_490_189), "1.2 GiB");
        assert_eq!(duration(45), "45 s");
        assert_eq!(duration(270), "4 m 30 s");
        assert_eq!(duration(3 * 3600 + 300), "3 h 5 m");
        assert_eq!(duration(2 * 86400 + 4 * 3600), "2 d 4 h");
    }

    #[test]
    fn the_local_provider_is_a_local_key_not_kms() {
        let v = serde_json::json!({
            "provider": "local", "key_id": "local:ab", "mountpoint": "/m", "uptime_s": 270,
            "ttl_s": 300, "rss_kib": 2048
        });
        let text = describe(&v);
        assert!(text.contains("local key local:ab"), "{text}");
        assert!(!text.contains("KMS"), "{text}");
        assert!(text.contains("up 4 m 30 s"), "{text}");
        assert!(text.contains("2.0 MiB resident"), "{text}");
        assert!(!text.contains("data keys"), "no key time known yet: {text}");
        let mut v = v;
        v["oldest_key_made"] = serde_json::json!(1_796_083_200u64);
        let text = describe(&v);
        assert!(
            text.contains("data keys  oldest in use made 2026-12-01 00:00:00 UTC"),
            "{text}"
        );
    }

    #[test]
    fn a_replica_key_says_whose_replica_it_is() {
        let west = "arn:aws:kms:us-west-2:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab";
        let east = "arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab";
        let v = serde_json::json!({
            "provider": "aws-kms", "key_id": west, "key_region": "us-west-2",
            "vault_key_id": east, "vault_key_region": "us-east-1", "multi_region_replica": true,
        });
        let text = describe(&v);
        assert!(
            text.contains(&format!(
                "AWS KMS key {west} (us-west-2; multi-Region replica of the vault's key in us-east-1)"
            )),
            "{text}"
        );
        let v = serde_json::json!({
            "provider": "aws-kms", "key_id": east, "key_region": "us-east-1",
            "vault_key_id": east, "vault_key_region": "us-east-1", "multi_region_replica": false,
        });
        assert!(describe(&v).contains(&format!("AWS KMS key {east} (us-east-1)\n")));
    }
}
