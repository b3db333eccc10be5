//! `command`: a shell command takes the snapshot (`--snapshot-cmd` or
//! `[snapshot] command`), and optional `delete_command` / `restore_command`
//! undo or restore it later.
//!
//! **What a command tells quiesce**: lines on its stdout of the form
//! `snapshot-id: ID` (what the snapshot is known by, e.g. a storage array's
//! snapshot name) and `snapshot-path: /ABS/PATH` (what it made on this
//! machine). They become the point's `ids` / `paths`. Everything else it
//! prints is only logged. A restore command may print the same lines for
//! what it restored.
//!
//! Values reach the commands through the environment, never spliced into
//! the command text (no shell quoting to get wrong): `QUIESCE_SESSION_ID`,
//! `QUIESCE_FROZEN_MOUNTS` (take; colon-separated), `QUIESCE_SNAPSHOT_IDS`
//! and `QUIESCE_SNAPSHOT_PATHS` (delete, restore; one per line),
//! `QUIESCE_RESTORE_TO` (restore).

use std::path::PathBuf;

use super::run::{self, Step};
use super::{Action, Made, ProviderKind, SnapshotContext, SnapshotError, SnapshotProvider, TakeFuture};
use crate::contain::Spec;
use crate::hooks::script::base_env;

/// Ids a command may print: beyond this it is misbehaving.
const MAX_IDS: usize = 64;
/// Longest id or path kept.
const MAX_ID_LEN: usize = 1024;

/// `--snapshot-cmd CMD`: run by `/bin/sh -c` with the environment scripts
/// get ([`BASE_ENV`](crate::hooks::script::BASE_ENV)) plus `QUIESCE_SESSION_ID` and `QUIESCE_FROZEN_MOUNTS`
/// (colon-separated) — nothing from the host's environment — stdin
/// `/dev/null`, cwd `/`; exit 0 = taken.
///
/// It runs in a [`Containment`](crate::contain::Containment): when it exits, or when the session drops
/// the future (deadline, signal), everything it started is killed, also
/// descendants that called `setsid`. Nothing it starts may outlive the
/// freeze window: a leftover writer would block on the frozen file system.
#[derive(Debug, Clone, Default)]
pub struct ShellCommand {
    pub command: String,
    /// `[snapshot] delete_command`: run by `points delete`.
    pub delete_command: Option<String>,
    /// `[snapshot] restore_command`: run by `points restore`.
    pub restore_command: Option<String>,
}

impl ShellCommand {
    /// A command without delete or restore steps (`--snapshot-cmd`).
    pub fn new(command: impl Into<String>) -> ShellCommand {
        ShellCommand { command: command.into(), delete_command: None, restore_command: None }
    }
}

impl SnapshotProvider for ShellCommand {
    fn describe(&self) -> String {
        format!("command: {}", self.command)
    }

    fn take<'a>(&'a self, ctx: &'a SnapshotContext) -> TakeFuture<'a> {
        Box::pin(async move {
            let mounts: Vec<String> = ctx.frozen_mounts.iter().map(|p| p.display().to_string()).collect();
            let vars = [("QUIESCE_SESSION_ID", ctx.session_id.clone()), ("QUIESCE_FROZEN_MOUNTS", mounts.join(":"))];
            let out = run::contained(&shell(&self.command, &vars), "snapshot", &format!("snapshot command `{}`", self.command)).await?;
            if !out.status.success() {
                return Err(SnapshotError::CommandFailed { command: self.command.clone(), status: out.status.to_string() });
            }
            let (ids, paths) = printed(&out.stdout)?;
            let step = |c: &Option<String>| c.clone().map(|command| Action::Shell { command, session_id: ctx.session_id.clone() });
            let mut made = Made::new(ProviderKind::Command, ids, paths);
            made.delete = step(&self.delete_command);
            made.restore = step(&self.restore_command);
            Ok(made)
        })
    }
}

/// `/bin/sh -c COMMAND`, stdin `/dev/null`, cwd `/`, the base environment
/// plus `vars`; its output goes to the log, never to our stdout (the JSON report).
fn shell(command: &str, vars: &[(&str, String)]) -> Spec {
    let mut spec = Spec::new("/bin/sh");
    spec.arg("-c").arg(command);
    let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    for (k, v) in base_env(&vars) {
        spec.env(k, v);
    }
    spec
}

/// Runs a delete or restore command for what `made` names.
pub(super) async fn run_step(
    made: &Made,
    command: &str,
    session_id: &str,
    step: Step,
    open: &[(&'static str, String)],
) -> Result<(Vec<String>, Vec<PathBuf>), SnapshotError> {
    let paths: Vec<String> = made.paths.iter().map(|p| p.display().to_string()).collect();
    let mut vars = vec![
        ("QUIESCE_SESSION_ID", session_id.to_string()),
        ("QUIESCE_SNAPSHOT_IDS", made.ids.join("\n")),
        ("QUIESCE_SNAPSHOT_PATHS", paths.join("\n")),
    ];
    for (name, value) in open {
        let var = match *name {
            "to" => "QUIESCE_RESTORE_TO",
            "consistency" => "QUIESCE_CONSISTENCY",
            _ => continue,
        };
        vars.push((var, value.clone()));
    }
    let what = format!("{} command `{command}`", step.name());
    let out = run::contained(&shell(command, &vars), step.name(), &what).await?;
    if !out.status.success() {
        return Err(SnapshotError::CommandFailed { command: command.to_string(), status: out.failure() });
    }
    printed(&out.stdout)
}

/// The `snapshot-id: X` and `snapshot-path: /P` lines of a command's stdout.
fn printed(stdout: &[String]) -> Result<(Vec<String>, Vec<PathBuf>), SnapshotError> {
    let (mut ids, mut paths) = (Vec::new(), Vec::new());
    for line in stdout {
        let (key, value) = match line.split_once(':') {
            Some((k, v)) if k.trim() == "snapshot-id" || k.trim() == "snapshot-path" => (k.trim(), v.trim()),
            _ => continue,
        };
        if value.is_empty() || value.len() > MAX_ID_LEN || value.chars().any(char::is_control) {
            return Err(SnapshotError::Unsafe(format!(
                "the snapshot command printed an unusable `{key}:` line (empty, control characters, or over {MAX_ID_LEN} bytes)"
            )));
        }
        if ids.len() + paths.len() >= MAX_IDS {
            return Err(SnapshotError::Unsafe(format!("the snapshot command printed more than {MAX_IDS} snapshot-id/snapshot-path lines")));
        }
        if key == "snapshot-id" {
            ids.push(value.to_string());
        } else if value.starts_with('/') {
            paths.push(PathBuf::from(value));
        } else {
            return Err(SnapshotError::Unsafe(format!("`snapshot-path: {value}` is not an absolute path")));
        }
    }
    Ok((ids, paths))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_paths_come_from_their_lines_only() {
        let out: Vec<String> =
            ["creating...", "snapshot-id: vol1@q-1", "snapshot-path: /srv/snap/q-1", "snapshot-id:  vol2@q-1 ", "note: snapshot-id: x"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let (ids, paths) = printed(&out).unwrap();
        assert_eq!(ids, vec!["vol1@q-1", "vol2@q-1"]);
        assert_eq!(paths, vec![PathBuf::from("/srv/snap/q-1")]);
        assert!(printed(&["snapshot-path: rel".to_string()]).is_err());
        assert!(printed(&vec!["snapshot-id: a".to_string(); 65]).is_err());
    }
}
