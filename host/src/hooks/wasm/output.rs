//! The plugin's stdout/stderr and log records share one byte budget per
//! call. Beyond it output is counted and dropped — never an error, since
//! Rust's `println!` panics (kills the plugin) when a write fails.
//! Records keep the order the plugin produced them in: printed lines and
//! `log` records interleave as they happened.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use super::state::{LogLevel, LogRecord, LogSource};

/// Bytes captured during one call.
#[derive(Debug, Default)]
pub(crate) struct Captured {
    pub cap: usize,
    pub used: usize,
    pub dropped: u64,
    /// Log records and complete printed lines, in order.
    pub records: Vec<LogRecord>,
    /// Printed bytes after the last newline, per stream.
    partial_out: Vec<u8>,
    partial_err: Vec<u8>,
}

impl Captured {
    /// Takes up to the remaining budget of `len` bytes; returns how many.
    pub fn admit(&mut self, len: usize) -> usize {
        let n = len.min(self.cap.saturating_sub(self.used));
        self.used += n;
        self.dropped += (len - n) as u64;
        n
    }

    /// Keeps a `log` record of `size` bytes if it fits whole (a partial
    /// record would mislead); returns whether it was kept.
    pub fn push_log(&mut self, record: LogRecord, size: usize) -> bool {
        if self.cap.saturating_sub(self.used) < size {
            self.dropped += size as u64;
            return false;
        }
        self.used += size;
        self.records.push(record);
        true
    }

    fn printed(&mut self, stderr: bool, bytes: &[u8]) {
        let n = self.admit(bytes.len());
        let partial = if stderr { &mut self.partial_err } else { &mut self.partial_out };
        partial.extend_from_slice(&bytes[..n]);
        let mut lines = Vec::new();
        while let Some(i) = partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = partial.drain(..=i).collect();
            lines.push(line[..line.len() - 1].to_vec());
        }
        for line in lines {
            self.records.push(printed_record(stderr, &line));
        }
    }

    /// Ends the call: unterminated printed lines become records too.
    fn finish(&mut self) {
        for stderr in [false, true] {
            let partial = std::mem::take(if stderr { &mut self.partial_err } else { &mut self.partial_out });
            if !partial.is_empty() {
                self.records.push(printed_record(stderr, &partial));
            }
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
        let sink = OutputSink::new(10);
        sink.pipe(false).write_bytes(b"hello\n");
        sink.pipe(true).write_bytes(b"world!!");
        assert!(!sink.lock().push_log(log("too late"), 8));
        let c = sink.take();
        assert_eq!(messages(&c), [(LogSource::Stdout, "hello"), (LogSource::Stderr, "worl")]);
        assert_eq!(c.dropped, 3 + 8);
        // The next call starts with a fresh budget.
        sink.pipe(false).write_bytes(b"again");
        assert_eq!(messages(&sink.take()), [(LogSource::Stdout, "again")]);
    }

    #[test]
    fn printed_lines_and_log_records_keep_their_order() {
        let sink = OutputSink::new(1000);
        sink.pipe(false).write_bytes(b"first ");
        assert!(sink.lock().push_log(log("second"), 6));
        sink.pipe(false).write_bytes(b"line\nthird\n");
        let c = sink.take();
        assert_eq!(messages(&c), [(LogSource::Log, "second"), (LogSource::Stdout, "first line"), (LogSource::Stdout, "third")]);
    }
}
