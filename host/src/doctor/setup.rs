//! Are the config, its scripts and its plugins trusted and loadable?
//!
//! Asked of `quiesce check` ([`crate::check::check`], which runs the
//! session's own validation), so the doctor, the dry run and the session
//! cannot disagree. Each problem keeps the code the session would report;
//! the doctor adds the command that fixes it, taken from the trust check
//! where the problem is a permission.

use std::path::{Path, PathBuf};

use crate::check::{self, CheckReport, Problem};
use crate::config::{Config, ConfigError, Format};
use crate::hooks::wasm::Severity as WasmSeverity;
use crate::report::ErrorCode;
use crate::trust::{self, Rule};

use super::{Code, DoctorOptions, Finding, Group, Severity};

pub const NAME: &str = "config";

/// `frozen_elsewhere`: the frozen check already named a frozen file system,
/// which the session's validation reports again as `FsFreezeFailed`.
pub async fn check(config: Result<Config, ConfigError>, opts: &DoctorOptions, frozen_elsewhere: bool) -> Group {
    let report = check::check(config, &opts.mounts, None, &opts.cache_dir).await;
    let config_path = report.config.clone();
    let cfg = config_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "the config".into());
    let mut findings = Vec::new();
    for p in &report.problems {
        if frozen_elsewhere && p.code == ErrorCode::FsFreezeFailed {
            continue;
        }
        let (path, rule) = locate(&report, p);
        findings.push(Finding {
            check: NAME,
            code: Code::Report(p.code),
            severity: Severity::Error,
            cause: p.message.clone(),
            fix: fix(p.code, path.as_deref(), rule, &cfg),
        });
    }
    for w in &report.warnings {
        findings.push(Finding {
            check: NAME,
            code: Code::ConfigWarning,
            severity: Severity::Warning,
            cause: w.clone(),
            fix: format!("quiesce check --config {cfg} explains it; the warning names the command where one fixes it"),
        });
    }
    // A plugin's own `check` (WIT 0.2.0): its errors are among the problems
    // above (`PluginCheckFailed`); its warnings are only here.
    for h in &report.hooks {
        let Some(run) = h.plugin.as_ref().and_then(|p| p.check.as_ref()) else { continue };
        for f in run.findings.iter().filter(|f| f.severity == WasmSeverity::Warning) {
            findings.push(Finding {
                check: NAME,
                code: Code::PluginCheckWarning,
                severity: Severity::Warning,
                cause: format!("hook {}: the plugin's check: {}: {}", h.name, f.code, f.message),
                fix: "as the plugin's message says; then quiesce check".into(),
            });
        }
    }
    let plugins = report.hooks.iter().filter(|h| h.plugin.is_some()).count();
    let summary = match &config_path {
        Some(p) => format!(
            "{}: {} hook(s), {plugins} plugin(s), {}",
            p.display(),
            report.hooks.len(),
            if findings.iter().any(|f| f.severity == Severity::Error) { "check finds problems" } else { "check passes" }
        ),
        None => "no config file: sessions run no hook and freeze every eligible file system".into(),
    };
    Group { summary, findings }
}

/// The file a problem is about (config, script or plugin), and the rule it
/// is checked under: found as the item whose status is this very problem.
fn locate(report: &CheckReport, p: &Problem) -> (Option<PathBuf>, Option<Rule>) {
    let status = format!("{}: {}", p.code.as_str(), p.message);
    let script_rule = match report.format {
        Some(Format::Legacy) => Rule::LegacyScript,
        _ => Rule::Script,
    };
    for h in &report.hooks {
        for s in [&h.pre, &h.post].into_iter().flatten() {
            if s.status == status {
                return (Some(s.path.clone()), Some(script_rule));
            }
        }
        if let Some(pl) = h.plugin.as_ref().filter(|pl| pl.status == status) {
            return (Some(pl.path.clone()), Some(Rule::Plugin));
        }
    }
    match p.code {
        ErrorCode::InsufficientPermissionforConfig | ErrorCode::IncorrectJSONConfigFile => (report.config.clone(), Some(Rule::Config)),
        _ => (None, None),
    }
}

fn fix(code: ErrorCode, path: Option<&Path>, rule: Option<Rule>, cfg: &str) -> String {
    let shown = path.map(|p| p.display().to_string()).unwrap_or_else(|| "the file named above".into());
    // The trust check names the one command, when one fixes it.
    let trust_fix = match (path, rule) {
        (Some(p), Some(rule)) => trust::open_trusted(p, rule).err().and_then(|e| e.fix()),
        _ => None,
    };
    match code {
        ErrorCode::InsufficientPermissionforConfig
        | ErrorCode::InsufficientPermissionforPreScript
        | ErrorCode::InsufficientPermissionforPostScript => {
            trust_fix.unwrap_or_else(|| format!("make {shown} and every directory above it root's alone (see the cause)"))
        }
        ErrorCode::PreScriptNotFound | ErrorCode::PostScriptNotFound => {
            format!("create {shown} (owned by root, mode 700), or correct its location in {cfg}")
        }
        ErrorCode::IncorrectJSONConfigFile => format!("correct {cfg} as the cause says, then: quiesce check --config {cfg}"),
        ErrorCode::PluginLoadFailed => trust_fix.unwrap_or_else(|| {
            format!(
                "quiesce plugin inspect {shown} says why it does not load; install a component built for wasm32-wasip2 \
                 against a quiesce:plugin WIT version this host supports, or remove the hook from {cfg}"
            )
        }),
        ErrorCode::PluginCheckFailed => format!(
            "the cause names what the plugin could not reach, log in to or do: fix that on the application's side (its role, \
             its address) or the hook's params/grants in {cfg}; then quiesce check --config {cfg}"
        ),
        _ => format!("quiesce check --config {cfg} shows what a session would do and why"),
    }
}
