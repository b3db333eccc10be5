//! The plugin's stdout/stderr and log records share one byte budget per
//! call. Beyond it output is counted and dropped — never an error, since
//! Rust's `println!` panics (kills the plugin) when a write fails.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Bytes captured during one call.
#[derive(Debug, Default)]
pub(crate) struct Captured {
    pub cap: usize,
    pub used: usize,
    pub dropped: u64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Captured {
    /// Takes up to the remaining budget of `len` bytes; returns how many.
    pub fn admit(&mut self, len: usize) -> usize {
        let n = len.min(self.cap.saturating_sub(self.used));
        self.used += n;
        self.dropped += (len - n) as u64;
        n
    }
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
        let mut c = self.sink.lock();
        let n = c.admit(bytes.len());
        let buf = if self.stderr { &mut c.stderr } else { &mut c.stdout };
        buf.extend_from_slice(&bytes[..n]);
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

    #[test]
    fn output_beyond_the_budget_is_counted_not_kept() {
        let sink = OutputSink::new(10);
        sink.pipe(false).write_bytes(b"hello ");
        sink.pipe(true).write_bytes(b"world!!");
        let c = sink.take();
        assert_eq!(c.stdout, b"hello ");
        assert_eq!(c.stderr, b"worl");
        assert_eq!(c.dropped, 3);
        // The next call starts with a fresh budget.
        sink.pipe(false).write_bytes(b"again");
        assert_eq!(sink.take().stdout, b"again");
    }
}
