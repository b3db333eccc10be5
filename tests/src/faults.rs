//! The machinery of the fault matrix (issue 8): one cell is one fault
//! injected at one phase of a real `quiesce snapshot` session, on real loop
//! file systems, with real scripts, real plugins, a real MariaDB and real
//! signals. The cell's recipe ([`Spec`]) and what the session must do about
//! it ([`Expect`]) live in `tests/tests/fault_matrix.rs`; this module runs a
//! cell and checks the four promises every cell makes:
//!
//! - **(a) frozen**: no mount the cell created is frozen later than
//!   `--max-freeze` + 1 s — probed while the snapshot step runs (from the
//!   moment the snapshot command starts), and again once the session ended or
//!   its host was killed. A mount frozen by "someone else" must instead be
//!   left frozen (quiesce never thaws a freeze it did not make); while the
//!   kernel refuses every FITHAW, `quiesce status` must show the mount
//!   frozen, and once the refusal ends it must thaw within the deadline.
//! - **(b) database lock**: a writer's INSERT completes within `--max-freeze`
//!   plus 1 s of the session's end (or of the host's death); and in the cells
//!   that wait for a phase, the lock was seen held then, so the check is not
//!   vacuous.
//! - **(c) processes**: every pid the hooks and commands wrote down (their
//!   `$$`, their children, their `setsid` grandchildren, the guardian) is
//!   gone — neither alive nor an unreaped zombie — 1 s after a session ended, or
//!   `max(hook timeout, max-freeze)` + 1 s after its host was killed.
//! - **(d) report**: exit status, `consistency`, `snapshot_taken` and error
//!   codes are what the fault should produce; a killed host prints no report
//!   and `quiesce status` then says no session runs and nothing is frozen.
//!
//! Timing is injected by readiness, not sleeps: every script and snapshot
//! command touches `<step>.ready` first, and the waiting ones block until the
//! test creates `go`. Freeze and thaw are reached through strace holding the
//! guardian's FIFREEZE or FITHAW ([`IoctlFault::Delay`]); its log shows the
//! held call as it starts.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::db::MariaDb;
use crate::plugins::install_plugin;
use crate::{alive, quiesce_bin, Fs, LoopMount, Scratch, WriteProbe};

/// `--max-freeze` of every cell.
pub const MAX_FREEZE: Duration = Duration::from_secs(2);
/// `timeout_secs` of every hook.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(2);
/// A session that has not ended after this long is a failed cell (and killed).
const SESSION_LIMIT: Duration = Duration::from_secs(90);
/// The promise's slack on top of a deadline.
const SLACK: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pre,
    Freeze,
    Snapshot,
    Thaw,
    Post,
}

pub const PHASES: [Phase; 5] = [Phase::Pre, Phase::Freeze, Phase::Snapshot, Phase::Thaw, Phase::Post];

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Pre => "pre",
            Phase::Freeze => "freeze",
            Phase::Snapshot => "snapshot",
            Phase::Thaw => "thaw",
            Phase::Post => "post",
        }
    }
}

/// What a pre/post script or the snapshot command does after it wrote its
/// pid and touched its marker.
#[derive(Clone, Debug)]
pub enum Act {
    Succeed,
    /// `exit 1`.
    Fail,
    /// Blocks until the test creates `go` (or 120 s pass).
    WaitGo,
    /// Sleeps 60 s in a child it waits for: only a kill ends it early.
    Hang,
    /// Kills itself with SIGSEGV.
    Crash,
    /// Starts a `setsid` grandchild (its own session and process group,
    /// sleeping 300 s: it outlives a session that waits out the hang), then
    /// hangs like [`Act::Hang`].
    SetsidHang,
    /// `fsfreeze -f` of a mount, as another tool would, then succeeds.
    FreezeForeign(PathBuf),
    /// `kill -9` of the pid in a file (the database server), then succeeds.
    KillPidFile(PathBuf),
    /// Like `KillPidFile`, then wait (at most 5 s) until every thread of the
    /// process has exited: only the leader left, a zombie, or the pid gone.
    /// An empty `/proc/PID/fd` is not enough: the exiting thread that drops
    /// the fd table releases the sockets a moment later (its task work), and
    /// until then the peer does not see the hang-up (CI once checked in that
    /// moment). Not while frozen: a server blocked on the frozen file system
    /// cannot die before the thaw.
    KillPidFileAndWait(PathBuf),
}

/// A signal the test sends to the host once a step is running.
#[derive(Clone, Copy, Debug)]
pub struct SignalAt {
    pub signal: Signal,
    /// To the host's whole process group (the host runs as a group leader).
    pub group: bool,
    /// When the step of this phase has started.
    pub phase: Phase,
}

/// One cell's recipe.
#[derive(Clone, Debug)]
pub struct Spec {
    pub pre: Act,
    pub post: Act,
    pub snapshot: Act,
    /// A `misbehave` plugin hook after the script hook, with this `mode`.
    pub plugin: Option<&'static str>,
    pub signal: Option<SignalAt>,
    /// Run the host under strace, to fail or slow down the guardian's
    /// FIFREEZE/FITHAW (the kernel does neither on demand).
    pub ioctl: Option<IoctlFault>,
    /// Indices (into [`Rig::mounts`]) of mounts that must still be frozen
    /// when the session ends: frozen by "someone else" (quiesce must leave
    /// them alone), or whose every FITHAW was refused. The test thaws them.
    pub left_frozen: Vec<usize>,
}

impl Spec {
    pub fn plain() -> Spec {
        Spec {
            pre: Act::Succeed,
            post: Act::Succeed,
            snapshot: Act::Succeed,
            plugin: None,
            signal: None,
            ioctl: None,
            left_frozen: Vec::new(),
        }
    }
}

/// strace fault injection on the `ioctl`s made on the main mount, which
/// only the guardian makes: FIFREEZE is number 1 (per process), FITHAWs follow.
#[derive(Clone, Copy, Debug)]
pub enum IoctlFault {
    /// Fail the calls numbered `when` (strace's syntax, e.g. `2+`) with EIO.
    Fail(&'static str),
    /// Hold call number `when` for [`IOCTL_DELAY`] before it enters the
    /// kernel: a window in which the freeze or thaw is in progress. strace
    /// logs the call's start when the hold begins, which is the marker.
    Delay(&'static str),
}

/// How long [`IoctlFault::Delay`] holds the call (half of `--max-freeze`: a
/// held FIFREEZE counts against the deadline).
pub const IOCTL_DELAY: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    /// SIGKILLed: no report, no exit code.
    Killed,
}

/// What the session must report for a cell.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    pub exit: Exit,
    pub consistency: &'static str,
    pub snapshot_taken: bool,
    /// Codes that must be in `errors`.
    pub codes: &'static [&'static str],
    /// Codes that may be in `errors` besides (any other is a failure).
    pub may: &'static [&'static str],
    /// Text some error message must contain ("" for none).
    pub says: &'static str,
}

/// The MariaDB a cell's `db` hook (the `quiesce_mariadb` plugin) locks.
pub struct Db<'a> {
    pub my: &'a MariaDb,
    /// The server's pid file, for [`Act::KillPidFile`].
    pub pid_file: PathBuf,
    /// The server is killed by the cell: there is no lock left to check.
    pub killed_by_cell: bool,
}

impl Db<'_> {
    pub fn new(my: &MariaDb, killed_by_cell: bool) -> Db<'_> {
        Db { my, pid_file: my.aux_dir().join("my.pid"), killed_by_cell }
    }

    /// Does an INSERT by the application user complete within `limit`? A
    /// blocked one is left behind in its thread (it ends with the lock).
    pub fn insert_within(&self, limit: Duration) -> bool {
        let (port, user, pw) = (self.my.port, self.my.app_user.clone(), self.my.app_password.clone());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let r = (|| -> Result<(), String> {
                let s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
                let cfg = mywire::Config::new(&user).password(&pw).database("q");
                let mut c = mywire::Client::connect(s, &cfg).map_err(|e| e.to_string())?;
                let n = crate::db::now_ns();
                c.query(&format!("INSERT INTO t VALUES ({n})")).map(|_| ()).map_err(|e| e.to_string())
            })();
            let _ = tx.send(r);
        });
        matches!(rx.recv_timeout(limit), Ok(Ok(())))
    }
}

/// A cell's file systems and files. `mounts[0]` is the main mount; with two,
/// `mounts[0]` is mounted inside `mounts[1]` (image elsewhere), so it is
/// frozen first and dropped first.
pub struct Rig {
    pub mounts: Vec<LoopMount>,
    pub s: Scratch,
}

impl Rig {
    pub fn new(name: &str, two_mounts: bool) -> Rig {
        let s = Scratch::new(name);
        let outer = LoopMount::new(&s.path, "outer", Fs::Ext4);
        let mounts = if two_mounts {
            let images = s.join("images");
            fs::create_dir_all(&images).expect("images dir");
            let inner = LoopMount::split(&images, outer.path(), "inner", Fs::Ext4);
            vec![inner, outer]
        } else {
            vec![outer]
        };
        Rig { mounts, s }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.s.join(name)
    }

    /// Writes down its pid, logs its name, runs `prologue`, touches its
    /// marker, then does `act`.
    fn script(&self, name: &str, marker: &str, prologue: &str, act: &Act) -> PathBuf {
        let d = self.s.path.display();
        let mut body = format!("#!/bin/sh\nD={d}\necho $$ >> $D/pids\necho {name} >> $D/log\n{prologue}touch $D/{marker}\n");
        let _ = match act {
            Act::Succeed => writeln!(body, "exit 0"),
            Act::Fail => writeln!(body, "exit 1"),
            Act::WaitGo => writeln!(body, "i=0\nwhile [ ! -e $D/go ] && [ $i -lt 2400 ]; do sleep 0.05; i=$((i+1)); done\nexit 0"),
            Act::Hang => writeln!(body, "sleep 60 &\necho $! >> $D/pids\nwait"),
            Act::Crash => writeln!(body, "kill -SEGV $$"),
            // The grandchild writes its own pid; wait for it so (c) sees it.
            Act::SetsidHang => writeln!(
                body,
                "n=$(wc -l < $D/pids)\nsetsid sh -c 'echo $$ >> {d}/pids; exec sleep 300' </dev/null >/dev/null 2>&1 &\n\
                 while [ $(wc -l < $D/pids) -le $n ]; do sleep 0.01; done\nsleep 60 &\necho $! >> $D/pids\nwait"
            ),
            Act::FreezeForeign(m) => writeln!(body, "fsfreeze -f {}\nexit 0", m.display()),
            Act::KillPidFile(p) => writeln!(body, "kill -9 $(cat {})\nexit 0", p.display()),
            Act::KillPidFileAndWait(p) => writeln!(
                body,
                "pid=$(cat {})\nkill -9 $pid\nfor _ in $(seq 500); do\n  \
                 state=$(sed 's/.*) //' /proc/$pid/stat 2>/dev/null | cut -d' ' -f1)\n  \
                 [ -z \"$state\" ] && break\n  \
                 [ \"$state\" = Z ] && [ \"$(ls /proc/$pid/task 2>/dev/null | wc -l)\" -le 1 ] && break\n  \
                 sleep 0.01\ndone\nexit 0",
                p.display()
            ),
        };
        self.s.script(name, &body)
    }

    fn config(&self, spec: &Spec, db: Option<&Db>) -> PathBuf {
        let pre = self.script("pre", "pre.ready", "", &spec.pre);
        let post = self.script("post", "post.ready", "", &spec.post);
        let t = HOOK_TIMEOUT.as_secs();
        let mut toml = format!("[freeze]\nmax_freeze_secs = {}\n\n", MAX_FREEZE.as_secs());
        if let Some(db) = db {
            let plugin = install_plugin(&self.s, "quiesce_mariadb");
            let target = format!("unix:{}", db.my.socket.display());
            let _ = writeln!(
                toml,
                "[[hook]]\nname = \"db\"\nplugin = \"{}\"\nparams = {{ target = {target:?} }}\ngrants = [{target:?}]\ntimeout_secs = 5\n",
                plugin.display()
            );
        }
        let _ =
            writeln!(toml, "[[hook]]\nname = \"app\"\npre = \"{}\"\npost = \"{}\"\ntimeout_secs = {t}\n", pre.display(), post.display());
        if let Some(mode) = spec.plugin {
            let plugin = install_plugin(&self.s, "misbehave");
            let _ = writeln!(
                toml,
                "[[hook]]\nname = \"plug\"\nplugin = \"{}\"\nparams = {{ mode = {mode:?} }}\ntimeout_secs = {t}\n",
                plugin.display()
            );
        }
        self.s.config("quiesce.toml", &toml)
    }

    fn command(&self, spec: &Spec, config: &Path, snap: &Path) -> Command {
        let mut cmd = match spec.ioctl {
            None => Command::new(quiesce_bin()),
            // `-P` limits tracing (and the per-process count) to ioctls on the
            // main mount, which only the guardian makes.
            Some(fault) => {
                let inject = match fault {
                    IoctlFault::Fail(when) => format!("inject=ioctl:error=EIO:when={when}"),
                    IoctlFault::Delay(when) => format!("inject=ioctl:delay_enter={}:when={when}", IOCTL_DELAY.as_micros()),
                };
                let mut c = Command::new("strace");
                c.args(["-f", "-qq", "-o"])
                    .arg(self.file("strace.log"))
                    .args(["-e", "trace=ioctl", "-P"])
                    .arg(self.mounts[0].path())
                    .args(["-e", &inject]);
                if let IoctlFault::Fail(_) = fault {
                    // strace lives as long as the guardian it traces, which
                    // outlives quiesce here: a shell records quiesce's own exit.
                    c.args(["--", "/bin/sh", "-c", "\"$@\"; echo $? > \"$Q_RC\"", "sh"]).env("Q_RC", self.file("rc"));
                }
                c.arg(quiesce_bin());
                c
            }
        };
        cmd.env("QUIESCE_RUN_DIR", self.file("run"))
            .env("QUIESCE_LOG_FILE", self.file("quiesce.log"))
            .env("QUIESCE_CACHE_DIR", self.file("cache"))
            .env("QUIESCE_STATE_DIR", self.file("state"))
            .env_remove("RUST_LOG")
            .arg("snapshot")
            .arg("--config")
            .arg(config)
            .arg("--max-freeze")
            .arg(MAX_FREEZE.as_secs().to_string())
            .arg("--snapshot-cmd")
            .arg(snap)
            .arg("--json")
            .stdin(Stdio::null());
        for m in &self.mounts {
            cmd.arg("--mount").arg(m.path());
        }
        if spec.signal.is_some_and(|s| s.group) {
            cmd.process_group(0);
        }
        cmd
    }

    fn status(&self) -> Option<serde_json::Value> {
        let mut cmd = Command::new(quiesce_bin());
        cmd.env("QUIESCE_RUN_DIR", self.file("run")).env("QUIESCE_LOG_FILE", self.file("quiesce.log")).args(["status", "--json"]);
        for m in &self.mounts {
            cmd.arg("--mount").arg(m.path());
        }
        let out = cmd.stdin(Stdio::null()).output().ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Has the step of `phase` started? Scripts touch a marker; the
    /// guardian's held FIFREEZE/FITHAW shows in strace's log.
    fn reached(&self, phase: Phase) -> bool {
        let logged = |call: &str| fs::read_to_string(self.file("strace.log")).is_ok_and(|l| l.contains(call));
        match phase {
            Phase::Pre => self.file("pre.ready").exists(),
            Phase::Freeze => logged("FIFREEZE"),
            Phase::Snapshot => self.file("snap.ready").exists(),
            Phase::Thaw => logged("FITHAW"),
            Phase::Post => self.file("post.ready").exists(),
        }
    }

    fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.file("pids")).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// Runs the cell and returns every broken promise, `(letter, what)`.
    pub fn run(&self, spec: &Spec, expect: &Expect, db: Option<&Db>) -> Vec<(char, String)> {
        let mut failures: Vec<(char, String)> = Vec::new();
        let config = self.config(spec, db);
        // The snapshot command also writes down the guardian's pid (from the
        // session state in the run dir), so (c) covers the guardian too.
        let guardian = "sed -n 's/.*\"guardian_pid\": *\\([0-9][0-9]*\\).*/\\1/p' \"$QUIESCE_RUN_DIR/state.json\" >> $D/pids\n";
        let snap = self.script("snap", "snap.ready", guardian, &spec.snapshot);
        let stdout = fs::File::create(self.file("stdout")).expect("stdout file");
        let stderr = fs::File::create(self.file("stderr")).expect("stderr file");
        let mut child = self.command(spec, &config, &snap).stdout(stdout).stderr(stderr).spawn().expect("spawn quiesce");
        let started = Instant::now();
        let ours: Vec<usize> = (0..self.mounts.len()).filter(|i| !spec.left_frozen.contains(i)).collect();

        let mut deadline_probes: Vec<(usize, WriteProbe, Instant)> = Vec::new();
        let mut probe_results: Vec<(usize, bool)> = Vec::new();
        let mut signalled: Option<Instant> = None;
        let mut ended: Option<Instant> = None;
        let mut status = None;
        while ended.is_none() {
            if matches!(spec.ioctl, Some(IoctlFault::Fail(_))) {
                if let Some(rc) = fs::read_to_string(self.file("rc")).ok().filter(|rc| rc.ends_with('\n')) {
                    status = Some(Ended { code: rc.trim().parse().ok(), signal: None });
                    ended = Some(Instant::now());
                    break;
                }
            } else if let Ok(Some(st)) = child.try_wait() {
                status = Some(Ended::of(st));
                ended = Some(Instant::now());
                break;
            }
            // (a) from the moment the snapshot command runs, the deadline clock is running.
            // (Not while the kernel refuses every FITHAW: then nothing can thaw.)
            if !matches!(spec.ioctl, Some(IoctlFault::Fail(_)))
                && deadline_probes.is_empty()
                && probe_results.is_empty()
                && self.file("snap.ready").exists()
            {
                let by = Instant::now() + MAX_FREEZE + SLACK;
                deadline_probes = ours.iter().map(|&i| (i, WriteProbe::start(self.mounts[i].path()), by)).collect();
            }
            if let Some(sig) = spec.signal.filter(|_| signalled.is_none()) {
                if self.reached(sig.phase) {
                    if let Some(db) = db.filter(|d| !d.killed_by_cell) {
                        if db.insert_within(Duration::from_millis(300)) {
                            failures.push(('b', format!("the database lock was not held during {}", sig.phase.name())));
                        }
                    }
                    // Under strace, the host is strace's child; its group is strace's.
                    let leader = Pid::from_raw(child.id() as i32);
                    let host = if spec.ioctl.is_some() { first_child(child.id()).map(Pid::from_raw).unwrap_or(leader) } else { leader };
                    let sent = if sig.group { killpg(leader, sig.signal) } else { kill(host, sig.signal) };
                    if let Err(e) = sent {
                        failures.push(('d', format!("could not send {:?}: {e}", sig.signal)));
                    }
                    signalled = Some(Instant::now());
                    if sig.signal != Signal::SIGKILL {
                        let _ = fs::write(self.file("go"), "");
                    }
                }
            }
            self.poll_probes(&mut deadline_probes, &mut probe_results);
            if started.elapsed() > SESSION_LIMIT {
                failures.push(('d', format!("the session did not end within {SESSION_LIMIT:?}; killed")));
                let _ = child.kill();
                status = child.wait().ok().map(Ended::of);
                ended = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut ended = ended.unwrap_or_else(Instant::now);
        if matches!(spec.ioctl, Some(IoctlFault::Fail(_))) {
            // The kernel refused every thaw: the truth is "still frozen", and
            // status must say so while the guardian keeps trying.
            match self.status() {
                Some(st) if st["session_running"] == true && st["frozen"].as_array().is_some_and(|a| !a.is_empty()) => {}
                st => failures.push(('d', format!("while FITHAW is refused, `quiesce status` must show the mount still frozen: {st:?}"))),
            }
            // The fault clears (strace goes, its tracees are detached): from
            // now on the deadlines run as after any session.
            let _ = child.kill();
            ended = Instant::now();
        }
        // Reaped above (`wait` returns the status it saw), or strace, killed.
        let _ = child.wait();
        let killed = expect.exit == Exit::Killed;
        // What the deadlines count from: the host's death, or the session's end.
        let from = if killed { signalled.unwrap_or(ended) } else { ended };

        // (a) Frozen: the probes started with the snapshot, then every mount of ours.
        while !deadline_probes.is_empty() {
            self.poll_probes(&mut deadline_probes, &mut probe_results);
            std::thread::sleep(Duration::from_millis(5));
        }
        for (i, ok) in probe_results {
            if !ok {
                failures.push((
                    'a',
                    format!("{} still frozen {:?} after the snapshot command started", self.mounts[i].path().display(), MAX_FREEZE + SLACK),
                ));
            }
        }
        for &i in &ours {
            let left = (from + MAX_FREEZE + SLACK).saturating_duration_since(Instant::now());
            if WriteProbe::start(self.mounts[i].path()).wait_done(left.max(Duration::from_millis(300))).is_none() {
                failures.push((
                    'a',
                    format!("{} still frozen {:?} after the session ended", self.mounts[i].path().display(), MAX_FREEZE + SLACK),
                ));
            }
        }
        for &i in &spec.left_frozen {
            if !crate::is_frozen(self.mounts[i].path()) {
                failures.push((
                    'a',
                    format!("{} should have been left frozen (by someone else, or its thaw refused)", self.mounts[i].path().display()),
                ));
            }
            let _ = Command::new("fsfreeze").arg("-u").arg(self.mounts[i].path()).status();
        }

        // (b) The database accepts writes again.
        if let Some(db) = db.filter(|d| !d.killed_by_cell) {
            let left = (from + MAX_FREEZE + SLACK).saturating_duration_since(Instant::now());
            if !db.insert_within(left.max(Duration::from_millis(300))) {
                failures.push(('b', format!("an INSERT still blocked {:?} after the session ended", MAX_FREEZE + SLACK)));
            }
        }

        // (c) Nothing left behind.
        let grace = if killed { HOOK_TIMEOUT.max(MAX_FREEZE) + SLACK } else { SLACK };
        let pids = self.pids();
        loop {
            let left: Vec<i32> = pids.iter().copied().filter(|&p| lingers(p)).collect();
            if left.is_empty() {
                break;
            }
            if Instant::now() >= from + grace {
                for p in left {
                    failures.push(('c', format!("pid {p} ({}) left behind {grace:?} after the session", describe(p))));
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = fs::write(self.file("go"), "");
        for &p in &pids {
            if alive(p) {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        }

        // (d) The report and the exit status.
        failures.extend(self.judge(expect, status, killed).into_iter().map(|m| ('d', m)));
        failures
    }

    fn poll_probes(&self, probes: &mut Vec<(usize, WriteProbe, Instant)>, results: &mut Vec<(usize, bool)>) {
        probes.retain_mut(|(i, p, by)| {
            if p.done() {
                results.push((*i, true));
                false
            } else if Instant::now() > *by {
                results.push((*i, false));
                false
            } else {
                true
            }
        });
    }

    fn judge(&self, expect: &Expect, status: Option<Ended>, killed: bool) -> Vec<String> {
        let mut bad = Vec::new();
        let stdout = fs::read_to_string(self.file("stdout")).unwrap_or_default();
        let stderr_tail = || {
            let e = fs::read_to_string(self.file("stderr")).unwrap_or_default();
            e.lines().last().unwrap_or("").chars().take(240).collect::<String>()
        };
        if killed {
            if status.and_then(|s| s.signal) != Some(libc::SIGKILL) {
                bad.push(format!("expected the host SIGKILLed, it ended with {status:?}"));
            }
            // The guardian may hold the session (and the freeze) a moment
            // longer than its host: poll until the deadline.
            let by = Instant::now() + MAX_FREEZE + SLACK;
            let mut last = self.status();
            while last.as_ref().is_none_or(|st| st["session_running"] != false || st["frozen"].as_array().is_some_and(|a| !a.is_empty()))
                && Instant::now() < by
            {
                std::thread::sleep(Duration::from_millis(100));
                last = self.status();
            }
            match last {
                Some(st) => {
                    if st["session_running"] != false {
                        bad.push(format!("`quiesce status` {:?} after the host died says a session runs: {st}", MAX_FREEZE + SLACK));
                    }
                    if st["frozen"].as_array().is_some_and(|a| !a.is_empty()) {
                        bad.push(format!("`quiesce status` {:?} after the host died lists frozen mounts: {st}", MAX_FREEZE + SLACK));
                    }
                }
                None => bad.push("`quiesce status --json` printed no JSON".into()),
            }
            return bad;
        }
        let code = status.and_then(|s| s.code);
        let Exit::Code(want) = expect.exit else { unreachable!("killed handled above") };
        if code != Some(want) {
            bad.push(format!("exit status {code:?}, expected {want} (stderr: {})", stderr_tail()));
        }
        let report: serde_json::Value = match serde_json::from_str(stdout.trim()) {
            Ok(r) => r,
            Err(e) => {
                bad.push(format!("no JSON report ({e}): {:?} (stderr: {})", stdout.chars().take(200).collect::<String>(), stderr_tail()));
                return bad;
            }
        };
        if report["consistency"] != expect.consistency {
            bad.push(format!("consistency {}, expected {}", report["consistency"], expect.consistency));
        }
        if report["snapshot_taken"] != expect.snapshot_taken {
            bad.push(format!("snapshot_taken {}, expected {}", report["snapshot_taken"], expect.snapshot_taken));
        }
        let codes: Vec<String> = report["errors"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["code"].as_str().map(String::from)).collect())
            .unwrap_or_default();
        for want in expect.codes {
            if !codes.iter().any(|c| c == want) {
                bad.push(format!("error {want} missing; errors: {}", report["errors"]));
            }
        }
        for c in &codes {
            if !expect.codes.contains(&c.as_str()) && !expect.may.contains(&c.as_str()) {
                bad.push(format!("unexpected error {c}: {}", report["errors"]));
            }
        }
        if !expect.says.is_empty() && !report["errors"].to_string().contains(expect.says) {
            bad.push(format!("no error says {:?}: {}", expect.says, report["errors"]));
        }
        let log = fs::read_to_string(self.file("log")).unwrap_or_default();
        if !log.lines().any(|l| l == "post") {
            bad.push(format!("the post script never ran (script log: {:?})", log.lines().collect::<Vec<_>>()));
        }
        bad
    }
}

/// The first child of `pid` (its only thread's), per /proc.
fn first_child(pid: u32) -> Option<i32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?.split_whitespace().next()?.parse().ok()
}

/// How the host ended: its exit code, or the signal that killed it.
#[derive(Clone, Copy, Debug)]
struct Ended {
    code: Option<i32>,
    signal: Option<i32>,
}

impl Ended {
    fn of(st: std::process::ExitStatus) -> Ended {
        use std::os::unix::process::ExitStatusExt;
        Ended { code: st.code(), signal: st.signal() }
    }
}

/// `(state, parent)` of a pid, if it exists.
fn state(pid: i32) -> Option<(String, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat.rsplit(')').next()?.split_whitespace();
    Some((rest.next()?.to_string(), rest.next()?.parse().ok()?))
}

/// Alive, or a zombie nobody but init can reap: a zombie whose parent is
/// init (here a sandbox's pid 1, which reaps lazily) is gone for good; one
/// whose parent lives is a child its parent forgot to wait for.
fn lingers(pid: i32) -> bool {
    match state(pid) {
        None => false,
        Some((s, parent)) => !(s == "Z" && parent == 1),
    }
}

/// `comm`, state and parent of a pid, for failure messages.
fn describe(pid: i32) -> String {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let comm = stat.split_once('(').and_then(|(_, r)| r.rsplit_once(')')).map(|(c, _)| c.to_string()).unwrap_or_default();
    let rest: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    format!("{comm}, state {}, parent {}", rest.first().unwrap_or(&"?"), rest.get(1).unwrap_or(&"?"))
}

/// One finished cell, for the table.
pub struct CellResult {
    pub fault: &'static str,
    pub phase: Phase,
    pub failures: Vec<(char, String)>,
    pub took: Duration,
}

impl CellResult {
    pub fn outcome(&self) -> String {
        if self.failures.is_empty() {
            return "ok".into();
        }
        let mut letters: Vec<char> = self.failures.iter().map(|f| f.0).collect();
        letters.sort();
        letters.dedup();
        format!("FAIL({})", letters.into_iter().map(String::from).collect::<Vec<_>>().join(","))
    }
}

/// The matrix as a Markdown table (faults × phases → outcome, `—` where the
/// fault cannot hit the phase), then every failure in full.
pub fn table(faults: &[&'static str], results: &[CellResult]) -> String {
    let mut out = String::from("| fault |");
    for p in PHASES {
        let _ = write!(out, " {} |", p.name());
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(PHASES.len()));
    out.push('\n');
    for f in faults {
        let _ = write!(out, "| {f} |");
        for p in PHASES {
            let cell = results.iter().find(|r| r.fault == *f && r.phase == p).map(CellResult::outcome).unwrap_or_else(|| "—".into());
            let _ = write!(out, " {cell} |");
        }
        out.push('\n');
    }
    for r in results.iter().filter(|r| !r.failures.is_empty()) {
        let _ = writeln!(out, "\n{} @ {} ({:.1} s):", r.fault, r.phase.name(), r.took.as_secs_f64());
        for (letter, what) in &r.failures {
            let _ = writeln!(out, "  ({letter}) {what}");
        }
    }
    out
}

/// Runs `cell`, turning a panic (a fixture that could not be set up) into a failure.
pub fn run_cell(fault: &'static str, phase: Phase, cell: impl FnOnce() -> Vec<(char, String)>) -> CellResult {
    let t = Instant::now();
    let failures = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(cell)) {
        Ok(f) => f,
        Err(e) => {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            vec![('!', format!("the cell panicked: {msg}"))]
        }
    };
    CellResult { fault, phase, failures, took: t.elapsed() }
}

/// Children of `pid` in state Z, per /proc.
pub fn zombie_children(pid: u32) -> usize {
    let Ok(dir) = fs::read_dir("/proc") else { return 0 };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|p| {
            let stat = fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let rest: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
            rest.first() == Some(&"Z") && rest.get(1).and_then(|pp| pp.parse::<u32>().ok()) == Some(pid)
        })
        .count()
}
