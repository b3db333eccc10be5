//! The snapshot step: whatever takes the snapshot while file systems are
//! frozen, and what it made, so that it can later be finalized (labelled),
//! deleted and restored.
//!
//! A provider is a trait so agents embedding quiesce plug in their own (a
//! cloud API call). quiesce ships a shell command ([`command`]), a reflink
//! clone of a disk image ([`reflink`]), a read-only btrfs snapshot
//! ([`btrfs`]), and the three clouds' CLIs as argv templates ([`cloud`]).
//!
//! [`SnapshotProvider::take`] returns a [`Made`]: plain, serialisable data
//! naming what was made and how to undo or restore it. The recovery-point
//! catalog stores it; [`delete`], [`restore`] and [`finalize`] act on it
//! later, without the config that made it (a config may change between a
//! snapshot and its restore).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::config::SnapshotSpec;
use crate::report::Consistency;

pub mod btrfs;
pub mod cloud;
pub mod command;
pub mod reflink;
mod run;
pub mod template;

pub use command::ShellCommand;
pub use reflink::ReflinkClone;

/// What a provider learns about the session.
#[derive(Debug, Clone)]
pub struct SnapshotContext {
    pub session_id: String,
    /// The file systems frozen right now, in freeze order.
    pub frozen_mounts: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot command `{command}` {status}")]
    CommandFailed { command: String, status: String },
    #[error("cannot start snapshot command `{command}`: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("reflink clone {source_path} -> {dest}: {message}")]
    Reflink { source_path: PathBuf, dest: PathBuf, message: String },
    #[error("btrfs {op} {path}: {message}")]
    Btrfs { op: &'static str, path: PathBuf, message: String },
    /// A placeholder value or a printed id that could smuggle in an argument.
    #[error("{0}")]
    Unsafe(String),
    /// What was asked cannot be done with what this provider made.
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Other(String),
}

/// Which provider made a snapshot: what [`delete`] and [`restore`] dispatch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Command,
    Reflink,
    Btrfs,
    Azure,
    Aws,
    Gcp,
    /// An embedder's own provider: quiesce cannot delete or restore it.
    External,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Command => "command",
            ProviderKind::Reflink => "reflink",
            ProviderKind::Btrfs => "btrfs",
            ProviderKind::Azure => "azure",
            ProviderKind::Aws => "aws",
            ProviderKind::Gcp => "gcp",
            ProviderKind::External => "external",
        }
    }
}

/// What a provider made: enough to finalize, delete and restore it later,
/// with nothing but this record. Serialised into the recovery-point catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Made {
    pub provider: ProviderKind,
    /// What the snapshot is known by elsewhere: cloud snapshot ids, the ids a
    /// snapshot command printed (`snapshot-id: X`).
    #[serde(default)]
    pub ids: Vec<String>,
    /// What was made on this machine: the reflink image, the btrfs snapshot.
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// What the snapshot was taken of (the image, the subvolume): what
    /// `points diff` and an in-place restore refer to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PathBuf>,
    /// btrfs: the snapshot's generation when it was made (`points diff`
    /// reports extents written after the older point's generation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// How to delete it (command and cloud providers), resolved when it was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete: Option<Action>,
    /// How to restore it (command and cloud providers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<Action>,
    /// How to record the final label once the session knows it (cloud tags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalize: Option<Action>,
}

impl Made {
    /// Whether quiesce can delete what this made ([`delete`] has a step for
    /// it): reflink and btrfs always; a command or cloud snapshot only with
    /// its delete template; an agent's own snapshot never.
    pub fn deletable(&self) -> bool {
        match self.provider {
            ProviderKind::Reflink | ProviderKind::Btrfs => true,
            ProviderKind::Command | ProviderKind::Azure | ProviderKind::Aws | ProviderKind::Gcp => self.delete.is_some(),
            ProviderKind::External => false,
        }
    }

    /// A record with only the kind and what it names.
    pub fn new(provider: ProviderKind, ids: Vec<String>, paths: Vec<PathBuf>) -> Made {
        Made { provider, ids, paths, source: None, generation: None, delete: None, restore: None, finalize: None }
    }
}

/// A later step a command or cloud provider runs, as resolved when the
/// snapshot was made. Placeholders still open: `{snapshot_id}` (the step
/// runs once per id), `{to}`, `{consistency}`, `{consistency_label}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Action {
    /// `/bin/sh -c COMMAND` with the values in its environment
    /// (`QUIESCE_SNAPSHOT_IDS`, `QUIESCE_SNAPSHOT_PATHS`, `QUIESCE_RESTORE_TO`,
    /// `QUIESCE_SESSION_ID`), never spliced into the command text.
    Shell { command: String, session_id: String },
    /// An argv template, run without a shell.
    Argv { argv: Vec<String> },
}

/// What a restore produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    pub provider: ProviderKind,
    /// New resources (cloud disk ids, ids a restore command printed).
    #[serde(default)]
    pub ids: Vec<String>,
    /// What now holds the restored data on this machine.
    #[serde(default)]
    pub paths: Vec<PathBuf>,
}

pub type TakeFuture<'a> = Pin<Box<dyn Future<Output = Result<Made, SnapshotError>> + Send + 'a>>;

/// Takes the snapshot. Ok means "taken", and says what was made. A provider
/// must be cancel-safe: the session drops the future when it has to thaw
/// early (signal), and the provider must then stop what it started.
pub trait SnapshotProvider: Send + Sync {
    /// For the report, e.g. `command: cp --reflink ...`.
    fn describe(&self) -> String;
    fn take<'a>(&'a self, ctx: &'a SnapshotContext) -> TakeFuture<'a>;
}

/// Builds the provider a config or `--snapshot-cmd` asks for.
pub fn from_spec(spec: &SnapshotSpec) -> Box<dyn SnapshotProvider> {
    match spec {
        SnapshotSpec::Command { command, delete_command, restore_command } => Box::new(ShellCommand {
            command: command.clone(),
            delete_command: delete_command.clone(),
            restore_command: restore_command.clone(),
        }),
        SnapshotSpec::Reflink { source, dest } => Box::new(ReflinkClone { source: source.clone(), dest: dest.clone() }),
        SnapshotSpec::Btrfs { source, dest } => Box::new(btrfs::BtrfsSnapshot { source: source.clone(), dest: dest.clone() }),
        SnapshotSpec::Cloud(spec) => Box::new(cloud::CloudProvider::new(spec.clone())),
    }
}

/// Deletes what a provider made. Blocking (it may run a cloud CLI): call it
/// from a plain thread or `spawn_blocking`, not from inside an async task.
pub fn delete(made: &Made) -> Result<(), SnapshotError> {
    match made.provider {
        ProviderKind::Reflink => reflink::delete(made),
        ProviderKind::Btrfs => btrfs::delete(made),
        ProviderKind::Command | ProviderKind::Azure | ProviderKind::Aws | ProviderKind::Gcp => {
            run::blocking(|| run::action(made, run::Step::Delete, &[]))?.map(|_| ())
        }
        ProviderKind::External => Err(unsupported(made, "delete")),
    }
}

/// Restores what a provider made to `to` (a new path for reflink and btrfs;
/// a new disk's name for the clouds; `$QUIESCE_RESTORE_TO` for a command).
/// Never overwrites: `to` must not exist yet. Blocking, like [`delete`].
pub fn restore(made: &Made, to: &Path) -> Result<Restored, SnapshotError> {
    match made.provider {
        ProviderKind::Reflink => reflink::restore(made, to),
        ProviderKind::Btrfs => btrfs::restore(made, to),
        ProviderKind::Command | ProviderKind::Azure | ProviderKind::Aws | ProviderKind::Gcp => {
            let to_text = to
                .to_str()
                .ok_or_else(|| SnapshotError::Unsafe(format!("restore target {} is not UTF-8; name it in plain text", to.display())))?;
            let vars = [("to", to_text.to_string())];
            let (ids, paths) = run::blocking(|| run::action(made, run::Step::Restore, &vars))??;
            let paths = if paths.is_empty() && made.provider == ProviderKind::Command { vec![to.to_path_buf()] } else { paths };
            Ok(Restored { provider: made.provider, ids, paths })
        }
        ProviderKind::External => Err(unsupported(made, "restore")),
    }
}

/// Records the session's final label on what was made (the clouds' tags or
/// labels; the snapshot was created while the label was still `Pending`).
/// A no-op for providers without a finalize step.
pub async fn finalize(made: &Made, label: Consistency) -> Result<(), SnapshotError> {
    if made.finalize.is_none() {
        return Ok(());
    }
    run::finalize(made, label).await
}

/// A destination template with `{session}` replaced by the session id
/// (`q-<seconds>-<hex>`: no `/`, nothing to escape).
pub(crate) fn session_path(template: &Path, session_id: &str) -> PathBuf {
    PathBuf::from(template.display().to_string().replace("{session}", session_id))
}

/// Refuses to write to a file system that is frozen right now: the call
/// would block until the guardian's thaw and then make the snapshot *after*
/// the thaw, labelled as if frozen. (A btrfs snapshot is atomic by itself:
/// exclude its file system from `[freeze]`; a reflink clone's destination
/// is the outer file system, never the frozen inner one.)
pub(crate) fn refuse_frozen(path: &Path, ctx: &SnapshotContext, what: &str) -> Result<(), SnapshotError> {
    if ctx.frozen_mounts.is_empty() {
        return Ok(());
    }
    // The path may not exist yet (a destination): its directory decides.
    let existing = path.ancestors().find_map(|p| p.canonicalize().ok()).unwrap_or_else(|| path.to_path_buf());
    let table = crate::freeze::mountinfo::read().map_err(|e| SnapshotError::Other(e.to_string()))?;
    let holder = table.entries.iter().map(|e| &e.mount_point).filter(|m| existing.starts_with(m)).max_by_key(|m| m.as_os_str().len());
    match holder {
        Some(m) if ctx.frozen_mounts.iter().any(|f| f == m) => Err(SnapshotError::Unsupported(format!(
            "{what} {} is on {}, which is frozen for this session: the snapshot would wait for the thaw. \
             Exclude {} from [freeze] (or pass --mount for the others)",
            path.display(),
            m.display(),
            m.display()
        ))),
        _ => Ok(()),
    }
}

fn unsupported(made: &Made, what: &str) -> SnapshotError {
    SnapshotError::Unsupported(format!(
        "a {} snapshot has no {what} step quiesce knows (an embedder's own provider); {what} it with the tool that made it",
        made.provider.as_str()
    ))
}
