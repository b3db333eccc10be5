//! End-to-end sessions of the `quiesce` binary on real loop-mounted file
//! systems, with real scripts: the behaviour issue #2 promises.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use quiesce_tests::*;
use serde_json::json;

/// A scratch dir with one ext4 loop mount. Field order = drop order: the
/// mount goes before the directory it lives in.
struct Fixture {
    mnt: LoopMount,
    s: Scratch,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let s = Scratch::new(name);
        let mnt = LoopMount::new(&s.path, "mnt", Fs::Ext4);
        Fixture { mnt, s }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.s.join(name)
    }

    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.file(name)).unwrap_or_default()
    }

    /// A script that appends "<tag> <args>" to log.txt, then runs `body`.
    fn script(&self, name: &str, tag: &str, body: &str) -> PathBuf {
        let log = self.file("log.txt");
        self.s.script(name, &format!("#!/bin/sh\necho \"{tag} $QUIESCE_ATTEMPT $*\" >> {}\n{body}\n", log.display()))
    }

    /// A snapshot command that records whether the mount was frozen while it ran.
    fn probing_snapshot_cmd(&self) -> String {
        let m = self.mnt.path().display();
        let out = self.file("snap.result").display().to_string();
        format!(
            "( echo x > {m}/probe-$$ ) >/dev/null 2>&1 & p=$!; sleep 0.3; \
             if kill -0 $p 2>/dev/null; then echo frozen > {out}; else echo thawed > {out}; fi; \
             echo \"$QUIESCE_SESSION_ID $QUIESCE_FROZEN_MOUNTS\" > {out}.env"
        )
    }

    fn snapshot(&self, config: &Path, snapshot_cmd: &str) -> Run {
        let mut cmd = quiesce(&self.s);
        cmd.arg("snapshot").arg("--config").arg(config).arg("--mount").arg(self.mnt.path());
        if !snapshot_cmd.is_empty() {
            cmd.arg("--snapshot-cmd").arg(snapshot_cmd);
        }
        run_json(cmd)
    }

    fn pair(&self, pre_body: &str, post_body: &str, overrides: serde_json::Value) -> PathBuf {
        let pre = self.script("pre.sh", "pre", pre_body);
        let post = self.script("post.sh", "post", post_body);
        legacy_config(&self.s, &pre, &post, overrides)
    }
}

#[test]
fn legacy_session_runs_scripts_freezes_and_is_app_consistent() {
    require!(Root);
    let f = Fixture::new("app-consistent");
    let post_env = f.file("post.env");
    let config =
        f.pair("true", &format!("echo \"taken=$QUIESCE_SNAPSHOT_TAKEN $QUIESCE_CONSISTENCY\" > {}", post_env.display()), json!({}));
    let run = f.snapshot(&config, &f.probing_snapshot_cmd());
    assert_eq!(run.code(), 0, "{}\n{}", run.report, run.stderr());
    assert_eq!(run.consistency(), "AppConsistent");
    assert_eq!(run.report["snapshot_taken"], true);
    assert!(run.error_codes().is_empty(), "{:?}", run.error_codes());
    assert_eq!(f.read("snap.result").trim(), "frozen", "the snapshot command must see the mount frozen");
    let env = f.read("snap.result.env");
    assert!(env.contains(&run.report["session_id"].as_str().unwrap().to_string()));
    assert!(env.trim().ends_with(&f.mnt.path().display().to_string()), "QUIESCE_FROZEN_MOUNTS: {env}");
    assert_eq!(f.read("log.txt"), "pre 1 a1 a 2\npost 1 p1\n");
    assert_eq!(f.read("post.env").trim(), "taken=true AppConsistent");
    let pre = run.hook("ScriptRunner", "pre");
    assert_eq!(pre["kind"], "script");
    assert_eq!(pre["attempts"], 1);
    assert_eq!(pre["outcome"], "succeeded");
    assert!(pre["duration_ms"].as_f64().unwrap() > 0.0);
    let m = &run.report["freeze"]["mounts"][0];
    assert_eq!(m["path"], f.mnt.path().display().to_string());
    assert_eq!(m["fs_type"], "ext4");
    assert!(m["freeze_ms"].as_f64().unwrap() > 0.0);
    let window = run.report["freeze"]["window_ms"].as_f64().unwrap();
    let snap = run.report["snapshot"]["duration_ms"].as_f64().unwrap();
    assert!(window >= snap && snap >= 300.0, "window {window} snapshot {snap}");
    let host = run.report["freeze"]["host_ms"].as_f64().unwrap();
    let overhead = run.report["freeze"]["overhead_ms"].as_f64().unwrap();
    assert!(host <= overhead && (overhead - (window - snap)).abs() < 0.01, "host {host} overhead {overhead}");
    assert!(m["sync_ms"].as_f64().is_some(), "presync measured");
    assert!(!is_frozen(f.mnt.path()), "thawed afterwards");
    // Where the time went, step by step; the slow snapshot command is its own step.
    let steps = quiesce_tests::report_steps(&run.report);
    let names: Vec<&str> = steps.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["plan", "lock", "catalog", "probe", "presync", "guardian", "plugins", "pre", "freeze", "snapshot", "thaw", "post", "record"]
    );
    assert!(steps[9].1 >= snap, "the snapshot step ({} ms) holds the command's {snap} ms", steps[9].1);
    assert!(steps[7].1 >= pre["duration_ms"].as_f64().unwrap() - 0.01, "the pre step holds the pre script: {steps:?}");
}

#[test]
fn retries_rerun_the_pre_script_and_are_counted() {
    require!(Root);
    let f = Fixture::new("retries");
    // Fails on attempts 1 and 2, succeeds on 3.
    let config = f.pair("[ \"$QUIESCE_ATTEMPT\" -ge 3 ]", "true", json!({"preScriptNoOfRetries": 2}));
    let run = f.snapshot(&config, "true");
    assert_eq!(run.code(), 0, "{}", run.report);
    assert_eq!(run.hook("ScriptRunner", "pre")["attempts"], 3);
    assert_eq!(f.read("log.txt"), "pre 1 a1 a 2\npre 2 a1 a 2\npre 3 a1 a 2\npost 1 p1\n");

    // One retry is not enough: 2 attempts, then the session falls back.
    let f = Fixture::new("retries-exhausted");
    let config = f.pair("[ \"$QUIESCE_ATTEMPT\" -ge 3 ]", "true", json!({"preScriptNoOfRetries": 1}));
    let run = f.snapshot(&config, "true");
    assert_eq!(run.code(), 3);
    assert_eq!(run.hook("ScriptRunner", "pre")["attempts"], 2);
    assert_eq!(run.hook("ScriptRunner", "pre")["outcome"], "failed");
    assert!(run.has_error("Pre-ScriptExecutionFailed"));
    assert_eq!(run.consistency(), "FileSystemConsistent");
    assert_eq!(run.hook("ScriptRunner", "post")["outcome"], "succeeded", "post runs after a failed pre");
}

#[test]
fn pre_script_timeout_kills_whole_process_group() {
    require!(Root);
    let f = Fixture::new("timeout");
    let pids = f.file("pids");
    let config = f.pair(
        &format!("sleep 1000 & echo $! > {}; echo $$ >> {}; sleep 1000", pids.display(), pids.display()),
        "true",
        json!({"timeoutInSeconds": 1}),
    );
    let t = Instant::now();
    let run = f.snapshot(&config, "true");
    assert!(t.elapsed() < Duration::from_secs(8), "took {:?}", t.elapsed());
    assert!(run.has_error("Pre-ScriptTimeout"), "{:?}", run.error_codes());
    assert_eq!(run.hook("ScriptRunner", "pre")["outcome"], "timed_out");
    assert_eq!(run.consistency(), "FileSystemConsistent");
    assert_eq!(run.code(), 3);
    let pids: Vec<i32> = f.read("pids").split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(!alive(pid), "process {pid} of the timed-out script survived");
    }
}

#[test]
fn post_script_timeout_is_reported_without_changing_the_label() {
    require!(Root);
    let f = Fixture::new("post-timeout");
    let config = f.pair("true", "sleep 1000", json!({"timeoutInSeconds": 1}));
    let run = f.snapshot(&config, "true");
    assert!(run.has_error("Post-ScriptTimeout"));
    assert_eq!(run.consistency(), "AppConsistent", "a post failure does not change the label");
    assert_eq!(run.code(), 3, "taken, but with errors");
}

#[test]
fn ten_megabytes_of_output_do_not_block() {
    require!(Root);
    let f = Fixture::new("chatty");
    let config = f.pair(
        "head -c 10000000 /dev/zero | tr '\\0' 'x' | fold -w 100; head -c 1000000 /dev/zero >&2",
        "true",
        json!({"timeoutInSeconds": 30}),
    );
    let run = f.snapshot(&config, "true");
    assert_eq!(run.code(), 0, "{}", run.report);
    assert_eq!(run.hook("ScriptRunner", "pre")["outcome"], "succeeded");
}

#[test]
fn background_child_holding_stdout_does_not_delay_the_session() {
    require!(Root);
    let f = Fixture::new("mysql-pattern");
    let pidfile = f.file("holder.pid");
    let saw = f.file("post-saw");
    // The classic "keep the lock alive" pre-script: a child keeps stdout open.
    // It must live until post (which would release the lock), and no longer.
    let post = format!("kill -0 \"$(cat {})\" && echo alive > {}; true", pidfile.display(), saw.display());
    let config = f.pair(&format!("sleep 30 & echo $! > {}; exit 0", pidfile.display()), &post, json!({}));
    let t = Instant::now();
    let run = f.snapshot(&config, "true");
    assert!(t.elapsed() < Duration::from_secs(20), "waited for the background child: {:?}", t.elapsed());
    assert_eq!(run.code(), 0, "{}", run.report);
    let pid: i32 = f.read("holder.pid").trim().parse().unwrap();
    assert_eq!(f.read("post-saw"), "alive\n", "the runner killed the script's background child before post");
    assert!(!alive(pid), "the script's background child outlived the session");
}

#[test]
fn exit_code_two_is_a_warning() {
    require!(Root);
    let f = Fixture::new("warning");
    let config = f.pair("exit 2", "true", json!({}));
    let run = f.snapshot(&config, "true");
    assert_eq!(run.consistency(), "AppConsistent");
    assert_eq!(run.hook("ScriptRunner", "pre")["exit_code"], 2);
    assert!(!run.report["warnings"].as_array().unwrap().is_empty());
}

#[test]
fn script_in_world_writable_directory_is_refused_and_does_not_run() {
    require!(Root);
    let f = Fixture::new("world-writable");
    let dir = f.file("open");
    fs::create_dir(&dir).unwrap();
    sh(&format!("chmod 0777 {}", dir.display()));
    let pre = f.s.script("open/pre.sh", &format!("#!/bin/sh\ntouch {}/ran", f.s.path.display()));
    let post = f.script("post.sh", "post", "true");
    let config = legacy_config(&f.s, &pre, &post, json!({}));
    let run = f.snapshot(&config, "true");
    assert!(run.has_error("InsufficientPermissionforPre-Script"), "{:?}", run.error_codes());
    assert!(!f.file("ran").exists(), "a refused script must not run");
    assert_eq!(run.hook("ScriptRunner", "pre")["outcome"], "refused");
    assert_eq!(f.read("log.txt"), "", "the post script of a refused pair does not run either");
    assert_eq!(run.consistency(), "FileSystemConsistent");
    assert_eq!(run.code(), 3);
}

#[test]
fn bad_post_script_is_known_before_anything_runs() {
    require!(Root);
    let f = Fixture::new("bad-post");
    let pre = f.script("pre.sh", "pre", "true");
    let post = f.script("post.sh", "post", "true");
    sh(&format!("chmod 0722 {}", post.display()));
    let config = legacy_config(&f.s, &pre, &post, json!({"continueBackupOnFailure": false}));
    let run = f.snapshot(&config, &format!("touch {}", f.file("snapped").display()));
    assert!(run.has_error("InsufficientPermissionforPost-Script"), "{:?}", run.error_codes());
    assert_eq!(f.read("log.txt"), "", "pre must not run when its post cannot");
    assert!(!f.file("snapped").exists(), "continueBackupOnFailure=false: no snapshot");
    assert_eq!(run.consistency(), "None");
    assert_eq!(run.code(), 4);
    assert!(!is_frozen(f.mnt.path()));
}

#[test]
fn symlink_swapped_in_after_check_is_not_executed() {
    require!(Root);
    let f = Fixture::new("swap");
    let config = f.pair("true", "true", json!({}));
    let check = quiesce(&f.s).arg("check").arg("--config").arg(&config).arg("--mount").arg(f.mnt.path()).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    // The attacker replaces the checked script by a symlink to their own.
    let evil = f.s.script("evil.sh", &format!("#!/bin/sh\ntouch {}/pwned", f.s.path.display()));
    let pre = f.file("pre.sh");
    fs::remove_file(&pre).unwrap();
    std::os::unix::fs::symlink(&evil, &pre).unwrap();
    let run = f.snapshot(&config, "true");
    assert!(!f.file("pwned").exists(), "the swapped-in symlink was executed");
    assert!(run.has_error("InsufficientPermissionforPre-Script"), "{:?}", run.error_codes());
}

#[test]
fn missing_scripts_are_reported_as_not_found() {
    require!(Root);
    let f = Fixture::new("not-found");
    let post = f.script("post.sh", "post", "true");
    let config = legacy_config(&f.s, &f.file("nope.sh"), &post, json!({}));
    let run = f.snapshot(&config, "true");
    assert!(run.has_error("Pre-ScriptNotFound"), "{:?}", run.error_codes());
    let pre = f.script("pre.sh", "pre", "true");
    let config = legacy_config(&f.s, &pre, &f.file("nope.sh"), json!({}));
    let run = f.snapshot(&config, "true");
    assert!(run.has_error("Post-ScriptNotFound"), "{:?}", run.error_codes());
    assert_eq!(run.consistency(), "FileSystemConsistent");
}

#[test]
fn unsafe_or_broken_config_falls_back_without_hooks() {
    require!(Root);
    let f = Fixture::new("bad-config");
    let config = f.pair("true", "true", json!({}));
    sh(&format!("chmod 0644 {}", config.display()));
    let run = f.snapshot(&config, "true");
    assert!(run.has_error("InsufficientPermissionforConfig"), "{:?}", run.error_codes());
    assert_eq!(f.read("log.txt"), "", "scripts named by an untrusted config must not run");
    assert_eq!(run.consistency(), "FileSystemConsistent");
    assert_eq!(run.code(), 3);

    let broken = f.s.config("broken.json", "{ \"preScriptLocation\": ");
    let run = f.snapshot(&broken, "true");
    assert!(run.has_error("IncorrectJSONConfigFile"), "{:?}", run.error_codes());
    assert_eq!(run.consistency(), "FileSystemConsistent");
}

#[test]
fn failing_pre_with_continue_false_takes_no_snapshot_but_runs_post() {
    require!(Root);
    let f = Fixture::new("no-continue");
    let config = f.pair("exit 1", "true", json!({"continueBackupOnFailure": false}));
    let run = f.snapshot(&config, &format!("touch {}", f.file("snapped").display()));
    assert!(!f.file("snapped").exists());
    assert_eq!(run.consistency(), "None");
    assert_eq!(run.report["snapshot_taken"], false);
    assert_eq!(run.code(), 4);
    assert_eq!(run.hook("ScriptRunner", "post")["outcome"], "succeeded");
    assert!(run.report["freeze"]["mounts"].as_array().unwrap().is_empty(), "nothing frozen");
}

#[test]
fn freeze_disabled_takes_snapshot_unfrozen() {
    require!(Root);
    let f = Fixture::new("no-freeze");
    let config = f.pair("true", "true", json!({"fsFreezeEnabled": false}));
    let run = f.snapshot(&config, &f.probing_snapshot_cmd());
    assert_eq!(f.read("snap.result").trim(), "thawed");
    assert_eq!(run.consistency(), "AppConsistent");
    assert_eq!(run.report["freeze"]["enabled"], false);
    assert_eq!(run.code(), 0);
}

#[test]
fn failed_snapshot_command_is_none_and_post_learns_it() {
    require!(Root);
    let f = Fixture::new("snap-fails");
    let env = f.file("post.env");
    let config = f.pair("true", &format!("echo $QUIESCE_SNAPSHOT_TAKEN > {}", env.display()), json!({}));
    let run = f.snapshot(&config, "exit 7");
    assert!(run.has_error("SnapshotFailed"));
    assert_eq!(run.consistency(), "None");
    assert_eq!(run.code(), 4);
    assert_eq!(f.read("post.env").trim(), "false");
    assert!(!is_frozen(f.mnt.path()));
}

#[test]
fn without_provider_hooks_and_freeze_run_and_report_says_no_snapshot() {
    require!(Root);
    let f = Fixture::new("no-provider");
    let config = f.pair("true", "true", json!({}));
    let run = f.snapshot(&config, "");
    assert_eq!(run.report["snapshot_taken"], false);
    assert_eq!(run.consistency(), "None");
    assert!(run.report["snapshot"]["message"].as_str().unwrap().contains("no snapshot"));
    assert_eq!(run.report["freeze"]["mounts"].as_array().unwrap().len(), 1, "still froze and thawed");
    assert_eq!(f.read("log.txt"), "pre 1 a1 a 2\npost 1 p1\n");
}

#[test]
fn second_concurrent_session_is_refused_and_touches_nothing() {
    require!(Root);
    let f = Fixture::new("concurrent");
    let config = f.pair("true", "true", json!({}));
    let mut first = quiesce(&f.s);
    first
        .arg("snapshot")
        .arg("--config")
        .arg(&config)
        .arg("--mount")
        .arg(f.mnt.path())
        .arg("--snapshot-cmd")
        .arg(format!("touch {}; sleep 3", f.file("first-snapping").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut first = first.spawn().unwrap();
    let t = Instant::now();
    while !f.file("first-snapping").exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = f.snapshot(&config, &format!("touch {}", f.file("second-snapped").display()));
    assert!(second.has_error("BackupOperationInProgress"), "{:?}", second.error_codes());
    assert_eq!(second.code(), 4);
    assert!(second.report["hooks"].as_array().unwrap().is_empty());
    // It stopped at the lock; the steps say so.
    let steps: Vec<String> = quiesce_tests::report_steps(&second.report).into_iter().map(|(n, _)| n).collect();
    assert_eq!(steps, ["plan", "lock", "post", "record"]);
    assert!(first.wait().unwrap().success());
    assert!(!f.file("second-snapped").exists());
    assert_eq!(f.read("log.txt"), "pre 1 a1 a 2\npost 1 p1\n", "only the first session's scripts ran");
}

#[test]
fn lock_held_by_a_process_refuses_until_that_process_dies() {
    require!(Root);
    let f = Fixture::new("stale-lock");
    let run_dir = f.file("run");
    fs::create_dir_all(&run_dir).unwrap();
    let lock = run_dir.join("session.lock");
    let config = f.pair("true", "true", json!({}));
    // Another holder of the session lock (as a running session would be);
    // --no-fork: the lock lives in the one process the test kills.
    let mut holder = std::process::Command::new("flock").arg("--no-fork").arg("-x").arg(&lock).arg("sleep").arg("60").spawn().unwrap();
    let t = Instant::now();
    while fs::metadata(&lock).is_err() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let refused = f.snapshot(&config, "true");
    // The holder dies without cleaning up: its lock file stays, its lock does not.
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(lock.exists(), "the stale lock file is still there");
    let run = f.snapshot(&config, "true");
    assert!(refused.has_error("BackupOperationInProgress"), "{:?}", refused.error_codes());
    assert_eq!(run.code(), 0, "a dead holder's lock must not block: {:?}", run.error_codes());
}

#[test]
fn check_lists_the_plan_and_runs_nothing() {
    require!(Root);
    let f = Fixture::new("check");
    let config = f.pair("true", "true", json!({}));
    let out = quiesce(&f.s).arg("check").arg("--config").arg(&config).arg("--mount").arg(f.mnt.path()).arg("--json").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["ok"], true);
    assert_eq!(r["hooks"][0]["pre"]["status"], "ok");
    assert_eq!(r["freeze"]["targets"][0]["path"], f.mnt.path().display().to_string());
    assert_eq!(f.read("log.txt"), "", "check runs no hook");

    // A problem is found and named, still without running anything.
    sh(&format!("chmod 0777 {}", f.file("post.sh").display()));
    let out = quiesce(&f.s).arg("check").arg("--config").arg(&config).arg("--mount").arg(f.mnt.path()).arg("--json").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["problems"][0]["code"], "InsufficientPermissionforPost-Script");
}

#[test]
fn native_config_orders_hooks_and_applies_each_policy() {
    require!(Root);
    let f = Fixture::new("native");
    let a_pre = f.script("a-pre", "a-pre", "true");
    let a_post = f.script("a-post", "a-post", "true");
    let b_pre = f.script("b-pre", "b-pre", "true");
    let b_post = f.script("b-post", "b-post", "true");
    let c_pre = f.script("c-pre", "c-pre", "exit 1");
    let c_post = f.script("c-post", "c-post", "true");
    let config = f.s.config(
        "quiesce.toml",
        &format!(
            r#"
[freeze]
max_freeze_secs = 30

[[hook]]
name = "a"
pre = "{}"
post = "{}"
timeout_secs = 5

[[hook]]
name = "b"
pre = "{}"
post = "{}"
pre_args = ["x", ""]

[[hook]]
name = "c"
pre = "{}"
post = "{}"
retries = 1
on_failure = "continue"
"#,
            a_pre.display(),
            a_post.display(),
            b_pre.display(),
            b_post.display(),
            c_pre.display(),
            c_post.display()
        ),
    );
    let run = f.snapshot(&config, "true");
    assert_eq!(f.read("log.txt"), "a-pre 1 \nb-pre 1 x \nc-pre 1 \nc-pre 2 \nc-post 1 \nb-post 1 \na-post 1 \n");
    assert_eq!(run.consistency(), "FileSystemConsistent");
    assert_eq!(run.report["config"]["format"], "native");

    // With c aborting first in line, later hooks never start and have no post.
    let config2 = f.s.config(
        "abort.toml",
        &format!(
            "[[hook]]\nname = \"c\"\npre = \"{}\"\npost = \"{}\"\non_failure = \"abort\"\n\n[[hook]]\nname = \"a\"\npre = \"{}\"\npost = \"{}\"\n",
            c_pre.display(),
            c_post.display(),
            a_pre.display(),
            a_post.display()
        ),
    );
    fs::write(f.file("log.txt"), "").unwrap();
    let run = f.snapshot(&config2, &format!("touch {}", f.file("snapped").display()));
    assert_eq!(f.read("log.txt"), "c-pre 1 \nc-post 1 \n");
    assert_eq!(run.hook("a", "pre")["outcome"], "skipped");
    assert_eq!(run.consistency(), "None");
    assert!(!f.file("snapped").exists());
}

/// A one-shot session freezing the fixture's mount, with a 0.2 s snapshot,
/// `sink` pointing one of its log sinks onto that mount: it succeeds, and
/// well before any max-freeze would have ended a hang.
fn snapshot_with_a_sink_on_the_frozen_mount(f: &Fixture, sink: impl FnOnce(&mut std::process::Command)) -> Run {
    let config = f.pair("true", "true", json!({}));
    let mut cmd = quiesce(&f.s);
    sink(&mut cmd);
    cmd.arg("snapshot").arg("--config").arg(&config).arg("--mount").arg(f.mnt.path()).arg("--snapshot-cmd").arg("sleep 0.2");
    let t = Instant::now();
    let run = run_json(cmd);
    assert_eq!(run.code(), 0, "{}\n{}", run.report, run.stderr());
    assert!(t.elapsed() < Duration::from_secs(10));
    run
}

#[test]
fn log_file_on_the_frozen_mount_does_not_hang_the_session() {
    require!(Root);
    let f = Fixture::new("log-on-frozen");
    let log = f.mnt.path().join("quiesce.log");
    snapshot_with_a_sink_on_the_frozen_mount(&f, |cmd| {
        cmd.env("QUIESCE_LOG_FILE", &log);
    });
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains("froze"), "records from the frozen window reach the log after thaw:\n{text}");
    assert!(text.contains("snapshot taken"));
}

/// stderr on the frozen mount, the log file elsewhere: nothing is written to
/// stderr until the thaw (the gate holds every sink, whatever the log file's
/// file system), so the session neither hangs nor outlives its freeze.
#[test]
fn stderr_on_the_frozen_mount_does_not_hang_the_session() {
    require!(Root);
    let f = Fixture::new("stderr-on-frozen");
    let stderr = f.mnt.path().join("stderr.txt");
    let run = snapshot_with_a_sink_on_the_frozen_mount(&f, |cmd| {
        cmd.stderr(fs::File::create(&stderr).unwrap());
    });
    assert_eq!(run.report["freeze"]["auto_thawed"], serde_json::Value::Null, "{}", run.report);
    let text = fs::read_to_string(&stderr).unwrap();
    assert!(text.contains("froze") && text.contains("snapshot taken"), "the held records reach stderr after thaw:\n{text}");
}

#[test]
fn mount_that_is_not_a_mount_point_is_a_usage_error() {
    require!(Root);
    let f = Fixture::new("bad-mount");
    let config = f.pair("true", "true", json!({}));
    let out = quiesce(&f.s).arg("snapshot").arg("--config").arg(&config).arg("--mount").arg(f.s.path.join("not-a-mount")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-a-mount"));
    assert_eq!(f.read("log.txt"), "");
}

#[test]
fn unknown_arguments_are_usage_errors() {
    require!(Root);
    let s = Scratch::new("usage");
    let out = quiesce(&s).args(["snapshot", "--max-freeze", "soon"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = quiesce(&s).args(["frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn failing_post_script_is_an_error_but_keeps_the_label() {
    require!(Root);
    let f = Fixture::new("post-fails");
    let config = f.pair("true", "echo 'cannot unlock' >&2; exit 1", json!({"postScriptNoOfRetries": 1}));
    let run = f.snapshot(&config, "true");
    assert!(run.has_error("Post-ScriptExecutionFailed"), "{:?}", run.error_codes());
    assert_eq!(run.hook("ScriptRunner", "post")["attempts"], 2);
    assert!(run.report["errors"].to_string().contains("cannot unlock"), "the script's last output is in the message");
    assert_eq!(run.consistency(), "AppConsistent");
    assert_eq!(run.code(), 3);
}

#[test]
fn unusable_run_directory_is_reported_and_nothing_runs() {
    require!(Root);
    let f = Fixture::new("bad-run-dir");
    let config = f.pair("true", "true", json!({}));
    fs::write(f.file("not-a-dir"), "").unwrap();
    let mut cmd = quiesce(&f.s);
    cmd.env("QUIESCE_RUN_DIR", f.file("not-a-dir"))
        .arg("snapshot")
        .arg("--config")
        .arg(&config)
        .arg("--mount")
        .arg(f.mnt.path())
        .arg("--snapshot-cmd")
        .arg("true");
    let run = run_json(cmd);
    assert!(run.has_error("IncorrectPluginhostFile"), "{:?}", run.error_codes());
    assert_eq!(run.code(), 4);
    assert_eq!(f.read("log.txt"), "");
}
