//! What the fuzz targets share: a stream that plays a lying server from the
//! fuzz input, and an allocator that turns one oversized allocation into a
//! crash, so "a length prefix of 2 GiB must not allocate 2 GiB" is checked
//! by every run instead of by luck (libFuzzer's own `-malloc_limit_mb`
//! needs sanitizer malloc hooks, which `--sanitizer none` builds lack).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The largest single allocation a target allows; `usize::MAX` = no limit.
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Refuses (returns null for) any allocation above [`set_alloc_limit`]'s
/// limit: Rust then aborts with "memory allocation of N bytes failed", which
/// libFuzzer records as a crash with its input.
pub struct CappedAlloc;

// SAFETY: forwards to the system allocator; refusing is allowed by the contract.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LIMIT.load(Ordering::Relaxed) {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LIMIT.load(Ordering::Relaxed) {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > LIMIT.load(Ordering::Relaxed) {
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

/// Sets the per-allocation limit for this process.
pub fn set_alloc_limit(bytes: usize) {
    LIMIT.store(bytes, Ordering::Relaxed);
}

/// A connection to a server that says whatever the fuzz input says. The first
/// input byte picks how many bytes each `read` returns at most (1..=256), so
/// clients that assume a message arrives in one read are caught too. What
/// the client writes is counted and dropped.
pub struct LyingServer<'a> {
    input: &'a [u8],
    chunk: usize,
    pub written: usize,
}

impl<'a> LyingServer<'a> {
    pub fn new(data: &'a [u8]) -> LyingServer<'a> {
        let (chunk, input) = match data.split_first() {
            Some((&c, rest)) => (usize::from(c) + 1, rest),
            None => (1, data),
        };
        LyingServer { input, chunk, written: 0 }
    }
}

impl Read for LyingServer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for LyingServer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written = self.written.saturating_add(buf.len());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The machine facts the freeze planner needs, made up: block devices are
/// the sources under /dev/, and there are no loop devices (so the freeze
/// order has no cycles and must follow the mount tree strictly).
pub struct DevEnv;

impl quiesce::freeze::PlanEnv for DevEnv {
    fn is_block_device(&self, path: &std::path::Path) -> bool {
        path.starts_with("/dev")
    }
    fn loop_backing_dev(&self, _device: &std::path::Path) -> Option<(u32, u32)> {
        None
    }
}

/// Splits the input at the first occurrence of `sep` (or not at all).
pub fn split_once<'a>(data: &'a [u8], sep: &[u8]) -> (&'a [u8], &'a [u8]) {
    match data.windows(sep.len()).position(|w| w == sep) {
        Some(i) => (&data[..i], &data[i + sep.len()..]),
        None => (data, &[]),
    }
}

/// Parses `text` as a config file through the public entry point (format
/// detection included) and checks what a parsed config promises the session.
pub fn check_config(text: &str, expect: quiesce::config::Format) {
    use quiesce::config::{Config, Format, HookBody};
    use quiesce::duration;
    let path = std::path::Path::new("/etc/quiesce/fuzz.toml");
    let Ok(c) = Config::parse(path, text) else { return };
    assert_eq!(c.format, expect, "format detection");
    assert_eq!(c.path.as_deref(), Some(path));
    assert!(c.freeze.max_freeze > std::time::Duration::ZERO, "max_freeze {:?}", c.freeze.max_freeze);
    // Anything larger panics or saturates when the session adds it to an Instant.
    assert!(c.freeze.max_freeze <= duration::MAX, "max_freeze {:?} above {:?}", c.freeze.max_freeze, duration::MAX);
    if expect == Format::Legacy {
        assert_eq!(c.hooks.len(), 1, "the legacy format has exactly one script pair");
    }
    let mut names = std::collections::BTreeSet::new();
    for h in &c.hooks {
        assert!(names.insert(h.name.as_str()), "hook name {:?} twice", h.name);
        assert!(h.timeout > std::time::Duration::ZERO, "hook {:?} timeout {:?}", h.name, h.timeout);
        assert!(h.timeout <= duration::MAX, "hook {:?} timeout {:?} above {:?}", h.name, h.timeout, duration::MAX);
        assert!(h.retry_delay <= duration::MAX, "hook {:?} retry delay {:?}", h.name, h.retry_delay);
        match &h.body {
            HookBody::Script { pre, post } => {
                assert!(pre.is_some() || post.is_some(), "hook {:?} runs nothing", h.name);
                for s in pre.iter().chain(post.iter()) {
                    assert!(s.path.is_absolute(), "script path {:?}", s.path);
                }
            }
            HookBody::Plugin(p) => {
                assert!(p.path.is_absolute(), "plugin path {:?}", p.path);
                assert!(p.memory_mib >= 1);
            }
        }
    }
    if let Some(t) = c.snapshot_timeout {
        assert!((duration::MIN..=duration::MAX).contains(&t), "snapshot timeout {t:?}");
    }
    // The report serializes the config; that must not fail either.
    serde_json::to_string(&c).expect("config serializes");
}
