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
//! group. The child is watched through a pidfd, so no SIGCHLD handler or
//! pid reuse is involved.
//!
//! The child shares the host's memory until it execs (`CLONE_VM |
//! CLONE_VFORK`, what posix_spawn does): a fork-like clone copies the page
//! tables of a host with a loaded WebAssembly engine, 0.3–0.5 ms per spawn —
//! and the snapshot command is spawned inside the freeze window. The cloning
//! thread waits until the child has exec'd or exited; the child runs on a
//! stack of its own, with every signal blocked until just before exec (a
//! host handler must never run in it), making raw syscalls only on data
//! prepared before the clone (see `rawsys`); a failure before exec is left
//! in that shared data, as an errno.
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

use crate::rawsys::{CloneArgs, CLONE_ARGS_SIZE_VER0};

const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
const CLONE_VM: u64 = libc::CLONE_VM as u64;
const CLONE_VFORK: u64 = libc::CLONE_VFORK as u64;

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
    let mut ctx = ChildCtx {
        program: p.program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: p.cwd.as_ptr(),
        stdio: [null.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
        join: -1,
        // SAFETY: getpid has no preconditions.
        host_pid: unsafe { libc::getpid() },
        pdeathsig,
        process_group: p.process_group,
        failed: 0,
    };
    let mut stack: Box<[u128]> = vec![0u128; CHILD_STACK_WORDS].into_boxed_slice();
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: CLONE_PIDFD | CLONE_VM | CLONE_VFORK,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.as_mut_ptr() as u64,
        stack_size: std::mem::size_of_val(&*stack) as u64,
        ..Default::default()
    };
    let pid = match target {
        Target::Cgroup { dir, procs } => {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = dir.as_raw_fd() as u64;
            match clone_child(&mut args, std::mem::size_of::<CloneArgs>(), &mut ctx) {
                // Before Linux 5.7 the larger struct is E2BIG, the flag EINVAL.
                Err(e) if matches!(e.raw_os_error(), Some(libc::E2BIG) | Some(libc::EINVAL)) => {
                    args.flags &= !CLONE_INTO_CGROUP;
                    args.cgroup = 0;
                    ctx.join = procs.as_raw_fd();
                    clone_child(&mut args, CLONE_ARGS_SIZE_VER0, &mut ctx)?
                }
                other => other?,
            }
        }
        Target::Here => clone_child(&mut args, std::mem::size_of::<CloneArgs>(), &mut ctx)?,
    };
    // CLONE_VFORK: the child has exec'd or exited by now; its stack is free.
    drop(stack);
    // SAFETY: CLONE_PIDFD stored a new pidfd that we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop((out_w, err_w, null));
    // SAFETY: the child wrote it (if at all) before it exited.
    let failed = unsafe { std::ptr::read_volatile(&ctx.failed) };
    if failed != 0 {
        let _ = waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED);
        return Err(io::Error::from_raw_os_error(failed));
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

/// The child's stack until it execs: [`child_main`] makes a dozen raw
/// syscalls, a few hundred bytes. 64 KiB of u128: 16-byte aligned.
const CHILD_STACK_WORDS: usize = 4096;

/// Everything the child reads, prepared before the clone: plain values and
/// pointers into memory of the `spawn` frame, which CLONE_VFORK keeps
/// suspended (and so unchanged) until the child has exec'd or exited.
#[repr(C)]
struct ChildCtx {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    /// Dup'ed onto 0, 1, 2 (each > 2, see [`above_stdio`]).
    stdio: [RawFd; 3],
    /// `cgroup.procs` to join (kernels without CLONE_INTO_CGROUP), or -1.
    join: RawFd,
    host_pid: libc::pid_t,
    pdeathsig: bool,
    process_group: bool,
    /// Written by the child when a step before exec failed: its errno.
    failed: i32,
}

/// Clones the child (sharing the host's memory until it execs, with the
/// calling thread suspended meanwhile) with every signal blocked, so that
/// no host handler runs on the child's stack before it has reset them.
fn clone_child(args: &mut CloneArgs, size: usize, ctx: &mut ChildCtx) -> io::Result<libc::pid_t> {
    // SAFETY: the child runs `child_main` on `args.stack` and reads only `ctx`.
    unsafe { crate::rawsys::clone_vm_child(args, size, child_main, (ctx as *mut ChildCtx).cast()) }
}

/// The child, from clone to exec: raw syscalls only (it shares the host's
/// memory and its cloning thread's TLS), on data prepared before the clone.
extern "C" fn child_main(arg: *mut libc::c_void) -> ! {
    use crate::rawsys::syscall5 as sys;
    use libc::c_long;
    // SAFETY: `arg` is the ChildCtx that `clone_child` passed; its pointers
    // stay valid while the parent is suspended. Every call is a raw syscall.
    unsafe {
        let c = &mut *arg.cast::<ChildCtx>();
        let fail = |c: &mut ChildCtx, r: c_long| -> ! {
            std::ptr::write_volatile(&mut c.failed, if r < 0 { (-r) as i32 } else { libc::EIO });
            sys(libc::SYS_exit, 127, 0, 0, 0, 0);
            std::hint::unreachable_unchecked()
        };
        if c.join >= 0 {
            let r = sys(libc::SYS_write, c.join as c_long, b"0".as_ptr() as c_long, 1, 0, 0);
            if r != 1 {
                fail(c, r);
            }
        }
        // The host's handlers must not run here (they would act on the
        // host's memory): caught signals to default. Ignored ones stay
        // ignored across exec, as usual — but Rust ignores SIGPIPE.
        // (No CLONE_SIGHAND: this changes the child's table only.)
        let default = [0u64; 4];
        for sig in 1..65 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old = [0u64; 4];
            if sys(libc::SYS_rt_sigaction, sig as c_long, 0, old.as_mut_ptr() as c_long, 8, 0) != 0 {
                continue;
            }
            let handler = old[0] as libc::sighandler_t;
            if sig == libc::SIGPIPE || (handler != libc::SIG_DFL && handler != libc::SIG_IGN) {
                sys(libc::SYS_rt_sigaction, sig as c_long, default.as_ptr() as c_long, 0, 8, 0);
            }
        }
        // The host may have died before the prctl: then we are already
        // someone else's child, and must not run.
        if c.pdeathsig {
            let r = sys(libc::SYS_prctl, libc::PR_SET_PDEATHSIG as c_long, libc::SIGKILL as c_long, 0, 0, 0);
            if r != 0 {
                fail(c, r);
            }
            if sys(libc::SYS_getppid, 0, 0, 0, 0, 0) != c.host_pid as c_long {
                fail(c, -(libc::ESRCH as c_long));
            }
        }
        if c.process_group {
            let r = sys(libc::SYS_setpgid, 0, 0, 0, 0, 0);
            if r != 0 {
                fail(c, r);
            }
        }
        for (to, from) in c.stdio.into_iter().enumerate() {
            // dup3, not dup2 (arm64 has no dup2); never equal fds (each > 2).
            let r = sys(libc::SYS_dup3, from as c_long, to as c_long, 0, 0, 0);
            if r < 0 {
                fail(c, r);
            }
        }
        let r = sys(libc::SYS_chdir, c.cwd as c_long, 0, 0, 0, 0);
        if r != 0 {
            fail(c, r);
        }
        // Last: unblocked, a signal kills (or stops) the child as the program would.
        let empty = 0u64;
        sys(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK as c_long, &empty as *const u64 as c_long, 0, 8, 0);
        let r = sys(libc::SYS_execve, c.program as c_long, c.argv as c_long, c.envp as c_long, 0, 0);
        fail(c, r)
    }
}

/// A directory fd for CLONE_INTO_CGROUP.
pub(super) fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    std::fs::File::open(dir).map(OwnedFd::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_io().build().expect("runtime")
    }

    fn spec(program: &str, args: &[&str]) -> Spec {
        let mut s = Spec::new(program);
        for a in args {
            s.arg(a);
        }
        s
    }

    /// Runs `spec` (not contained: the spawner on its own) and returns its stdout.
    fn stdout_of(spec: &Spec) -> String {
        runtime().block_on(async {
            let mut child = spawn(spec, Target::Here, false).expect("spawn");
            let mut out = String::new();
            child.stdout.take().expect("stdout").read_to_string(&mut out).await.expect("read");
            assert!(child.wait().await.expect("wait").success(), "{spec:?}: {out}");
            out
        })
    }

    /// A `Sig*:` mask of /proc/PID/status.
    fn mask(status: &str, field: &str) -> u64 {
        let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} in {status}"));
        u64::from_str_radix(line[field.len()..].trim(), 16).expect("hex mask")
    }

    fn bit(sig: libc::c_int) -> u64 {
        1 << (sig - 1)
    }

    extern "C" fn caught(_: libc::c_int) {}

    fn set_handler(sig: libc::c_int, handler: libc::sighandler_t) {
        // SAFETY: plain sigaction on a signal no other test uses.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler;
            assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
        }
    }

    fn handler_of(sig: libc::c_int) -> libc::sighandler_t {
        // SAFETY: querying only.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            libc::sigaction(sig, std::ptr::null(), &mut sa);
            sa.sa_sigaction
        }
    }

    fn thread_mask() -> libc::sigset_t {
        // SAFETY: querying this thread's mask only.
        unsafe {
            let mut m: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_SETMASK, std::ptr::null(), &mut m);
            m
        }
    }

    #[test]
    fn a_child_starts_with_nothing_blocked_no_host_handler_and_sigpipe_at_default_and_the_host_keeps_its_own() {
        // The host: a caught signal, an ignored one, SIGPIPE ignored (Rust),
        // and a signal blocked on the spawning thread.
        set_handler(libc::SIGUSR1, caught as *const () as libc::sighandler_t);
        set_handler(libc::SIGUSR2, libc::SIG_IGN);
        assert_eq!(handler_of(libc::SIGPIPE), libc::SIG_IGN, "Rust ignores SIGPIPE");
        // SAFETY: blocking one signal on this test's thread.
        let before = unsafe {
            let mut m: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut m);
            libc::sigaddset(&mut m, libc::SIGWINCH);
            libc::pthread_sigmask(libc::SIG_BLOCK, &m, std::ptr::null_mut());
            thread_mask()
        };

        let status = stdout_of(&spec("/bin/cat", &["/proc/self/status"]));

        assert_eq!(mask(&status, "SigBlk:"), 0, "the spawning thread's mask (and the clone's all-blocked one) is not inherited");
        assert_eq!(mask(&status, "SigCgt:"), 0, "no host handler survives into the child");
        let ignored = mask(&status, "SigIgn:");
        assert_eq!(ignored & bit(libc::SIGPIPE), 0, "SIGPIPE back to default");
        assert_ne!(ignored & bit(libc::SIGUSR2), 0, "an ignored signal stays ignored, as across any exec");
        // The child shared the host's memory, never its signal table or this thread's mask.
        assert_eq!(handler_of(libc::SIGUSR1), caught as *const () as libc::sighandler_t);
        assert_eq!(handler_of(libc::SIGPIPE), libc::SIG_IGN);
        let after = thread_mask();
        // SAFETY: sigismember on initialised sets.
        unsafe {
            for sig in 1..65 {
                assert_eq!(libc::sigismember(&before, sig), libc::sigismember(&after, sig), "signal {sig} in the thread's mask");
            }
        }
    }

    #[test]
    fn a_child_gets_exactly_its_environment_its_directory_and_a_process_group_of_its_own() {
        let mut s = spec("/usr/bin/env", &[]);
        s.env("QUIESCE_SPAWN_TEST", "1").env("PATH", "/usr/bin:/bin");
        let env = stdout_of(&s);
        let mut vars: Vec<&str> = env.lines().collect();
        vars.sort();
        assert_eq!(vars, ["PATH=/usr/bin:/bin", "QUIESCE_SPAWN_TEST=1"]);

        let mut s = spec("/bin/pwd", &["-P"]);
        s.cwd = PathBuf::from("/usr");
        assert_eq!(stdout_of(&s).trim(), "/usr");

        // /proc/self/stat: "pid (comm) state ppid pgrp ...".
        let stat = stdout_of(&spec("/bin/cat", &["/proc/self/stat"]));
        let fields: Vec<&str> = stat.rsplit_once(')').expect("comm").1.split_whitespace().collect();
        let pid: &str = stat.split_whitespace().next().expect("pid");
        assert_eq!(fields[1], std::process::id().to_string(), "the host's child");
        assert_eq!(fields[2], pid, "leads a process group of its own");
    }

    #[test]
    fn what_cannot_be_started_is_an_error_with_its_errno() {
        runtime().block_on(async {
            let missing = spawn(&spec("/nonexistent/quiesce-hook", &[]), Target::Here, false).expect_err("no such program");
            assert_eq!(missing.raw_os_error(), Some(libc::ENOENT), "{missing}");
            let mut s = spec("/bin/true", &[]);
            s.cwd = PathBuf::from("/nonexistent-dir");
            let no_dir = spawn(&s, Target::Here, false).expect_err("no such directory");
            assert_eq!(no_dir.raw_os_error(), Some(libc::ENOENT), "{no_dir}");
            let file = std::env::temp_dir().join(format!("quiesce-spawn-test-{}", std::process::id()));
            std::fs::write(&file, "#!/bin/sh\n").expect("write");
            let not_exec = spawn(&Spec::new(&file), Target::Here, false).expect_err("not executable");
            let _ = std::fs::remove_file(&file);
            assert_eq!(not_exec.raw_os_error(), Some(libc::EACCES), "{not_exec}");
            // And the spawner still works after failures.
            let mut ok = spawn(&spec("/bin/true", &[]), Target::Here, true).expect("spawn");
            assert!(ok.wait().await.expect("wait").success());
        });
    }
}
