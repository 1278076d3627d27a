//! Logging: the journal (with priorities) when stderr is systemd's journal stream, else stderr
//! in the foreground (colour only on a terminal), a file with --log-file, else syslog when
//! daemonized (each level at its own priority). Never a key, never file contents: only paths
//! (an integrity error names the plain path, which the user knows the file by), block numbers
//! and error kinds are logged.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Mutex;

use super::CliError;

use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

/// Where log lines go.
pub enum Sink<'a> {
    /// The terminal (or the journal, when systemd connected stderr to it).
    Stderr,
    /// Appended to a file.
    File(&'a Path),
    /// The system log (daemon facility).
    Syslog,
}

/// Install the global subscriber; `level` is used unless RUST_LOG is set.
pub fn init(sink: Sink<'_>, level: &str) -> Result<(), CliError> {
    let filter = || {
        EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(level))
            .map_err(|e| CliError::usage(format!("bad --log-level {level}: {e}")))
    };
    // The journal when systemd connected stderr to it and its socket answers, else stderr.
    let journal = match sink {
        Sink::Stderr if stderr_is_journal() => tracing_journald::layer().ok(),
        _ => None,
    };
    if let Some(journal) = journal {
        return tracing_subscriber::registry()
            .with(filter()?)
            .with(journal.with_syslog_identifier("kmsfs".into()))
            .try_init()
            .map_err(|e| format!("cannot set up logging: {e}").into());
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter()?);
    let result = match sink {
        Sink::Stderr => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .try_init()
            .map_err(|e| e.to_string()),
        Sink::File(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("cannot open log file {}: {e}", p.display()))?;
            builder
                .with_ansi(false)
                .with_writer(Mutex::new(f))
                .try_init()
                .map_err(|e| e.to_string())
        }
        Sink::Syslog => {
            crate::sys::process::syslog_open();
            builder
                .with_ansi(false)
                .without_time()
                .with_level(false)
                .with_writer(Syslog)
                .try_init()
                .map_err(|e| e.to_string())
        }
    };
    result.map_err(|e| format!("cannot set up logging: {e}").into())
}

/// Whether a syslog daemon listens (without one, syslog lines are dropped silently).
pub fn syslog_available() -> bool {
    Path::new("/dev/log").exists()
}

/// Whether stderr is the journal stream systemd set up for this service (JOURNAL_STREAM is
/// "DEVICE:INODE" of that stream; a child with redirected stderr must not use it).
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var("JOURNAL_STREAM").ok() else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    stream == format!("{}:{}", meta.dev(), meta.ino())
}

/// Makes one syslog record per log event, at the event's priority.
struct Syslog;

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;

    fn make_writer(&'a self) -> SyslogLine {
        SyslogLine(Vec::new(), libc::LOG_NOTICE)
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> SyslogLine {
        SyslogLine(Vec::new(), priority(*meta.level()))
    }
}

/// The syslog priority of a tracing level.
fn priority(level: Level) -> libc::c_int {
    match level {
        Level::ERROR => libc::LOG_ERR,
        Level::WARN => libc::LOG_WARNING,
        Level::INFO => libc::LOG_INFO,
        Level::DEBUG | Level::TRACE => libc::LOG_DEBUG,
    }
}

/// One log record and its priority, sent to syslog when dropped.
struct SyslogLine(Vec<u8>, libc::c_int);

impl Write for SyslogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        let text: Vec<u8> = self.0.iter().copied().filter(|&b| b != b'\n').collect();
        crate::sys::process::syslog(self.1, &String::from_utf8_lossy(&text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_their_syslog_priorities() {
        assert_eq!(priority(Level::ERROR), libc::LOG_ERR);
        assert_eq!(priority(Level::WARN), libc::LOG_WARNING);
        assert_eq!(priority(Level::INFO), libc::LOG_INFO);
        assert_eq!(priority(Level::TRACE), libc::LOG_DEBUG);
    }
}
