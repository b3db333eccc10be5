//! Running one hook's phase — a script or a WebAssembly plugin — with its
//! retries and policy, and recording what happened in the report.
//!
//! Both kinds share the session's contract: validated before anything runs,
//! retried as configured, timed out per attempt, post run for every hook
//! whose pre phase was reached.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::{HookBody, HookSpec, PluginAction, ScriptAction};
use crate::contain::Containment;
use crate::duration::ms;
use crate::hooks::script::{self, ScriptOutcome, ScriptSpec};
use crate::hooks::wasm::{
    CallContext, CallOutcome, CheckRun, Grants, InstanceConfig, Plugin, PluginError, PluginInstance, SnapshotOutcome, WasmEngine,
};
use crate::hooks::OUTPUT_CAP;
use crate::report::{label_name, Consistency, ErrorCode, HookKind, HookReport, Outcome, Phase, ReportError};
use crate::trust::{self, TrustError, TrustedFile};

use super::record::Run;

const KILL_GRACE: Duration = Duration::from_secs(2);

/// What the phase knows about the session.
pub(super) struct PhaseContext<'a> {
    pub session_id: &'a str,
    /// For post hooks: whether the snapshot was taken, and its label.
    pub snapshot: Option<(bool, Consistency)>,
}

/// A hook after validation: its scripts opened and checked (or its plugin
/// loaded), or refused.
pub(crate) struct ReadyHook {
    pub spec: HookSpec,
    ready: Ready,
    /// What passed but deserves the admin's attention (a native config's
    /// script that group or others may read).
    pub warnings: Vec<String>,
}

///
/// Each variant carries what it runs (the script action next to its checked
/// file, the plugin action next to its loaded plugin), so a script hook can
/// never meet a plugin body when it runs.
enum Ready {
    /// None for a phase the hook has no script for.
    Script {
        pre: Option<ReadyScript>,
        post: Option<ReadyScript>,
        /// What the pre script left running (a lock holder): killed once
        /// post ran, or when the hook is dropped at the session's end.
        held: Option<Containment>,
    },
    /// The instance lives from pre to post; None until pre, or after a
    /// timeout in pre dropped it.
    Plugin { action: PluginAction, plugin: Box<Plugin>, grants: Grants, instance: Option<PluginInstance> },
    /// Why the hook may not run at all. A bad script refuses the pair: a pre
    /// that locks without a post that unlocks is worse than neither.
    Refused(ReportError),
}

/// A script checked by `trust` and opened, with how to run it.
struct ReadyScript {
    file: TrustedFile,
    action: ScriptAction,
}

impl ReadyHook {
    /// Checks everything the hook needs before any hook runs.
    pub fn validate(spec: &HookSpec, engine: Option<&WasmEngine>) -> ReadyHook {
        Self::validate_loaded(spec, engine, None)
    }

    /// [`Self::validate`], with the plugin already loaded (trust-checked,
    /// read and compiled through `engine`, moments ago) if `loaded` is given.
    pub(crate) fn validate_loaded(spec: &HookSpec, engine: Option<&WasmEngine>, loaded: Option<Result<Plugin, PluginError>>) -> ReadyHook {
        let ready = match &spec.body {
            HookBody::Script { pre, post } => validate_scripts(pre.as_ref(), post.as_ref()),
            HookBody::Plugin(action) => validate_plugin(action, engine, loaded),
        };
        let ready = ready.unwrap_or_else(Ready::Refused);
        let warnings = match &ready {
            // Only the native rule lets such a script pass; the legacy one refuses it.
            Ready::Script { pre, post, .. } => [pre, post].into_iter().flatten().filter_map(|s| s.file.group_or_other_access()).collect(),
            Ready::Plugin { .. } | Ready::Refused(_) => Vec::new(),
        };
        ReadyHook { spec: spec.clone(), ready, warnings }
    }

    /// The loaded plugin of a plugin hook that passed validation.
    pub fn plugin(&self) -> Option<&Plugin> {
        match &self.ready {
            Ready::Plugin { plugin, .. } => Some(plugin),
            Ready::Script { .. } | Ready::Refused(_) => None,
        }
    }

    /// Takes an instance of its plugin made ahead (see `session::Preload`) as
    /// the one pre will call; a hook validation refused drops it unused.
    pub(super) fn adopt(&mut self, made: PluginInstance) {
        if let Ready::Plugin { instance: slot @ None, .. } = &mut self.ready {
            *slot = Some(made);
        }
    }

    /// Ends the hook at the session's end: a plugin instance's connections
    /// close now (its memory is freed on the engine's thread); what a pre
    /// script left running is killed as the hook is dropped.
    pub(super) fn close(self) {
        if let Ready::Plugin { plugin, instance: Some(instance), .. } = self.ready {
            plugin.retire(instance);
        }
    }

    pub fn refused(&self) -> Option<&ReportError> {
        match &self.ready {
            Ready::Refused(e) => Some(e),
            _ => None,
        }
    }

    pub fn kind(&self) -> HookKind {
        HookKind::of(&self.spec.body)
    }

    /// Runs `phase` and records it; true if it succeeded (or had nothing to do).
    pub(super) async fn run(&mut self, phase: Phase, ctx: &PhaseContext<'_>, r: &mut Run) -> bool {
        let spec = &self.spec;
        match &mut self.ready {
            Ready::Refused(e) => {
                r.refused(&spec.name, HookKind::of(&spec.body), phase, e.clone());
                false
            }
            Ready::Script { pre, post, held } => {
                let script = match phase {
                    Phase::Pre => pre.as_ref(),
                    Phase::Post => post.as_ref(),
                };
                let ok = match script {
                    Some(s) => run_script(spec, phase, &s.file, &s.action, ctx, r, held).await,
                    // No script for this phase: nothing to do.
                    None => true,
                };
                if phase == Phase::Post {
                    if let Some(leftovers) = held.take() {
                        leftovers.close(KILL_GRACE).await;
                    }
                }
                ok
            }
            Ready::Plugin { action, plugin, grants, instance } => run_plugin(spec, action, plugin, grants, instance, phase, ctx, r).await,
        }
    }

    /// Connections this hook's plugin held open that the other side closed
    /// (empty for scripts: what a script's leftovers hold is not visible).
    pub fn hung_up_connections(&self) -> Vec<String> {
        match &self.ready {
            Ready::Plugin { instance: Some(i), .. } => i.hung_up_connections(),
            _ => Vec::new(),
        }
    }

    /// Runs the `check` of this hook's plugin in its own instance, with
    /// exactly the grants, params, memory limit, deadline and output cap a
    /// session gives its `pre` and `post`. None for scripts and refused hooks.
    pub async fn check_plugin(&self, check_id: &str) -> Option<CheckRun> {
        match &self.ready {
            Ready::Plugin { action, plugin, grants, .. } => Some(plugin.check(instance_config(&self.spec, action, grants), check_id).await),
            Ready::Script { .. } | Ready::Refused(_) => None,
        }
    }

    /// Artifacts the hook's plugin stored (empty for scripts).
    pub fn artifacts(&self) -> &[crate::hooks::wasm::Artifact] {
        match &self.ready {
            Ready::Plugin { instance: Some(i), .. } => i.artifacts(),
            _ => &[],
        }
    }
}

fn validate_scripts(pre: Option<&ScriptAction>, post: Option<&ScriptAction>) -> Result<Ready, ReportError> {
    let open = |action: Option<&ScriptAction>, phase: Phase| -> Result<Option<ReadyScript>, ReportError> {
        match action {
            None => Ok(None),
            Some(a) => trust::open_trusted(&a.path, a.permissions.rule())
                .map(|file| Some(ReadyScript { file, action: a.clone() }))
                .map_err(|e| trust_error(phase, &a.path, &e)),
        }
    };
    Ok(Ready::Script { pre: open(pre, Phase::Pre)?, post: open(post, Phase::Post)?, held: None })
}

fn validate_plugin(
    action: &PluginAction,
    engine: Option<&WasmEngine>,
    loaded: Option<Result<Plugin, PluginError>>,
) -> Result<Ready, ReportError> {
    let load_failed = |message: String| ReportError { code: ErrorCode::PluginLoadFailed, message };
    let engine = engine.ok_or_else(|| load_failed("the WebAssembly runtime could not be started".into()))?;
    let grants =
        Grants::parse(&action.grants).map_err(|e| load_failed(format!("plugin {}: grant in the config: {e}", action.path.display())))?;
    let plugin = loaded.unwrap_or_else(|| engine.load(&action.path)).map_err(|e| load_failed(e.to_string()))?;
    Ok(Ready::Plugin { action: action.clone(), plugin: Box::new(plugin), grants, instance: None })
}

/// The report code and message for a script that failed its checks.
pub(crate) fn trust_error(phase: Phase, path: &Path, e: &TrustError) -> ReportError {
    let code = match (phase, e.is_not_found()) {
        (Phase::Pre, true) => ErrorCode::PreScriptNotFound,
        (Phase::Post, true) => ErrorCode::PostScriptNotFound,
        (Phase::Pre, false) => ErrorCode::InsufficientPermissionforPreScript,
        (Phase::Post, false) => ErrorCode::InsufficientPermissionforPostScript,
    };
    ReportError { code, message: format!("{} script {}: {e}", phase.name(), path.display()) }
}

/// A hook that ran but failed: which code, and what to say.
struct Failure {
    code: ErrorCode,
    how: String,
}

fn execution_failed(phase: Phase) -> ErrorCode {
    match phase {
        Phase::Pre => ErrorCode::PreScriptExecutionFailed,
        Phase::Post => ErrorCode::PostScriptExecutionFailed,
    }
}

/// `held` receives a pre script's leftovers; a post script's die when it returns.
async fn run_script(
    spec: &HookSpec,
    phase: Phase,
    file: &TrustedFile,
    action: &ScriptAction,
    ctx: &PhaseContext<'_>,
    r: &mut Run,
    held: &mut Option<Containment>,
) -> bool {
    let name = &spec.name;
    let mut env = vec![
        ("QUIESCE_SESSION_ID".to_string(), ctx.session_id.to_string()),
        ("QUIESCE_PHASE".to_string(), phase.name().to_string()),
        ("QUIESCE_HOOK".to_string(), name.clone()),
    ];
    if let Some((taken, label)) = ctx.snapshot {
        env.push(("QUIESCE_SNAPSHOT_TAKEN".into(), taken.to_string()));
        env.push(("QUIESCE_CONSISTENCY".into(), label_name(label)));
    }
    let script_spec = ScriptSpec {
        name: format!("{name}/{}", phase.name()),
        args: action.args.clone(),
        env,
        timeout: spec.timeout,
        retries: action.retries,
        retry_delay: spec.retry_delay,
        kill_grace: KILL_GRACE,
        warning_exit_codes: spec.warning_exit_codes.clone(),
        output_cap: OUTPUT_CAP,
    };
    tracing::info!("running {} hook {name}: {}", phase.name(), action.path.display());
    let run = script::run_script(file, &script_spec).await;
    let (outcome, exit_code, failure) = match &run.outcome {
        ScriptOutcome::Succeeded => (Outcome::Succeeded, Some(0), None),
        ScriptOutcome::SucceededWithWarning { exit_code } => {
            r.warnings.push(format!("{} hook {name} exited {exit_code} (a warning)", phase.name()));
            (Outcome::Succeeded, Some(*exit_code), None)
        }
        ScriptOutcome::Failed { exit_code, signal } => {
            let how = match (exit_code, signal) {
                (Some(c), _) => format!("exited {c}"),
                (None, Some(s)) => format!("was killed by signal {s}"),
                _ => "failed".into(),
            };
            (Outcome::Failed, *exit_code, Some(Failure { code: execution_failed(phase), how }))
        }
        ScriptOutcome::TimedOut => {
            let code = if phase == Phase::Pre { ErrorCode::PreScriptTimeout } else { ErrorCode::PostScriptTimeout };
            let how = format!("ran past its {} s timeout (per attempt); everything it started was killed", spec.timeout.as_secs());
            (Outcome::TimedOut, None, Some(Failure { code, how }))
        }
        ScriptOutcome::SpawnFailed { message } => {
            (Outcome::Failed, None, Some(Failure { code: execution_failed(phase), how: format!("could not be started: {message}") }))
        }
    };
    let tail = run.attempts.last().map(|a| last_line(&a.output)).unwrap_or_default();
    let attempts = run.attempts.len() as u32;
    let what = format!("{} ({})", name, action.path.display());
    let ok = record(r, spec, HookKind::Script, phase, &what, attempts, run.duration, outcome, exit_code, failure, &tail);
    if phase == Phase::Pre {
        *held = Some(run.leftovers);
    }
    ok
}

#[allow(clippy::too_many_arguments)]
async fn run_plugin(
    spec: &HookSpec,
    action: &PluginAction,
    plugin: &Plugin,
    grants: &Grants,
    instance: &mut Option<PluginInstance>,
    phase: Phase,
    ctx: &PhaseContext<'_>,
    r: &mut Run,
) -> bool {
    let name = &spec.name;
    let started = Instant::now();
    let what = format!("{} ({})", name, action.path.display());
    if phase == Phase::Post && !instance.as_ref().is_some_and(|i| i.is_alive()) {
        // Its pre call trapped or timed out: the store is gone, and with it
        // every connection — the database already released what it held.
        let why = instance.as_ref().and_then(|i| i.death()).unwrap_or("it never started").to_string();
        r.push_hook(HookReport {
            name: name.clone(),
            kind: HookKind::Wasm,
            phase,
            attempts: 0,
            outcome: Outcome::Skipped,
            duration_ms: 0.0,
            exit_code: None,
            message: Some(format!(
                "post not run: the plugin instance was dropped ({why}); its connections were closed, releasing what it held"
            )),
        });
        return true;
    }
    let max_attempts = action.retries.saturating_add(1);
    let mut attempts = 0;
    let last = loop {
        attempts += 1;
        if instance.is_none() {
            match plugin.instantiate(instance_config(spec, action, grants)).await {
                Ok(i) => *instance = Some(i),
                Err(e) => {
                    let failure = Failure { code: ErrorCode::PluginLoadFailed, how: format!("could not be instantiated: {e}") };
                    return record(
                        r,
                        spec,
                        HookKind::Wasm,
                        phase,
                        &what,
                        attempts,
                        started.elapsed(),
                        Outcome::Failed,
                        None,
                        Some(failure),
                        "",
                    );
                }
            }
        }
        let Some(inst) = instance.as_mut() else { break CallOutcome::Dead };
        tracing::info!("calling {} of plugin hook {name} (attempt {attempts}/{max_attempts})", phase.name());
        let call = CallContext { session_id: ctx.session_id.to_string(), attempt: attempts };
        let outcome = match phase {
            Phase::Pre => inst.pre(&call).await,
            Phase::Post => {
                let (taken, label) = ctx.snapshot.unwrap_or((false, Consistency::None));
                let post = inst.post_outcome(&call, &SnapshotOutcome { taken, label }).await;
                if let Some(why) = &post.not_held {
                    not_held(r, name, why);
                }
                post.outcome
            }
        };
        forward_events(inst, name, r);
        match &outcome {
            CallOutcome::Retryable(m) if attempts < max_attempts => {
                tracing::warn!("plugin hook {name}: {m}; retrying");
                tokio::time::sleep(spec.retry_delay).await;
            }
            // A fresh instance for the next attempt: the timed-out one is gone.
            CallOutcome::TimedOut if phase == Phase::Pre && attempts < max_attempts => {
                tracing::warn!("plugin hook {name} timed out; retrying in a fresh instance");
                *instance = None;
            }
            _ => break outcome,
        }
    };
    let timeout_s = spec.timeout.as_secs_f64();
    let (outcome, failure) = match &last {
        CallOutcome::Ok(_) => (Outcome::Succeeded, None),
        CallOutcome::Retryable(m) | CallOutcome::Fatal(m) => {
            (Outcome::Failed, Some(Failure { code: execution_failed(phase), how: format!("failed: {m}") }))
        }
        CallOutcome::Trapped(m) | CallOutcome::MemoryExhausted(m) => (
            Outcome::Failed,
            Some(Failure {
                code: ErrorCode::PluginTrapped,
                how: format!("trapped: {m}; the instance was dropped, closing its connections"),
            }),
        ),
        CallOutcome::TimedOut => (
            Outcome::TimedOut,
            Some(Failure {
                code: ErrorCode::PluginTimeout,
                how: format!("ran past its {timeout_s} s limit per call; the instance was dropped, closing its connections"),
            }),
        ),
        CallOutcome::Dead => (Outcome::Skipped, None),
    };
    let detail = match &last {
        CallOutcome::Ok(m) => m.clone(),
        _ => String::new(),
    };
    record(r, spec, HookKind::Wasm, phase, &what, attempts, started.elapsed(), outcome, None, failure, &detail)
}

/// The sandbox a plugin hook's instance gets: the admin's grants and
/// params, the hook's memory limit and per-call deadline, the output cap.
pub(super) fn instance_config(spec: &HookSpec, action: &PluginAction, grants: &Grants) -> InstanceConfig {
    InstanceConfig {
        name: spec.name.clone(),
        grants: grants.clone(),
        params: action.params.clone(),
        memory_limit_bytes: usize::try_from(action.memory_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX),
        call_timeout: spec.timeout,
        output_cap: OUTPUT_CAP,
    }
}

/// The plugin said in post that the application's quiesce did not hold
/// through the snapshot (a pause that expired, a lock it lost): post runs
/// after the snapshot, so the label the report gives must come down now —
/// the session judges it from `apps_quiesced` when it finishes.
fn not_held(r: &mut Run, name: &str, why: &str) {
    r.apps_quiesced = false;
    let m = format!(
        "plugin hook {name} says the application's quiesce did not hold through the snapshot: {why}; \
         the snapshot may hold writes made after the quiesce ended, so the label is at most FileSystemConsistent"
    );
    tracing::error!("{m}");
    r.error(ErrorCode::QuiesceNotHeld, m);
}

/// Refused capabilities become `GrantDenied` errors. The plugin's log
/// records are not logged here: the `log` import logged each one as it came
/// (at the plugin's level), and draining logged its printed lines.
fn forward_events(inst: &mut PluginInstance, name: &str, r: &mut Run) {
    let events = inst.take_events();
    for d in &events.denials {
        let message = format!("plugin hook {name}: {d}; {}", d.advice());
        tracing::warn!("{message}");
        r.error(ErrorCode::GrantDenied, message);
    }
    if events.output_dropped_bytes > 0 {
        tracing::warn!(hook = %name, "{} bytes of plugin output over the cap were dropped", events.output_dropped_bytes);
    }
}

/// Logs and records one phase's result; true if it succeeded.
#[allow(clippy::too_many_arguments)]
fn record(
    r: &mut Run,
    spec: &HookSpec,
    kind: HookKind,
    phase: Phase,
    what: &str,
    attempts: u32,
    duration: Duration,
    outcome: Outcome,
    exit_code: Option<i32>,
    failure: Option<Failure>,
    detail: &str,
) -> bool {
    let ok = failure.is_none();
    let message = match &failure {
        Some(f) => {
            let m = format!(
                "{} hook {what} {} after {attempts} attempt(s){}",
                phase.name(),
                f.how,
                if detail.is_empty() { String::new() } else { format!("; last output: {detail}") }
            );
            tracing::error!("{m}");
            r.error(f.code, m.clone());
            Some(m)
        }
        None => {
            if phase == Phase::Pre {
                r.pre_succeeded += 1;
            }
            tracing::info!("{} hook {} succeeded in {:.1} ms ({attempts} attempt(s))", phase.name(), spec.name, ms(duration));
            (!detail.is_empty()).then(|| detail.to_string())
        }
    };
    r.push_hook(HookReport { name: spec.name.clone(), kind, phase, attempts, outcome, duration_ms: ms(duration), exit_code, message });
    ok
}

fn last_line(output: &str) -> String {
    let line = output.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    line.chars().take(200).collect()
}
