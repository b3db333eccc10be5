//! What one plugin instance's `Store` holds: its WASI context and resource
//! table, its grants and limits, and what happened during the current call
//! (log records, grant denials, captured output, stored artifacts).

use std::time::Instant;

use serde::Serialize;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::grants::Grants;
use super::output::OutputSink;
use super::pinned::PinnedGrants;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogSource {
    /// The `log` import.
    Log,
    Stdout,
    Stderr,
}

/// One record the plugin logged (or one line it printed).
#[derive(Clone, Debug, Serialize)]
pub struct LogRecord {
    pub level: LogLevel,
    pub source: LogSource,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

/// A capability call the grants did not allow (`GrantDenied` in the report).
#[derive(Clone, Debug, Serialize)]
pub struct GrantDenial {
    /// `connect`, `read-file`, `exec`.
    pub capability: &'static str,
    /// What the plugin asked for, as it asked.
    pub requested: String,
    /// The grant that would have allowed it.
    pub needed: String,
    /// Set when the grant allowed it but a host check refused it anyway
    /// (an `exec:` file that fails the trust checks): why.
    pub refused: Option<String>,
}

impl GrantDenial {
    /// What the admin should do about it.
    pub fn advice(&self) -> &'static str {
        match self.refused {
            Some(_) => "fix the file's ownership and permissions (root-owned, not group- or world-writable) if it is intended",
            None => "grant it in the hook's `grants` if it is intended",
        }
    }
}

impl std::fmt::Display for GrantDenial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.refused {
            Some(why) => write!(f, "{} {}: granted, but refused: {why}", self.capability, self.requested),
            None => write!(f, "{} {}: not granted (needs {})", self.capability, self.requested, self.needed),
        }
    }
}

/// A named blob the plugin handed the host (e.g. a backup label).
#[derive(Clone, Debug)]
pub struct Artifact {
    pub name: String,
    pub data: Vec<u8>,
}

/// What the plugin did besides returning a result, since the last
/// [`take_events`](super::PluginInstance::take_events).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Events {
    pub logs: Vec<LogRecord>,
    pub denials: Vec<GrantDenial>,
    /// Log and output bytes beyond the per-call cap, dropped.
    pub output_dropped_bytes: u64,
}

impl Events {
    pub fn is_empty(&self) -> bool {
        self.logs.is_empty() && self.denials.is_empty() && self.output_dropped_bytes == 0
    }
    pub(crate) fn append(&mut self, mut other: Events) {
        self.logs.append(&mut other.logs);
        self.denials.append(&mut other.denials);
        self.output_dropped_bytes += other.output_dropped_bytes;
    }
}

/// Store limits, plus a record of the memory growth that was refused so
/// the trap can be reported as "memory limit exceeded", not as the bare
/// trap it causes.
pub(crate) struct Limiter {
    pub memory_limit: usize,
    pub exceeded: Option<usize>,
    inner: StoreLimits,
}

impl Limiter {
    fn new(memory_limit: usize) -> Limiter {
        Limiter {
            memory_limit,
            exceeded: None,
            inner: StoreLimitsBuilder::new().memory_size(memory_limit).trap_on_grow_failure(true).build(),
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.exceeded = Some(desired);
            return Err(wasmtime::format_err!(
                "memory limit of {} MiB exceeded (the plugin asked for {} MiB)",
                self.memory_limit >> 20,
                desired.div_ceil(1 << 20)
            ));
        }
        self.inner.memory_growing(current, desired, maximum)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }
    fn tables(&self) -> usize {
        self.inner.tables()
    }
    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// WASI's wall clock for plugins: always the Unix epoch. Real time would
/// only help a plugin fingerprint or schedule itself; the `clock` import
/// offers the monotonic clock hooks need for timeouts.
struct EpochClock;

impl HostWallClock for EpochClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }
    fn now(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

pub(crate) struct HostState {
    wasi: WasiCtx,
    pub table: ResourceTable,
    pub limiter: Limiter,
    /// For log lines.
    pub plugin: String,
    pub grants: Grants,
    /// The path grants' directories, opened when the instance was set up.
    pub pinned: PinnedGrants,
    pub output: OutputSink,
    pub events: Events,
    pub artifacts: Vec<Artifact>,
    /// End of the current call (for `exec` and `sleep-ms`).
    pub deadline: Option<Instant>,
    pub open_connections: usize,
}

impl HostState {
    pub fn new(plugin: &str, grants: Grants, memory_limit: usize, output_cap: usize) -> HostState {
        let output = OutputSink::new(output_cap);
        // Default deny: no preopens, env, args, stdin, sockets or name
        // lookup; stdio is captured, the wall clock shows the epoch.
        let wasi = WasiCtxBuilder::new()
            .stdout(output.pipe(false))
            .stderr(output.pipe(true))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(EpochClock)
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter::new(memory_limit),
            plugin: plugin.to_owned(),
            pinned: PinnedGrants::pin(plugin, &grants),
            grants,
            output,
            events: Events::default(),
            artifacts: Vec::new(),
            deadline: None,
            open_connections: 0,
        }
    }

    /// Records a refused capability call and logs it.
    pub fn deny(&mut self, capability: &'static str, requested: &str, needed: String) -> String {
        self.push_denial(GrantDenial { capability, requested: requested.to_owned(), needed, refused: None })
    }

    /// Records a granted capability call that a host check refused (an
    /// `exec:` file failing the trust checks): reported like a denial.
    pub fn refuse(&mut self, capability: &'static str, requested: &str, why: String) -> String {
        let needed = format!("{capability}:{requested}");
        self.push_denial(GrantDenial { capability, requested: requested.to_owned(), needed, refused: Some(why) })
    }

    fn push_denial(&mut self, d: GrantDenial) -> String {
        tracing::warn!(plugin = %self.plugin, "GrantDenied: {d}");
        let msg = d.to_string();
        self.events.denials.push(d);
        msg
    }

    /// Moves this call's log records, printed lines and denials into `Events`.
    pub fn drain_events(&mut self) -> Events {
        let captured = self.output.take();
        let mut ev = std::mem::take(&mut self.events);
        for r in &captured.records {
            match r.source {
                LogSource::Stdout => tracing::info!(plugin = %self.plugin, "stdout: {}", r.message),
                LogSource::Stderr => tracing::warn!(plugin = %self.plugin, "stderr: {}", r.message),
                LogSource::Log => {}
            }
        }
        ev.logs.extend(captured.records);
        ev.output_dropped_bytes += captured.dropped;
        ev
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}
