//! Starting a process directly inside a cgroup: `clone3(CLONE_INTO_CGROUP)`.
//!
//! Moving a process into a cgroup by writing `cgroup.procs` takes the
//! kernel's global `cgroup_threadgroup_rwsem` for writing, which waits for
//! an RCU grace period: measured here, 13.7 ms per spawn (the fork itself
//! costs 0.2 ms) — paid once per hook phase and, worse, by the snapshot
//! command inside the freeze window. A child cloned *into* the cgroup pays
//! nothing: it is born there, before it can run a single instruction of
//! its own, so nothing it does can escape (race-free by construction).
//!
//! std cannot spawn with clone3, so this is a small, complete spawner for
//! what quiesce runs: argv, an explicit environment (nothing inherited),
//! stdin `/dev/null`, stdout/stderr piped, cwd, an optional new process
//! group. The child runs only async-signal-safe calls between clone and
//! exec (the host is multi-threaded); an exec failure comes back through a
//! close-on-exec pipe, as std does it. The child is watched through a
//! pidfd, so no SIGCHLD handler or pid reuse is involved. The clone is
//! fork-like (the host's page tables are copied): about 0.5 ms per spawn
//! more than posix_spawn's vfork here; sharing the address space instead
//! would need a separate stack and assembly, for half a millisecond.
//!
//! Kernels without `CLONE_INTO_CGROUP` (< 5.7) get a plain fork-like clone3
//! whose child joins the cgroup itself before exec (the slow but still
//! race-free way); kernels without clone3 (< 5.3) are not supported.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` as of Linux 5.7 (`CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// What to run. The environment is exactly `env`: nothing is inherited.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Executed by path (no PATH search).
    pub program: PathBuf,
    /// argv[0]; the program's path when None.
    pub arg0: Option<OsString>,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: PathBuf,
    /// Put the child into a new process group of its own.
    pub process_group: bool,
}

impl Spec {
    pub fn new(program: impl Into<PathBuf>) -> Spec {
        Spec { program: program.into(), arg0: None, args: Vec::new(), env: Vec::new(), cwd: PathBuf::from("/"), process_group: true }
    }

    pub fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Spec {
        self.args.push(a.as_ref().to_owned());
        self
    }

    /// Sets (or replaces) one variable.
    pub fn env(&mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> &mut Spec {
        let k = k.as_ref().to_owned();
        self.env.retain(|(n, _)| *n != k);
        self.env.push((k, v.as_ref().to_owned()));
        self
    }
}

/// Where the child goes.
pub(super) enum Target<'a> {
    /// Cloned into this cgroup directory; `procs` is its `cgroup.procs`
    /// (used only on kernels without CLONE_INTO_CGROUP).
    Cgroup { dir: &'a OwnedFd, procs: &'a OwnedFd },
    /// Wherever the host is.
    Here,
}

/// A started process: its pipes, and its exit through a pidfd.
pub struct ContainedChild {
    pid: u32,
    pidfd: AsyncFd<OwnedFd>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
    status: Option<ExitStatus>,
}

impl std::fmt::Debug for ContainedChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContainedChild({})", self.pid)
    }
}

impl ContainedChild {
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Waits for the exit (and reaps the child). Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(s) = self.status {
                return Ok(s);
            }
            let mut guard = self.pidfd.readable().await?;
            match reap(guard.get_inner(), &mut self.status)? {
                Some(s) => return Ok(s),
                None => guard.clear_ready(),
            }
        }
    }

    fn try_reap(&mut self) -> io::Result<Option<ExitStatus>> {
        reap(self.pidfd.get_ref(), &mut self.status)
    }
}

/// Reaps the child if it has exited (once; the status is kept).
fn reap(pidfd: &OwnedFd, status: &mut Option<ExitStatus>) -> io::Result<Option<ExitStatus>> {
    if status.is_some() {
        return Ok(*status);
    }
    let s = match waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG) {
        Ok(WaitStatus::Exited(_, code)) => ExitStatus::from_raw((code & 0xff) << 8),
        Ok(WaitStatus::Signaled(_, sig, core)) => ExitStatus::from_raw(sig as i32 | if core { 0x80 } else { 0 }),
        Ok(_) => return Ok(None),
        Err(e) => return Err(io::Error::from(e)),
    };
    *status = Some(s);
    Ok(Some(s))
}

impl Drop for ContainedChild {
    fn drop(&mut self) {
        // Reap it, or it stays a zombie of the host. If it still runs, its
        // containment kills it; a thread waits for that.
        if let Ok(None) = self.try_reap() {
            if let Ok(fd) = self.pidfd.get_ref().try_clone() {
                let _ = std::thread::Builder::new().name("quiesce-reap".into()).spawn(move || {
                    let _ = waitid(Id::PIDFd(fd.as_fd()), WaitPidFlag::WEXITED);
                });
            }
        }
    }
}

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{s:?} contains a NUL byte")))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds that nothing else owns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created, owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The fd itself, or a duplicate ≥ 3 if the host was started with stdio
/// closed: the child's dup2 onto 0–2 must neither clobber a source fd nor
/// leave close-on-exec set on one (dup2 onto itself does nothing).
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let raw = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3)).map_err(io::Error::from)?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn clone3(args: &mut CloneArgs) -> io::Result<libc::pid_t> {
    // SAFETY: a fork-like clone (no CLONE_VM, no new stack): the child gets
    // a copy of the address space and returns here with 0.
    let r = unsafe { libc::syscall(libc::SYS_clone3, args as *mut CloneArgs, std::mem::size_of::<CloneArgs>()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as libc::pid_t)
    }
}

/// Everything the child needs, prepared before the clone (after it, only
/// async-signal-safe calls are allowed).
struct Prepared {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
    process_group: bool,
}

impl Prepared {
    fn new(spec: &Spec) -> io::Result<Prepared> {
        let program = cstr(spec.program.as_os_str())?;
        let mut argv = vec![cstr(spec.arg0.as_deref().unwrap_or(spec.program.as_os_str()))?];
        for a in &spec.args {
            argv.push(cstr(a)?);
        }
        let mut envp = Vec::new();
        for (k, v) in &spec.env {
            let mut kv = k.clone();
            kv.push("=");
            kv.push(v);
            envp.push(cstr(&kv)?);
        }
        Ok(Prepared { program, argv, envp, cwd: cstr(spec.cwd.as_os_str())?, process_group: spec.process_group })
    }
}

/// Starts `spec` in `target`. With `pdeathsig` the child is SIGKILLed when
/// the host dies (where no watchdog covers it, see the module doc of
/// `contain`). PDEATHSIG fires when the *thread* that cloned the child
/// exits, not the process: acceptable because children are started from a
/// session's async code, whose runtime thread (the `block_on` thread, or a
/// worker) outlives every containment of that session (a containment is
/// dropped, killing its members, before the session returns).
pub(super) fn spawn(spec: &Spec, target: Target<'_>, pdeathsig: bool) -> io::Result<ContainedChild> {
    let p = Prepared::new(spec)?;
    let argv: Vec<*const libc::c_char> = p.argv.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let envp: Vec<*const libc::c_char> = p.envp.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let null = above_stdio(std::fs::File::open("/dev/null").map(OwnedFd::from)?)?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (out_w, err_w) = (above_stdio(out_w)?, above_stdio(err_w)?);
    let (report_r, report_w) = pipe()?;
    let mut empty: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: initialising a local sigset.
    unsafe { libc::sigemptyset(&mut empty) };
    let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    dfl.sa_sigaction = libc::SIG_DFL;

    let mut pidfd: RawFd = -1;
    let mut args =
        CloneArgs { flags: CLONE_PIDFD, pidfd: &mut pidfd as *mut RawFd as u64, exit_signal: libc::SIGCHLD as u64, ..Default::default() };
    let mut join: RawFd = -1;
    // SAFETY: getpid has no preconditions.
    let host_pid = unsafe { libc::getpid() };
    let pid = match target {
        Target::Cgroup { dir, procs } => {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = dir.as_raw_fd() as u64;
            match clone3(&mut args) {
                // Before Linux 5.7 the larger struct is E2BIG, the flag EINVAL.
                Err(e) if matches!(e.raw_os_error(), Some(libc::E2BIG) | Some(libc::EINVAL)) => {
                    args.flags &= !CLONE_INTO_CGROUP;
                    args.cgroup = 0;
                    join = procs.as_raw_fd();
                    clone3_v0(&mut args)?
                }
                other => other?,
            }
        }
        Target::Here => clone3(&mut args)?,
    };
    if pid == 0 {
        // The child. SAFETY: only async-signal-safe calls on data prepared
        // before the clone; never returns.
        unsafe {
            let report = report_w.as_raw_fd();
            if join >= 0 && libc::write(join, b"0".as_ptr().cast(), 1) != 1 {
                child_fail(report);
            }
            // Ignored signals survive exec; Rust ignores SIGPIPE. Undo that,
            // and any blocked mask of the cloning thread.
            libc::sigaction(libc::SIGPIPE, &dfl, std::ptr::null_mut());
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            // The host may have died before the prctl: then we are already
            // someone else's child, and must not run.
            if pdeathsig
                && (libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 || libc::getppid() != host_pid)
            {
                child_fail(report);
            }
            if p.process_group && libc::setpgid(0, 0) != 0 {
                child_fail(report);
            }
            if libc::dup2(null.as_raw_fd(), 0) < 0 || libc::dup2(out_w.as_raw_fd(), 1) < 0 || libc::dup2(err_w.as_raw_fd(), 2) < 0 {
                child_fail(report);
            }
            if libc::chdir(p.cwd.as_ptr()) != 0 {
                child_fail(report);
            }
            libc::execve(p.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
            child_fail(report)
        }
    }
    // SAFETY: CLONE_PIDFD stored a new pidfd that we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop((out_w, err_w, report_w, null));
    // Exec closes the report pipe (close-on-exec); a failure writes errno.
    let mut buf = [0u8; 4];
    let n = loop {
        // SAFETY: reading into a local buffer.
        let n = unsafe { libc::read(report_r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break n;
        }
    };
    if n == 4 {
        let _ = waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED);
        return Err(io::Error::from_raw_os_error(i32::from_ne_bytes(buf)));
    }
    let receiver = |fd: OwnedFd| -> io::Result<pipe::Receiver> {
        nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
        pipe::Receiver::from_owned_fd_unchecked(fd)
    };
    Ok(ContainedChild {
        pid: pid as u32,
        // SAFETY: an OwnedFd always returns the same, open fd.
        pidfd: unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }.map_err(io::Error::from)?,
        stdout: Some(receiver(out_r)?),
        stderr: Some(receiver(err_r)?),
        status: None,
    })
}

/// In the child: report errno through the report pipe and exit.
/// SAFETY: async-signal-safe (write, _exit).
unsafe fn child_fail(fd: RawFd) -> ! {
    let b = (*libc::__errno_location()).to_ne_bytes();
    libc::write(fd, b.as_ptr().cast(), b.len());
    libc::_exit(127)
}

/// clone3 with the Linux 5.3 struct size (no cgroup field).
fn clone3_v0(args: &mut CloneArgs) -> io::Result<libc::pid_t> {
    const SIZE_VER0: usize = 64;
    // SAFETY: as in `clone3`; the kernel reads only the first 64 bytes.
    let r = unsafe { libc::syscall(libc::SYS_clone3, args as *mut CloneArgs, SIZE_VER0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as libc::pid_t)
    }
}

/// A directory fd for CLONE_INTO_CGROUP.
pub(super) fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    std::fs::File::open(dir).map(OwnedFd::from)
}
