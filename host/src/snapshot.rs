//! The snapshot step: whatever takes the snapshot while file systems are
//! frozen. A provider is a trait so agents embedding quiesce plug in their
//! own (a cloud API call); quiesce ships a shell command and a reflink clone.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::pin::Pin;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::config::SnapshotSpec;
use crate::contain::{Containment, Spec};
use crate::hooks::script::base_env;

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
    #[error("{0}")]
    Other(String),
}

pub type TakeFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SnapshotError>> + Send + 'a>>;

/// Takes the snapshot. Ok means "taken". A provider must be cancel-safe: the
/// session drops the future when it has to thaw early (signal), and the
/// provider must then stop what it started.
pub trait SnapshotProvider: Send + Sync {
    /// For the report, e.g. `command: cp --reflink ...`.
    fn describe(&self) -> String;
    fn take<'a>(&'a self, ctx: &'a SnapshotContext) -> TakeFuture<'a>;
}

/// Builds the provider a config or `--snapshot-cmd` asks for.
pub fn from_spec(spec: &SnapshotSpec) -> Box<dyn SnapshotProvider> {
    match spec {
        SnapshotSpec::Command { command } => Box::new(ShellCommand { command: command.clone() }),
        SnapshotSpec::Reflink { source, dest } => Box::new(ReflinkClone { source: source.clone(), dest: dest.clone() }),
    }
}

/// `--snapshot-cmd CMD`: run by `/bin/sh -c` with the environment scripts
/// get ([`BASE_ENV`]) plus `QUIESCE_SESSION_ID` and `QUIESCE_FROZEN_MOUNTS`
/// (colon-separated) — nothing from the host's environment — stdin
/// `/dev/null`, cwd `/`; exit 0 = taken.
///
/// It runs in a [`Containment`]: when it exits, or when the session drops
/// the future (deadline, signal), everything it started is killed, also
/// descendants that called `setsid`. Nothing it starts may outlive the
/// freeze window: a leftover writer would block on the frozen file system.
pub struct ShellCommand {
    pub command: String,
}

impl SnapshotProvider for ShellCommand {
    fn describe(&self) -> String {
        format!("command: {}", self.command)
    }

    fn take<'a>(&'a self, ctx: &'a SnapshotContext) -> TakeFuture<'a> {
        Box::pin(async move {
            let mounts: Vec<String> = ctx.frozen_mounts.iter().map(|p| p.display().to_string()).collect();
            // stdin /dev/null, cwd /; its output goes to the log, never to
            // our stdout (the JSON report).
            let mut cmd = Spec::new("/bin/sh");
            cmd.arg("-c").arg(&self.command);
            let vars =
                [("QUIESCE_SESSION_ID".to_string(), ctx.session_id.clone()), ("QUIESCE_FROZEN_MOUNTS".to_string(), mounts.join(":"))];
            for (k, v) in base_env(&vars) {
                cmd.env(k, v);
            }
            // Dropped with this future: at exit, or when the session gives up.
            let mut contained = Containment::new("snapshot");
            let mut child = contained.spawn(&cmd).map_err(|source| SnapshotError::Spawn { command: self.command.clone(), source })?;
            for (stream, name) in [(child.stdout.take().map(box_reader), "stdout"), (child.stderr.take().map(box_reader), "stderr")] {
                if let Some(reader) = stream {
                    tokio::spawn(log_lines(reader, name));
                }
            }
            let status = child.wait().await.map_err(|source| SnapshotError::Spawn { command: self.command.clone(), source })?;
            if !contained.is_empty() {
                // Killed without waiting: one blocked on the frozen file
                // system dies only after the thaw, which must not wait for it.
                tracing::warn!("snapshot command `{}` exited leaving processes behind; killing them", self.command);
            }
            drop(contained);
            if status.success() {
                Ok(())
            } else {
                Err(SnapshotError::CommandFailed { command: self.command.clone(), status: status.to_string() })
            }
        })
    }
}

type BoxReader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

fn box_reader<R: tokio::io::AsyncRead + Send + Unpin + 'static>(r: R) -> BoxReader {
    Box::new(r)
}

async fn log_lines(reader: BoxReader, stream: &'static str) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(stream, "snapshot: {line}");
    }
}

/// Clones `source` to `dest` with the FICLONE ioctl: a block-level,
/// copy-on-write snapshot of a file (a VM disk image) on XFS or btrfs. It is
/// instant and the clone is exactly the source's blocks at that moment.
pub struct ReflinkClone {
    pub source: PathBuf,
    pub dest: PathBuf,
}

impl SnapshotProvider for ReflinkClone {
    fn describe(&self) -> String {
        format!("reflink: {} -> {}", self.source.display(), self.dest.display())
    }

    fn take<'a>(&'a self, ctx: &'a SnapshotContext) -> TakeFuture<'a> {
        let dest = PathBuf::from(self.dest.display().to_string().replace("{session}", &ctx.session_id));
        Box::pin(async move {
            let source = self.source.clone();
            let err = |message: String| SnapshotError::Reflink { source_path: self.source.clone(), dest: dest.clone(), message };
            let dest2 = dest.clone();
            tokio::task::spawn_blocking(move || clone_file(&source, &dest2))
                .await
                .map_err(|e| err(e.to_string()))?
                .map_err(|e| err(e.to_string()))
        })
    }
}

nix::ioctl_write_int!(ficlone, 0x94, 9);

fn clone_file(source: &std::path::Path, dest: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let src = std::fs::File::open(source)?;
    // create_new: never overwrite an earlier snapshot.
    let dst = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(dest)?;
    // SAFETY: both fds are open for the duration of the call.
    let r = unsafe { ficlone(dst.as_raw_fd(), src.as_raw_fd() as libc::c_ulong) };
    if let Err(e) = r {
        drop(dst);
        let _ = std::fs::remove_file(dest);
        return Err(std::io::Error::other(format!("FICLONE: {e} (both files must be on one XFS-with-reflink or btrfs file system)")));
    }
    Ok(())
}
