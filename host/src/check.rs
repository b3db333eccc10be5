//! `quiesce check`: the dry run. Parses the config, checks every script the
//! way a session would, plans the freeze — and runs nothing, freezes nothing.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{Config, ConfigError, OnFailure, PluginAction, ScriptAction};
use crate::freeze::{self, Selection, Skipped, Target};
use crate::hooks::wasm::{Grants, WasmEngine};
use crate::report::ErrorCode;
use crate::report::Phase;
use crate::session::{config_error_code, trust_error};
use crate::trust::{self, Rule};

#[derive(Debug, Serialize)]
pub struct Problem {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct ScriptCheck {
    pub path: PathBuf,
    pub args: Vec<String>,
    pub attempts: u32,
    /// "ok", or why the session would refuse it.
    pub status: String,
}

#[derive(Debug, Serialize)]
pub struct PluginCheck {
    pub path: PathBuf,
    /// "ok", or why the session would refuse it.
    pub status: String,
    /// What the plugin asks for (from its `describe`).
    pub requested_grants: Vec<String>,
    /// What the admin granted in the config: the plugin gets exactly these.
    pub granted: Vec<String>,
    /// Requested but not granted: calls needing them will be refused (`GrantDenied`).
    pub not_granted: Vec<String>,
    /// Granted paths under directories that are not root's alone (warnings, not problems).
    pub grant_warnings: Vec<String>,
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
    pub config: Option<PathBuf>,
    pub format: Option<crate::config::Format>,
    pub hooks: Vec<HookCheck>,
    pub freeze: FreezeCheck,
    pub snapshot: Option<String>,
    pub problems: Vec<Problem>,
}

/// Checks what a session with this config and these `--mount`s would do.
/// Plugins are loaded (compiled and cached) and asked to describe themselves.
pub async fn check(config: Result<Config, ConfigError>, mounts: &[PathBuf], snapshot_cmd: Option<&str>, cache_dir: &Path) -> CheckReport {
    let mut problems = Vec::new();
    let (config, path, format) = match config {
        Ok(c) => {
            let (p, f) = (c.path.clone(), c.format);
            (c, p, Some(f))
        }
        Err(e) => {
            problems.push(Problem { code: config_error_code(&e), message: e.to_string() });
            (Config::builtin(), None, None)
        }
    };
    let mut hooks = Vec::new();
    let mut engine: Option<Result<WasmEngine, String>> = None;
    for h in &config.hooks {
        let (pre, post) = h.scripts();
        let mut script = |a: Option<&ScriptAction>, pre: bool| {
            a.map(|a| ScriptCheck {
                path: a.path.clone(),
                args: a.args.clone(),
                attempts: a.retries + 1,
                status: check_script(&a.path, pre, &mut problems),
            })
        };
        let pre = script(pre, true);
        let post = script(post, false);
        let plugin = match h.plugin() {
            Some(action) => {
                let engine = engine.get_or_insert_with(|| WasmEngine::new(cache_dir).map_err(|e| e.to_string()));
                Some(check_plugin(action, engine.as_ref(), &mut problems).await)
            }
            None => None,
        };
        hooks.push(HookCheck { name: h.name.clone(), pre, post, plugin, timeout_s: h.timeout.as_secs(), on_failure: h.on_failure });
    }
    let mount_list = if mounts.is_empty() { config.freeze.mounts.clone() } else { mounts.to_vec() };
    let mut freeze = FreezeCheck {
        enabled: config.freeze.enabled,
        max_freeze_s: config.freeze.max_freeze.as_secs_f64(),
        targets: vec![],
        skipped: vec![],
    };
    if config.freeze.enabled {
        match freeze::plan(&Selection { mounts: mount_list, exclude: config.freeze.exclude.clone() }) {
            Ok(plan) => {
                if plan.targets.is_empty() {
                    problems.push(Problem { code: ErrorCode::FsFreezeFailed, message: "no eligible file system to freeze".into() });
                }
                freeze.targets = plan.targets;
                freeze.skipped = plan.skipped;
            }
            Err(e) => problems.push(Problem { code: ErrorCode::FsFreezeFailed, message: e.to_string() }),
        }
    }
    let snapshot = snapshot_cmd
        .map(|c| format!("command: {c}"))
        .or_else(|| config.snapshot.as_ref().map(|s| crate::snapshot::from_spec(s).describe()));
    CheckReport { ok: problems.is_empty(), config: path, format, hooks, freeze, snapshot, problems }
}

async fn check_plugin(action: &PluginAction, engine: Result<&WasmEngine, &String>, problems: &mut Vec<Problem>) -> PluginCheck {
    let mut check = PluginCheck {
        path: action.path.clone(),
        status: "ok".into(),
        requested_grants: Vec::new(),
        granted: action.grants.clone(),
        not_granted: Vec::new(),
        grant_warnings: Vec::new(),
    };
    let result = async {
        let grants = Grants::parse(&action.grants).map_err(|e| format!("grant in the config: {e}"))?;
        let engine = engine.map_err(|e| format!("cannot start the WebAssembly runtime: {e}"))?;
        let plugin = engine.load(&action.path).map_err(|e| e.to_string())?;
        plugin.describe().await.map(|info| (grants, info)).map_err(|e| e.to_string())
    }
    .await;
    match result {
        Ok((grants, info)) => {
            check.not_granted = grants.missing(&info.grants).into_iter().map(String::from).collect();
            check.grant_warnings = grants.untrusted_ancestors();
            check.requested_grants = info.grants;
        }
        Err(message) => {
            check.status = format!("{}: {message}", ErrorCode::PluginLoadFailed.as_str());
            problems.push(Problem { code: ErrorCode::PluginLoadFailed, message });
        }
    }
    check
}

fn check_script(path: &Path, pre: bool, problems: &mut Vec<Problem>) -> String {
    let phase = if pre { Phase::Pre } else { Phase::Post };
    match trust::open_trusted(path, Rule::Script) {
        Ok(_) => "ok".into(),
        Err(e) => {
            let err = trust_error(phase, path, &e);
            let status = format!("{}: {e}", err.code.as_str());
            problems.push(Problem { code: err.code, message: err.message });
            status
        }
    }
}
