//! The session report: the JSON object on stdout that product.md fixes, the
//! consistency label, and the exit status derived from them.
//!
//! The label is computed from what happened, in one place
//! ([`Consistency::judge`]), so no path can claim more than it achieved.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Stable error codes: the legacy framework's names where they apply, plus
/// quiesce's own. Serialized exactly as users search for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ErrorCode {
    #[serde(rename = "Pre-ScriptExecutionFailed")]
    PreScriptExecutionFailed,
    #[serde(rename = "Post-ScriptExecutionFailed")]
    PostScriptExecutionFailed,
    #[serde(rename = "Pre-ScriptNotFound")]
    PreScriptNotFound,
    #[serde(rename = "Post-ScriptNotFound")]
    PostScriptNotFound,
    #[serde(rename = "Pre-ScriptTimeout")]
    PreScriptTimeout,
    #[serde(rename = "Post-ScriptTimeout")]
    PostScriptTimeout,
    #[serde(rename = "InsufficientPermissionforPre-Script")]
    InsufficientPermissionforPreScript,
    #[serde(rename = "InsufficientPermissionforPost-Script")]
    InsufficientPermissionforPostScript,
    InsufficientPermissionforConfig,
    IncorrectJSONConfigFile,
    IncorrectPluginhostFile,
    FsFreezeFailed,
    FsFreezeTimeout,
    /// FITHAW kept failing until the freeze deadline: the mount is still
    /// frozen (the guardian keeps retrying).
    FsThawFailed,
    SnapshotFailed,
    /// The snapshot provider ran past its deadline (the freeze deadline or
    /// `[snapshot] timeout_secs`) and was stopped.
    SnapshotTimeout,
    BackupOperationInProgress,
    PluginLoadFailed,
    PluginTrapped,
    PluginTimeout,
    GrantDenied,
    /// A plugin's connection, held from pre on, was closed by the other side
    /// before the freeze (or, unfrozen, before the snapshot ended), or a
    /// 0.2.0 plugin's post said its quiesce did not hold through the
    /// snapshot (a pause that expired): what it held did not last.
    QuiesceNotHeld,
    /// The session was interrupted by a signal (SIGINT/SIGTERM/SIGHUP).
    Interrupted,
    /// The recovery point catalog holds `[points] max_points` and clean-up
    /// cannot make room: refused before anything was quiesced (the cloud's
    /// `UserErrorRpCollectionLimitReached`).
    RpCollectionLimitReached,
    /// The snapshot was taken but its recovery point could not be recorded.
    PointNotRecorded,
    /// A two-phase session was aborted: by its client (`abort`), or because
    /// the connection it was bound to closed.
    SessionAborted,
    /// A two-phase session was not ended within its hold deadline: the
    /// service ended it (thaw, post hooks with the snapshot not taken).
    SessionHoldExpired,
    /// `quiesce check`: a plugin's own `check` (WIT 0.2.0) found something
    /// that will make its hook fail (cannot log in, a missing privilege, a
    /// replica), or the check itself failed; the message names the fix.
    PluginCheckFailed,
}

impl ErrorCode {
    pub fn as_str(self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportError {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    AppConsistent,
    FileSystemConsistent,
    CrashConsistent,
    None,
}

/// The facts the label is judged from.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    pub snapshot_taken: bool,
    /// Every pre hook ran and succeeded, and there was at least one (with no
    /// pre hook, nothing quiesced the applications), and no hook is known to
    /// have lost its hold before the freeze, nor said in post that its
    /// quiesce did not hold through the snapshot (`QuiesceNotHeld`).
    pub apps_quiesced: bool,
    pub freeze_enabled: bool,
    /// Every planned file system was frozen, and stayed frozen until the
    /// snapshot finished (no auto-thaw at the deadline).
    pub frozen_throughout: bool,
}

impl Consistency {
    pub fn judge(f: Facts) -> Consistency {
        if !f.snapshot_taken {
            return Consistency::None;
        }
        let frozen_ok = !f.freeze_enabled || f.frozen_throughout;
        match (f.apps_quiesced, frozen_ok, f.freeze_enabled && f.frozen_throughout) {
            (true, true, _) => Consistency::AppConsistent,
            (false, _, true) => Consistency::FileSystemConsistent,
            _ => Consistency::CrashConsistent,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookKind {
    Script,
    Wasm,
}

impl HookKind {
    pub fn of(body: &crate::config::HookBody) -> HookKind {
        match body {
            crate::config::HookBody::Script { .. } => HookKind::Script,
            crate::config::HookBody::Plugin(_) => HookKind::Wasm,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Pre,
    Post,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Pre => "pre",
            Phase::Post => "post",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    TimedOut,
    Skipped,
    Refused,
}

#[derive(Debug, Clone, Serialize)]
pub struct HookReport {
    pub name: String,
    pub kind: HookKind,
    pub phase: Phase,
    pub attempts: u32,
    pub outcome: Outcome,
    pub duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MountReport {
    #[serde(serialize_with = "crate::serde_path::lossy")]
    pub path: PathBuf,
    pub fs_type: String,
    /// `syncfs` right before the freeze (outside the window).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_ms: Option<f64>,
    pub freeze_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thaw_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SkippedMount {
    #[serde(serialize_with = "crate::serde_path::lossy")]
    pub path: PathBuf,
    pub fs_type: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FreezeReport {
    pub enabled: bool,
    pub mounts: Vec<MountReport>,
    pub skipped: Vec<SkippedMount>,
    /// First FIFREEZE start to last FITHAW end, as the guardian measured it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<f64>,
    /// The part of the window that was not the snapshot itself (the kernel's
    /// freeze and thaw of the later mounts included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overhead_ms: Option<f64>,
    /// quiesce's own time in the window: `overhead_ms` minus the FIFREEZE and
    /// FITHAW calls themselves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_ms: Option<f64>,
    /// RCU grace periods were expedited from the first FIFREEZE to the last
    /// (`/sys/kernel/rcu_expedited`, put back after): a cold FIFREEZE waits
    /// for them. Absent when quiesce did not change it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub rcu_expedited: bool,
    /// Set when the guardian thawed on its own (deadline, host gone, signal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_thawed: Option<String>,
    /// Mounts whose FITHAW kept failing: still frozen when the session ended
    /// (the guardian keeps retrying; see `FsThawFailed`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub still_frozen: Vec<PathBuf>,
    pub max_freeze_s: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SnapshotReport {
    /// What took the snapshot, e.g. `command: ...`; None when quiesce took none.
    pub provider: Option<String>,
    pub duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// What the snapshot is known by: ids a provider printed (cloud snapshot
    /// ids), or the id an agent passed to `end`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    /// What a provider made on this machine (a reflink image, a btrfs snapshot).
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "crate::serde_path::lossy_vec")]
    pub paths: Vec<PathBuf>,
    /// Everything the provider returned (for the recovery-point catalog);
    /// `ids` and `paths` above are its public part.
    #[serde(skip)]
    pub made: Option<crate::snapshot::Made>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArtifactReport {
    pub hook: String,
    pub name: String,
    #[serde(serialize_with = "crate::serde_path::lossy")]
    pub path: PathBuf,
    pub bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigReport {
    #[serde(serialize_with = "crate::serde_path::lossy_opt")]
    pub path: Option<PathBuf>,
    pub format: crate::config::Format,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub session_id: String,
    pub consistency: Consistency,
    pub snapshot_taken: bool,
    pub errors: Vec<ReportError>,
    pub warnings: Vec<String>,
    pub hooks: Vec<HookReport>,
    pub freeze: FreezeReport,
    pub snapshot: SnapshotReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigReport>,
    /// Named blobs plugins handed over (e.g. a database's backup label),
    /// stored with the session outside the snapshot.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactReport>,
    /// The signal that interrupted the session, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted_by: Option<String>,
    /// Who froze, for two-phase sessions (`native`, `external`, `none`);
    /// absent for the one-shot `quiesce snapshot`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<crate::session::FreezeMode>,
    pub duration_ms: f64,
    /// The recovery point recorded for this snapshot (`quiesce points show ID`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub point: Option<String>,
    /// Where `duration_ms` went, step by step in order (`plan`, `lock`, `catalog`,
    /// `probe`, `presync`, `guardian`, `plugins`, `pre`, `freeze`, then
    /// `snapshot` or, two-phase, `held`, then `thaw`, `post`, `record`); a
    /// session that stopped early lists the steps it reached.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepTime>,
}

/// One step of a session and how long it took.
#[derive(Debug, Clone, Serialize)]
pub struct StepTime {
    pub step: &'static str,
    pub ms: f64,
}

impl Report {
    pub fn has_error(&self, code: ErrorCode) -> bool {
        self.errors.iter().any(|e| e.code == code)
    }

    /// `0` taken, AppConsistent, no error · `3` taken but weaker or with
    /// errors · `4` no snapshot taken (product.md).
    pub fn exit_code(&self) -> i32 {
        match (self.snapshot_taken, self.consistency, self.errors.is_empty()) {
            (false, _, _) => 4,
            (true, Consistency::AppConsistent, true) => 0,
            (true, _, _) => 3,
        }
    }

    /// One line for humans: what the snapshot is.
    pub fn summary(&self) -> String {
        let codes: Vec<String> = self.errors.iter().map(|e| e.code.as_str()).collect();
        let label = label_name(self.consistency);
        format!(
            "session {}: {} (snapshot {}){}",
            self.session_id,
            label,
            if self.snapshot_taken { "taken" } else { "not taken" },
            if codes.is_empty() { String::new() } else { format!("; errors: {}", codes.join(", ")) }
        )
    }
}

/// The label as the report spells it (`AppConsistent`, ...).
pub fn label_name(c: Consistency) -> String {
    serde_json::to_value(c).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

pub use crate::duration::{ms, round_ms};

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(snapshot_taken: bool, apps_quiesced: bool, freeze_enabled: bool, frozen_throughout: bool) -> Facts {
        Facts { snapshot_taken, apps_quiesced, freeze_enabled, frozen_throughout }
    }

    #[test]
    fn label_never_claims_more_than_happened() {
        use Consistency::*;
        assert_eq!(Consistency::judge(facts(false, true, true, true)), None);
        assert_eq!(Consistency::judge(facts(true, true, true, true)), AppConsistent);
        assert_eq!(Consistency::judge(facts(true, true, false, false)), AppConsistent, "freeze disabled by the admin");
        assert_eq!(Consistency::judge(facts(true, false, true, true)), FileSystemConsistent);
        assert_eq!(Consistency::judge(facts(true, false, false, false)), CrashConsistent);
        assert_eq!(Consistency::judge(facts(true, true, true, false)), CrashConsistent, "freeze failed or timed out");
        assert_eq!(Consistency::judge(facts(true, false, true, false)), CrashConsistent);
    }

    #[test]
    fn codes_serialize_with_legacy_names() {
        assert_eq!(ErrorCode::PreScriptTimeout.as_str(), "Pre-ScriptTimeout");
        assert_eq!(ErrorCode::InsufficientPermissionforPostScript.as_str(), "InsufficientPermissionforPost-Script");
        assert_eq!(ErrorCode::FsFreezeFailed.as_str(), "FsFreezeFailed");
    }
}
