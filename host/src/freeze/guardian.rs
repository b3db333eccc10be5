//! The guardian: a forked process that holds the freeze and guarantees the
//! thaw.
//!
//! Every peer that freezes from the agent's own process leaves machines
//! frozen when that process dies (Azure extensions #951/#1680, Velero #2113,
//! open-vm-tools #27). Here the FIFREEZE/FITHAW calls are made by a small
//! child in its own session, so a SIGKILL of the host or of its process
//! group does not reach it. It thaws everything it froze when the host asks,
//! when `max_freeze` has passed since the first freeze, when the host's end
//! of the command pipe closes (the host died, however), or when it gets any
//! signal that would otherwise end it (SIGTERM, SIGINT, SIGHUP, SIGUSR1, ...).
//! It never writes to any file system, only to its event pipe.
//!
//! The host is multi-threaded (tokio), so after `fork` the child may only
//! make async-signal-safe calls: no allocation, no locks, no std I/O. All
//! its data (fd tables with room for [`Spare::capacity`] targets, flags) is
//! allocated before the fork, and it talks in fixed-size records smaller
//! than PIPE_BUF, so each write is atomic.
//!
//! A guardian is forked as a [`Spare`], holding nothing, and then armed
//! with the session's mount fds (passed over its command socket,
//! `SCM_RIGHTS`). The one-shot CLI does both at once; the service keeps a
//! spare ready between sessions, so the fork (page tables of a host with a
//! loaded engine, `mlockall`) is not paid inside a session. Either way a
//! guardian serves one session and exits after its thaw.
//!
//! A FITHAW that fails (anything but EINVAL, which means "not frozen") is
//! retried with a short backoff until the freeze deadline (at least
//! [`THAW_RETRY_MIN_NS`]), then reported per mount as still frozen. The kernel
//! does not normally fail FITHAW, but when it does, a guardian that exits
//! "after the thaw" would leave a frozen machine with nobody in charge. So the
//! guardian never exits while a file system it froze is still frozen: past
//! the deadline it retries every [`THAW_SLOW_RETRY_MS`], and since it holds
//! the session lock's fd, `quiesce status` keeps showing the session and the
//! mount (and a new session refuses to start) until the thaw succeeds, or
//! someone else thaws it (its next FITHAW then says EINVAL).

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::error::{errno_name, freeze_errno_explanation, FreezeError};
use super::plan::{FreezePlan, Target};
use super::probe::{detach, wait_exit};
use super::thaw::{thaw_mounts, FIFREEZE, FITHAW};
use crate::duration;

/// Nanoseconds on CLOCK_MONOTONIC, the clock of every guardian timestamp,
/// so a session can place its own measurements in the freeze window.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer; async-signal-safe (used in the child too).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The guardian's process name (`/proc/PID/comm`): how `quiesce doctor`
/// finds guardians that outlived their host.
pub const GUARDIAN_NAME: &std::ffi::CStr = c"quiesce-guard";

// ---- wire format -------------------------------------------------------

const CMD_FREEZE: u32 = 1;
const CMD_THAW: u32 = 2;
/// Arming: the message's fds are freeze targets, in plan order.
const CMD_ARM_TARGETS: u32 = 3;
/// Arming: the message's fds are kept open until the guardian exits (the
/// session lock, so `status` and a new session see the session while the
/// guardian lives), never frozen.
const CMD_ARM_KEEP: u32 = 4;
/// Arming done; `max_ns` is the session's max-freeze. Answered by EV_ARMED.
const CMD_ARM_DONE: u32 = 5;

/// Fds per arming message (the kernel's SCM_MAX_FD is 253).
const FDS_PER_MSG: usize = 250;
/// Kept fds a guardian holds at most (the session lock and a few more).
const KEEP_CAP: usize = 8;

const EV_READY: u32 = 1;
const EV_FROZE: u32 = 2;
const EV_FREEZE_DONE: u32 = 3;
/// EV_FREEZE_DONE's `reason` when the freeze's RCU grace periods were expedited (see `rcu`).
const FROZE_EXPEDITED: u32 = 1;
const EV_THAWED: u32 = 4;
const EV_THAW_DONE: u32 = 5;
/// FITHAW kept failing until the retry window closed: still frozen.
const EV_THAW_FAILED: u32 = 6;
/// Armed; errno 0, or why the arming failed (E2BIG: more fds than room).
const EV_ARMED: u32 = 7;

/// Fast retries of a failing FITHAW go on at least this long, even when the
/// freeze deadline has already passed (the deadline thaw itself).
const THAW_RETRY_MIN_NS: u64 = 1_000_000_000;
/// Backoff between fast retries: 1 ms, doubling, capped here.
const THAW_BACKOFF_MAX_MS: i32 = 100;
/// After the fast retries: how often a still-frozen mount is tried again.
const THAW_SLOW_RETRY_MS: i32 = 1_000;

/// Inside the freeze window the host and the guardian busy-wait (yielding
/// the CPU between looks) this long for each other's next word before they
/// sleep: waking a sleeping process costs tens of microseconds on a VM,
/// and every one inside the window is write stall for every application.
/// The host waits so for the freeze to be done, the guardian for the thaw
/// command right after it froze (a fast provider: a reflink, a btrfs
/// snapshot, an agent's instant answer).
const SPIN_NS: u64 = 200_000;

const WHY_ASKED: u32 = 1;
const WHY_DEADLINE: u32 = 2;
const WHY_HOST_GONE: u32 = 3;
const WHY_SIGNAL: u32 = 4;
const WHY_INTERNAL: u32 = 5;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Cmd {
    op: u32,
    _pad: u32,
    /// CMD_ARM_DONE: the max-freeze in ns.
    max_ns: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct Event {
    kind: u32,
    /// Index into the targets (per-mount events), or of the failed mount.
    index: u32,
    /// errno of the operation (for EV_THAWED: of the last failed FITHAW
    /// before it succeeded, 0 if none); the signal number for a signal thaw.
    errno: i32,
    /// WHY_* for EV_THAW_DONE; failed FITHAW attempts for EV_THAWED/EV_THAW_FAILED.
    reason: u32,
    start_ns: u64,
    end_ns: u64,
}

const _: () = assert!(size_of::<Event>() <= libc::PIPE_BUF && size_of::<Cmd>() <= libc::PIPE_BUF);

// ---- public results ----------------------------------------------------

/// How long one mount took to freeze.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MountTiming {
    pub path: PathBuf,
    pub fs_type: String,
    pub freeze_ms: f64,
    /// CLOCK_MONOTONIC ns around the FIFREEZE call.
    pub start_ns: u64,
    pub end_ns: u64,
}

/// A successful freeze of every target.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Frozen {
    /// In freeze order.
    pub mounts: Vec<MountTiming>,
    /// When the first FIFREEZE started: the freeze window opens here.
    pub first_freeze_ns: u64,
    /// When the last FIFREEZE returned: everything is frozen from here.
    pub all_frozen_ns: u64,
    /// When the guardian will thaw by itself (first_freeze_ns + max_freeze).
    pub deadline_ns: u64,
    /// RCU grace periods were expedited for the freeze (see the report's
    /// `freeze.rcu_expedited`).
    pub rcu_expedited: bool,
}

/// How long one mount took to thaw.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ThawTiming {
    pub path: PathBuf,
    pub fs_type: String,
    pub thaw_ms: f64,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Set when the mount is still frozen: the last FITHAW error (EINVAL,
    /// "was not frozen", is not a failure).
    pub error: Option<String>,
    /// errno of the last failed FITHAW (also when a retry then succeeded), 0 if none failed.
    pub errno: i32,
    /// FITHAW calls that failed before it succeeded or the guardian gave up for now.
    pub failed_attempts: u32,
    /// FITHAW kept failing: the file system is still frozen, and the guardian
    /// keeps retrying in the background (it does not exit until it succeeds).
    pub still_frozen: bool,
}

/// Why the guardian thawed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ThawReason {
    /// The host asked (`thaw()` or drop).
    Asked,
    /// `max_freeze` passed.
    Deadline,
    /// The host's command pipe closed: the host died.
    HostGone,
    /// The guardian got this signal.
    Signal(i32),
    /// The guardian hit an unexpected error and thawed to be safe.
    Internal,
}

/// A thaw the guardian did on its own (deadline or signal), before the host asked.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AutoThaw {
    pub reason: ThawReason,
    /// When the last FITHAW of that thaw returned.
    pub at_ns: u64,
    pub mounts: Vec<ThawTiming>,
}

/// The result of [`Guardian::thaw`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct Thawed {
    /// In thaw order; empty if nothing was frozen.
    pub mounts: Vec<ThawTiming>,
    /// When the last FITHAW returned: the freeze window closes here (0 if nothing was frozen).
    pub last_thaw_ns: u64,
    pub reason: ThawReason,
    /// Set when the guardian had already thawed by itself (deadline, signal)
    /// before this call: the snapshot may not have been taken while frozen.
    pub auto_thawed_at_ns: Option<u64>,
}

/// A failed freeze: which mount, why, and what was thawed back.
#[derive(Debug, thiserror::Error)]
#[error("cannot freeze {} ({}): {errno_name}: {explanation}; thawed back: {}", .path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "-".into()), .fs_type.as_deref().unwrap_or("-"), describe_thawed(.thawed_back))]
pub struct FreezeFailure {
    /// The mount that failed (None if the guardian itself failed).
    pub path: Option<PathBuf>,
    pub fs_type: Option<String>,
    pub error: io::Error,
    /// `EBUSY`, `EOPNOTSUPP`, ...
    pub errno_name: &'static str,
    /// What the errno means here and what to do.
    pub explanation: String,
    /// Mounts this guardian froze before the failure and thawed again.
    pub thawed_back: Vec<ThawTiming>,
    /// Mounts frozen before the failure (with timings).
    pub frozen_before: Vec<MountTiming>,
}

fn describe_thawed(t: &[ThawTiming]) -> String {
    if t.is_empty() {
        return "none".into();
    }
    t.iter().map(|m| m.path.display().to_string()).collect::<Vec<_>>().join(", ")
}

// ---- the child ---------------------------------------------------------

/// Everything the guardian child touches, built before the fork. The
/// tables are allocated at full size; arming fills their first entries.
struct ChildCtx {
    cmd_r: RawFd,
    evt_w: RawFd,
    devnull: RawFd,
    /// Target fds; the first `n` are the session's.
    fds: Vec<RawFd>,
    frozen: Vec<bool>,
    n: usize,
    /// Fds received to keep open (CMD_ARM_KEEP); the first `n_kept` count.
    kept: [RawFd; KEEP_CAP],
    n_kept: usize,
    /// Sorted fds to keep open at the fork (besides 0..=2).
    keep: Vec<RawFd>,
    max_ns: u64,
    armed: bool,
    /// errno of a failed arming step, reported with EV_ARMED.
    arm_errno: i32,
    /// When the current freeze must end (0 when none is held).
    deadline: u64,
}

/// Sends one event; drops it if the host is gone or not reading (the pipe is
/// non-blocking in the child: a full pipe must never stall a thaw).
unsafe fn send(ctx: &ChildCtx, ev: Event) {
    libc::write(ctx.evt_w, (&ev as *const Event).cast(), size_of::<Event>());
}

unsafe fn errno() -> i32 {
    *libc::__errno_location()
}

/// One FITHAW, retried with a backoff while it fails with anything but
/// EINVAL, until `until_ns`. Returns (thawed, last errno, failed attempts);
/// EINVAL ("not frozen": someone else thawed it) counts as thawed.
unsafe fn fithaw_retrying(fd: RawFd, until_ns: u64) -> (bool, i32, u32) {
    let mut last = 0;
    let mut failures = 0u32;
    let mut backoff_ms = 1;
    loop {
        let err = if libc::ioctl(fd, FITHAW as _, 0) < 0 { errno() } else { 0 };
        if err == 0 || err == libc::EINVAL {
            return (true, last, failures);
        }
        last = err;
        failures = failures.saturating_add(1);
        if monotonic_ns() >= until_ns {
            return (false, last, failures);
        }
        // poll(2) with no fds: an async-signal-safe sleep.
        libc::poll(std::ptr::null_mut(), 0, backoff_ms);
        backoff_ms = (backoff_ms * 2).min(THAW_BACKOFF_MAX_MS);
    }
}

/// Until when a thaw starting now retries fast: the freeze deadline, but at
/// least [`THAW_RETRY_MIN_NS`] from now.
fn retry_until(ctx: &ChildCtx) -> u64 {
    ctx.deadline.max(monotonic_ns().saturating_add(THAW_RETRY_MIN_NS))
}

/// Thaws everything this guardian froze, in reverse order, retrying a
/// failing FITHAW until `until_ns`, then reports. True if nothing it froze
/// is still frozen.
unsafe fn thaw_all_frozen(ctx: &mut ChildCtx, why: u32, detail: i32, until_ns: u64) -> bool {
    let n = ctx.n;
    let mut all = true;
    for i in (0..n).rev() {
        if !ctx.frozen[i] {
            continue;
        }
        let start = monotonic_ns();
        let (thawed, err, failures) = fithaw_retrying(ctx.fds[i], until_ns);
        let end = monotonic_ns();
        ctx.frozen[i] = !thawed;
        all &= thawed;
        let kind = if thawed { EV_THAWED } else { EV_THAW_FAILED };
        send(ctx, Event { kind, index: i as u32, errno: err, reason: failures, start_ns: start, end_ns: end });
    }
    send(ctx, Event { kind: EV_THAW_DONE, index: 0, errno: detail, reason: why, start_ns: 0, end_ns: monotonic_ns() });
    all
}

/// One more FITHAW on each mount still frozen after a failed thaw; no
/// events (the host has stopped listening, or is gone). True when none is left.
unsafe fn retry_still_frozen(ctx: &mut ChildCtx) -> bool {
    let mut all = true;
    for i in (0..ctx.n).rev() {
        if ctx.frozen[i] {
            let err = if libc::ioctl(ctx.fds[i], FITHAW as _, 0) < 0 { errno() } else { 0 };
            ctx.frozen[i] = !(err == 0 || err == libc::EINVAL);
            all &= !ctx.frozen[i];
        }
    }
    all
}

fn any_frozen(ctx: &ChildCtx) -> bool {
    ctx.frozen[..ctx.n].iter().any(|&f| f)
}

/// Freezes the targets in order; on the first failure thaws back what it froze.
/// Returns the deadline (0 if nothing stays frozen).
unsafe fn freeze_all(ctx: &mut ChildCtx) -> u64 {
    let mut deadline = 0u64;
    let n = ctx.n;
    let mut failed: Option<(u32, i32)> = None;
    // From the first FIFREEZE to the last (see `rcu`).
    let expedited = super::rcu::expedite();
    for i in 0..n {
        if deadline != 0 && monotonic_ns() >= deadline {
            failed = Some((i as u32, libc::ETIMEDOUT));
            break;
        }
        let start = monotonic_ns();
        let r = libc::ioctl(ctx.fds[i], FIFREEZE as _, 0);
        let err = if r < 0 { errno() } else { 0 };
        let end = monotonic_ns();
        if err == 0 {
            ctx.frozen[i] = true;
            if deadline == 0 {
                deadline = start.saturating_add(ctx.max_ns);
            }
        }
        send(ctx, Event { kind: EV_FROZE, index: i as u32, errno: err, reason: 0, start_ns: start, end_ns: end });
        if err != 0 {
            failed = Some((i as u32, err));
            break;
        }
    }
    match failed {
        None => {
            let reason = if expedited >= 0 { FROZE_EXPEDITED } else { 0 };
            send(ctx, Event { kind: EV_FREEZE_DONE, index: 0, errno: 0, reason, start_ns: 0, end_ns: monotonic_ns() });
            // The host goes on meanwhile.
            super::rcu::restore(expedited);
            deadline
        }
        Some((index, err)) => {
            super::rcu::restore(expedited);
            // Thaw back only what this guardian froze: an EBUSY mount was
            // frozen by someone else, who will expect to thaw it. One that
            // will not thaw stays in `frozen`; the main loop keeps trying.
            let until = monotonic_ns().saturating_add(THAW_RETRY_MIN_NS);
            for i in (0..n).rev() {
                if ctx.frozen[i] {
                    let start = monotonic_ns();
                    let (thawed, e, failures) = fithaw_retrying(ctx.fds[i], until);
                    ctx.frozen[i] = !thawed;
                    let kind = if thawed { EV_THAWED } else { EV_THAW_FAILED };
                    send(ctx, Event { kind, index: i as u32, errno: e, reason: failures, start_ns: start, end_ns: monotonic_ns() });
                }
            }
            send(ctx, Event { kind: EV_FREEZE_DONE, index, errno: err, reason: 0, start_ns: 0, end_ns: monotonic_ns() });
            0
        }
    }
}

/// Room for one arming message's SCM_RIGHTS control data, in u64 words
/// (cmsg buffers must be aligned for `cmsghdr`).
const CONTROL_WORDS: usize = (size_of::<libc::cmsghdr>() + FDS_PER_MSG * size_of::<RawFd>()) / 8 + 2;

/// Receives one command, and into `fds` the fds it carries (returns the
/// byte count, how many fds, and whether the kernel had to drop some).
unsafe fn recv_cmd(sock: RawFd, cmd: &mut Cmd, fds: &mut [RawFd; FDS_PER_MSG]) -> (isize, usize, bool) {
    let mut control = [0u64; CONTROL_WORDS];
    let mut iov = libc::iovec { iov_base: (cmd as *mut Cmd).cast(), iov_len: size_of::<Cmd>() };
    let mut msg: libc::msghdr = std::mem::zeroed();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; CONTROL_WORDS]>() as _;
    let r = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
    let mut n = 0;
    let mut dropped = r > 0 && msg.msg_flags & libc::MSG_CTRUNC != 0;
    if r > 0 {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const RawFd;
                let count = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.add(i));
                    if n < FDS_PER_MSG {
                        fds[n] = fd;
                        n += 1;
                    } else {
                        libc::close(fd);
                        dropped = true;
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    (r, n, dropped)
}

/// Takes an arming message's fds into the target or kept table; what does
/// not fit is closed and fails the arming (E2BIG).
unsafe fn take_fds(ctx: &mut ChildCtx, op: u32, fds: &[RawFd]) {
    for &fd in fds {
        let placed = match op {
            CMD_ARM_TARGETS if ctx.n < ctx.fds.len() => {
                ctx.fds[ctx.n] = fd;
                ctx.n += 1;
                true
            }
            CMD_ARM_KEEP if ctx.n_kept < KEEP_CAP => {
                ctx.kept[ctx.n_kept] = fd;
                ctx.n_kept += 1;
                true
            }
            _ => false,
        };
        if !placed {
            libc::close(fd);
            ctx.arm_errno = libc::E2BIG;
        }
    }
}

/// Thaws, and exits only once nothing this guardian froze is still frozen
/// (see the module doc: past the fast retries it keeps trying, slowly).
unsafe fn exit_after_thaw(ctx: &mut ChildCtx, why: u32, detail: i32) -> ! {
    let mut done = thaw_all_frozen(ctx, why, detail, retry_until(ctx));
    while !done {
        libc::poll(std::ptr::null_mut(), 0, THAW_SLOW_RETRY_MS);
        done = retry_still_frozen(ctx);
    }
    libc::_exit(0)
}

/// The guardian's whole life. Only async-signal-safe calls from here on.
unsafe fn guardian_main(ctx: &mut ChildCtx) -> ! {
    // Out of the host's session and process group (`kill -9 -PGID` and a
    // terminal hangup must not take the guardian with the host), nothing of
    // the host's kept (a host pipe held here cannot hide a hang-up). Every
    // catchable signal comes through a signalfd: one whose default would
    // kill us (SIGTERM, but also SIGUSR1, SIGALRM, ...) must lead to a thaw
    // first, and one that would stop us (SIGTSTP) must not stop us.
    let watched = detach(GUARDIAN_NAME, ctx.devnull, &ctx.keep);

    let sfd = libc::signalfd(-1, &watched, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
    let fl = libc::fcntl(ctx.evt_w, libc::F_GETFL);
    libc::fcntl(ctx.evt_w, libc::F_SETFL, fl | libc::O_NONBLOCK);

    // The OOM killer must not pick the one process that can thaw.
    let oom = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
    if oom >= 0 {
        libc::write(oom, b"-1000".as_ptr().cast(), 5);
        libc::close(oom);
    }
    // Never wait for a page-in while the machine is frozen. ONFAULT: lock
    // what is touched, without faulting in (and copying) the host's heap.
    let ml = libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT);
    let ml_err = if ml < 0 { errno() } else { 0 };
    send(ctx, Event { kind: EV_READY, index: 0, errno: ml_err, reason: 0, start_ns: 0, end_ns: monotonic_ns() });

    let mut deadline = 0u64;
    // Until when to look for the host's next command without sleeping.
    let mut spin_until = 0u64;
    loop {
        let spinning = spin_until != 0 && monotonic_ns() < spin_until;
        let timeout = if spinning {
            0
        } else if deadline == 0 {
            // After a thaw that left something frozen: keep trying, slowly.
            if any_frozen(ctx) {
                THAW_SLOW_RETRY_MS
            } else {
                -1
            }
        } else {
            let now = monotonic_ns();
            if now >= deadline {
                exit_after_thaw(ctx, WHY_DEADLINE, 0);
            }
            ((deadline - now).div_ceil(1_000_000)).min(i32::MAX as u64) as i32
        };
        let mut pfds =
            [libc::pollfd { fd: ctx.cmd_r, events: libc::POLLIN, revents: 0 }, libc::pollfd { fd: sfd, events: libc::POLLIN, revents: 0 }];
        let nfds = if sfd >= 0 { 2 } else { 1 };
        let n = libc::poll(pfds.as_mut_ptr(), nfds, timeout);
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            exit_after_thaw(ctx, WHY_INTERNAL, errno());
        }
        if n == 0 {
            if spinning {
                libc::sched_yield();
                continue;
            }
            if deadline == 0 && any_frozen(ctx) {
                retry_still_frozen(ctx);
            }
            continue; // the deadline is checked at the top
        }
        if pfds[1].revents & libc::POLLIN != 0 {
            let mut info: libc::signalfd_siginfo = std::mem::zeroed();
            let r = libc::read(sfd, (&mut info as *mut libc::signalfd_siginfo).cast(), size_of::<libc::signalfd_siginfo>());
            let signo = info.ssi_signo as i32;
            // Those whose default is to ignore or to stop: carry on.
            // (SIGPIPE is only our own write to a departed host.)
            let harmless =
                [libc::SIGCHLD, libc::SIGWINCH, libc::SIGURG, libc::SIGCONT, libc::SIGPIPE, libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU];
            if r > 0 && !harmless.contains(&signo) {
                exit_after_thaw(ctx, WHY_SIGNAL, signo);
            }
        }
        if pfds[0].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            let mut cmd = Cmd::default();
            let mut got = [-1; FDS_PER_MSG];
            let (r, nfds, dropped) = recv_cmd(ctx.cmd_r, &mut cmd, &mut got);
            if r < 0 && (errno() == libc::EINTR || errno() == libc::EAGAIN) {
                continue;
            }
            if r <= 0 {
                exit_after_thaw(ctx, WHY_HOST_GONE, 0);
            }
            let arming = !ctx.armed && matches!(cmd.op, CMD_ARM_TARGETS | CMD_ARM_KEEP);
            if arming {
                take_fds(ctx, cmd.op, &got[..nfds]);
                if dropped {
                    ctx.arm_errno = libc::EMSGSIZE;
                }
            } else {
                // Fds only ever come with arming.
                for &fd in &got[..nfds] {
                    libc::close(fd);
                }
            }
            match cmd.op {
                CMD_ARM_DONE if !ctx.armed => {
                    ctx.max_ns = cmd.max_ns;
                    ctx.armed = ctx.arm_errno == 0;
                    let e = if ctx.armed { 0 } else { ctx.arm_errno };
                    send(ctx, Event { kind: EV_ARMED, index: 0, errno: e, reason: 0, start_ns: 0, end_ns: monotonic_ns() });
                }
                CMD_FREEZE if !ctx.armed => {
                    send(ctx, Event { kind: EV_FREEZE_DONE, index: 0, errno: libc::EINVAL, reason: 0, start_ns: 0, end_ns: monotonic_ns() })
                }
                CMD_FREEZE if deadline != 0 || any_frozen(ctx) => send(
                    ctx,
                    Event { kind: EV_FREEZE_DONE, index: 0, errno: libc::EALREADY, reason: 0, start_ns: 0, end_ns: monotonic_ns() },
                ),
                CMD_FREEZE => {
                    deadline = freeze_all(ctx);
                    ctx.deadline = deadline;
                    spin_until = if deadline != 0 { monotonic_ns().saturating_add(SPIN_NS) } else { 0 };
                }
                CMD_THAW => {
                    spin_until = 0;
                    thaw_all_frozen(ctx, WHY_ASKED, 0, retry_until(ctx));
                    deadline = 0;
                    ctx.deadline = 0;
                }
                _ => {}
            }
        }
    }
}

// ---- the host side -----------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Idle,
    Frozen,
    /// The guardian has exited (after an auto-thaw, or lost).
    Gone,
}

/// Handle on a running guardian process. Blocking and simple; an async
/// caller awaits [`Guardian::event_fd`] readability before calling in.
pub struct Guardian {
    pid: libc::pid_t,
    cmd: Option<OwnedFd>,
    events: OwnedFd,
    targets: Vec<Target>,
    max_freeze: Duration,
    state: State,
    /// Per-mount thaw events received but not yet returned.
    thawed: Vec<ThawTiming>,
    auto: Option<AutoThaw>,
    reaped: bool,
    /// errno of the guardian's mlockall (0 = locked).
    mlock_errno: i32,
    /// CLOCK_MONOTONIC ns when the current freeze must end (0 if none).
    deadline_ns: u64,
    /// A thaw left something frozen: the guardian keeps retrying and will not
    /// exit until it succeeds, so drop does not wait for it.
    left_frozen: bool,
    /// `/sys/kernel/rcu_expedited` read 0 when this guardian was armed: if it
    /// dies in the middle of a freeze (when it may have set the knob), the
    /// host puts it back. Read at arming, outside a paused database's wait.
    rcu_was_normal: bool,
}

fn os_err(what: &'static str) -> FreezeError {
    FreezeError::GuardianStart { what, source: io::Error::last_os_error() }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), FreezeError> {
    let mut fds = [0; 2];
    // SAFETY: valid out array; fds are owned right away.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) < 0 {
            return Err(os_err("pipe2"));
        }
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

/// Opens a target and checks it is still the mount the plan chose.
fn open_target(t: &Target) -> Result<OwnedFd, FreezeError> {
    let c = std::ffi::CString::new(t.path.as_os_str().as_bytes())
        .map_err(|_| FreezeError::Open { path: t.path.clone(), source: io::ErrorKind::InvalidInput.into() })?;
    // SAFETY: valid C string; the fd is owned right away.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(FreezeError::Open { path: t.path.clone(), source: io::Error::last_os_error() });
    }
    // SAFETY: fd was just opened.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if t.mount_id != 0 {
        // SAFETY: zeroed statx is a valid out buffer; empty path + AT_EMPTY_PATH stats the fd.
        let mut stx: libc::statx = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::statx(fd.as_raw_fd(), c"".as_ptr(), libc::AT_EMPTY_PATH, libc::STATX_MNT_ID, &mut stx) };
        if r == 0 && stx.stx_mask & libc::STATX_MNT_ID != 0 && stx.stx_mnt_id != t.mount_id {
            return Err(FreezeError::MountChanged { path: t.path.clone(), expected: t.mount_id, found: stx.stx_mnt_id });
        }
    }
    Ok(fd)
}

/// A guardian forked ahead of its session: it holds nothing, freezes
/// nothing and waits for [`Spare::arm`]. Dropping it ends it.
pub struct Spare {
    guardian: Guardian,
    capacity: usize,
}

/// How many targets a spare the service keeps ready has room for; a plan
/// with more gets a guardian of its own size.
pub const SPARE_CAPACITY: usize = 1024;

impl Spare {
    /// Forks a guardian with room for `capacity` targets and waits for it
    /// to be ready.
    pub fn fork(capacity: usize) -> Result<Spare, FreezeError> {
        let (cmd_r, cmd_w) = seqpacket_pair()?;
        let (evt_r, evt_w) = pipe()?;
        // Room for many per-mount events even if the host is slow to read.
        // SAFETY: fcntl on an fd we own; failure only leaves the default size.
        unsafe { libc::fcntl(evt_w.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
        // SAFETY: valid C string.
        let devnull = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if devnull < 0 {
            return Err(os_err("open /dev/null"));
        }
        // SAFETY: just opened.
        let devnull = unsafe { OwnedFd::from_raw_fd(devnull) };
        let mut keep = vec![cmd_r.as_raw_fd(), evt_w.as_raw_fd()];
        keep.sort_unstable();
        let mut ctx = ChildCtx {
            cmd_r: cmd_r.as_raw_fd(),
            evt_w: evt_w.as_raw_fd(),
            devnull: devnull.as_raw_fd(),
            fds: vec![-1; capacity],
            frozen: vec![false; capacity],
            n: 0,
            kept: [-1; KEEP_CAP],
            n_kept: 0,
            keep,
            max_ns: 0,
            armed: false,
            arm_errno: 0,
            deadline: 0,
        };

        // SAFETY: the child runs guardian_main, which never returns and only
        // makes async-signal-safe calls on `ctx`, allocated above.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(os_err("fork"));
        }
        if pid == 0 {
            unsafe { guardian_main(&mut ctx) }
        }
        // The child has its copies; the host keeps only its two ends.
        drop((cmd_r, evt_w, devnull));
        let mut g = Guardian {
            pid,
            cmd: Some(cmd_w),
            events: evt_r,
            targets: Vec::new(),
            max_freeze: Duration::ZERO,
            state: State::Idle,
            thawed: Vec::new(),
            auto: None,
            reaped: false,
            mlock_errno: 0,
            deadline_ns: 0,
            left_frozen: false,
            rcu_was_normal: false,
        };
        g.mlock_errno = g.handshake(EV_READY, "handshake")?;
        Ok(Spare { guardian: g, capacity })
    }

    /// How many targets this spare can take.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Process id of the spare guardian.
    pub fn pid(&self) -> i32 {
        self.guardian.pid
    }

    /// Hands the spare `plan`'s targets (opened and checked here) and the
    /// session's `max_freeze`; `keep_fds` (the session lock) stay open in it
    /// until it exits.
    pub fn arm(self, plan: &FreezePlan, max_freeze: Duration, keep_fds: &[RawFd]) -> Result<Guardian, FreezeError> {
        let Spare { mut guardian, capacity } = self;
        let room = |what: &str, n: usize, cap: usize| FreezeError::GuardianStart {
            what: "arm",
            source: io::Error::other(format!("{n} {what} for a guardian with room for {cap}")),
        };
        if plan.targets.len() > capacity {
            return Err(room("targets", plan.targets.len(), capacity));
        }
        if keep_fds.len() > KEEP_CAP {
            return Err(room("fds to keep", keep_fds.len(), KEEP_CAP));
        }
        let fds: Vec<OwnedFd> = plan.targets.iter().map(open_target).collect::<Result<_, _>>()?;
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let arm_err = |source: io::Error| FreezeError::GuardianStart { what: "arm", source };
        for chunk in raw.chunks(FDS_PER_MSG) {
            guardian.send_with_fds(Cmd { op: CMD_ARM_TARGETS, ..Cmd::default() }, chunk).map_err(arm_err)?;
        }
        if !keep_fds.is_empty() {
            guardian.send_with_fds(Cmd { op: CMD_ARM_KEEP, ..Cmd::default() }, keep_fds).map_err(arm_err)?;
        }
        let max_ns = u64::try_from(max_freeze.as_nanos()).unwrap_or(u64::MAX);
        guardian.send_with_fds(Cmd { op: CMD_ARM_DONE, max_ns, ..Cmd::default() }, &[]).map_err(arm_err)?;
        // The guardian has its own copies now (or the arming failed).
        drop(fds);
        match guardian.handshake(EV_ARMED, "arm")? {
            0 => {}
            e => return Err(arm_err(io::Error::from_raw_os_error(e))),
        }
        guardian.targets = plan.targets.clone();
        guardian.rcu_was_normal = super::rcu::is_normal();
        guardian.max_freeze = max_freeze;
        Ok(guardian)
    }
}

fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), FreezeError> {
    let mut fds = [0; 2];
    // SAFETY: valid out array; fds are owned right away.
    unsafe {
        if libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) < 0 {
            return Err(os_err("socketpair"));
        }
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

impl Guardian {
    /// Forks a guardian for `plan`'s targets and arms it (see [`Spare`]).
    /// It will thaw on its own `max_freeze` after the first FIFREEZE.
    /// `keep_fds` (≥ 3) stay open in it until it exits.
    pub fn start(plan: &FreezePlan, max_freeze: Duration, keep_fds: &[RawFd]) -> Result<Guardian, FreezeError> {
        let keep: Vec<RawFd> = keep_fds.iter().copied().filter(|&fd| fd > 2).collect();
        Spare::fork(plan.targets.len())?.arm(plan, max_freeze, &keep)
    }

    /// Waits for the guardian's answer `kind`; its errno.
    fn handshake(&mut self, kind: u32, what: &'static str) -> Result<i32, FreezeError> {
        match self.next_event(Instant::now() + Duration::from_secs(10)) {
            Ok(ev) if ev.kind == kind => Ok(ev.errno),
            Ok(ev) => Err(FreezeError::GuardianStart { what, source: io::Error::other(format!("unexpected event {}", ev.kind)) }),
            Err(e) => Err(FreezeError::GuardianStart { what, source: e }),
        }
    }

    /// Process id of the guardian.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The targets, in freeze order.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The `max_freeze` the guardian enforces.
    pub fn max_freeze(&self) -> Duration {
        self.max_freeze
    }

    /// errno of the guardian's mlockall, 0 if its memory is locked.
    pub fn mlock_errno(&self) -> i32 {
        self.mlock_errno
    }

    /// True while this guardian holds the targets frozen (as last heard).
    pub fn is_frozen(&self) -> bool {
        self.state == State::Frozen
    }

    /// Readable when the guardian has something to say (e.g. it auto-thawed);
    /// an async session registers it with tokio's `AsyncFd`.
    pub fn event_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }

    /// Freezes every target in plan order. On failure, everything this
    /// guardian froze has been thawed back; a mount frozen by someone else
    /// (EBUSY) is left as it was.
    #[allow(clippy::result_large_err)] // rare, and callers want the fields by value
    pub fn freeze(&mut self) -> Result<Frozen, FreezeFailure> {
        let guardian_failure = |explanation: String, error: io::Error| FreezeFailure {
            path: None,
            fs_type: None,
            errno_name: error.raw_os_error().map(errno_name).unwrap_or("error"),
            error,
            explanation,
            thawed_back: Vec::new(),
            frozen_before: Vec::new(),
        };
        match self.state {
            State::Idle => {}
            State::Frozen => {
                return Err(guardian_failure(
                    "this guardian already holds a freeze; thaw first".into(),
                    io::Error::from_raw_os_error(libc::EALREADY),
                ))
            }
            State::Gone => {
                return Err(guardian_failure(
                    "the guardian has exited (after an automatic thaw); start a new one".into(),
                    io::Error::from_raw_os_error(libc::ESRCH),
                ))
            }
        }
        if let Err(e) = self.send(CMD_FREEZE) {
            return Err(guardian_failure(format!("cannot reach the guardian (pid {})", self.pid), e));
        }
        let mut frozen: Vec<MountTiming> = Vec::new();
        let mut thawed_back: Vec<ThawTiming> = Vec::new();
        let mut failed: Option<(usize, i32)> = None;
        let rcu_expedited: bool;
        // FIFREEZE syncs the fs first; on a busy fs that can take long, but a
        // freeze that outlives max_freeze is already a failure.
        let limit = duration::deadline(Instant::now(), self.max_freeze.saturating_add(Duration::from_secs(30)));
        loop {
            let ev = match self.next_event_spinning(limit, Duration::from_nanos(SPIN_NS)) {
                Ok(ev) => ev,
                Err(e) => {
                    // The guardian died mid-freeze or hangs in FIFREEZE: thaw what we know it froze.
                    let paths: Vec<PathBuf> = frozen.iter().rev().map(|m| m.path.clone()).collect();
                    let results = thaw_mounts(&paths);
                    if self.rcu_was_normal && !super::rcu::is_normal() {
                        super::rcu::set_normal();
                    }
                    self.state = State::Gone;
                    let mut f = guardian_failure(format!("the guardian (pid {}) stopped answering during the freeze", self.pid), e);
                    f.thawed_back = results
                        .into_iter()
                        .map(|r| {
                            let failed = r.outcome == super::thaw::ThawOutcome::Failed;
                            ThawTiming {
                                fs_type: self.fs_type_of(&r.path),
                                error: failed.then(|| r.message.clone()),
                                path: r.path,
                                thaw_ms: r.thaw_ms,
                                start_ns: 0,
                                end_ns: 0,
                                errno: 0,
                                failed_attempts: u32::from(failed),
                                still_frozen: failed,
                            }
                        })
                        .collect();
                    f.frozen_before = frozen;
                    return Err(f);
                }
            };
            match ev.kind {
                EV_FROZE => {
                    let Some(t) = self.targets.get(ev.index as usize) else { continue };
                    if ev.errno == 0 {
                        frozen.push(MountTiming {
                            path: t.path.clone(),
                            fs_type: t.fs_type.clone(),
                            freeze_ms: duration::ms_between_ns(ev.start_ns, ev.end_ns),
                            start_ns: ev.start_ns,
                            end_ns: ev.end_ns,
                        });
                    }
                }
                EV_THAWED | EV_THAW_FAILED => {
                    let t = self.thaw_timing(&ev);
                    self.left_frozen |= t.still_frozen;
                    thawed_back.push(t);
                }
                EV_FREEZE_DONE => {
                    if ev.errno != 0 {
                        failed = Some((ev.index as usize, ev.errno));
                    }
                    rcu_expedited = ev.reason == FROZE_EXPEDITED;
                    break;
                }
                _ => {}
            }
        }
        if let Some((index, errno)) = failed {
            let t = self.targets.get(index);
            return Err(FreezeFailure {
                path: t.map(|t| t.path.clone()),
                fs_type: t.map(|t| t.fs_type.clone()),
                error: io::Error::from_raw_os_error(errno),
                errno_name: errno_name(errno),
                explanation: freeze_errno_explanation(errno).to_string(),
                thawed_back,
                frozen_before: frozen,
            });
        }
        self.state = State::Frozen;
        let first = frozen.first().map(|m| m.start_ns).unwrap_or(0);
        let all = frozen.last().map(|m| m.end_ns).unwrap_or(0);
        let deadline = first.saturating_add(u64::try_from(self.max_freeze.as_nanos()).unwrap_or(u64::MAX));
        self.deadline_ns = deadline;
        Ok(Frozen { mounts: frozen, first_freeze_ns: first, all_frozen_ns: all, deadline_ns: deadline, rcu_expedited })
    }

    /// Thaws every target this guardian froze, in reverse order. If the
    /// guardian already thawed on its own (deadline, signal), says so and when.
    pub fn thaw(&mut self) -> Result<Thawed, FreezeError> {
        // An automatic thaw may be waiting in the pipe.
        self.drain()?;
        if let Some(auto) = self.auto.clone() {
            return Ok(Thawed { last_thaw_ns: auto.at_ns, mounts: auto.mounts, reason: auto.reason, auto_thawed_at_ns: Some(auto.at_ns) });
        }
        if self.state != State::Frozen {
            return Ok(Thawed { mounts: Vec::new(), last_thaw_ns: 0, reason: ThawReason::Asked, auto_thawed_at_ns: None });
        }
        let sent = self.send(CMD_THAW);
        // A failing FITHAW is retried until the freeze deadline (at least
        // THAW_RETRY_MIN_NS): wait that long, plus room for a slow kernel.
        let retrying = Duration::from_nanos(self.deadline_ns.saturating_sub(monotonic_ns()).max(THAW_RETRY_MIN_NS));
        let limit = duration::deadline(Instant::now(), retrying.saturating_add(Duration::from_secs(30)));
        loop {
            let ev = match self.next_event(limit) {
                Ok(ev) => ev,
                Err(e) => {
                    let why = match sent {
                        Err(ref s) => format!("{s}; then {e}"),
                        Ok(()) => e.to_string(),
                    };
                    return Err(self.lost(why));
                }
            };
            if let Some(done) = self.absorb(ev) {
                return Ok(done);
            }
        }
    }

    /// Non-blocking: has the guardian thawed on its own (deadline, signal)?
    pub fn auto_thawed(&mut self) -> Option<AutoThaw> {
        if let Err(e) = self.drain() {
            tracing::error!("{e}");
        }
        self.auto.clone()
    }

    /// Absorbs every event already waiting, without blocking.
    fn drain(&mut self) -> Result<(), FreezeError> {
        while self.state == State::Frozen {
            match self.next_event(Instant::now()) {
                Ok(ev) => {
                    self.absorb(ev);
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => break,
                // The guardian vanished without a word: thaw from here.
                Err(e) => return Err(self.lost(e.to_string())),
            }
        }
        Ok(())
    }

    /// Handles a thaw-related event; returns the finished thaw on THAW_DONE.
    fn absorb(&mut self, ev: Event) -> Option<Thawed> {
        match ev.kind {
            EV_THAWED | EV_THAW_FAILED => {
                let t = self.thaw_timing(&ev);
                self.left_frozen |= t.still_frozen;
                self.thawed.push(t);
                None
            }
            EV_THAW_DONE => {
                let reason = match ev.reason {
                    WHY_ASKED => ThawReason::Asked,
                    WHY_DEADLINE => ThawReason::Deadline,
                    WHY_HOST_GONE => ThawReason::HostGone,
                    WHY_SIGNAL => ThawReason::Signal(ev.errno),
                    _ => ThawReason::Internal,
                };
                let mounts = std::mem::take(&mut self.thawed);
                let last = mounts.iter().map(|m| m.end_ns).max().unwrap_or(ev.end_ns);
                self.deadline_ns = 0;
                if reason == ThawReason::Asked {
                    self.state = State::Idle;
                    Some(Thawed { mounts, last_thaw_ns: last, reason, auto_thawed_at_ns: None })
                } else {
                    // The guardian exits after any thaw it did on its own.
                    self.state = State::Gone;
                    self.auto = Some(AutoThaw { reason, at_ns: last, mounts: mounts.clone() });
                    Some(Thawed { mounts, last_thaw_ns: last, reason, auto_thawed_at_ns: Some(last) })
                }
            }
            _ => None,
        }
    }

    /// The guardian is gone while we believe it holds a freeze: thaw the
    /// targets from here (EINVAL = it had thawed them after all).
    fn lost(&mut self, why: String) -> FreezeError {
        let paths: Vec<PathBuf> = self.targets.iter().rev().map(|t| t.path.clone()).collect();
        let thawed = if self.state == State::Frozen { thaw_mounts(&paths) } else { Vec::new() };
        self.state = State::Gone;
        FreezeError::GuardianLost { pid: self.pid, why, thawed }
    }

    fn thaw_timing(&self, ev: &Event) -> ThawTiming {
        let t = self.targets.get(ev.index as usize);
        let still_frozen = ev.kind == EV_THAW_FAILED;
        ThawTiming {
            path: t.map(|t| t.path.clone()).unwrap_or_default(),
            fs_type: t.map(|t| t.fs_type.clone()).unwrap_or_default(),
            thaw_ms: duration::ms_between_ns(ev.start_ns, ev.end_ns),
            start_ns: ev.start_ns,
            end_ns: ev.end_ns,
            error: still_frozen.then(|| format!("{}: {}", errno_name(ev.errno), io::Error::from_raw_os_error(ev.errno))),
            errno: ev.errno,
            failed_attempts: ev.reason,
            still_frozen,
        }
    }

    fn fs_type_of(&self, path: &std::path::Path) -> String {
        self.targets.iter().find(|t| t.path == path).map(|t| t.fs_type.clone()).unwrap_or_default()
    }

    fn send(&self, op: u32) -> io::Result<()> {
        self.send_with_fds(Cmd { op, ..Cmd::default() }, &[])
    }

    /// One command record, with `fds` attached (SCM_RIGHTS) if any. The
    /// socket is SOCK_SEQPACKET: one record per message, never split.
    fn send_with_fds(&self, cmd: Cmd, fds: &[RawFd]) -> io::Result<()> {
        let Some(sock) = &self.cmd else { return Err(io::ErrorKind::BrokenPipe.into()) };
        let mut control = [0u64; CONTROL_WORDS];
        let mut iov = libc::iovec { iov_base: (&cmd as *const Cmd).cast_mut().cast(), iov_len: size_of::<Cmd>() };
        // SAFETY: msghdr is plain data; every pointer in it refers to locals
        // that outlive the sendmsg call, and the control buffer has room for
        // FDS_PER_MSG fds (callers chunk).
        let r = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            if !fds.is_empty() {
                let len = std::mem::size_of_val(fds);
                msg.msg_control = control.as_mut_ptr().cast();
                msg.msg_controllen = libc::CMSG_SPACE(len as u32) as _;
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(len as u32) as _;
                std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), fds.len());
            }
            // MSG_NOSIGNAL: a dead guardian is EPIPE, not a signal.
            libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
        };
        if r == size_of::<Cmd>() as isize {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Next event, waiting until `limit`. TimedOut if none by then,
    /// UnexpectedEof if the guardian has exited.
    fn next_event(&self, limit: Instant) -> io::Result<Event> {
        self.next_event_spinning(limit, Duration::ZERO)
    }

    /// [`Self::next_event`], looking without sleeping for the first `spin`.
    fn next_event_spinning(&self, limit: Instant, spin: Duration) -> io::Result<Event> {
        let fd = self.events.as_raw_fd();
        let spin_until = Instant::now() + spin;
        loop {
            let now = Instant::now();
            let spinning = now < spin_until;
            let left = limit.saturating_duration_since(now);
            let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            let timeout = if spinning { 0 } else { duration::poll_timeout_ms(left) };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, timeout) };
            if n == 0 && spinning {
                // SAFETY: no arguments; lets the guardian have this CPU.
                unsafe { libc::sched_yield() };
                continue;
            }
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "the guardian did not answer in time"));
            }
            let mut ev = Event::default();
            // SAFETY: reads one plain record into a stack struct.
            let r = unsafe { libc::read(fd, (&mut ev as *mut Event).cast(), size_of::<Event>()) };
            if r == size_of::<Event>() as isize {
                return Ok(ev);
            }
            if r == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the guardian exited"));
            }
            if r < 0 {
                let e = io::Error::last_os_error();
                if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN)) {
                    continue;
                }
                return Err(e);
            }
            return Err(io::Error::other(format!("short event record ({r} bytes)")));
        }
    }
}

/// Where guardians done with their session are reaped, once
/// [`reap_in_background`] was called: a thread that waits for each to exit.
static REAPER: std::sync::OnceLock<std::sync::mpsc::Sender<libc::pid_t>> = std::sync::OnceLock::new();

/// From now on a dropped guardian (thawed, told to go) is waited for and
/// reaped on a thread of its own, not by the caller: the service's reply to
/// `end` does not wait for the exit of a forked copy of a large process.
/// A one-shot process keeps the default, reaping inline, so that no zombie
/// outlives its session.
pub fn reap_in_background() {
    REAPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<libc::pid_t>();
        let spawned = std::thread::Builder::new().name("quiesce-reaper".into()).spawn(move || {
            for pid in rx {
                reap(pid);
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the guardian reaper thread ({e}); guardians are reaped inline");
        }
        tx
    });
}

/// Waits (bounded: a guardian stuck in the kernel must not hang its
/// reaper) for `pid` to exit and reaps it. True once reaped.
fn reap(pid: libc::pid_t) -> bool {
    if let Ok(true) = wait_exit(pid, Duration::from_secs(5)) {
        // SAFETY: reaping our own exited child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        return true;
    }
    false
}

impl Drop for Guardian {
    fn drop(&mut self) {
        if self.state == State::Frozen {
            if let Err(e) = self.thaw() {
                tracing::error!("thaw on drop: {e}");
            }
        }
        // Closing the command pipe tells the guardian to go (it thaws first
        // if anything is still frozen).
        self.cmd = None;
        if !self.reaped && !self.left_frozen {
            self.reaped = match REAPER.get() {
                Some(reaper) if reaper.send(self.pid).is_ok() => true,
                _ => reap(self.pid),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No file system needed: an empty plan still goes through every
    /// deadline computation on both sides of the pipe.
    #[test]
    fn duration_max_goes_through_freeze_and_thaw_without_panicking() {
        let plan = FreezePlan { targets: Vec::new(), skipped: Vec::new() };
        let mut g = Guardian::start(&plan, Duration::MAX, &[]).expect("start the guardian");
        let frozen = g.freeze().expect("an empty freeze");
        assert_eq!(frozen.deadline_ns, u64::MAX, "saturated, not wrapped");
        let thawed = g.thaw().expect("thaw");
        assert!(thawed.mounts.is_empty() && thawed.auto_thawed_at_ns.is_none());
    }
}
