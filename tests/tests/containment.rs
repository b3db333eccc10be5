//! Every process quiesce starts is contained (issues 8.7, 9.7): whole
//! `quiesce snapshot` sessions on a real loop mount, with hooks, snapshot
//! commands and `exec` tools whose descendants escape their process group
//! (`setsid`). After the report nothing of them runs; a lock holder a pre
//! script leaves lives exactly until its post ran. The same scenarios run a
//! second time in a mount namespace without the cgroup2 file system, where
//! quiesce falls back to being a child subreaper.

use std::fs;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use quiesce_tests::plugins::install_plugin;
use quiesce_tests::*;

struct Fixture {
    mnt: LoopMount,
    s: Scratch,
    /// Run quiesce where no cgroup2 is mounted (the subreaper fallback).
    without_cgroup2: bool,
}

impl Fixture {
    fn new(name: &str, without_cgroup2: bool) -> Fixture {
        let s = Scratch::new(name);
        let mnt = LoopMount::new(&s.path, "mnt", Fs::Ext4);
        Fixture { mnt, s, without_cgroup2 }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.s.join(name)
    }

    fn script(&self, name: &str, body: &str) -> PathBuf {
        self.s.script(name, &format!("#!/bin/sh\n{body}"))
    }

    fn script_hook(&self, name: &str, pre: &str, post: &str, timeout_secs: u32) -> String {
        let pre = self.script(&format!("{name}-pre"), pre);
        let post = self.script(&format!("{name}-post"), post);
        format!("[[hook]]\nname = \"{name}\"\npre = \"{}\"\npost = \"{}\"\ntimeout_secs = {timeout_secs}\n", pre.display(), post.display())
    }

    fn session(&self, hooks: &[String], snapshot_cmd: &str) -> Command {
        let config = self.s.config("quiesce.toml", &hooks.join("\n"));
        let cmd = quiesce_snapshot(&self.s, &config, self.mnt.path(), snapshot_cmd);
        if self.without_cgroup2 {
            without_cgroup2(cmd)
        } else {
            cmd
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.file("quiesce.log")).unwrap_or_default()
    }

    /// The log names the mechanism the run used.
    fn assert_mechanism(&self) {
        let want = if self.without_cgroup2 { "process containment: child subreaper" } else { "process containment: cgroup v2" };
        assert!(self.log().contains(want), "log does not say {want:?}:\n{}", self.log());
    }
}

/// The same command, run in a private mount namespace where every cgroup2
/// mount is unmounted: the condition of a machine without a usable cgroup v2.
fn without_cgroup2(cmd: Command) -> Command {
    let mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split_once(" - ").is_some_and(|(_, r)| r.starts_with("cgroup2 ")))
        .filter_map(|l| l.split_whitespace().nth(4).map(String::from))
        .collect();
    assert!(!mounts.is_empty(), "no cgroup2 mount to hide");
    let mut wrapped = Command::new("unshare");
    wrapped.args(["--mount", "--propagation", "private", "--", "sh", "-c"]);
    wrapped.arg(format!(
        "for m in {}; do umount -l \"$m\" || exit 99; done; grep -q ' - cgroup2 ' /proc/self/mountinfo && exit 98; exec \"$@\"",
        mounts.join(" ")
    ));
    wrapped.arg("sh").arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    wrapped.stdin(Stdio::null());
    wrapped
}

/// Shell: is the process whose pid is in `pidfile` alive? `kill -0` would
/// also count a zombie (init here may be slow to reap killed orphans).
fn sh_alive(pidfile: &Path) -> String {
    format!("pid=$(cat {}); [ -e /proc/$pid ] && ! sed 's/.*) //' /proc/$pid/stat | grep -q '^Z'", pidfile.display())
}

/// Kills what a failed test leaves running (the pids it read).
struct Reaper(Vec<PathBuf>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for p in &self.0 {
            if let Some(pid) = fs::read_to_string(p).ok().and_then(|s| s.trim().parse().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Cgroups a quiesce process with this pid left behind in our cgroup (it
/// inherited ours): its containment parent `quiesce.<pid>` (or a cgroup of the
/// older flat layout), waiting up to `limit` for its watchdog to remove it.
fn leftover_cgroups(host_pid: i32, limit: Duration) -> Vec<PathBuf> {
    leftover_cgroups_in(&own_cgroup(), host_pid, limit)
}

fn leftover_cgroups_in(dir: &Path, host_pid: i32, limit: Duration) -> Vec<PathBuf> {
    let until = std::time::Instant::now() + limit;
    loop {
        let left = cgroups_in(dir, host_pid);
        if left.is_empty() || std::time::Instant::now() > until {
            return left;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// This test process's cgroup directory.
fn own_cgroup() -> PathBuf {
    let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = mi.lines().find(|l| l.split_once(" - ").is_some_and(|(_, r)| r.starts_with("cgroup2 "))).expect("no cgroup2 mount");
    let point = mount.split_whitespace().nth(4).unwrap();
    let own = fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    Path::new(point).join(path.trim_start_matches('/'))
}

/// The cgroups of quiesce process `host_pid` in `dir` (where it ran).
fn cgroups_in(dir: &Path, host_pid: i32) -> Vec<PathBuf> {
    let (base, prefix) = (format!("quiesce.{host_pid}"), format!("quiesce.{host_pid}."));
    let ours = |n: &str| n == base || n.starts_with(&prefix);
    fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).filter(|e| ours(&e.file_name().to_string_lossy())).map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn timed_out_pre_hook_leaves_nothing_running(without: bool) {
    let f = Fixture::new("contain-timeout", without);
    let gc = f.file("gc.pid");
    let host = f.file("host.pid");
    let _r = Reaper(vec![gc.clone()]);
    let pre = format!("echo $PPID > {}\n{}sleep 1000\n", host.display(), setsid_sleeper(&gc));
    let run = run_json(f.session(&[f.script_hook("slow", &pre, "exit 0\n", 1)], "true"));
    assert!(run.has_error("Pre-ScriptTimeout"), "{}", run.report);
    let gc = read_pid(&gc);
    // The report is out: the setsid'd grandchild must already be gone.
    assert!(!alive(gc), "setsid grandchild {gc} of a timed-out pre script survived the session");
    f.assert_mechanism();
    let host = read_pid(&host);
    assert_eq!(leftover_cgroups(host, Duration::from_secs(5)), Vec::<PathBuf>::new(), "quiesce left cgroups behind");
}

#[test]
fn timed_out_pre_script_setsid_grandchild_is_gone_when_the_report_is_out() {
    require!(Root);
    timed_out_pre_hook_leaves_nothing_running(false);
}

#[test]
fn timed_out_pre_script_setsid_grandchild_is_gone_without_cgroup2_too() {
    require!(Root);
    timed_out_pre_hook_leaves_nothing_running(true);
}

fn lock_holder_lives_until_post(without: bool) {
    let f = Fixture::new("contain-holder", without);
    let holder = f.file("holder.pid");
    let saw = f.file("post-saw");
    let _r = Reaper(vec![holder.clone()]);
    let pre = format!("{}exit 0\n", setsid_sleeper(&holder));
    let post = format!("if {}; then echo alive > {}; fi\n", sh_alive(&holder), saw.display());
    let run = run_json(f.session(&[f.script_hook("db", &pre, &post, 10)], "true"));
    assert_eq!(run.report["snapshot_taken"], true, "{}\n{}", run.report, run.stderr());
    assert_eq!(fs::read_to_string(&saw).unwrap_or_default(), "alive\n", "the lock holder did not live until post:\n{}", f.log());
    let holder = read_pid(&holder);
    assert!(!alive(holder), "lock holder {holder} outlived the session:\n{}", f.log());
    f.assert_mechanism();
}

#[test]
fn lock_holder_left_by_pre_lives_until_post_and_dies_with_the_session() {
    require!(Root);
    lock_holder_lives_until_post(false);
}

#[test]
fn lock_holder_left_by_pre_lives_until_post_and_dies_with_the_session_without_cgroup2() {
    require!(Root);
    lock_holder_lives_until_post(true);
}

#[test]
fn snapshot_command_setsid_grandchild_dies_when_the_command_is_abandoned() {
    require!(Root);
    let f = Fixture::new("contain-snap-abandon", false);
    let gc = f.file("gc.pid");
    let _r = Reaper(vec![gc.clone()]);
    let mut cmd = f.session(&[], &format!("{}exec sleep 1000", setsid_sleeper(&gc)));
    cmd.arg("--json").stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let gc = read_pid(&gc);
    // A signal makes the session give up on the snapshot: it drops the command.
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("Interrupted"), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(gone_within(gc, Duration::from_secs(5)), "setsid grandchild {gc} of the abandoned snapshot command survived");
}

#[test]
fn snapshot_command_leftovers_die_when_it_exits() {
    require!(Root);
    let f = Fixture::new("contain-snap-exit", false);
    let gc = f.file("gc.pid");
    let _r = Reaper(vec![gc.clone()]);
    let run = run_json(f.session(&[], &format!("{}exit 0", setsid_sleeper(&gc))));
    assert_eq!(run.report["snapshot_taken"], true, "{}\n{}", run.report, run.stderr());
    let gc = read_pid(&gc);
    assert!(gone_within(gc, Duration::from_secs(5)), "setsid grandchild {gc} of the snapshot command outlived it");
}

#[test]
fn snapshot_command_gets_the_clean_environment_scripts_get() {
    require!(Root);
    let f = Fixture::new("contain-snap-env", false);
    let env = f.file("env.txt");
    let mut cmd = f.session(
        &[],
        &format!("env > {e}; echo \"stdin=$(readlink /proc/self/fd/0)\" >> {e}; echo \"cwd=$(pwd)\" >> {e}", e = env.display()),
    );
    cmd.env("QUIESCE_TEST_CANARY", "leaked");
    let run = run_json(cmd);
    assert_eq!(run.report["snapshot_taken"], true, "{}\n{}", run.report, run.stderr());
    let out = fs::read_to_string(&env).unwrap();
    assert!(!out.contains("QUIESCE_TEST_CANARY"), "host environment leaked into the snapshot command:\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    let mnt = format!("QUIESCE_FROZEN_MOUNTS={}", f.mnt.path().display());
    for want in [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG=C.UTF-8",
        "HOME=/root",
        &mnt,
        "stdin=/dev/null",
        "cwd=/",
    ] {
        assert!(lines.contains(&want), "{want:?} missing from:\n{out}");
    }
    let allowed = ["PATH", "LANG", "HOME", "QUIESCE_SESSION_ID", "QUIESCE_FROZEN_MOUNTS", "PWD", "SHLVL", "OLDPWD", "_"];
    for line in lines.iter().filter(|l| !l.starts_with("stdin=") && !l.starts_with("cwd=")) {
        let name = line.split('=').next().unwrap_or("");
        assert!(allowed.contains(&name), "unexpected variable {line:?} in the snapshot command's environment:\n{out}");
    }
    assert!(lines.iter().any(|l| l.starts_with("QUIESCE_SESSION_ID=") && l.len() > "QUIESCE_SESSION_ID=".len()), "{out}");
}

fn exec_hook(f: &Fixture, tool: &Path) -> String {
    let plugin = install_plugin(&f.s, "misbehave");
    format!(
        "[[hook]]\nname = \"tool\"\nplugin = \"{}\"\nparams = {{ mode = \"exec\", exec = \"{t}\" }}\ngrants = [\"exec:{t}\"]\ntimeout_secs = 10\n",
        plugin.display(),
        t = tool.display()
    )
}

#[test]
fn exec_grant_tool_background_child_dies_when_the_call_returns() {
    require!(Root);
    let f = Fixture::new("contain-exec", false);
    let gc = f.file("gc.pid");
    let saw = f.file("saw");
    let _r = Reaper(vec![gc.clone()]);
    let tool = f.script("tool.sh", &format!("{}echo started\n", setsid_sleeper(&gc)));
    // Pre hooks run in order: this one looks right after the plugin's call returned.
    let check = format!("if {}; then echo alive > {s}; else echo dead > {s}; fi\n", sh_alive(&gc), s = saw.display());
    let run = run_json(f.session(&[exec_hook(&f, &tool), f.script_hook("check", &check, "exit 0\n", 10)], "true"));
    assert_eq!(run.report["snapshot_taken"], true, "{}\n{}", run.report, run.stderr());
    assert!(run.hook("tool", "pre")["message"].as_str().unwrap_or("").contains("status 0"), "{}", run.report);
    assert_eq!(fs::read_to_string(&saw).unwrap_or_default(), "dead\n", "the tool's background child outlived the exec call:\n{}", f.log());
    let gc = read_pid(&gc);
    assert!(!alive(gc), "the tool's setsid child {gc} outlived the session");
}

#[test]
fn granted_tool_refused_by_the_trust_check_is_reported_with_a_code() {
    require!(Root);
    let f = Fixture::new("contain-exec-refused", false);
    let ran = f.file("ran");
    let tool = f.file("tool.sh");
    // Group-writable: anyone in the group could change what runs as root.
    write_mode(&tool, &format!("#!/bin/sh\ntouch {}\n", ran.display()), 0o775);
    let run = run_json(f.session(&[exec_hook(&f, &tool)], "true"));
    assert!(run.has_error("GrantDenied"), "no GrantDenied for a refused tool: {}", run.report);
    let message = run.report["errors"].as_array().unwrap().iter().find(|e| e["code"] == "GrantDenied").unwrap()["message"].to_string();
    assert!(message.contains(&tool.display().to_string()) && message.contains("refused"), "{message}");
    assert!(!ran.exists(), "the refused tool ran");
}

#[test]
fn check_names_the_containment_mechanism() {
    require!(Root);
    for (without, want) in [(false, "process containment: cgroup v2"), (true, "process containment: child subreaper")] {
        let f = Fixture::new("contain-check", without);
        let config = f.s.config("quiesce.toml", "");
        let mut cmd = quiesce(&f.s);
        cmd.arg("check").arg("--config").arg(&config).arg("--mount").arg(f.mnt.path());
        let out = if without { without_cgroup2(cmd) } else { cmd }.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(want), "`quiesce check` does not say {want:?}:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    }
}

/// A cgroup of its own for one quiesce process, so that no other quiesce
/// started meanwhile (tests run in parallel) sees its cgroups: another host's
/// sweep would kill a dead host's leftovers and hide a missing watchdog.
/// Named outside the `quiesce.` namespace, so no sweep touches it.
struct Isolated(PathBuf);

impl Isolated {
    fn new() -> Isolated {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = own_cgroup().join(format!("qtest.{}.{n}", std::process::id()));
        fs::create_dir(&dir).unwrap();
        Isolated(dir)
    }

    /// `cmd` starts in this cgroup (its child writes `0` to `cgroup.procs` before exec).
    fn contain(&self, cmd: &mut Command) -> fs::File {
        let procs = fs::OpenOptions::new().write(true).open(self.0.join("cgroup.procs")).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&procs);
        // SAFETY: only write(2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 { Ok(()) } else { Err(std::io::Error::last_os_error()) })
        };
        procs
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        let _ = fs::write(self.0.join("cgroup.kill"), "1");
        for _ in 0..500 {
            for e in fs::read_dir(&self.0).into_iter().flatten().filter_map(Result::ok) {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    for c in fs::read_dir(e.path()).into_iter().flatten().filter_map(Result::ok) {
                        let _ = fs::remove_dir(c.path());
                    }
                    let _ = fs::remove_dir(e.path());
                }
            }
            if fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Where the session is when its host is killed.
#[derive(Clone, Copy, Debug)]
enum Stage {
    /// A pre script that blocks.
    Pre,
    /// The snapshot command, hanging while the mount is frozen.
    Snapshot,
}

/// How the host is killed.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// `kill -9 PID`.
    Host,
    /// `kill -9 -PGID`: the host's whole process group.
    Group,
}

/// A session whose pre script (or snapshot command) starts a `setsid`
/// grandchild and blocks; the quiesce process is SIGKILLed there. Returns
/// the host's pid, the blocked process's and the grandchild's pid files.
fn kill_host_while_blocked(f: &Fixture, cgroup: Option<&Isolated>, stage: Stage, how: Kill) -> (i32, PathBuf, PathBuf) {
    let gc = f.file("gc.pid");
    let blocked = f.file("blocked.pid");
    let block = format!("{}echo $$ > {}\nexec sleep 1000\n", setsid_sleeper(&gc), blocked.display());
    let mut cmd = match stage {
        Stage::Pre => f.session(&[f.script_hook("blocks", &block, "exit 0\n", 600)], "true"),
        Stage::Snapshot => f.session(&[], &block),
    };
    // Its own process group, so `kill -9 -PGID` does not hit this test.
    cmd.process_group(0).stdout(Stdio::null()).stderr(Stdio::null());
    let procs = cgroup.map(|c| c.contain(&mut cmd));
    let mut child = cmd.spawn().unwrap();
    drop(procs);
    let host = child.id() as i32;
    read_pid(&blocked);
    // (The log may not be flushed when the host is killed: look at the cgroup itself.)
    if let Some(c) = cgroup {
        assert_ne!(cgroups_in(&c.0, host), Vec::<PathBuf>::new(), "no quiesce.{host} cgroup while the {stage:?} process runs");
    }
    let target = match how {
        Kill::Host => Pid::from_raw(host),
        Kill::Group => Pid::from_raw(-host),
    };
    kill(target, Signal::SIGKILL).unwrap();
    let status = child.wait().unwrap();
    assert!(status.signal() == Some(9), "quiesce was not killed: {status:?}");
    (host, blocked, gc)
}

fn host_sigkill_leaves_nothing_running(stage: Stage, how: Kill) {
    let f = Fixture::new("contain-host-kill", false);
    let _r = Reaper(vec![f.file("gc.pid"), f.file("blocked.pid")]);
    let cgroup = Isolated::new();
    let (host, blocked, gc) = kill_host_while_blocked(&f, Some(&cgroup), stage, how);
    let (blocked, gc) = (read_pid(&blocked), read_pid(&gc));
    assert!(
        gone_within(blocked, Duration::from_secs(5)),
        "{stage:?} process {blocked} outlived its SIGKILLed host ({how:?}):\n{}",
        f.log()
    );
    assert!(gone_within(gc, Duration::from_secs(5)), "setsid grandchild {gc} outlived its SIGKILLed host ({how:?}):\n{}", f.log());
    let left = leftover_cgroups_in(&cgroup.0, host, Duration::from_secs(5));
    assert_eq!(left, Vec::<PathBuf>::new(), "the dead host's cgroups were not cleaned up");
}

#[test]
fn host_sigkill_during_a_pre_script_kills_the_script_and_its_setsid_grandchild() {
    require!(Root);
    host_sigkill_leaves_nothing_running(Stage::Pre, Kill::Host);
}

#[test]
fn process_group_sigkill_during_a_pre_script_kills_the_script_and_its_setsid_grandchild() {
    require!(Root);
    host_sigkill_leaves_nothing_running(Stage::Pre, Kill::Group);
}

#[test]
fn host_sigkill_during_a_hanging_snapshot_command_kills_it_and_its_setsid_grandchild() {
    require!(Root);
    host_sigkill_leaves_nothing_running(Stage::Snapshot, Kill::Host);
}

#[test]
fn process_group_sigkill_during_a_hanging_snapshot_command_kills_it_and_its_setsid_grandchild() {
    require!(Root);
    host_sigkill_leaves_nothing_running(Stage::Snapshot, Kill::Group);
}

/// Without cgroup v2 only the process quiesce started dies with it
/// (PDEATHSIG); a grandchild that left with `setsid` survives: the limit.
#[test]
fn host_sigkill_without_cgroup2_kills_the_pre_script_itself() {
    require!(Root);
    let f = Fixture::new("contain-host-kill-nocg", true);
    let _r = Reaper(vec![f.file("gc.pid"), f.file("blocked.pid")]);
    let (_, blocked, _) = kill_host_while_blocked(&f, None, Stage::Pre, Kill::Host);
    let blocked = read_pid(&blocked);
    assert!(gone_within(blocked, Duration::from_secs(5)), "pre script {blocked} outlived its SIGKILLed host:\n{}", f.log());
}
