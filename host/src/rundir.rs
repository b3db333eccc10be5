//! The machine-wide run directory (`/run/quiesce` by default): the session
//! lock and the state file `quiesce status` reads.
//!
//! It lives on tmpfs on purpose: nothing here can be on a file system the
//! session freezes, and it is gone after a reboot, like a frozen state is.
//!
//! quiesce writes here as root, so the directory is checked like any trusted
//! path ([`trust::open_trusted_dir`]: every directory from `/` owned by root
//! or by the user quiesce runs as, none writable by group or others, the
//! last one not a symlink), and every file in it is opened relative to that
//! checked directory fd with `O_NOFOLLOW`: a symlink planted as
//! `session.lock` would otherwise make root truncate whatever it points at.
//!
//! `quiesce status` only reads: whether the lock is held is looked up in
//! `/proc/locks` by the lock file's inode. Probing by taking the lock (as it
//! once did) made a session that started at that moment fail with
//! `BackupOperationInProgress`, and rewrote the lock's pid.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{self, Flock, FlockArg, OFlag};
use nix::sys::stat::{self, Mode, SFlag};
use serde::{Deserialize, Serialize};

use crate::trust::{self, TrustError};

pub const DEFAULT_RUN_DIR: &str = "/run/quiesce";

/// Tests and side-by-side installs point this elsewhere.
pub const RUN_DIR_ENV: &str = "QUIESCE_RUN_DIR";

const LOCK_FILE: &str = "session.lock";
const STATE_FILE: &str = "state.json";

/// More than any state file quiesce writes; a bigger one is not ours.
const STATE_CAP: u64 = 64 * 1024;
/// A pid, with room to spare.
const PID_CAP: u64 = 32;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another quiesce session is running (pid {holder}); refusing to interfere")]
    Busy { holder: String },
    #[error(
        "cannot use the run directory {}: {source}; it must be a directory owned by root and writable only by root: \
         chown root:root {} && chmod 700 {}",
        .path.display(), .path.display(), .path.display()
    )]
    Untrusted { path: PathBuf, source: TrustError },
    /// The directory or a file in it (`path` says which) cannot be used.
    #[error("run directory: cannot use {}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
}

#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
    /// The directory as checked when [`RunDir::lock`] last took the session
    /// lock: the session's state records go there without walking and
    /// checking the path again each time (a session writes several). Each
    /// `lock` replaces it, so a RunDir used again sees the directory anew.
    locked_dir: std::sync::Arc<std::sync::Mutex<Option<std::sync::Arc<OwnedFd>>>>,
}

impl RunDir {
    pub fn new(path: impl Into<PathBuf>) -> RunDir {
        RunDir { path: path.into(), locked_dir: Default::default() }
    }

    /// `$QUIESCE_RUN_DIR`, else `/run/quiesce`.
    pub fn from_env() -> RunDir {
        RunDir::new(std::env::var_os(RUN_DIR_ENV).map(PathBuf::from).unwrap_or_else(|| DEFAULT_RUN_DIR.into()))
    }

    /// Creates the directory if it is missing (mode 0700), then opens and
    /// checks it.
    fn ensure(&self) -> Result<OwnedFd, LockError> {
        match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.path) {
            Ok(()) => {}
            // Reported precisely by the check below (not a directory, a symlink ...).
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(LockError::Io { path: self.path.clone(), source }),
        }
        self.open_dir()
    }

    /// Opens and checks the directory, creating nothing.
    fn open_dir(&self) -> Result<OwnedFd, LockError> {
        let path = std::path::absolute(&self.path).unwrap_or_else(|_| self.path.clone());
        trust::open_trusted_dir(&path).map_err(|source| LockError::Untrusted { path: self.path.clone(), source })
    }

    /// Opens a file in the checked directory, never through a symlink.
    fn open_in(&self, dir: &OwnedFd, name: &str, flags: OFlag) -> Result<File, LockError> {
        let path = self.path.join(name);
        let fd = fcntl::openat(dir, name, flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY, Mode::from_bits_truncate(0o600))
            .map_err(|e| match e {
                Errno::ELOOP => LockError::Io {
                    path: path.clone(),
                    source: io::Error::other(format!("is a symbolic link; quiesce does not follow it (remove it: rm {})", path.display())),
                },
                e => LockError::Io { path: path.clone(), source: e.into() },
            })?;
        let st = stat::fstat(&fd).map_err(|e| LockError::Io { path: path.clone(), source: e.into() })?;
        if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFREG.bits() {
            return Err(LockError::Io {
                path: path.clone(),
                source: io::Error::other(format!("not a regular file (remove it: rm {})", path.display())),
            });
        }
        Ok(File::from(fd))
    }

    /// Takes the machine-wide session lock without blocking. An flock dies
    /// with its holders, so a crashed session never blocks the next one; the
    /// freeze guardian inherits it and keeps it until it has thawed.
    pub fn lock(&self) -> Result<SessionLock, LockError> {
        let dir = self.ensure()?;
        let keep = dir.try_clone().ok();
        let path = self.path.join(LOCK_FILE);
        let file = self.open_in(&dir, LOCK_FILE, OFlag::O_RDWR | OFlag::O_CREAT)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                // The service takes the lock for every session: rewritten
                // only when another process held it last (truncating a
                // file is a journal transaction, ~0.6 ms on a busy disk).
                let pid = std::process::id().to_string();
                if read_capped(&lock, PID_CAP).as_deref().map(str::trim) != Some(pid.as_str()) {
                    let _ = lock.set_len(0);
                    let _ = std::os::unix::fs::FileExt::write_all_at(&*lock, pid.as_bytes(), 0);
                }
                if let Some(dir) = keep {
                    *self.locked_dir.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::sync::Arc::new(dir));
                }
                Ok(SessionLock { lock })
            }
            Err((file, Errno::EWOULDBLOCK)) => {
                let holder = read_capped(&file, PID_CAP).unwrap_or_default();
                Err(LockError::Busy { holder: if holder.trim().is_empty() { "unknown".into() } else { holder.trim().to_string() } })
            }
            Err((_, e)) => Err(LockError::Io { path, source: e.into() }),
        }
    }

    /// Whether some process holds the session lock right now, found without
    /// taking it: `/proc/locks` lists every flock by device and inode.
    /// Creates, truncates and writes nothing.
    pub fn session_running(&self) -> Result<bool, LockError> {
        let dir = match self.open_dir() {
            Ok(dir) => dir,
            Err(LockError::Untrusted { source, .. }) if source.is_not_found() => return Ok(false),
            Err(e) => return Err(e),
        };
        let path = self.path.join(LOCK_FILE);
        let io_err = |source: io::Error| LockError::Io { path: path.clone(), source };
        let st = match stat::fstatat(&dir, LOCK_FILE, fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(false),
            Err(e) => return Err(io_err(e.into())),
        };
        let locks = std::fs::read_to_string("/proc/locks").map_err(io_err)?;
        Ok(flock_held(&locks, &lock_devs(&dir, st.st_dev), st.st_ino))
    }

    /// Records what `quiesce status` shows: written to a fresh temporary file
    /// (created exclusively, never through a symlink), then renamed over the
    /// old state, so a reader sees the old or the new state, never half.
    pub fn write_state(&self, state: &SessionState) {
        if let Err(e) = self.try_write_state(state) {
            tracing::warn!("cannot record session state in {}: {e}", self.path.display());
        }
    }

    fn try_write_state(&self, state: &SessionState) -> Result<(), LockError> {
        let io_err = |source: io::Error| LockError::Io { path: self.path.join(STATE_FILE), source };
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| io_err(io::Error::other(e)))?;
        let dir = match self.locked() {
            Some(dir) => dir,
            None => std::sync::Arc::new(self.ensure()?),
        };
        crate::atomic::replace(&dir, STATE_FILE, &bytes, 0o600, false).map_err(io_err)
    }

    /// The directory checked by the last [`RunDir::lock`], if any.
    fn locked(&self) -> Option<std::sync::Arc<OwnedFd>> {
        self.locked_dir.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The state a running session recorded, if any (read only).
    pub fn read_state(&self) -> Option<SessionState> {
        let dir = self.open_dir().ok()?;
        let file = self.open_in(&dir, STATE_FILE, OFlag::O_RDONLY | OFlag::O_NONBLOCK).ok()?;
        serde_json::from_str(&read_capped(&file, STATE_CAP)?).ok()
    }

    pub fn clear_state(&self) {
        if let Some(dir) = self.locked().or_else(|| self.open_dir().ok().map(std::sync::Arc::new)) {
            let _ = nix::unistd::unlinkat(&*dir, STATE_FILE, nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// Reads at most `cap` bytes from the start of `file`.
fn read_capped(file: &File, cap: u64) -> Option<String> {
    let mut s = String::new();
    let mut f = file;
    // Reading through a shared handle moves the shared offset; read from 0.
    std::io::Seek::rewind(&mut f).ok()?;
    f.take(cap).read_to_string(&mut s).ok()?;
    Some(s)
}

/// The device numbers `/proc/locks` may print for the lock file: the
/// superblock's (what the kernel prints, from mountinfo by mount id) and
/// `st_dev` (the same, except on btrfs subvolumes).
fn lock_devs(dir: &OwnedFd, st_dev: u64) -> Vec<(u32, u32)> {
    let mut devs = vec![(libc::major(st_dev), libc::minor(st_dev))];
    if let Some(dev) = mount_dev(dir) {
        devs.push(dev);
    }
    devs
}

/// The superblock device of the mount `dir` is on.
fn mount_dev(dir: &OwnedFd) -> Option<(u32, u32)> {
    // SAFETY: statx into a zeroed struct we own; the fd is valid for the call.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statx(dir.as_raw_fd(), c"".as_ptr(), libc::AT_EMPTY_PATH, libc::STATX_MNT_ID, &mut stx) };
    if r != 0 || stx.stx_mask & libc::STATX_MNT_ID == 0 {
        return None;
    }
    let table = crate::freeze::mountinfo::read().ok()?;
    table.entries.iter().find(|e| e.mount_id == stx.stx_mnt_id).map(|e| e.dev)
}

/// Whether `/proc/locks` lists an flock on inode `ino` of one of `devs`.
/// Lines look like `3: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF`
/// (device in hex, as fs/locks.c prints it); `N: -> ...` lines are waiters.
fn flock_held(locks: &str, devs: &[(u32, u32)], ino: u64) -> bool {
    locks.lines().any(|line| {
        let mut f = line.split_whitespace().skip(1);
        if f.next() != Some("FLOCK") {
            return false;
        }
        let Some(id) = f.nth(3) else { return false };
        let mut parts = id.split(':');
        let (Some(maj), Some(min), Some(i), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else { return false };
        let parsed = (u32::from_str_radix(maj, 16), u32::from_str_radix(min, 16), i.parse::<u64>());
        matches!(parsed, (Ok(maj), Ok(min), Ok(i)) if i == ino && devs.contains(&(maj, min)))
    })
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

    /// Closes this process's fd without unlocking, for a session that ends
    /// with a mount still frozen: the flock belongs to the open file
    /// description, which the guardian's copy keeps — and with it the lock —
    /// until it has thawed and exited. Dropping would `LOCK_UN` it for the
    /// guardian too; leaking the fd (as before) kept a long-running service
    /// holding the lock for good, refusing every later session.
    pub fn leave_to_guardian(self) {
        let fd = self.lock.as_raw_fd();
        std::mem::forget(self);
        // SAFETY: `fd` was this lock's own, and nothing refers to it after
        // the forget: closing it is the drop minus the unlock.
        unsafe { libc::close(fd) };
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
    #[serde(serialize_with = "crate::serde_path::lossy_vec")]
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

#[cfg(test)]
mod tests {
    use super::*;

    const LOCKS: &str = "\
1: POSIX  ADVISORY  WRITE 812 00:19:1234 0 EOF
2: FLOCK  ADVISORY  WRITE 4242 00:1a:98765 0 EOF
2: -> FLOCK  ADVISORY  WRITE 4243 00:1b:55 0 EOF
3: OFDLCK ADVISORY  READ -1 fd:00:77 0 EOF
";

    #[test]
    fn the_lock_file_names_its_holder_whoever_wrote_it_last() {
        // Not under /tmp: a run directory must not be beneath a world-writable one.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/rundir-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let run = RunDir::new(dir.clone());
        let me = std::process::id().to_string();
        // A longer pid left by an earlier holder: no digit of it may remain.
        std::fs::write(dir.join(LOCK_FILE), "1234567890\n").unwrap();
        let changed_at = || {
            let m = std::fs::metadata(dir.join(LOCK_FILE)).unwrap();
            (std::os::unix::fs::MetadataExt::ctime(&m), std::os::unix::fs::MetadataExt::ctime_nsec(&m))
        };
        let mut first = None;
        for _ in 0..2 {
            let lock = run.lock().expect("lock");
            assert_eq!(std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap(), me);
            drop(lock);
            // A rewrite would move the change time on by then (timestamps tick every few ms).
            std::thread::sleep(std::time::Duration::from_millis(30));
            first.get_or_insert_with(changed_at);
        }
        assert_eq!(first, Some(changed_at()), "taken again by the same process, the lock file is not rewritten");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn finds_an_flock_by_hex_device_and_inode() {
        assert!(flock_held(LOCKS, &[(0, 0x1a)], 98765));
        assert!(!flock_held(LOCKS, &[(0, 0x1a)], 98766), "other inode");
        assert!(!flock_held(LOCKS, &[(0, 26 + 1)], 98765), "other device");
        assert!(!flock_held(LOCKS, &[(0, 0x19)], 1234), "a POSIX lock is not the session lock");
        assert!(!flock_held(LOCKS, &[(0, 0x1b)], 55), "a waiter holds nothing");
        assert!(!flock_held("", &[(0, 0x1a)], 98765));
    }
}
