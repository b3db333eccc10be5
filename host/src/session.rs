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

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::{Config, ConfigError, HookSpec, OnFailure, ScriptAction};
use crate::freeze::{self, FreezePlan, Guardian, Selection};
use crate::hooks::script::{self, ScriptOutcome, ScriptSpec};
use crate::interrupt::Interrupt;
use crate::logging;
use crate::report::{
    ms, round_ms, ConfigReport, Consistency, ErrorCode, Facts, FreezeReport, HookKind, HookReport, MountReport, Outcome, Phase,
    Report, ReportError, SkippedMount, SnapshotReport,
};
use crate::rundir::{unix_ms, LockError, RunDir, SessionState};
use crate::snapshot::{self, SnapshotContext, SnapshotProvider};
use crate::trust::{self, Rule, TrustError, TrustedFile};

/// How long a pre-session probe waits before it calls a file system frozen.
const FROZEN_PROBE_WAIT: Duration = Duration::from_millis(200);
/// Output kept per script attempt (the rest is counted, not kept).
const SCRIPT_OUTPUT_CAP: usize = 64 * 1024;
const KILL_GRACE: Duration = Duration::from_secs(2);

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
}

/// A session could not even be set up: the caller's arguments are wrong.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Mounts(#[from] freeze::FreezeError),
}

/// Loads `--config FILE`, or the default config (native, then legacy), or
/// the built-in one when neither exists.
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
    config_error: Option<ReportError>,
    /// None when freezing is disabled.
    plan: Option<FreezePlan>,
    provider: Option<Box<dyn SnapshotProvider>>,
    max_freeze: Duration,
    run_dir: RunDir,
}

/// A hook after validation: its scripts opened and checked, or refused.
struct ReadyHook {
    spec: HookSpec,
    pre: Option<TrustedFile>,
    post: Option<TrustedFile>,
    /// Why the hook may not run at all (a bad script refuses the pair: a pre
    /// that locks without a post that unlocks is worse than neither).
    refused: Option<ReportError>,
}

impl Session {
    /// Builds a session from a loaded (or failed) config and the caller's
    /// options. Plans the freeze; touches nothing.
    pub fn prepare(config: Result<Config, ConfigError>, opts: SessionOptions) -> Result<Session, SetupError> {
        let (config, config_path, config_error) = match config {
            Ok(c) => {
                let p = c.path.clone();
                (c, p, None)
            }
            Err(e) => {
                // An unusable config means no hooks; the snapshot falls back to
                // file-system consistency, as the legacy framework does.
                let path = match &e {
                    ConfigError::Untrusted { path, .. } | ConfigError::Invalid { path, .. } => path.clone(),
                };
                let err = ReportError { code: config_error_code(&e), message: format!("{e}; running without hooks") };
                (Config::builtin(), Some(path), Some(err))
            }
        };
        let mut freeze = config.freeze.clone();
        if !opts.mounts.is_empty() {
            freeze.mounts = opts.mounts.clone();
        }
        let plan = if freeze.enabled {
            Some(freeze::plan(&Selection { mounts: freeze.mounts.clone(), exclude: freeze.exclude.clone() })?)
        } else {
            None
        };
        let provider = opts.provider.or_else(|| config.snapshot.as_ref().map(snapshot::from_spec));
        Ok(Session {
            id: new_session_id(),
            max_freeze: opts.max_freeze.unwrap_or(freeze.max_freeze),
            config: Config { freeze, ..config },
            config_path,
            config_error,
            plan,
            provider,
            run_dir: opts.run_dir.unwrap_or_else(RunDir::from_env),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn plan(&self) -> Option<&FreezePlan> {
        self.plan.as_ref()
    }

    /// Runs the whole session and reports. Never panics on outside input;
    /// every path thaws what it froze and runs the post hooks it owes.
    pub async fn run(self, interrupt: Interrupt) -> Report {
        let started = Instant::now();
        let mut r = Run::new(&self);
        let span = tracing::info_span!("session", id = %self.id);
        let _enter = span.enter();

        let lock = match self.run_dir.lock() {
            Ok(lock) => lock,
            Err(e) => {
                let code = match e {
                    LockError::Busy { .. } => ErrorCode::BackupOperationInProgress,
                    LockError::Io { .. } => ErrorCode::IncorrectPluginhostFile,
                };
                tracing::error!("{e}");
                r.error(code, e.to_string());
                return r.finish(&self, started, false);
            }
        };
        tracing::info!(
            "session {} starting (config: {})",
            self.id,
            self.config_path.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in default".into())
        );
        self.record_state(&r, "validating", None);
        if let Some(e) = &self.config_error {
            // The hooks it names cannot run, so no application was quiesced.
            tracing::error!("{}", e.message);
            r.errors.push(e.clone());
            r.apps_quiesced = false;
        }

        // 1. Validate every script before anything runs or freezes.
        let hooks: Vec<ReadyHook> = self.config.hooks.iter().map(validate_hook).collect();
        for h in &hooks {
            if let Some(e) = &h.refused {
                tracing::error!("hook {} refused: {}", h.spec.name, e.message);
            }
        }
        let mut freeze_ok = self.check_freeze_possible(&mut r);
        if !freeze_ok && self.config.freeze.on_failure == OnFailure::Abort {
            tracing::error!("freeze is impossible and the policy is to abort: no hook runs, no snapshot");
            for h in &hooks {
                r.skipped(h, "freeze impossible; session aborted before any hook");
            }
            return r.finish(&self, started, false);
        }

        // 2. Pre hooks, in order.
        self.record_state(&r, "pre", None);
        let mut entered = 0;
        let mut abort = false;
        for h in &hooks {
            if let Some(why) = interrupt.fired() {
                tracing::warn!("{why}: no further pre hooks");
                break;
            }
            entered += 1;
            let ok = match &h.refused {
                Some(e) => {
                    r.refused(h, Phase::Pre, e.clone());
                    false
                }
                None => match (&h.pre, h.spec.scripts().0) {
                    (Some(file), Some(action)) => r.run_script(&self.id, h, Phase::Pre, file, action, None).await,
                    _ => true,
                },
            };
            if !ok {
                r.apps_quiesced = false;
                if h.spec.on_failure == OnFailure::Abort {
                    tracing::error!("hook {} failed and its policy is abort: no snapshot", h.spec.name);
                    abort = true;
                    break;
                }
            }
        }
        for h in &hooks[entered..] {
            r.skipped(h, if abort { "an earlier hook aborted the session" } else { "session interrupted" });
        }

        // 3. Freeze, snapshot, thaw.
        let mut interrupted = interrupt.fired();
        if !abort && interrupted.is_none() {
            let mut guardian = None;
            if freeze_ok {
                if let Some(plan) = self.plan.as_ref() {
                    match self.freeze(plan, &lock, &mut r) {
                        Some(g) => guardian = Some(g),
                        None => freeze_ok = false,
                    }
                }
            }
            let freeze_required = self.plan.is_some();
            if freeze_required && !freeze_ok && self.config.freeze.on_failure == OnFailure::Abort {
                tracing::error!("freeze failed and the policy is abort: no snapshot");
            } else {
                let mut interrupt = interrupt.clone();
                interrupted = self.snapshot(guardian.as_ref(), &mut r, &mut interrupt).await;
            }
            if let Some(g) = guardian.take() {
                self.thaw(g, &mut r);
            }
            r.frozen_throughout = freeze_required && freeze_ok && r.freeze.auto_thawed.is_none();
        }

        // 4. Post hooks, in reverse order, for every hook whose turn came in pre.
        self.record_state(&r, "post", None);
        let label = r.label(&self);
        for h in hooks[..entered].iter().rev() {
            match &h.refused {
                Some(e) => r.refused(h, Phase::Post, e.clone()),
                None => {
                    if let (Some(file), Some(action)) = (&h.post, h.spec.scripts().1) {
                        r.run_script(&self.id, h, Phase::Post, file, action, Some(label)).await;
                    }
                }
            }
        }
        r.interrupted_by = interrupted.or_else(|| interrupt.fired());
        if let Some(sig) = &r.interrupted_by {
            r.error(ErrorCode::Interrupted, format!("session interrupted by {sig}; thawed and ran post hooks before exiting"));
        }
        let report = r.finish(&self, started, true);
        self.run_dir.clear_state();
        drop(lock);
        report
    }

    /// Before any hook runs: is there something to freeze, and is any of it
    /// already frozen by someone else? (Such a file system is never thawed
    /// by us: its owner is in the middle of something.)
    fn check_freeze_possible(&self, r: &mut Run) -> bool {
        let Some(plan) = &self.plan else { return true };
        if plan.targets.is_empty() {
            let skipped: Vec<String> = plan.skipped.iter().map(|s| format!("{} ({})", s.path.display(), s.reason)).collect();
            r.error(
                ErrorCode::FsFreezeFailed,
                format!("no eligible file system to freeze; skipped: {}", if skipped.is_empty() { "none".into() } else { skipped.join(", ") }),
            );
            return false;
        }
        let mut ok = true;
        for t in &plan.targets {
            match freeze::is_frozen(&t.path, FROZEN_PROBE_WAIT) {
                Ok(true) => {
                    ok = false;
                    r.error(
                        ErrorCode::FsFreezeFailed,
                        format!(
                            "{} is already frozen by another process; quiesce will not thaw it (its owner may be mid-snapshot). \
                             If it was left frozen by mistake: `quiesce thaw --mount {}`",
                            t.path.display(),
                            t.path.display()
                        ),
                    );
                }
                Ok(false) => {}
                Err(e) => tracing::warn!("cannot probe {} for an existing freeze: {e}", t.path.display()),
            }
        }
        ok
    }

    fn freeze(&self, plan: &FreezePlan, lock: &crate::rundir::SessionLock, r: &mut Run) -> Option<Guardian> {
        let mut guardian = match Guardian::start(plan, self.max_freeze, &[lock.raw_fd()]) {
            Ok(g) => g,
            Err(e) => {
                r.error(ErrorCode::FsFreezeFailed, format!("cannot start the freeze guardian: {e}"));
                return None;
            }
        };
        self.record_state(r, "frozen", Some(&guardian));
        let synced = freeze::presync(&plan.targets);
        for s in synced.iter().filter(|s| s.error.is_some()) {
            tracing::warn!("syncfs {} before the freeze failed: {}", s.path.display(), s.error.as_deref().unwrap_or(""));
        }
        // From the first FIFREEZE until thaw, nothing may be written to disk.
        logging::gate().hold();
        match guardian.freeze() {
            Ok(frozen) => {
                r.first_freeze_ns = frozen.first_freeze_ns;
                for m in &frozen.mounts {
                    tracing::info!("froze {} ({}) in {:.3} ms", m.path.display(), m.fs_type, m.freeze_ms);
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
                logging::gate().release();
                r.error(ErrorCode::FsFreezeFailed, failure.to_string());
                None
            }
        }
    }

    /// Takes the snapshot (if a provider is configured) while frozen.
    /// Returns the signal that cut it short, if one did.
    async fn snapshot(&self, guardian: Option<&Guardian>, r: &mut Run, interrupt: &mut Interrupt) -> Option<String> {
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
        let t0 = freeze::monotonic_ns();
        let result = tokio::select! {
            res = provider.take(&ctx) => Ok(res),
            why = interrupt.wait() => Err(why),
        };
        let t1 = freeze::monotonic_ns();
        r.snapshot_ns = t1.saturating_sub(t0);
        r.snapshot.duration_ms = ns_to_ms(r.snapshot_ns);
        match result {
            Ok(Ok(())) => {
                r.snapshot_taken = true;
                tracing::info!("snapshot taken in {:.3} ms by {}", r.snapshot.duration_ms, provider.describe());
                None
            }
            Ok(Err(e)) => {
                r.error(ErrorCode::SnapshotFailed, e.to_string());
                None
            }
            Err(why) => {
                r.error(ErrorCode::SnapshotFailed, format!("snapshot abandoned: {why} arrived while frozen; thawing first"));
                Some(why)
            }
        }
    }

    fn thaw(&self, mut guardian: Guardian, r: &mut Run) {
        match guardian.thaw() {
            Ok(thawed) => {
                logging::gate().release();
                for m in &thawed.mounts {
                    if let Some(rep) = r.freeze.mounts.iter_mut().find(|x| x.path == m.path) {
                        rep.thaw_ms = Some(m.thaw_ms);
                    }
                    tracing::info!("thawed {} in {:.3} ms", m.path.display(), m.thaw_ms);
                }
                let last_thaw_ns = thawed.auto_thawed_at_ns.unwrap_or(thawed.last_thaw_ns).max(thawed.last_thaw_ns);
                let window_ns = last_thaw_ns.saturating_sub(r.first_freeze_ns);
                r.freeze.window_ms = Some(ns_to_ms(window_ns));
                let overhead_ns = window_ns.saturating_sub(r.snapshot_ns);
                r.freeze.overhead_ms = Some(ns_to_ms(overhead_ns));
                // The window opens when the first FIFREEZE starts: every freeze and thaw call is in it.
                let kernel_ms: f64 = r.freeze.mounts.iter().map(|m| m.freeze_ms).sum::<f64>()
                    + thawed.mounts.iter().map(|m| m.thaw_ms).sum::<f64>();
                r.freeze.host_ms = Some(round_ms(ns_to_ms(overhead_ns) - kernel_ms).max(0.0));
                if let Some(at_ns) = thawed.auto_thawed_at_ns {
                    let why = format!(
                        "{} after {:.3} s",
                        thaw_reason(thawed.reason),
                        at_ns.saturating_sub(r.first_freeze_ns) as f64 / 1e9
                    );
                    r.error(
                        ErrorCode::FsFreezeTimeout,
                        format!("the guardian thawed every file system on its own ({why}) before the snapshot finished; the snapshot is not frozen-consistent"),
                    );
                    r.freeze.auto_thawed = Some(why);
                }
            }
            Err(e) => {
                logging::gate().release();
                r.error(ErrorCode::FsFreezeFailed, format!("thaw: {e}"));
                r.freeze.auto_thawed = Some("thaw reported an error".into());
            }
        }
    }

    fn record_state(&self, r: &Run, phase: &str, guardian: Option<&Guardian>) {
        let frozen: Vec<PathBuf> = match (phase, &self.plan) {
            ("frozen", Some(plan)) => plan.targets.iter().map(|t| t.path.clone()).collect(),
            _ => Vec::new(),
        };
        self.run_dir.write_state(&SessionState {
            session_id: self.id.clone(),
            pid: std::process::id(),
            phase: phase.into(),
            started_unix_ms: r.started_unix_ms,
            frozen_since_unix_ms: (!frozen.is_empty()).then(unix_ms),
            frozen,
            guardian_pid: guardian.map(|g| g.pid()),
            max_freeze_s: self.max_freeze.as_secs_f64(),
        });
    }
}

fn validate_hook(spec: &HookSpec) -> ReadyHook {
    let open = |action: Option<&ScriptAction>, phase: Phase| -> Result<Option<TrustedFile>, ReportError> {
        match action {
            None => Ok(None),
            Some(a) => trust::open_trusted(&a.path, Rule::Script).map(Some).map_err(|e| trust_error(phase, &a.path, &e)),
        }
    };
    let (pre, post) = spec.scripts();
    let pre = open(pre, Phase::Pre);
    let post = open(post, Phase::Post);
    match (pre, post) {
        (Ok(pre), Ok(post)) => ReadyHook { spec: spec.clone(), pre, post, refused: None },
        (Err(e), _) | (_, Err(e)) => ReadyHook { spec: spec.clone(), pre: None, post: None, refused: Some(e) },
    }
}

/// The report code and message for a script that failed its checks.
pub(crate) fn trust_error(phase: Phase, path: &Path, e: &TrustError) -> ReportError {
    let code = match (phase, e.is_not_found()) {
        (Phase::Pre, true) => ErrorCode::PreScriptNotFound,
        (Phase::Post, true) => ErrorCode::PostScriptNotFound,
        (Phase::Pre, false) => ErrorCode::InsufficientPermissionforPreScript,
        (Phase::Post, false) => ErrorCode::InsufficientPermissionforPostScript,
    };
    ReportError { code, message: format!("{} script {}: {e}", phase_name(phase), path.display()) }
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Pre => "pre",
        Phase::Post => "post",
    }
}

/// What the session has learnt so far; turned into the report at the end.
struct Run {
    started_unix_ms: u128,
    errors: Vec<ReportError>,
    warnings: Vec<String>,
    hooks: Vec<HookReport>,
    freeze: FreezeReport,
    snapshot: SnapshotReport,
    snapshot_ns: u64,
    /// Guardian clock (CLOCK_MONOTONIC) at the first FIFREEZE.
    first_freeze_ns: u64,
    snapshot_taken: bool,
    apps_quiesced: bool,
    frozen_throughout: bool,
    interrupted_by: Option<String>,
}

impl Run {
    fn new(s: &Session) -> Run {
        let mut freeze = FreezeReport { enabled: s.plan.is_some(), max_freeze_s: s.max_freeze.as_secs_f64(), ..Default::default() };
        if let Some(plan) = &s.plan {
            freeze.skipped = plan
                .skipped
                .iter()
                .map(|k| SkippedMount { path: k.path.clone(), fs_type: k.fs_type.clone(), reason: k.reason.clone() })
                .collect();
        }
        Run {
            started_unix_ms: unix_ms(),
            errors: Vec::new(),
            warnings: Vec::new(),
            hooks: Vec::new(),
            freeze,
            snapshot: SnapshotReport::default(),
            snapshot_ns: 0,
            first_freeze_ns: 0,
            snapshot_taken: false,
            apps_quiesced: true,
            frozen_throughout: false,
            interrupted_by: None,
        }
    }

    fn error(&mut self, code: ErrorCode, message: String) {
        self.errors.push(ReportError { code, message });
    }

    fn label(&self, s: &Session) -> Consistency {
        Consistency::judge(Facts {
            snapshot_taken: self.snapshot_taken,
            apps_quiesced: self.apps_quiesced && !self.hooks.iter().any(|h| h.phase == Phase::Pre && h.outcome == Outcome::Skipped),
            freeze_enabled: s.plan.is_some(),
            frozen_throughout: self.frozen_throughout,
        })
    }

    fn refused(&mut self, h: &ReadyHook, phase: Phase, e: ReportError) {
        if phase == Phase::Pre {
            self.errors.push(e.clone());
        }
        self.hooks.push(HookReport {
            name: h.spec.name.clone(),
            kind: HookKind::Script,
            phase,
            attempts: 0,
            outcome: Outcome::Refused,
            duration_ms: 0.0,
            exit_code: None,
            message: Some(e.message),
        });
    }

    fn skipped(&mut self, h: &ReadyHook, why: &str) {
        for phase in [Phase::Pre, Phase::Post] {
            self.hooks.push(HookReport {
                name: h.spec.name.clone(),
                kind: HookKind::Script,
                phase,
                attempts: 0,
                outcome: Outcome::Skipped,
                duration_ms: 0.0,
                exit_code: None,
                message: Some(why.into()),
            });
        }
    }

    /// Runs one phase of a script hook and records it. True if it succeeded.
    async fn run_script(
        &mut self,
        session_id: &str,
        h: &ReadyHook,
        phase: Phase,
        file: &TrustedFile,
        action: &ScriptAction,
        label: Option<Consistency>,
    ) -> bool {
        let name = &h.spec.name;
        let mut env = vec![
            ("QUIESCE_SESSION_ID".to_string(), session_id.to_string()),
            ("QUIESCE_PHASE".to_string(), phase_name(phase).to_string()),
            ("QUIESCE_HOOK".to_string(), name.clone()),
        ];
        if let Some(label) = label {
            env.push(("QUIESCE_SNAPSHOT_TAKEN".into(), self.snapshot_taken.to_string()));
            env.push(("QUIESCE_CONSISTENCY".into(), serde_json::to_value(label).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()));
        }
        let spec = ScriptSpec {
            name: format!("{name}/{}", phase_name(phase)),
            args: action.args.clone(),
            env,
            timeout: h.spec.timeout,
            retries: action.retries,
            retry_delay: h.spec.retry_delay,
            kill_grace: KILL_GRACE,
            warning_exit_codes: h.spec.warning_exit_codes.clone(),
            output_cap: SCRIPT_OUTPUT_CAP,
        };
        tracing::info!("running {} hook {name}: {}", phase_name(phase), action.path.display());
        let run = script::run_script(file, &spec).await;
        let attempts = run.attempts.len() as u32;
        let (outcome, exit_code, failure) = match &run.outcome {
            ScriptOutcome::Succeeded => (Outcome::Succeeded, Some(0), None),
            ScriptOutcome::SucceededWithWarning { exit_code } => {
                self.warnings.push(format!("{} hook {name} exited {exit_code} (a warning)", phase_name(phase)));
                (Outcome::Succeeded, Some(*exit_code), None)
            }
            ScriptOutcome::Failed { exit_code, signal } => {
                let how = match (exit_code, signal) {
                    (Some(c), _) => format!("exited {c}"),
                    (None, Some(s)) => format!("was killed by signal {s}"),
                    _ => "failed".into(),
                };
                let code = if phase == Phase::Pre { ErrorCode::PreScriptExecutionFailed } else { ErrorCode::PostScriptExecutionFailed };
                (Outcome::Failed, *exit_code, Some((code, how)))
            }
            ScriptOutcome::TimedOut => {
                let code = if phase == Phase::Pre { ErrorCode::PreScriptTimeout } else { ErrorCode::PostScriptTimeout };
                let how = format!("ran past its {} s timeout (per attempt); its process group was killed", h.spec.timeout.as_secs());
                (Outcome::TimedOut, None, Some((code, how)))
            }
            ScriptOutcome::SpawnFailed { message } => {
                let code = if phase == Phase::Pre { ErrorCode::PreScriptExecutionFailed } else { ErrorCode::PostScriptExecutionFailed };
                (Outcome::Failed, None, Some((code, format!("could not be started: {message}"))))
            }
        };
        let message = failure.as_ref().map(|(_, how)| {
            let tail = run.attempts.last().map(|a| last_line(&a.output)).unwrap_or_default();
            format!(
                "{} hook {name} ({}) {how} after {attempts} attempt(s){}",
                phase_name(phase),
                action.path.display(),
                if tail.is_empty() { String::new() } else { format!("; last output: {tail}") }
            )
        });
        match (&failure, &message) {
            (Some((code, _)), Some(m)) => {
                tracing::error!("{m}");
                self.error(*code, m.clone());
            }
            _ => tracing::info!("{} hook {name} succeeded in {:.1} ms ({attempts} attempt(s))", phase_name(phase), ms(run.duration)),
        }
        self.hooks.push(HookReport {
            name: name.clone(),
            kind: HookKind::Script,
            phase,
            attempts,
            outcome,
            duration_ms: ms(run.duration),
            exit_code,
            message,
        });
        failure.is_none()
    }

    fn finish(mut self, s: &Session, started: Instant, ran: bool) -> Report {
        let consistency = self.label(s);
        if !ran {
            self.snapshot_taken = false;
        }
        let report = Report {
            session_id: s.id.clone(),
            consistency,
            snapshot_taken: self.snapshot_taken,
            errors: self.errors,
            warnings: self.warnings,
            hooks: self.hooks,
            freeze: self.freeze,
            snapshot: self.snapshot,
            config: Some(ConfigReport { path: s.config_path.clone(), format: s.config.format }),
            interrupted_by: self.interrupted_by,
            duration_ms: ms(started.elapsed()),
        };
        tracing::info!("{}", report.summary());
        report
    }
}

fn ns_to_ms(ns: u64) -> f64 {
    ms(Duration::from_nanos(ns))
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

fn last_line(output: &str) -> String {
    let line = output.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    line.chars().take(200).collect()
}

/// `q-<unix seconds>-<random>`: sortable, unique per machine.
fn new_session_id() -> String {
    let mut rnd = [0u8; 4];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut rnd));
    format!("q-{}-{:08x}", unix_ms() / 1000, u32::from_le_bytes(rnd))
}
