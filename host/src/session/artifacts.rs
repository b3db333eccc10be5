//! Where plugins' artifacts go: a root-only directory per session.
//!
//! Some results cannot go into the snapshot — PostgreSQL's backup label is
//! only known after `pg_backup_stop()`, after the snapshot — so the plugin
//! hands them to the host, which keeps them with the session. They are
//! written after thaw, never into a frozen file system.
//!
//! The host writes them as root, so the place is checked like a script's:
//! the state directory must pass the trust walk (root's alone, every
//! directory above it too), everything below it is made and opened with
//! `mkdirat`/`openat` beneath checked fds without following links, and each
//! file is created `O_CREAT|O_EXCL|O_NOFOLLOW`: a name that already exists
//! (a planted symlink, a file) is refused, never followed or overwritten.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{self, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{self, UnlinkatFlags};
use std::os::fd::OwnedFd;

use crate::hooks::wasm::Artifact;
use crate::report::ArtifactReport;
use crate::trust::{self, TrustError};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/quiesce";
pub const STATE_DIR_ENV: &str = "QUIESCE_STATE_DIR";

/// `$QUIESCE_STATE_DIR`, else `/var/lib/quiesce`.
pub fn state_dir_from_env() -> PathBuf {
    std::env::var_os(STATE_DIR_ENV).map(PathBuf::from).unwrap_or_else(|| DEFAULT_STATE_DIR.into())
}

/// Why artifacts could not be stored; each names the path and the fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Untrusted(#[from] TrustError),
    #[error("{}: exists already (refusing to follow or overwrite it)", .0.display())]
    Exists(PathBuf),
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// Writes `<state>/sessions/<session>/<hook>/<name>` (dirs 0700, files 0600).
pub fn store(state_dir: &Path, session_id: &str, hook: &str, artifacts: &[Artifact]) -> Result<Vec<ArtifactReport>, StoreError> {
    let state = trust::create_trusted_dir(state_dir, 0o700)?;
    let mut path = state_dir.to_path_buf();
    let mut dir = state;
    for name in ["sessions", &sanitize(session_id), &sanitize(hook)] {
        path.push(name);
        dir = trust::trusted_subdir(&dir, OsStr::new(name), &path, 0o700)?;
    }
    let mut stored = Vec::new();
    for a in artifacts {
        let file_path = path.join(&a.name);
        let io = |source: std::io::Error| StoreError::Io { path: file_path.clone(), source };
        // The name was checked by the `artifacts` capability (one component,
        // no leading dot); O_EXCL|O_NOFOLLOW refuses anything already there.
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match fcntl::openat(&dir, a.name.as_str(), flags, Mode::from_bits_truncate(0o600)) {
            Ok(fd) => fd,
            Err(Errno::EEXIST) => return Err(StoreError::Exists(file_path)),
            Err(e) => return Err(io(e.into())),
        };
        let mut f = File::from(fd);
        f.write_all(&a.data).and_then(|()| f.sync_all()).map_err(io)?;
        stored.push(ArtifactReport { hook: hook.to_string(), name: a.name.clone(), path: file_path, bytes: a.data.len() });
    }
    Ok(stored)
}

/// Removes a session's artifacts (`<state>/sessions/<session>/`): called
/// when its recovery point is deleted or forgotten, without which they would
/// stay for good (and a loop of sessions would fill the disk). Only what
/// [`store`] makes is expected — hook directories holding files; nothing is
/// followed, a symlink is removed as the link it is. Whether there was
/// anything to remove.
pub fn remove(state_dir: &Path, session_id: &str) -> Result<bool, StoreError> {
    let state = match trust::open_trusted_dir(state_dir) {
        Ok(fd) => fd,
        Err(e) if e.is_not_found() => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let sessions_path = state_dir.join("sessions");
    let Some(sessions) = subdir(&state, OsStr::new("sessions"), &sessions_path)? else { return Ok(false) };
    let name = sanitize(session_id);
    let path = sessions_path.join(&name);
    let Some(session) = subdir(&sessions, OsStr::new(&name), &path)? else { return Ok(false) };
    for hook in names(&session, &path)? {
        let hook_path = path.join(&hook);
        if let Some(dir) = subdir(&session, &hook, &hook_path)? {
            for file in names(&dir, &hook_path)? {
                unlink(&dir, &file, &hook_path.join(&file), UnlinkatFlags::NoRemoveDir)?;
            }
            unlink(&session, &hook, &hook_path, UnlinkatFlags::RemoveDir)?;
        } else {
            unlink(&session, &hook, &hook_path, UnlinkatFlags::NoRemoveDir)?;
        }
    }
    unlink(&sessions, OsStr::new(&name), &path, UnlinkatFlags::RemoveDir)?;
    Ok(true)
}

/// `name` in `parent` as a directory, never through a symlink; None when it
/// is missing, or is not a directory (the caller removes it as a file).
fn subdir(parent: &OwnedFd, name: &OsStr, path: &Path) -> Result<Option<OwnedFd>, StoreError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match fcntl::openat(parent, name, flags, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => Ok(None),
        Err(e) => Err(StoreError::Io { path: path.to_path_buf(), source: e.into() }),
    }
}

fn names(dir: &OwnedFd, path: &Path) -> Result<Vec<std::ffi::OsString>, StoreError> {
    let io = |source| StoreError::Io { path: path.to_path_buf(), source };
    std::fs::read_dir(trust::proc_fd(dir)).map_err(io)?.map(|e| e.map(|e| e.file_name()).map_err(io)).collect()
}

fn unlink(dir: &OwnedFd, name: &OsStr, path: &Path, how: UnlinkatFlags) -> Result<(), StoreError> {
    match unistd::unlinkat(dir, name, how) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(StoreError::Io { path: path.to_path_buf(), source: e.into() }),
    }
}

/// Hook names come from the admin's config; keep them one path component.
fn sanitize(name: &str) -> String {
    let s: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
    if s.is_empty() || s.starts_with('.') {
        format!("_{s}")
    } else {
        s
    }
}
