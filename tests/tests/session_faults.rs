//! Sessions that go wrong while file systems are frozen: the host killed,
//! signalled, outlived by its snapshot command, or racing someone else's
//! freeze. Whatever happens, nothing stays frozen (issue #3).

use std::fs;
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
fn snapshot_outliving_max_freeze_is_thawed_on_time_and_not_labelled_frozen() {
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
    assert!(run.has_error("FsFreezeTimeout"), "{:?}", run.error_codes());
    assert_eq!(run.consistency(), "CrashConsistent", "the snapshot finished unfrozen");
    assert_eq!(run.code(), 3);
    assert!(run.report["freeze"]["auto_thawed"].as_str().unwrap().contains("deadline"));
    assert_eq!(f.log(), "pre\npost\n");
}

#[test]
fn file_system_frozen_by_someone_else_is_reported_and_left_alone() {
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
