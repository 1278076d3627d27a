//! `kmsfs audit` through real mounts (issue 20): moto-backed vaults behind the counting proxy,
//! files written and read in several directories; CloudTrail records made from the requests
//! the proxy saw (`common::cloudtrail`), written as .json.gz in a trail's directory tree, then
//! audited. Guards unmount and stop moto on every path (mounts are dropped first).
// The mount tier: real FUSE mounts, run by `scripts/test` (`--features fuse-tests`).
#![cfg(feature = "fuse-tests")]

mod common;

use std::collections::HashSet;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Output;

use common::cloudtrail::{Caller, records, write_gz};
use common::kmskit::*;
use common::mount::{Vault, stderr};

const HOST_A: Caller<'static> = Caller {
    arn: "arn:aws:sts::111122223333:assumed-role/kmsfs-host/host-a",
    ip: "10.0.0.1",
};
const HOST_B: Caller<'static> = Caller {
    arn: "arn:aws:sts::111122223333:assumed-role/other-team/host-b",
    ip: "10.0.0.2",
};
/// Where a trail delivers one region's logs of a day.
const DAY: &str = "AWSLogs/111122223333/CloudTrail/us-east-1/2026/12/01";

/// The vault's volume id, from its config.
fn volume_id(v: &Vault) -> String {
    let cfg: serde_json::Value = serde_json::from_slice(
        &fs::read(v.backing.join(".kmsfs/config.json")).expect("read config"),
    )
    .expect("config is JSON");
    cfg["volume_id"].as_str().expect("volume_id").to_string()
}

/// Run `kmsfs audit` on `v` with the trail at `trail` and `extra` options.
fn audit(v: &Vault, trail: &Path, extra: &[&str]) -> Output {
    let mut cmd = v.command(["audit".as_ref(), v.backing.as_os_str()]);
    cmd.arg("--cloudtrail").arg(trail).args(extra);
    cmd.output().expect("run kmsfs audit")
}

/// `kmsfs audit`'s stdout, asserting success.
fn audit_ok(v: &Vault, trail: &Path, extra: &[&str]) -> (String, String) {
    let out = audit(v, trail, extra);
    assert!(
        out.status.success(),
        "kmsfs audit {extra:?} failed: {}",
        stderr(&out)
    );
    let err = stderr(&out);
    (String::from_utf8(out.stdout).expect("utf-8 output"), err)
}

/// Write `files` (plain paths) with a little content each.
fn write_files(mnt: &Path, files: &[&str]) {
    for f in files {
        let p = mnt.join(f);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, format!("contents of {f}")).expect("write");
    }
}

/// The file ids in the headers of `v`'s backing files.
fn file_ids(v: &Vault) -> HashSet<String> {
    v.backing_files()
        .iter()
        .filter_map(|p| {
            let b = fs::read(p).ok()?;
            (b.len() >= 48).then(|| hex::encode(&b[32..48]))
        })
        .collect()
}

#[test]
fn audit_shows_current_paths_of_this_vaults_files_only() {
    let kms = Kms::start();
    let a = kms.vault();
    let gone_id;
    {
        let m = a.mount(&["--key-pool-size", "0"]);
        write_files(
            m.path(),
            &[
                "finance/q3/minutes.txt",
                "finance/budget.txt",
                "financed/x.txt",
                "hr/people.txt",
                "gone.txt",
            ],
        );
        fs::remove_file(m.join("gone.txt")).expect("rm");
        // A rename: audit shows the name the file has now.
        fs::rename(
            m.join("finance/budget.txt"),
            m.join("finance/budget-2027.txt"),
        )
        .expect("rename");
        a.forget(m.path());
        for f in [
            "finance/q3/minutes.txt",
            "finance/budget-2027.txt",
            "financed/x.txt",
            "hr/people.txt",
        ] {
            read_file(&m.join(f)).expect("read");
        }
        // A refused call: the key of an open file, forgotten, then denied by the KMS.
        let open = File::open(m.join("hr/people.txt")).expect("open");
        a.forget(m.path());
        kms.proxy.set_deny(true);
        let mut buf = [0u8; 16];
        let denied = open.read_at(&mut buf, 0);
        kms.proxy.set_deny(false);
        assert!(denied.is_err(), "a read with the KMS refusing must fail");
        drop(open);
        m.unmount();
        let now = file_ids(&a);
        let generated: Vec<String> = kms
            .proxy
            .request_log()
            .iter()
            .filter(|r| r.op == GENERATE && r.body.contains(FILE_CTX))
            .filter_map(|r| {
                let b: serde_json::Value = serde_json::from_str(&r.body).ok()?;
                Some(b["EncryptionContext"][FILE_CTX].as_str()?.to_string())
            })
            .collect();
        let missing: Vec<&String> = generated.iter().filter(|id| !now.contains(*id)).collect();
        assert_eq!(
            missing.len(),
            1,
            "one generated key's file was deleted: {missing:?}"
        );
        gone_id = missing[0].clone();
    }
    let log_a = kms.proxy.request_log();
    let errors_a = kms.proxy.error_replies();
    assert!(!errors_a.is_empty(), "the proxy saw the refused Decrypt");
    kms.proxy.reset();

    // A second vault on the same KMS, used by another host: never in A's audit.
    let b = kms.vault();
    {
        let m = b.mount(&["--key-pool-size", "0"]);
        write_files(
            m.path(),
            &["bravo-only/secret-b.txt", "finance/q3/minutes.txt"],
        );
        b.forget(m.path());
        read_file(&m.join("bravo-only/secret-b.txt")).expect("read");
        m.unmount();
    }
    let log_b = kms.proxy.request_log();
    kms.proxy.reset();

    let (vol_a, vol_b) = (volume_id(&a), volume_id(&b));
    let a_requests = log_a.iter().filter(|r| r.body.contains(&vol_a)).count();
    assert!(log_b.iter().all(|r| !r.body.contains(&vol_a)));
    assert!(
        log_b.iter().any(|r| r.body.contains(&vol_b)),
        "vault B's events are in the trail"
    );
    let mut recs = records(&log_a, &errors_a, &HOST_A, 0);
    recs.extend(records(&log_b, &[], &HOST_B, 1000));
    // Delivered out of order and split over files, as a trail does.
    recs.reverse();
    let trail = a.dir("trail");
    let half = recs.len() / 2;
    write_gz(
        &trail
            .join(DAY)
            .join("111122223333_CloudTrail_us-east-1_1.json.gz"),
        &recs[..half],
    );
    write_gz(
        &trail
            .join(DAY)
            .join("nested/111122223333_CloudTrail_us-east-1_2.json.gz"),
        &recs[half..],
    );
    fs::write(trail.join(DAY).join("broken.json"), "{\"Records\": [").expect("write");

    // Text.
    let (out, err) = audit_ok(&a, &trail, &[]);
    assert!(
        err.contains("broken.json") && err.contains("warning"),
        "{err}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.len(),
        a_requests,
        "one line per event of vault A:\n{out}"
    );
    let times: Vec<&str> = lines
        .iter()
        .map(|l| l.split(' ').next().unwrap_or(""))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "sorted by time:\n{out}"
    );
    for want in [
        "/finance/q3/minutes.txt",
        "/finance/budget-2027.txt",
        "/financed/x.txt",
        "/hr/people.txt",
        "(file-name key)",
        "(vault config key)",
        HOST_A.arn,
        "GenerateDataKey",
    ] {
        assert!(out.contains(want), "{want} missing:\n{out}");
    }
    assert!(
        !out.contains("budget.txt"),
        "paths are current paths:\n{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("(file {gone_id}: not in the vault now"))),
        "the deleted file:\n{out}"
    );
    assert!(
        lines.iter().any(|l| l.contains("Decrypt")
            && l.contains("DisabledException")
            && l.contains("/hr/people.txt")),
        "the refused Decrypt:\n{out}"
    );
    assert!(
        !out.contains("host-b") && !out.contains("bravo-only"),
        "{out}"
    );

    // Auditing unwrapped the config and name keys only: no data key.
    assert_eq!(
        kms.proxy.count_with(DECRYPT, FILE_CTX),
        0,
        "{:?}",
        kms.proxy.counts()
    );
    assert_eq!(kms.proxy.count(GENERATE), 0);
    assert_eq!(kms.proxy.count(DECRYPT), 2, "{:?}", kms.proxy.request_log());

    // JSON Lines.
    let (out, _) = audit_ok(&a, &trail, &["--json"]);
    let objs: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(objs.len(), a_requests);
    let a_ids: HashSet<String> = log_a
        .iter()
        .filter_map(|r| {
            let b: serde_json::Value = serde_json::from_str(&r.body).ok()?;
            Some(b["EncryptionContext"][FILE_CTX].as_str()?.to_string())
        })
        .collect();
    for o in &objs {
        assert_eq!(o["type"], "event");
        assert_eq!(o["principal"], HOST_A.arn);
        assert_eq!(o["source_ip"], HOST_A.ip);
        assert_eq!(o["region"], "us-east-1");
        assert_eq!(o["bucket_key_mode"], false);
        if let Some(id) = o["file_id"].as_str() {
            assert!(a_ids.contains(id), "{o}");
        }
        match o["path_status"].as_str() {
            Some("current") => assert!(o["path"].as_str().is_some_and(|p| p.starts_with('/'))),
            Some("volume_key") => assert!(o["key_purpose"].is_string(), "{o}"),
            Some("not_in_vault") => assert_eq!(o["file_id"], gone_id.as_str()),
            s => panic!("unexpected path_status {s:?}: {o}"),
        }
    }
    assert!(
        objs.iter()
            .any(|o| o["result"] == "DisabledException" && o["path"] == "/hr/people.txt")
    );

    // --path matches whole components and leaves out events without a file.
    let (out, _) = audit_ok(&a, &trail, &["--path", "finance"]);
    assert!(!out.is_empty());
    for l in out.lines() {
        assert!(l.contains(" /finance/"), "--path finance: {l}");
    }
    assert!(out.contains("/finance/q3/minutes.txt") && out.contains("/finance/budget-2027.txt"));
    let (out, _) = audit_ok(&a, &trail, &["--path", "/hr/people.txt", "--json"]);
    assert!(out.lines().count() >= 3, "written, read, refused:\n{out}");
    assert!(out.lines().all(|l| l.contains("\"/hr/people.txt\"")));

    // --principal and the time window.
    let (out, _) = audit_ok(&a, &trail, &["--principal", "host-b"]);
    assert_eq!(out, "");
    let (out, _) = audit_ok(&a, &trail, &["--since", "2026-12-02"]);
    assert_eq!(out, "");
    let (out, _) = audit_ok(&a, &trail, &["--until", "2026-12-01T10:00:01Z"]);
    let first_two = log_a[..2]
        .iter()
        .filter(|r| r.body.contains(&vol_a))
        .count();
    assert!(first_two >= 1);
    assert_eq!(
        out.lines().count(),
        first_two,
        "the first two seconds:\n{out}"
    );

    // Nothing readable: an error; a bad time: a usage error.
    let empty = a.dir("empty-trail");
    assert_eq!(audit(&a, &empty, &[]).status.code(), Some(1));
    assert_eq!(
        audit(&a, &trail, &["--since", "soon"]).status.code(),
        Some(2)
    );
}

#[test]
fn audit_of_a_bucket_key_vault_groups_bucket_key_unwraps_per_host() {
    let kms = Kms::start();
    let c = Vault::new().with_kms(&kms.proxy.url());
    c.init(&["--kms-key-id", &kms.key, "--bucket-key"]);
    {
        let m = c.mount(&[]);
        write_files(m.path(), &["docs/a.txt", "docs/b.txt"]);
        c.forget(m.path());
        read_file(&m.join("docs/a.txt")).expect("read");
        m.unmount();
    }
    let log = kms.proxy.request_log();
    assert_eq!(
        kms.proxy.count_with(DECRYPT, FILE_CTX),
        0,
        "bucket-key mode: no per-file call"
    );
    kms.proxy.reset();
    let trail = c.dir("trail");
    write_gz(
        &trail.join(DAY).join("x.json.gz"),
        &records(&log, &[], &HOST_A, 0),
    );

    let (out, err) = audit_ok(&c, &trail, &[]);
    assert!(
        err.contains("bucket key") && err.contains("no per-file events"),
        "{err}"
    );
    assert!(out.contains("(bucket key)"), "{out}");
    let bucket_unwraps = log
        .iter()
        .filter(|r| r.op == DECRYPT && r.body.contains("\"bucket\""))
        .count();
    assert!(bucket_unwraps >= 1);
    assert!(
        out.contains(&format!(
            "{}  {}: {bucket_unwraps}, ",
            HOST_A.arn, HOST_A.ip
        )),
        "grouped per host:\n{out}"
    );
    // Auditing needs the config and name keys only: not even the bucket key.
    assert!(
        kms.proxy
            .request_log()
            .iter()
            .all(|r| !r.body.contains("\"bucket\""))
    );

    let (out, _) = audit_ok(&c, &trail, &["--json"]);
    let objs: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert!(
        objs.iter()
            .all(|o| o["type"] != "event" || o["bucket_key_mode"] == true)
    );
    let host = objs
        .iter()
        .find(|o| o["type"] == "bucket_key_host")
        .expect("a bucket_key_host object");
    assert_eq!(host["principal"], HOST_A.arn);
    assert_eq!(host["count"], bucket_unwraps);
}
