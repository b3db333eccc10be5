//! The session slot: the one session the service may hold, run by one
//! worker thread that owns it.
//!
//! Connections never touch a session directly. They send [`Job`]s to the
//! worker and wait for its answer; the worker runs begin and end in order,
//! ends a session whose hold deadline passed, aborts one whose bound
//! connection closed, and reloads the config. What `status` and
//! `last-report` show, and whether the slot is taken, lives in [`Shared`]
//! behind a plain mutex that is never held across an await — so a slow
//! session (a pre hook taking its minute) never delays another client's
//! `status`, and a second `begin` is refused at once.
//!
//! The worker keeps the WebAssembly engine (and through it every plugin it
//! loaded, see `WasmEngine::load`) for the service's life: a session's
//! plugins are neither read nor compiled again while their files are unchanged.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

use super::protocol::{BeginArgs, Code, EndArgs, Failure, Target};
use crate::config::{Config, ConfigError, HookBody};
use crate::freeze;
use crate::hooks::wasm::WasmEngine;
use crate::interrupt::Interrupt;
use crate::report::{ErrorCode, Report};
use crate::rundir::unix_ms;
use crate::session::{self, Abort, BeginOptions, Begun, FreezeMode, Session, SessionOptions, SnapshotOutcome};

pub(super) type Reply = oneshot::Sender<Result<Map<String, Value>, Failure>>;

/// What a connection asks of the worker.
pub(super) enum Job {
    /// The slot was claimed (see [`Shared::claim`]) before this was sent.
    Begin {
        args: BeginArgs,
        conn: u64,
        /// The peer's uid: root, or a member of `[service] group`.
        uid: u32,
        reply: Reply,
    },
    End {
        args: EndArgs,
        uid: u32,
        reply: Reply,
    },
    Abort {
        target: Target,
        uid: u32,
        reply: Reply,
    },
    /// Connection `conn` closed: abort the session bound to it, if any.
    Disconnected {
        conn: u64,
    },
    /// The reply to the `begin` that began `session_id` could not be
    /// written: its client is gone without learning the session began.
    Undelivered {
        session_id: String,
        uid: u32,
    },
    /// SIGHUP; `done` hears when the new config (or the kept one) is in use.
    Reload {
        done: oneshot::Sender<()>,
    },
}

/// What connections may read without asking the worker.
#[derive(Default)]
pub(super) struct Shared {
    /// A begin is queued or running, or a session is begun.
    claimed: bool,
    session: Option<SessionView>,
    last_session_id: Option<String>,
    /// `{"report":..,"exit_code":..}` of the last session that ended.
    last_report: Option<Map<String, Value>>,
    pub config_generation: u64,
    pub config_path: Option<PathBuf>,
    /// Why the last load or reload failed, if it did.
    pub config_error: Option<String>,
    /// The group allowed besides root (resolved from `[service] group`).
    pub gid: Option<u32>,
    pub group: Option<String>,
    /// `[service] socket` of the config in use.
    pub socket: Option<PathBuf>,
    /// `[service] idle_timeout_secs` of the config in use.
    pub idle_timeout: Duration,
    /// What a `begin` may ask, from the config in use; None while it failed
    /// to load (each `begin` then loads it afresh and is checked then).
    rules: Option<BeginRules>,
}

/// What the config in use lets a `begin` ask: checked in the connection's
/// task before the slot is claimed, so that a member's refused requests
/// never hold the slot against root's `begin` (see [`Shared::may_begin`]).
struct BeginRules {
    /// `[freeze] mounts` (when freezing is enabled).
    freeze_mounts: Vec<PathBuf>,
    external_hold: Duration,
}

impl BeginRules {
    fn of(config: Option<&Config>) -> BeginRules {
        match config {
            Some(c) => BeginRules {
                freeze_mounts: if c.freeze.enabled { c.freeze.mounts.clone() } else { Vec::new() },
                external_hold: c.service.external_hold,
            },
            None => BeginRules { freeze_mounts: Vec::new(), external_hold: crate::config::DEFAULT_EXTERNAL_HOLD },
        }
    }

    /// Whether uid `uid` may `begin` with `args`: a native freeze names what
    /// to freeze, and a member of `[service] group` stays within what root
    /// chose (see [`group_may_freeze`], [`group_may_hold`]).
    fn check(&self, args: &BeginArgs, uid: u32) -> Result<(), Failure> {
        if args.freeze == FreezeMode::Native && args.mounts.is_empty() && self.freeze_mounts.is_empty() {
            return Err(Failure::new(
                Code::BadRequest,
                "a native freeze needs `mounts` (or `[freeze] mounts` in the config): the service never freezes \
                 every file system by default",
            ));
        }
        if uid != 0 {
            if args.freeze == FreezeMode::Native {
                group_may_freeze(&args.mounts, &self.freeze_mounts)?;
            }
            group_may_hold(args, self.external_hold)?;
        }
        Ok(())
    }
}

pub(super) type SharedRef = Arc<Mutex<Shared>>;

pub(super) fn lock(shared: &SharedRef) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Takes the slot for a `begin`, or says who has it.
    pub fn claim(&mut self) -> Result<(), Failure> {
        if self.claimed {
            let who = match &self.session {
                Some(s) => format!("session {} is {}", s.session_id, s.phase.as_str()),
                None => "another begin is starting".into(),
            };
            return Err(Failure::new(
                Code::Report(ErrorCode::BackupOperationInProgress),
                format!("{who}; one session at a time: end or abort it first"),
            ));
        }
        self.claimed = true;
        Ok(())
    }

    pub fn release(&mut self) {
        self.claimed = false;
        self.session = None;
    }

    /// Whether uid `uid` may `begin` with `args` under the config in use
    /// ([`BeginRules::check`]); with none in use, the worker checks.
    pub fn may_begin(&self, args: &BeginArgs, uid: u32) -> Result<(), Failure> {
        self.rules.as_ref().map_or(Ok(()), |rules| rules.check(args, uid))
    }

    pub fn status(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("session".into(), serde_json::to_value(&self.session).unwrap_or(Value::Null));
        m.insert("last_session_id".into(), json!(self.last_session_id));
        m.insert("config_generation".into(), json!(self.config_generation));
        m.insert("config_error".into(), json!(self.config_error));
        m
    }

    /// An `end` or `abort` without a session id means the session begun when
    /// it was sent, not whichever is begun when the worker gets to it: queued
    /// behind another client's `begin`, it would end that session the moment
    /// its pre hooks were done. So the id is filled in here, and a session
    /// still in its pre hooks (its `begin` not yet answered) is not ended by
    /// guess. Nor is another user's: without an id, a client ends only a
    /// session its own uid began — a tag is a name anyone may give, and
    /// root's Azure post script must not end a member's session tagged
    /// `azure` after root's own pre script was refused.
    pub fn pin(&self, target: &mut Target, uid: u32) -> Result<(), Failure> {
        if target.session_id.is_some() {
            return Ok(());
        }
        let s = self.session.as_ref().ok_or_else(|| Failure::new(Code::UnknownSession, "no session is begun"))?;
        let id = s.session_id.as_str();
        check_target(target, id, s.tag.as_deref())?;
        if s.owner_uid != uid {
            let code = if uid == 0 { Code::UnknownSession } else { Code::NotAuthorized };
            return Err(Failure::new(
                code,
                format!(
                    "the begun session {id} was begun by uid {}: without a session_id, `end` and `abort` name only the \
                     caller's own session{}",
                    s.owner_uid,
                    if uid == 0 { "; name it by its session_id to end it" } else { "" }
                ),
            ));
        }
        if s.phase == ViewPhase::Pre {
            return Err(Failure::new(
                Code::UnknownSession,
                format!("session {id} is still beginning (its pre hooks run): end or abort it by its id once its begin has answered"),
            ));
        }
        target.session_id = Some(id.to_string());
        Ok(())
    }

    /// Whether session `id` is the one begun (or beginning) now.
    pub fn is_current(&self, id: &str) -> bool {
        self.session.as_ref().is_some_and(|s| s.session_id == id)
    }

    pub fn last_report(&self) -> Option<Map<String, Value>> {
        self.last_report.clone()
    }
}

/// What `status` shows of the service's session.
#[derive(Clone, serde::Serialize)]
struct SessionView {
    session_id: String,
    mode: FreezeMode,
    tag: Option<String>,
    owner_uid: u32,
    phase: ViewPhase,
    frozen: Vec<PathBuf>,
    begun_unix_ms: u128,
    /// Once begun.
    deadline_unix_ms: Option<u128>,
}

#[derive(Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum ViewPhase {
    /// Its `begin` runs: the pre hooks (and the freeze).
    Pre,
    /// Begun, nothing frozen by quiesce.
    Begun,
    /// Begun, quiesce holds its mounts frozen.
    Frozen,
    /// Ending: thaw, post hooks, report.
    Post,
}

impl ViewPhase {
    fn as_str(self) -> &'static str {
        match self {
            ViewPhase::Pre => "pre",
            ViewPhase::Begun => "begun",
            ViewPhase::Frozen => "frozen",
            ViewPhase::Post => "post",
        }
    }
}

/// The begun session the worker holds.
struct Current {
    begun: Begun,
    id: String,
    deadline: tokio::time::Instant,
    hold: Duration,
    /// The connection it is bound to (`bind: true`).
    bound: Option<u64>,
    /// `begin`'s tag, and the uid that began it: see [`Worker::take`].
    tag: Option<String>,
    owner: u32,
}

pub(super) struct Worker {
    shared: SharedRef,
    config_path: Option<PathBuf>,
    config: Result<Config, ConfigError>,
    engine: Option<WasmEngine>,
    /// Fires when the service is told to stop; every session gets it.
    interrupt: Interrupt,
    current: Option<Current>,
    /// The next session's freeze guardian, forked on a thread of its own
    /// while no session is begun (see [`freeze::Spare`]).
    spare: Option<std::thread::JoinHandle<Result<freeze::Spare, freeze::FreezeError>>>,
    /// Configs loaded by reload threads (see [`Worker::reload`]), numbered
    /// in the order the reloads were asked for.
    loads: (mpsc::UnboundedSender<Reloaded>, mpsc::UnboundedReceiver<Reloaded>),
    reloads_asked: u64,
    reloads_installed: u64,
}

/// A reload's number, its config, and who waits until it is in use.
type Reloaded = (u64, Loaded, oneshot::Sender<()>);

/// A config loaded, with what taking it into use needs that may block:
/// its group looked up (NSS: LDAP may take seconds), the WebAssembly
/// engine started (it creates its cache directory).
struct Loaded {
    config: Result<Config, ConfigError>,
    group: (Option<u32>, Option<String>),
    engine: Option<WasmEngine>,
}

impl Loaded {
    /// `engine`: the one in use, if any (a new one only if the config names
    /// a plugin and there is none yet).
    fn load(config_path: Option<&std::path::Path>, engine: Option<WasmEngine>) -> Loaded {
        let config = session::load_config(config_path);
        let group = resolve_group(config.as_ref().ok().and_then(|c| c.service.group.as_deref()));
        let engine = engine.or_else(|| start_engine(&config));
        Loaded { config, group, engine }
    }

    /// Compiles (or finds cached) every plugin the config names, so that
    /// the first session finds them warm.
    fn warm(engine: &WasmEngine, paths: &[PathBuf]) {
        for path in paths {
            match engine.load(path) {
                Ok(pl) => tracing::info!("plugin {} ready ({:?})", path.display(), pl.cache_status()),
                Err(e) => tracing::warn!("plugin {} cannot be loaded (sessions will report it): {e}", path.display()),
            }
        }
    }
}

/// A WebAssembly engine, if `config` names a plugin.
fn start_engine(config: &Result<Config, ConfigError>) -> Option<WasmEngine> {
    if plugin_paths(config).is_empty() {
        return None;
    }
    WasmEngine::new(&session::cache_dir_from_env()).map_err(|e| tracing::error!("cannot start the WebAssembly runtime: {e}")).ok()
}

fn plugin_paths(config: &Result<Config, ConfigError>) -> Vec<PathBuf> {
    let Ok(c) = config else { return Vec::new() };
    c.hooks.iter().filter_map(|h| if let HookBody::Plugin(p) = &h.body { Some(p.path.clone()) } else { None }).collect()
}

impl Worker {
    /// Loads the config and warms its plugins here: before the socket
    /// listens, no session can wait for it.
    pub fn new(shared: SharedRef, config_path: Option<PathBuf>, interrupt: Interrupt) -> Worker {
        let loaded = Loaded::load(config_path.as_deref(), None);
        let paths = plugin_paths(&loaded.config);
        let mut w = Worker {
            shared,
            config_path,
            config: Ok(Config::builtin()),
            engine: None,
            interrupt,
            current: None,
            spare: None,
            loads: mpsc::unbounded_channel(),
            reloads_asked: 0,
            reloads_installed: 0,
        };
        w.install(loaded, true);
        if let Some(engine) = &w.engine {
            Loaded::warm(engine, &paths);
        }
        w
    }

    /// Runs jobs until the service stops; then aborts what is begun.
    pub async fn run(mut self, mut jobs: mpsc::UnboundedReceiver<Job>) {
        let mut interrupt = self.interrupt.clone();
        loop {
            // A spare only while a session may freeze: none while the config
            // turns freezing off (a reload that does ends the one it had).
            if self.current.is_none() {
                let may_freeze = !matches!(&self.config, Ok(c) if !c.freeze.enabled);
                if !may_freeze {
                    drop(self.take_spare());
                } else if self.spare.is_none() {
                    self.spare = Some(std::thread::spawn(|| freeze::Spare::fork(freeze::SPARE_CAPACITY)));
                }
            }
            let deadline = self.current.as_ref().map(|c| c.deadline);
            // In this order: once the service is told to stop, no queued job
            // runs (a queued `begin` would start a session, a queued `end`
            // would be reported interrupted); a hold that ran out is ended
            // before any queued job, which a flood of them must not delay.
            let job = tokio::select! {
                biased;
                why = interrupt.wait() => {
                    tracing::warn!("{why}: the service stops");
                    None
                }
                () = sleep_until(deadline) => {
                    self.expire().await;
                    continue;
                }
                Some((n, loaded, done)) = self.loads.1.recv() => {
                    // Reload threads may finish out of order: the newest asked wins.
                    if n > self.reloads_installed {
                        self.reloads_installed = n;
                        self.install(loaded, false);
                    }
                    let _ = done.send(());
                    continue;
                }
                job = jobs.recv() => job,
            };
            let Some(job) = job else { break };
            match job {
                Job::Begin { args, conn, uid, reply } => {
                    let r = self.begin(args, conn, uid).await;
                    // Refused, or ended at once (proceed = false): the slot is free again.
                    if self.current.is_none() {
                        lock(&self.shared).release();
                    }
                    let _ = reply.send(r);
                }
                Job::End { args, uid, reply } => {
                    let r = self.end(args, uid).await;
                    let _ = reply.send(r);
                }
                Job::Abort { target, uid, reply } => {
                    let r = match self.take(Some((&target, uid))) {
                        Ok(c) => Ok(self.finish(c, Ending::Abort(Abort::Client("`abort` requested".into()))).await),
                        Err(f) => Err(f),
                    };
                    let _ = reply.send(r);
                }
                Job::Disconnected { conn } => {
                    if self.current.as_ref().is_some_and(|c| c.bound == Some(conn)) {
                        if let Ok(c) = self.take(None) {
                            self.finish(c, Ending::Abort(Abort::Disconnected)).await;
                        }
                    }
                }
                Job::Undelivered { session_id, uid } => {
                    let target = Target { session_id: Some(session_id), tag: None };
                    // Already ended (by the hold, or an `end` by tag): nothing to do.
                    if let Ok(c) = self.take(Some((&target, uid))) {
                        self.finish(c, Ending::Abort(Abort::Undelivered)).await;
                    }
                }
                Job::Reload { done } => self.reload(done),
            }
        }
        if let Ok(c) = self.take(None) {
            self.finish(c, Ending::Abort(Abort::Interrupted)).await;
        }
    }

    /// `args` passed [`Shared::may_begin`] before the slot was claimed.
    async fn begin(&mut self, args: BeginArgs, conn: u64, uid: u32) -> Result<Map<String, Value>, Failure> {
        if self.current.is_some() {
            // Claimed slots make this unreachable; kept as a guard.
            return Err(Failure::new(Code::Report(ErrorCode::BackupOperationInProgress), "a session is already begun"));
        }
        let config = match &self.config {
            Ok(c) => Ok(c.clone()),
            Err(_) => {
                // Loaded afresh, so checked here (the connection could not).
                let config = session::load_config(self.config_path.as_deref());
                BeginRules::of(config.as_ref().ok()).check(&args, uid)?;
                config
            }
        };
        let external_hold = config.as_ref().map(|c| c.service.external_hold).unwrap_or(crate::config::DEFAULT_EXTERNAL_HOLD);
        let opts = SessionOptions {
            mounts: args.mounts.clone(),
            engine: self.engine(&config),
            spare_guardian: if args.freeze == FreezeMode::Native { self.take_spare() } else { None },
            ..Default::default()
        };
        let session = Session::prepare(config, opts).map_err(|e| Failure::new(Code::BadRequest, e.to_string()))?;
        let id = session.id().to_string();
        let max_freeze = session.max_freeze();
        self.set_status(&id, &args, uid, ViewPhase::Pre, &[], (unix_ms(), None));
        let begun = session.begin(BeginOptions { freeze: args.freeze }, self.interrupt.clone()).await;
        if !begun.holds_lock() {
            // Refused before anything ran (another session holds the run-dir lock).
            let errors = begun.errors().to_vec();
            drop(begun.end(SnapshotOutcome::default()).await);
            let e = errors.into_iter().next();
            return Err(match e {
                Some(e) => Failure::new(Code::Report(e.code), e.message),
                None => Failure::new(Code::Report(ErrorCode::BackupOperationInProgress), "the session lock is taken"),
            });
        }
        let mut reply = Map::new();
        reply.insert("session_id".into(), json!(id));
        reply.insert("mode".into(), json!(args.freeze));
        reply.insert("frozen".into(), json!(begun.frozen()));
        reply.insert("proceed".into(), json!(begun.proceed()));
        reply.insert("errors".into(), json!(begun.errors()));
        if !begun.proceed() {
            let report = begun.end(SnapshotOutcome::default()).await;
            reply.insert("deadline_unix_ms".into(), Value::Null);
            reply.extend(self.keep_report(&report));
            return Ok(reply);
        }
        let hold = match args.freeze {
            // The guardian thaws at max-freeze anyway.
            FreezeMode::Native => args.hold.unwrap_or(max_freeze).min(max_freeze),
            FreezeMode::External | FreezeMode::None => args.hold.unwrap_or(external_hold),
        };
        let deadline_unix_ms = unix_ms().saturating_add(hold.as_millis());
        reply.insert("deadline_unix_ms".into(), json!(deadline_unix_ms));
        let frozen = begun.frozen();
        let phase = if frozen.is_empty() { ViewPhase::Begun } else { ViewPhase::Frozen };
        self.set_status(&id, &args, uid, phase, &frozen, (begun.begun_unix_ms(), Some(deadline_unix_ms)));
        tracing::info!(
            "session {id} begun ({}, hold {:.3} s{})",
            args.freeze.as_str(),
            hold.as_secs_f64(),
            if args.bind { ", bound" } else { "" }
        );
        self.current = Some(Current {
            begun,
            id,
            deadline: crate::duration::deadline_tokio(tokio::time::Instant::now(), hold),
            hold,
            bound: args.bind.then_some(conn),
            tag: args.tag.clone(),
            owner: uid,
        });
        Ok(reply)
    }

    async fn end(&mut self, args: EndArgs, uid: u32) -> Result<Map<String, Value>, Failure> {
        let c = self.take(Some((&args.target, uid)))?;
        let outcome = SnapshotOutcome { taken: args.taken, ids: args.snapshot_id.into_iter().collect() };
        Ok(self.finish(c, Ending::End(outcome)).await)
    }

    async fn expire(&mut self) {
        if let Ok(c) = self.take(None) {
            let hold_secs = c.hold.as_secs_f64();
            self.finish(c, Ending::Abort(Abort::HoldExpired { hold_secs })).await;
        }
    }

    /// The begun session, for the service itself (None: expiry, a bound
    /// connection's end, the service stopping), or for a client's `end` or
    /// `abort`: only when its target names that session (its id, its tag) —
    /// one agent's `end` never ends another agent's session — and the client
    /// is root or the uid that began it.
    fn take(&mut self, asked: Option<(&Target, u32)>) -> Result<Current, Failure> {
        let Some(c) = &self.current else { return Err(Failure::new(Code::UnknownSession, "no session is begun")) };
        if let Some((target, uid)) = asked {
            check_target(target, &c.id, c.tag.as_deref())?;
            if uid != 0 && uid != c.owner {
                return Err(Failure::new(
                    Code::NotAuthorized,
                    format!("session {} was begun by uid {}: only that user or root may end or abort it", c.id, c.owner),
                ));
            }
        }
        self.current.take().ok_or_else(|| Failure::new(Code::UnknownSession, "no session is begun"))
    }

    /// Ends a taken session (end, abort, expiry, disconnect), keeps its
    /// report and frees the slot.
    async fn finish(&mut self, c: Current, how: Ending) -> Map<String, Value> {
        if let Some(s) = lock(&self.shared).session.as_mut() {
            s.phase = ViewPhase::Post;
        }
        let report = match how {
            Ending::End(outcome) => c.begun.end(outcome).await,
            Ending::Abort(why) => c.begun.abort(why).await,
        };
        let reply = self.keep_report(&report);
        lock(&self.shared).release();
        reply
    }

    /// Records the report as the last one; the `{report, exit_code}` reply.
    fn keep_report(&self, report: &Report) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("report".into(), serde_json::to_value(report).unwrap_or(Value::Null));
        m.insert("exit_code".into(), json!(report.exit_code()));
        let mut shared = lock(&self.shared);
        shared.last_session_id = Some(report.session_id.clone());
        shared.last_report = Some(m.clone());
        m
    }

    /// `times`: when it began, and its deadline once begun (Unix ms).
    fn set_status(&self, id: &str, args: &BeginArgs, uid: u32, phase: ViewPhase, frozen: &[PathBuf], times: (u128, Option<u128>)) {
        let (begun_unix_ms, deadline_unix_ms) = times;
        let view = SessionView {
            session_id: id.to_string(),
            mode: args.freeze,
            tag: args.tag.clone(),
            owner_uid: uid,
            phase,
            frozen: frozen.to_vec(),
            begun_unix_ms,
            deadline_unix_ms,
        };
        lock(&self.shared).session = Some(view);
    }

    /// The shared engine, started when a config first names a plugin.
    fn engine(&mut self, config: &Result<Config, ConfigError>) -> Option<WasmEngine> {
        if self.engine.is_none() {
            self.engine = start_engine(config);
        }
        self.engine.clone()
    }

    /// The spare guardian, once its fork is done; None if it failed (the
    /// session forks its own, and says why if that fails too).
    fn take_spare(&mut self) -> Option<freeze::Spare> {
        match self.spare.take()?.join() {
            Ok(Ok(spare)) => Some(spare),
            Ok(Err(e)) => {
                tracing::warn!("could not fork a spare freeze guardian: {e}");
                None
            }
            Err(_) => None,
        }
    }

    /// Loads the config again on a thread of its own, which hands it back
    /// to this one to take into use and then compiles its plugins. This
    /// thread must meanwhile end a begun session — thaw a frozen one — the
    /// moment its `end` or hold deadline comes: a group lookup, the engine's
    /// start (a directory made, maybe on the frozen file system) and seconds
    /// of compiling would all hold it up. A session that starts while a
    /// plugin is still compiling loads it itself (the engine is shared).
    fn reload(&mut self, done: oneshot::Sender<()>) {
        self.reloads_asked += 1;
        let n = self.reloads_asked;
        let (path, engine, loads) = (self.config_path.clone(), self.engine.clone(), self.loads.0.clone());
        let reload = move || {
            let loaded = Loaded::load(path.as_deref(), engine);
            let warm = loaded.engine.clone().map(|e| (e, plugin_paths(&loaded.config)));
            let _ = loads.send((n, loaded, done));
            if let Some((engine, paths)) = warm {
                Loaded::warm(&engine, &paths);
            }
        };
        if let Err(e) = std::thread::Builder::new().name("quiesce-reload".into()).spawn(reload) {
            tracing::error!("cannot start a thread to reload the config ({e}): the config in use stays");
        }
    }

    /// Takes a loaded config into use — unless it failed and the one in
    /// use is good: then the old one stays and the failure is logged.
    fn install(&mut self, loaded: Loaded, first: bool) {
        let Loaded { config, group: (gid, group), engine } = loaded;
        if self.engine.is_none() {
            self.engine = engine;
        }
        let shown = self.config_path.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in default".into());
        // Logged with the shared state unlocked: a log write may be slow.
        match config {
            Ok(c) => {
                let generation = {
                    let mut shared = lock(&self.shared);
                    shared.config_generation += 1;
                    shared.config_error = None;
                    shared.config_path = self.config_path.clone();
                    shared.gid = gid;
                    shared.group = group;
                    shared.socket = c.service.socket.clone();
                    shared.idle_timeout = c.service.idle_timeout;
                    shared.rules = Some(BeginRules::of(Some(&c)));
                    shared.config_generation
                };
                tracing::info!("config {shown} loaded (generation {generation})");
                self.config = Ok(c);
            }
            Err(e) => {
                let msg = e.to_string();
                let keep = self.config.is_ok() && !first;
                let generation = {
                    let mut shared = lock(&self.shared);
                    shared.config_error = Some(msg.clone());
                    if !keep {
                        shared.config_generation += 1;
                        shared.idle_timeout = crate::config::DEFAULT_IDLE_TIMEOUT;
                        shared.rules = None;
                    }
                    shared.config_generation
                };
                if keep {
                    tracing::error!("config {shown} failed to load, keeping the one in use (generation {generation}): {msg}");
                } else {
                    tracing::error!("config {shown} failed to load; sessions will report it: {msg}");
                    self.config = Err(e);
                }
            }
        }
    }
}

/// A member of `[service] group` runs the configured hooks, but freezes only
/// what root chose in `[freeze] mounts` (a freeze of `/` stalls the whole
/// machine until max-freeze): the mounts it names must be among them,
/// spelled as the config spells them.
fn group_may_freeze(mounts: &[PathBuf], allowed: &[PathBuf]) -> Result<(), Failure> {
    let refused: Vec<String> = mounts.iter().filter(|m| !allowed.contains(m)).map(|m| m.display().to_string()).collect();
    if allowed.is_empty() || !refused.is_empty() {
        let what = if refused.is_empty() { "a native freeze".to_string() } else { format!("freezing {}", refused.join(", ")) };
        return Err(Failure::new(
            Code::NotAuthorized,
            format!(
                "{what} is for root: a member of [service] group may natively freeze only the config's `[freeze] mounts` ({}); \
                 add the mount there, or use freeze \"external\"/\"none\"",
                if allowed.is_empty() {
                    "none listed".into()
                } else {
                    allowed.iter().map(|m| m.display().to_string()).collect::<Vec<_>>().join(", ")
                }
            ),
        ));
    }
    Ok(())
}

/// Whether `target` names the session `id` with `tag`: by its id, or
/// without one by its tag (no tag names an untagged session), so that one
/// agent's `end` never ends another agent's session.
fn check_target(target: &Target, id: &str, tag: Option<&str>) -> Result<(), Failure> {
    if let Some(asked) = target.session_id.as_deref().filter(|asked| *asked != id) {
        let shown: String = asked.chars().take(80).collect();
        return Err(Failure::new(Code::UnknownSession, format!("session {shown:?} is not the begun session")));
    }
    if (target.session_id.is_none() || target.tag.is_some()) && target.tag.as_deref() != tag {
        let of = |t: Option<&str>| t.map_or("no tag".to_string(), |t| format!("tag {t:?}"));
        return Err(Failure::new(
            Code::UnknownSession,
            format!("the begun session {id} has {}, not {}: it is another agent's", of(tag), of(target.tag.as_deref())),
        ));
    }
    Ok(())
}

/// A member of `[service] group` names mounts only to freeze them natively
/// (elsewhere they would only let it probe root's paths), and holds a
/// session — its plugins' database locks — at most as long as the config's
/// `[service] external_hold_secs` (a native freeze is capped by `max_freeze`).
fn group_may_hold(args: &BeginArgs, external_hold: Duration) -> Result<(), Failure> {
    if args.freeze != FreezeMode::Native && !args.mounts.is_empty() {
        return Err(Failure::new(
            Code::NotAuthorized,
            format!("`mounts` with freeze {:?} are for root: quiesce freezes nothing in that mode; leave them out", args.freeze.as_str()),
        ));
    }
    match args.hold {
        Some(h) if args.freeze != FreezeMode::Native && h > external_hold => Err(Failure::new(
            Code::NotAuthorized,
            format!(
                "a member of [service] group holds a session at most [service] external_hold_secs ({} s), not {} s: \
                 ask for less, or have root raise external_hold_secs",
                external_hold.as_secs_f64(),
                h.as_secs_f64()
            ),
        )),
        _ => Ok(()),
    }
}

enum Ending {
    End(SnapshotOutcome),
    Abort(Abort),
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// `[service] group` as a gid; an unknown group allows nobody but root (logged).
fn resolve_group(name: Option<&str>) -> (Option<u32>, Option<String>) {
    let Some(name) = name else { return (None, None) };
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => (Some(g.gid.as_raw()), Some(name.to_string())),
        Ok(None) => {
            tracing::error!("[service] group {name:?} does not exist: only root may use the socket");
            (None, None)
        }
        Err(e) => {
            tracing::error!("[service] group {name:?} cannot be looked up ({e}): only root may use the socket");
            (None, None)
        }
    }
}
