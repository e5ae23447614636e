// SPDX-License-Identifier: MIT OR Apache-2.0
//! Logging: stderr in the foreground; journald (or syslog when there is no journald) once
//! daemonized, since stderr is then /dev/null. Writes that fail (libvirt closes our stderr
//! pipe once the socket exists) are ignored, never fatal.
//!
//! When stderr is the journal (a systemd service: `JOURNAL_STREAM` names stderr's device
//! and inode), events go to journald natively instead, so that their fields are journal
//! fields (`PRHELPER_PEER_PID`, `PRHELPER_ACTION`, ...) that `journalctl` can filter on.

use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use tracing::Level;
use tracing_subscriber::filter::{Directive, EnvFilter};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

/// Environment variable that overrides the log filter (tracing `EnvFilter` syntax).
pub const LOG_ENV: &str = "PRHELPER_LOG";

/// Build the filter from -v/-q/-T. Returns it and any -T parts that were ignored.
pub fn filter(verbose: u8, quiet: bool, traces: &[String]) -> (EnvFilter, Vec<String>) {
    let mut level = match (quiet, verbose) {
        (true, _) => Level::ERROR,
        (false, 0) => Level::INFO,
        (false, 1) => Level::DEBUG,
        _ => Level::TRACE,
    };
    let mut directives = Vec::new();
    let mut ignored = Vec::new();
    for t in traces {
        for part in t.split(',').filter(|p| !p.is_empty()) {
            if part.starts_with("events=") || part.starts_with("file=") {
                ignored.push(part.to_string());
                continue;
            }
            let pat = part.strip_prefix("enable=").unwrap_or(part);
            // A tracing directive ("prhelper=trace", "prhelper::daemon") is used as is; a
            // QEMU trace-event pattern ("pr_*") just turns on debug logging.
            match pat.parse::<Directive>() {
                Ok(d) if pat.contains('=') || pat.contains("::") => directives.push(d),
                _ if level < Level::DEBUG => level = Level::DEBUG,
                _ => {}
            }
        }
    }
    let mut f = match std::env::var(LOG_ENV) {
        Ok(v) if !v.is_empty() => EnvFilter::new(v),
        _ => EnvFilter::new(format!("prhelper={level},warn")),
    };
    for d in directives {
        f = f.add_directive(d);
    }
    (f, ignored)
}

/// Prefix of our fields in the journal: `peer_pid` becomes `PRHELPER_PEER_PID`.
pub const JOURNAL_FIELD_PREFIX: &str = "PRHELPER";

/// Whether `JOURNAL_STREAM` ("DEVICE:INODE", set by systemd) names the file stderr is.
fn journal_stream_matches(var: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = var.split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

/// stderr is connected to the journal (systemd's `StandardError=journal`).
fn stderr_is_journal() -> bool {
    let Ok(var) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    match nix::sys::stat::fstat(2) {
        Ok(st) => journal_stream_matches(&var, st.st_dev, st.st_ino),
        Err(_) => false,
    }
}

/// Install the global logger. `background`: journald/syslog instead of stderr (when
/// neither is there, stderr after all). The journal is also used, natively, when stderr
/// is the journal. Returns true when logs go to stderr.
pub fn init(filter: EnvFilter, background: bool) -> bool {
    if background || stderr_is_journal() {
        if let Ok(journald) = tracing_journald::layer() {
            let journald = journald
                .with_field_prefix(Some(JOURNAL_FIELD_PREFIX.into()))
                .with_syslog_identifier("prhelper".into());
            let _ = tracing_subscriber::registry()
                .with(journald.with_filter(filter))
                .try_init();
            return false;
        }
    }
    if background {
        if let Some(syslog) = Syslog::connect() {
            let layer = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .without_time()
                .with_target(false);
            let _ = tracing_subscriber::registry()
                .with(layer.with_writer(syslog).with_filter(filter))
                .try_init();
            return false;
        }
    }
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(io::stderr)
        .with_ansi(false)
        .with_target(false);
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init();
    true
}

/// Minimal RFC 3164 sender to /dev/log (facility daemon).
#[derive(Clone)]
struct Syslog {
    sock: Arc<UnixDatagram>,
}

impl Syslog {
    fn connect() -> Option<Syslog> {
        let sock = UnixDatagram::unbound().ok()?;
        sock.connect("/dev/log").ok()?;
        Some(Syslog {
            sock: Arc::new(sock),
        })
    }
}

struct SyslogLine {
    sock: Arc<UnixDatagram>,
    severity: u8,
    buf: Vec<u8>,
}

impl Write for SyslogLine {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        let msg = String::from_utf8_lossy(&self.buf);
        let line = format!(
            "<{}>prhelper[{}]: {}",
            3 * 8 + self.severity,
            std::process::id(),
            msg.trim_end()
        );
        let _ = self.sock.send(line.as_bytes());
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;
    fn make_writer(&'a self) -> SyslogLine {
        SyslogLine {
            sock: Arc::clone(&self.sock),
            severity: 6,
            buf: Vec::new(),
        }
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> SyslogLine {
        let severity = match *meta.level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        SyslogLine {
            sock: Arc::clone(&self.sock),
            severity,
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_forms() {
        assert!(journal_stream_matches("8:1234", 8, 1234));
        assert!(!journal_stream_matches("8:1234", 8, 1235));
        assert!(!journal_stream_matches("9:1234", 8, 1234));
        for bad in ["", "8", "8:", ":1234", "x:y", "8:1234:5"] {
            assert!(!journal_stream_matches(bad, 8, 1234), "{bad:?}");
        }
    }

    #[test]
    fn verbosity_levels() {
        std::env::remove_var(LOG_ENV);
        assert_eq!(filter(0, false, &[]).0.to_string(), "prhelper=info,warn");
        assert_eq!(filter(1, false, &[]).0.to_string(), "prhelper=debug,warn");
        assert_eq!(filter(3, false, &[]).0.to_string(), "prhelper=trace,warn");
        assert_eq!(filter(2, true, &[]).0.to_string(), "prhelper=error,warn");
    }

    #[test]
    fn trace_option_forms() {
        std::env::remove_var(LOG_ENV);
        let (f, ignored) = filter(0, false, &["pr_*".into()]);
        assert_eq!(f.to_string(), "prhelper=debug,warn");
        assert!(ignored.is_empty());
        let (f, ignored) = filter(
            0,
            false,
            &["enable=prhelper::daemon=trace,file=/tmp/x".into()],
        );
        assert!(f.to_string().contains("prhelper::daemon=trace"), "{f}");
        assert_eq!(ignored, vec!["file=/tmp/x".to_string()]);
    }
}
