//! Where the service listens: a socket systemd handed over (socket
//! activation, `LISTEN_FDS`), or one it binds itself.
//!
//! Binding is done relative to the checked directory (every directory from
//! `/` root-owned and not writable by group or others, as for the run
//! directory): the socket is bound under a temporary name through
//! `/proc/self/fd/<dir>`, given its mode (0600, or 0660 with the allowed
//! group) and only then renamed into place, so it is never reachable with
//! a wider mode and never lands in a directory swapped in after the check.
//! An existing socket that still answers belongs to a running service and
//! is left alone; a stale one is replaced; anything else there is refused.

use std::ffi::OsString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{self, AtFlags};
use nix::sys::stat::{self, FchmodatFlags, Mode, SFlag};
use nix::unistd::{self, Gid, Uid, UnlinkatFlags};

use crate::trust::{self, TrustError};

/// systemd passes the first socket as fd 3 (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("socket path {}: {why}", .path.display())]
    BadPath { path: PathBuf, why: String },
    #[error(
        "socket directory {}: {source}; it must be owned by root and writable only by root \
         (chown root:root {}; chmod 755 {})",
        .dir.display(), .dir.display(), .dir.display()
    )]
    Untrusted { dir: PathBuf, source: TrustError },
    #[error("another quiesce service is already listening on {} (stop it first: systemctl stop quiesce.service)", .0.display())]
    InUse(PathBuf),
    #[error("{} exists and is not a socket; quiesce will not remove it (rm {} if it is stale)", .0.display(), .0.display())]
    NotASocket(PathBuf),
    #[error("socket activation: {0}")]
    Activation(String),
    #[error("socket {}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// A listening socket and how it came to be.
pub struct Listening {
    pub listener: UnixListener,
    /// Where it is, for messages (for an activated socket: its bound name).
    pub path: PathBuf,
    /// The directory and name to remove it by at exit; None when systemd owns it.
    bound: Option<(OwnedFd, OsString)>,
}

impl Listening {
    pub fn activated(&self) -> bool {
        self.bound.is_none()
    }

    /// The bound socket's place, to re-apply its mode from another task
    /// (None for a socket systemd owns).
    pub fn bound_clone(&self) -> Option<BoundSocket> {
        let (dir, name) = self.bound.as_ref()?;
        Some(BoundSocket { dir: dir.try_clone().ok()?, name: name.clone(), path: self.path.clone() })
    }

    /// Removes the socket file the service created.
    pub fn remove(&self) {
        if let Some((dir, name)) = &self.bound {
            let _ = unistd::unlinkat(dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// A socket file the service created.
pub struct BoundSocket {
    dir: OwnedFd,
    name: OsString,
    path: PathBuf,
}

impl BoundSocket {
    /// Re-applies mode and group (after a config reload changed the group).
    pub fn set_group(&self, gid: Option<Gid>) -> Result<(), ListenError> {
        set_mode(&self.dir, self.name.as_os_str(), gid).map_err(|source| ListenError::Io { path: self.path.clone(), source })
    }
}

/// The socket systemd passed, if this process was socket-activated.
/// Clears `LISTEN_*` so that nothing the service starts inherits them.
pub fn from_systemd() -> Result<Option<Listening>, ListenError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let (Some(pid), Some(fds)) = (pid, fds) else { return Ok(None) };
    // Called before any thread is started: changing the environment is safe.
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        // Meant for another process (a parent that did not clear them).
        return Ok(None);
    }
    let n: i32 = fds.trim().parse().map_err(|_| ListenError::Activation(format!("LISTEN_FDS={fds:?} is not a number")))?;
    if n != 1 {
        return Err(ListenError::Activation(format!("expected exactly one socket (LISTEN_FDS=1), got {n}; check quiesce.socket")));
    }
    let fd = LISTEN_FDS_START;
    check_listening_unix_socket(fd).map_err(ListenError::Activation)?;
    // SAFETY: fd 3 was handed to this process by systemd (LISTEN_PID is
    // ours) and checked to be a listening Unix stream socket; nothing else owns it.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    let _ = fcntl::fcntl(&listener, fcntl::FcntlArg::F_SETFD(fcntl::FdFlag::FD_CLOEXEC));
    listener.set_nonblocking(true).map_err(|e| ListenError::Activation(e.to_string()))?;
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("(socket from systemd)"));
    Ok(Some(Listening { listener, path, bound: None }))
}

fn check_listening_unix_socket(fd: RawFd) -> Result<(), String> {
    let int_opt = |opt: libc::c_int| -> Result<libc::c_int, String> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: reading an int socket option into our own variable.
        let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&mut v as *mut libc::c_int).cast(), &mut len) };
        if r != 0 {
            return Err(format!("fd {fd} is not a socket: {}", io::Error::last_os_error()));
        }
        Ok(v)
    };
    if int_opt(libc::SO_DOMAIN)? != libc::AF_UNIX || int_opt(libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(format!("fd {fd} is not a Unix stream socket (quiesce.socket must use ListenStream=/path)"));
    }
    if int_opt(libc::SO_ACCEPTCONN)? == 0 {
        return Err(format!("fd {fd} is not listening (Accept=no is required)"));
    }
    Ok(())
}

/// Binds `path` (see the module doc). `gid`: the group allowed besides root.
pub fn bind(path: &Path, gid: Option<Gid>) -> Result<Listening, ListenError> {
    let bad = |why: &str| ListenError::BadPath { path: path.to_path_buf(), why: why.into() };
    if !path.is_absolute() {
        return Err(bad("must be an absolute path"));
    }
    let (Some(dir_path), Some(name)) = (path.parent(), path.file_name()) else { return Err(bad("names no file")) };
    if name.len() > 80 {
        return Err(bad("the socket's file name is too long"));
    }
    // Created beneath directories already checked, never through a planted symlink.
    let dir =
        trust::create_trusted_dir(dir_path, 0o755).map_err(|source| ListenError::Untrusted { dir: dir_path.to_path_buf(), source })?;
    let io_err = |source: io::Error| ListenError::Io { path: path.to_path_buf(), source };
    match stat::fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFSOCK.bits() => {
            if UnixStream::connect(path).is_ok() {
                return Err(ListenError::InUse(path.to_path_buf()));
            }
            unistd::unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir).map_err(|e| io_err(e.into()))?;
        }
        Ok(_) => return Err(ListenError::NotASocket(path.to_path_buf())),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(io_err(e.into())),
    }
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}", std::process::id()));
    let _ = unistd::unlinkat(&dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
    // Bound through the checked directory's fd; short enough for sun_path.
    let via_fd = trust::proc_fd(&dir).join(&tmp);
    if via_fd.as_os_str().as_bytes().len() >= 108 {
        return Err(bad("too long for a Unix socket"));
    }
    let listener = UnixListener::bind(&via_fd).map_err(io_err)?;
    let placed = set_mode(&dir, tmp.as_os_str(), gid)
        .and_then(|()| fcntl::renameat(&dir, tmp.as_os_str(), &dir, name).map_err(io::Error::from))
        .and_then(|()| listener.set_nonblocking(true));
    if let Err(e) = placed {
        let _ = unistd::unlinkat(&dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        return Err(io_err(e));
    }
    if gid.is_some() {
        if let Ok(st) = stat::fstat(&dir) {
            if st.st_mode & 0o011 == 0 {
                tracing::warn!(
                    "[service] group is set, but {} (mode {:04o}) cannot be entered by the group: chmod 711 {}",
                    dir_path.display(),
                    st.st_mode & 0o7777,
                    dir_path.display()
                );
            }
        }
    }
    Ok(Listening { listener, path: path.to_path_buf(), bound: Some((dir, name.to_os_string())) })
}

/// 0600 root:root, or 0660 root:GROUP.
fn set_mode(dir: &OwnedFd, name: &std::ffi::OsStr, gid: Option<Gid>) -> io::Result<()> {
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    unistd::fchownat(dir, name, Some(Uid::from_raw(0)), Some(gid.unwrap_or(Gid::from_raw(0))), AtFlags::AT_SYMLINK_NOFOLLOW)?;
    stat::fchmodat(dir, name, Mode::from_bits_truncate(mode), FchmodatFlags::FollowSymlink)?;
    Ok(())
}
