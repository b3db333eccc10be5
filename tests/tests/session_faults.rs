//! Sessions that go wrong while file systems are frozen: the host killed,
//! signalled, outlived by its snapshot command, or racing someone else's
//! freeze. Whatever happens, nothing stays frozen (issue #3).

use std::fs;
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use quiesce_tests::*;
use serde_json::json;

/// `thaw --all` touches every file system, so it must not run while another
/// test in this binary holds one frozen on purpose.
static THAW_ALL: RwLock<()> = RwLock::new(());

struct Fixture {
    b: LoopMount,
    a: LoopMount,
    s: Scratch,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let s = Scratch::new(name);
        let a = LoopMount::new(&s.path, "a", Fs::Ext4);
        let b = LoopMount::new(&s.path, "b", Fs::Btrfs);
        Fixture { b, a, s }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.s.join(name)
    }

    fn config(&self) -> PathBuf {
        let log = self.file("log.txt");
        let pre = self.s.script("pre.sh", &format!("#!/bin/sh\necho pre >> {}", log.display()));
        let post = self.s.script("post.sh", &format!("#!/bin/sh\necho post >> {}", log.display()));
        legacy_config(&self.s, &pre, &post, json!({}))
    }

    fn log(&self) -> String {
        fs::read_to_string(self.file("log.txt")).unwrap_or_default()
    }

    fn session(&self, snapshot_cmd: &str, max_freeze: &str) -> std::process::Command {
        let mut cmd = quiesce(&self.s);
        cmd.arg("snapshot")
            .arg("--config")
            .arg(self.config())
            .arg("--mount")
            .arg(self.a.path())
            .arg("--mount")
            .arg(self.b.path())
            .arg("--max-freeze")
            .arg(max_freeze)
            .arg("--snapshot-cmd")
            .arg(snapshot_cmd);
        cmd
    }

    /// Starts a session whose snapshot command touches `snapping` and then
    /// sleeps; returns once the file systems are frozen.
    /// The snapshot command outlives a killed host; the test ends it.
    fn start_frozen_session(&self, max_freeze: &str, own_group: bool) -> (Child, PathBuf) {
        let pidfile = self.file("sleeper.pid");
        let cmd_text = format!("echo $$ > {}; touch {}; exec sleep 60", pidfile.display(), self.file("snapping").display());
        let mut cmd = self.session(&cmd_text, max_freeze);
        cmd.arg("--json").stdout(Stdio::piped()).stderr(Stdio::piped());
        if own_group {
            cmd.process_group(0);
        }
        let child = cmd.spawn().unwrap();
        let t = Instant::now();
        while !self.file("snapping").exists() {
            assert!(t.elapsed() < Duration::from_secs(20), "session never reached the snapshot");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(is_frozen(self.a.path()) && is_frozen(self.b.path()), "both mounts frozen during the snapshot");
        (child, pidfile)
    }
}

fn kill_sleeper(pidfile: &std::path::Path) {
    if let Ok(pid) = fs::read_to_string(pidfile).unwrap_or_default().trim().parse::<i32>() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

fn assert_writable_within(f: &Fixture, limit: Duration) {
    for m in [f.a.path(), f.b.path()] {
        let took = writable_within(m, limit);
        assert!(took.is_some(), "{} still frozen after {limit:?}", m.display());
    }
}

#[test]
fn host_sigkilled_while_frozen_thaws_within_deadline() {
    require!(Root);
    let _g = THAW_ALL.read().unwrap();
    let f = Fixture::new("kill-host");
    let (mut child, tag) = f.start_frozen_session("5", false);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    let _ = child.wait();
    // The guardian sees the host gone at once; the promise is deadline + 1 s.
    assert_writable_within(&f, Duration::from_secs(6));
    kill_sleeper(&tag);
}

#[test]
fn host_process_group_sigkilled_while_frozen_thaws_within_deadline() {
    require!(Root);
    let _g = THAW_ALL.read().unwrap();
    let f = Fixture::new("kill-group");
    let (mut child, tag) = f.start_frozen_session("5", true);
    killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    let _ = child.wait();
    assert_writable_within(&f, Duration::from_secs(6));
    kill_sleeper(&tag);
}

#[test]
fn sigterm_while_frozen_thaws_then_runs_post_hooks_and_reports() {
    require!(Root);
    let _g = THAW_ALL.read().unwrap();
    let f = Fixture::new("sigterm");
    let (child, tag) = f.start_frozen_session("30", false);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    kill_sleeper(&tag);
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["interrupted_by"], "SIGTERM");
    assert_eq!(report["consistency"], "None");
    assert_eq!(f.log(), "pre\npost\n", "post hooks ran after the signal");
    assert!(!is_frozen(f.a.path()) && !is_frozen(f.b.path()));
    assert!(report["freeze"]["window_ms"].as_f64().is_some(), "thaw was recorded");
}

#[test]
fn snapshot_outliving_max_freeze_is_thawed_on_time_and_abandoned() {
    require!(Root);
    let _g = THAW_ALL.read().unwrap();
    let f = Fixture::new("deadline");
    let started = f.file("started");
    let cmd = f.session(&format!("touch {}; sleep 4", started.display()), "1");
    let handle = std::thread::spawn(move || run_json(cmd));
    let t = Instant::now();
    while !started.exists() {
        assert!(t.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(10));
    }
    // Still inside the 4 s snapshot, the 1 s deadline has thawed everything.
    assert_writable_within(&f, Duration::from_secs(2));
    let run = handle.join().unwrap();
    // Past the deadline the session stops waiting: a snapshot finishing
    // unfrozen would only be crash-consistent, and the hooks' locks are held.
    assert!(run.has_error("SnapshotTimeout"), "{:?}", run.error_codes());
    assert_eq!(run.consistency(), "None");
    assert_eq!(run.code(), 4);
    assert_eq!(f.log(), "pre\npost\n");
}

#[test]
fn file_system_frozen_by_someone_else_is_reported_and_left_alone() {
    require!(Root);
    let _g = THAW_ALL.read().unwrap();
    let f = Fixture::new("foreign-freeze");
    sh(&format!("fsfreeze -f {}", f.b.path().display()));
    let run = run_json(f.session("true", "10"));
    let frozen_after = is_frozen(f.b.path());
    sh(&format!("fsfreeze -u {}", f.b.path().display()));
    assert!(frozen_after, "quiesce must not thaw a freeze it did not make");
    assert!(run.has_error("FsFreezeFailed"), "{:?}", run.error_codes());
    let msg = run.report["errors"].to_string();
    assert!(msg.contains("already frozen") && msg.contains(&f.b.path().display().to_string()), "{msg}");
    assert_eq!(run.consistency(), "CrashConsistent");
    assert!(!is_frozen(f.a.path()));
}

#[test]
fn status_shows_the_running_session_and_its_frozen_mounts() {
    require!(Root);
    let _g = THAW_ALL.read().unwrap();
    let f = Fixture::new("status");
    // A second mount of `a`'s file system: status shows it as skipped, with why.
    let bind = BindMount::new(f.a.path(), &f.file("a-again"));
    let (child, tag) = f.start_frozen_session("30", false);
    let out = quiesce(&f.s)
        .args(["status", "--json", "--mount"])
        .arg(f.a.path())
        .arg("--mount")
        .arg(f.b.path())
        .arg("--mount")
        .arg(&bind.mountpoint)
        .output()
        .unwrap();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let _ = child.wait_with_output();
    kill_sleeper(&tag);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["session_running"], true, "{st}");
    let frozen: Vec<String> = st["frozen"].as_array().unwrap().iter().map(|m| m["path"].as_str().unwrap().to_string()).collect();
    assert_eq!(frozen.len(), 2, "{st}");
    assert!(st["frozen"][0]["frozen_by"].as_str().unwrap().starts_with("this host's session"));
    assert_eq!(st["skipped"][0]["path"], bind.mountpoint.display().to_string(), "{st}");
    assert!(!st["skipped"][0]["reason"].as_str().unwrap().is_empty());
    // Afterwards: nothing running, nothing frozen.
    let out = quiesce(&f.s).args(["status", "--json", "--mount"]).arg(f.a.path()).output().unwrap();
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["session_running"], false);
    assert!(st["frozen"].as_array().unwrap().is_empty());
}

#[test]
fn thaw_is_idempotent() {
    require!(Root);
    let _g = THAW_ALL.read().unwrap();
    let f = Fixture::new("thaw-mount");
    sh(&format!("fsfreeze -f {}", f.a.path().display()));
    let first = quiesce(&f.s).args(["thaw", "--json", "--mount"]).arg(f.a.path()).output().unwrap();
    assert!(first.status.success());
    assert!(!is_frozen(f.a.path()));
    let second = quiesce(&f.s).args(["thaw", "--json", "--mount"]).arg(f.a.path()).output().unwrap();
    assert!(second.status.success(), "thawing twice is fine");
    let (a, b) = (String::from_utf8_lossy(&first.stdout), String::from_utf8_lossy(&second.stdout));
    assert!(a.contains("thawed") && b.contains("not frozen"), "{a}\n{b}");
}

#[test]
fn thaw_all_thaws_every_frozen_file_system() {
    require!(Root);
    let _g = THAW_ALL.write().unwrap();
    let f = Fixture::new("thaw-all");
    sh(&format!("fsfreeze -f {}", f.a.path().display()));
    sh(&format!("fsfreeze -f {}", f.b.path().display()));
    let out = quiesce(&f.s).args(["thaw", "--all"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(!is_frozen(f.a.path()) && !is_frozen(f.b.path()));
}

#[test]
fn session_over_nested_and_loop_backed_mounts_freezes_children_first() {
    require!(Root);
    let _g = THAW_ALL.read().unwrap();
    let s = Scratch::new("order");
    let outer = LoopMount::new(&s.path, "outer", Fs::Xfs);
    // An ext4 image living on the XFS mount, mounted elsewhere: freezing the
    // XFS first would deadlock the inner one's writeback.
    let inner = LoopMount::new(outer.path(), "inner", Fs::Ext4);
    let nested = LoopMount::new(outer.path(), "nested", Fs::Btrfs);
    let no_hooks = s.config("empty.toml", "");
    let mut cmd = quiesce(&s);
    cmd.arg("snapshot")
        .arg("--config")
        .arg(&no_hooks)
        .arg("--mount")
        .arg(outer.path())
        .arg("--mount")
        .arg(inner.path())
        .arg("--mount")
        .arg(nested.path())
        .arg("--snapshot-cmd")
        .arg("true");
    let run = run_json(cmd);
    drop(nested);
    drop(inner);
    drop(outer);
    assert_eq!(run.consistency(), "FileSystemConsistent", "no pre hook: frozen, but no application was quiesced");
    let order: Vec<&str> = run.report["freeze"]["mounts"].as_array().unwrap().iter().map(|m| m["fs_type"].as_str().unwrap()).collect();
    assert_eq!(order.len(), 3);
    assert_eq!(order.last(), Some(&"xfs"), "the outer file system is frozen last: {order:?}");
}

// ---- issue 8: a hung snapshot, a failing FITHAW, absurd durations, a log flood ----

/// A pre and a post script that append to `log.txt`, and the scripts' hook
/// in a native config with `extra` appended (for `[freeze]`/`[snapshot]`).
fn native_config(s: &Scratch, extra: &str) -> PathBuf {
    let log = s.join("log.txt");
    let pre = s.script("pre.sh", &format!("#!/bin/sh\necho pre >> {}", log.display()));
    let post = s.script("post.sh", &format!("#!/bin/sh\necho post >> {}", log.display()));
    s.config("q.toml", &format!("[[hook]]\nname = \"marker\"\npre = \"{}\"\npost = \"{}\"\n{extra}", pre.display(), post.display()))
}

fn process_alive(pid: i32) -> bool {
    // A zombie has exited; only its parent has not reaped it yet.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|st| st.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

/// A snapshot command that hangs: a `sleep 1000` child of the shell, in its
/// process group (the whole group must go), its pid written to `pidfile`.
fn hung_command(pidfile: &std::path::Path) -> String {
    format!("sleep 1000 & echo $! > {}; wait", pidfile.display())
}

/// The hung command's sleep is gone (waits, bounded, for the kill to land).
fn assert_killed(pidfile: &std::path::Path) {
    let pid: i32 = fs::read_to_string(pidfile).unwrap().trim().parse().unwrap();
    let t = Instant::now();
    while process_alive(pid) {
        assert!(t.elapsed() < Duration::from_secs(10), "the snapshot command's child (pid {pid}) survived");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn snapshot_command_that_hangs_is_killed_at_the_freeze_deadline_and_post_hooks_run() {
    require!(Root);
    let _g = THAW_ALL.read().unwrap();
    let f = Fixture::new("hung-snapshot");
    let pidfile = f.file("sleep.pid");
    let cmd = f.session(&hung_command(&pidfile), "2");
    let t = Instant::now();
    let run = run_json(cmd);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(300), "the session waited for the command ({took:?}), not for the deadline");
    assert_eq!(run.code(), 4, "{}", run.stderr());
    assert!(run.has_error("SnapshotTimeout"), "{:?}", run.error_codes());
    assert_eq!(run.report["snapshot_taken"], false);
    assert_eq!(run.consistency(), "None");
    assert_eq!(f.log(), "pre\npost\n", "post hooks ran after the abandoned snapshot");
    assert_killed(&pidfile);
    assert!(!is_frozen(f.a.path()) && !is_frozen(f.b.path()));
}

#[test]
fn snapshot_timeout_secs_bounds_the_wait_without_a_freeze() {
    require!(Root);
    let _g = THAW_ALL.read().unwrap();
    let s = Scratch::new("snapshot-timeout");
    let a = LoopMount::new(&s.path, "a", Fs::Ext4);
    let pidfile = s.join("sleep.pid");
    let config = native_config(&s, "[freeze]\nenabled = false\n[snapshot]\ntimeout_secs = 1\n");
    let mut cmd = quiesce(&s);
    cmd.arg("snapshot").arg("--config").arg(&config).arg("--mount").arg(a.path());
    cmd.arg("--snapshot-cmd").arg(hung_command(&pidfile));
    let t = Instant::now();
    let run = run_json(cmd);
    assert!(t.elapsed() < Duration::from_secs(300), "waited for the command, not for timeout_secs");
    assert_eq!(run.code(), 4, "{}", run.stderr());
    assert!(run.has_error("SnapshotTimeout"), "{:?}", run.error_codes());
    let msg = run.report["errors"].to_string();
    assert!(msg.contains("timeout_secs"), "{msg}");
    assert_eq!(run.report["freeze"]["enabled"], false);
    assert_eq!(fs::read_to_string(s.join("log.txt")).unwrap(), "pre\npost\n");
    assert_killed(&pidfile);
}

#[test]
fn absurd_max_freeze_on_the_command_line_is_a_usage_error_not_a_panic() {
    require!(Root);
    let s = Scratch::new("max-freeze-usage");
    let a = LoopMount::new(&s.path, "a", Fs::Ext4);
    for value in ["1e30", "1e19", "inf", "NaN", "0", "-5", "86401"] {
        let out = quiesce(&s)
            .args(["snapshot", "--snapshot-cmd", "true", "--json", &format!("--max-freeze={value}"), "--mount"])
            .arg(a.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--max-freeze {value}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains(value) && err.contains("86400"), "names the value and the range: {err}");
        assert!(out.stdout.is_empty(), "no session ran");
    }
    assert!(!is_frozen(a.path()));
}

#[test]
fn absurd_durations_in_the_config_are_named_and_never_panic() {
    require!(Root);
    let _g = THAW_ALL.read().unwrap();
    let s = Scratch::new("max-freeze-config");
    let a = LoopMount::new(&s.path, "a", Fs::Ext4);
    for (extra, field) in [
        // i64::MAX, the largest TOML integer: `Instant::now() + Duration::from_secs(it)` panics.
        ("[freeze]\nmax_freeze_secs = 9223372036854775807\n", "freeze.max_freeze_secs"),
        ("[snapshot]\ntimeout_secs = 9223372036854775807\n", "snapshot.timeout_secs"),
        ("timeout_secs = 9223372036854775807\n", "hook \\\"marker\\\": timeout_secs"),
    ] {
        let config = native_config(&s, extra);
        let mut cmd = quiesce(&s);
        cmd.arg("snapshot").arg("--config").arg(&config).arg("--mount").arg(a.path()).args(["--snapshot-cmd", "true"]);
        let run = run_json(cmd);
        assert!(!run.stderr().contains("panicked"), "{}", run.stderr());
        assert!(run.has_error("IncorrectJSONConfigFile"), "{extra}: {:?}", run.error_codes());
        let msg = run.report["errors"].to_string();
        assert!(msg.contains(field) && msg.contains("out of range") && msg.contains("86400"), "{msg}");
        // A config it cannot use means no hooks, so nothing was quiesced (the legacy rule).
        assert_eq!(run.code(), 3);
        assert!(!is_frozen(a.path()));
    }
}

#[test]
fn a_log_flood_while_frozen_stays_bounded_and_the_drop_is_counted() {
    require!(Root);
    let _g = THAW_ALL.read().unwrap();
    let f = Fixture::new("log-flood");
    let log = f.s.join("quiesce.log");
    // ~100 bytes per record: 200 000 records are ~20 MB, far past the 4 MiB held.
    let run = run_json(f.session("yes 'flooding the log while frozen' | head -n 200000", "120"));
    assert_eq!(run.code(), 0, "{:?}", run.report["errors"]);
    let warnings = run.report["warnings"].to_string();
    assert!(warnings.contains("dropped while frozen"), "{warnings}");
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains("log records (") && text.contains("dropped while frozen"), "one line says what was dropped");
    // Everything held is written on release: the file shows the cap held.
    let flood_lines = text.lines().filter(|l| l.contains("flooding the log")).count();
    assert!(flood_lines < 200_000, "records were dropped, not kept ({flood_lines})");
    assert!(text.len() < 12 << 20, "the log holds the capped buffer plus what came after the thaw: {} bytes", text.len());
}

/// A session run under strace, which makes the guardian's FITHAW fail.
///
/// The kernel never fails FITHAW on demand, and a mock guardian would prove
/// nothing, so the real binary runs under strace's syscall fault injection:
/// `-P MOUNT` limits tracing (and so injection, and its per-process counter)
/// to ioctls on the mount's fd, which only the guardian makes (the test
/// checks that: one process, FIFREEZE then FITHAW). ioctl number 1 is the
/// FIFREEZE, so `when=2` fails the first FITHAW and `when=2+` every one.
/// The guard kills strace (its tracees are detached and go on) and the mount
/// fixture thaws with `fsfreeze -u` whatever happens.
struct Injected {
    strace: Child,
    dir: PathBuf,
}

impl Injected {
    fn start(s: &Scratch, mount: &std::path::Path, when: &str, quiesce_args: &[String]) -> Injected {
        let dir = s.join("injected");
        fs::create_dir_all(&dir).unwrap();
        let mut cmd = std::process::Command::new("strace");
        cmd.args(["-f", "-qq", "-e", "trace=ioctl", "-P"])
            .arg(mount)
            .args(["-e", &format!("inject=ioctl:error=EIO:when={when}"), "-o"])
            .arg(dir.join("strace.out"))
            // The shell records quiesce's exit status: strace itself lives on
            // while a guardian it traces is still retrying.
            .args(["--", "/bin/sh", "-c", "\"$@\" > \"$Q_OUT/report.json\" 2> \"$Q_OUT/stderr.txt\"; echo $? > \"$Q_OUT/rc\"", "sh"])
            .arg(quiesce_bin())
            .args(quiesce_args)
            .env("Q_OUT", &dir)
            .env("QUIESCE_RUN_DIR", s.join("run"))
            .env("QUIESCE_LOG_FILE", s.join("quiesce.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Injected { strace: cmd.spawn().expect("strace"), dir }
    }

    /// quiesce's exit status and report, once it has exited.
    fn wait_quiesce(&self) -> (i32, serde_json::Value) {
        let t = Instant::now();
        let rc = loop {
            if let Ok(rc) = fs::read_to_string(self.dir.join("rc")) {
                if rc.ends_with('\n') {
                    break rc.trim().parse().unwrap();
                }
            }
            assert!(t.elapsed() < Duration::from_secs(300), "quiesce never finished");
            std::thread::sleep(Duration::from_millis(50));
        };
        let text = fs::read_to_string(self.dir.join("report.json")).unwrap();
        let err = fs::read_to_string(self.dir.join("stderr.txt")).unwrap_or_default();
        (rc, serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("no report ({e}): {text}\n{err}")))
    }

    /// The traced ioctls: (pid, request), to check only the guardian made them.
    fn ioctls(&self) -> Vec<(String, String)> {
        let text = fs::read_to_string(self.dir.join("strace.out")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let (pid, rest) = l.split_once(' ')?;
                let rest = rest.trim_start().strip_prefix("ioctl(")?;
                // `FITHAW)  = 0`, or `FITHAW <unfinished ...>` when strace interleaves lines.
                let request: String = rest.split(", ").nth(1)?.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                Some((pid.to_string(), request))
            })
            .collect()
    }
}

impl Injected {
    /// Ends the fault: strace is killed, which detaches its tracees.
    fn clear_fault(&mut self) {
        let _ = self.strace.kill();
        let _ = self.strace.wait();
    }
}

impl Drop for Injected {
    fn drop(&mut self) {
        self.clear_fault();
    }
}

fn injected_session_args(s: &Scratch, mount: &std::path::Path, max_freeze: &str) -> Vec<String> {
    let config = native_config(s, "");
    ["snapshot", "--json", "--snapshot-cmd", "true", "--max-freeze", max_freeze, "--config"]
        .iter()
        .map(|a| a.to_string())
        .chain([config.display().to_string(), "--mount".into(), mount.display().to_string()])
        .collect()
}

/// A session that ends with a mount still frozen leaves the session lock to
/// the guardian's copy alone (the same open file description). Once the
/// guardian lets go, the lock is free — also in a long-running service,
/// whose process lives on (it used to leak its fd and hold the lock for good).
#[test]
fn a_lock_left_to_the_guardian_is_free_once_the_guardian_lets_go() {
    require!(Root);
    let s = Scratch::new("lock-left");
    let run = quiesce::rundir::RunDir::new(s.join("run"));
    let lock = run.lock().expect("take the session lock");
    // Close-on-exec, or a process another test spawns meanwhile inherits it.
    // SAFETY: F_DUPFD_CLOEXEC of a valid fd; the copy is owned from here on.
    let guardian_copy = unsafe { std::os::fd::OwnedFd::from_raw_fd(libc::fcntl(lock.raw_fd(), libc::F_DUPFD_CLOEXEC, 0)) };
    lock.leave_to_guardian();
    assert!(run.session_running().unwrap(), "the guardian's copy still holds the lock");
    assert!(matches!(run.lock(), Err(quiesce::rundir::LockError::Busy { .. })), "a new session waits its turn");
    drop(guardian_copy);
    // Another test's child forked this moment holds every fd until it
    // closes them or execs: free within moments, not at once.
    let until = Instant::now() + Duration::from_secs(5);
    while run.session_running().unwrap() {
        assert!(Instant::now() < until, "the lock was never freed once the guardian let go");
        std::thread::sleep(Duration::from_millis(20));
    }
    run.lock().expect("the next session takes it");
}

#[test]
fn fithaw_that_keeps_failing_is_reported_and_status_shows_the_mount_still_frozen() {
    require!(Root);
    let _g = THAW_ALL.read().unwrap();
    let s = Scratch::new("fithaw-fails");
    let a = LoopMount::new(&s.path, "a", Fs::Ext4);
    let mut injected = Injected::start(&s, a.path(), "2+", &injected_session_args(&s, a.path(), "2"));
    let (rc, report) = injected.wait_quiesce();

    let ioctls = injected.ioctls();
    let pids: std::collections::BTreeSet<&String> = ioctls.iter().map(|(p, _)| p).collect();
    assert_eq!(pids.len(), 1, "only the guardian touches the mount: {ioctls:?}");
    assert_eq!(ioctls[0].1, "FIFREEZE", "{ioctls:?}");
    assert!(ioctls.len() > 2 && ioctls[1..].iter().all(|(_, r)| r == "FITHAW"), "it retried FITHAW: {ioctls:?}");

    assert_ne!(rc, 0);
    assert_eq!(rc, 3, "the snapshot was taken (while frozen), so 3, not 4: {report}");
    let errors = report["errors"].as_array().unwrap();
    let thaw = errors.iter().find(|e| e["code"] == "FsThawFailed").unwrap_or_else(|| panic!("{report}"));
    let msg = thaw["message"].as_str().unwrap();
    assert!(msg.contains(&a.path().display().to_string()) && msg.contains("EIO") && msg.contains("STILL FROZEN"), "{msg}");
    assert_eq!(report["freeze"]["window_ms"], serde_json::Value::Null, "no freeze window closed");
    assert_eq!(report["freeze"]["still_frozen"][0], a.path().display().to_string(), "{report}");
    assert_eq!(fs::read_to_string(s.join("log.txt")).unwrap(), "pre\npost\n", "post hooks still ran");

    // The guardian keeps trying and holds the session: status says so, for real.
    assert!(is_frozen(a.path()));
    let out = quiesce(&s).args(["status", "--json", "--mount"]).arg(a.path()).output().unwrap();
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["session_running"], true, "{st}");
    assert_eq!(st["session"]["phase"], "thaw-failed", "{st}");
    assert_eq!(st["frozen"][0]["path"], a.path().display().to_string(), "{st}");
    assert!(st["frozen"][0]["frozen_by"].as_str().unwrap().starts_with("this host's session"), "{st}");
    let busy = quiesce(&s).args(["snapshot", "--json", "--snapshot-cmd", "true", "--mount"]).arg(a.path()).output().unwrap();
    assert!(String::from_utf8_lossy(&busy.stdout).contains("BackupOperationInProgress"), "a new session waits its turn");

    // The fault clears (strace goes; its tracees are detached and go on):
    // the guardian's next slow retry thaws for real, it exits, the lock is free.
    injected.clear_fault();
    let t = Instant::now();
    loop {
        let out = quiesce(&s).args(["status", "--json", "--mount"]).arg(a.path()).output().unwrap();
        let st: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        if st["session_running"] == false {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "the guardian never let go: {st}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!is_frozen(a.path()), "thawed by the guardian once FITHAW worked again");
}

#[test]
fn fithaw_that_fails_once_is_retried_thawed_and_warned_about() {
    require!(Root);
    let _g = THAW_ALL.read().unwrap();
    let s = Scratch::new("fithaw-transient");
    let a = LoopMount::new(&s.path, "a", Fs::Ext4);
    let injected = Injected::start(&s, a.path(), "2", &injected_session_args(&s, a.path(), "30"));
    let (rc, report) = injected.wait_quiesce();
    let ioctls = injected.ioctls();
    assert_eq!(ioctls.iter().map(|(_, r)| r.as_str()).collect::<Vec<_>>(), ["FIFREEZE", "FITHAW", "FITHAW"], "{ioctls:?}");
    assert_eq!(rc, 0, "{report}");
    assert_eq!(report["consistency"], "AppConsistent");
    let warnings = report["warnings"].to_string();
    assert!(warnings.contains("FITHAW") && warnings.contains("EIO") && warnings.contains("1 time(s)"), "{warnings}");
    assert!(report["freeze"]["mounts"][0]["thaw_ms"].as_f64().is_some());
    assert!(!is_frozen(a.path()));
}
