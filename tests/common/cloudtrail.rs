//! CloudTrail records made from the KMS requests a test proxy (`moto::Proxy`) observed, with
//! CloudTrail's field names, so `kmsfs audit` can be tested against what a mount really asked
//! KMS. A request the proxy saw fail (a refusal it injected, moto's error) gets its error type
//! as `errorCode`, as CloudTrail records failed calls.
#![allow(dead_code)] // each test binary uses a different part of `common`

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};

use super::moto::{ErrorReply, REGION, Request};

/// Who made the calls, as CloudTrail's `userIdentity` and `sourceIPAddress` name them.
pub struct Caller<'a> {
    /// `userIdentity.arn`, e.g. an assumed role of one host.
    pub arn: &'a str,
    /// `sourceIPAddress`.
    pub ip: &'a str,
}

/// `eventTime` of the `i`-th second after 2026-12-01T10:00:00Z.
pub fn event_time(i: usize) -> String {
    format!(
        "2026-12-01T{:02}:{:02}:{:02}Z",
        10 + i / 3600,
        (i / 60) % 60,
        i % 60
    )
}

/// One CloudTrail record per request of `log` (KMS JSON bodies: `EncryptionContext`, ReEncrypt's
/// `SourceEncryptionContext`/`DestinationEncryptionContext`), one second apart from second
/// `first`; the requests matching `errors` (same operation and body) as failed calls.
pub fn records(
    log: &[Request],
    errors: &[ErrorReply],
    who: &Caller<'_>,
    first: usize,
) -> Vec<Value> {
    let mut failed: HashMap<(&str, &str), Vec<&str>> = HashMap::new();
    for e in errors {
        failed
            .entry((e.op.as_str(), e.request.as_str()))
            .or_default()
            .push(e.error_type.as_str());
    }
    let mut out = Vec::new();
    for (i, r) in log.iter().enumerate() {
        let body: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
        let mut params = serde_json::Map::new();
        for (kms, trail) in [
            ("KeyId", "keyId"),
            ("EncryptionContext", "encryptionContext"),
            ("SourceEncryptionContext", "sourceEncryptionContext"),
            (
                "DestinationEncryptionContext",
                "destinationEncryptionContext",
            ),
            ("DestinationKeyId", "destinationKeyId"),
            ("KeySpec", "keySpec"),
        ] {
            if let Some(v) = body.get(kms) {
                params.insert(trail.into(), v.clone());
            }
        }
        let key = body
            .get("KeyId")
            .and_then(Value::as_str)
            .unwrap_or("arn:aws:kms:us-east-1:111122223333:key/unknown");
        let mut rec = json!({
            "eventVersion": "1.08",
            "userIdentity": {
                "type": "AssumedRole",
                "principalId": "AROATESTEXAMPLE:session",
                "arn": who.arn,
                "accountId": "111122223333"
            },
            "eventTime": event_time(first + i),
            "eventSource": "kms.amazonaws.com",
            "eventName": r.op,
            "awsRegion": REGION,
            "sourceIPAddress": who.ip,
            "userAgent": "aws-sdk-rust",
            "requestParameters": Value::Object(params),
            "responseElements": null,
            "requestID": format!("{:08x}-0000-4000-8000-000000000000", first + i),
            "eventID": format!("{:08x}-0000-4000-8000-000000000001", first + i),
            "readOnly": r.op == "Decrypt",
            "resources": [{"accountId": "111122223333", "type": "AWS::KMS::Key", "ARN": key}],
            "eventType": "AwsApiCall",
            "managementEvent": true,
            "recipientAccountId": "111122223333",
            "eventCategory": "Management"
        });
        if let Some(codes) = failed.get_mut(&(r.op.as_str(), r.body.as_str())) {
            if let Some(code) = codes.pop() {
                rec["errorCode"] = code.into();
                rec["errorMessage"] = "refused (test proxy)".into();
            }
        }
        out.push(rec);
    }
    out
}

/// Write `records` as one CloudTrail log file, gzipped like AWS delivers them, at `path`
/// (parent directories made).
pub fn write_gz(path: &Path, records: &[Value]) {
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir trail dirs");
    let text = json!({ "Records": records }).to_string();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text.as_bytes()).expect("gzip");
    std::fs::write(path, enc.finish().expect("gzip")).expect("write trail file");
}
