//! The machine-wide run directory (`/run/quiesce` by default): the session
//! lock and the state file `quiesce status` reads.
//!
//! It lives on tmpfs on purpose: nothing here can be on a file system the
//! session freezes, and it is gone after a reboot, like a frozen state is.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

pub const DEFAULT_RUN_DIR: &str = "/run/quiesce";

/// Tests and side-by-side installs point this elsewhere.
pub const RUN_DIR_ENV: &str = "QUIESCE_RUN_DIR";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another quiesce session is running (pid {holder}); refusing to interfere")]
    Busy { holder: String },
    #[error("cannot use the run directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    pub fn new(path: impl Into<PathBuf>) -> RunDir {
        RunDir { path: path.into() }
    }

    /// `$QUIESCE_RUN_DIR`, else `/run/quiesce`.
    pub fn from_env() -> RunDir {
        RunDir::new(std::env::var_os(RUN_DIR_ENV).map(PathBuf::from).unwrap_or_else(|| DEFAULT_RUN_DIR.into()))
    }

    fn ensure(&self) -> Result<(), LockError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.path)
            .map_err(|source| LockError::Io { path: self.path.clone(), source })
    }

    fn lock_path(&self) -> PathBuf {
        self.path.join("session.lock")
    }

    fn state_path(&self) -> PathBuf {
        self.path.join("state.json")
    }

    /// Takes the machine-wide session lock without blocking. An flock dies
    /// with its holders, so a crashed session never blocks the next one; the
    /// freeze guardian inherits it and keeps it until it has thawed.
    pub fn lock(&self) -> Result<SessionLock, LockError> {
        self.ensure()?;
        let path = self.lock_path();
        let io_err = |source| LockError::Io { path: path.clone(), source };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(io_err)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                let _ = lock.set_len(0);
                let _ = write!(&mut *lock, "{}", std::process::id());
                Ok(SessionLock { lock })
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let holder = fs::read_to_string(&path).unwrap_or_default();
                Err(LockError::Busy { holder: if holder.is_empty() { "unknown".into() } else { holder } })
            }
            Err((_, e)) => Err(io_err(e.into())),
        }
    }

    /// Whether some process holds the session lock right now.
    pub fn session_running(&self) -> bool {
        matches!(self.lock(), Err(LockError::Busy { .. }))
    }

    pub fn write_state(&self, state: &SessionState) {
        let tmp = self.path.join("state.json.tmp");
        let ok = serde_json::to_vec_pretty(state)
            .map_err(io::Error::other)
            .and_then(|bytes| fs::write(&tmp, bytes))
            .and_then(|_| fs::rename(&tmp, self.state_path()));
        if let Err(e) = ok {
            tracing::warn!("cannot record session state in {}: {e}", self.path.display());
        }
    }

    pub fn read_state(&self) -> Option<SessionState> {
        let text = fs::read_to_string(self.state_path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn clear_state(&self) {
        let _ = fs::remove_file(self.state_path());
    }
}

/// Held for the whole session; released on drop (or when the process dies).
pub struct SessionLock {
    lock: Flock<File>,
}

impl SessionLock {
    /// The fd the freeze guardian keeps open, so the lock outlives a killed
    /// host until the guardian has thawed.
    pub fn raw_fd(&self) -> RawFd {
        self.lock.as_raw_fd()
    }
}

/// What `quiesce status` shows about a running session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionState {
    pub session_id: String,
    pub pid: u32,
    pub phase: String,
    pub started_unix_ms: u128,
    /// Mount points the session froze (or is freezing), and since when.
    pub frozen: Vec<PathBuf>,
    pub frozen_since_unix_ms: Option<u128>,
    pub guardian_pid: Option<i32>,
    pub max_freeze_s: f64,
}

pub fn unix_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

impl AsRef<Path> for RunDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}
