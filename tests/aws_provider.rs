//! The AWS KMS provider over real HTTP against moto's KMS server on 127.0.0.1.
//!
//! Each test starts its own moto (and proxies) through guards that stop them on every path.
//! moto ignores key state and forgets keys on restart, so outages and hangs are simulated by
//! the proxy in `common::moto`, not by moto itself.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::moto::{MotoServer, Proxy, options};
use kmsfs::crypto::DataKey;
use kmsfs::format::header::ProviderId;
use kmsfs::keys::aws::{AwsKmsProvider, KmsTimeouts};
use kmsfs::keys::local::LocalProvider;
use kmsfs::keys::{EncryptionContext, KeyCache, KeyError, KeyProvider};

const VOLUME: [u8; 16] = [0x11; 16];
const FILE: [u8; 16] = [0x22; 16];

fn ctx() -> EncryptionContext {
    EncryptionContext::for_file(&VOLUME, &FILE)
}

fn provider(endpoint: &str, key: &str) -> AwsKmsProvider {
    AwsKmsProvider::new(key, options(endpoint, KmsTimeouts::default())).expect("provider")
}

#[test]
fn generate_decrypt_wrap_and_reencrypt_round_trip() {
    let moto = MotoServer::start();
    let key1 = moto.create_key();
    let key2 = moto.create_key();
    let a = provider(&moto.url(), &key1);
    let b = provider(&moto.url(), &key2);
    assert_eq!(a.key_id(), key1);
    assert_eq!(a.provider_id(), ProviderId::AwsKms);
    assert!(format!("{a:?}").contains(&key1));

    // A key id and an alias resolve to the same trusted ARN.
    let bare_id = key1.rsplit('/').next().expect("key id");
    assert_eq!(provider(&moto.url(), bare_id).key_id(), key1);
    moto.create_alias("alias/kmsfs-test", &key1);
    assert_eq!(provider(&moto.url(), "alias/kmsfs-test").key_id(), key1);

    let generated = a.generate_data_key(&ctx()).expect("generate");
    let unwrapped = a.decrypt(&generated.wrapped, &ctx()).expect("decrypt");
    assert_eq!(unwrapped.expose(), generated.key.expose());

    let mine = DataKey::generate().expect("random key");
    let wrapped = a.wrap(&mine, &ctx()).expect("wrap");
    assert_eq!(
        a.decrypt(&wrapped, &ctx())
            .expect("decrypt wrapped")
            .expose(),
        mine.expose()
    );

    // KMS ReEncrypt to the second key: only the second key opens the result.
    let moved = a
        .reencrypt(&generated.wrapped, &ctx(), &b)
        .expect("reencrypt");
    assert_eq!(
        b.decrypt(&moved, &ctx()).expect("decrypt moved").expose(),
        generated.key.expose()
    );
    assert!(matches!(
        a.decrypt(&moved, &ctx()),
        Err(KeyError::Refused(_) | KeyError::BadWrappedKey(_))
    ));

    // To another kind of provider the key is unwrapped here and wrapped there.
    let dir = tempfile::tempdir().expect("tempdir");
    let local = LocalProvider::create(&dir.path().join("master.key")).expect("local key");
    let moved = a
        .reencrypt(&generated.wrapped, &ctx(), &local)
        .expect("reencrypt to local");
    assert_eq!(
        local
            .decrypt(&moved, &ctx())
            .expect("local decrypt")
            .expose(),
        generated.key.expose()
    );
}

#[test]
fn unknown_key_is_refused_at_construction() {
    let moto = MotoServer::start();
    let err = AwsKmsProvider::new(
        "alias/does-not-exist",
        options(&moto.url(), KmsTimeouts::default()),
    )
    .expect_err("no such key");
    assert!(
        matches!(&err, KeyError::Refused(m) if m.contains("DescribeKey")),
        "{err}"
    );
}

#[test]
fn wrong_encryption_context_is_refused() {
    let moto = MotoServer::start();
    let a = provider(&moto.url(), &moto.create_key());
    let generated = a.generate_data_key(&ctx()).expect("generate");
    let other_file = EncryptionContext::for_file(&VOLUME, &[0x33; 16]);
    let err = a
        .decrypt(&generated.wrapped, &other_file)
        .expect_err("wrong context");
    assert!(
        matches!(err, KeyError::Refused(_) | KeyError::BadWrappedKey(_)),
        "{err}"
    );
    let err = a
        .decrypt(&generated.wrapped, &EncryptionContext::default())
        .expect_err("no context");
    assert!(
        matches!(err, KeyError::Refused(_) | KeyError::BadWrappedKey(_)),
        "{err}"
    );
}

#[test]
fn blob_under_another_key_is_refused() {
    let moto = MotoServer::start();
    let trusted = provider(&moto.url(), &moto.create_key());
    let other = provider(&moto.url(), &moto.create_key());
    let foreign = other
        .generate_data_key(&ctx())
        .expect("generate under key2");

    let err = trusted
        .decrypt(&foreign.wrapped, &ctx())
        .expect_err("foreign blob");
    assert!(
        matches!(err, KeyError::Refused(_) | KeyError::BadWrappedKey(_)),
        "{err}"
    );

    // moto's ReEncrypt ignores SourceKeyId and decrypts anything: the reply's KeyId check is
    // what refuses it.
    let err = trusted
        .reencrypt(&foreign.wrapped, &ctx(), &other)
        .expect_err("foreign source");
    assert!(
        matches!(&err, KeyError::Refused(m) if m.contains("not the trusted key") && m.contains(other.key_id())),
        "{err}"
    );
}

#[test]
fn cache_serves_second_get_without_a_request() {
    let moto = MotoServer::start();
    let key = moto.create_key();
    let proxy = Proxy::forward_to(moto.addr());
    let p = Arc::new(provider(&proxy.url(), &key));
    let generated = p.generate_data_key(&ctx()).expect("generate");

    let cache = KeyCache::new(
        p.clone(),
        Duration::from_secs(300),
        Duration::from_secs(300),
        16,
    );
    let before = proxy.requests();
    let first = cache
        .get(&FILE, &generated.wrapped, &ctx())
        .expect("first get");
    assert_eq!(proxy.requests(), before + 1, "first get makes one Decrypt");
    let second = cache
        .get(&FILE, &generated.wrapped, &ctx())
        .expect("second get");
    assert_eq!(
        proxy.requests(),
        before + 1,
        "second get is served from the cache"
    );
    assert_eq!(first.expose(), generated.key.expose());
    assert_eq!(second.expose(), generated.key.expose());
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.kms_decrypt), (1, 1, 1));
}

/// Asserts `f` fails as Unreachable after waiting at least one attempt timeout and at most the
/// operation timeout plus slack.
fn assert_times_out<T: std::fmt::Debug>(
    what: &str,
    t: &KmsTimeouts,
    f: impl FnOnce() -> Result<T, KeyError>,
) {
    let started = Instant::now();
    let result = f();
    let elapsed = started.elapsed();
    assert!(
        matches!(result, Err(KeyError::Unreachable(_))),
        "{what}: {result:?}"
    );
    assert!(
        elapsed >= t.attempt.mul_f32(0.9),
        "{what} failed too early ({elapsed:?}): {result:?}"
    );
    assert!(
        elapsed < t.operation + Duration::from_secs(3),
        "{what} took {elapsed:?}"
    );
}

#[test]
fn kms_that_never_answers_fails_within_the_timeout() {
    let timeouts = KmsTimeouts {
        connect: Duration::from_secs(1),
        attempt: Duration::from_secs(1),
        operation: Duration::from_secs(2),
        max_attempts: 2,
    };

    // The constructor's DescribeKey against an endpoint that accepts and never answers.
    let hole = Proxy::black_hole();
    assert_times_out("construction", &timeouts, || {
        AwsKmsProvider::new("alias/any", options(&hole.url(), timeouts))
    });
    assert!(hole.requests() >= 1, "the request reached the black hole");

    // A working provider whose KMS starts hanging.
    let moto = MotoServer::start();
    let key = moto.create_key();
    let proxy = Proxy::forward_to(moto.addr());
    let p = AwsKmsProvider::new(&key, options(&proxy.url(), timeouts)).expect("provider");
    let generated = p
        .generate_data_key(&ctx())
        .expect("generate while KMS answers");
    proxy.set_hang(true);
    assert_times_out("generate", &timeouts, || p.generate_data_key(&ctx()));
    assert_times_out("decrypt", &timeouts, || {
        p.decrypt(&generated.wrapped, &ctx())
    });
    proxy.set_hang(false);
    assert_eq!(
        p.decrypt(&generated.wrapped, &ctx())
            .expect("KMS back")
            .expose(),
        generated.key.expose()
    );
}

/// Issue 20: a key ARN's region is the client's region. A key made in us-west-2 is used with
/// the provider configured for us-east-1 (as AWS_REGION would be): every call is signed for
/// us-west-2 and succeeds; its bare key id, which carries no region, goes to us-east-1 and is
/// not found there.
#[test]
fn every_call_goes_to_the_region_of_the_key_arn() {
    let moto = MotoServer::start();
    let proxy = Proxy::forward_to(moto.addr());
    let west = moto.create_key_in("us-west-2");
    assert!(west.starts_with("arn:aws:kms:us-west-2:"), "{west}");
    let opts = options(&proxy.url(), KmsTimeouts::default());
    assert_eq!(opts.region.as_deref(), Some("us-east-1"));
    let p = AwsKmsProvider::new(&west, opts.clone()).expect("provider for the us-west-2 key");
    assert_eq!(p.key_id(), west);
    let generated = p.generate_data_key(&ctx()).expect("generate");
    let key = p.decrypt(&generated.wrapped, &ctx()).expect("decrypt");
    assert_eq!(key.expose(), generated.key.expose());
    let wrapped = p.wrap(&key, &ctx()).expect("wrap");
    p.decrypt(&wrapped, &ctx()).expect("decrypt wrapped");
    let log = proxy.request_log();
    let ops: Vec<&str> = log.iter().map(|r| r.op.as_str()).collect();
    assert_eq!(
        ops,
        [
            "DescribeKey",
            "GenerateDataKey",
            "Decrypt",
            "Encrypt",
            "Decrypt"
        ]
    );
    for r in &log {
        assert_eq!(r.region, "us-west-2", "{} signed for {:?}", r.op, r.region);
    }
    assert_eq!(proxy.errors(), 0, "{:?}", proxy.error_replies());

    proxy.reset();
    let bare = west.rsplit('/').next().expect("key id");
    let err = AwsKmsProvider::new(bare, opts).expect_err("not in us-east-1");
    assert!(matches!(err, KeyError::Refused(_)), "{err}");
    let log = proxy.request_log();
    assert!(
        !log.is_empty() && log.iter().all(|r| r.region == "us-east-1"),
        "{log:?}"
    );
}
