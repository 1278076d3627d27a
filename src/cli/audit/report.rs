//! What `kmsfs audit` prints: one line (or JSON object) per event, and in bucket-key mode the
//! bucket-key unwraps grouped per host.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

use serde_json::json;

use super::index::{Index, Location};
use super::trail::{Event, Target};
use crate::keys::bucket::BUCKET_KEY_PURPOSE;
use crate::names::NAME_KEY_PURPOSE;
use crate::vault::config::CONFIG_KEY_PURPOSE;

/// What an event's key belongs to, resolved against the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place<'a> {
    /// A file of the vault, at its current plain path.
    Current(&'a Path),
    /// A file of the vault whose name does not decrypt: its backing path.
    Undecodable(&'a Path),
    /// A file id no file of the vault has now.
    NotInVault(&'a str),
    /// A volume-level key, by purpose.
    VolumeKey(&'a str),
}

impl<'a> Place<'a> {
    /// Resolve `target` with `index`.
    pub fn of(target: &'a Target, index: &'a Index) -> Place<'a> {
        match target {
            Target::File(id) => match index.get(id) {
                Some(Location::Plain(p)) => Place::Current(p),
                Some(Location::Undecodable(b)) => Place::Undecodable(b),
                None => Place::NotInVault(id),
            },
            Target::Volume(purpose) => Place::VolumeKey(purpose),
        }
    }

    /// The plain path, when the event is about a file with one.
    pub fn plain(&self) -> Option<&'a Path> {
        match self {
            Place::Current(p) => Some(p),
            _ => None,
        }
    }

    /// The text column: the path, or what stands for it in parentheses.
    fn text(&self) -> String {
        match self {
            Place::Current(p) => p.display().to_string(),
            Place::Undecodable(b) => {
                format!(
                    "(file at backing {}: its name does not decrypt)",
                    b.display()
                )
            }
            Place::NotInVault(id) => {
                format!("(file {id}: not in the vault now: deleted, or given a new id by rekey)")
            }
            Place::VolumeKey(p) => volume_key_label(p),
        }
    }

    /// The JSON `path_status`.
    fn status(&self) -> &'static str {
        match self {
            Place::Current(_) => "current",
            Place::Undecodable(_) => "name_undecodable",
            Place::NotInVault(_) => "not_in_vault",
            Place::VolumeKey(_) => "volume_key",
        }
    }
}

/// "(file-name key)", "(vault config key)", "(bucket key)", or the purpose as written.
fn volume_key_label(purpose: &str) -> String {
    match purpose {
        NAME_KEY_PURPOSE => "(file-name key)".into(),
        CONFIG_KEY_PURPOSE => "(vault config key)".into(),
        BUCKET_KEY_PURPOSE => "(bucket key)".into(),
        "" => "(volume key without a purpose)".into(),
        p => format!("(volume key, purpose {p:?})"),
    }
}

/// One event to print and where its key belongs.
pub type Line<'a> = (&'a Event, Place<'a>);

/// Bucket-key unwraps of one host (principal and source IP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostUse<'a> {
    /// How many.
    pub count: usize,
    /// The first one's `eventTime`.
    pub first: &'a str,
    /// The last one's `eventTime`.
    pub last: &'a str,
}

/// Bucket-key unwraps (Decrypt) grouped per (principal, source IP); `events` are sorted by
/// time.
pub fn bucket_hosts<'a>(events: &[&'a Event]) -> BTreeMap<(&'a str, &'a str), HostUse<'a>> {
    let mut hosts: BTreeMap<(&str, &str), HostUse<'_>> = BTreeMap::new();
    for e in events {
        // Decrypt only: a GenerateDataKey of the bucket key is its creation (`kmsfs init`).
        if e.operation != "Decrypt"
            || !matches!(&e.target, Target::Volume(p) if p == BUCKET_KEY_PURPOSE)
        {
            continue;
        }
        let h = hosts
            .entry((e.principal.as_str(), e.source_ip.as_str()))
            .or_insert(HostUse {
                count: 0,
                first: &e.time_text,
                last: &e.time_text,
            });
        h.count += 1;
        h.last = &e.time_text;
    }
    hosts
}

/// Print `lines` as aligned text columns: time, principal, operation, result, region, path.
pub fn text(out: &mut impl Write, lines: &[Line<'_>]) -> io::Result<()> {
    let width = |f: fn(&Event) -> &str| lines.iter().map(|(e, _)| f(e).len()).max().unwrap_or(0);
    let wt = width(|e| &e.time_text);
    let wp = width(|e| &e.principal);
    let wo = width(|e| &e.operation);
    let wr = width(|e| &e.result);
    let wg = width(|e| &e.region);
    for (e, place) in lines {
        writeln!(
            out,
            "{:<wt$}  {:<wp$}  {:<wo$}  {:<wr$}  {:<wg$}  {}",
            e.time_text,
            e.principal,
            e.operation,
            e.result,
            e.region,
            place.text()
        )?;
    }
    Ok(())
}

/// Print the bucket-key unwraps per host as text.
pub fn hosts_text(
    out: &mut impl Write,
    hosts: &BTreeMap<(&str, &str), HostUse<'_>>,
) -> io::Result<()> {
    writeln!(
        out,
        "bucket-key unwraps per host (principal, source IP: count, first, last):"
    )?;
    for ((who, ip), h) in hosts {
        let ip = if ip.is_empty() { "-" } else { ip };
        writeln!(out, "  {who}  {ip}: {}, {}, {}", h.count, h.first, h.last)?;
    }
    Ok(())
}

/// Print `lines` as JSON Lines (`"type": "event"`), then the bucket-key hosts
/// (`"type": "bucket_key_host"`).
pub fn json(
    out: &mut impl Write,
    lines: &[Line<'_>],
    hosts: &BTreeMap<(&str, &str), HostUse<'_>>,
    bucket_mode: bool,
) -> io::Result<()> {
    for (e, place) in lines {
        let file_id = match &e.target {
            Target::File(id) => Some(id.as_str()),
            Target::Volume(_) => None,
        };
        let mut o = json!({
            "type": "event",
            "time": e.time_text,
            "principal": e.principal,
            "operation": e.operation,
            "result": e.result,
            "region": e.region,
            "source_ip": e.source_ip,
            "key_arn": e.key_arn,
            "file_id": file_id,
            "path": place.plain().map(|p| p.to_string_lossy()),
            "path_status": place.status(),
            "bucket_key_mode": bucket_mode,
        });
        match place {
            Place::VolumeKey(p) => o["key_purpose"] = (*p).into(),
            Place::Undecodable(b) => o["backing"] = b.to_string_lossy().into(),
            _ => {}
        }
        writeln!(out, "{o}")?;
    }
    for ((who, ip), h) in hosts {
        let o = json!({
            "type": "bucket_key_host",
            "principal": who,
            "source_ip": ip,
            "count": h.count,
            "first": h.first,
            "last": h.last,
        });
        writeln!(out, "{o}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::audit::time::Timestamp;

    fn event(who: &str, ip: &str, time: &str, target: Target) -> Event {
        Event {
            time: Timestamp::parse_rfc3339(time).expect("time"),
            time_text: time.into(),
            principal: who.into(),
            operation: "Decrypt".into(),
            result: "ok".into(),
            region: "eu-west-1".into(),
            source_ip: ip.into(),
            target,
            key_arn: String::new(),
        }
    }

    #[test]
    fn lines_name_paths_and_volume_keys() {
        let idx = Index::default();
        let file = Target::File("1a2b".into());
        let names = Target::Volume("names".into());
        let cfg = Target::Volume("config".into());
        let a = event("arn:a", "", "2026-12-01T16:30:00Z", file.clone());
        let b = event("arn:bb", "", "2026-12-01T16:31:00Z", names.clone());
        let c = event("arn:c", "", "2026-12-01T16:32:00Z", cfg.clone());
        let lines = [
            (&a, Place::of(&file, &idx)),
            (&b, Place::of(&names, &idx)),
            (&c, Place::Current(Path::new("/finance/q3/minutes.txt"))),
        ];
        let mut out = Vec::new();
        text(&mut out, &lines).expect("write");
        let out = String::from_utf8(out).expect("utf8");
        let rows: Vec<&str> = out.lines().collect();
        assert_eq!(
            rows[0],
            "2026-12-01T16:30:00Z  arn:a   Decrypt  ok  eu-west-1  (file 1a2b: not in the vault now: deleted, or given a new id by rekey)"
        );
        assert!(rows[1].ends_with("  (file-name key)"), "{out}");
        assert!(rows[2].ends_with("  /finance/q3/minutes.txt"), "{out}");
        assert_eq!(volume_key_label("config"), "(vault config key)");
        assert_eq!(volume_key_label("bucket"), "(bucket key)");

        let mut out = Vec::new();
        json(&mut out, &lines, &BTreeMap::new(), false).expect("write");
        let objs: Vec<serde_json::Value> = String::from_utf8(out)
            .expect("utf8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        assert_eq!(objs[0]["file_id"], "1a2b");
        assert_eq!(objs[0]["path"], serde_json::Value::Null);
        assert_eq!(objs[0]["path_status"], "not_in_vault");
        assert_eq!(objs[1]["key_purpose"], "names");
        assert_eq!(objs[2]["path"], "/finance/q3/minutes.txt");
        assert_eq!(objs[2]["path_status"], "current");
    }

    #[test]
    fn bucket_key_unwraps_are_grouped_per_host() {
        let bucket = || Target::Volume("bucket".into());
        let evs = [
            event("arn:h1", "10.0.0.1", "2026-12-01T10:00:00Z", bucket()),
            event("arn:h2", "10.0.0.2", "2026-12-01T10:30:00Z", bucket()),
            event("arn:h1", "10.0.0.1", "2026-12-01T11:00:00Z", bucket()),
            event(
                "arn:h1",
                "10.0.0.1",
                "2026-12-01T11:30:00Z",
                Target::Volume("names".into()),
            ),
            event("arn:h1", "10.0.0.9", "2026-12-01T12:00:00Z", bucket()),
        ];
        let mut created = event("arn:h3", "10.0.0.3", "2026-12-01T09:00:00Z", bucket());
        created.operation = "GenerateDataKey".into();
        let refs: Vec<&Event> = std::iter::once(&created).chain(&evs).collect();
        let hosts = bucket_hosts(&refs);
        assert_eq!(hosts.len(), 3);
        assert_eq!(
            hosts[&("arn:h1", "10.0.0.1")],
            HostUse {
                count: 2,
                first: "2026-12-01T10:00:00Z",
                last: "2026-12-01T11:00:00Z"
            }
        );
        assert_eq!(hosts[&("arn:h2", "10.0.0.2")].count, 1);
    }
}
