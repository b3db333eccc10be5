//! One plugin instance per session: its own `Store`, alive from `pre` to
//! `post`, so state and connections carry over. Every call runs under two
//! clocks — the epoch deadline (a guest spinning in its own code) and a
//! `tokio` timeout (a guest blocked in a host call) — and a call that traps,
//! times out or exhausts memory kills the instance: the store is dropped,
//! its connections close, later calls answer [`CallOutcome::Dead`].

use std::fmt;
use std::time::{Duration, Instant};

use wasmtime::{Store, StoreContextMut, Trap, UpdateDeadline};

use super::bindings::v0_1_0::quiesce::plugin::types as wit;
use super::bindings::v0_1_0::QuiescePlugin;
use super::grants::Grants;
use super::plugin::{ParamDoc, Plugin, PluginInfo};
use super::state::{memory_exceeded, Artifact, Events, HostState, LogSource};
use super::{error_chain, PluginError};
use crate::hooks::truncate_message;

/// Limits and grants for one instance; the admin's config fills them.
#[derive(Clone, Debug)]
pub struct InstanceConfig {
    /// For logs (the hook's name in the config).
    pub name: String,
    pub grants: Grants,
    /// The admin's params, handed to every call.
    pub params: Vec<(String, String)>,
    /// All the instance's linear memories and tables together.
    pub memory_limit_bytes: usize,
    /// Per call (`describe`, `pre`, `post`).
    pub call_timeout: Duration,
    /// Log records, printed lines and grant denials kept per call (bytes,
    /// each record counting [`RECORD_OVERHEAD`](super::output::RECORD_OVERHEAD)
    /// more); also the most a returned message keeps.
    pub output_cap: usize,
}

impl InstanceConfig {
    pub const DEFAULT_MEMORY_LIMIT: usize = 64 << 20;
    pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_OUTPUT_CAP: usize = crate::hooks::OUTPUT_CAP;

    /// No grants, no params, 64 MiB, 10 s per call, 64 KiB of output per call.
    pub fn new(name: impl Into<String>) -> InstanceConfig {
        InstanceConfig {
            name: name.into(),
            grants: Grants::none(),
            params: Vec::new(),
            memory_limit_bytes: Self::DEFAULT_MEMORY_LIMIT,
            call_timeout: Self::DEFAULT_CALL_TIMEOUT,
            output_cap: Self::DEFAULT_OUTPUT_CAP,
        }
    }
}

/// What the session tells each call.
#[derive(Clone, Debug)]
pub struct CallContext {
    pub session_id: String,
    /// 1-based attempt of this hook in this session.
    pub attempt: u32,
}

/// What `post` learns about the snapshot.
#[derive(Clone, Debug)]
pub struct SnapshotOutcome {
    pub taken: bool,
    /// The report's consistency label (`AppConsistent`, ..., `None`).
    pub label: String,
}

/// How one call ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// The plugin returned `ok`.
    Ok(String),
    /// The plugin returned `retryable`: the session may call again (same instance).
    Retryable(String),
    /// The plugin returned `fatal`.
    Fatal(String),
    /// The plugin trapped (a panic, `unreachable`, `exit`): instance dropped.
    Trapped(String),
    /// Past `call_timeout`: instance dropped.
    TimedOut,
    /// Tried to grow memory past the limit: instance dropped.
    MemoryExhausted(String),
    /// An earlier call killed the instance; nothing ran.
    Dead,
}

impl CallOutcome {
    pub fn is_success(&self) -> bool {
        matches!(self, CallOutcome::Ok(_))
    }
    /// Whether this outcome ended the instance.
    pub fn killed_instance(&self) -> bool {
        matches!(self, CallOutcome::Trapped(_) | CallOutcome::TimedOut | CallOutcome::MemoryExhausted(_))
    }
}

impl fmt::Display for CallOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallOutcome::Ok(m) => write!(f, "ok: {m}"),
            CallOutcome::Retryable(m) => write!(f, "retryable failure: {m}"),
            CallOutcome::Fatal(m) => write!(f, "failed: {m}"),
            CallOutcome::Trapped(m) => write!(f, "trapped: {m}"),
            CallOutcome::TimedOut => f.write_str("timed out"),
            CallOutcome::MemoryExhausted(m) => write!(f, "{m}"),
            CallOutcome::Dead => f.write_str("not run: the instance died in an earlier call"),
        }
    }
}

struct Live {
    store: Store<HostState>,
    bindings: QuiescePlugin,
}

pub struct PluginInstance {
    name: String,
    live: Option<Live>,
    params: Vec<(String, String)>,
    call_timeout: Duration,
    /// Kept when the instance dies (they were handed over before).
    artifacts: Vec<Artifact>,
    events: Events,
    death: Option<String>,
}

enum Call<'a> {
    Describe,
    Pre(&'a CallContext),
    Post(&'a CallContext, &'a SnapshotOutcome),
}

enum Returned {
    Info(wit::PluginInfo),
    Hook(wit::HookResult),
}

/// `describe`'s strings and lists are shown by `inspect` and `check`:
/// generous for an honest plugin, bounded for a hostile one.
const MAX_INFO_STRING: usize = 1024;
const MAX_INFO_ITEMS: usize = 64;

/// Checked at every epoch tick while the guest runs: the call's real
/// deadline, on the monotonic clock. Counting ticks instead drifted — the
/// ticker thread oversleeps on a loaded machine, a 10 s call ran 11–13 s —
/// and a guest that floods cheap host calls never lets the `tokio` timeout
/// run. So each tick either traps (past the deadline) or yields to the
/// executor, where the timeout can fire.
fn on_epoch_tick(store: StoreContextMut<'_, HostState>) -> wasmtime::Result<UpdateDeadline> {
    Ok(match store.data().deadline {
        Some(d) if Instant::now() >= d => UpdateDeadline::Interrupt,
        _ => UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())),
    })
}

impl PluginInstance {
    pub(crate) async fn new(plugin: &Plugin, cfg: InstanceConfig) -> Result<PluginInstance, PluginError> {
        let state = HostState::new(&cfg.name, cfg.grants, cfg.memory_limit_bytes, cfg.output_cap);
        let mut store = Store::new(plugin.engine().engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(on_epoch_tick);
        store.set_epoch_deadline(1);
        // A timeout too large for the clock means none; the tokio timer copes.
        store.data_mut().deadline = Instant::now().checked_add(cfg.call_timeout);
        let inst = tokio::time::timeout(cfg.call_timeout, plugin.pre().instantiate_async(&mut store)).await;
        store.data_mut().deadline = None;
        let bindings = match inst {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                let why = truncate_message(error_chain(&e), cfg.output_cap);
                return Err(PluginError::Runtime(format!("{}: cannot instantiate: {why}", cfg.name)));
            }
            Err(_) => return Err(PluginError::Runtime(format!("{}: instantiation timed out", cfg.name))),
        };
        Ok(PluginInstance {
            name: cfg.name,
            live: Some(Live { store, bindings }),
            params: cfg.params,
            call_timeout: cfg.call_timeout,
            artifacts: Vec::new(),
            events: Events::default(),
            death: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// False once a call trapped, timed out or exhausted memory.
    pub fn is_alive(&self) -> bool {
        self.live.is_some()
    }

    /// Why the instance died, if it did.
    pub fn death(&self) -> Option<&str> {
        self.death.as_deref()
    }

    /// The pre hook. `Retryable` leaves the instance alive for another attempt.
    pub async fn pre(&mut self, ctx: &CallContext) -> CallOutcome {
        match self.invoke(Call::Pre(ctx)).await {
            Ok(Returned::Hook(r)) => hook_outcome(r, self.output_cap()),
            Ok(Returned::Info(_)) => CallOutcome::Trapped("internal: pre returned plugin info".into()),
            Err(o) => o,
        }
    }

    /// The post hook, told what became of the snapshot.
    pub async fn post(&mut self, ctx: &CallContext, snapshot: &SnapshotOutcome) -> CallOutcome {
        match self.invoke(Call::Post(ctx, snapshot)).await {
            Ok(Returned::Hook(r)) => hook_outcome(r, self.output_cap()),
            Ok(Returned::Info(_)) => CallOutcome::Trapped("internal: post returned plugin info".into()),
            Err(o) => o,
        }
    }

    pub(crate) async fn describe(&mut self) -> Result<PluginInfo, CallOutcome> {
        match self.invoke(Call::Describe).await? {
            Returned::Info(i) => Ok(plugin_info(i)),
            Returned::Hook(_) => Err(CallOutcome::Trapped("internal: describe returned a hook result".into())),
        }
    }

    /// The instance's output cap (the default once it died).
    fn output_cap(&self) -> usize {
        self.live.as_ref().map_or(InstanceConfig::DEFAULT_OUTPUT_CAP, |l| l.store.data().output_cap)
    }

    /// Log records, grant denials and dropped-output counts since the last take.
    pub fn take_events(&mut self) -> Events {
        std::mem::take(&mut self.events)
    }

    /// Targets of the plugin's open connections that the other side closed
    /// (nothing once the instance is dead: its connections are gone).
    pub fn hung_up_connections(&self) -> Vec<String> {
        self.live.as_ref().map(|l| l.store.data().hung_up_connections()).unwrap_or_default()
    }

    /// Artifacts the plugin stored this session (kept after the instance died).
    pub fn artifacts(&self) -> &[Artifact] {
        match &self.live {
            Some(l) => &l.store.data().artifacts,
            None => &self.artifacts,
        }
    }

    /// Drops the store now: the plugin's connections close. Later calls
    /// answer `Dead`. (Dropping the instance does the same.)
    pub fn kill(&mut self, why: impl Into<String>) {
        if let Some(mut live) = self.live.take() {
            let why = why.into();
            tracing::info!(plugin = %self.name, "instance dropped: {why}");
            let data = live.store.data_mut();
            self.artifacts = std::mem::take(&mut data.artifacts);
            let ev = data.drain_events();
            self.events.append(ev);
            drop(live);
            self.death = Some(why);
        }
    }

    async fn invoke(&mut self, call: Call<'_>) -> Result<Returned, CallOutcome> {
        let Some(live) = self.live.as_mut() else { return Err(CallOutcome::Dead) };
        let timeout = self.call_timeout;
        let started = Instant::now();
        live.store.data_mut().deadline = Some(crate::duration::deadline(started, timeout));
        live.store.set_epoch_deadline(1);

        let ctx_of = |c: &CallContext| wit::HookContext {
            session_id: c.session_id.clone(),
            attempt: c.attempt,
            deadline_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            params: self.params.clone(),
        };
        let fut = async {
            let hooks = live.bindings.quiesce_plugin_hooks();
            match call {
                Call::Describe => hooks.call_describe(&mut live.store).await.map(Returned::Info),
                Call::Pre(c) => hooks.call_pre(&mut live.store, &ctx_of(c)).await.map(Returned::Hook),
                Call::Post(c, s) => {
                    let snap = wit::SnapshotOutcome { taken: s.taken, label: s.label.clone() };
                    hooks.call_post(&mut live.store, &ctx_of(c), &snap).await.map(Returned::Hook)
                }
            }
        };
        let result = tokio::time::timeout(timeout, fut).await;

        let data = live.store.data_mut();
        data.deadline = None;
        let cap = data.output_cap;
        let exceeded = data.limiter.exceeded.map(|total| memory_exceeded(data.limiter.memory_limit, total));
        let ev = data.drain_events();
        let stderr_tail = stderr_tail(&ev);
        self.events.append(ev);

        let outcome = match result {
            Ok(Ok(r)) => return Ok(r),
            Err(_elapsed) => CallOutcome::TimedOut,
            Ok(Err(e)) => {
                if let Some(message) = exceeded {
                    CallOutcome::MemoryExhausted(message)
                } else if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                    CallOutcome::TimedOut
                } else if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                    CallOutcome::Trapped(format!("the plugin called exit({})", exit.0))
                } else {
                    let what = match e.downcast_ref::<Trap>() {
                        Some(t) => t.to_string(),
                        None => error_chain(&e),
                    };
                    let what = match stderr_tail {
                        Some(tail) => format!("{what} ({tail})"),
                        None => what,
                    };
                    // A host error's chain can carry a long wasm backtrace.
                    CallOutcome::Trapped(truncate_message(what, cap))
                }
            }
        };
        let why = match &outcome {
            CallOutcome::TimedOut => format!("call timed out after {:.1} s", timeout.as_secs_f64()),
            other => other.to_string(),
        };
        tracing::warn!(plugin = %self.name, "{why}; dropping the instance (its connections close)");
        self.kill(why);
        Err(outcome)
    }
}

/// The plugin's answer, its message cut to the output cap: it goes into the
/// report, the log and stderr (uncapped, 100 MB reports were produced).
/// The guest's memory limit bounds the copy wasmtime makes before this.
fn hook_outcome(r: wit::HookResult, cap: usize) -> CallOutcome {
    let cut = |m: String| truncate_message(m, cap);
    match r {
        wit::HookResult::Ok(m) => CallOutcome::Ok(cut(m)),
        wit::HookResult::Retryable(m) => CallOutcome::Retryable(cut(m)),
        wit::HookResult::Fatal(m) => CallOutcome::Fatal(cut(m)),
    }
}

/// What `describe` returned, within the output cap: each string cut to
/// [`MAX_INFO_STRING`], at most [`MAX_INFO_ITEMS`] grants and params.
fn plugin_info(i: wit::PluginInfo) -> PluginInfo {
    let cut = |m: String| truncate_message(m, MAX_INFO_STRING);
    PluginInfo {
        name: cut(i.name),
        version: cut(i.version),
        quiesces: cut(i.quiesces),
        grants: i.grants.into_iter().take(MAX_INFO_ITEMS).map(cut).collect(),
        params: i
            .params
            .into_iter()
            .take(MAX_INFO_ITEMS)
            .map(|p| ParamDoc { name: cut(p.name), description: cut(p.description), required: p.required, default: p.default.map(cut) })
            .collect(),
    }
}

/// The guest's last words on stderr (a Rust panic message), for the trap report.
fn stderr_tail(ev: &Events) -> Option<String> {
    let lines: Vec<&str> = ev
        .logs
        .iter()
        .filter(|l| l.source == LogSource::Stderr && !l.message.starts_with("note: run with `RUST_BACKTRACE"))
        .map(|l| l.message.as_str())
        .collect();
    let tail = lines[lines.len().saturating_sub(2)..].join(" ");
    (!tail.is_empty()).then_some(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// The session may hold instances across awaits on a multi-threaded
    /// runtime: everything it touches must be `Send`.
    #[allow(dead_code, unreachable_code, unused_variables)]
    fn instances_and_their_calls_are_send(plugin: &Plugin, mut inst: PluginInstance, engine: super::super::WasmEngine) {
        assert_send(&engine);
        assert_send(plugin);
        assert_send(&plugin.instantiate(InstanceConfig::new("x")));
        let ctx = CallContext { session_id: String::new(), attempt: 1 };
        let snap = SnapshotOutcome { taken: true, label: String::new() };
        assert_send(&inst.pre(&ctx));
        assert_send(&inst.post(&ctx, &snap));
        assert_send(&inst);
    }

    #[test]
    fn outcomes_that_kill_are_the_runtime_ones() {
        assert!(CallOutcome::TimedOut.killed_instance());
        assert!(CallOutcome::Trapped("x".into()).killed_instance());
        assert!(!CallOutcome::Fatal("x".into()).killed_instance());
        assert!(!CallOutcome::Dead.killed_instance());
        assert_eq!(CallOutcome::Dead.to_string(), "not run: the instance died in an earlier call");
    }
}
