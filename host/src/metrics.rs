//! Prometheus metrics for node_exporter's textfile collector, written after
//! every session (`[metrics] textfile = "PATH"` in the native config).
//!
//! A one-shot tool has no process to scrape, so the numbers go into a file
//! node_exporter serves with its own. The file is replaced atomically
//! ([`crate::atomic`]): node_exporter reads whole files, and half a file is a
//! scrape error (`node_textfile_scrape_error 1`), not old numbers.
//!
//! Counters (`*_total`) must keep counting across processes. Their running
//! totals live in quiesce's own state directory (`<state>/metrics/counters.json`,
//! root's alone), not read back from the previous textfile: the textfile is
//! an export in a directory the admin shares with node_exporter and may clean
//! out or keep on tmpfs, and parsing our own exposition back would make a
//! damaged or edited file silently become the totals. A lost counters file
//! only resets the counters, which Prometheus' `rate()` handles.
//!
//! quiesce writes the file as root, so its directory is checked like every
//! directory quiesce writes into ([`trust::open_trusted_dir`]): owned by root,
//! writable by no one else, nor any directory above it. Nothing is written
//! while a file system is still frozen (a thaw that kept failing): the
//! textfile could be on it, and the write would hang the session.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{self, Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};

use crate::config::MetricsSettings;
use crate::report::{label_name, Consistency, Outcome, Report};
use crate::trust::{self, TrustError};

const COUNTERS_DIR: &str = "metrics";
const COUNTERS_FILE: &str = "counters.json";
const COUNTERS_LOCK: &str = "counters.lock";
/// Far more than the counters of any real config; a bigger file is not ours.
const COUNTERS_CAP: u64 = 1024 * 1024;
/// Distinct (hook, phase, outcome) counters kept: a config whose hook names
/// keep changing must not grow the file (and every scrape) without bound.
const MAX_HOOK_SERIES: usize = 512;
/// How long to wait for another quiesce process updating the counters.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Why the metrics were not published; each names the path and the fix.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "metrics textfile {}: its directory is not trusted ({source}); quiesce writes it as root, so the directory must be root's alone",
        .path.display()
    )]
    UntrustedDir { path: PathBuf, source: TrustError },
    #[error("metrics counters under {}: {source}", .path.display())]
    State { path: PathBuf, source: TrustError },
    #[error("metrics: {}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("metrics not written: {0} is still frozen (a file written now could hang the session)")]
    StillFrozen(String),
    #[error(
        "metrics not written: {0} may still be frozen by the agent whose session ended without its word (a file written now \
         could hang the service); this session is not counted"
    )]
    MaybeFrozen(String),
}

/// Running totals, kept across sessions.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Counters {
    /// Sessions by consistency label.
    pub sessions: BTreeMap<String, u64>,
    /// Errors by report code.
    pub errors: BTreeMap<String, u64>,
    /// Hook runs by (hook, phase, outcome).
    pub hooks: Vec<HookCount>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HookCount {
    pub hook: String,
    pub phase: String,
    pub outcome: String,
    pub count: u64,
}

impl Counters {
    /// Adds one session's report.
    pub fn add(&mut self, report: &Report) {
        bump(self.sessions.entry(label_name(report.consistency)).or_default());
        for e in &report.errors {
            bump(self.errors.entry(e.code.as_str()).or_default());
        }
        for h in &report.hooks {
            let (phase, outcome) = (h.phase.name(), outcome_name(h.outcome));
            let full = self.hooks.len() >= MAX_HOOK_SERIES;
            match self.hooks.iter_mut().find(|c| c.hook == h.name && c.phase == phase && c.outcome == outcome) {
                Some(c) => bump(&mut c.count),
                None if !full => {
                    self.hooks.push(HookCount { hook: h.name.clone(), phase: phase.into(), outcome: outcome.into(), count: 1 })
                }
                None => tracing::warn!("metrics: more than {MAX_HOOK_SERIES} hook counters; hook {} is not counted", h.name),
            }
        }
    }
}

fn bump(n: &mut u64) {
    *n = n.saturating_add(1);
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Succeeded => "succeeded",
        Outcome::Failed => "failed",
        Outcome::TimedOut => "timed_out",
        Outcome::Skipped => "skipped",
        Outcome::Refused => "refused",
    }
}

const OUTCOMES: [Outcome; 5] = [Outcome::Succeeded, Outcome::Failed, Outcome::TimedOut, Outcome::Skipped, Outcome::Refused];
const LABELS: [Consistency; 4] =
    [Consistency::AppConsistent, Consistency::FileSystemConsistent, Consistency::CrashConsistent, Consistency::None];

/// Publishes `report` if metrics are configured: updates the counters and
/// replaces the textfile. `None` when there was nothing to do or it worked;
/// otherwise what to tell the admin (a warning: metrics never change the
/// session's outcome). The session calls this once, with the final report.
/// `agent_may_hold_frozen`: an agent's freeze may still be on (its external
/// session expired or was cut off), so both places are first asked, without
/// blocking, whether they are frozen — a write there would hang the session.
pub fn publish(settings: Option<&MetricsSettings>, report: &Report, state_dir: &Path, agent_may_hold_frozen: bool) -> Option<String> {
    let settings = settings?;
    let dirs = [state_dir, settings.textfile.parent().unwrap_or(state_dir)];
    let written = match agent_may_hold_frozen.then(|| crate::freeze::first_maybe_frozen(dirs)) {
        Some(Some(frozen)) => Err(MetricsError::MaybeFrozen(frozen.display().to_string())),
        _ => write(settings, report, state_dir, crate::rundir::unix_ms()),
    };
    match written {
        Ok(()) => {
            tracing::debug!("metrics written to {}", settings.textfile.display());
            None
        }
        Err(e) => {
            tracing::warn!("{e}");
            Some(e.to_string())
        }
    }
}

/// Updates the counters under `state_dir` with `report` and writes the textfile.
pub fn write(settings: &MetricsSettings, report: &Report, state_dir: &Path, now_unix_ms: u128) -> Result<(), MetricsError> {
    if let Some(p) = report.freeze.still_frozen.first() {
        return Err(MetricsError::StillFrozen(p.display().to_string()));
    }
    let textfile = &settings.textfile;
    let (dir_path, name) = match (textfile.parent(), textfile.file_name().and_then(OsStr::to_str)) {
        (Some(d), Some(n)) => (d, n),
        _ => {
            let source = io::Error::other("not a file path (or not UTF-8)");
            return Err(MetricsError::Io { path: textfile.clone(), source });
        }
    };
    // Counted first: a session whose textfile cannot be written still
    // counts, so the totals are right again once the directory is fixed.
    let counters = update_counters(state_dir, report)?;
    let dir = trust::open_trusted_dir(dir_path).map_err(|source| MetricsError::UntrustedDir { path: textfile.clone(), source })?;
    let text = render(report, &counters, now_unix_ms);
    crate::atomic::replace(&dir, name, text.as_bytes(), 0o644, false).map_err(|source| MetricsError::Io { path: textfile.clone(), source })
}

/// Reads, bumps and writes back the totals, under a lock (a session refused
/// with `BackupOperationInProgress` may finish while another is publishing).
fn update_counters(state_dir: &Path, report: &Report) -> Result<Counters, MetricsError> {
    let state = |source| MetricsError::State { path: state_dir.to_path_buf(), source };
    let root = trust::create_trusted_dir(state_dir, 0o700).map_err(state)?;
    let dir_path = state_dir.join(COUNTERS_DIR);
    let dir = trust::trusted_subdir(&root, OsStr::new(COUNTERS_DIR), &dir_path, 0o700).map_err(state)?;
    let io_err = |name: &str, source: io::Error| MetricsError::Io { path: dir_path.join(name), source };
    let _lock = lock(&dir).map_err(|e| io_err(COUNTERS_LOCK, e))?;
    let mut counters = read_counters(&dir).unwrap_or_else(|e| {
        tracing::warn!("metrics: cannot read {} ({e}); counters start again from zero", dir_path.join(COUNTERS_FILE).display());
        Counters::default()
    });
    counters.add(report);
    let bytes = serde_json::to_vec(&counters).map_err(|e| io_err(COUNTERS_FILE, io::Error::other(e)))?;
    crate::atomic::replace(&dir, COUNTERS_FILE, &bytes, 0o600, true).map_err(|e| io_err(COUNTERS_FILE, e))?;
    Ok(counters)
}

fn open_in(dir: &OwnedFd, name: &str, flags: OFlag) -> io::Result<File> {
    let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
    Ok(File::from(fcntl::openat(dir, name, flags, Mode::from_bits_truncate(0o600))?))
}

fn lock(dir: &OwnedFd) -> io::Result<Flock<File>> {
    let mut file = open_in(dir, COUNTERS_LOCK, OFlag::O_RDWR | OFlag::O_CREAT)?;
    let until = Instant::now() + LOCK_WAIT;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((f, Errno::EWOULDBLOCK)) if Instant::now() < until => {
                file = f;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((_, e)) => return Err(e.into()),
        }
    }
}

/// The totals so far; a missing file is zero everywhere.
fn read_counters(dir: &OwnedFd) -> io::Result<Counters> {
    let file = match open_in(dir, COUNTERS_FILE, OFlag::O_RDONLY) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Counters::default()),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    file.take(COUNTERS_CAP).read_to_string(&mut text)?;
    serde_json::from_str(&text).map_err(io::Error::other)
}

/// The exposition text (Prometheus text format 0.0.4).
pub fn render(report: &Report, counters: &Counters, now_unix_ms: u128) -> String {
    let mut out = Text::default();
    // Whole nanoseconds over 1e9: `0.0125`, not `0.012499999999999999`.
    let secs = |ms: f64| (ms * 1e6).round() / 1e9;
    out.family("quiesce_last_session_timestamp_seconds", "gauge", "When the last session ended (Unix time).");
    out.sample("quiesce_last_session_timestamp_seconds", &[], now_unix_ms as f64 / 1000.0);
    out.family(
        "quiesce_last_session_consistency",
        "gauge",
        "The consistency label of the last session's snapshot: 1 for the label it got, 0 for the others.",
    );
    for c in LABELS {
        out.sample("quiesce_last_session_consistency", &[("consistency", &label_name(c))], f64::from(u8::from(c == report.consistency)));
    }
    out.family("quiesce_last_session_snapshot_taken", "gauge", "1 if the last session took its snapshot, else 0.");
    out.sample("quiesce_last_session_snapshot_taken", &[], f64::from(u8::from(report.snapshot_taken)));
    out.family(
        "quiesce_last_session_exit_code",
        "gauge",
        "Exit status of the last session: 0 AppConsistent, 3 weaker or with errors, 4 no snapshot.",
    );
    out.sample("quiesce_last_session_exit_code", &[], f64::from(report.exit_code()));
    out.family("quiesce_last_session_duration_seconds", "gauge", "How long the last session took, planning to its recorded point.");
    out.sample("quiesce_last_session_duration_seconds", &[], secs(report.duration_ms));
    if !report.steps.is_empty() {
        out.family("quiesce_last_session_step_seconds", "gauge", "Where the last session's time went: each step of its report's `steps`.");
        // One series per step (node_exporter refuses duplicates); a session takes each once.
        let mut seen: Vec<&str> = Vec::new();
        for st in &report.steps {
            if !seen.contains(&st.step) {
                seen.push(st.step);
                out.sample("quiesce_last_session_step_seconds", &[("step", st.step)], secs(st.ms));
            }
        }
    }
    out.family("quiesce_last_freeze_mounts", "gauge", "File systems the last session froze.");
    out.sample("quiesce_last_freeze_mounts", &[], report.freeze.mounts.len() as f64);
    if let Some(w) = report.freeze.window_ms {
        out.family(
            "quiesce_last_freeze_window_seconds",
            "gauge",
            "How long the last session kept file systems frozen (first FIFREEZE to last FITHAW).",
        );
        out.sample("quiesce_last_freeze_window_seconds", &[], secs(w));
    }
    if report.snapshot.provider.is_some() {
        out.family("quiesce_last_snapshot_duration_seconds", "gauge", "How long the last session's snapshot took.");
        out.sample("quiesce_last_snapshot_duration_seconds", &[], secs(report.snapshot.duration_ms));
    }
    // One series per (hook, phase): node_exporter refuses a file with duplicates.
    let mut hooks: Vec<&crate::report::HookReport> = Vec::new();
    for h in &report.hooks {
        if !hooks.iter().any(|o| o.name == h.name && o.phase == h.phase) {
            hooks.push(h);
        }
    }
    if !hooks.is_empty() {
        out.family("quiesce_last_hook_duration_seconds", "gauge", "How long each hook of the last session took, retries included.");
        for h in &hooks {
            let kind = match h.kind {
                crate::report::HookKind::Script => "script",
                crate::report::HookKind::Wasm => "wasm",
            };
            out.sample(
                "quiesce_last_hook_duration_seconds",
                &[("hook", &h.name), ("phase", h.phase.name()), ("kind", kind)],
                secs(h.duration_ms),
            );
        }
        out.family(
            "quiesce_last_hook_outcome",
            "gauge",
            "The outcome of each hook of the last session: 1 for the outcome it had, 0 for the others.",
        );
        for h in &hooks {
            for o in OUTCOMES {
                let v = f64::from(u8::from(o == h.outcome));
                out.sample("quiesce_last_hook_outcome", &[("hook", &h.name), ("phase", h.phase.name()), ("outcome", outcome_name(o))], v);
            }
        }
    }
    let mut last_errors: BTreeMap<String, u64> = BTreeMap::new();
    for e in &report.errors {
        bump(last_errors.entry(e.code.as_str()).or_default());
    }
    out.family("quiesce_last_session_errors", "gauge", "Errors of the last session, by report code.");
    for (code, n) in &last_errors {
        out.sample("quiesce_last_session_errors", &[("code", code)], *n as f64);
    }
    out.family("quiesce_sessions_total", "counter", "Sessions run, by the consistency label of their snapshot.");
    for c in LABELS {
        let label = label_name(c);
        out.sample("quiesce_sessions_total", &[("consistency", &label)], counters.sessions.get(&label).copied().unwrap_or(0) as f64);
    }
    out.family("quiesce_errors_total", "counter", "Errors reported by sessions, by report code.");
    for (code, n) in &counters.errors {
        out.sample("quiesce_errors_total", &[("code", code)], *n as f64);
    }
    out.family("quiesce_hook_runs_total", "counter", "Hook runs, by hook, phase and outcome.");
    for c in &counters.hooks {
        out.sample("quiesce_hook_runs_total", &[("hook", &c.hook), ("phase", &c.phase), ("outcome", &c.outcome)], c.count as f64);
    }
    out.0
}

#[derive(Default)]
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Help texts are ours: no backslash or newline to escape.
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        if !value.is_finite() {
            return;
        }
        self.0.push_str(name);
        if !labels.is_empty() {
            let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label(v))).collect();
            let _ = write!(self.0, "{{{}}}", pairs.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// A label value as the text format needs it: `\`, `"` and newline escaped.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{ErrorCode, FreezeReport, HookKind, HookReport, Phase, ReportError, SnapshotReport};

    fn report(consistency: Consistency, errors: &[ErrorCode], hook: &str) -> Report {
        Report {
            session_id: "q-1".into(),
            consistency,
            snapshot_taken: consistency != Consistency::None,
            errors: errors.iter().map(|&code| ReportError { code, message: "m".into() }).collect(),
            warnings: vec![],
            hooks: vec![HookReport {
                name: hook.into(),
                kind: HookKind::Script,
                phase: Phase::Pre,
                attempts: 1,
                outcome: Outcome::Succeeded,
                duration_ms: 12.5,
                exit_code: Some(0),
                message: None,
            }],
            freeze: FreezeReport { window_ms: Some(3.25), ..Default::default() },
            snapshot: SnapshotReport { provider: Some("command: true".into()), duration_ms: 2.0, ..Default::default() },
            config: None,
            artifacts: vec![],
            interrupted_by: None,
            mode: None,
            duration_ms: 40.0,
            point: None,
            steps: vec![],
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
    }

    #[test]
    fn counters_add_up_and_the_text_shows_them() {
        let mut c = Counters::default();
        c.add(&report(Consistency::AppConsistent, &[], "db"));
        c.add(&report(Consistency::None, &[ErrorCode::SnapshotFailed, ErrorCode::SnapshotFailed], "db"));
        assert_eq!(c.sessions["AppConsistent"], 1);
        assert_eq!(c.sessions["None"], 1);
        assert_eq!(c.errors["SnapshotFailed"], 2);
        assert_eq!(c.hooks, vec![HookCount { hook: "db".into(), phase: "pre".into(), outcome: "succeeded".into(), count: 2 }]);
        let text = render(&report(Consistency::None, &[ErrorCode::SnapshotFailed], "d\"b"), &c, 1_700_000_000_123);
        assert!(text.contains("quiesce_last_session_timestamp_seconds 1700000000.123\n"), "{text}");
        assert!(text.contains("quiesce_sessions_total{consistency=\"None\"} 1\n"), "{text}");
        assert!(text.contains("quiesce_sessions_total{consistency=\"CrashConsistent\"} 0\n"), "{text}");
        assert!(text.contains("quiesce_last_session_consistency{consistency=\"None\"} 1\n"), "{text}");
        assert!(text.contains("quiesce_last_freeze_window_seconds 0.00325\n"), "{text}");
        assert!(text.contains("quiesce_last_hook_duration_seconds{hook=\"d\\\"b\",phase=\"pre\",kind=\"script\"} 0.0125\n"), "{text}");
        assert!(text.contains("quiesce_errors_total{code=\"SnapshotFailed\"} 2\n"), "{text}");
        assert!(text.contains("# TYPE quiesce_hook_runs_total counter\n"), "{text}");
    }

    #[test]
    fn hook_counters_are_capped() {
        let mut c = Counters::default();
        for i in 0..(MAX_HOOK_SERIES + 10) {
            c.add(&report(Consistency::AppConsistent, &[], &format!("h{i}")));
        }
        assert_eq!(c.hooks.len(), MAX_HOOK_SERIES);
        assert_eq!(c.sessions["AppConsistent"], (MAX_HOOK_SERIES + 10) as u64);
    }
}
