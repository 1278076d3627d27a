//! `kmsfs rewrap VAULT (--to-kms-key-id ID | --to-key-file PATH) [--dry-run]`: move every
//! file's wrapped data key (and the vault's wrapped name key) to a new wrapping key, in place,
//! without touching the encrypted data.
//!
//! Per file, through the header's two wrapped-key slots (docs/FORMAT.md, kmsfs(5)):
//! 1. the new wrapped key is computed: KMS ReEncrypt when both keys are AWS KMS keys in one
//!    region (the data key never leaves the KMS), otherwise unwrap with the old key and wrap
//!    with the new one;
//! 2. it is written into the *inactive* slot (bytes 129..1024, the active byte untouched) and
//!    fsynced: a crash here leaves the file readable under the old key;
//! 3. the active byte (offset 128) is flipped in one 1-byte write and fsynced. When the provider
//!    kind changes (local ↔ AWS) the provider id (byte 48) and the key commitment (96..128) must
//!    change with it: they are written together with the active byte in ONE write of bytes
//!    48..129 (inside the first 512-byte sector). A crash that tears that write would leave a
//!    header whose tag does not verify; see kmsfs(5);
//! 4. the old slot is erased, so this copy of the vault no longer opens under the old key.
//!
//! In bucket-key mode (`init --bucket-key`) file keys are wrapped by the vault's bucket key, so a
//! move to another KMS key rewraps only the bucket key (and the name key) in the config; a move
//! to a local key moves every file as above and drops the bucket key.
//!
//! A file whose active slot already opens under the new key is skipped, so rerunning after a
//! crash or kill resumes. The vault config and the host trust record change last, only when
//! every file and the name key are under the new key. The mount lock of this host is held
//! throughout, so the vault cannot be mounted here meanwhile.

use std::fs::{File, OpenOptions};

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::walk::{self, Progress};
use super::{CliError, CliResult, RewrapArgs, provider};
use crate::crypto;
use crate::format::Id;
use crate::format::header::{
    FileHeader, HEADER_SIZE, ProviderId, SLOT_CAPACITY, slot_rewrite_plan,
};
use crate::keys::bucket::BUCKET_KEY_PURPOSE;
use crate::keys::local::LocalProvider;
use crate::keys::{EncryptionContext, KeyError, KeyProvider, arn};
use crate::names::NAME_KEY_PURPOSE;
use crate::vault::config::CONFIG_KEY_PURPOSE;
use crate::vault::{self, TrustedKey, VaultConfig};

/// What happened to one file.
enum Outcome {
    /// Moved to the new key (or, dry run: would be).
    Rewrapped,
    /// Already under the new key (an earlier, interrupted run got here).
    Already,
    /// A 0-byte file: no header, no key.
    Empty,
    /// The header is damaged, foreign, or its key opens under neither key: left as it was.
    Damaged(String),
    /// The key service failed or refused: the vault cannot be finished now.
    Failed(String),
}

/// The keys and vault facts every file needs.
struct Job<'a> {
    /// The current trusted key (wraps the vault-level keys: names, bucket key).
    kms_from: &'a dyn KeyProvider,
    /// What wraps the file keys now: the trusted key, or the bucket key it wraps.
    from: &'a dyn KeyProvider,
    /// `None` in a dry run whose new key file does not exist yet.
    to: Option<&'a dyn KeyProvider>,
    volume_id: Id,
    dry_run: bool,
}

/// Run `kmsfs rewrap`.
pub fn run(args: &RewrapArgs) -> CliResult {
    let dir = args
        .vault
        .canonicalize()
        .map_err(|e| CliError::target(format!("vault {}: {e}", args.vault.display())))?;
    let cfg = VaultConfig::load(&dir)?;
    let trust = provider::resolve(&args.trust, &cfg, &dir)?;
    let from = provider::open(&trust.key)?;
    // The lock first: a rewrap refused because the vault is mounted creates no key file.
    let _lock = walk::hold_unmounted(
        &dir,
        args.host_id.as_deref(),
        &cfg.volume_id,
        args.dry_run,
        "rewrap",
    )?;
    let (to, to_trusted, created) = open_target(args, &dir)?;
    let to_ref: Option<&dyn KeyProvider> = to.as_deref();
    let to_desc = match (&to, &to_trusted) {
        (Some(p), _) => format!(
            "{} key {}",
            vault::provider_name(p.provider_id()),
            p.key_id()
        ),
        (None, TrustedKey::Local { key_file }) => {
            format!("a new local key in {}", key_file.display())
        }
        (None, TrustedKey::AwsKms { kms_key_id }) => format!("KMS key {kms_key_id}"),
    };
    // The config names the old key, or already the new one (an interrupted run got that far).
    // A multi-Region replica counts as the key it replicates (keys::arn).
    let hint_is = |p: &dyn KeyProvider| {
        cfg.provider == vault::provider_name(p.provider_id())
            && arn::same_key(&cfg.key_id, p.key_id())
    };
    // The config key, from a config that verifies under the old key (or, when an interrupted
    // run already replaced it, under the new one): rewrap re-seals the config with it.
    let config_key = match to_ref {
        Some(to) if !hint_is(from.as_ref()) && hint_is(to) => {
            cfg.verify(to, &VaultConfig::path(&dir).display().to_string())?
        }
        _ => trust.verify(from.as_ref())?,
    };
    if let Some(t) = to_ref {
        if t.provider_id() == from.provider_id() && arn::same_key(from.key_id(), t.key_id()) {
            // Another region's replica has the same key material: nothing would change.
            let same = if t.key_id() == from.key_id() {
                ""
            } else {
                " (the same multi-Region key)"
            };
            println!(
                "rewrap {}: already protected by {to_desc}{same}; nothing to do",
                dir.display()
            );
            return Ok(());
        }
    }
    if created {
        println!(
            "created the new master key {} -- back it up: without it the data is lost",
            key_file_of(&to_trusted)
        );
    }

    // Bucket-key mode to another KMS key: only the bucket key moves; the files, wrapped by
    // it, stay as they are. To a local key: every file moves to the local key, the bucket goes.
    let keep_bucket =
        cfg.wrapped_bucket_key.is_some() && to_trusted.provider_id() == ProviderId::AwsKms;
    let file_from = if keep_bucket {
        from.clone()
    } else {
        vault::open::file_key_provider(&cfg, from.clone(), crate::keys::cache::DEFAULT_TTL)?
    };
    let job = Job {
        kms_from: from.as_ref(),
        from: file_from.as_ref(),
        to: to_ref,
        volume_id: cfg.volume_id_bytes()?,
        dry_run: args.dry_run,
    };
    let tree = if keep_bucket {
        println!(
            "bucket-key mode: the files stay as they are (their keys are wrapped by the vault's bucket key, which moves)"
        );
        walk::Tree::default()
    } else {
        walk::walk(&dir, !cfg.plaintext_names, None)
    };
    let progress = Progress::new(
        if args.dry_run {
            "rewrap (dry run)"
        } else {
            "rewrap"
        },
        tree.files.len() as u64,
    );
    let stop = AtomicBool::new(false);
    let outcomes = walk::parallel(&tree.files, args.jobs, &stop, &progress, |f| {
        let o = rewrap_file(&job, &f.backing);
        if let Outcome::Failed(_) = o {
            stop.store(true, Ordering::Relaxed);
        }
        o
    });
    progress.finish();

    let (mut done, mut already, mut empty, mut damaged, mut failed) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for (f, o) in tree.files.iter().zip(outcomes) {
        match o {
            Some(Outcome::Rewrapped) => done += 1,
            Some(Outcome::Already) => already += 1,
            Some(Outcome::Empty) => empty += 1,
            Some(Outcome::Damaged(why)) => {
                damaged += 1;
                println!("DAMAGED {}: {why} (left as it was)", f.backing.display());
            }
            Some(Outcome::Failed(why)) => {
                failed += 1;
                println!("FAILED {}: {why}", f.backing.display());
            }
            None => {}
        }
    }
    let not_started = tree.files.len() as u64 - done - already - empty - damaged - failed;
    let verb = if args.dry_run {
        "would rewrap"
    } else {
        "rewrapped"
    };
    println!(
        "rewrap {} to {to_desc}: {verb} {done}, already under it {already}, empty {empty}, damaged {damaged}, failed {failed}, not started {not_started}",
        dir.display()
    );
    if failed + not_started > 0 {
        return Err(format!(
            "rewrap of {} is incomplete ({failed} failed, {not_started} not started): every file still opens under the old or the new key; fix the cause and run the same kmsfs rewrap again to resume",
            dir.display()
        ).into());
    }

    // The volume keys, then the config, then this host's trust record.
    let new_name_key = match &cfg.wrapped_name_key {
        Some(hex_key) if !cfg.plaintext_names => Some(rewrap_volume_key(
            &job,
            hex_key,
            NAME_KEY_PURPOSE,
            "file-name key",
        )?),
        _ => None,
    };
    let new_config_key = rewrap_volume_key(
        &job,
        &cfg.wrapped_config_key,
        CONFIG_KEY_PURPOSE,
        "config key",
    )?;
    let new_bucket_key = match &cfg.wrapped_bucket_key {
        Some(hex_key) if keep_bucket => Some(rewrap_volume_key(
            &job,
            hex_key,
            BUCKET_KEY_PURPOSE,
            "bucket key",
        )?),
        _ => None,
    };
    if args.dry_run {
        println!(
            "dry run: nothing was written; the vault config and this host's trust record would name {to_desc}"
        );
        return Ok(());
    }
    let to = to.ok_or("internal error: no target key outside a dry run")?;
    sync_fs(&dir);
    let mut new_cfg = cfg.clone();
    new_cfg.provider = vault::provider_name(to.provider_id()).to_string();
    new_cfg.key_id = to.key_id().to_string();
    if let Some(k) = new_name_key {
        new_cfg.wrapped_name_key = Some(k);
    }
    // Kept (moved) in bucket-key mode; gone once the files are under a local key.
    new_cfg.wrapped_bucket_key = new_bucket_key;
    new_cfg.wrapped_config_key = new_config_key;
    new_cfg.seal(&config_key);
    new_cfg.replace(&dir)?;
    vault::trust::record(&vault::config_home(), &dir, &new_cfg, &to_trusted)?;
    println!(
        "vault config and this host's trust record now name {to_desc}; mount with: kmsfs mount {} MOUNTPOINT",
        dir.display()
    );
    if damaged > 0 {
        return Err(format!(
            "{damaged} damaged files were left as they were (they did not open under the old key either): see kmsfs fsck {}",
            dir.display()
        ).into());
    }
    Ok(())
}

/// The new key: its provider (`None` in a dry run whose key file does not exist yet), the trust
/// record to save, and whether a key file was created.
type Target = (Option<Arc<dyn KeyProvider>>, TrustedKey, bool);

/// Open (or, for a missing local key file outside a dry run, create) the new key.
fn open_target(args: &RewrapArgs, vault_dir: &Path) -> Result<Target, CliError> {
    if let Some(id) = &args.to.to_kms_key_id {
        let p = provider::open(&TrustedKey::AwsKms {
            kms_key_id: id.clone(),
        })?;
        // Trust exactly the resolved key (its ARN), as init does.
        let t = TrustedKey::AwsKms {
            kms_key_id: p.key_id().to_string(),
        };
        return Ok((Some(p), t, false));
    }
    let path = args
        .to
        .to_key_file
        .as_deref()
        .ok_or("pass --to-kms-key-id ID or --to-key-file PATH")?;
    let path = provider::absolute(path);
    if path
        .parent()
        .and_then(|p| p.canonicalize().ok())
        .is_some_and(|p| p.starts_with(vault_dir))
    {
        return Err(format!(
            "the key file {} is inside the vault: keep it outside (e.g. under ~/.config/kmsfs)",
            path.display()
        )
        .into());
    }
    let t = TrustedKey::Local {
        key_file: path.clone(),
    };
    if path.exists() {
        let p: Arc<dyn KeyProvider> = Arc::new(LocalProvider::open(&path)?);
        return Ok((Some(p), t, false));
    }
    if args.dry_run {
        return Ok((None, t, false));
    }
    let p: Arc<dyn KeyProvider> = Arc::new(LocalProvider::create(&path)?);
    Ok((Some(p), t, true))
}

fn key_file_of(t: &TrustedKey) -> String {
    match t {
        TrustedKey::Local { key_file } => key_file.display().to_string(),
        TrustedKey::AwsKms { kms_key_id } => kms_key_id.clone(),
    }
}

/// A volume-level key of the config (`purpose`: "names", "bucket") under the new key, hex
/// (unchanged if it is already there).
fn rewrap_volume_key(
    job: &Job<'_>,
    hex_key: &str,
    purpose: &str,
    what: &str,
) -> Result<String, CliError> {
    let wrapped = hex::decode(hex_key)
        .map_err(|_| format!("the vault config's wrapped {what} is not hex"))?;
    let ctx = EncryptionContext::for_volume(&job.volume_id, purpose);
    let Some(to) = job.to else {
        job.kms_from
            .decrypt(&wrapped, &ctx)
            .map_err(|e| format!("the {what} does not open under the old key: {e}"))?;
        return Ok(hex_key.to_string());
    };
    if job.dry_run {
        return match job.kms_from.decrypt(&wrapped, &ctx) {
            Ok(_) => Ok(hex_key.to_string()),
            Err(e) => to
                .decrypt(&wrapped, &ctx)
                .map(|_| hex_key.to_string())
                .map_err(|_| format!("the {what} opens under neither key: {e}").into()),
        };
    }
    match job.kms_from.reencrypt(&wrapped, &ctx, to) {
        Ok(new) => Ok(hex::encode(new)),
        Err(e) => match to.decrypt(&wrapped, &ctx) {
            Ok(_) => Ok(hex_key.to_string()),
            Err(_) => Err(format!(
                "cannot rewrap the {what}: {e}; run the same kmsfs rewrap again to resume"
            )
            .into()),
        },
    }
}

/// How a key error counts: damage stays behind, anything else stops the run.
fn key_outcome(e: KeyError) -> Outcome {
    match e {
        KeyError::BadWrappedKey(why) => {
            Outcome::Damaged(format!("its wrapped key opens under neither key ({why})"))
        }
        e => Outcome::Failed(e.to_string()),
    }
}

/// Rewrap one backing file.
fn rewrap_file(job: &Job<'_>, path: &Path) -> Outcome {
    let file = match OpenOptions::new()
        .read(true)
        .write(!job.dry_run)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => return Outcome::Failed(format!("cannot open: {e}")),
    };
    let mut buf = vec![0u8; HEADER_SIZE];
    match file.metadata() {
        Ok(m) if !m.is_file() => return Outcome::Damaged("not a regular file".into()),
        Ok(m) if m.len() == 0 => return Outcome::Empty,
        Ok(m) if m.len() < HEADER_SIZE as u64 => {
            return Outcome::Damaged(format!("{} bytes: too short for a header", m.len()));
        }
        Ok(_) => {}
        Err(e) => return Outcome::Failed(format!("cannot stat: {e}")),
    }
    if let Err(e) = file.read_exact_at(&mut buf, 0) {
        return Outcome::Failed(format!("cannot read the header: {e}"));
    }
    let header = match FileHeader::decode(&buf) {
        Ok(h) => h,
        Err(e) => return Outcome::Damaged(format!("header: {e}")),
    };
    if header.volume_id != job.volume_id {
        return Outcome::Damaged("the header belongs to another vault".into());
    }
    let ctx = EncryptionContext::for_file(&job.volume_id, &header.file_id);
    let wrapped = header.wrapped_key().to_vec();
    let opens_under_new = |to: &dyn KeyProvider| -> Option<Outcome> {
        let key = to.decrypt(&wrapped, &ctx).ok()?;
        Some(match crypto::verify_header(&key, &header) {
            Ok(()) => Outcome::Already,
            Err(_) => Outcome::Damaged("the key commitment does not verify".into()),
        })
    };
    let Some(to) = job.to else {
        // Dry run with a key that does not exist yet: can the old key open it?
        return match job.from.decrypt(&wrapped, &ctx) {
            Ok(k) if crypto::verify_header(&k, &header).is_ok() => Outcome::Rewrapped,
            Ok(_) => Outcome::Damaged("the key commitment does not verify".into()),
            Err(e) => key_outcome(e),
        };
    };
    let kind_change = job.from.provider_id() != to.provider_id();
    // A header that names the new provider was most likely done by an earlier run: ask the
    // new key first.
    if kind_change && header.provider == to.provider_id() {
        if let Some(o) = opens_under_new(to) {
            return o;
        }
    }
    if job.dry_run {
        return match job.from.decrypt(&wrapped, &ctx) {
            Ok(k) if crypto::verify_header(&k, &header).is_ok() => Outcome::Rewrapped,
            Ok(_) => Outcome::Damaged("the key commitment does not verify".into()),
            Err(e) => opens_under_new(to).unwrap_or_else(|| key_outcome(e)),
        };
    }
    let mut new = header.clone();
    let inactive = 1 - header.active;
    if kind_change {
        // The commitment covers the provider id: recompute it, which needs the plaintext data key.
        let key = match job.from.decrypt(&wrapped, &ctx) {
            Ok(k) => k,
            Err(e) => return opens_under_new(to).unwrap_or_else(|| key_outcome(e)),
        };
        if crypto::verify_header(&key, &header).is_err() {
            return Outcome::Damaged("the key commitment does not verify".into());
        }
        match to.wrap(&key, &ctx) {
            Ok(w) => new.slots[inactive] = w,
            Err(e) => return Outcome::Failed(e.to_string()),
        }
        new.provider = to.provider_id();
        new.commitment = crypto::key_commitment(&key, &new);
    } else {
        match job.from.reencrypt(&wrapped, &ctx, to) {
            Ok(w) => new.slots[inactive] = w,
            Err(e) => return opens_under_new(to).unwrap_or_else(|| key_outcome(e)),
        }
    }
    if new.slots[inactive].is_empty() || new.slots[inactive].len() > SLOT_CAPACITY {
        return Outcome::Failed(format!(
            "the new wrapped key is {} bytes; a header slot holds 1 to {SLOT_CAPACITY}",
            new.slots[inactive].len()
        ));
    }
    match write_header(&file, &header, new, inactive) {
        Ok(()) => Outcome::Rewrapped,
        Err(e) => Outcome::Failed(format!("writing the header: {e}")),
    }
}

/// Steps 2–4 of the module doc (`format::header::slot_rewrite_plan`): new slot, fsync, flip
/// (with provider id and commitment when they change), fsync, erase the old slot (not fsynced
/// here: one syncfs at the end; losing it is harmless).
fn write_header(
    file: &File,
    old: &FileHeader,
    new: FileHeader,
    inactive: usize,
) -> std::io::Result<()> {
    for step in slot_rewrite_plan(old, &new, inactive) {
        file.write_all_at(&step.bytes, step.offset)?;
        if step.sync {
            file.sync_data()?;
        }
    }
    Ok(())
}

/// Flush the vault's file system (the old-slot erasures) before the config changes.
fn sync_fs(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = crate::sys::process::syncfs(std::os::fd::AsFd::as_fd(&d));
    }
}
