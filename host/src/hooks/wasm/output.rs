//! Everything a plugin can make the host keep or write during one call —
//! `log` records, printed stdout/stderr lines, grant denials — is charged
//! against one budget ([`OUTPUT_CAP`](crate::hooks::OUTPUT_CAP) by
//! default). Each record costs its bytes plus [`RECORD_OVERHEAD`], so a
//! flood of empty records runs out of budget like a flood of long ones
//! (millions of empty `log` calls once grew the log without bound). Beyond
//! the budget, output is counted and dropped — never an error, since Rust's
//! `println!` panics (kills the plugin) when a write fails — and the call's
//! events end with one record saying how much was dropped.
//! Records keep the order the plugin produced them in: printed lines and
//! `log` records interleave as they happened.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use super::state::{GrantDenial, LogLevel, LogRecord, LogSource};

/// What one kept record costs on top of its bytes: roughly what the host
/// spends on it (the record, its log line's prefix, its place in the report).
pub(crate) const RECORD_OVERHEAD: usize = 64;

/// Grant denials kept per call; the rest are counted (a plugin probing a
/// thousand ports needs one line in the report, not a thousand).
pub(crate) const MAX_DENIALS: usize = 16;

/// What a plugin asked for, as kept in a denial: enough to recognise it.
pub(crate) const MAX_REQUEST_BYTES: usize = 512;

/// What one call produced, within the budget.
#[derive(Debug, Default)]
pub(crate) struct Captured {
    pub cap: usize,
    pub used: usize,
    /// Bytes and records over the budget, not kept.
    pub dropped_bytes: u64,
    pub dropped_records: u64,
    /// Log records and complete printed lines, in order.
    pub records: Vec<LogRecord>,
    pub denials: Vec<GrantDenial>,
    pub dropped_denials: u64,
    /// The printed line in progress, per stream.
    line_out: Line,
    line_err: Line,
}

/// A printed line not yet ended by a newline.
#[derive(Debug, Default)]
enum Line {
    #[default]
    Idle,
    /// Its overhead and its bytes so far are charged.
    Kept(Vec<u8>),
    /// It started over budget: counted as one dropped record when it ends.
    Dropped,
}

impl Captured {
    fn room(&self) -> usize {
        self.cap.saturating_sub(self.used)
    }

    /// Charges one record of `bytes` (plus the overhead) if it fits whole;
    /// otherwise counts it as dropped. A partial record would mislead.
    fn charge(&mut self, bytes: usize) -> bool {
        match bytes.checked_add(RECORD_OVERHEAD) {
            Some(cost) if cost <= self.room() => {
                self.used += cost;
                true
            }
            _ => {
                self.dropped_bytes = self.dropped_bytes.saturating_add(bytes as u64);
                self.dropped_records = self.dropped_records.saturating_add(1);
                false
            }
        }
    }

    /// Keeps a `log` record if it fits whole; returns whether it was kept.
    pub fn push_log(&mut self, record: LogRecord) -> bool {
        let size = record.message.len().saturating_add(record.fields.iter().map(|(k, v)| k.len().saturating_add(v.len())).sum());
        if !self.charge(size) {
            return false;
        }
        self.records.push(record);
        true
    }

    /// Keeps a grant denial (its request cut to [`MAX_REQUEST_BYTES`]) if
    /// fewer than [`MAX_DENIALS`] were kept and it fits; returns whether it was.
    pub fn push_denial(&mut self, mut denial: GrantDenial) -> bool {
        denial.requested = crate::hooks::truncate_message(std::mem::take(&mut denial.requested), MAX_REQUEST_BYTES);
        if self.denials.len() >= MAX_DENIALS || !self.charge(denial.requested.len() + denial.needed.len()) {
            self.dropped_denials = self.dropped_denials.saturating_add(1);
            return false;
        }
        self.denials.push(denial);
        true
    }

    fn printed(&mut self, stderr: bool, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let (segment, line_ends) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            rest = &rest[segment.len() + usize::from(line_ends)..];
            // A line's overhead is charged when it starts, its bytes as they
            // arrive: a never-ending line cannot grow past the budget.
            let mut line = std::mem::take(self.line(stderr));
            if matches!(line, Line::Idle) {
                line = if self.room() >= RECORD_OVERHEAD {
                    self.used += RECORD_OVERHEAD;
                    Line::Kept(Vec::new())
                } else {
                    Line::Dropped
                };
            }
            let n = match &mut line {
                Line::Kept(buf) => {
                    let n = segment.len().min(self.room());
                    buf.extend_from_slice(&segment[..n]);
                    n
                }
                _ => 0,
            };
            self.used += n;
            self.dropped_bytes = self.dropped_bytes.saturating_add((segment.len() - n) as u64);
            *self.line(stderr) = line;
            if line_ends {
                self.end_line(stderr);
            }
        }
    }

    fn line(&mut self, stderr: bool) -> &mut Line {
        if stderr {
            &mut self.line_err
        } else {
            &mut self.line_out
        }
    }

    fn end_line(&mut self, stderr: bool) {
        match std::mem::take(self.line(stderr)) {
            Line::Idle => {}
            Line::Kept(buf) => self.records.push(printed_record(stderr, &buf)),
            Line::Dropped => self.dropped_records = self.dropped_records.saturating_add(1),
        }
    }

    /// Ends the call: unterminated printed lines become records too, and
    /// one record says what was dropped, if anything was.
    fn finish(&mut self) {
        for stderr in [false, true] {
            self.end_line(stderr);
        }
        if self.dropped_records > 0 || self.dropped_bytes > 0 {
            self.records.push(LogRecord {
                level: LogLevel::Warn,
                source: LogSource::Host,
                message: format!(
                    "{} more records ({} bytes) dropped: over this call's output cap of {} bytes ({} bytes per record count against it)",
                    self.dropped_records, self.dropped_bytes, self.cap, RECORD_OVERHEAD
                ),
                fields: Vec::new(),
            });
        }
        if self.dropped_denials > 0 {
            self.denials.push(GrantDenial::more(self.dropped_denials));
        }
    }
}

fn printed_record(stderr: bool, line: &[u8]) -> LogRecord {
    let (level, source) = if stderr { (LogLevel::Warn, LogSource::Stderr) } else { (LogLevel::Info, LogSource::Stdout) };
    LogRecord { level, source, message: String::from_utf8_lossy(line).into_owned(), fields: Vec::new() }
}

/// Shared between the two pipes, the log import and the instance.
#[derive(Clone, Debug)]
pub(crate) struct OutputSink(Arc<Mutex<Captured>>);

impl OutputSink {
    pub fn new(cap: usize) -> OutputSink {
        OutputSink(Arc::new(Mutex::new(Captured { cap, ..Captured::default() })))
    }

    pub fn lock(&self) -> MutexGuard<'_, Captured> {
        // A panic while holding this lock cannot leave it inconsistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Empties the buffers and resets the budget for the next call.
    pub fn take(&self) -> Captured {
        let mut c = self.lock();
        c.finish();
        let cap = c.cap;
        std::mem::replace(&mut *c, Captured { cap, ..Captured::default() })
    }

    pub fn pipe(&self, stderr: bool) -> CapturePipe {
        CapturePipe { sink: self.clone(), stderr }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct CapturePipe {
    sink: OutputSink,
    stderr: bool,
}

impl CapturePipe {
    fn write_bytes(&self, bytes: &[u8]) {
        self.sink.lock().printed(self.stderr, bytes);
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CapturePipe {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        self.write_bytes(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturePipe {
    async fn ready(&mut self) {}
}

impl IsTerminal for CapturePipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturePipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for CapturePipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(c: &Captured) -> Vec<(LogSource, &str)> {
        c.records.iter().map(|r| (r.source, r.message.as_str())).collect()
    }

    fn log(msg: &str) -> LogRecord {
        LogRecord { level: LogLevel::Info, source: LogSource::Log, message: msg.into(), fields: Vec::new() }
    }

    #[test]
    fn output_beyond_the_budget_is_counted_not_kept() {
        let sink = OutputSink::new(2 * RECORD_OVERHEAD + 10);
        sink.pipe(false).write_bytes(b"hello\n");
        sink.pipe(true).write_bytes(b"world!!");
        assert!(!sink.lock().push_log(log("too late")));
        let c = sink.take();
        let (kept, summary) = c.records.split_at(2);
        let kept: Vec<(LogSource, &str)> = kept.iter().map(|r| (r.source, r.message.as_str())).collect();
        assert_eq!(kept, [(LogSource::Stdout, "hello"), (LogSource::Stderr, "world")]);
        assert_eq!((c.dropped_bytes, c.dropped_records), (2 + 8, 1));
        assert_eq!(summary[0].source, LogSource::Host);
        assert!(summary[0].message.starts_with("1 more records (10 bytes) dropped"), "{}", summary[0].message);
        // The next call starts with a fresh budget.
        sink.pipe(false).write_bytes(b"again");
        assert_eq!(messages(&sink.take()), [(LogSource::Stdout, "again")]);
    }

    #[test]
    fn empty_records_cost_their_overhead() {
        let sink = OutputSink::new(10 * RECORD_OVERHEAD);
        for _ in 0..1000 {
            sink.lock().push_log(log(""));
        }
        sink.pipe(false).write_bytes(&[b'\n'; 100_000]);
        let c = sink.take();
        assert_eq!(c.records.len(), 10 + 1, "ten kept, one summary");
        assert_eq!(c.dropped_records, 990 + 100_000);
        assert!(c.used <= c.cap);
    }

    #[test]
    fn denials_are_capped_in_number_and_size_with_one_summary() {
        let sink = OutputSink::new(1 << 20);
        for i in 0..1000 {
            let d = GrantDenial {
                capability: "connect",
                requested: format!("tcp:10.0.0.1:{i}{}", "x".repeat(10_000)),
                needed: "grant".into(),
                refused: None,
            };
            sink.lock().push_denial(d);
        }
        let c = sink.take();
        assert_eq!(c.denials.len(), MAX_DENIALS + 1);
        assert!(c.denials[..MAX_DENIALS].iter().all(|d| d.requested.len() < MAX_REQUEST_BYTES + 40));
        assert_eq!(c.dropped_denials, 1000 - MAX_DENIALS as u64);
        let last = c.denials[MAX_DENIALS].to_string();
        assert!(last.contains(&format!("{} more grant denials", 1000 - MAX_DENIALS)), "{last}");
    }

    #[test]
    fn printed_lines_and_log_records_keep_their_order() {
        let sink = OutputSink::new(1000);
        sink.pipe(false).write_bytes(b"first ");
        assert!(sink.lock().push_log(log("second")));
        sink.pipe(false).write_bytes(b"line\nthird\n");
        let c = sink.take();
        assert_eq!(messages(&c), [(LogSource::Log, "second"), (LogSource::Stdout, "first line"), (LogSource::Stdout, "third")]);
    }
}
