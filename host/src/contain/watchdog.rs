//! The watchdog: kills every contained process once the host is gone.
//!
//! A containment kills its members when it is dropped, times out or is
//! closed, which is code the host runs. A host that is SIGKILLed (alone or
//! with its process group, or by the OOM killer) runs no more code, and the
//! hook script or snapshot command it was waiting for would run on forever,
//! holding locks. So the first cgroup containment forks this small process
//! (once per host process, for its whole life: a library embedder running
//! many sessions keeps one). It holds the read end of a pipe whose write end
//! only the host holds (close-on-exec, so no exec'd child inherits it; the
//! freeze guardian closes every fd it does not need). `read` returning EOF
//! means the host is gone, however it went, including a normal exit: then it
//! writes `1` to `cgroup.kill` of the host's containment parent
//! (`quiesce.<hostpid>`), which kills every process in every containment
//! below it, removes the emptied cgroups and exits. A lock holder a pre
//! script left must not outlive its session, so killing at a normal exit is
//! what we want too (the host has already killed and removed them by then).
//!
//! Discipline as in the freeze guardian: the host is multi-threaded, so the
//! child makes only async-signal-safe calls on data prepared before the fork.
//! It forks twice (the middle process exits at once and is reaped here), so
//! the watchdog is nobody's zombie-to-be. It calls `setsid`, so a
//! process-group SIGKILL of the host misses it, moves to `/` (its cwd must
//! not pin a mount a test or an admin unmounts), and closes every fd but its
//! own: it must not hold the session lock or a guardian pipe of the host.
//!
//! Signals: every catchable signal is blocked and read through a signalfd.
//! One whose default would end the process (SIGTERM from `systemctl stop`,
//! SIGINT, SIGHUP, ...) is treated like the host's death: it kills the
//! containments and exits, rather than dying silently and leaving them to
//! outlive a host that dies next. (The host's own containments then lose
//! this protection for the rest of its life; they still die on drop.)
//!
//! Without `cgroup.kill` (Linux < 5.14) a watchdog could only kill by
//! reading `cgroup.procs` of each child cgroup, which is more than a forked
//! child of a threaded process may safely do; there the contained child gets
//! `PR_SET_PDEATHSIG` instead (see [`super::spawn`]).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::freeze::detach;

/// How long the watchdog keeps trying to remove the killed cgroups (a
/// process blocked on a frozen file system dies only after the thaw).
const CLEANUP_MS: i32 = 60_000;
const CLEANUP_POLL_MS: i32 = 10;

/// Everything the watchdog touches, prepared before the fork.
struct Ctx {
    /// Read end of the host's pipe.
    host: RawFd,
    /// `quiesce.<pid>/cgroup.kill`.
    kill: RawFd,
    /// `quiesce.<pid>/`, to find and remove the containments' cgroups.
    base: RawFd,
    /// The host's cgroup, to remove `quiesce.<pid>` from.
    parent: RawFd,
    /// `quiesce.<pid>`.
    name: CString,
    devnull: RawFd,
    /// Sorted fds to keep (besides 0..=2).
    keep: [RawFd; 5],
}

fn open(path: &Path, flags: i32) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: valid C string; the fd is owned right away.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::new(io::Error::last_os_error().kind(), format!("{}: {}", path.display(), io::Error::last_os_error())));
    }
    // SAFETY: just opened, owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Starts the watchdog for the containment parent `base` (a directory in
/// `parent`, the host's cgroup). Returns the pipe's write end: the host
/// keeps it open for as long as it lives, and closing it kills everything.
pub(super) fn start(parent: &Path, base: &Path) -> io::Result<OwnedFd> {
    let name = base.file_name().ok_or_else(|| io::Error::other(format!("{} has no name", base.display())))?;
    let name = CString::new(name.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in cgroup name"))?;
    let kill = open(&base.join("cgroup.kill"), libc::O_WRONLY)?;
    let base_fd = open(base, libc::O_RDONLY | libc::O_DIRECTORY)?;
    let parent_fd = open(parent, libc::O_RDONLY | libc::O_DIRECTORY)?;
    let devnull = open(Path::new("/dev/null"), libc::O_RDWR)?;
    let mut fds = [0; 2];
    // SAFETY: valid out array; both fds are owned right away.
    let (read, write) = unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    };
    let mut keep = [read.as_raw_fd(), kill.as_raw_fd(), base_fd.as_raw_fd(), parent_fd.as_raw_fd(), devnull.as_raw_fd()];
    keep.sort_unstable();
    let ctx = Ctx {
        host: read.as_raw_fd(),
        kill: kill.as_raw_fd(),
        base: base_fd.as_raw_fd(),
        parent: parent_fd.as_raw_fd(),
        name,
        devnull: devnull.as_raw_fd(),
        keep,
    };
    // SAFETY: fork; the child runs only async-signal-safe code and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: in the forked child: async-signal-safe calls only.
        unsafe {
            match libc::fork() {
                0 => watchdog_main(&ctx),
                r => libc::_exit(i32::from(r < 0)),
            }
        }
    }
    // The middle process exits at once: reap it.
    let mut status = 0;
    // SAFETY: our own child.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {}
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return Err(io::Error::other("the watchdog's middle process failed"));
    }
    Ok(write)
}

/// The watchdog's whole life. Only async-signal-safe calls from here on.
unsafe fn watchdog_main(ctx: &Ctx) -> ! {
    // What would end us comes through a signalfd (see the module doc).
    let watched = detach(c"quiesce-watch", ctx.devnull, &ctx.keep);
    libc::chdir(c"/".as_ptr());
    let sfd = libc::signalfd(-1, &watched, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
    // The OOM killer must not take the one process that cleans up after a host it took.
    let oom = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
    if oom >= 0 {
        libc::write(oom, b"-1000".as_ptr().cast(), 5);
        libc::close(oom);
    }
    let harmless = [libc::SIGCHLD, libc::SIGWINCH, libc::SIGURG, libc::SIGCONT, libc::SIGPIPE, libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU];
    loop {
        let mut pfds =
            [libc::pollfd { fd: ctx.host, events: libc::POLLIN, revents: 0 }, libc::pollfd { fd: sfd, events: libc::POLLIN, revents: 0 }];
        let n = libc::poll(pfds.as_mut_ptr(), if sfd >= 0 { 2 } else { 1 }, -1);
        if n < 0 && *libc::__errno_location() != libc::EINTR {
            kill_and_clean(ctx);
        }
        if n > 0 && pfds[1].revents & libc::POLLIN != 0 {
            let mut info: libc::signalfd_siginfo = std::mem::zeroed();
            let r = libc::read(sfd, (&mut info as *mut libc::signalfd_siginfo).cast(), size_of::<libc::signalfd_siginfo>());
            if r > 0 && !harmless.contains(&(info.ssi_signo as i32)) {
                kill_and_clean(ctx);
            }
        }
        if n > 0 && pfds[0].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            let mut b = [0u8; 16];
            let r = libc::read(ctx.host, b.as_mut_ptr().cast(), b.len());
            // The host never writes: anything but EOF is noise.
            if r == 0 || (r < 0 && *libc::__errno_location() != libc::EINTR && *libc::__errno_location() != libc::EAGAIN) {
                kill_and_clean(ctx);
            }
        }
    }
}

/// Kills every contained process, removes the cgroups once they are empty
/// (or gives up after [`CLEANUP_MS`]; the next host's sweep finishes), exits.
unsafe fn kill_and_clean(ctx: &Ctx) -> ! {
    libc::write(ctx.kill, b"1".as_ptr().cast(), 1);
    let mut waited = 0;
    while waited < CLEANUP_MS {
        remove_children(ctx.base);
        if libc::unlinkat(ctx.parent, ctx.name.as_ptr(), libc::AT_REMOVEDIR) == 0 || *libc::__errno_location() == libc::ENOENT {
            libc::_exit(0);
        }
        libc::poll(std::ptr::null_mut(), 0, CLEANUP_POLL_MS);
        waited += CLEANUP_POLL_MS;
    }
    libc::_exit(1)
}

/// Removes every child directory of `dir` that is empty (a populated cgroup
/// refuses with EBUSY; tried again next round). getdents64 into a stack buffer.
unsafe fn remove_children(dir: RawFd) {
    libc::lseek(dir, 0, libc::SEEK_SET);
    let mut buf = [0u8; 4096];
    loop {
        let n = libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len());
        if n <= 0 {
            return;
        }
        let mut off = 0usize;
        // struct linux_dirent64 { u64 ino; i64 off; u16 reclen; u8 type; char name[]; }
        while off + 19 < n as usize {
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if reclen == 0 {
                return;
            }
            let dtype = buf[off + 18];
            let name = buf.as_ptr().add(off + 19).cast::<libc::c_char>();
            let dot = *name == b'.' as libc::c_char && (*name.add(1) == 0 || (*name.add(1) == b'.' as libc::c_char && *name.add(2) == 0));
            if dtype == libc::DT_DIR && !dot {
                libc::unlinkat(dir, name, libc::AT_REMOVEDIR);
            }
            off += reclen;
        }
    }
}
