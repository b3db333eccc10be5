//! One snapshot session, top to bottom:
//! validate → pre hooks → freeze → snapshot → thaw → post hooks → report.
//!
//! This is the only module that knows the order of the steps; each step
//! lives in its own module. Embedding it takes two calls:
//!
//! ```no_run
//! # async fn demo() {
//! use quiesce::session::{Session, SessionOptions};
//! let config = quiesce::session::load_config(None);
//! let session = Session::prepare(config, SessionOptions::default()).expect("usage");
//! let report = session.run(quiesce::interrupt::Interrupt::never()).await;
//! println!("{}", report.summary());
//! # }
//! ```

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) mod artifacts;
mod flow;
mod hooks;
mod record;
mod steps;

use crate::config::{Config, ConfigError, Format, HookBody};
use crate::duration;
use crate::freeze::{self, FreezePlan, Guardian, Selection};
use crate::hooks::wasm::{Grants, InstanceConfig, Plugin, PluginError, PluginInstance, WasmEngine, DEFAULT_CACHE_DIR};
use crate::interrupt::Interrupt;
use crate::logging;
use crate::report::{ErrorCode, MountReport, ReportError};
use crate::rundir::{unix_ms, RunDir, SessionState};
use crate::snapshot::{self, SnapshotContext, SnapshotProvider};

pub use artifacts::{state_dir_from_env, DEFAULT_STATE_DIR, STATE_DIR_ENV};
pub use flow::{Abort, BeginOptions, Begun, FreezeMode, SnapshotOutcome, MAX_SNAPSHOT_IDS, MAX_SNAPSHOT_ID_BYTES};
pub(crate) use hooks::ReadyHook;
use record::Run;

/// Where compiled plugins are cached unless `QUIESCE_CACHE_DIR` says otherwise.
pub const CACHE_DIR_ENV: &str = "QUIESCE_CACHE_DIR";

/// `$QUIESCE_CACHE_DIR`, else `/var/cache/quiesce/plugins`.
pub fn cache_dir_from_env() -> PathBuf {
    std::env::var_os(CACHE_DIR_ENV).map(PathBuf::from).unwrap_or_else(|| DEFAULT_CACHE_DIR.into())
}

/// How long a pre-session probe waits before it calls a file system frozen.
const FROZEN_PROBE_WAIT: Duration = Duration::from_millis(200);

/// Where a session is, as `quiesce status` shows it (the state file's `phase`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionPhase {
    Validating,
    Pre,
    Frozen,
    /// A two-phase session whose pre hooks ran and which froze nothing
    /// itself: waiting for the agent's snapshot and `end`.
    Begun,
    Post,
    /// The session is over, but FITHAW kept failing on some mount: it is
    /// still frozen and the guardian (holding the session lock) keeps trying.
    ThawFailed,
}

impl SessionPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionPhase::Validating => "validating",
            SessionPhase::Pre => "pre",
            SessionPhase::Frozen => "frozen",
            SessionPhase::Begun => "begun",
            SessionPhase::Post => "post",
            SessionPhase::ThawFailed => "thaw-failed",
        }
    }
}

/// What ended the wait for the snapshot provider early.
enum Cut {
    Interrupted(String),
    /// The deadline the session set for the provider.
    Deadline(Limit),
    /// The guardian thawed on its own (its deadline, a signal) meanwhile.
    GuardianThawed,
}

/// Which limit bounds the wait for the provider.
#[derive(Clone, Copy)]
enum Limit {
    /// The freeze deadline (max_freeze from the first FIFREEZE).
    Freeze,
    /// `[snapshot] timeout_secs`.
    Configured,
    /// Not frozen and nothing configured: max_freeze.
    Default,
}
/// What the caller (CLI flags, an embedding agent) adds to the config.
#[derive(Default)]
pub struct SessionOptions {
    /// Defaults to `$QUIESCE_RUN_DIR` or `/run/quiesce`.
    pub run_dir: Option<RunDir>,
    /// `--mount`: restrict freezing to these mount points (overrides the config).
    pub mounts: Vec<PathBuf>,
    /// `--max-freeze` (overrides the config).
    pub max_freeze: Option<Duration>,
    /// `--snapshot-cmd` or an embedder's own provider (overrides the config).
    pub provider: Option<Box<dyn SnapshotProvider>>,
    /// Compiled-plugin cache; defaults to `$QUIESCE_CACHE_DIR` or `/var/cache/quiesce/plugins`.
    pub cache_dir: Option<PathBuf>,
    /// Where plugins' artifacts are kept; defaults to `$QUIESCE_STATE_DIR` or `/var/lib/quiesce`.
    pub state_dir: Option<PathBuf>,
    /// A WebAssembly runtime to share (the service keeps one, with its
    /// compiled plugins, across sessions); else one is started per session
    /// when a hook needs it.
    pub engine: Option<WasmEngine>,
    /// A freeze guardian forked ahead (the service keeps one ready between
    /// sessions); else one is forked when the session freezes.
    pub spare_guardian: Option<freeze::Spare>,
}

/// A session could not even be set up: the caller's arguments are wrong.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Mounts(#[from] freeze::FreezeError),
}

/// Loads `--config FILE` (a relative path is taken from the working
/// directory), or the default config (native, then legacy), or the built-in
/// one when neither exists.
pub fn load_config(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path.map(Path::to_path_buf).or_else(Config::default_path) {
        Some(p) => Config::load(&p),
        None => Ok(Config::builtin()),
    }
}

/// The report code a config problem is known by.
pub fn config_error_code(e: &ConfigError) -> ErrorCode {
    match e {
        ConfigError::Untrusted { source, .. } if !source.is_not_found() => ErrorCode::InsufficientPermissionforConfig,
        _ => ErrorCode::IncorrectJSONConfigFile,
    }
}

pub struct Session {
    id: String,
    config: Config,
    config_path: Option<PathBuf>,
    /// The config could not be used: the error, and what the session still does.
    config_error: Option<(ReportError, Fallback)>,
    /// None when freezing is disabled.
    plan: Option<FreezePlan>,
    provider: Option<Box<dyn SnapshotProvider>>,
    max_freeze: Duration,
    /// `[snapshot] timeout_secs`.
    snapshot_timeout: Option<Duration>,
    run_dir: RunDir,
    cache_dir: PathBuf,
    state_dir: PathBuf,
    engine: Option<WasmEngine>,
    /// The config's plugins, being loaded since `prepare` (see [`Preload`]).
    preload: std::sync::Mutex<Option<Preload>>,
    spare_guardian: Option<freeze::Spare>,
    /// How long `prepare` took (the freeze plan): the report's first step.
    planned_in: Duration,
}

/// A one-shot process starts its WebAssembly engine and loads its plugins
/// (trust checks, read, cache or compile) on a thread of its own from
/// `prepare` on, while the session plans the freeze, takes its lock, checks
/// its room, syncs and starts the guardian; `validate_hooks` takes the engine
/// and what it loaded. The same load, started earlier: the checks happen on
/// the file it then uses. That thread then also makes each plugin hook's
/// instance (fresh, with the hook's grants and limits, nothing called yet),
/// which pre would otherwise make first; one that fails is made again, and
/// reported, at pre.
type Preload = std::thread::JoinHandle<Preloaded>;

#[derive(Default)]
struct Preloaded {
    engine: Option<WasmEngine>,
    loaded: Vec<(PathBuf, Result<Plugin, PluginError>)>,
    /// Instances made ahead, by hook name.
    instances: Vec<(String, PluginInstance)>,
}

/// Step 1's verdict: see [`Session::validate`].
pub(crate) struct Validation {
    pub hooks: Vec<ReadyHook>,
    /// Why the planned freeze cannot happen (empty: it can).
    pub freeze_problems: Vec<ReportError>,
}

/// What a session does when its config cannot be used. An unusable config
/// never widens what gets frozen: the legacy JSON keeps the Azure framework's
/// fall-back (no hooks, freeze every eligible file system), since that is
/// what its users rely on; a native config may have excluded mounts or
/// turned freezing off, so without `--mount` naming what to freeze nothing
/// is safe to freeze, and no snapshot is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fallback {
    /// No hooks; freeze what `--mount` names (or, for the legacy JSON, every
    /// eligible file system); file-system consistent at best.
    WithoutHooks,
    /// No hook, no freeze, no snapshot: the session only reports the error.
    NoSnapshot,
}

/// The engine and the loading of `config`'s plugins, started now on a
/// thread of their own (see [`Preload`]); nothing, if it names no plugin.
fn start_preload(config: &Config, cache_dir: &std::path::Path) -> Option<Preload> {
    let paths: Vec<PathBuf> = config
        .hooks
        .iter()
        .filter_map(|h| match &h.body {
            HookBody::Plugin(p) => Some(p.path.clone()),
            HookBody::Script { .. } => None,
        })
        .collect();
    if paths.is_empty() {
        return None;
    }
    // Hooks whose grants do not parse are refused by validation: none made for them.
    let ahead: Vec<(String, PathBuf, InstanceConfig)> = config
        .hooks
        .iter()
        .filter_map(|h| match &h.body {
            HookBody::Plugin(p) => {
                Grants::parse(&p.grants).ok().map(|g| (h.name.clone(), p.path.clone(), hooks::instance_config(h, p, &g)))
            }
            HookBody::Script { .. } => None,
        })
        .collect();
    let cache_dir = cache_dir.to_path_buf();
    // The engine too: its setup (the cache directory's trust walk and key,
    // the ticker thread) is a few hundred µs the session's thread need not wait for.
    std::thread::Builder::new()
        .name("quiesce-preload".into())
        .spawn(move || match WasmEngine::new(&cache_dir) {
            Ok(engine) => {
                let loaded: Vec<_> = paths.into_iter().map(|p| (p.clone(), engine.load(&p))).collect();
                let instances = instantiate_ahead(&loaded, ahead);
                Preloaded { engine: Some(engine), loaded, instances }
            }
            // `validate` tries again and reports why.
            Err(_) => Preloaded::default(),
        })
        .ok()
}

/// How long an instance made ahead may take; an honest one takes well under
/// a millisecond. One that does not make it is made again at pre, within the
/// hook's own timeout, so a plugin stuck in its start code costs this once more.
const AHEAD_LIMIT: Duration = Duration::from_millis(200);

/// Each hook's instance of its loaded plugin, made on the preload thread.
fn instantiate_ahead(
    loaded: &[(PathBuf, Result<Plugin, PluginError>)],
    ahead: Vec<(String, PathBuf, InstanceConfig)>,
) -> Vec<(String, PluginInstance)> {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_time().build() else { return Vec::new() };
    let mut made = Vec::new();
    for (name, path, cfg) in ahead {
        let Some(Ok(plugin)) = loaded.iter().find(|(p, _)| *p == path).map(|(_, l)| l) else { continue };
        // A guest in its start code yields at every epoch tick: the limit holds.
        if let Ok(Ok(instance)) = rt.block_on(async { tokio::time::timeout(AHEAD_LIMIT, plugin.instantiate(cfg)).await }) {
            made.push((name, instance));
        }
    }
    made
}

impl Session {
    /// Builds a session from a loaded (or failed) config and the caller's
    /// options. Plans the freeze; touches nothing.
    pub fn prepare(config: Result<Config, ConfigError>, opts: SessionOptions) -> Result<Session, SetupError> {
        let started = std::time::Instant::now();
        let (config, config_path, config_error) = match config {
            Ok(c) => {
                let p = c.path.clone();
                (c, p, None)
            }
            Err(e) => {
                let (fallback, what) = match (e.format(), opts.mounts.is_empty()) {
                    (Format::Legacy, _) => (Fallback::WithoutHooks, "running without hooks".to_string()),
                    (Format::Native | Format::Builtin, false) => {
                        (Fallback::WithoutHooks, "running without hooks, freezing only the --mount file systems".to_string())
                    }
                    (Format::Native | Format::Builtin, true) => (
                        Fallback::NoSnapshot,
                        "no snapshot taken: without a usable native config quiesce cannot know which file systems it excludes; \
                         fix the config, or pass --mount for each file system to freeze"
                            .to_string(),
                    ),
                };
                let err = ReportError { code: config_error_code(&e), message: format!("{e}; {what}") };
                (Config::builtin(), Some(e.path().to_path_buf()), Some((err, fallback)))
            }
        };
        // First, so that loading overlaps everything after it.
        let cache_dir = opts.cache_dir.unwrap_or_else(cache_dir_from_env);
        let (engine, preload) = match opts.engine {
            Some(e) => (Some(e), None),
            None if config_error.is_none() => (None, start_preload(&config, &cache_dir)),
            None => (None, None),
        };
        let mut freeze = config.freeze.clone();
        if !opts.mounts.is_empty() {
            freeze.mounts = opts.mounts.clone();
        }
        let refused = matches!(config_error, Some((_, Fallback::NoSnapshot)));
        let plan = if freeze.enabled && !refused {
            Some(freeze::plan(&Selection { mounts: freeze.mounts.clone(), exclude: freeze.exclude.clone() })?)
        } else {
            None
        };
        let provider = opts.provider.or_else(|| config.snapshot.as_ref().map(snapshot::from_spec));
        Ok(Session {
            id: new_session_id(),
            max_freeze: opts.max_freeze.unwrap_or(freeze.max_freeze),
            snapshot_timeout: config.snapshot_timeout,
            config: Config { freeze, ..config },
            config_path,
            config_error,
            plan,
            provider,
            run_dir: opts.run_dir.unwrap_or_else(RunDir::from_env),
            cache_dir,
            state_dir: opts.state_dir.unwrap_or_else(state_dir_from_env),
            engine,
            preload: std::sync::Mutex::new(preload),
            spare_guardian: opts.spare_guardian,
            planned_in: started.elapsed(),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn plan(&self) -> Option<&FreezePlan> {
        self.plan.as_ref()
    }

    /// The config in effect (the built-in one when the given one failed),
    /// with the caller's `--mount` applied.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Why the given config could not be used, as the report will say it.
    pub fn config_error(&self) -> Option<&ReportError> {
        self.config_error.as_ref().map(|(e, _)| e)
    }

    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    pub fn max_freeze(&self) -> Duration {
        self.max_freeze
    }

    pub fn provider(&self) -> Option<&dyn SnapshotProvider> {
        self.provider.as_deref()
    }

    /// Step 1 on its own: every hook checked (scripts opened, plugins
    /// loaded) and whether the freeze can happen. [`Session::run`] starts
    /// with it and `quiesce check` shows it, so the two cannot disagree.
    /// Runs nothing, freezes nothing.
    pub(crate) fn validate(&self) -> Validation {
        Validation { hooks: self.validate_hooks(), freeze_problems: self.freeze_problems() }
    }

    /// Every hook checked: scripts opened, plugins loaded (waiting for the
    /// preload thread, if one was started).
    fn validate_hooks(&self) -> Vec<ReadyHook> {
        let preload = self.preload.lock().unwrap_or_else(|p| p.into_inner()).take();
        // A panic on the loading thread only costs the head start.
        let Preloaded { engine: preloaded, mut loaded, mut instances } = preload.and_then(|h| h.join().ok()).unwrap_or_default();
        let engine = preloaded.or_else(|| self.wasm_engine());
        self.config
            .hooks
            .iter()
            .map(|h| {
                let mine = match &h.body {
                    HookBody::Plugin(p) => loaded.iter().position(|(path, _)| *path == p.path).map(|i| loaded.swap_remove(i).1),
                    HookBody::Script { .. } => None,
                };
                let mut ready = ReadyHook::validate_loaded(h, engine.as_ref(), mine);
                if let Some(i) = instances.iter().position(|(name, _)| *name == h.name) {
                    ready.adopt(instances.swap_remove(i).1);
                }
                ready
            })
            .collect()
    }

    /// The WebAssembly runtime, started only when a hook needs it.
    fn wasm_engine(&self) -> Option<WasmEngine> {
        if !self.config.hooks.iter().any(|h| matches!(h.body, HookBody::Plugin(_))) {
            return None;
        }
        if let Some(e) = &self.engine {
            return Some(e.clone());
        }
        match WasmEngine::new(&self.cache_dir) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::error!("cannot start the WebAssembly runtime: {e}");
                None
            }
        }
    }

    /// Keeps what plugins handed over, after thaw (never into a frozen file system).
    fn store_artifacts(&self, hooks: &[ReadyHook], r: &mut Run) {
        for h in hooks {
            if h.artifacts().is_empty() {
                continue;
            }
            // Kept with the recovery point, and removed with it: without a
            // snapshot there is no point, and nothing would ever remove them.
            if !r.snapshot_taken {
                r.warnings.push(format!(
                    "hook {} handed {} artifact(s) over; not kept, as no snapshot was taken",
                    h.spec.name,
                    h.artifacts().len()
                ));
                continue;
            }
            match artifacts::store(&self.state_dir, &self.id, &h.spec.name, h.artifacts()) {
                Ok(stored) => {
                    for a in &stored {
                        tracing::info!("stored artifact {} of hook {} at {} ({} bytes)", a.name, a.hook, a.path.display(), a.bytes);
                    }
                    r.artifacts.extend(stored);
                }
                Err(e) => r.error(
                    ErrorCode::IncorrectPluginhostFile,
                    format!("cannot store the artifacts of hook {} under {}: {e}", h.spec.name, self.state_dir.display()),
                ),
            }
        }
    }

    /// Before any hook runs: is there something to freeze, and is any of it
    /// already frozen by someone else? (Such a file system is never thawed
    /// by us: its owner is in the middle of something.) Empty: the freeze
    /// can go ahead.
    fn freeze_problems(&self) -> Vec<ReportError> {
        let Some(plan) = &self.plan else { return Vec::new() };
        if plan.targets.is_empty() {
            let skipped: Vec<String> = plan.skipped.iter().map(|s| format!("{} ({})", s.path.display(), s.reason)).collect();
            return vec![ReportError {
                code: ErrorCode::FsFreezeFailed,
                message: format!(
                    "no eligible file system to freeze; skipped: {}",
                    if skipped.is_empty() { "none".into() } else { skipped.join(", ") }
                ),
            }];
        }
        let mut problems = Vec::new();
        for t in &plan.targets {
            match freeze::is_frozen(&t.path, FROZEN_PROBE_WAIT) {
                Ok(true) => {
                    problems.push(ReportError {
                        code: ErrorCode::FsFreezeFailed,
                        message: format!(
                            "{} is already frozen by another process; quiesce will not thaw it (its owner may be mid-snapshot). \
                             If it was left frozen by mistake: `quiesce thaw --mount {}`",
                            t.path.display(),
                            t.path.display()
                        ),
                    });
                }
                Ok(false) => {}
                Err(e) => tracing::warn!("cannot probe {} for an existing freeze: {e}", t.path.display()),
            }
        }
        problems
    }

    /// The guardian for `plan`, started ahead of the pre hooks; None (and
    /// the error recorded) if it cannot be.
    fn start_guardian(
        &self,
        spare: Option<freeze::Spare>,
        plan: &FreezePlan,
        lock: &crate::rundir::SessionLock,
        r: &mut Run,
    ) -> Option<Guardian> {
        let keep = [lock.raw_fd()];
        let started = match spare.filter(|s| s.capacity() >= plan.targets.len()) {
            Some(spare) => spare.arm(plan, self.max_freeze, &keep).or_else(|e| {
                // A spare that died (a signal) or cannot take the plan: fork anew.
                tracing::debug!("the spare guardian could not be armed ({e}); forking one for this session");
                Guardian::start(plan, self.max_freeze, &keep)
            }),
            None => Guardian::start(plan, self.max_freeze, &keep),
        };
        match started {
            Ok(g) => Some(g),
            Err(e) => {
                r.error(ErrorCode::FsFreezeFailed, format!("cannot start the freeze guardian: {e}"));
                None
            }
        }
    }

    /// Syncs what the pre hooks left dirty, then freezes through `guardian`.
    fn freeze(&self, plan: &FreezePlan, mut guardian: Guardian, r: &mut Run) -> Option<Guardian> {
        let synced = freeze::presync(&plan.targets);
        for s in synced.iter().filter(|s| s.error.is_some()) {
            tracing::warn!("syncfs {} before the freeze failed: {}", s.path.display(), s.error.as_deref().unwrap_or(""));
        }
        // Recorded right before the first FIFREEZE, so `status` says "since" truthfully.
        let targets: Vec<PathBuf> = plan.targets.iter().map(|t| t.path.clone()).collect();
        self.record_state(r, SessionPhase::Frozen, &targets, Some(&guardian));
        // From the first FIFREEZE until thaw, nothing may be written to disk.
        logging::gate().hold();
        match guardian.freeze() {
            Ok(frozen) => {
                r.first_freeze_ns = frozen.first_freeze_ns;
                r.freeze_deadline_ns = frozen.deadline_ns;
                r.freeze.rcu_expedited = frozen.rcu_expedited;
                // Logged after the thaw (with the thaw's time): formatting
                // log records inside the window would lengthen it.
                for m in &frozen.mounts {
                    r.freeze.mounts.push(MountReport {
                        path: m.path.clone(),
                        fs_type: m.fs_type.clone(),
                        sync_ms: synced.iter().find(|s| s.path == m.path).map(|s| s.sync_ms),
                        freeze_ms: m.freeze_ms,
                        thaw_ms: None,
                    });
                }
                Some(guardian)
            }
            Err(failure) => {
                // Thawing back what it froze before the failure can fail too.
                r.freeze.still_frozen = failure.thawed_back.iter().filter(|t| t.still_frozen).map(|t| t.path.clone()).collect();
                if r.freeze.still_frozen.is_empty() {
                    release_log(r);
                } else {
                    for t in failure.thawed_back.iter().filter(|t| t.still_frozen) {
                        r.error(ErrorCode::FsThawFailed, thaw_failed_message(t, guardian.pid()));
                    }
                    self.record_state(r, SessionPhase::ThawFailed, &r.freeze.still_frozen, Some(&guardian));
                }
                r.error(ErrorCode::FsFreezeFailed, failure.to_string());
                None
            }
        }
    }

    /// Takes the snapshot (if a provider is configured) while frozen, waiting
    /// for it at most until the freeze deadline or `[snapshot] timeout_secs`.
    /// Returns the signal that cut it short, if one did.
    async fn snapshot(&self, guardian: Option<&mut Guardian>, r: &mut Run, interrupt: &mut Interrupt) -> Option<String> {
        let Some(provider) = &self.provider else {
            r.snapshot.message = Some("no snapshot provider configured (--snapshot-cmd or [snapshot]); quiesce took no snapshot".into());
            tracing::warn!("no snapshot provider: quiesce took no snapshot");
            return None;
        };
        let ctx = SnapshotContext {
            session_id: self.id.clone(),
            frozen_mounts: if guardian.is_some() { r.freeze.mounts.iter().map(|m| m.path.clone()).collect() } else { Vec::new() },
        };
        r.snapshot.provider = Some(provider.describe());
        let (wait, limit) = self.snapshot_wait(guardian.is_some(), r.freeze_deadline_ns);
        let t0 = freeze::monotonic_ns();
        // Dropping the provider's future stops it (providers are cancel-safe;
        // a command's process group is killed).
        let result = tokio::select! {
            res = provider.take(&ctx) => Ok(res),
            why = interrupt.wait() => Err(Cut::Interrupted(why)),
            () = tokio::time::sleep_until(duration::deadline_tokio(tokio::time::Instant::now(), wait)) => Err(Cut::Deadline(limit)),
            () = readable(guardian.as_deref().map(Guardian::event_fd)) => Err(Cut::GuardianThawed),
        };
        let t1 = freeze::monotonic_ns();
        r.snapshot_ns = t1.saturating_sub(t0);
        r.snapshot.duration_ms = duration::ms_between_ns(t0, t1);
        let abandoned =
            |what: String| format!("snapshot abandoned: {what}; {} was stopped, then the file systems were thawed", provider.describe());
        match result {
            Ok(Ok(made)) => {
                r.snapshot_taken = true;
                (r.snapshot.ids, r.snapshot.paths) = (made.ids.clone(), made.paths.clone());
                r.snapshot.made = Some(made);
                tracing::info!("snapshot taken in {:.3} ms by {}", r.snapshot.duration_ms, provider.describe());
                None
            }
            Ok(Err(e)) => {
                r.error(ErrorCode::SnapshotFailed, e.to_string());
                None
            }
            Err(Cut::Interrupted(why)) => {
                r.error(ErrorCode::SnapshotFailed, format!("snapshot abandoned: {why} arrived while frozen; thawing first"));
                Some(why)
            }
            Err(Cut::Deadline(limit)) => {
                let what = match limit {
                    Limit::Freeze => format!("still running at the freeze deadline (max-freeze {:.3} s)", self.max_freeze.as_secs_f64()),
                    Limit::Configured => format!("ran past [snapshot] timeout_secs ({:.3} s)", wait.as_secs_f64()),
                    Limit::Default => {
                        format!("ran past {:.3} s (max-freeze; set [snapshot] timeout_secs to change it)", wait.as_secs_f64())
                    }
                };
                let m = abandoned(what);
                tracing::error!("{m}");
                r.error(ErrorCode::SnapshotTimeout, m);
                None
            }
            Err(Cut::GuardianThawed) => {
                // The guardian reports once every mount is done; a FITHAW
                // being retried can delay that past this moment.
                let reason = guardian.and_then(|g| g.auto_thawed()).map(|a| a.reason);
                let why = reason.map(thaw_reason).unwrap_or_else(|| "reason not reported yet".into());
                let code =
                    if reason == Some(freeze::ThawReason::Deadline) { ErrorCode::SnapshotTimeout } else { ErrorCode::SnapshotFailed };
                let m = abandoned(format!("the guardian thawed every file system on its own ({why}) while it was still running"));
                tracing::error!("{m}");
                r.error(code, m);
                None
            }
        }
    }

    /// How long to wait for the provider, and which limit that is: the freeze
    /// deadline while frozen, `[snapshot] timeout_secs` if sooner; unfrozen,
    /// that timeout or else max_freeze.
    fn snapshot_wait(&self, frozen: bool, freeze_deadline_ns: u64) -> (Duration, Limit) {
        let freeze_left = frozen.then(|| Duration::from_nanos(freeze_deadline_ns.saturating_sub(freeze::monotonic_ns())));
        match (freeze_left, self.snapshot_timeout) {
            (Some(left), Some(t)) if t < left => (t, Limit::Configured),
            (Some(left), _) => (left, Limit::Freeze),
            (None, Some(t)) => (t, Limit::Configured),
            (None, None) => (self.max_freeze, Limit::Default),
        }
    }

    /// Thaws and records it, including the mounts still frozen because
    /// FITHAW kept failing (the guardian keeps trying; see `freeze::Guardian`).
    fn thaw(&self, mut guardian: Guardian, r: &mut Run) {
        match guardian.thaw() {
            Ok(thawed) => {
                let still: Vec<PathBuf> = thawed.mounts.iter().filter(|m| m.still_frozen).map(|m| m.path.clone()).collect();
                for m in &thawed.mounts {
                    if m.still_frozen {
                        let msg = thaw_failed_message(m, guardian.pid());
                        tracing::error!("{msg}");
                        r.error(ErrorCode::FsThawFailed, msg);
                        continue;
                    }
                    let froze = r.freeze.mounts.iter_mut().find(|x| x.path == m.path).map(|rep| {
                        rep.thaw_ms = Some(m.thaw_ms);
                        format!(" ({}) frozen in {:.3} ms,", rep.fs_type, rep.freeze_ms)
                    });
                    if m.failed_attempts > 0 {
                        let w = format!(
                            "FITHAW on {} failed {} time(s) (last: {}) before it succeeded",
                            m.path.display(),
                            m.failed_attempts,
                            freeze::errno_name(m.errno)
                        );
                        tracing::warn!("{w}");
                        r.warnings.push(w);
                    }
                    tracing::info!("{}{} thawed in {:.3} ms", m.path.display(), froze.unwrap_or_default(), m.thaw_ms);
                }
                if still.is_empty() {
                    // After an automatic thaw, the window closed then, not at this call.
                    let last_thaw_ns = thawed.last_thaw_ns.max(thawed.auto_thawed_at_ns.unwrap_or(0));
                    let window_ns = last_thaw_ns.saturating_sub(r.first_freeze_ns);
                    r.freeze.window_ms = Some(duration::ms_between_ns(0, window_ns));
                    let overhead_ns = window_ns.saturating_sub(r.snapshot_ns);
                    r.freeze.overhead_ms = Some(duration::ms_between_ns(0, overhead_ns));
                    // The window opens when the first FIFREEZE starts: every freeze and thaw call is in it.
                    let kernel_ms: f64 =
                        r.freeze.mounts.iter().map(|m| m.freeze_ms).sum::<f64>() + thawed.mounts.iter().map(|m| m.thaw_ms).sum::<f64>();
                    r.freeze.host_ms = Some(duration::round_ms(duration::ms_between_ns(0, overhead_ns) - kernel_ms).max(0.0));
                    release_log(r);
                } else {
                    // Still frozen: no window closed, and the held log must
                    // not be written to a file system that may be frozen.
                    self.record_state(r, SessionPhase::ThawFailed, &still, Some(&guardian));
                }
                r.freeze.still_frozen = still;
                if let Some(at_ns) = thawed.auto_thawed_at_ns {
                    let why = format!("{} after {:.3} s", thaw_reason(thawed.reason), at_ns.saturating_sub(r.first_freeze_ns) as f64 / 1e9);
                    r.error(
                        ErrorCode::FsFreezeTimeout,
                        format!("the guardian thawed every file system on its own ({why}) before the snapshot finished; the snapshot is not frozen-consistent"),
                    );
                    r.freeze.auto_thawed = Some(why);
                }
            }
            Err(e) => {
                release_log(r);
                let still: Vec<PathBuf> = match &e {
                    freeze::FreezeError::GuardianLost { thawed, .. } => {
                        thawed.iter().filter(|t| t.outcome == freeze::ThawOutcome::Failed).map(|t| t.path.clone()).collect()
                    }
                    _ => Vec::new(),
                };
                for p in &still {
                    r.error(
                        ErrorCode::FsThawFailed,
                        format!(
                            "{} is still frozen: the guardian was lost and the host's own FITHAW failed; run `quiesce thaw --mount {}`",
                            p.display(),
                            p.display()
                        ),
                    );
                }
                r.error(ErrorCode::FsFreezeFailed, format!("thaw: {e}"));
                r.freeze.auto_thawed = Some("thaw reported an error".into());
                // The guardian is gone, so nothing holds the lock for these
                // once this process exits: the state file is what `status`
                // can show besides its probe.
                if !still.is_empty() {
                    self.record_state(r, SessionPhase::ThawFailed, &still, None);
                }
                r.freeze.still_frozen = still;
            }
        }
    }

    fn record_state(&self, r: &Run, phase: SessionPhase, frozen: &[PathBuf], guardian: Option<&Guardian>) {
        self.run_dir.write_state(&SessionState {
            session_id: self.id.clone(),
            pid: std::process::id(),
            phase: phase.as_str().into(),
            started_unix_ms: r.started_unix_ms,
            frozen_since_unix_ms: (!frozen.is_empty()).then(unix_ms),
            frozen: frozen.to_vec(),
            guardian_pid: guardian.map(|g| g.pid()),
            max_freeze_s: self.max_freeze.as_secs_f64(),
        });
    }
}

/// After quiesce's own thaw, writes out the log held while frozen (see
/// [`logging::LogGate::release_after_thaw`]); what had to be dropped
/// becomes a warning.
fn release_log(r: &mut Run) {
    if let Some(d) = logging::gate().release_after_thaw() {
        note_dropped(r, d);
    }
}

/// What a release of the held log had to drop, as a warning.
fn note_dropped(r: &mut Run, d: logging::Dropped) {
    if d.records > 0 {
        r.warnings.push(format!("{} log records ({} bytes) dropped while frozen: the in-memory log buffer was full", d.records, d.bytes));
    }
}

/// A plugin whose connection the server has closed lost what it held on it
/// (the database released the lock when the session ended): if that
/// happened before `until` (the freeze, or the snapshot when nothing is
/// frozen), the label may not say the application stayed quiesced. Asked of
/// the kernel without reading or blocking, so it is safe while frozen.
fn check_holds(hooks: &[ReadyHook], r: &mut Run, until: &str) {
    for h in hooks {
        for target in h.hung_up_connections() {
            r.apps_quiesced = false;
            let m = format!(
                "plugin hook {}: its connection to {target} was closed by the other side before {until}, so what it held \
                 (a lock, a backup session) did not last through the snapshot; the label is at most FileSystemConsistent",
                h.spec.name
            );
            tracing::error!("{m}");
            r.error(ErrorCode::QuiesceNotHeld, m);
        }
    }
}

fn thaw_failed_message(m: &freeze::ThawTiming, guardian_pid: i32) -> String {
    format!(
        "FITHAW on {} kept failing ({}, {} attempts until the freeze deadline): it is STILL FROZEN. The guardian (pid {guardian_pid}) \
         keeps retrying every second and holds the session lock until it succeeds; check the kernel log, then `quiesce thaw --mount {}`",
        m.path.display(),
        m.error.as_deref().unwrap_or(freeze::errno_name(m.errno)),
        m.failed_attempts,
        m.path.display()
    )
}

/// Resolves when `fd` becomes readable (the guardian said something: while
/// frozen, that is an automatic thaw); never without an fd.
async fn readable(fd: Option<BorrowedFd<'_>>) {
    let Some(fd) = fd else { return std::future::pending().await };
    // SAFETY: a BorrowedFd stays open and the same for its lifetime, which
    // bounds the AsyncFd's (it is dropped at the end of this function).
    match unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) } {
        Ok(afd) => {
            let _ = afd.readable().await;
        }
        // Cannot watch it: the deadline still bounds the wait.
        Err(_) => std::future::pending().await,
    }
}

fn thaw_reason(reason: freeze::ThawReason) -> String {
    match reason {
        freeze::ThawReason::Asked => "asked".into(),
        freeze::ThawReason::Deadline => "max-freeze deadline".into(),
        freeze::ThawReason::HostGone => "host gone".into(),
        freeze::ThawReason::Signal(sig) => format!("guardian got signal {sig}"),
        freeze::ThawReason::Internal => "guardian error".into(),
    }
}

/// `q-<unix seconds>-<random>`: sortable, unique per machine.
fn new_session_id() -> String {
    let mut rnd = [0u8; 4];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut rnd));
    format!("q-{}-{:08x}", unix_ms() / 1000, u32::from_le_bytes(rnd))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::report::Report;
    use crate::snapshot::{SnapshotError, TakeFuture};

    /// Takes the snapshot at once, or never; says when its future is dropped.
    struct Provider {
        hangs: bool,
        dropped: Arc<AtomicBool>,
    }

    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    impl SnapshotProvider for Provider {
        fn describe(&self) -> String {
            "test provider".into()
        }
        fn take<'a>(&'a self, _: &'a SnapshotContext) -> TakeFuture<'a> {
            let guard = SetOnDrop(self.dropped.clone());
            Box::pin(async move {
                let _guard = guard;
                if self.hangs {
                    std::future::pending::<()>().await;
                }
                Ok::<_, SnapshotError>(crate::snapshot::Made::new(crate::snapshot::ProviderKind::External, Vec::new(), Vec::new()))
            })
        }
    }

    fn session(tag: &str, config: Config, max_freeze: Option<Duration>, hangs: bool) -> (Session, Arc<AtomicBool>, PathBuf) {
        // Not under /tmp: the run directory must be on a path only root (or
        // this user) can write, and /tmp is world-writable. /run for root;
        // an ordinary user (`cargo test` on a laptop) runs it in their home.
        let base = match std::env::var_os("HOME") {
            Some(home) if !nix::unistd::geteuid().is_root() => PathBuf::from(home),
            _ => PathBuf::from("/run"),
        };
        let dir = base.join(format!("quiesce-unit-session-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let dropped = Arc::new(AtomicBool::new(false));
        let opts = SessionOptions {
            run_dir: Some(RunDir::new(dir.join("run"))),
            max_freeze,
            provider: Some(Box::new(Provider { hangs, dropped: dropped.clone() })),
            cache_dir: Some(dir.join("cache")),
            state_dir: Some(dir.join("state")),
            ..Default::default()
        };
        (Session::prepare(Ok(config), opts).expect("prepare"), dropped, dir)
    }

    fn unfrozen() -> Config {
        let mut c = Config::builtin();
        c.freeze.enabled = false;
        c
    }

    fn run(s: Session) -> Report {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(s.run(Interrupt::never()))
    }

    #[test]
    fn an_embedders_duration_max_runs_the_session_without_panicking() {
        let (s, _, dir) = session("max", unfrozen(), Some(Duration::MAX), false);
        let report = run(s);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(report.snapshot_taken, "{:?}", report.errors);
        assert_eq!(report.freeze.max_freeze_s, Duration::MAX.as_secs_f64());
    }

    #[test]
    fn a_provider_past_snapshot_timeout_is_dropped_and_reported() {
        let mut config = unfrozen();
        config.snapshot_timeout = Some(Duration::from_millis(50));
        let (s, dropped, dir) = session("timeout", config, Some(Duration::MAX), true);
        let report = run(s);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!report.snapshot_taken);
        assert!(report.has_error(ErrorCode::SnapshotTimeout), "{:?}", report.errors);
        assert!(report.errors[0].message.contains("timeout_secs"), "{}", report.errors[0].message);
        assert!(dropped.load(Ordering::SeqCst), "the provider's future was dropped (= its work stopped)");
        assert_eq!(report.exit_code(), 4);
    }

    #[test]
    fn without_a_freeze_or_timeout_the_wait_defaults_to_max_freeze() {
        let (s, _, dir) = session("default", unfrozen(), Some(Duration::from_millis(50)), true);
        let report = run(s);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(report.has_error(ErrorCode::SnapshotTimeout), "{:?}", report.errors);
        assert!(report.errors[0].message.contains("max-freeze"), "{}", report.errors[0].message);
    }
}
