//! Log output that never touches a frozen file system.
//!
//! While file systems are frozen, a write to a log file on one of them blocks
//! until thaw — and a write to stderr may too, when stderr is redirected
//! there (open-vm-tools #16, #650). So every record goes through one
//! process-wide [`LogGate`]: while it is held, records are kept in memory;
//! on release they are written out in order.
//!
//! What is kept is capped at [`HELD_CAP`]: a hook or snapshot command that
//! floods its output while frozen (and a hung one, issue 8) must not grow
//! the host's memory without bound. Records past the cap are dropped and
//! counted; release writes one line saying how many.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Where the support log goes unless `--log-file`/`QUIESCE_LOG_FILE` says otherwise.
pub const DEFAULT_LOG_FILE: &str = "/var/log/quiesce/quiesce.log";
pub const LOG_FILE_ENV: &str = "QUIESCE_LOG_FILE";

/// Most bytes of log records kept while held. A normal freeze logs a few
/// KiB; 4 MiB is room for thousands of records, and little memory.
pub const HELD_CAP: usize = 4 << 20;

struct Sinks {
    stderr: bool,
    file: Option<File>,
    /// Some while held: records waiting for the thaw.
    held: Option<Held>,
}

struct Held {
    buf: Vec<u8>,
    dropped: Dropped,
}

/// Log records dropped while held because the buffer was full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub records: u64,
    pub bytes: u64,
}

/// The process-wide gate. [`gate()`] returns it.
pub struct LogGate {
    sinks: Mutex<Sinks>,
}

static GATE: OnceLock<LogGate> = OnceLock::new();

pub fn gate() -> &'static LogGate {
    GATE.get_or_init(|| LogGate { sinks: Mutex::new(Sinks { stderr: true, file: None, held: None }) })
}

impl LogGate {
    fn sinks(&self) -> MutexGuard<'_, Sinks> {
        self.sinks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Also append records to `path` (created 0600, its directory 0700).
    pub fn open_file(&self, path: &Path) -> io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        self.sinks().file = Some(file);
        Ok(())
    }

    /// Whether records go to stderr too (the library's embedders may not want that).
    pub fn set_stderr(&self, on: bool) {
        self.sinks().stderr = on;
    }

    /// From now on, keep records in memory. Called right before the first freeze.
    pub fn hold(&self) {
        let mut s = self.sinks();
        if s.held.is_none() {
            s.held = Some(Held { buf: Vec::with_capacity(16 * 1024), dropped: Dropped::default() });
        }
    }

    /// Write out what was held and go back to writing directly. Called after
    /// thaw. Returns what had to be dropped (also said in one log line).
    pub fn release(&self) -> Dropped {
        let mut s = self.sinks();
        let Some(held) = s.held.take() else { return Dropped::default() };
        s.write_out(&held.buf);
        let d = held.dropped;
        if d.records > 0 {
            let line = format!(
                "quiesce: {} log records ({} bytes) dropped while frozen (at most {} MiB are kept in memory)\n",
                d.records,
                d.bytes,
                HELD_CAP >> 20
            );
            s.write_out(line.as_bytes());
        }
        d
    }

    pub fn is_held(&self) -> bool {
        self.sinks().held.is_some()
    }

    fn write(&self, record: &[u8]) {
        let mut s = self.sinks();
        match &mut s.held {
            Some(h) if h.buf.len().saturating_add(record.len()) > HELD_CAP => {
                h.dropped.records = h.dropped.records.saturating_add(1);
                h.dropped.bytes = h.dropped.bytes.saturating_add(record.len() as u64);
            }
            Some(h) => h.buf.extend_from_slice(record),
            None => s.write_out(record),
        }
    }
}

impl Sinks {
    fn write_out(&mut self, bytes: &[u8]) {
        if self.stderr {
            let _ = io::stderr().write_all(bytes);
        }
        if let Some(f) = &mut self.file {
            let _ = f.write_all(bytes);
        }
    }
}

/// A `tracing_subscriber` writer that goes through the gate.
#[derive(Clone, Copy, Default)]
pub struct GatedWriter;

impl Write for GatedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        gate().write(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for GatedWriter {
    type Writer = GatedWriter;
    fn make_writer(&'a self) -> GatedWriter {
        GatedWriter
    }
}

/// Installs the binary's subscriber: human-readable records on stderr and in
/// the log file, both through the gate. `verbose` adds debug records.
pub fn init(log_file: Option<PathBuf>, verbose: bool) {
    let level = if verbose { tracing::Level::DEBUG } else { tracing::Level::INFO };
    let _ = tracing_subscriber::fmt().with_writer(GatedWriter).with_max_level(level).with_ansi(false).with_target(false).try_init();
    let path = log_file.or_else(|| std::env::var_os(LOG_FILE_ENV).map(PathBuf::from)).unwrap_or_else(|| DEFAULT_LOG_FILE.into());
    if let Err(e) = gate().open_file(&path) {
        tracing::warn!("cannot open log file {}: {e}; logging to stderr only", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_records_wait_for_release() {
        let dir = std::env::temp_dir().join(format!("quiesce-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("q.log");
        let g = gate();
        g.set_stderr(false);
        g.open_file(&path).unwrap();
        GatedWriter.write_all(b"before\n").unwrap();
        g.hold();
        GatedWriter.write_all(b"while frozen\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "before\n");
        g.release();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "before\nwhile frozen\n");

        // A flood while held stays within the cap, and the drop is counted.
        let record = [b'x'; 1000];
        g.hold();
        for _ in 0..10_000 {
            GatedWriter.write_all(&record).unwrap();
        }
        let dropped = g.release();
        let written = std::fs::metadata(&path).unwrap().len() as usize;
        assert_eq!(dropped.records, 10_000 - (HELD_CAP / 1000) as u64);
        assert_eq!(dropped.bytes, dropped.records * 1000);
        assert!(written <= "before\nwhile frozen\n".len() + HELD_CAP + 200, "{written}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with(&format!(
            "{} log records ({} bytes) dropped while frozen (at most 4 MiB are kept in memory)\n",
            dropped.records, dropped.bytes
        )));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
