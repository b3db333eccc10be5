//! `quiesce check`: the dry run. Prepares the session exactly as `quiesce
//! snapshot` would and runs its validation step ([`Session::validate`]: the
//! same script checks, plugin loads and freeze checks), then shows the result
//! — so check and session cannot disagree. Runs nothing, freezes nothing.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{Config, ConfigError, HookSpec, OnFailure, ScriptAction};
use crate::freeze::{Skipped, Target};
use crate::hooks::wasm::{CheckRun, Grant, Grants, ParamDoc, Severity, WasmEngine, WitVersion};
use crate::report::{ErrorCode, Phase, ReportError};
use crate::session::{config_error_code, ReadyHook, Session, SessionOptions};
use crate::snapshot::ShellCommand;

#[derive(Debug, Serialize)]
pub struct Problem {
    pub code: ErrorCode,
    pub message: String,
}

impl From<&ReportError> for Problem {
    fn from(e: &ReportError) -> Problem {
        Problem { code: e.code, message: e.message.clone() }
    }
}

#[derive(Debug, Serialize)]
pub struct ScriptCheck {
    #[serde(serialize_with = "crate::serde_path::lossy")]
    pub path: PathBuf,
    pub args: Vec<String>,
    pub attempts: u32,
    /// "ok", or why the session would refuse it.
    pub status: String,
}

#[derive(Debug, Serialize)]
pub struct PluginCheck {
    #[serde(serialize_with = "crate::serde_path::lossy")]
    pub path: PathBuf,
    /// "ok", or why the session would refuse it.
    pub status: String,
    /// What the plugin asks for (from its `describe`).
    pub requested_grants: Vec<String>,
    /// What the admin granted in the config: the plugin gets exactly these.
    pub granted: Vec<String>,
    /// Requested but not granted: calls needing them will be refused (`GrantDenied`).
    pub not_granted: Vec<String>,
    /// Requested only as the default of a parameter this config sets to
    /// something else (the plugin will not use them): neither a problem nor
    /// a reason to grant them.
    pub default_only: Vec<DefaultGrant>,
    /// Granted paths under directories that are not root's alone (warnings, not problems).
    pub grant_warnings: Vec<String>,
    /// The version of `quiesce:plugin` it speaks (None when it did not load).
    pub wit_version: Option<WitVersion>,
    /// What the plugin's own `check` found, run with the hook's grants,
    /// params and limits (None when it did not load).
    pub check: Option<CheckRun>,
}

/// One plugin hook's [`PluginCheck`], for callers that want only the
/// plugins ([`check_plugins`]).
#[derive(Debug, Serialize)]
pub struct HookPluginCheck {
    pub hook: String,
    pub plugin: PluginCheck,
    /// What `check` would list as problems for this hook (refused, or its
    /// plugin's check found something that will fail).
    pub problems: Vec<Problem>,
    pub warnings: Vec<String>,
}

/// A grant the plugin asks for as its parameter's default, which the config overrides.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct DefaultGrant {
    pub grant: String,
    pub param: String,
    pub configured: String,
}

#[derive(Debug, Serialize)]
pub struct HookCheck {
    pub name: String,
    pub pre: Option<ScriptCheck>,
    pub post: Option<ScriptCheck>,
    pub plugin: Option<PluginCheck>,
    pub timeout_s: u64,
    pub on_failure: OnFailure,
}

#[derive(Debug, Serialize)]
pub struct FreezeCheck {
    pub enabled: bool,
    pub max_freeze_s: f64,
    /// In freeze order; thaw is the reverse.
    pub targets: Vec<Target>,
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub ok: bool,
    #[serde(serialize_with = "crate::serde_path::lossy_opt")]
    pub config: Option<PathBuf>,
    /// None when the config could not be used.
    pub format: Option<crate::config::Format>,
    pub hooks: Vec<HookCheck>,
    pub freeze: FreezeCheck,
    pub snapshot: Option<String>,
    /// How the processes quiesce starts are contained (cgroup v2 or subreaper).
    pub containment: String,
    pub problems: Vec<Problem>,
    /// What passes but deserves attention (a native config's script that
    /// group or others may read); the session logs and reports the same.
    pub warnings: Vec<String>,
}

/// Checks what a session with this config and these `--mount`s would do.
/// Plugins are loaded (compiled and cached) and asked to describe themselves.
pub async fn check(config: Result<Config, ConfigError>, mounts: &[PathBuf], snapshot_cmd: Option<&str>, cache_dir: &Path) -> CheckReport {
    let format = config.as_ref().ok().map(|c| c.format);
    let path = match &config {
        Ok(c) => c.path.clone(),
        Err(e) => Some(e.path().to_path_buf()),
    };
    let config_problem = config.as_ref().err().map(|e| Problem { code: config_error_code(e), message: e.to_string() });
    let opts = SessionOptions {
        mounts: mounts.to_vec(),
        provider: snapshot_cmd.map(|command| Box::new(ShellCommand::new(command)) as _),
        cache_dir: Some(cache_dir.to_path_buf()),
        ..Default::default()
    };
    let session = match Session::prepare(config, opts) {
        Ok(s) => s,
        // A --mount that is not a mount point: the session stops here too (a usage error).
        Err(e) => {
            let problems =
                config_problem.into_iter().chain([Problem { code: ErrorCode::FsFreezeFailed, message: e.to_string() }]).collect();
            let freeze = FreezeCheck { enabled: false, max_freeze_s: 0.0, targets: vec![], skipped: vec![] };
            return CheckReport {
                ok: false,
                config: path,
                format,
                hooks: vec![],
                freeze,
                snapshot: None,
                containment: crate::contain::mechanism().to_string(),
                problems,
                warnings: vec![],
            };
        }
    };
    let validation = session.validate();
    let mut problems: Vec<Problem> = session.config_error().map(Problem::from).into_iter().collect();
    let mut warnings = Vec::new();
    let mut hooks = Vec::new();
    for h in &validation.hooks {
        if let Some(e) = h.refused() {
            problems.push(e.into());
        }
        warnings.extend(h.warnings.iter().map(|w| format!("hook {}: {w}", h.spec.name)));
        hooks.push(hook_check(h, session.id(), &mut warnings, &mut problems).await);
    }
    problems.extend(validation.freeze_problems.iter().map(Problem::from));
    let plan = session.plan();
    let freeze = FreezeCheck {
        enabled: plan.is_some(),
        max_freeze_s: session.max_freeze().as_secs_f64(),
        targets: plan.map(|p| p.targets.clone()).unwrap_or_default(),
        skipped: plan.map(|p| p.skipped.clone()).unwrap_or_default(),
    };
    let snapshot = session.provider().map(|p| p.describe());
    let containment = crate::contain::mechanism().to_string();
    CheckReport { ok: problems.is_empty(), config: path, format, hooks, freeze, snapshot, containment, problems, warnings }
}

/// Loads every plugin hook of `config` and runs its plugin's `check` with the
/// hook's grants, params and limits — what `quiesce check` shows for plugins,
/// without the scripts and the freeze plan (for `quiesce doctor`). Runs no
/// hook, quiesces and freezes nothing.
pub async fn check_plugins(config: &Config, cache_dir: &Path) -> Vec<HookPluginCheck> {
    let engine = match WasmEngine::new(cache_dir) {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::error!("cannot start the WebAssembly runtime: {e}");
            None
        }
    };
    let check_id = format!("check-{}", std::process::id());
    let mut out = Vec::new();
    for spec in config.hooks.iter().filter(|h| h.plugin().is_some()) {
        let h = ReadyHook::validate(spec, engine.as_ref());
        let (mut warnings, mut problems) = (Vec::new(), Vec::new());
        if let Some(e) = h.refused() {
            problems.push(e.into());
        }
        if let Some(plugin) = hook_check(&h, &check_id, &mut warnings, &mut problems).await.plugin {
            out.push(HookPluginCheck { hook: spec.name.clone(), plugin, problems, warnings });
        }
    }
    out
}

/// The problems a plugin's check run means for `quiesce check`: each
/// `error` finding, a failed call, each refused capability.
fn check_problems(hook: &str, run: &CheckRun) -> Vec<Problem> {
    let problem = |message: String| Problem { code: ErrorCode::PluginCheckFailed, message: format!("hook {hook}: {message}") };
    let mut out: Vec<Problem> =
        run.findings.iter().filter(|f| f.severity == Severity::Error).map(|f| problem(format!("{}: {}", f.code, f.message))).collect();
    if let Some(why) = &run.failed {
        out.push(problem(format!("the plugin's check did not finish: {why}")));
    }
    out.extend(run.denials.iter().map(|d| problem(format!("during its check: {d}"))));
    out
}

/// What the plugin will need under this config's parameters. Plugins ask
/// (in `describe`) for the grants their defaults need — lockd and the
/// database plugins ask for their default `target`. A config that sets that
/// parameter to another value makes the default's grant useless (reporting it
/// as missing would tell the admin to widen the sandbox for nothing) and
/// needs the configured value's grant instead. Returns (needed, default-only).
fn grants_needed(requested: &[String], params: &[ParamDoc], configured: &[(String, String)]) -> (Vec<String>, Vec<DefaultGrant>) {
    let mut needed = Vec::new();
    let mut default_only = Vec::new();
    for r in requested {
        let overridden = params.iter().find_map(|p| {
            let default = p.default.as_deref()?;
            let is_default_grant = r == default || r.split_once(':').is_some_and(|(_, rest)| rest == default);
            let value = configured.iter().find(|(k, _)| *k == p.name).map(|(_, v)| v)?;
            (is_default_grant && value != default).then_some((p, value))
        });
        match overridden {
            Some((p, value)) => {
                default_only.push(DefaultGrant { grant: r.clone(), param: p.name.clone(), configured: value.clone() });
                // The configured value stands in for the default: a grant
                // itself (`target = "tcp:..."`), or a path of the same kind.
                let kind = r.split_once(':').map(|(k, _)| k).unwrap_or("");
                let replacement = if value.parse::<Grant>().is_ok() { value.clone() } else { format!("{kind}:{value}") };
                if !needed.contains(&replacement) {
                    needed.push(replacement);
                }
            }
            None if !needed.contains(r) => needed.push(r.clone()),
            None => {}
        }
    }
    (needed, default_only)
}

async fn hook_check(h: &ReadyHook, check_id: &str, warnings: &mut Vec<String>, problems: &mut Vec<Problem>) -> HookCheck {
    let spec: &HookSpec = &h.spec;
    let refused = h.refused();
    // The session checks pre, then post, and refuses the pair at the first
    // failure: a post after a refused pre was not looked at.
    let refused_phase = refused.and_then(|e| match e.code {
        ErrorCode::PreScriptNotFound | ErrorCode::InsufficientPermissionforPreScript => Some(Phase::Pre),
        ErrorCode::PostScriptNotFound | ErrorCode::InsufficientPermissionforPostScript => Some(Phase::Post),
        _ => None,
    });
    let script = |a: Option<&ScriptAction>, phase: Phase| {
        a.map(|a| ScriptCheck {
            path: a.path.clone(),
            args: a.args.clone(),
            attempts: a.retries.saturating_add(1),
            status: match (refused, refused_phase) {
                (Some(e), Some(p)) if p == phase => format!("{}: {}", e.code.as_str(), e.message),
                (Some(_), Some(Phase::Pre)) => "not checked: the pre script already refuses the pair".into(),
                _ => "ok".into(),
            },
        })
    };
    let (pre, post) = spec.scripts();
    let plugin = match spec.plugin() {
        Some(action) => {
            let mut check = PluginCheck {
                path: action.path.clone(),
                status: "ok".into(),
                requested_grants: Vec::new(),
                granted: action.grants.clone(),
                not_granted: Vec::new(),
                default_only: Vec::new(),
                grant_warnings: Vec::new(),
                wit_version: h.plugin().map(|p| p.wit_version()),
                check: None,
            };
            match (refused, h.plugin()) {
                (Some(e), _) => check.status = format!("{}: {}", e.code.as_str(), e.message),
                (None, Some(p)) => match (p.describe().await, Grants::parse(&action.grants)) {
                    (Ok(info), Ok(grants)) => {
                        let (needed, default_only) = grants_needed(&info.grants, &info.params, &action.params);
                        check.not_granted = grants.missing(&needed).into_iter().map(String::from).collect();
                        check.default_only = default_only;
                        check.grant_warnings = grants.untrusted_ancestors();
                        check.requested_grants = info.grants;
                    }
                    (Err(e), _) => warnings.push(format!("hook {}: cannot ask the plugin which grants it needs: {e}", spec.name)),
                    // Unreachable: validation parsed the same grants.
                    (_, Err(e)) => warnings.push(format!("hook {}: grant in the config: {e}", spec.name)),
                },
                (None, None) => {}
            }
            if refused.is_none() {
                check.check = h.check_plugin(check_id).await;
            }
            if let Some(run) = &check.check {
                problems.extend(check_problems(&spec.name, run));
            }
            Some(check)
        }
        None => None,
    };
    HookCheck {
        name: spec.name.clone(),
        pre: script(pre, Phase::Pre),
        post: script(post, Phase::Post),
        plugin,
        timeout_s: spec.timeout.as_secs(),
        on_failure: spec.on_failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(name: &str, default: &str) -> ParamDoc {
        ParamDoc { name: name.into(), description: String::new(), required: false, default: Some(default.into()) }
    }

    #[test]
    fn a_grant_requested_for_an_overridden_default_is_not_needed_but_the_configured_one_is() {
        let requested = vec!["tcp:127.0.0.1:7000".to_string(), "file:/etc/quiesce/secrets/pg".to_string()];
        let params = [param("target", "tcp:127.0.0.1:7000"), param("password_file", "/etc/quiesce/secrets/pg")];
        // Nothing configured: the defaults are what the plugin will use.
        assert_eq!(grants_needed(&requested, &params, &[]), (requested.clone(), vec![]));
        // Configured to the default's value: still needed.
        let same = [("target".to_string(), "tcp:127.0.0.1:7000".to_string())];
        assert_eq!(grants_needed(&requested, &params, &same).0, requested);
        // Overridden: the default is not needed, the configured value is.
        let set = [("target".to_string(), "tcp:127.0.0.1:40000".to_string()), ("password_file".to_string(), "/root/pg.pw".to_string())];
        let (needed, default_only) = grants_needed(&requested, &params, &set);
        assert_eq!(needed, ["tcp:127.0.0.1:40000", "file:/root/pg.pw"]);
        assert_eq!(default_only.len(), 2);
        assert_eq!(default_only[0], DefaultGrant { grant: requested[0].clone(), param: "target".into(), configured: set[0].1.clone() });
    }
}
