//! The AWS KMS provider: data keys are generated, unwrapped and re-wrapped by AWS KMS (or any
//! service speaking its API, such as moto) through aws-sdk-kms.
//!
//! Trust (DESIGN.md §1): the key a vault trusts comes from outside the vault. The constructor
//! resolves it once (DescribeKey) to its key ARN; every Decrypt and ReEncrypt names that ARN,
//! and the KeyId of every reply is checked against it, so a wrapped key made under some other
//! key is refused even by a KMS that would happily decrypt it.
//!
//! Region: a key ARN's region is the client's region (a key answers only in its region; a
//! multi-Region replica is a key of its own region, with the primary's key id and material).
//! A key id or alias goes to the configured region (AWS_REGION, the profile).
//!
//! Threads: the provider owns one small tokio runtime and blocks on it, because the FUSE side is
//! synchronous. Nothing here is global: the caller creates the provider after any daemonizing
//! fork. Do not call it from inside another tokio runtime (`block_on` would panic there).
//!
//! Time: every call has connect, per-attempt and whole-operation timeouts and a bounded number
//! of attempts, so a KMS that accepts connections and never answers fails the call within
//! [`KmsTimeouts::operation`] as [`KeyError::Unreachable`].
//!
//! Key material: plaintext key bytes copied out of replies are zeroized. The SDK's own request
//! and response buffers (base64 in JSON) are outside our reach and are not.

use std::collections::HashMap;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_kms::Client;
use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::config::{Credentials, Region};
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, KeySpec, KeyUsageType};
use zeroize::Zeroizing;

use super::{EncryptionContext, GeneratedKey, KeyError, KeyProvider, arn};
use crate::crypto::DataKey;
use crate::format::header::ProviderId;

/// Worker threads of the provider's runtime: calls block the caller's thread, the workers only
/// drive connections, so two are plenty.
const RUNTIME_WORKERS: usize = 2;
/// Longest service message quoted in an error (KMS messages are short; a proxy's may not be).
const MAX_MESSAGE: usize = 200;

/// Time limits and retries applied to every KMS call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KmsTimeouts {
    /// Limit for opening a connection to the KMS endpoint.
    pub connect: Duration,
    /// Limit for one attempt, from sending the request to reading the whole reply.
    pub attempt: Duration,
    /// Limit for the whole call, all attempts and backoff included: the most a caller waits.
    pub operation: Duration,
    /// Most attempts per call (1 = no retry); transient errors are retried with backoff.
    pub max_attempts: u32,
}

impl Default for KmsTimeouts {
    fn default() -> Self {
        KmsTimeouts {
            connect: Duration::from_secs(3),
            attempt: Duration::from_secs(5),
            operation: Duration::from_secs(15),
            max_attempts: 3,
        }
    }
}

/// An access key given explicitly instead of the standard AWS credential chain.
#[derive(Clone)]
pub struct StaticCredentials {
    /// The access key id (not secret; shown in Debug).
    pub access_key_id: String,
    /// The secret access key (never shown).
    pub secret_access_key: String,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// How to reach KMS; every `None` falls back to the standard AWS chain (env, profiles,
/// `AWS_ENDPOINT_URL_KMS`, IMDS).
#[derive(Debug, Clone, Default)]
pub struct AwsOptions {
    /// Timeouts and retries of every call.
    pub timeouts: KmsTimeouts,
    /// Endpoint URL overriding the chain's (e.g. a local moto server).
    pub endpoint_url: Option<String>,
    /// Region overriding the chain's.
    pub region: Option<String>,
    /// Credentials overriding the chain's.
    pub credentials: Option<StaticCredentials>,
}

/// A key provider backed by one trusted AWS KMS key.
pub struct AwsKmsProvider {
    /// The trusted key's ARN, resolved once at construction.
    arn: String,
    // Declared before `runtime` so the client (and its connection pool) drops first.
    client: Client,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for AwsKmsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKmsProvider")
            .field("arn", &self.arn)
            .finish_non_exhaustive()
    }
}

impl AwsKmsProvider {
    /// Connect to KMS and resolve `key_id` (ARN, key id or `alias/...`) to the trusted key ARN.
    /// A key ARN's region is the client's region, whatever the options or AWS_REGION say.
    pub fn new(key_id: &str, options: AwsOptions) -> Result<Self, KeyError> {
        if key_id.trim().is_empty() {
            return Err(KeyError::Config(
                "empty KMS key id: pass --kms-key-id ARN|ID|alias/NAME".into(),
            ));
        }
        let (options, overridden) = for_key(key_id, &options);
        if let (Some(was), Some(region)) = (overridden, &options.region) {
            tracing::info!(
                "KMS calls go to {region}, the region of key {key_id}, not to the configured region {was}"
            );
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_WORKERS)
            .thread_name("kmsfs-kms")
            .enable_all()
            .build()
            .map_err(|e| KeyError::Config(format!("cannot start the KMS client runtime: {e}")))?;
        let config = runtime.block_on(load_config(&options));
        if config.region().is_none() {
            return Err(KeyError::Config(
                "no AWS region for KMS: set AWS_REGION (or a region in your AWS profile)".into(),
            ));
        }
        if options.credentials.is_none() {
            runtime.block_on(check_credentials(&config))?;
        }
        let client = Client::new(&config);
        let arn = runtime
            .block_on(resolve_arn(&client, key_id))
            .map_err(|e| match e {
                KeyError::Unreachable(why) => {
                    KeyError::Unreachable(format!("{why} (endpoint {})", endpoint_of(&config)))
                }
                other => other,
            })?;
        Ok(AwsKmsProvider {
            arn,
            client,
            runtime,
        })
    }

    /// The trusted key's ARN.
    pub fn arn(&self) -> &str {
        &self.arn
    }

    /// Whether `to` is a KMS key that this provider's endpoint can ReEncrypt to directly:
    /// ReEncrypt runs in one region, so keys elsewhere take the decrypt + wrap path.
    fn can_reencrypt_to(&self, to: &dyn KeyProvider) -> bool {
        to.provider_id() == ProviderId::AwsKms
            && arn::region(&self.arn).is_some()
            && arn::region(&self.arn) == arn::region(to.key_id())
    }
}

/// The options for a client of `key_id`: a key ARN's region replaces the configured one (a
/// key is reachable only in its own region; a multi-Region replica is a key of its region).
/// Also returns the configured region (options, else AWS_REGION / AWS_DEFAULT_REGION) when it
/// differed; the profile's region is not read, so that one is overridden silently.
fn for_key(key_id: &str, options: &AwsOptions) -> (AwsOptions, Option<String>) {
    let mut out = options.clone();
    let Some(region) = arn::region(key_id) else {
        return (out, None);
    };
    let configured = options.region.clone().or_else(|| {
        ["AWS_REGION", "AWS_DEFAULT_REGION"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|r| !r.is_empty()))
    });
    out.region = Some(region.to_string());
    (out, configured.filter(|c| c != region))
}

/// The SDK configuration: the standard chain, with the explicit options laid over it.
async fn load_config(options: &AwsOptions) -> aws_config::SdkConfig {
    let t = &options.timeouts;
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(t.connect)
        .operation_attempt_timeout(t.attempt)
        .operation_timeout(t.operation)
        .build();
    let retry = RetryConfig::standard()
        .with_max_attempts(t.max_attempts.max(1))
        .with_initial_backoff(Duration::from_millis(100))
        .with_max_backoff(Duration::from_secs(2));
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(timeouts)
        .retry_config(retry);
    if let Some(url) = &options.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    if let Some(region) = &options.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(c) = &options.credentials {
        loader = loader.credentials_provider(Credentials::new(
            c.access_key_id.clone(),
            c.secret_access_key.clone(),
            None,
            None,
            "kmsfs-options",
        ));
    }
    loader.load().await
}

/// Fail early, and say so, when the standard chain finds no credentials at all (otherwise
/// the first call fails as a "dispatch failure" that reads like an outage).
async fn check_credentials(config: &aws_config::SdkConfig) -> Result<(), KeyError> {
    use aws_credential_types::provider::ProvideCredentials;
    use aws_credential_types::provider::error::CredentialsError;
    let Some(chain) = config.credentials_provider() else {
        return Err(KeyError::Config(NO_CREDENTIALS.into()));
    };
    match chain.provide_credentials().await {
        Ok(_) => Ok(()),
        Err(CredentialsError::CredentialsNotLoaded(_)) => {
            Err(KeyError::Config(NO_CREDENTIALS.into()))
        }
        Err(e) => Err(KeyError::Unreachable(format!(
            "cannot get AWS credentials: {}",
            error_chain(&e)
        ))),
    }
}

/// What to do when no AWS credentials are found.
const NO_CREDENTIALS: &str = "no AWS credentials found: set AWS_PROFILE (a profile in ~/.aws), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run where an instance or task role provides them";

/// The KMS endpoint `config` talks to, for messages.
fn endpoint_of(config: &aws_config::SdkConfig) -> String {
    // The service-specific variable is resolved by the KMS client, not in `SdkConfig`.
    let from_env = ["AWS_ENDPOINT_URL_KMS", "AWS_ENDPOINT_URL"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()));
    match (config.endpoint_url(), from_env, config.region()) {
        (Some(url), _, _) => url.to_string(),
        (None, Some(url), _) => url,
        (None, None, Some(r)) => format!("https://kms.{r}.amazonaws.com"),
        (None, None, None) => "unknown".into(),
    }
}

/// DescribeKey: the key ARN behind `key_id`, refused unless it is a symmetric encryption key.
async fn resolve_arn(client: &Client, key_id: &str) -> Result<String, KeyError> {
    const OP: &str = "DescribeKey";
    let out = client
        .describe_key()
        .key_id(key_id)
        .send()
        .await
        .map_err(|e| classify(OP, e))?;
    let meta = out.key_metadata.ok_or_else(|| {
        KeyError::Refused(format!(
            "KMS {OP} of {key_id} answered without key metadata"
        ))
    })?;
    let arn = meta.arn.ok_or_else(|| {
        KeyError::Refused(format!("KMS {OP} of {key_id} answered without a key ARN"))
    })?;
    if let Some(usage) = meta
        .key_usage
        .as_ref()
        .filter(|u| **u != KeyUsageType::EncryptDecrypt)
    {
        return Err(KeyError::Refused(format!(
            "KMS key {arn} has usage {}, not ENCRYPT_DECRYPT",
            usage.as_str()
        )));
    }
    if let Some(spec) = meta
        .key_spec
        .as_ref()
        .filter(|s| **s != KeySpec::SymmetricDefault)
    {
        return Err(KeyError::Refused(format!(
            "KMS key {arn} has spec {}, not SYMMETRIC_DEFAULT",
            spec.as_str()
        )));
    }
    // A key ARN given by the user must come back unchanged; anything else means the endpoint
    // is not answering about the key we asked for.
    if key_id.starts_with("arn:") && key_id.contains(":key/") && key_id != arn {
        return Err(KeyError::Refused(format!(
            "KMS {OP} of {key_id} answered with key {arn}"
        )));
    }
    Ok(arn)
}

impl KeyProvider for AwsKmsProvider {
    fn provider_id(&self) -> ProviderId {
        ProviderId::AwsKms
    }

    fn key_id(&self) -> &str {
        &self.arn
    }

    fn generate_data_key(&self, ctx: &EncryptionContext) -> Result<GeneratedKey, KeyError> {
        const OP: &str = "GenerateDataKey";
        let request = self
            .client
            .generate_data_key()
            .key_id(&self.arn)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(context_map(ctx))
            .send();
        let mut out = self
            .runtime
            .block_on(request)
            .map_err(|e| classify(OP, e))?;
        // Take the plaintext first, so it is wiped on every path below.
        let key = data_key_from(OP, out.plaintext.take())?;
        check_key_id(OP, out.key_id(), &self.arn)?;
        let wrapped = ciphertext_from(OP, out.ciphertext_blob.take())?;
        Ok(GeneratedKey { key, wrapped })
    }

    fn decrypt(&self, wrapped: &[u8], ctx: &EncryptionContext) -> Result<DataKey, KeyError> {
        const OP: &str = "Decrypt";
        let request = self
            .client
            .decrypt()
            .ciphertext_blob(Blob::new(wrapped))
            .key_id(&self.arn)
            .set_encryption_context(context_map(ctx))
            .send();
        let mut out = self
            .runtime
            .block_on(request)
            .map_err(|e| classify(OP, e))?;
        let key = data_key_from(OP, out.plaintext.take())?;
        check_key_id(OP, out.key_id(), &self.arn)?;
        Ok(key)
    }

    fn wrap(&self, key: &DataKey, ctx: &EncryptionContext) -> Result<Vec<u8>, KeyError> {
        const OP: &str = "Encrypt";
        let request = self
            .client
            .encrypt()
            .key_id(&self.arn)
            .plaintext(Blob::new(key.expose().to_vec()))
            .set_encryption_context(context_map(ctx))
            .send();
        let mut out = self
            .runtime
            .block_on(request)
            .map_err(|e| classify(OP, e))?;
        check_key_id(OP, out.key_id(), &self.arn)?;
        ciphertext_from(OP, out.ciphertext_blob.take())
    }

    fn reencrypt(
        &self,
        wrapped: &[u8],
        ctx: &EncryptionContext,
        to: &dyn KeyProvider,
    ) -> Result<Vec<u8>, KeyError> {
        if !self.can_reencrypt_to(to) {
            // Another provider (or region): the plaintext key passes through this process.
            let key = self.decrypt(wrapped, ctx)?;
            return to.wrap(&key, ctx);
        }
        const OP: &str = "ReEncrypt";
        let request = self
            .client
            .re_encrypt()
            .ciphertext_blob(Blob::new(wrapped))
            .source_key_id(&self.arn)
            .destination_key_id(to.key_id())
            .set_source_encryption_context(context_map(ctx))
            .set_destination_encryption_context(context_map(ctx))
            .send();
        let mut out = self
            .runtime
            .block_on(request)
            .map_err(|e| classify(OP, e))?;
        check_key_id(&format!("{OP} (source)"), out.source_key_id(), &self.arn)?;
        check_key_id(&format!("{OP} (destination)"), out.key_id(), to.key_id())?;
        ciphertext_from(OP, out.ciphertext_blob.take())
    }
}

/// The encryption context as the SDK wants it (`None` when empty: KMS treats both alike).
fn context_map(ctx: &EncryptionContext) -> Option<HashMap<String, String>> {
    if ctx.0.is_empty() {
        return None;
    }
    Some(ctx.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// A 256-bit data key from a reply's plaintext; the copied bytes are wiped either way.
fn data_key_from(op: &str, plaintext: Option<Blob>) -> Result<DataKey, KeyError> {
    let bytes = Zeroizing::new(plaintext.map(Blob::into_inner).unwrap_or_default());
    DataKey::from_slice(&bytes).map_err(|_| {
        KeyError::Refused(format!(
            "KMS {op} returned a plaintext of {} bytes, not a 256-bit key",
            bytes.len()
        ))
    })
}

/// A reply's ciphertext blob, refused when missing or empty.
fn ciphertext_from(op: &str, blob: Option<Blob>) -> Result<Vec<u8>, KeyError> {
    blob.map(Blob::into_inner)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| KeyError::Refused(format!("KMS {op} answered without a ciphertext")))
}

/// Refuse a reply made with any key but `trusted` (DESIGN.md §1: check the KeyId in the reply).
/// Exact, not the multi-Region rule of `arn`: the reply must name the very key (the replica)
/// we called.
fn check_key_id(op: &str, got: Option<&str>, trusted: &str) -> Result<(), KeyError> {
    match got {
        Some(k) if k == trusted => Ok(()),
        Some(k) => Err(KeyError::Refused(format!(
            "KMS {op} answered with key {k}, not the trusted key {trusted}"
        ))),
        None => Err(KeyError::Refused(format!(
            "KMS {op} answered without a key id (trusted key {trusted})"
        ))),
    }
}

/// Whether a KMS error reply is transient (worth serving a cached key through) rather than a
/// refusal. Only error codes and HTTP statuses known to mean "try later" count: anything else
/// the service says is a refusal, so an unknown error never keeps a key alive.
fn is_transient(code: Option<&str>, status: u16) -> bool {
    const TRANSIENT: &[&str] = &[
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "LimitExceededException",
        "KMSInternalException",
        "InternalFailure",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "DependencyTimeoutException",
        "KeyUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
    ];
    status >= 500 || status == 429 || code.is_some_and(|c| TRANSIENT.contains(&c))
}

/// Map an SDK error to the cache's policy split: could not reach / try later → `Unreachable`,
/// the service said no → `Refused`, the request could not even be built → `Config`.
fn classify<E>(op: &str, err: SdkError<E, HttpResponse>) -> KeyError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &err {
        SdkError::ConstructionFailure(_) => KeyError::Config(format!(
            "KMS {op}: cannot build the request: {}",
            error_chain(&err)
        )),
        SdkError::TimeoutError(_) => {
            KeyError::Unreachable(format!("KMS {op}: {}", error_chain(&err)))
        }
        SdkError::DispatchFailure(_) => {
            KeyError::Unreachable(format!("KMS {op}: {}", error_chain(&err)))
        }
        SdkError::ResponseError(r) => {
            let status = r.raw().status().as_u16();
            let msg = format!("KMS {op}: unreadable reply (HTTP {status})");
            if is_transient(None, status) {
                KeyError::Unreachable(msg)
            } else {
                KeyError::Refused(msg)
            }
        }
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = s.err().code();
            let mut msg = format!(
                "KMS {op}: {} (HTTP {status})",
                code.unwrap_or("unknown error")
            );
            if let Some(m) = s.err().message().filter(|m| !m.is_empty()) {
                msg.push_str(": ");
                msg.push_str(&truncate(m));
            }
            if is_transient(code, status) {
                KeyError::Unreachable(msg)
            } else if matches!(
                code,
                Some("InvalidCiphertextException" | "IncorrectKeyException")
            ) {
                KeyError::BadWrappedKey(msg)
            } else {
                KeyError::Refused(msg)
            }
        }
        _ => KeyError::Unreachable(format!("KMS {op}: {}", error_chain(&err))),
    }
}

/// An error and its sources on one line ("a: b: c"), without Debug noise.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    truncate(&out)
}

/// At most `MAX_MESSAGE` characters, on one line.
fn truncate(s: &str) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match one_line.char_indices().nth(MAX_MESSAGE) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_are_unreachable_refusals_are_not() {
        for code in [
            "ThrottlingException",
            "LimitExceededException",
            "KMSInternalException",
            "DependencyTimeoutException",
            "KeyUnavailableException",
        ] {
            assert!(is_transient(Some(code), 400), "{code}");
        }
        for code in [
            "AccessDeniedException",
            "DisabledException",
            "NotFoundException",
            "InvalidCiphertextException",
            "IncorrectKeyException",
            "InvalidKeyUsageException",
            "KMSInvalidStateException",
            "SomethingNewException",
        ] {
            assert!(!is_transient(Some(code), 400), "{code}");
        }
        assert!(is_transient(None, 503));
        assert!(
            is_transient(Some("AccessDeniedException"), 500),
            "5xx is transient whatever the body says"
        );
        assert!(is_transient(None, 429));
        assert!(!is_transient(None, 403));
    }

    #[test]
    fn key_id_check_names_both_keys() {
        assert!(check_key_id("Decrypt", Some("arn:a"), "arn:a").is_ok());
        let e = check_key_id("Decrypt", Some("arn:b"), "arn:a").expect_err("other key");
        assert_eq!(
            e,
            KeyError::Refused(
                "KMS Decrypt answered with key arn:b, not the trusted key arn:a".into()
            )
        );
        assert!(matches!(
            check_key_id("Decrypt", None, "arn:a"),
            Err(KeyError::Refused(_))
        ));
    }

    #[test]
    fn a_key_arn_chooses_the_region() {
        let arn = "arn:aws:kms:us-west-2:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab";
        let opts = |r: Option<&str>| AwsOptions {
            region: r.map(str::to_string),
            ..AwsOptions::default()
        };
        let (o, was) = for_key(arn, &opts(Some("us-east-1")));
        assert_eq!(o.region.as_deref(), Some("us-west-2"));
        assert_eq!(was.as_deref(), Some("us-east-1"));
        let (o, was) = for_key(arn, &opts(Some("us-west-2")));
        assert_eq!((o.region.as_deref(), was), (Some("us-west-2"), None));
        // An alias or bare id keeps the configured region (or the chain's).
        let (o, was) = for_key("alias/dr", &opts(Some("us-east-1")));
        assert_eq!((o.region.as_deref(), was), (Some("us-east-1"), None));
        let (o, _) = for_key("alias/dr", &opts(None));
        assert_eq!(o.region, None);
    }

    #[test]
    fn messages_are_one_bounded_line() {
        let long = "x\n".repeat(500);
        let t = truncate(&long);
        assert!(!t.contains('\n'));
        assert!(t.chars().count() <= MAX_MESSAGE + 1);
    }

    #[test]
    fn short_plaintext_is_refused() {
        let e = data_key_from("Decrypt", Some(Blob::new(vec![1u8; 16]))).expect_err("16 bytes");
        assert!(matches!(e, KeyError::Refused(m) if m.contains("16 bytes")));
        assert!(data_key_from("Decrypt", Some(Blob::new(vec![1u8; 32]))).is_ok());
    }

    #[test]
    fn debug_shows_only_public_parts() {
        let c = StaticCredentials {
            access_key_id: "AKID".into(),
            secret_access_key: "sekrit".into(),
        };
        let d = format!("{c:?}");
        assert!(d.contains("AKID") && !d.contains("sekrit"));
    }
}
