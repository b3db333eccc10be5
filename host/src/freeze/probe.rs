//! Is a file system frozen? Asking must never hang the asker: any write, or
//! even a metadata change, to a frozen fs blocks uninterruptibly until thaw.
//!
//! The probe starts a child that calls `renameat2(dir, X, dir, X, 0)` for a
//! name that does not exist. The kernel takes the fs's write reference
//! (`mnt_want_write` → `sb_start_write`) before looking the name up, so on a
//! frozen fs the child blocks there; on a thawed one it fails with ENOENT at
//! once and nothing on disk changes. A child still blocked after `wait`
//! means frozen; it is left to finish by itself at thaw and reaped later.
//!
//! The child shares the host's address space (`clone3(CLONE_VM)`, the way
//! the containment spawner starts its children) and runs on a small stack
//! of its own: a `fork` copies the page tables of a host
//! with a loaded WebAssembly engine, about half a millisecond per probe
//! (and a session probes every mount before it freezes). Sharing the
//! memory, the child must not touch it: it makes raw syscalls only (glibc's
//! wrappers would write the host thread's `errno`), with every signal
//! blocked, and its stack lives until it has been reaped.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::rawsys::{CloneArgs, CLONE_ARGS_SIZE_VER0};

/// Probe children still blocked on a frozen fs when their probe gave up,
/// with the stacks they run on (freed once they are reaped).
static STRAY: Mutex<Vec<Stray>> = Mutex::new(Vec::new());

struct Stray {
    pid: libc::pid_t,
    /// The file system it is blocked on (`st_dev`).
    dev: libc::dev_t,
    _stack: ChildStack,
}

const PROBE_NAME: &[u8] = b".quiesce-probe-nonexistent\0";

/// The probe child's stack: it makes three syscalls, a few hundred bytes.
const CHILD_STACK_WORDS: usize = 2048; // 32 KiB of u128: 16-byte aligned
type ChildStack = Box<[u128]>;

/// How long [`first_maybe_frozen`] waits on each directory.
const MAYBE_FROZEN_WAIT: Duration = Duration::from_millis(50);

/// The first of `dirs` whose file system is frozen or cannot be told not to
/// be (each asked at the nearest directory that exists, at most twice
/// [`MAYBE_FROZEN_WAIT`]): for quiesce's own writes that must not block on
/// a freeze somebody else may still hold — the held log, the metrics.
pub fn first_maybe_frozen<'a>(dirs: impl IntoIterator<Item = &'a Path>) -> Option<PathBuf> {
    dirs.into_iter().find_map(|d| {
        let existing = d.ancestors().find(|a| a.is_dir())?;
        let thawed = matches!(is_frozen(existing, MAYBE_FROZEN_WAIT), Ok(false));
        (!thawed).then(|| existing.to_path_buf())
    })
}

/// True if `path`'s file system is frozen, judged by whether a harmless
/// metadata operation is still blocked after `wait`. Never blocks longer
/// than twice `wait` (once only when an earlier probe of it was left blocked).
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
    // SAFETY: fstat into a zeroed plain struct on an fd we own.
    let dev = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(dir.as_raw_fd(), &mut st) < 0 {
            return Err(io::Error::last_os_error());
        }
        st.st_dev
    };
    // An earlier probe of this file system still blocked: asking again
    // would only add one more blocked child per call (a `status` poller
    // against a file system someone left frozen). Still blocked after
    // `wait`: frozen. Gone (a thaw just now): probe afresh, so at most
    // twice `wait` in all.
    let earlier = STRAY.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|s| s.dev == dev).map(|s| s.pid);
    if let Some(pid) = earlier {
        if !wait_exit(pid, wait)? {
            return Ok(true);
        }
        reap_strays();
    }
    let (pid, stack) = spawn_probe(dir.as_raw_fd())?;
    drop(dir);

    let stray = |stack| STRAY.lock().unwrap_or_else(|p| p.into_inner()).push(Stray { pid, dev, _stack: stack });
    let blocked = match wait_exit(pid, wait) {
        Ok(exited) => !exited,
        Err(e) => {
            stray(stack);
            return Err(e);
        }
    };
    if blocked {
        stray(stack);
    } else {
        // SAFETY: reaping our own exited child; its stack is freed after.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        drop(stack);
    }
    Ok(blocked)
}

/// Starts the probe child on `dirfd`; returns its pid and the stack it runs
/// on, which must outlive it.
fn spawn_probe(dirfd: RawFd) -> io::Result<(libc::pid_t, ChildStack)> {
    let mut stack: ChildStack = vec![0u128; CHILD_STACK_WORDS].into_boxed_slice();
    let mut args = CloneArgs {
        flags: libc::CLONE_VM as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.as_mut_ptr() as u64,
        stack_size: std::mem::size_of_val(&*stack) as u64,
        ..Default::default()
    };
    // SAFETY: probe_child only makes raw syscalls on its own stack and on
    // `dirfd`, passed by value; the stack is returned to outlive it.
    let pid = unsafe { crate::rawsys::clone_vm_child(&mut args, CLONE_ARGS_SIZE_VER0, probe_child, dirfd as usize as *mut libc::c_void) }?;
    Ok((pid, stack))
}

/// The probe child: hold nothing but the directory (a blocked probe must
/// not keep e.g. a guardian's command pipe open and hide the host's death),
/// then the harmless rename, then exit.
extern "C" fn probe_child(arg: *mut libc::c_void) -> ! {
    use crate::rawsys::syscall5 as sys;
    let dirfd = arg as usize as libc::c_long;
    let name = PROBE_NAME.as_ptr() as libc::c_long;
    // SAFETY: raw syscalls on plain integers and a static C string.
    unsafe {
        if dirfd > 0 {
            sys(libc::SYS_close_range, 0, dirfd - 1, 0, 0, 0);
        }
        sys(libc::SYS_close_range, dirfd + 1, libc::c_long::from(u32::MAX), 0, 0, 0);
        sys(libc::SYS_renameat2, dirfd, name, dirfd, name, 0);
        sys(libc::SYS_exit, 0, 0, 0, 0, 0);
        std::hint::unreachable_unchecked()
    }
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
    // A reaped child's stack is dropped with its entry.
    stray.retain(|s| unsafe { libc::waitpid(s.pid, std::ptr::null_mut(), libc::WNOHANG) } == 0);
}
