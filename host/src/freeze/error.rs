//! The one error type at the freeze module's boundary. Every message names
//! the mount (or file) involved and, where there is one, the fix, because the
//! person reading it is an admin at a shell, not a debugger.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in planning, starting the guardian or thawing.
#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    /// A `--mount` path has no file system mounted on it.
    #[error("{path} is not a mount point: pass the directory a file system is mounted on (see `findmnt`), not a directory inside it")]
    NotAMountPoint { path: PathBuf },

    /// A `--mount` path does not exist or cannot be resolved.
    #[error("cannot resolve --mount {path}: {source}")]
    BadPath {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// `/proc/self/mountinfo` could not be read.
    #[error("cannot read {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: io::Error,
    },

    /// A `--mount` names a mount whose mountinfo line does not have
    /// proc(5)'s shape: what it is cannot be judged, so it is not touched.
    #[error(
        "{path}: its line {line} in /proc/self/mountinfo cannot be parsed ({reason}); quiesce does not freeze \
         a mount it cannot judge: leave it out of --mount, and report the line (`grep -n '' /proc/self/mountinfo`)"
    )]
    Unparsable { path: PathBuf, line: usize, reason: String },

    /// A target could not be opened, so it cannot be frozen.
    #[error("cannot open {path} to freeze it: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The mount at a target path is no longer the one the plan chose
    /// (unmounted or covered by another mount since): freezing it would hit
    /// the wrong file system.
    #[error("{path} changed since the freeze plan was made (mount {expected} expected, found {found}): plan again")]
    MountChanged { path: PathBuf, expected: u64, found: u64 },

    /// Creating the guardian's pipes or process failed.
    #[error("cannot start the freeze guardian: {what}: {source}")]
    GuardianStart {
        what: &'static str,
        #[source]
        source: io::Error,
    },

    /// The guardian process exited or stopped answering while this host
    /// still expected it to hold a freeze. The host thawed what it could
    /// itself; `thawed` says what.
    #[error("the freeze guardian (pid {pid}) was lost: {why}; thawed by the host instead: {}", describe(.thawed))]
    GuardianLost { pid: i32, why: String, thawed: Vec<super::thaw::ThawResult> },
}

fn describe(results: &[super::thaw::ThawResult]) -> String {
    if results.is_empty() {
        return "nothing".into();
    }
    results.iter().map(|r| format!("{} ({})", r.path.display(), r.message)).collect::<Vec<_>>().join(", ")
}

/// The symbolic name of an errno (`EBUSY`), for messages users can search.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        0 => "OK",
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOTTY => "ENOTTY",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EPIPE => "EPIPE",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EALREADY => "EALREADY",
        libc::EDEADLK => "EDEADLK",
        _ => "errno",
    }
}

/// What an errno from FIFREEZE means for the admin, and what to do.
pub fn freeze_errno_explanation(errno: i32) -> &'static str {
    match errno {
        libc::EBUSY => "already frozen by another process; quiesce will not thaw it",
        libc::EOPNOTSUPP | libc::ENOTTY => "this file system does not support freezing; exclude it",
        libc::EPERM | libc::EACCES => "freezing needs CAP_SYS_ADMIN: run quiesce as root",
        libc::EROFS => "mounted read-only: nothing to freeze",
        libc::ETIMEDOUT => "--max-freeze passed while still freezing the remaining mounts",
        libc::EALREADY => "this guardian already holds a freeze; thaw first",
        libc::EINVAL => "the kernel refused the freeze",
        _ => "the kernel refused the freeze",
    }
}
