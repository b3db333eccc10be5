//! Running what a command or cloud provider runs: contained, output kept
//! within bounds, and the steps after the snapshot (delete, restore,
//! finalize) bounded in time.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use super::{cloud, command, template, Action, Made, ProviderKind, SnapshotError};
use crate::contain::{Containment, Spec};
use crate::hooks::script::base_env;
use crate::report::Consistency;

/// Output kept from one run: a cloud CLI's JSON reply is a few KiB.
const MAX_OUTPUT: usize = 1 << 20;
/// One line longer than this is kept in pieces.
const MAX_LINE: u64 = 64 << 10;
/// Lines of stderr quoted in an error message.
const STDERR_TAIL: usize = 5;
/// How long readers get to drain the pipes after the process exited (a
/// killed leftover blocked on a frozen file system keeps them open).
const DRAIN: Duration = Duration::from_millis(500);
/// Delete and restore call a cloud API that may take minutes.
const STEP_TIMEOUT: Duration = Duration::from_secs(600);
/// Finalize runs at the end of the session: a tag update is quick.
const FINALIZE_TIMEOUT: Duration = Duration::from_secs(120);

/// What one process left: its status, its stdout (capped), the end of its stderr.
pub(super) struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr_tail: Vec<String>,
}

impl Output {
    /// `exit status: 1 (ERROR: ...)`, for an error message.
    pub fn failure(&self) -> String {
        if self.stderr_tail.is_empty() {
            self.status.to_string()
        } else {
            format!("{} (stderr: {})", self.status, self.stderr_tail.join(" | "))
        }
    }
}

#[derive(Default)]
struct Collected {
    lines: Vec<String>,
    bytes: usize,
    truncated: bool,
}

/// Runs `spec` in a containment of its own (everything it starts dies with
/// it), logs its output and keeps it. Cancel-safe: dropping the future kills
/// the process and all it started.
pub(super) async fn contained(spec: &Spec, label: &str, what: &str) -> Result<Output, SnapshotError> {
    let spawn_err = |source| SnapshotError::Spawn { command: what.to_string(), source };
    let mut containment = Containment::new(label);
    let mut child = containment.spawn(spec).map_err(spawn_err)?;
    let out = Arc::new(Mutex::new(Collected::default()));
    let err = Arc::new(Mutex::new(Collected::default()));
    let mut readers = Vec::new();
    if let Some(r) = child.stdout.take() {
        readers.push(tokio::spawn(collect(r, "stdout", label.to_string(), out.clone())));
    }
    if let Some(r) = child.stderr.take() {
        readers.push(tokio::spawn(collect(r, "stderr", label.to_string(), err.clone())));
    }
    let status = child.wait().await.map_err(spawn_err)?;
    if !containment.is_empty() {
        // Killed without waiting: one blocked on a frozen file system dies
        // only after the thaw, which must not wait for it.
        tracing::warn!("{what} exited leaving processes behind; killing them");
    }
    drop(containment);
    for r in readers {
        let _ = tokio::time::timeout(DRAIN, r).await;
    }
    let take = |c: &Arc<Mutex<Collected>>| c.lock().map(|mut c| std::mem::take(&mut c.lines)).unwrap_or_default();
    if out.lock().map(|c| c.truncated).unwrap_or(false) {
        tracing::warn!("{what} printed more than {MAX_OUTPUT} bytes; the rest was logged, not kept");
    }
    let stderr = take(&err);
    let stderr_tail = stderr[stderr.len().saturating_sub(STDERR_TAIL)..].to_vec();
    Ok(Output { status, stdout: take(&out), stderr_tail })
}

async fn collect<R: tokio::io::AsyncRead + Unpin>(reader: R, stream: &'static str, label: String, into: Arc<Mutex<Collected>>) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
        tracing::info!(stream, "{label}: {line}");
        if let Ok(mut c) = into.lock() {
            if c.bytes.saturating_add(line.len()) > MAX_OUTPUT {
                c.truncated = true;
            } else {
                c.bytes += line.len() + 1;
                c.lines.push(line);
            }
        }
    }
}

/// Runs a future on a runtime of its own, in a thread of its own: the
/// blocking `delete`/`restore` work from plain code and from inside an
/// async runtime alike.
pub(super) fn blocking<F, Fut, T>(f: F) -> Result<T, SnapshotError>
where
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = T>,
    T: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| SnapshotError::Other(format!("cannot start a runtime for the provider: {e}")))?;
            Ok(rt.block_on(f()))
        })
        .join()
        .unwrap_or_else(|_| Err(SnapshotError::Other("the provider's thread panicked".into())))
    })
}

/// A later step: delete, restore or finalize.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Taking the snapshot (a cloud provider's create template).
    Create,
    Delete,
    Restore,
    Finalize,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Create => "create",
            Step::Delete => "delete",
            Step::Restore => "restore",
            Step::Finalize => "finalize",
        }
    }
}

/// Runs a command or cloud provider's `step` for what it made, with the
/// open placeholders `vars` (`to`, `consistency`, `consistency_label`).
/// An argv template naming `{snapshot_id}` runs once per id. Returns the ids
/// and paths the step printed.
pub(super) async fn action(made: &Made, step: Step, vars: &[(&'static str, String)]) -> Result<(Vec<String>, Vec<PathBuf>), SnapshotError> {
    let chosen = match step {
        Step::Create => None,
        Step::Delete => made.delete.as_ref(),
        Step::Restore => made.restore.as_ref(),
        Step::Finalize => made.finalize.as_ref(),
    };
    let Some(action) = chosen else {
        return Err(SnapshotError::Unsupported(format!(
            "this {} snapshot was made without a {} step ({}); {} it with the tool that made it",
            made.provider.as_str(),
            step.name(),
            match made.provider {
                ProviderKind::Command => format!("set `{}_command` in [snapshot] for the next ones", step.name()),
                _ => "its provider has none".into(),
            },
            step.name()
        )));
    };
    let limit = if step == Step::Finalize { FINALIZE_TIMEOUT } else { STEP_TIMEOUT };
    let work = async {
        match action {
            Action::Shell { command, session_id } => command::run_step(made, command, session_id, step, vars).await,
            Action::Argv { argv } => {
                let runs: Vec<Option<&String>> =
                    if template::names(argv).any(|n| n == "snapshot_id") { made.ids.iter().map(Some).collect() } else { vec![None] };
                let (mut ids, mut paths) = (Vec::new(), Vec::new());
                for id in runs {
                    let lookup = |name: &str| -> Option<String> {
                        match name {
                            "snapshot_id" => id.cloned(),
                            _ => vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone()),
                        }
                    };
                    let argv = template::render(argv, &lookup, true)?;
                    let out = run_argv(&argv, step.name()).await?;
                    let (i, p) = cloud::ids_from_output(made.provider, step, &out.stdout)?;
                    ids.extend(i);
                    paths.extend(p);
                }
                Ok((ids, paths))
            }
        }
    };
    tokio::time::timeout(limit, work).await.map_err(|_| {
        SnapshotError::Other(format!(
            "{} of the {} snapshot still running after {} s; it was stopped",
            step.name(),
            made.provider.as_str(),
            limit.as_secs()
        ))
    })?
}

/// Finalize with the session's label.
pub(super) async fn finalize(made: &Made, label: Consistency) -> Result<(), SnapshotError> {
    let vars = [
        ("consistency", template::consistency(Some(label)).to_string()),
        ("consistency_label", template::consistency_label(Some(label)).into()),
    ];
    action(made, Step::Finalize, &vars).await.map(|_| ())
}

/// Runs an argv (no shell): argv[0] is looked up in quiesce's own `PATH`
/// unless it is a path; the process gets the documented base environment.
pub(super) async fn run_argv(argv: &[String], step: &str) -> Result<Output, SnapshotError> {
    let Some(program) = argv.first() else {
        return Err(SnapshotError::Other(format!("the {step} template is empty")));
    };
    let shown = argv.join(" ");
    let resolved = resolve_program(program).ok_or_else(|| SnapshotError::Spawn {
        command: shown.clone(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("`{program}` is not in PATH; install it, or give its absolute path in the template"),
        ),
    })?;
    let mut spec = Spec::new(resolved);
    spec.arg0 = Some(program.into());
    for a in &argv[1..] {
        spec.arg(a);
    }
    for (k, v) in base_env(&[]) {
        spec.env(k, v);
    }
    let out = contained(&spec, step, &shown).await?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(SnapshotError::CommandFailed { command: shown, status: out.failure() })
    }
}

fn resolve_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| base_env(&[]).into_iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.into()).unwrap_or_default());
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
    })
}
