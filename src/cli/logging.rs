//! Logging: stderr in the foreground, a file with --log-file, else syslog when daemonized.
//! Never a key, never plaintext: only paths, block numbers and error kinds are logged.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use super::CliError;

use tracing_subscriber::EnvFilter;

/// Where log lines go.
pub enum Sink<'a> {
    /// The terminal.
    Stderr,
    /// Appended to a file.
    File(&'a Path),
    /// The system log (daemon facility).
    Syslog,
}

/// Install the global subscriber; `level` is used unless RUST_LOG is set.
pub fn init(sink: Sink<'_>, level: &str) -> Result<(), CliError> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .map_err(|e| format!("bad --log-level {level}: {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match sink {
        Sink::Stderr => builder.with_writer(std::io::stderr).try_init(),
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
        }
        Sink::Syslog => {
            crate::sys::process::syslog_open();
            builder
                .with_ansi(false)
                .without_time()
                .with_writer(|| SyslogLine(Vec::new()))
                .try_init()
        }
    };
    result.map_err(|e| format!("cannot set up logging: {e}").into())
}

/// One log record, sent to syslog when dropped.
struct SyslogLine(Vec<u8>);

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
        crate::sys::process::syslog(&String::from_utf8_lossy(&text));
    }
}
