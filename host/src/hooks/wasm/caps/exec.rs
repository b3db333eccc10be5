//! `exec`: run an executable named by an `exec:` grant — off unless the
//! admin grants it. The executable must pass the same trust checks as a
//! hook script (a granted file that fails them is reported like a grant
//! denial, `GrantDenied`), and runs through the script runner (clean
//! environment, contained, killed at the call's deadline, output capped).
//! Everything it started dies when the call returns: the WIT promises the
//! tool's processes do not outlive the call, and a plugin has no way to
//! stop a background child later.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::hooks::script::{self, ScriptOutcome, ScriptRun, ScriptSpec};
use crate::hooks::wasm::caps::{error, Error, ErrorKind};
use crate::hooks::wasm::grants::normal_path;
use crate::hooks::wasm::state::HostState;
use crate::trust::{self, Rule};

use crate::hooks::OUTPUT_CAP;

/// How long the call waits for the tool's leftovers to die after SIGKILL.
const LEFTOVER_SETTLE: Duration = Duration::from_millis(500);

/// What `exec.run` returns (the same record in every WIT version).
pub(crate) struct ExecOutput {
    pub status: i32,
    pub output: Vec<u8>,
    pub truncated: bool,
}

impl HostState {
    pub(crate) async fn exec_run(&mut self, path: String, args: Vec<String>) -> wasmtime::Result<Result<ExecOutput, Error>> {
        let Some(p) = normal_path(Path::new(&path)) else {
            return Ok(Err(error(ErrorKind::Invalid, format!("exec {path:?}: the path must be absolute, without `..`"))));
        };
        if !self.grants.allows_exec(&p) {
            let msg = self.deny("exec", &path, format!("grant exec:{}", p.display()));
            return Ok(Err(error(ErrorKind::Denied, msg)));
        }
        let file = match trust::open_trusted(&p, Rule::Script) {
            Ok(f) => f,
            Err(e) if e.is_not_found() => return Ok(Err(error(ErrorKind::NotFound, format!("exec: {e}")))),
            Err(e) => {
                let msg = self.refuse_granted("exec", &path, e.to_string());
                return Ok(Err(error(ErrorKind::Denied, msg)));
            }
        };
        let mut spec = ScriptSpec::new(format!("{}:exec:{}", self.plugin, p.display()));
        spec.args = args;
        spec.timeout = self.deadline.map(|d| d.saturating_duration_since(Instant::now())).unwrap_or(Duration::from_secs(10));
        spec.kill_grace = Duration::from_millis(500);
        spec.output_cap = OUTPUT_CAP;
        let run = script::run_script(&file, &spec).await;
        let ScriptRun { outcome, attempts, leftovers, .. } = run;
        if !leftovers.is_empty() {
            tracing::info!(plugin = %self.plugin, "exec {path} left processes running; killing them");
        }
        leftovers.close(LEFTOVER_SETTLE).await;
        let status = match &outcome {
            ScriptOutcome::Succeeded => 0,
            ScriptOutcome::SucceededWithWarning { exit_code } => *exit_code,
            ScriptOutcome::Failed { exit_code: Some(c), .. } => *c,
            ScriptOutcome::Failed { exit_code: None, .. } | ScriptOutcome::TimedOut => -1,
            ScriptOutcome::SpawnFailed { message } => return Ok(Err(error(ErrorKind::Io, format!("exec {path}: {message}")))),
        };
        let (output, truncated) = match attempts.last() {
            Some(a) => (a.output.clone().into_bytes(), a.output_bytes > a.output.len() as u64),
            None => (Vec::new(), false),
        };
        tracing::info!(plugin = %self.plugin, "exec {path}: status {status}");
        Ok(Ok(ExecOutput { status, output, truncated }))
    }
}
