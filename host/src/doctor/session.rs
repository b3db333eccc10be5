//! Is a session running, or did one die and leave its state behind?
//!
//! The lock is looked up in `/proc/locks` without taking it
//! ([`RunDir::session_running`]), so a session starting this very moment is
//! not refused because the doctor looked.

use crate::rundir::{unix_ms, RunDir, SessionState};

use super::{alive, Code, Finding, Group, Severity};

pub const NAME: &str = "session";

pub struct SessionCheck {
    /// The session running now, if its host is alive.
    pub running: Option<SessionState>,
    pub group: Group,
}

pub fn check(run_dir: &RunDir) -> SessionCheck {
    let finding = |code, severity, cause: String, fix: String| Finding { check: NAME, code, severity, cause, fix };
    let lock = run_dir.path.join("session.lock");
    let state_file = run_dir.path.join("state.json");
    let held = match run_dir.session_running() {
        Ok(held) => held,
        Err(e) => {
            let summary = format!("cannot tell whether a session is running: {e} (see the directories check)");
            return SessionCheck { running: None, group: Group { summary, findings: vec![] } };
        }
    };
    let state = run_dir.read_state();
    let describe = |s: &SessionState| {
        let secs = unix_ms().saturating_sub(s.started_unix_ms) as f64 / 1e3;
        format!("session {} (pid {}, phase {}, started {secs:.0} s ago)", s.session_id, s.pid, s.phase)
    };
    match (held, state) {
        (true, Some(s)) if alive(s.pid) => {
            let cause = format!("{} is running; a new session is refused with BackupOperationInProgress until it ends", describe(&s));
            let fix = format!(
                "wait for it to end (`quiesce status` shows its phase); if it is stuck: kill -TERM {} (it thaws and runs its post hooks)",
                s.pid
            );
            let group = Group {
                summary: format!("{} is running", describe(&s)),
                findings: vec![finding(Code::UserErrorBackupOperationInProgress, Severity::Warning, cause, fix)],
            };
            SessionCheck { running: Some(s), group }
        }
        (true, state) => {
            let why = match &state {
                Some(s) => format!("the state file names {}, whose process is gone", describe(s)),
                None => "no session has recorded its state".into(),
            };
            let cause = format!(
                "the session lock {} is held, but {why}: every new session is refused with BackupOperationInProgress",
                lock.display()
            );
            let fix = format!(
                "see which process holds it: fuser -v {}; a freeze guardian keeps it until its thaw succeeds (see GuardianOrphaned \
                 and FileSystemFrozen below); any other holder: kill it",
                lock.display()
            );
            let group = Group {
                summary: "session lock held without a running session".into(),
                findings: vec![finding(Code::UserErrorBackupOperationInProgress, Severity::Error, cause, fix)],
            };
            SessionCheck { running: None, group }
        }
        (false, Some(s)) => {
            let gone = if alive(s.pid) { "no longer holds the session lock" } else { "is gone" };
            let cause = format!(
                "{} names {}, but that process {gone}: the session was killed before it could clean up",
                state_file.display(),
                describe(&s)
            );
            let fix = format!(
                "check that nothing is left frozen (`quiesce status`; the frozen check below probes it), then rm {} \
                 (the next session replaces it anyway)",
                state_file.display()
            );
            let group = Group {
                summary: "no session running; a killed session left its state".into(),
                findings: vec![finding(Code::SessionStateStale, Severity::Warning, cause, fix)],
            };
            SessionCheck { running: None, group }
        }
        (false, None) => SessionCheck { running: None, group: Group { summary: "no session running".into(), findings: vec![] } },
    }
}
