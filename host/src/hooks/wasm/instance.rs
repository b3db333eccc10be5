//! One plugin instance per session: its own `Store`, alive from `pre` to
//! `post`, so state and connections carry over. Every call runs under two
//! clocks — the epoch deadline (a guest spinning in its own code) and a
//! `tokio` timeout (a guest blocked in a host call) — and a call that traps,
//! times out or exhausts memory kills the instance: the store is dropped,
//! its connections close, later calls answer [`CallOutcome::Dead`].

use std::fmt;
use std::time::{Duration, Instant};

use wasmtime::{Store, StoreContextMut, Trap, UpdateDeadline};

use serde::Serialize;

use super::bindings::{v0_1_0, v0_2_0, WitVersion};
use super::engine::Ticker;
use super::grants::Grants;
use super::plugin::{ParamDoc, Plugin, PluginInfo, PluginPre};
use super::state::{memory_exceeded, Artifact, Events, HostState, LogSource};
use super::{error_chain, PluginError};
use crate::hooks::truncate_message;
use crate::report::{label_name, Consistency};

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
    /// The session's label so far (a 0.1.0 plugin gets its name as a string).
    pub label: Consistency,
}

/// How `post` ended, and whether the plugin says its quiesce held through
/// the snapshot (only 0.2.0 plugins can say it did not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostOutcome {
    pub outcome: CallOutcome,
    /// Set when the plugin said the application's quiesce did not hold
    /// (`held: false`): its reason, cut to the output cap.
    pub not_held: Option<String>,
}

/// How much a `check` finding matters (the WIT's `severity`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Verified and fine.
    Passed,
    Info,
    /// The hook will work, but less well than it could.
    Warning,
    /// The hook will fail.
    Error,
}

impl Severity {
    /// The word shown to people.
    pub fn word(self) -> &'static str {
        match self {
            Severity::Passed => "ok",
            Severity::Info => "note",
            Severity::Warning => "warning",
            Severity::Error => "problem",
        }
    }
}

/// One thing a plugin's `check` verified or found wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// The plugin's stable code (`PgCheckpointNotAllowed`): letters and digits only.
    pub code: String,
    /// What was found and the fix.
    pub message: String,
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

/// The instance's exports, in the bindings of the version it speaks.
enum Bindings {
    V0_1_0(v0_1_0::QuiescePlugin),
    V0_2_0(v0_2_0::QuiescePlugin),
}

struct Live {
    store: Store<HostState>,
    bindings: Bindings,
}

/// What a closed instance leaves (see [`PluginInstance::close`]): its store's
/// memory and tables, nothing outside the process.
pub(crate) struct Leftover {
    _live: Live,
}

pub struct PluginInstance {
    name: String,
    live: Option<Live>,
    params: Vec<(String, String)>,
    call_timeout: Duration,
    ticker: Ticker,
    /// Kept when the instance dies (they were handed over before).
    artifacts: Vec<Artifact>,
    events: Events,
    death: Option<String>,
}

enum Call<'a> {
    Describe,
    Pre(&'a CallContext),
    Post(&'a CallContext, &'a SnapshotOutcome),
    Check(&'a CallContext),
}

/// What a call returned, in the host's terms (whatever the version).
enum Returned {
    Info(PluginInfo),
    Hook(CallOutcome),
    Post(PostOutcome),
    Findings(Vec<Finding>),
}

/// `describe`'s strings and lists are shown by `inspect` and `check`:
/// generous for an honest plugin, bounded for a hostile one.
const MAX_INFO_STRING: usize = 1024;
const MAX_INFO_ITEMS: usize = 64;
/// `check`'s findings: as many as an honest plugin has things to verify, each
/// code a short word, each message a few lines.
const MAX_FINDINGS: usize = 64;
const MAX_FINDING_CODE: usize = 64;

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
        let ticker = plugin.engine().ticker().clone();
        let running = ticker.guest_running();
        let inst = tokio::time::timeout(cfg.call_timeout, async {
            match plugin.pre() {
                PluginPre::V0_1_0(pre) => pre.instantiate_async(&mut store).await.map(Bindings::V0_1_0),
                PluginPre::V0_2_0(pre) => pre.instantiate_async(&mut store).await.map(Bindings::V0_2_0),
            }
        })
        .await;
        drop(running);
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
            ticker,
            artifacts: Vec::new(),
            events: Events::default(),
            death: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Ends the instance's hold on the outside now — the connections and
    /// sockets in its resource table close here, so a database releases
    /// what they held — and returns the rest, only memory, to be freed
    /// wherever it costs nothing (unmapping a linear memory is a TLB
    /// shootdown on every core the process runs on). No call may follow.
    pub(crate) fn close(mut self) -> Option<Leftover> {
        let mut live = self.live.take()?;
        let state = live.store.data_mut();
        drop(std::mem::take(&mut state.table));
        state.open_connections.clear();
        Some(Leftover { _live: live })
    }

    /// False once a call trapped, timed out or exhausted memory.
    pub fn is_alive(&self) -> bool {
        self.live.is_some()
    }

    /// Why the instance died, if it did.
    pub fn death(&self) -> Option<&str> {
        self.death.as_deref()
    }

    /// The version of `quiesce:plugin` the instance speaks (None once dead).
    pub fn wit_version(&self) -> Option<WitVersion> {
        self.live.as_ref().map(|l| match l.bindings {
            Bindings::V0_1_0(_) => WitVersion::V0_1_0,
            Bindings::V0_2_0(_) => WitVersion::V0_2_0,
        })
    }

    /// The pre hook. `Retryable` leaves the instance alive for another attempt.
    pub async fn pre(&mut self, ctx: &CallContext) -> CallOutcome {
        match self.invoke(Call::Pre(ctx)).await {
            Ok(Returned::Hook(o)) => o,
            Ok(_) => CallOutcome::Trapped("internal: pre returned something else than a hook result".into()),
            Err(o) => o,
        }
    }

    /// The post hook, told what became of the snapshot. See
    /// [`post_outcome`](Self::post_outcome) for whether the quiesce held.
    pub async fn post(&mut self, ctx: &CallContext, snapshot: &SnapshotOutcome) -> CallOutcome {
        self.post_outcome(ctx, snapshot).await.outcome
    }

    /// The post hook, and whether the plugin says the application's quiesce
    /// held through the snapshot (a 0.1.0 plugin cannot say; it counts as held).
    pub async fn post_outcome(&mut self, ctx: &CallContext, snapshot: &SnapshotOutcome) -> PostOutcome {
        match self.invoke(Call::Post(ctx, snapshot)).await {
            Ok(Returned::Post(p)) => p,
            Ok(_) => PostOutcome { outcome: CallOutcome::Trapped("internal: post returned something else".into()), not_held: None },
            Err(outcome) => PostOutcome { outcome, not_held: None },
        }
    }

    /// The plugin's `check` (0.2.0 and later): what it verified and found
    /// wrong, changing nothing. `Err` when the call failed (trap, timeout)
    /// or the plugin speaks a version without `check`
    /// ([`CallOutcome::Fatal`] saying so).
    pub async fn check(&mut self, ctx: &CallContext) -> Result<Vec<Finding>, CallOutcome> {
        match self.invoke(Call::Check(ctx)).await? {
            Returned::Findings(f) => Ok(f),
            _ => Err(CallOutcome::Trapped("internal: check returned something else than findings".into())),
        }
    }

    pub(crate) async fn describe(&mut self) -> Result<PluginInfo, CallOutcome> {
        match self.invoke(Call::Describe).await? {
            Returned::Info(i) => Ok(i),
            _ => Err(CallOutcome::Trapped("internal: describe returned something else than plugin info".into())),
        }
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
        if let (Call::Check(_), Bindings::V0_1_0(_)) = (&call, &live.bindings) {
            return Err(CallOutcome::Fatal(format!(
                "the plugin speaks quiesce:plugin@{}, which has no check (rebuild it against quiesce-plugin-sdk {} or later)",
                WitVersion::V0_1_0,
                WitVersion::V0_2_0
            )));
        }
        let timeout = self.call_timeout;
        let cap = live.store.data().output_cap;
        let started = Instant::now();
        live.store.data_mut().deadline = Some(crate::duration::deadline(started, timeout));
        live.store.set_epoch_deadline(1);
        let running = self.ticker.guest_running();

        let deadline_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let params = &self.params;
        let fut = async {
            match &live.bindings {
                Bindings::V0_1_0(b) => call_v0_1_0(b, &mut live.store, call, deadline_ms, params, cap).await,
                Bindings::V0_2_0(b) => call_v0_2_0(b, &mut live.store, call, deadline_ms, params, cap).await,
            }
        };
        let result = tokio::time::timeout(timeout, fut).await;
        drop(running);

        let data = live.store.data_mut();
        data.deadline = None;
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

/// `call_vX_Y_Z`: one call into a plugin of that version, its answer in the
/// host's terms. What every version shares (the context record, the
/// hook-result, `describe`, `pre`) is written here once; each version adds
/// its arms for `post` and `check`, with the names given.
macro_rules! version_call {
    ($name:ident, $v:ident, |$wit:ident, $hooks:ident, $store:ident, $ctx_of:ident, $outcome:ident, $cap:ident| { $($arms:tt)* }) => {
        async fn $name(
            b: &$v::QuiescePlugin,
            $store: &mut Store<HostState>,
            call: Call<'_>,
            deadline_ms: u64,
            params: &[(String, String)],
            $cap: usize,
        ) -> wasmtime::Result<Returned> {
            use $v::quiesce::plugin::types as $wit;
            let $ctx_of = |c: &CallContext| $wit::HookContext {
                session_id: c.session_id.clone(),
                attempt: c.attempt,
                deadline_ms,
                params: params.to_vec(),
            };
            let $outcome = |r: $wit::HookResult| match r {
                $wit::HookResult::Ok(m) => hook_outcome(HookAnswer::Ok(m), $cap),
                $wit::HookResult::Retryable(m) => hook_outcome(HookAnswer::Retryable(m), $cap),
                $wit::HookResult::Fatal(m) => hook_outcome(HookAnswer::Fatal(m), $cap),
            };
            let $hooks = b.quiesce_plugin_hooks();
            Ok(match call {
                Call::Describe => {
                    let i = $hooks.call_describe($store).await?;
                    let params = i.params.into_iter().map(|p| (p.name, p.description, p.required, p.default)).collect();
                    Returned::Info(plugin_info(i.name, i.version, i.quiesces, i.grants, params))
                }
                Call::Pre(c) => Returned::Hook($outcome($hooks.call_pre($store, &$ctx_of(c)).await?)),
                $($arms)*
            })
        }
    };
}

version_call!(call_v0_1_0, v0_1_0, |wit, hooks, store, ctx_of, outcome, cap| {
    Call::Post(c, s) => {
        let snap = wit::SnapshotOutcome { taken: s.taken, label: label_name(s.label) };
        Returned::Post(PostOutcome { outcome: outcome(hooks.call_post(store, &ctx_of(c), &snap).await?), not_held: None })
    }
    // Refused before the call (the version has no `check`).
    Call::Check(_) => return Err(wasmtime::format_err!("quiesce:plugin@0.1.0 has no check")),
});

version_call!(call_v0_2_0, v0_2_0, |wit, hooks, store, ctx_of, outcome, cap| {
    Call::Post(c, s) => {
        let label = match s.label {
            Consistency::AppConsistent => wit::Consistency::AppConsistent,
            Consistency::FileSystemConsistent => wit::Consistency::FileSystemConsistent,
            Consistency::CrashConsistent => wit::Consistency::CrashConsistent,
            Consistency::None => wit::Consistency::None,
        };
        let r = hooks.call_post(store, &ctx_of(c), wit::SnapshotOutcome { taken: s.taken, label }).await?;
        let not_held = (!r.held).then(|| {
            let why = if r.why_not_held.trim().is_empty() { "the plugin gave no reason".to_owned() } else { r.why_not_held };
            truncate_message(why, cap)
        });
        Returned::Post(PostOutcome { outcome: outcome(r.outcome), not_held })
    }
    Call::Check(c) => {
        let found = hooks.call_check(store, &ctx_of(c)).await?;
        let dropped = found.len().saturating_sub(MAX_FINDINGS);
        let mut findings: Vec<Finding> = found
            .into_iter()
            .take(MAX_FINDINGS)
            .map(|f| {
                let severity = match f.severity {
                    wit::Severity::Passed => Severity::Passed,
                    wit::Severity::Info => Severity::Info,
                    wit::Severity::Warning => Severity::Warning,
                    wit::Severity::Error => Severity::Error,
                };
                finding(severity, &f.code, f.message)
            })
            .collect();
        if dropped > 0 {
            let more = format!("{dropped} more findings dropped (only {MAX_FINDINGS} are kept)");
            findings.push(finding(Severity::Warning, "TooManyFindings", more));
        }
        Returned::Findings(findings)
    }
});

/// `hook-result`, the same in every version.
enum HookAnswer {
    Ok(String),
    Retryable(String),
    Fatal(String),
}

/// The plugin's answer, its message cut to the output cap: it goes into the
/// report, the log and stderr (uncapped, 100 MB reports were produced).
/// The guest's memory limit bounds the copy wasmtime makes before this.
fn hook_outcome(r: HookAnswer, cap: usize) -> CallOutcome {
    let cut = |m: String| truncate_message(m, cap);
    match r {
        HookAnswer::Ok(m) => CallOutcome::Ok(cut(m)),
        HookAnswer::Retryable(m) => CallOutcome::Retryable(cut(m)),
        HookAnswer::Fatal(m) => CallOutcome::Fatal(cut(m)),
    }
}

/// A finding as people will read it: the code letters and digits only (it
/// is searched for, and must not carry escape sequences to a terminal), the
/// message one line without control characters, both bounded.
fn finding(severity: Severity, code: &str, message: String) -> Finding {
    let mut code: String = code.chars().filter(char::is_ascii_alphanumeric).take(MAX_FINDING_CODE).collect();
    if code.is_empty() {
        code = "Unnamed".into();
    }
    let message: String = message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    Finding { severity, code, message: truncate_message(message, MAX_INFO_STRING) }
}

/// What `describe` returned, within the output cap: each string cut to
/// [`MAX_INFO_STRING`], at most [`MAX_INFO_ITEMS`] grants and params.
fn plugin_info(
    name: String,
    version: String,
    quiesces: String,
    grants: Vec<String>,
    params: Vec<(String, String, bool, Option<String>)>,
) -> PluginInfo {
    let cut = |m: String| truncate_message(m, MAX_INFO_STRING);
    PluginInfo {
        name: cut(name),
        version: cut(version),
        quiesces: cut(quiesces),
        grants: grants.into_iter().take(MAX_INFO_ITEMS).map(cut).collect(),
        params: params
            .into_iter()
            .take(MAX_INFO_ITEMS)
            .map(|(name, description, required, default)| ParamDoc {
                name: cut(name),
                description: cut(description),
                required,
                default: default.map(cut),
            })
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
        let snap = SnapshotOutcome { taken: true, label: Consistency::AppConsistent };
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
