//! `exec`: run an executable named by an `exec:` grant — off unless the
//! admin grants it. The executable must pass the same trust checks as a
//! hook script, and runs through the script runner (clean environment,
//! own process group, killed at the call's deadline, output capped).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::hooks::script::{self, ScriptOutcome, ScriptSpec};
use crate::hooks::wasm::bindings::v0_1_0::quiesce::plugin::exec::{self, ExecOutput};
use crate::hooks::wasm::bindings::v0_1_0::quiesce::plugin::types::{Error, ErrorKind};
use crate::hooks::wasm::caps::error;
use crate::hooks::wasm::grants::normal_path;
use crate::hooks::wasm::state::HostState;
use crate::trust::{self, Rule};

use crate::hooks::OUTPUT_CAP;

impl exec::Host for HostState {
    async fn run(&mut self, path: String, args: Vec<String>) -> wasmtime::Result<Result<ExecOutput, Error>> {
        let Some(p) = normal_path(Path::new(&path)) else {
            return Ok(Err(error(ErrorKind::Invalid, format!("exec {path:?}: the path must be absolute, without `..`"))));
        };
        if !self.grants.allows_exec(&p) {
            let msg = self.deny("exec", &path, format!("grant exec:{}", p.display()));
            return Ok(Err(error(ErrorKind::Denied, msg)));
        }
        let file = match trust::open_trusted(&p, Rule::Script) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(plugin = %self.plugin, "exec refused: {e}");
                let kind = if e.is_not_found() { ErrorKind::NotFound } else { ErrorKind::Denied };
                return Ok(Err(error(kind, format!("exec: {e}"))));
            }
        };
        let mut spec = ScriptSpec::new(format!("{}:exec:{}", self.plugin, p.display()));
        spec.args = args;
        spec.timeout = self.deadline.map(|d| d.saturating_duration_since(Instant::now())).unwrap_or(Duration::from_secs(10));
        spec.kill_grace = Duration::from_millis(500);
        spec.output_cap = OUTPUT_CAP;
        let run = script::run_script(&file, &spec).await;
        let status = match &run.outcome {
            ScriptOutcome::Succeeded => 0,
            ScriptOutcome::SucceededWithWarning { exit_code } => *exit_code,
            ScriptOutcome::Failed { exit_code: Some(c), .. } => *c,
            ScriptOutcome::Failed { exit_code: None, .. } | ScriptOutcome::TimedOut => -1,
            ScriptOutcome::SpawnFailed { message } => return Ok(Err(error(ErrorKind::Io, format!("exec {path}: {message}")))),
        };
        let (output, truncated) = match run.attempts.last() {
            Some(a) => (a.output.clone().into_bytes(), a.output_bytes > a.output.len() as u64),
            None => (Vec::new(), false),
        };
        tracing::info!(plugin = %self.plugin, "exec {path}: status {status}");
        Ok(Ok(ExecOutput { status, output, truncated }))
    }
}
