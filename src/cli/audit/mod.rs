//! `kmsfs audit VAULT --cloudtrail PATH...`: the KMS events of CloudTrail logs that name this
//! vault's volume id, each shown with the current plain path of the file whose data key it
//! used (issue 20).
//!
//! It needs the rights of a reader of the vault and of its config and name keys only: the
//! vault is opened by `walk::open_names`, which unwraps no data key and no bucket key. Paths
//! come from an index built once (walk + 48 header bytes per file), so a path is the file's
//! path now: a renamed file shows its new name, a deleted one shows as not in the vault.

mod filter;
mod index;
mod report;
mod time;
mod trail;

use std::io::Write;
use std::sync::atomic::AtomicBool;

use super::walk::{self, Progress};
use super::{AuditArgs, CliError, CliResult};
use filter::Filter;
use index::Index;
use report::Place;
use trail::Event;

/// Run `kmsfs audit`.
pub fn run(args: &AuditArgs) -> CliResult {
    let filter = Filter::new(
        args.path.as_deref(),
        args.principal.as_deref(),
        args.since.as_deref(),
        args.until.as_deref(),
    )
    .map_err(CliError::usage)?;
    let vault = walk::open_names(&args.vault, &args.trust)?;
    let volume_hex = vault.cfg.volume_id.to_ascii_lowercase();
    let volume = vault.cfg.volume_id_bytes()?;
    let bucket_mode = vault.cfg.wrapped_bucket_key.is_some();

    let events = read_trail(args, &volume_hex)?;

    let tree = walk::walk(&vault.dir, !vault.cfg.plaintext_names, Some(&vault.names));
    let index = Index::build(&tree, &volume, args.jobs);

    let shown: Vec<&Event> = events.iter().filter(|e| filter.keeps_event(e)).collect();
    let hosts = if bucket_mode {
        report::bucket_hosts(&shown)
    } else {
        Default::default()
    };
    let lines: Vec<report::Line<'_>> = shown
        .iter()
        .map(|e| (*e, Place::of(&e.target, &index)))
        .filter(|(_, place)| filter.keeps_path(place.plain()))
        .collect();

    if bucket_mode {
        eprintln!(
            "kmsfs: note: {} uses a bucket key: file keys are wrapped locally by one KMS-wrapped volume key, \
             so CloudTrail has no per-file events (the trade-off S3 bucket keys make too); shown are the \
             unwraps of the bucket key{}, per host at the end",
            vault.dir.display(),
            if filter.has_path() {
                " (none with --path: they name no file)"
            } else {
                ""
            }
        );
    }
    eprintln!(
        "kmsfs: audit: {} of {} events of volume {} shown; {} of {} vault files indexed by file id (paths are current paths)",
        lines.len(),
        events.len(),
        volume_hex,
        index.len(),
        index.files
    );

    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = if args.json {
        report::json(&mut out, &lines, &hosts, bucket_mode)
    } else {
        report::text(&mut out, &lines).and_then(|()| {
            if hosts.is_empty() {
                Ok(())
            } else {
                writeln!(out).and_then(|()| report::hosts_text(&mut out, &hosts))
            }
        })
    };
    match written.and_then(|()| out.flush()) {
        // The reader went away (`kmsfs audit ... | head`): not an error of ours.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(format!("writing to stdout: {e}").into())
        }
        _ => Ok(()),
    }
}

/// Every event of volume `volume` in the log files of `--cloudtrail`, sorted by time (ties in
/// file order). A file that cannot be read is warned about and skipped; failing only when no
/// file could be read at all.
fn read_trail(args: &AuditArgs, volume: &str) -> Result<Vec<Event>, CliError> {
    let (files, warnings) = trail::log_files(&args.cloudtrail);
    for w in &warnings {
        eprintln!("kmsfs: warning: {w} (skipped)");
    }
    let progress = Progress::new("reading CloudTrail logs", files.len() as u64);
    let stop = AtomicBool::new(false);
    let parsed = walk::parallel(&files, args.jobs, &stop, &progress, |f| {
        trail::read_log(f).and_then(|text| trail::parse_log(&text, volume))
    });
    progress.finish();
    let (mut events, mut read, mut records) = (Vec::new(), 0usize, 0usize);
    for (f, p) in files.iter().zip(parsed) {
        match p {
            Some(Ok(p)) => {
                read += 1;
                records += p.records;
                if p.malformed > 0 {
                    eprintln!(
                        "kmsfs: warning: {}: {} KMS records not understood (skipped)",
                        f.display(),
                        p.malformed
                    );
                }
                events.extend(p.events);
            }
            Some(Err(why)) => eprintln!("kmsfs: warning: {}: {why} (skipped)", f.display()),
            None => {}
        }
    }
    if read == 0 {
        let named: Vec<String> = args
            .cloudtrail
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        return Err(format!(
            "no CloudTrail log file could be read from {} (give .json or .json.gz files as AWS delivers them, or directories holding them)",
            named.join(", ")
        )
        .into());
    }
    eprintln!("kmsfs: audit: {records} CloudTrail records read from {read} log files");
    // Stable: events of one instant keep their order in the trail.
    events.sort_by_key(|e| e.time);
    Ok(events)
}
