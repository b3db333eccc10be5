//! Containment: start processes so that everything they ever start can be
//! found and killed, and know when all of it is gone.
//!
//! A process group is not enough: any descendant can `setsid` (or
//! double-fork and close its fds) and walk out of it, and a timed-out hook
//! then keeps running, holding locks, writing to a file system we are about
//! to freeze. Every process quiesce starts (script hooks, the snapshot
//! command, `exec` grants) runs in a [`Containment`]:
//!
//! - **cgroup v2** where we can create one (root, a delegated subtree): a
//!   fresh cgroup `quiesce.<pid>/<n>.<label>` below the host's own cgroup
//!   (found via `/proc/self/mountinfo` and `/proc/self/cgroup`, never
//!   hard-coded): one parent per host process, so one `cgroup.kill` on it
//!   kills every containment of the host (what the [`watchdog`] does when
//!   the host is gone, even SIGKILLed).
//!   No process leaves a cgroup by itself, so its members are exactly what
//!   the child started; `cgroup.kill` (Linux ≥ 5.14) kills them all at once,
//!   including processes forking while being killed; `cgroup.events`
//!   says when none is left, and the cgroup is removed.
//! - **Child subreaper** otherwise (non-root, an old kernel, a systemd unit
//!   without `Delegate=yes`): the host marks itself `PR_SET_CHILD_SUBREAPER`,
//!   so a descendant whose parent dies is reparented to the host instead of
//!   to init. Members are found in `/proc`: the tree below the child we
//!   started, plus orphans reparented to us whose environment carries this
//!   containment's `QUIESCE_CONTAINMENT` marker (and their trees). Limits:
//!   an orphan that wiped its environment (`env -i`) and whose parent is
//!   already gone cannot be attributed; orphans that exit by themselves
//!   before we look stay zombies of the host until it exits.
//!
//! **Born inside.** A child is cloned straight into its cgroup
//! (`clone3(CLONE_INTO_CGROUP)`, see [`spawn`]): it never runs a single
//! instruction outside, so nothing it forks can escape — no race between
//! spawning and joining, and no per-spawn cgroup migration (which costs an
//! RCU grace period, 13.7 ms measured here, inside the freeze window for
//! the snapshot command).
//!
//! Dropping a `Containment` kills everything in it (it is the kill-on-drop
//! guard for every process the host starts); [`Containment::close`] does the
//! same and waits until all of it is gone.
//!
//! **When the host dies.** A SIGKILLed host runs no drop. In cgroup mode with
//! `cgroup.kill` the [`watchdog`] process kills everything under
//! `quiesce.<pid>` when the host's pipe end closes. Elsewhere (no
//! `cgroup.kill`, the subreaper fallback, or the watchdog could not start)
//! the child we start gets `PR_SET_PDEATHSIG(SIGKILL)`: it dies with the
//! host, but what it started itself (grandchildren) survives a SIGKILLed
//! host. Cgroups left behind by a dead host are swept by the next host.

use std::fmt;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use tokio::time::Instant;

pub mod spawn;
mod watchdog;

use spawn::Target;
pub use spawn::{ContainedChild, Spec};

/// Environment variable carrying the containment id in subreaper mode.
pub const MARKER_VAR: &str = "QUIESCE_CONTAINMENT";

/// How often we look whether a containment is empty while waiting for it.
const POLL: Duration = Duration::from_millis(5);

/// How long a dropped containment's cleanup thread keeps trying (killed
/// processes blocked on a frozen file system die only after the thaw).
const DROP_CLEANUP: Duration = Duration::from_secs(60);

/// How long a dropped containment waits, blocking, for its killed members
/// to die before handing the rest to a thread. Killed processes normally
/// die within a millisecond or two; waiting a little means the cgroup is
/// removed even when the host exits right after (a thread would die with
/// it). Kept short: the snapshot command is dropped inside the freeze
/// window, where a member blocked on the frozen file system cannot die
/// before the thaw. A cgroup left behind is swept by the next run.
const DROP_WAIT: Duration = Duration::from_millis(20);

/// How processes are contained on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// A cgroup v2 per containment; `kill` tells whether `cgroup.kill` exists.
    Cgroup { kill: bool },
    /// The host is a child subreaper; members are found in /proc.
    Subreaper,
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mechanism::Cgroup { kill: true } => f.write_str("cgroup v2 (cgroup.kill)"),
            Mechanism::Cgroup { kill: false } => f.write_str("cgroup v2 (no cgroup.kill: members are killed one by one)"),
            Mechanism::Subreaper => f.write_str("child subreaper (no writable cgroup v2)"),
        }
    }
}

/// The mechanism, decided once per process.
struct Host {
    mechanism: Mechanism,
    /// Where new cgroups are created (the host's own cgroup), in cgroup mode.
    parent: Option<PathBuf>,
}

static HOST: OnceLock<Host> = OnceLock::new();

/// `quiesce.<pid>`: the parent of this host's containment cgroups, made on
/// the first containment and kept for the process's life (one watchdog per
/// process, however many sessions an embedder runs).
struct Base {
    dir: PathBuf,
    /// The watchdog's pipe end (closed only by the process's end); None
    /// when no watchdog runs: then contained children get PDEATHSIG.
    watchdog: Option<OwnedFd>,
}

static BASE: OnceLock<Option<Base>> = OnceLock::new();

/// The containment parent, created (with its watchdog) on first use.
fn base(parent: &Path, kill: bool) -> Option<&'static Base> {
    BASE.get_or_init(|| {
        let dir = parent.join(format!("quiesce.{}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                tracing::warn!("cannot create cgroup {}: {e}", dir.display());
                return None;
            }
        }
        // Without cgroup.kill no watchdog could kill: contained children get PDEATHSIG.
        let watchdog = if kill {
            watchdog::start(parent, &dir)
                .inspect_err(|e| tracing::warn!("cannot start the containment watchdog ({e}); contained processes get PDEATHSIG only"))
                .ok()
        } else {
            None
        };
        Some(Base { dir, watchdog })
    })
    .as_ref()
}
static NEXT: AtomicU64 = AtomicU64::new(1);

fn host() -> &'static Host {
    HOST.get_or_init(|| {
        let host = match cgroup_parent() {
            Ok((parent, kill)) => {
                sweep(&parent);
                Host { mechanism: Mechanism::Cgroup { kill }, parent: Some(parent) }
            }
            Err(why) => {
                tracing::info!("no usable cgroup v2 ({why}); containing processes as a child subreaper");
                become_subreaper()
            }
        };
        tracing::info!("process containment: {}", host.mechanism);
        host
    })
}

/// Which mechanism contains the processes quiesce starts (decided on first use).
pub fn mechanism() -> Mechanism {
    host().mechanism
}

fn become_subreaper() -> Host {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        tracing::warn!("PR_SET_CHILD_SUBREAPER failed: {}; orphaned descendants cannot be found", io::Error::last_os_error());
    }
    Host { mechanism: Mechanism::Subreaper, parent: None }
}

/// The host's own cgroup directory on the cgroup2 mount, if we can create
/// child cgroups in it (probed by creating and removing one), and whether
/// they have `cgroup.kill` (the root cgroup never has one, so look in the probe).
fn cgroup_parent() -> Result<(PathBuf, bool), String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    let (mount_root, mount_point) = cgroup2_mount(&mountinfo).ok_or("no cgroup2 file system is mounted")?;
    let own = fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::")).ok_or("/proc/self/cgroup has no cgroup v2 entry")?;
    // The mount may show a subtree only (a bind mount); our cgroup must lie inside it.
    let rel = Path::new(path).strip_prefix(&mount_root).map_err(|_| format!("our cgroup {path} is outside the cgroup2 mount"))?;
    let parent = mount_point.join(rel);
    let probe = parent.join(format!("quiesce.{}.probe", std::process::id()));
    match fs::create_dir(&probe) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create a cgroup in {}: {e}", parent.display())),
    }
    let writable = fs::OpenOptions::new().write(true).open(probe.join("cgroup.procs"));
    let kill = probe.join("cgroup.kill").exists();
    let _ = fs::remove_dir(&probe);
    writable.map_err(|e| format!("cannot write {}/cgroup.procs: {e}", probe.display()))?;
    Ok((parent, kill))
}

/// (root within the hierarchy, mount point) of the first cgroup2 mount.
fn cgroup2_mount(mountinfo: &str) -> Option<(PathBuf, PathBuf)> {
    mountinfo.lines().find_map(|line| {
        // "id parent maj:min root mountpoint options [optional...] - fstype source superopts"
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut f = left.split_whitespace();
        let root = f.nth(3)?;
        let point = f.next()?;
        Some((PathBuf::from(unescape(root)), PathBuf::from(unescape(point))))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b.get(i + 1..i + 4).and_then(|o| std::str::from_utf8(o).ok()).and_then(|o| u8::from_str_radix(o, 8).ok());
        match (b[i], oct) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Everything one or more started processes ever started. Kill-on-drop.
pub struct Containment {
    /// `<host pid>.<n>.<label>`: for logs, the cgroup's name
    /// (`quiesce.<id>`) and the subreaper marker.
    id: String,
    /// None once handed to the cleanup thread.
    inner: Option<Inner>,
}

enum Inner {
    Cgroup {
        dir: PathBuf,
        /// The directory, for CLONE_INTO_CGROUP.
        dirfd: OwnedFd,
        /// `cgroup.procs`, for children to join through on kernels without it.
        procs: OwnedFd,
        kill: bool,
        /// No watchdog covers this cgroup: the child gets PDEATHSIG.
        pdeathsig: bool,
    },
    Subreaper {
        /// Processes we started (their tokio `Child` reaps them, not us).
        roots: Vec<Pid>,
        /// Members reparented to the host, seen alive: ours to reap. (Once
        /// a zombie, a process's environment, our marker, is gone.)
        orphans: Mutex<Vec<Pid>>,
    },
}

impl fmt::Debug for Containment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Some(Inner::Cgroup { dir, .. }) => write!(f, "Containment({} in {})", self.id, dir.display()),
            Some(Inner::Subreaper { roots, .. }) => write!(f, "Containment({} by subreaper, roots {roots:?})", self.id),
            None => write!(f, "Containment({}, closed)", self.id),
        }
    }
}

impl Containment {
    /// A new, empty containment. Never fails: where no cgroup can be made,
    /// it falls back to the subreaper mechanism.
    pub fn new(label: &str) -> Containment {
        // The label comes from a hook name: keep it plain (it names a directory).
        let label: String = label.chars().take(64).map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        let name = format!("{}.{label}", NEXT.fetch_add(1, Ordering::Relaxed));
        let id = format!("{}.{name}", std::process::id());
        let host = host();
        let made = match (&host.parent, host.mechanism) {
            (Some(parent), Mechanism::Cgroup { kill }) => Some(
                base(parent, kill)
                    .ok_or_else(|| io::Error::other("no containment parent cgroup"))
                    .and_then(|b| Ok((make_cgroup(&b.dir.join(&name))?, kill, b.watchdog.is_none()))),
            ),
            _ => None,
        };
        let inner = match made {
            Some(made) => match made {
                Ok(((dir, dirfd, procs), kill, pdeathsig)) => Inner::Cgroup { dir, dirfd, procs, kill, pdeathsig },
                Err(e) => {
                    tracing::warn!("{e}; containing {id} as a child subreaper instead");
                    host_subreaper();
                    Inner::Subreaper { roots: Vec::new(), orphans: Mutex::default() }
                }
            },
            None => Inner::Subreaper { roots: Vec::new(), orphans: Mutex::default() },
        };
        Containment { id, inner: Some(inner) }
    }

    pub fn mechanism(&self) -> Mechanism {
        match &self.inner {
            Some(Inner::Cgroup { kill, .. }) => Mechanism::Cgroup { kill: *kill },
            _ => Mechanism::Subreaper,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Starts `spec` inside the containment.
    pub fn spawn(&mut self, spec: &Spec) -> io::Result<ContainedChild> {
        match &mut self.inner {
            Some(Inner::Cgroup { dirfd, procs, pdeathsig, .. }) => spawn::spawn(spec, Target::Cgroup { dir: dirfd, procs }, *pdeathsig),
            Some(Inner::Subreaper { roots, .. }) => {
                let mut spec = spec.clone();
                spec.env(MARKER_VAR, &self.id);
                let child = spawn::spawn(&spec, Target::Here, true)?;
                roots.push(Pid::from_raw(child.id() as i32));
                Ok(child)
            }
            None => Err(io::Error::other(format!("{} is closed", self.id))),
        }
    }

    /// Live (not zombie) members right now.
    pub fn members(&self) -> Vec<Pid> {
        match &self.inner {
            Some(Inner::Cgroup { dir, .. }) => cgroup_members(dir),
            Some(Inner::Subreaper { roots, orphans }) => {
                scan(&self.id, roots, orphans).into_iter().filter(|p| p.live).map(|p| p.pid).collect()
            }
            None => Vec::new(),
        }
    }

    /// True when nothing started in the containment runs any more.
    pub fn is_empty(&self) -> bool {
        match &self.inner {
            // cgroup.events is the kernel's own answer, and ignores zombies.
            Some(Inner::Cgroup { dir, .. }) => match fs::read_to_string(dir.join("cgroup.events")) {
                Ok(ev) => ev.lines().any(|l| l == "populated 0"),
                Err(_) => cgroup_members(dir).is_empty(),
            },
            _ => self.members().is_empty(),
        }
    }

    /// Sends `signal` to every member (e.g. SIGTERM before the kill).
    pub fn signal(&self, signal: Signal) {
        for pid in self.members() {
            let _ = kill(pid, signal);
        }
    }

    /// SIGKILLs every member, including those forking meanwhile. Returns at
    /// once; [`wait_empty`](Self::wait_empty) tells when they are gone.
    pub fn kill(&self) {
        match &self.inner {
            Some(Inner::Cgroup { dir, kill: true, .. }) => {
                if let Err(e) = fs::write(dir.join("cgroup.kill"), "1") {
                    tracing::warn!("{}: cgroup.kill: {e}; killing members one by one", self.id);
                    kill_each(&cgroup_members(dir));
                }
            }
            Some(Inner::Cgroup { dir, kill: false, .. }) => kill_each(&cgroup_members(dir)),
            Some(Inner::Subreaper { roots, orphans }) => {
                kill_each(&scan(&self.id, roots, orphans).iter().filter(|p| p.live).map(|p| p.pid).collect::<Vec<_>>());
                reap(orphans);
            }
            None => {}
        }
    }

    /// Waits until the containment is empty, SIGKILLing again what is
    /// found meanwhile if `kill_again` (subreaper mode finds members by
    /// walking /proc, so a process forked during one round is caught in the
    /// next). False if something is still alive at `until` (e.g. blocked on
    /// a frozen file system).
    pub async fn wait_empty(&self, until: Instant, kill_again: bool) -> bool {
        loop {
            if self.is_empty() {
                self.reap();
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            if kill_again {
                self.kill();
            }
            tokio::time::sleep(POLL.min(until.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// Kills everything and waits (up to `settle`) until it is gone, then
    /// removes the cgroup. False (and a warning) if something survived; the
    /// cleanup then continues in the background.
    pub async fn close(self, settle: Duration) -> bool {
        self.kill();
        let gone = self.wait_empty(Instant::now() + settle, true).await;
        if !gone {
            tracing::warn!("{}: still running {:?} {settle:?} after SIGKILL", self.id, self.members());
        }
        gone
    }

    /// Reaps orphans reparented to us (subreaper mode); nothing to do in
    /// cgroup mode, where orphans go to init.
    fn reap(&self) {
        if let Some(Inner::Subreaper { orphans, .. }) = &self.inner {
            reap(orphans);
        }
    }

    fn remove_cgroup(&self) {
        if let Some(Inner::Cgroup { dir, .. }) = &self.inner {
            if let Err(e) = fs::remove_dir(dir) {
                tracing::warn!("cannot remove cgroup {}: {e}", dir.display());
            }
        }
    }
}

impl Drop for Containment {
    fn drop(&mut self) {
        if self.inner.is_none() {
            return;
        }
        if self.is_empty() {
            self.reap();
            self.remove_cgroup();
            return;
        }
        tracing::info!("{}: killing what is left of it: {:?}", self.id, self.members());
        self.kill();
        let until = std::time::Instant::now() + DROP_WAIT;
        while std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
            if self.is_empty() {
                self.reap();
                self.remove_cgroup();
                return;
            }
        }
        // Do not block here (a killed process stuck on a frozen file system
        // dies only after the thaw): finish in the background.
        let rest = Containment { id: self.id.clone(), inner: self.inner.take() };
        let spawned = std::thread::Builder::new().name("quiesce-contain".into()).spawn(move || {
            let mut rest = rest;
            let until = std::time::Instant::now() + DROP_CLEANUP;
            while !rest.is_empty() && std::time::Instant::now() < until {
                std::thread::sleep(POLL);
                rest.kill();
            }
            if rest.is_empty() {
                rest.reap();
                rest.remove_cgroup();
            } else {
                tracing::warn!("{}: still running {:?} {DROP_CLEANUP:?} after SIGKILL; leaving it", rest.id, rest.members());
            }
            rest.inner = None;
        });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the cleanup thread of {}: {e}", self.id);
        }
    }
}

/// Cleans up after quiesce processes that died without doing so: in the
/// host's cgroup, `quiesce.<pid>` (and the older `quiesce.<pid>.<n>.<label>`)
/// whose pid is gone. Empty ones are removed, containments first; a
/// populated one is killed (its host is gone, and nobody else would), and
/// removed if it empties at once, else by the next run.
fn sweep(parent: &Path) {
    let Ok(dir) = fs::read_dir(parent) else { return };
    for e in dir.filter_map(Result::ok) {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("quiesce.")).and_then(|n| n.split('.').next()) else { continue };
        if pid.parse::<u32>().is_err() || Path::new("/proc").join(pid).exists() {
            continue;
        }
        let stale = e.path();
        for round in 0..2 {
            if remove_tree(&stale) {
                tracing::info!("removed stale cgroup {}", stale.display());
                break;
            }
            if round == 0 {
                tracing::warn!(
                    "stale cgroup {} of a dead quiesce process still runs {:?}; killing it",
                    stale.display(),
                    cgroup_members(&stale)
                );
                if fs::write(stale.join("cgroup.kill"), "1").is_err() {
                    kill_tree(&stale);
                }
                std::thread::sleep(SWEEP_SETTLE);
            }
        }
    }
}

/// How long the sweep waits for the members of a stale cgroup it killed.
const SWEEP_SETTLE: Duration = Duration::from_millis(50);

/// The child cgroups of `dir`.
fn children(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Removes `dir` and its child cgroups; false if some are still populated.
fn remove_tree(dir: &Path) -> bool {
    for child in children(dir) {
        let _ = fs::remove_dir(child);
    }
    fs::remove_dir(dir).is_ok()
}

/// SIGKILLs the members of `dir` and its children, one by one (no cgroup.kill).
fn kill_tree(dir: &Path) {
    kill_each(&cgroup_members(dir));
    for child in children(dir) {
        kill_each(&cgroup_members(&child));
    }
}

/// Makes the host a subreaper (once), for a containment that could not get a cgroup.
fn host_subreaper() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        become_subreaper();
    });
}

fn make_cgroup(dir: &Path) -> io::Result<(PathBuf, OwnedFd, OwnedFd)> {
    fs::create_dir(dir).map_err(|e| io::Error::new(e.kind(), format!("cannot create cgroup {}: {e}", dir.display())))?;
    let procs = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(dir.join("cgroup.procs"))
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}/cgroup.procs: {e}", dir.display())));
    let fds = procs.and_then(|p| Ok((spawn::open_dir(dir)?, OwnedFd::from(p))));
    match fds {
        Ok((dirfd, procs)) => Ok((dir.to_path_buf(), dirfd, procs)),
        Err(e) => {
            let _ = fs::remove_dir(dir);
            Err(e)
        }
    }
}

fn cgroup_members(dir: &Path) -> Vec<Pid> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .map(Pid::from_raw)
        .collect()
}

fn kill_each(pids: &[Pid]) {
    for &pid in pids {
        let _ = kill(pid, Signal::SIGKILL);
    }
}

/// One process in /proc.
struct Proc {
    pid: Pid,
    ppid: i32,
    live: bool,
}

/// Every process in /proc: (pid, ppid, not a zombie).
fn processes() -> Vec<Proc> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // "pid (comm) state ppid ..." — comm may contain spaces and ')'.
            let mut f = stat.rsplit_once(')')?.1.split_whitespace();
            let state = f.next()?;
            let ppid = f.next()?.parse().ok()?;
            Some(Proc { pid: Pid::from_raw(pid), ppid, live: state != "Z" && state != "X" })
        })
        .collect()
}

/// Members in subreaper mode: the trees below our roots and below orphans
/// reparented to the host that carry our marker.
fn subreaper_members(id: &str, roots: &[Pid]) -> Vec<Proc> {
    let me = std::process::id() as i32;
    let all = processes();
    let marker = format!("{MARKER_VAR}={id}");
    let mut seeds: Vec<i32> = roots.iter().map(|p| p.as_raw()).filter(|r| all.iter().any(|p| p.pid.as_raw() == *r)).collect();
    for p in all.iter().filter(|p| p.ppid == me) {
        // A zombie's environ is empty: a zombie orphan is found (and reaped)
        // only through a live ancestor or while it still ran.
        if !seeds.contains(&p.pid.as_raw())
            && fs::read(format!("/proc/{}/environ", p.pid)).is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == marker.as_bytes()))
        {
            seeds.push(p.pid.as_raw());
        }
    }
    let mut members: Vec<i32> = seeds;
    let mut i = 0;
    while let Some(&parent) = members.get(i) {
        for p in all.iter().filter(|p| p.ppid == parent) {
            if !members.contains(&p.pid.as_raw()) {
                members.push(p.pid.as_raw());
            }
        }
        i += 1;
    }
    all.into_iter().filter(|p| members.contains(&p.pid.as_raw())).collect()
}

/// `subreaper_members`, remembering the orphans among them.
fn scan(id: &str, roots: &[Pid], orphans: &Mutex<Vec<Pid>>) -> Vec<Proc> {
    let me = std::process::id() as i32;
    let members = subreaper_members(id, roots);
    let mut known = orphans.lock().unwrap_or_else(|e| e.into_inner());
    for p in members.iter().filter(|p| p.ppid == me && !roots.contains(&p.pid)) {
        if !known.contains(&p.pid) {
            known.push(p.pid);
        }
    }
    members
}

/// Reaps the orphans that have exited. (Not the processes we started:
/// those belong to their tokio `Child`.) A recorded orphan's pid cannot be
/// reused before we reap it: the zombie holds it.
fn reap(orphans: &Mutex<Vec<Pid>>) {
    let mut known = orphans.lock().unwrap_or_else(|e| e.into_inner());
    known.retain(|&pid| matches!(waitpid(pid, Some(WaitPidFlag::WNOHANG)), Ok(nix::sys::wait::WaitStatus::StillAlive)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_in_a_hybrid_layout() {
        let mi = "25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw\n\
                  31 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755\n\
                  32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n\
                  33 31 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n";
        assert_eq!(cgroup2_mount(mi), Some((PathBuf::from("/"), PathBuf::from("/sys/fs/cgroup/unified"))));
    }

    #[test]
    fn mount_points_with_spaces_are_unescaped() {
        let mi = "32 31 0:27 /sub /mnt/cg\\040two rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(mi), Some((PathBuf::from("/sub"), PathBuf::from("/mnt/cg two"))));
    }

    #[test]
    fn no_cgroup2_mount_is_none() {
        assert_eq!(cgroup2_mount("31 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n"), None);
    }
}
