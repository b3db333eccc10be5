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
//!
//! Under systemd, stderr is a stream to journald (`JOURNAL_STREAM` names its
//! device and inode). journald stamps every line itself and takes the
//! priority from a `<N>` prefix (sd-daemon.h), so there stderr lines carry
//! that prefix and no timestamp or level text of their own; the support log
//! file keeps its full lines either way.

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
    /// stderr is journald's stream: the gate's own lines get a `<N>` there too.
    journal: bool,
    file: Option<File>,
    /// The directory of `file`, to ask whether its file system is frozen.
    file_dir: Option<PathBuf>,
    /// Some while held: records waiting for the thaw.
    held: Option<Held>,
}

/// Where a record goes: both sinks get the same line, unless stderr is
/// journald's and gets its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Sink {
    #[default]
    Both,
    Stderr,
    File,
}

struct Held {
    buf: Vec<u8>,
    /// Which sink each record in `buf` is for, and its length, in order.
    records: Vec<(Sink, usize)>,
    dropped: Dropped,
    /// Held for an agent's freeze (an external session): quiesce's own
    /// thaw does not end it — see [`LogGate::release_after_thaw`].
    for_agent: bool,
}

impl Held {
    fn new() -> Held {
        Held { buf: Vec::with_capacity(16 * 1024), records: Vec::new(), dropped: Dropped::default(), for_agent: false }
    }
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
    GATE.get_or_init(|| LogGate { sinks: Mutex::new(Sinks { stderr: true, journal: false, file: None, file_dir: None, held: None }) })
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
        let mut s = self.sinks();
        s.file = Some(file);
        s.file_dir = path.parent().map(Path::to_path_buf);
        Ok(())
    }

    /// Releases what is held unless the log file's file system is frozen
    /// (asked without blocking): for a hold nobody will end with a thaw —
    /// an agent's external session that was aborted or expired, after which
    /// the agent may or may not have thawed. Some: released.
    pub fn release_unless_frozen(&self) -> Option<Dropped> {
        let dirs = {
            let s = self.sinks();
            s.held.as_ref()?;
            let stderr = if s.stderr && !s.journal { stderr_file_dir() } else { None };
            [s.file_dir.clone(), stderr]
        };
        let frozen = crate::freeze::first_maybe_frozen(dirs.iter().flatten().map(PathBuf::as_path));
        frozen.is_none().then(|| self.release())
    }

    /// Whether records go to stderr too (the library's embedders may not want that).
    pub fn set_stderr(&self, on: bool) {
        self.sinks().stderr = on;
    }

    /// From now on, keep records in memory. Called right before the first freeze.
    pub fn hold(&self) {
        self.sinks().held.get_or_insert_with(Held::new);
    }

    /// Like [`LogGate::hold`], for a freeze someone else makes and ends (an
    /// external session's agent).
    pub fn hold_for_agent(&self) {
        self.sinks().held.get_or_insert_with(Held::new).for_agent = true;
    }

    /// Whether records are held for an agent's freeze that nobody has seen
    /// end (its external session was aborted or expired, and no later
    /// session found the log's file system thawed yet): what else quiesce
    /// writes (the metrics) may be on that agent's frozen file systems too.
    pub fn held_for_agent(&self) -> bool {
        self.sinks().held.as_ref().is_some_and(|h| h.for_agent)
    }

    /// After quiesce's own thaw: writes out what was held — unless the hold
    /// is an agent's that nobody ended (its external session was aborted or
    /// expired): then only once the sinks' file systems are found thawed, as
    /// the agent's freeze may still be on. Some: released.
    pub fn release_after_thaw(&self) -> Option<Dropped> {
        if self.held_for_agent() {
            self.release_unless_frozen()
        } else {
            Some(self.release())
        }
    }

    /// Write out what was held and go back to writing directly. Called after
    /// thaw. Returns what had to be dropped (also said in one log line).
    pub fn release(&self) -> Dropped {
        let mut s = self.sinks();
        let Some(held) = s.held.take() else { return Dropped::default() };
        let mut rest = held.buf.as_slice();
        for &(sink, len) in &held.records {
            let (record, tail) = rest.split_at(len.min(rest.len()));
            s.write_out(sink, record);
            rest = tail;
        }
        let d = held.dropped;
        if d.records > 0 {
            let line = format!(
                "quiesce: {} log records ({} bytes) dropped while frozen (at most {} MiB are kept in memory)\n",
                d.records,
                d.bytes,
                HELD_CAP >> 20
            );
            if s.journal {
                s.write_out(Sink::File, line.as_bytes());
                s.write_out(Sink::Stderr, &with_priority(priority(tracing::Level::WARN), line.as_bytes()));
            } else {
                s.write_out(Sink::Both, line.as_bytes());
            }
        }
        d
    }

    pub fn is_held(&self) -> bool {
        self.sinks().held.is_some()
    }

    fn write(&self, sink: Sink, record: &[u8]) {
        let mut s = self.sinks();
        match &mut s.held {
            Some(h) if h.buf.len().saturating_add(record.len()) > HELD_CAP => {
                h.dropped.records = h.dropped.records.saturating_add(1);
                h.dropped.bytes = h.dropped.bytes.saturating_add(record.len() as u64);
            }
            Some(h) => {
                h.buf.extend_from_slice(record);
                h.records.push((sink, record.len()));
            }
            None => s.write_out(sink, record),
        }
    }
}

impl Sinks {
    fn write_out(&mut self, sink: Sink, bytes: &[u8]) {
        if self.stderr && sink != Sink::File {
            let _ = io::stderr().write_all(bytes);
        }
        if let Some(f) = self.file.as_mut().filter(|_| sink != Sink::Stderr) {
            let _ = f.write_all(bytes);
        }
    }
}

/// A `tracing_subscriber` writer that goes through the gate.
#[derive(Clone, Copy, Default)]
pub struct GatedWriter {
    sink: Sink,
    /// journald's `<N>` for every line of the record (stderr to journald only).
    priority: Option<u8>,
}

impl Write for GatedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.priority {
            None => gate().write(self.sink, buf),
            Some(p) => gate().write(self.sink, &with_priority(p, buf)),
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for GatedWriter {
    type Writer = GatedWriter;
    fn make_writer(&'a self) -> GatedWriter {
        *self
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> GatedWriter {
        match self.priority {
            Some(_) => GatedWriter { priority: Some(priority(*meta.level())), ..*self },
            None => *self,
        }
    }
}

/// sd-daemon.h's syslog priority for a tracing level (tracing has no notice,
/// critical or above: error is the most severe record the host writes).
pub fn priority(level: tracing::Level) -> u8 {
    match level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        tracing::Level::DEBUG | tracing::Level::TRACE => 7,
    }
}

/// Prefixes every line of `record` with `<p>`: journald reads a stream line
/// by line, and a continuation line without it would be logged as info.
fn with_priority(p: u8, record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.len() + 4);
    for line in record.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(format!("<{p}>").as_bytes());
        out.extend_from_slice(line);
    }
    out
}

/// The directory of the file stderr is redirected to, if it is a file
/// (`quiesce serve 2>> /var/log/x`): a write there blocks while its file
/// system is frozen, like the log file's. None for a pipe, a terminal, a
/// socket, or a file that is gone.
fn stderr_file_dir() -> Option<PathBuf> {
    let st = nix::sys::stat::fstat(io::stderr()).ok()?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    let path = std::fs::read_link(crate::trust::proc_fd(&io::stderr())).ok()?;
    path.parent().filter(|d| d.is_dir()).map(Path::to_path_buf)
}

/// Whether stderr is the journald stream systemd set up for this service:
/// `JOURNAL_STREAM` is `DEVICE:INODE` of it, and it still names fd 2 (a
/// child whose stderr was redirected inherits the variable but not the
/// stream — sd_journal_stream_fd(3), systemd.exec(5)).
pub fn stderr_is_journal() -> bool {
    let Some(var) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Ok(st) = nix::sys::stat::fstat(io::stderr()) else { return false };
    journal_stream_names(&var.to_string_lossy(), st.st_dev, st.st_ino)
}

/// Whether a `JOURNAL_STREAM` value names this device and inode.
pub fn journal_stream_names(var: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = var.trim().split_once(':') else { return false };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

/// Installs the binary's subscriber: human-readable records on stderr and in
/// the log file, both through the gate. `verbose` adds debug records. Under
/// journald, stderr gets its own records: `<N>` priority, no time, no level.
pub fn init(log_file: Option<PathBuf>, verbose: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let level = if verbose { tracing::Level::DEBUG } else { tracing::Level::INFO };
    let filter = tracing_subscriber::filter::LevelFilter::from_level(level);
    let journal = stderr_is_journal();
    gate().sinks().journal = journal;
    let _ = if journal {
        let journal = GatedWriter { sink: Sink::Stderr, priority: Some(priority(tracing::Level::INFO)) };
        let file = GatedWriter { sink: Sink::File, priority: None };
        tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer().with_writer(journal).with_ansi(false).with_target(false).without_time().with_level(false),
            )
            .with(tracing_subscriber::fmt::layer().with_writer(file).with_ansi(false).with_target(false))
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::fmt::layer().with_writer(GatedWriter::default()).with_ansi(false).with_target(false))
            .try_init()
    };
    let path = log_file.or_else(|| std::env::var_os(LOG_FILE_ENV).map(PathBuf::from)).unwrap_or_else(|| DEFAULT_LOG_FILE.into());
    if let Err(e) = gate().open_file(&path) {
        tracing::warn!("cannot open log file {}: {e}; logging to stderr only", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_each_carry_the_priority() {
        assert_eq!(with_priority(4, b"one\ntwo\n"), b"<4>one\n<4>two\n");
        assert_eq!(with_priority(3, b"no newline"), b"<3>no newline");
        assert!(journal_stream_names("8:12345", 8, 12345));
        assert!(journal_stream_names("8:12345\n", 8, 12345));
        assert!(!journal_stream_names("8:12346", 8, 12345));
        assert!(!journal_stream_names("8", 8, 12345));
        assert!(!journal_stream_names("", 8, 12345));
    }

    #[test]
    fn held_records_wait_for_release() {
        let dir = std::env::temp_dir().join(format!("quiesce-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("q.log");
        let g = gate();
        g.set_stderr(false);
        g.open_file(&path).unwrap();
        GatedWriter::default().write_all(b"before\n").unwrap();
        g.hold();
        GatedWriter::default().write_all(b"while frozen\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "before\n");
        g.release();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "before\nwhile frozen\n");

        // A flood while held stays within the cap, and the drop is counted.
        let record = [b'x'; 1000];
        g.hold();
        for _ in 0..10_000 {
            GatedWriter::default().write_all(&record).unwrap();
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
