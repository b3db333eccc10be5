//! Is a file system frozen? Asking must never hang the asker: any write, or
//! even a metadata change, to a frozen fs blocks uninterruptibly until thaw.
//!
//! The probe forks a child that calls `renameat(dir, X, dir, X)` for a name
//! that does not exist. The kernel takes the fs's write reference
//! (`mnt_want_write` → `sb_start_write`) before looking the name up, so on a
//! frozen fs the child blocks there; on a thawed one it fails with ENOENT at
//! once and nothing on disk changes. A child still blocked after `wait`
//! means frozen; it is left to finish by itself at thaw and reaped later.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// Probe children still blocked on a frozen fs when their probe gave up.
static STRAY: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

const PROBE_NAME: &[u8] = b".quiesce-probe-nonexistent\0";

/// True if `path`'s file system is frozen, judged by whether a harmless
/// metadata operation is still blocked after `wait`. Never blocks longer.
pub fn is_frozen(path: &Path, wait: Duration) -> io::Result<bool> {
    reap_strays();
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain syscalls on a valid C string; the fd is owned right away.
    let dir = unsafe {
        let fd = libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        OwnedFd::from_raw_fd(fd)
    };
    let dirfd = dir.as_raw_fd();
    let name = PROBE_NAME.as_ptr().cast::<libc::c_char>();

    // SAFETY: after fork the child only makes async-signal-safe syscalls on
    // data prepared before the fork, and leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        unsafe {
            // Hold nothing but the directory: a blocked probe must not keep
            // e.g. a guardian's command pipe open and hide the host's death.
            close_range(0, i64::from(dirfd) - 1);
            close_range(dirfd + 1, u32::MAX as i64);
            libc::renameat(dirfd, name, dirfd, name);
            libc::_exit(0);
        }
    }
    drop(dir);

    let blocked = match wait_exit(pid, wait) {
        Ok(exited) => !exited,
        Err(e) => {
            STRAY.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
            return Err(e);
        }
    };
    if blocked {
        STRAY.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
    } else {
        // SAFETY: reaping our own exited child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }
    Ok(blocked)
}

/// Closes fds `first..=last` (async-signal-safe). Falls back to a loop on
/// kernels without close_range(2).
pub(crate) unsafe fn close_range(first: i32, last: i64) {
    if first < 0 || last < i64::from(first) {
        return;
    }
    let r = libc::syscall(libc::SYS_close_range, first as libc::c_uint, last.min(u32::MAX as i64) as libc::c_uint, 0);
    if r < 0 {
        let mut fd = first;
        while i64::from(fd) <= last && fd < 65536 {
            libc::close(fd);
            fd += 1;
        }
    }
}

/// Detaches a process just forked from the (multi-threaded) host, for a
/// helper that must outlive it (the freeze guardian, the containment
/// watchdog): a new session (a process-group SIGKILL or terminal hangup of
/// the host misses it), the host's signal handlers reset, every signal
/// blocked but faults (a crash in here is a bug to see, not to hide), named
/// `name`, stdio on `devnull`, and every fd closed but `keep` (sorted).
/// Returns the blocked set, for a signalfd. Async-signal-safe.
pub(crate) unsafe fn detach(name: &std::ffi::CStr, devnull: i32, keep: &[i32]) -> libc::sigset_t {
    libc::setsid();
    // Block everything while the inherited (tokio) handlers are reset.
    let mut watched: libc::sigset_t = std::mem::zeroed();
    libc::sigfillset(&mut watched);
    libc::sigprocmask(libc::SIG_SETMASK, &watched, std::ptr::null_mut());
    for sig in 1..65 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    for sig in [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGTRAP, libc::SIGSYS] {
        libc::sigdelset(&mut watched, sig);
    }
    libc::sigprocmask(libc::SIG_SETMASK, &watched, std::ptr::null_mut());
    libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0);
    for std_fd in 0..3 {
        libc::dup2(devnull, std_fd);
    }
    let mut next = 3;
    for &fd in keep {
        if fd >= next {
            close_range(next, i64::from(fd) - 1);
            next = fd + 1;
        }
    }
    close_range(next, i64::from(u32::MAX));
    watched
}

/// Waits up to `wait` for `pid` to exit, without reaping it. Ok(true) if it exited.
pub(crate) fn wait_exit(pid: libc::pid_t, wait: Duration) -> io::Result<bool> {
    // SAFETY: pidfd_open on our own child; the fd is owned right away.
    let pidfd = unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        OwnedFd::from_raw_fd(fd as i32)
    };
    let mut pfd = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let deadline = std::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = left.as_millis().min(i32::MAX as u128) as i32 + i32::from(!left.subsec_nanos().is_multiple_of(1_000_000));
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return Ok(true);
        }
        if n == 0 {
            return Ok(false);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

fn reap_strays() {
    let mut stray = STRAY.lock().unwrap_or_else(|p| p.into_inner());
    // SAFETY: WNOHANG reaping of our own children.
    stray.retain(|&pid| unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) } == 0);
}
