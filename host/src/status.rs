//! `quiesce status` and `quiesce thaw`: what is frozen right now, by whom,
//! and the emergency way out.

use std::path::PathBuf;

use serde::Serialize;

use crate::freeze::{self, Selection};
use crate::rundir::{RunDir, SessionState};

/// A probe that does not finish in this long counts as "frozen".
const PROBE_WAIT: std::time::Duration = std::time::Duration::from_millis(150);

#[derive(Debug, Serialize)]
pub struct FrozenMount {
    #[serde(serialize_with = "crate::serde_path::lossy")]
    pub path: PathBuf,
    pub fs_type: String,
    /// "this host's session <id>" when the running session froze it, else "unknown".
    pub frozen_by: String,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub session_running: bool,
    pub session: Option<SessionState>,
    /// Eligible file systems that are frozen right now (probed, not remembered).
    pub frozen: Vec<FrozenMount>,
    /// Mounts that could not be probed (or the run directory, when the
    /// session lock could not be looked up), with the reason.
    #[serde(serialize_with = "crate::serde_path::lossy_pairs")]
    pub unknown: Vec<(PathBuf, String)>,
    /// Mounts a session would not freeze, and why.
    pub skipped: Vec<freeze::Skipped>,
}

/// Reads; never writes. In particular it does not take the session lock to
/// see whether it is held (see [`RunDir::session_running`]).
pub fn status(run_dir: &RunDir, mounts: &[PathBuf]) -> Result<Status, freeze::FreezeError> {
    let mut unknown = Vec::new();
    let session_running = match run_dir.session_running() {
        Ok(running) => running,
        Err(e) => {
            unknown.push((run_dir.path.clone(), format!("cannot tell whether a session is running: {e}")));
            false
        }
    };
    // A state file without a live lock holder is left over from a killed host.
    let session = run_dir.read_state().filter(|_| session_running);
    let plan = freeze::plan(&Selection { mounts: mounts.to_vec(), exclude: Vec::new() })?;
    let mut frozen = Vec::new();
    let skipped = plan.skipped;
    for t in plan.targets {
        match freeze::is_frozen(&t.path, PROBE_WAIT) {
            Ok(true) => {
                let ours = session.as_ref().filter(|s| s.frozen.contains(&t.path));
                frozen.push(FrozenMount {
                    frozen_by: ours.map(|s| format!("this host's session {}", s.session_id)).unwrap_or_else(|| "unknown".into()),
                    path: t.path,
                    fs_type: t.fs_type,
                });
            }
            Ok(false) => {}
            Err(e) => unknown.push((t.path, e.to_string())),
        }
    }
    Ok(Status { session_running, session, frozen, unknown, skipped })
}
