//! CloudTrail log files as AWS delivers them (`{"Records": [...]}`, plain or gzipped, in a
//! tree such as `AWSLogs/ACCOUNT/CloudTrail/REGION/YYYY/MM/DD/`) and the KMS events in them
//! that name one vault's volume id.
//!
//! Speed matters (a trail holds every API call of an account): a file is parsed once into
//! borrowed raw records; only a record from `kms.amazonaws.com` has its request parameters
//! parsed, and only one naming this volume has its identity and resources parsed and copied.

use std::borrow::Cow;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::time::Timestamp;

/// The `eventSource` of AWS KMS.
pub const KMS_SOURCE: &str = "kms.amazonaws.com";
/// The result shown for a call that succeeded (CloudTrail has no `errorCode` then).
pub const OK: &str = "ok";

/// What a KMS event was about, from its encryption context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One file's data key: its file id as written in the context (hex).
    File(String),
    /// A volume-level key: its `kmsfs:purpose` ("names", "config", "bucket"; empty if none).
    Volume(String),
}

/// One KMS event of this vault, with CloudTrail's fields as kmsfs reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `eventTime`, parsed (for sorting and `--since`/`--until`).
    pub time: Timestamp,
    /// `eventTime` as CloudTrail wrote it.
    pub time_text: String,
    /// `userIdentity.arn`, else its type and principalId or invokedBy.
    pub principal: String,
    /// `eventName`: Decrypt, GenerateDataKey, Encrypt, ReEncrypt, ...
    pub operation: String,
    /// "ok", or the `errorCode` (AccessDenied, DisabledException, ...).
    pub result: String,
    /// `awsRegion`.
    pub region: String,
    /// `sourceIPAddress` (empty when absent).
    pub source_ip: String,
    /// The key the event is about.
    pub target: Target,
    /// The KMS key's ARN from `resources` (empty when absent).
    pub key_arn: String,
}

/// A log file's KMS events of one volume, and how many records it held.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Events whose encryption context names the volume, in file order.
    pub events: Vec<Event>,
    /// Records in the file.
    pub records: usize,
    /// KMS records that could not be understood (no time, wrong types).
    pub malformed: usize,
}

/// A whole log file: its records left raw until they are known to matter.
#[derive(Deserialize)]
struct LogFile<'a> {
    #[serde(rename = "Records", borrow)]
    records: Vec<&'a RawValue>,
}

/// The top-level fields of a record kmsfs uses (unknown ones are skipped by serde).
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(rename = "eventSource", borrow, default)]
    event_source: Option<Cow<'a, str>>,
    #[serde(rename = "eventTime", borrow, default)]
    event_time: Option<Cow<'a, str>>,
    #[serde(rename = "eventName", borrow, default)]
    event_name: Option<Cow<'a, str>>,
    #[serde(rename = "awsRegion", borrow, default)]
    aws_region: Option<Cow<'a, str>>,
    #[serde(rename = "errorCode", borrow, default)]
    error_code: Option<Cow<'a, str>>,
    #[serde(rename = "sourceIPAddress", borrow, default)]
    source_ip: Option<Cow<'a, str>>,
    #[serde(rename = "userIdentity", borrow, default)]
    user_identity: Option<&'a RawValue>,
    #[serde(rename = "requestParameters", borrow, default)]
    request_parameters: Option<&'a RawValue>,
    #[serde(borrow, default)]
    resources: Option<&'a RawValue>,
}

/// `requestParameters` of a KMS call: ReEncrypt names a source and a destination context.
#[derive(Deserialize, Default)]
struct Params<'a> {
    #[serde(rename = "encryptionContext", borrow, default)]
    encryption_context: Option<Context<'a>>,
    #[serde(rename = "sourceEncryptionContext", borrow, default)]
    source_encryption_context: Option<Context<'a>>,
    #[serde(rename = "destinationEncryptionContext", borrow, default)]
    destination_encryption_context: Option<Context<'a>>,
}

/// The kmsfs keys of an encryption context (`keys::CTX_VOLUME`, `CTX_FILE`, `CTX_PURPOSE`;
/// a unit test checks the names agree).
#[derive(Deserialize, Default)]
struct Context<'a> {
    #[serde(rename = "kmsfs:volume-id", borrow, default)]
    volume: Option<Cow<'a, str>>,
    #[serde(rename = "kmsfs:file-id", borrow, default)]
    file: Option<Cow<'a, str>>,
    #[serde(rename = "kmsfs:purpose", borrow, default)]
    purpose: Option<Cow<'a, str>>,
}

/// `userIdentity`.
#[derive(Deserialize, Default)]
struct Identity<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(rename = "principalId", borrow, default)]
    principal_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arn: Option<Cow<'a, str>>,
    #[serde(rename = "invokedBy", borrow, default)]
    invoked_by: Option<Cow<'a, str>>,
}

/// One of `resources`.
#[derive(Deserialize)]
struct Resource<'a> {
    #[serde(rename = "ARN", borrow, default)]
    arn: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
}

impl Identity<'_> {
    /// The ARN; without one (an AWS service, an anonymous caller) the type and principalId or
    /// invokedBy, e.g. "AWSService/ec2.amazonaws.com".
    fn principal(&self) -> String {
        let some =
            |s: &Option<Cow<'_, str>>| s.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
        if let Some(arn) = some(&self.arn) {
            return arn;
        }
        let parts: Vec<String> = [
            some(&self.kind),
            some(&self.principal_id).or_else(|| some(&self.invoked_by)),
        ]
        .into_iter()
        .flatten()
        .collect();
        if parts.is_empty() {
            "(unknown)".into()
        } else {
            parts.join("/")
        }
    }
}

impl Context<'_> {
    /// Whether this context names volume `volume` (lower-case hex, as kmsfs writes it).
    fn names(&self, volume: &str) -> bool {
        self.volume.as_deref() == Some(volume)
    }

    /// What the context says the key is for.
    fn target(&self) -> Target {
        match (&self.file, &self.purpose) {
            (Some(f), _) => Target::File(f.to_string()),
            (None, p) => Target::Volume(p.as_deref().unwrap_or("").to_string()),
        }
    }
}

/// The KMS events naming volume `volume` (hex) in one log file's text.
pub fn parse_log(text: &str, volume: &str) -> Result<Parsed, String> {
    let file: LogFile<'_> =
        serde_json::from_str(text).map_err(|e| format!("not a CloudTrail log file ({e})"))?;
    let mut out = Parsed {
        records: file.records.len(),
        ..Parsed::default()
    };
    for raw in file.records {
        match parse_record(raw.get(), volume) {
            Ok(Some(e)) => out.events.push(e),
            Ok(None) => {}
            Err(()) => out.malformed += 1,
        }
    }
    Ok(out)
}

/// One record: `Ok(None)` when it is not a KMS event of `volume`, `Err` when it is a KMS
/// record kmsfs cannot read.
fn parse_record(raw: &str, volume: &str) -> Result<Option<Event>, ()> {
    // A record of another service may be shaped in ways this struct does not expect: only a
    // KMS record that does not parse counts as malformed.
    let Ok(r) = serde_json::from_str::<Record<'_>>(raw) else {
        return if raw.contains(KMS_SOURCE) {
            Err(())
        } else {
            Ok(None)
        };
    };
    if r.event_source.as_deref() != Some(KMS_SOURCE) {
        return Ok(None);
    }
    let Some(params) = r.request_parameters else {
        return Ok(None);
    };
    // Cheap test first: most KMS calls of an account are not about kmsfs keys at all. (KMS
    // compares contexts exactly, and kmsfs writes ids in lower case.)
    if !params.get().contains(volume) {
        return Ok(None);
    }
    let p: Params<'_> = serde_json::from_str(params.get()).map_err(|_| ())?;
    let ctx = [
        &p.encryption_context,
        &p.source_encryption_context,
        &p.destination_encryption_context,
    ]
    .into_iter()
    .flatten()
    .find(|c| c.names(volume));
    let Some(ctx) = ctx else {
        return Ok(None);
    };
    let time_text = r.event_time.as_deref().ok_or(())?;
    let time = Timestamp::parse_rfc3339(time_text).ok_or(())?;
    let identity: Identity<'_> = match r.user_identity {
        Some(raw) => serde_json::from_str(raw.get()).map_err(|_| ())?,
        None => Identity::default(),
    };
    let key_arn = match r.resources {
        Some(raw) => serde_json::from_str::<Option<Vec<Resource<'_>>>>(raw.get())
            .map_err(|_| ())?
            .unwrap_or_default()
            .into_iter()
            .find(|res| res.kind.as_deref() == Some("AWS::KMS::Key"))
            .and_then(|res| res.arn.map(Cow::into_owned))
            .unwrap_or_default(),
        None => String::new(),
    };
    let text = |s: Option<Cow<'_, str>>| s.map(Cow::into_owned).unwrap_or_default();
    Ok(Some(Event {
        time,
        time_text: time_text.to_string(),
        principal: identity.principal(),
        operation: text(r.event_name),
        result: r
            .error_code
            .filter(|c| !c.is_empty())
            .map_or_else(|| OK.to_string(), Cow::into_owned),
        region: text(r.aws_region),
        source_ip: text(r.source_ip),
        target: ctx.target(),
        key_arn,
    }))
}

/// A log file's text: gunzipped when it starts with the gzip magic (AWS delivers `.json.gz`;
/// a file may hold several gzip members).
pub fn read_log(path: &Path) -> Result<String, String> {
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut text = Vec::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut text)
            .map_err(|e| format!("not a valid gzip file ({e})"))?;
        bytes = text;
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text: not a CloudTrail log file".to_string())
}

/// Whether a file found in a directory walk is a CloudTrail log file: `*.json` or `*.json.gz`,
/// but not a digest file (CloudTrail-Digest: hashes, no records).
fn is_log_name(name: &str) -> bool {
    (name.ends_with(".json") || name.ends_with(".json.gz")) && !name.contains("CloudTrail-Digest")
}

/// The log files named by `paths`: a file as given, a directory walked recursively for log
/// files (symbolic links inside it are not followed). Returns the files (sorted, so runs are
/// reproducible) and a warning per path that could not be read.
pub fn log_files(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<String>) {
    let (mut files, mut warnings) = (Vec::new(), Vec::new());
    for p in paths {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => walk_dir(p, &mut files, &mut warnings),
            Ok(_) => files.push(p.clone()),
            Err(e) => warnings.push(format!("{}: {e}", p.display())),
        }
    }
    files.sort();
    files.dedup();
    (files, warnings)
}

/// Every log file under `dir`, depth first.
fn walk_dir(dir: &Path, files: &mut Vec<PathBuf>, warnings: &mut Vec<String>) {
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) => {
                warnings.push(format!("{}: {e}", d.display()));
                continue;
            }
        };
        for e in entries.flatten() {
            // DirEntry::file_type does not follow symbolic links: a link is neither.
            let Ok(ft) = e.file_type() else { continue };
            let path = e.path();
            if ft.is_dir() {
                todo.push(path);
            } else if ft.is_file() && is_log_name(&e.file_name().to_string_lossy()) {
                files.push(path);
            }
        }
    }
}

#[cfg(test)]
#[path = "trail_tests.rs"]
mod tests;
