//! Is any file system frozen right now?
//!
//! Probed as `quiesce status` does ([`crate::status::status`]: the harmless
//! rename probe in a child process, over every eligible mount or the
//! `--mount`s given), so the doctor itself never blocks on a frozen file
//! system and never freezes or thaws anything. A freeze is expected while
//! a live session of this host holds it; any other is the problem users
//! report as "VM frozen for hours".

use std::path::PathBuf;

use crate::report::ErrorCode;
use crate::rundir::{RunDir, SessionState};
use crate::session::SessionPhase;
use crate::status;

use super::{Code, Finding, Group, Severity, UsageError};

pub const NAME: &str = "frozen";

pub fn check(run_dir: &RunDir, mounts: &[PathBuf], running: Option<&SessionState>) -> Result<Group, UsageError> {
    let st = status::status(run_dir, mounts)?;
    let mut findings = Vec::new();
    for f in &st.frozen {
        let path = f.path.display();
        let by_session = running.filter(|s| s.frozen.contains(&f.path));
        let finding = match by_session {
            Some(s) if s.phase == SessionPhase::ThawFailed.as_str() => Finding {
                check: NAME,
                code: Code::Report(ErrorCode::FsThawFailed),
                severity: Severity::Error,
                cause: format!(
                    "{path} ({}) is still frozen: session {}'s FITHAW kept failing; its guardian (pid {}) keeps retrying",
                    f.fs_type,
                    s.session_id,
                    s.guardian_pid.map(|p| p.to_string()).unwrap_or_else(|| "unknown".into())
                ),
                fix: format!("look for the kernel's reason: journalctl -k | tail; then quiesce thaw --mount {path}"),
            },
            Some(s) => Finding {
                check: NAME,
                code: Code::FileSystemFrozen,
                severity: Severity::Info,
                cause: format!(
                    "{path} ({}) is frozen by the running session {} for its snapshot; its guardian thaws it at the latest {} s after the freeze",
                    f.fs_type, s.session_id, s.max_freeze_s
                ),
                fix: "nothing: it thaws when the snapshot ends".into(),
            },
            None => Finding {
                check: NAME,
                code: Code::FileSystemFrozen,
                severity: Severity::Error,
                cause: format!(
                    "{path} ({}) is frozen, and no running quiesce session froze it: every write to it blocks, and a session \
                     refuses to freeze it (FsFreezeFailed)",
                    f.fs_type
                ),
                fix: format!(
                    "if no backup tool is taking a snapshot of it right now (another agent, `fsfreeze -f`): quiesce thaw --mount {path}"
                ),
            },
        };
        findings.push(finding);
    }
    for (path, e) in st.unknown.iter().filter(|(p, _)| *p != run_dir.path) {
        findings.push(Finding {
            check: NAME,
            code: Code::FileSystemProbeFailed,
            severity: Severity::Warning,
            cause: format!("cannot tell whether {} is frozen: {e}", path.display()),
            fix: format!("quiesce status --mount {}", path.display()),
        });
    }
    let summary = match st.frozen.len() {
        0 => "no file system frozen".to_string(),
        n => format!("{n} file system(s) frozen"),
    };
    Ok(Group { summary, findings })
}
