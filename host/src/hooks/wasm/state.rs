//! What one plugin instance's `Store` holds: its WASI context and resource
//! table, its grants and limits, and what happened during the current call
//! (log records, grant denials, captured output, stored artifacts).
//!
//! Two budgets bound what a plugin can make the host hold: the [`Limiter`]
//! (every byte of linear memory and table the instance owns, and how many
//! instances, memories and tables it may create) and the call's output
//! budget ([`OutputSink`]). WASI's own host-side allocations are bounded too:
//! the resource table's size and `get-random-bytes`' length.

use std::time::Instant;

use serde::Serialize;
use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::grants::Grants;
use super::output::{OutputSink, MAX_REQUEST_BYTES};
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
    /// The host's note about the plugin's output (what was dropped).
    Host,
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

/// The `capability` of the one entry that stands for the denials of a call
/// beyond [`MAX_DENIALS`](super::output::MAX_DENIALS).
const MORE_DENIALS: &str = "more";

impl GrantDenial {
    /// The entry that counts the denials that were not kept.
    pub(crate) fn more(dropped: u64) -> GrantDenial {
        GrantDenial { capability: MORE_DENIALS, requested: dropped.to_string(), needed: String::new(), refused: None }
    }
}

impl std::fmt::Display for GrantDenial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.capability == MORE_DENIALS {
            return write!(
                f,
                "{} more grant denials in this call dropped (only the first {} are kept)",
                self.requested,
                super::output::MAX_DENIALS
            );
        }
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
    /// Log records and printed lines beyond the per-call cap, dropped.
    pub output_dropped_records: u64,
    /// Grant denials beyond the per-call cap, dropped (the last entry of
    /// `denials` says how many).
    pub denials_dropped: u64,
}

impl Events {
    pub fn is_empty(&self) -> bool {
        self.logs.is_empty() && self.denials.is_empty() && self.output_dropped_bytes == 0
    }
    pub(crate) fn append(&mut self, mut other: Events) {
        self.logs.append(&mut other.logs);
        self.denials.append(&mut other.denials);
        self.output_dropped_bytes = self.output_dropped_bytes.saturating_add(other.output_dropped_bytes);
        self.output_dropped_records = self.output_dropped_records.saturating_add(other.output_dropped_records);
        self.denials_dropped = self.denials_dropped.saturating_add(other.denials_dropped);
    }
}

/// Core instances, linear memories and tables one plugin instance may
/// create. A Rust plugin built for wasm32-wasip2 needs a handful of each
/// (its module, the WASI adapter's shims); each memory reserves gigabytes of
/// address space even when empty, so their number is bounded on its own.
pub(crate) const MAX_INSTANCES: usize = 32;
pub(crate) const MAX_MEMORIES: usize = 4;
pub(crate) const MAX_TABLES: usize = 16;
/// What wasmtime stores per table element (a pointer).
const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();
/// WASI resources (streams, pollables, connections) one instance may hold.
pub(crate) const MAX_RESOURCES: usize = 1024;
/// `wasi:random` bytes per call: enough for any seed.
const MAX_RANDOM_BYTES: u64 = 4096;

/// The instance's memory budget: every linear memory's bytes plus every
/// table's elements, summed over the whole store (wasmtime's `StoreLimits`
/// caps each memory on its own, so a plugin with several memories or a
/// growing table went past it). A growth past the budget traps; the
/// total asked for is kept so the trap is reported as "memory limit
/// exceeded", not as the bare trap it causes.
pub(crate) struct Limiter {
    pub memory_limit: usize,
    used: usize,
    /// The last growth allowed, taken back if wasmtime then fails it.
    pending: usize,
    pub exceeded: Option<usize>,
}

impl Limiter {
    fn new(memory_limit: usize) -> Limiter {
        Limiter { memory_limit, used: 0, pending: 0, exceeded: None }
    }

    fn grow(&mut self, current: usize, desired: usize) -> wasmtime::Result<bool> {
        let delta = desired.saturating_sub(current);
        match self.used.checked_add(delta) {
            Some(total) if total <= self.memory_limit => {
                self.used = total;
                self.pending = delta;
                Ok(true)
            }
            total => {
                let total = total.unwrap_or(usize::MAX);
                self.exceeded = Some(total);
                Err(wasmtime::format_err!("{}", memory_exceeded(self.memory_limit, total)))
            }
        }
    }

    /// Wasmtime refused a growth this limiter allowed (past the memory's
    /// own maximum): take it back, and trap as `StoreLimits` would with
    /// `trap_on_grow_failure` — a guest would die on an unhelpful
    /// `unreachable` anyway.
    fn grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.used = self.used.saturating_sub(std::mem::take(&mut self.pending));
        Err(error)
    }
}

/// The message of a refused growth (also the call's outcome).
pub(crate) fn memory_exceeded(limit: usize, total: usize) -> String {
    format!("memory limit of {} MiB exceeded (the plugin's memories and tables would total {} MiB)", limit >> 20, total.div_ceil(1 << 20))
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.grow(current, desired)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed(error)
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.grow(current.saturating_mul(TABLE_ELEMENT_BYTES), desired.saturating_mul(TABLE_ELEMENT_BYTES))
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed(error)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }
    fn tables(&self) -> usize {
        MAX_TABLES
    }
    fn memories(&self) -> usize {
        MAX_MEMORIES
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
    /// Per call, and for the messages the plugin returns.
    pub output_cap: usize,
    pub artifacts: Vec<Artifact>,
    /// End of the current call (for `exec` and `sleep-ms`).
    pub deadline: Option<Instant>,
    /// The connections the plugin has open (resource reps), in order.
    pub open_connections: Vec<u32>,
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
            .max_random_size(MAX_RANDOM_BYTES)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        HostState {
            wasi,
            table,
            limiter: Limiter::new(memory_limit),
            plugin: plugin.to_owned(),
            pinned: PinnedGrants::pin(plugin, &grants),
            grants,
            output,
            output_cap,
            artifacts: Vec::new(),
            deadline: None,
            open_connections: Vec::new(),
        }
    }

    /// Records a refused capability call (and logs it, while within the
    /// call's caps); returns the message for the guest.
    pub fn deny(&mut self, capability: &'static str, requested: &str, needed: String) -> String {
        let requested = crate::hooks::truncate_message(requested.to_owned(), MAX_REQUEST_BYTES);
        self.push_denial(GrantDenial { capability, requested, needed, refused: None })
    }

    /// Records a granted capability call that a host check refused (an
    /// `exec:` file failing the trust checks): reported like a denial.
    pub fn refuse_granted(&mut self, capability: &'static str, requested: &str, why: String) -> String {
        let requested = crate::hooks::truncate_message(requested.to_owned(), MAX_REQUEST_BYTES);
        let needed = format!("{capability}:{requested}");
        let why = crate::hooks::truncate_message(why, MAX_REQUEST_BYTES);
        self.push_denial(GrantDenial { capability, requested, needed, refused: Some(why) })
    }

    fn push_denial(&mut self, d: GrantDenial) -> String {
        let msg = d.to_string();
        let plugin = &self.plugin;
        if self.output.lock().push_denial(d) {
            tracing::warn!(plugin = %plugin, "GrantDenied: {msg}");
        }
        msg
    }

    /// Moves this call's log records, printed lines and denials into `Events`.
    pub fn drain_events(&mut self) -> Events {
        let captured = self.output.take();
        for r in &captured.records {
            match r.source {
                LogSource::Stdout => tracing::info!(plugin = %self.plugin, "stdout: {}", r.message),
                LogSource::Stderr => tracing::warn!(plugin = %self.plugin, "stderr: {}", r.message),
                LogSource::Host => tracing::warn!(plugin = %self.plugin, "{}", r.message),
                LogSource::Log => {}
            }
        }
        Events {
            logs: captured.records,
            denials: captured.denials,
            output_dropped_bytes: captured.dropped_bytes,
            output_dropped_records: captured.dropped_records,
            denials_dropped: captured.dropped_denials,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_limit_is_the_sum_of_every_memory_and_table() {
        let mut l = Limiter::new(10 << 20);
        // Two memories of 4 MiB each fit; a table of 2 MiB more does not.
        assert!(l.memory_growing(0, 4 << 20, None).unwrap());
        assert!(l.memory_growing(0, 4 << 20, None).unwrap());
        let elements = (2 << 20) / TABLE_ELEMENT_BYTES + 1;
        assert!(l.table_growing(0, elements, None).is_err());
        assert_eq!(l.exceeded, Some((8 << 20) + elements * TABLE_ELEMENT_BYTES));
        // A growth wasmtime then fails is taken back.
        assert!(l.memory_growing(4 << 20, 6 << 20, Some(5 << 20)).unwrap());
        assert!(l.memory_grow_failed(wasmtime::format_err!("past its maximum")).is_err());
        assert!(l.table_growing(0, (2 << 20) / TABLE_ELEMENT_BYTES, None).unwrap());
        assert!(l.memory_growing(0, 64 << 10, None).is_err());
        assert!(memory_exceeded(10 << 20, (10 << 20) + 1)
            .contains("limit of 10 MiB exceeded (the plugin's memories and tables would total 11 MiB)"));
    }
}
