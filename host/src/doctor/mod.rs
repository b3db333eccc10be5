//! `quiesce doctor`: what a support engineer runs first when a backup fails.
//!
//! Each group of checks lives in its own module and looks at the machine as
//! it is now (the lock in `/proc/locks`, processes in `/proc`, a probe of
//! each file system, the config as a session would load it). Every finding
//! has a stable code — the backup extension's name where the meaning is the
//! same (`UserErrorBackupOperationInProgress`, `UserErrorGuestAgentStatusUnavailable`,
//! ...), the session report's code for what a session would report itself
//! (`PluginLoadFailed`, `InsufficientPermissionforConfig`, ...) — a severity,
//! the cause and the command that fixes it.
//!
//! The doctor only reads: it freezes nothing, takes no lock, runs no hook.
//! Its frozen-ness probe is the session's own ([`crate::freeze::is_frozen`]),
//! which cannot hang on a frozen file system.
//!
//! Exit status: 1 when any finding is an error (a backup would fail now, or
//! the machine is at risk: a file system frozen), else 0. Warnings (a session
//! running right now, a state file left by a killed session) do not fail it,
//! so `quiesce doctor` can run as a health check while backups run.

mod dirs;
mod guardian;
mod points;
mod probe;
mod rcu;
mod service;
mod session;
mod setup;

use std::path::PathBuf;

use serde::{Serialize, Serializer};

use crate::report::ErrorCode;
use crate::rundir::RunDir;

pub use service::{socket_from_env, DEFAULT_SOCKET, SOCKET_ENV};

/// Finding codes. Stable: admins search for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// A session holds the machine-wide lock: a new one is refused.
    UserErrorBackupOperationInProgress,
    /// The run directory holds the state of a session whose process is gone.
    SessionStateStale,
    /// A file system is frozen, and no running session of this host froze it.
    FileSystemFrozen,
    /// A file system could not be probed.
    FileSystemProbeFailed,
    /// A freeze guardian whose host process is gone.
    GuardianOrphaned,
    /// The quiesce service is expected (socket or unit installed) but does not answer.
    UserErrorGuestAgentStatusUnavailable,
    /// No quiesce service on this machine (informational).
    ServiceNotInstalled,
    /// A directory quiesce writes into as root is not root's alone.
    DirectoryNotTrusted,
    /// The state directory's file system is (nearly) full.
    StateSpaceLow,
    /// `quiesce check` passes with a warning.
    ConfigWarning,
    /// A plugin's own `check` (WIT 0.2.0) warns: the hook works, less well than it could.
    PluginCheckWarning,
    /// The recovery point catalog holds `max_points`: the next backup is refused.
    UserErrorRpCollectionLimitReached,
    /// The recovery point catalog (or a record in it) cannot be read.
    PointsCatalogUnreadable,
    /// The newest recovery point is weaker than `AppConsistent`.
    LastPointNotAppConsistent,
    /// RCU grace periods are expedited with no session running (informational).
    RcuExpedited,
    /// What a session would report for the config, a script or a plugin.
    Report(ErrorCode),
}

impl Code {
    pub fn as_str(self) -> String {
        match self {
            Code::UserErrorBackupOperationInProgress => "UserErrorBackupOperationInProgress".into(),
            Code::SessionStateStale => "SessionStateStale".into(),
            Code::FileSystemFrozen => "FileSystemFrozen".into(),
            Code::FileSystemProbeFailed => "FileSystemProbeFailed".into(),
            Code::GuardianOrphaned => "GuardianOrphaned".into(),
            Code::UserErrorGuestAgentStatusUnavailable => "UserErrorGuestAgentStatusUnavailable".into(),
            Code::ServiceNotInstalled => "ServiceNotInstalled".into(),
            Code::DirectoryNotTrusted => "DirectoryNotTrusted".into(),
            Code::StateSpaceLow => "StateSpaceLow".into(),
            Code::ConfigWarning => "ConfigWarning".into(),
            Code::PluginCheckWarning => "PluginCheckWarning".into(),
            Code::UserErrorRpCollectionLimitReached => "UserErrorRpCollectionLimitReached".into(),
            Code::PointsCatalogUnreadable => "PointsCatalogUnreadable".into(),
            Code::LastPointNotAppConsistent => "LastPointNotAppConsistent".into(),
            Code::RcuExpedited => "RcuExpedited".into(),
            Code::Report(c) => c.as_str(),
        }
    }
}

impl Serialize for Code {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Which group of checks found it (`session`, `frozen`, ...).
    pub check: &'static str,
    pub code: Code,
    pub severity: Severity,
    pub cause: String,
    /// What to run (or do) about it.
    pub fix: String,
}

/// One group's verdict in a line, also when it found nothing.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    pub check: &'static str,
    pub summary: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Diagnosis {
    /// No finding is an error.
    pub healthy: bool,
    pub errors: usize,
    pub warnings: usize,
    pub findings: Vec<Finding>,
    pub checks: Vec<Checked>,
}

impl Diagnosis {
    /// 0 healthy (warnings allowed), 1 problems.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.healthy)
    }

    pub fn has(&self, code: Code) -> bool {
        self.findings.iter().any(|f| f.code == code)
    }
}

/// Where to look: the same defaults and overrides a session uses.
pub struct DoctorOptions {
    /// `--config`; None: the default config, as a session loads it.
    pub config: Option<PathBuf>,
    /// `--mount`: probe (and plan) only these mount points.
    pub mounts: Vec<PathBuf>,
    pub run_dir: RunDir,
    pub state_dir: PathBuf,
    pub cache_dir: PathBuf,
    /// The service's socket (`$QUIESCE_SOCKET` or the default).
    pub socket: PathBuf,
}

impl DoctorOptions {
    /// Everything from the environment, as a session would find it.
    pub fn from_env(config: Option<PathBuf>, mounts: Vec<PathBuf>) -> DoctorOptions {
        DoctorOptions {
            config,
            mounts,
            run_dir: RunDir::from_env(),
            state_dir: crate::session::state_dir_from_env(),
            cache_dir: crate::session::cache_dir_from_env(),
            socket: socket_from_env(),
        }
    }
}

/// A `--mount` that is not a mount point: a usage error, as for `status`.
pub use crate::freeze::FreezeError as UsageError;

/// What one group of checks hands back.
struct Group {
    summary: String,
    findings: Vec<Finding>,
}

/// Runs every check. Reads only; see the module doc.
pub async fn diagnose(opts: &DoctorOptions) -> Result<Diagnosis, UsageError> {
    let mut d = Diagnosis::default();
    let mut add = |check: &'static str, g: Group| {
        d.checks.push(Checked { check, summary: g.summary });
        d.findings.extend(g.findings);
    };
    let session = session::check(&opts.run_dir);
    let running = session.running.clone();
    add(session::NAME, session.group);
    add(guardian::NAME, guardian::check(&opts.run_dir));
    let frozen = probe::check(&opts.run_dir, &opts.mounts, running.as_ref())?;
    let any_frozen = frozen.findings.iter().any(|f| f.code == Code::FileSystemFrozen);
    add(probe::NAME, frozen);
    add(rcu::NAME, rcu::check(running.is_some()));
    add(service::NAME, service::check(&opts.socket));
    let config = crate::session::load_config(opts.config.as_deref());
    let metrics_dir = config.as_ref().ok().and_then(|c| c.metrics.as_ref()).and_then(|m| m.textfile.parent().map(PathBuf::from));
    let points = config.as_ref().map(|c| c.points.clone()).unwrap_or_default();
    add(setup::NAME, setup::check(config, opts, any_frozen).await);
    add(dirs::NAME, dirs::check_trust(opts, metrics_dir.as_deref()));
    add(dirs::SPACE, dirs::check_space(&opts.state_dir));
    add(points::NAME, points::check(&opts.state_dir, &points));
    d.errors = d.findings.iter().filter(|f| f.severity == Severity::Error).count();
    d.warnings = d.findings.iter().filter(|f| f.severity == Severity::Warning).count();
    d.healthy = d.errors == 0;
    Ok(d)
}

/// What `/proc/PID/stat` says of a process.
struct ProcStat {
    /// R, S, D, T (stopped), t (traced), Z (zombie), ...
    state: char,
    ppid: u32,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: split after the last ')'.
    let mut rest = s.get(s.rfind(')')? + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some(ProcStat { state, ppid })
}

/// A live process (not a zombie) with this pid.
fn alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_reads_this_process_and_its_parent() {
        let me = proc_stat(std::process::id()).expect("own /proc/PID/stat");
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX), "no such pid");
    }

    #[test]
    fn codes_serialize_as_admins_search_for_them() {
        assert_eq!(Code::UserErrorBackupOperationInProgress.as_str(), "UserErrorBackupOperationInProgress");
        assert_eq!(Code::Report(ErrorCode::InsufficientPermissionforPreScript).as_str(), "InsufficientPermissionforPre-Script");
        assert_eq!(serde_json::to_string(&Code::GuardianOrphaned).unwrap_or_default(), "\"GuardianOrphaned\"");
    }
}
