//! Unit tests of CloudTrail parsing (records shaped as CloudTrail writes them).

use std::io::Write;

use super::*;
use crate::format::Id;
use crate::keys::{CTX_FILE, CTX_PURPOSE, CTX_VOLUME, EncryptionContext};

const VOL: &str = "00112233445566778899aabbccddeeff";
const OTHER: &str = "ffeeddccbbaa99887766554433221100";
const FILE: &str = "0f0e0d0c0b0a09080706050403020100";

/// A Decrypt record as CloudTrail delivers it (trimmed of fields kmsfs ignores, plus some
/// it must ignore).
fn decrypt_record(volume: &str, file: &str, time: &str, error: Option<&str>) -> serde_json::Value {
    let mut r = serde_json::json!({
        "eventVersion": "1.08",
        "userIdentity": {
            "type": "AssumedRole",
            "principalId": "AROAEXAMPLE:i-0abc",
            "arn": "arn:aws:sts::111122223333:assumed-role/kmsfs-host/i-0abc",
            "accountId": "111122223333",
            "accessKeyId": "ASIAEXAMPLE",
            "sessionContext": {"attributes": {"mfaAuthenticated": "false"}}
        },
        "eventTime": time,
        "eventSource": "kms.amazonaws.com",
        "eventName": "Decrypt",
        "awsRegion": "eu-west-1",
        "sourceIPAddress": "10.0.0.5",
        "userAgent": "aws-sdk-rust/1.3",
        "requestParameters": {
            "encryptionAlgorithm": "SYMMETRIC_DEFAULT",
            "encryptionContext": {"kmsfs:volume-id": volume, "kmsfs:file-id": file}
        },
        "responseElements": null,
        "requestID": "5b4c7e1a-0000-4000-8000-000000000000",
        "eventID": "7e1a5b4c-0000-4000-8000-000000000000",
        "readOnly": true,
        "resources": [{
            "accountId": "111122223333",
            "type": "AWS::KMS::Key",
            "ARN": "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
        }],
        "eventType": "AwsApiCall",
        "managementEvent": true,
        "recipientAccountId": "111122223333",
        "eventCategory": "Management"
    });
    if let Some(code) = error {
        r["errorCode"] = code.into();
        r["errorMessage"] = "User is not authorized to perform kms:Decrypt".into();
    }
    r
}

fn log(records: &[serde_json::Value]) -> String {
    serde_json::json!({ "Records": records }).to_string()
}

#[test]
fn a_decrypt_record_is_read_with_cloudtrails_field_names() {
    let text = log(&[decrypt_record(VOL, FILE, "2026-12-01T16:30:00Z", None)]);
    let p = parse_log(&text, VOL).expect("parses");
    assert_eq!((p.records, p.malformed), (1, 0));
    let e = &p.events[0];
    assert_eq!(e.time_text, "2026-12-01T16:30:00Z");
    assert_eq!(
        e.time,
        Timestamp::parse_rfc3339("2026-12-01T16:30:00Z").expect("time")
    );
    assert_eq!(
        e.principal,
        "arn:aws:sts::111122223333:assumed-role/kmsfs-host/i-0abc"
    );
    assert_eq!(e.operation, "Decrypt");
    assert_eq!(e.result, "ok");
    assert_eq!(e.region, "eu-west-1");
    assert_eq!(e.source_ip, "10.0.0.5");
    assert_eq!(e.target, Target::File(FILE.into()));
    assert!(
        e.key_arn
            .ends_with("key/1234abcd-12ab-34cd-56ef-1234567890ab")
    );
}

#[test]
fn a_failed_call_reports_its_error_code() {
    let text = log(&[decrypt_record(
        VOL,
        FILE,
        "2026-12-01T16:30:00Z",
        Some("AccessDenied"),
    )]);
    let p = parse_log(&text, VOL).expect("parses");
    assert_eq!(p.events[0].result, "AccessDenied");
}

#[test]
fn other_volumes_and_other_services_are_dropped() {
    let mut s3 = decrypt_record(VOL, FILE, "2026-12-01T16:30:00Z", None);
    s3["eventSource"] = "s3.amazonaws.com".into();
    // Another service's parameters may look like anything.
    s3["requestParameters"] = serde_json::json!({"bucketName": VOL, "encryptionContext": 7});
    let mut no_ctx = decrypt_record(VOL, FILE, "2026-12-01T16:30:00Z", None);
    no_ctx["requestParameters"] = serde_json::json!({"keyId": VOL});
    let text = log(&[
        decrypt_record(OTHER, FILE, "2026-12-01T16:30:00Z", None),
        s3,
        no_ctx,
        decrypt_record(VOL, FILE, "2026-12-01T16:31:00Z", None),
    ]);
    let p = parse_log(&text, VOL).expect("parses");
    assert_eq!((p.records, p.malformed, p.events.len()), (4, 0, 1));
    assert_eq!(p.events[0].time_text, "2026-12-01T16:31:00Z");
    assert!(parse_log(&text, "0123").expect("parses").events.is_empty());
}

#[test]
fn reencrypt_is_matched_on_its_source_or_destination_context() {
    let mut r = decrypt_record(VOL, FILE, "2026-12-01T16:30:00Z", None);
    r["eventName"] = "ReEncrypt".into();
    r["requestParameters"] = serde_json::json!({
        "sourceEncryptionContext": {"kmsfs:volume-id": VOL, "kmsfs:file-id": FILE},
        "destinationEncryptionContext": {"kmsfs:volume-id": VOL, "kmsfs:file-id": FILE},
        "destinationKeyId": "alias/new"
    });
    let mut dest_only = r.clone();
    dest_only["requestParameters"] = serde_json::json!({
        "sourceEncryptionContext": {"kmsfs:volume-id": OTHER, "kmsfs:purpose": "names"},
        "destinationEncryptionContext": {"kmsfs:volume-id": VOL, "kmsfs:purpose": "names"}
    });
    let p = parse_log(&log(&[r, dest_only]), VOL).expect("parses");
    assert_eq!(p.events.len(), 2);
    assert_eq!(p.events[0].operation, "ReEncrypt");
    assert_eq!(p.events[0].target, Target::File(FILE.into()));
    assert_eq!(p.events[1].target, Target::Volume("names".into()));
}

#[test]
fn the_context_names_are_kmsfs_own() {
    let vol: Id = [0x11; 16];
    let file: Id = [0x22; 16];
    let json = |c: EncryptionContext| serde_json::to_string(&c.0).expect("json");
    let f = json(EncryptionContext::for_file(&vol, &file));
    let ctx: Context<'_> = serde_json::from_str(&f).expect("context");
    assert!(ctx.names(&hex::encode(vol)));
    assert_eq!(ctx.target(), Target::File(hex::encode(file)));
    let v = json(EncryptionContext::for_volume(&vol, "config"));
    let ctx: Context<'_> = serde_json::from_str(&v).expect("context");
    assert_eq!(ctx.target(), Target::Volume("config".into()));
    for k in [CTX_VOLUME, CTX_FILE, CTX_PURPOSE] {
        assert!(
            include_str!("trail.rs").contains(&format!("rename = \"{k}\"")),
            "{k}"
        );
    }
}

#[test]
fn a_principal_without_an_arn_falls_back_to_type_and_id() {
    let mut r = decrypt_record(VOL, FILE, "2026-12-01T16:30:00Z", None);
    r["userIdentity"] = serde_json::json!({"type": "AWSService", "invokedBy": "ec2.amazonaws.com"});
    let mut anon = r.clone();
    anon["userIdentity"] = serde_json::json!({"type": "AWSAccount", "principalId": "AIDAEXAMPLE"});
    let mut none = r.clone();
    none.as_object_mut().expect("object").remove("userIdentity");
    let p = parse_log(&log(&[r, anon, none]), VOL).expect("parses");
    let who: Vec<_> = p.events.iter().map(|e| e.principal.as_str()).collect();
    assert_eq!(
        who,
        [
            "AWSService/ec2.amazonaws.com",
            "AWSAccount/AIDAEXAMPLE",
            "(unknown)"
        ]
    );
}

#[test]
fn malformed_kms_records_are_counted_not_fatal() {
    let mut bad_time = decrypt_record(VOL, FILE, "yesterday", None);
    bad_time["eventName"] = "Decrypt".into();
    let mut bad_type = decrypt_record(VOL, FILE, "2026-12-01T16:30:00Z", None);
    bad_type["awsRegion"] = 42.into();
    let good = decrypt_record(VOL, FILE, "2026-12-01T16:30:00Z", None);
    let p = parse_log(&log(&[bad_time, bad_type, good]), VOL).expect("parses");
    assert_eq!((p.records, p.malformed, p.events.len()), (3, 2, 1));
    assert!(parse_log("{\"Records\": 3}", VOL).is_err());
    assert!(parse_log("not json", VOL).is_err());
    assert!(
        parse_log("{\"Records\": []}", VOL)
            .expect("empty")
            .events
            .is_empty()
    );
}

#[test]
fn gzipped_logs_and_directory_trees_are_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let day = dir
        .path()
        .join("AWSLogs/111122223333/CloudTrail/eu-west-1/2026/12/01");
    std::fs::create_dir_all(&day).expect("mkdir");
    let text = log(&[decrypt_record(VOL, FILE, "2026-12-01T16:30:00Z", None)]);
    let gz = day.join("111122223333_CloudTrail_eu-west-1_20261201T1630Z_abc.json.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text.as_bytes()).expect("gzip");
    std::fs::write(&gz, enc.finish().expect("gzip")).expect("write");
    let plain = dir.path().join("extra.json");
    std::fs::write(&plain, &text).expect("write");
    std::fs::write(day.join("notes.txt"), "not a log").expect("write");
    let digest = dir.path().join("AWSLogs/111122223333/CloudTrail-Digest");
    std::fs::create_dir_all(&digest).expect("mkdir");
    std::fs::write(digest.join("x_CloudTrail-Digest_y.json.gz"), "x").expect("write");
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("linked.json"), &text).expect("write");
    std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).expect("symlink");
    std::os::unix::fs::symlink(&plain, dir.path().join("link.json")).expect("symlink");

    let missing = dir.path().join("missing");
    let (files, warnings) = log_files(&[dir.path().to_path_buf(), missing.clone()]);
    let mut want = vec![plain.clone(), gz.clone()];
    want.sort();
    assert_eq!(
        files, want,
        "logs found once each; digests, other files and links skipped"
    );
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("missing"), "{warnings:?}");
    for f in [&gz, &plain] {
        let t = read_log(f).expect("readable");
        assert_eq!(parse_log(&t, VOL).expect("parses").events.len(), 1);
    }
    // A file named on the command line is read whatever its name.
    let (files, _) = log_files(&[day.join("notes.txt")]);
    assert_eq!(files.len(), 1);
    assert!(read_log(&digest.join("x_CloudTrail-Digest_y.json.gz")).is_ok());
    std::fs::write(&gz, [0x1f, 0x8b, 0, 1, 2]).expect("write");
    assert!(read_log(&gz).expect_err("bad gzip").contains("gzip"));
}
