//! Sessions with WebAssembly plugin hooks, mixed with script hooks, on real
//! loop mounts: the lock a plugin takes in pre is held through the snapshot
//! and released in post; a plugin that misbehaves ends within its limit with
//! the right code, and everything else still runs (issue #4).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quiesce_tests::plugins::{install_plugin, Lockd, SilentServer};
use quiesce_tests::*;

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

    /// A script hook that logs its phases, to show other hooks still run.
    fn script_hook(&self) -> String {
        let log = self.file("log.txt");
        let pre = self.s.script("app-pre", &format!("#!/bin/sh\necho app-pre >> {}\n", log.display()));
        let post = self.s.script("app-post", &format!("#!/bin/sh\necho app-post >> {}\n", log.display()));
        format!("[[hook]]\nname = \"app\"\npre = \"{}\"\npost = \"{}\"\n", pre.display(), post.display())
    }

    fn plugin_hook(&self, name: &str, plugin: &str, params: &str, grants: &[&str], extra: &str) -> String {
        let path = install_plugin(&self.s, plugin);
        let grants: Vec<String> = grants.iter().map(|g| format!("{g:?}")).collect();
        format!(
            "[[hook]]\nname = \"{name}\"\nplugin = \"{}\"\nparams = {{ {params} }}\ngrants = [{}]\n{extra}\n",
            path.display(),
            grants.join(", ")
        )
    }

    fn config(&self, hooks: &[String]) -> PathBuf {
        self.s.config("quiesce.toml", &hooks.join("\n"))
    }

    fn session(&self, config: &Path, snapshot_cmd: &str) -> std::process::Command {
        quiesce_snapshot(&self.s, config, self.mnt.path(), snapshot_cmd)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.file("log.txt")).unwrap_or_default()
    }
}

#[test]
fn plugin_lock_is_held_through_the_snapshot_and_released_in_post() {
    require!(Root, Plugins);
    let f = Fixture::new("plugin-lock");
    let mut lockd = Lockd::start("tcp:127.0.0.1:0");
    let target = lockd.target.clone();
    let config = f.config(&[
        f.script_hook(),
        f.plugin_hook("lockd", "lockd", &format!("target = {target:?}"), &[target.as_str()], "timeout_secs = 5"),
    ]);
    let started = f.file("snapping");
    let cmd = f.session(&config, &format!("touch {}; sleep 1", started.display()));
    let session = std::thread::spawn(move || run_json(cmd));
    let t = Instant::now();
    while !started.exists() {
        assert!(t.elapsed() < Duration::from_secs(30), "never reached the snapshot");
        std::thread::sleep(Duration::from_millis(10));
    }
    let during = lockd.request("STATUS");
    let run = session.join().unwrap();
    assert!(during.starts_with("LOCKED q-"), "the plugin's lock is held during the snapshot: {during}");
    assert_eq!(lockd.request("STATUS"), "UNLOCKED");
    // LOCK and UNLOCK came over one connection: the instance lived from pre to post.
    let locked = lockd.wait_for(" LOCK ", Duration::from_secs(5));
    let conn = locked.split_whitespace().nth(1).unwrap().to_string();
    let unlocked = lockd.wait_for(" UNLOCK", Duration::from_secs(5));
    assert_eq!(unlocked.split_whitespace().nth(1), Some(conn.as_str()), "{locked} / {unlocked}");
    assert_eq!(run.code(), 0, "{}\n{}", run.report, run.stderr());
    assert_eq!(run.consistency(), "AppConsistent");
    assert_eq!(run.hook("lockd", "pre")["kind"], "wasm");
    assert_eq!(run.hook("lockd", "post")["outcome"], "succeeded");
    assert_eq!(f.log(), "app-pre\napp-post\n", "script and plugin hooks mix in one session");
}

#[test]
fn lock_server_dying_before_the_freeze_lowers_the_label_with_quiesce_not_held() {
    require!(Root, Plugins);
    let f = Fixture::new("plugin-lock-lost");
    let lockd = Lockd::start("tcp:127.0.0.1:0");
    let target = lockd.target.clone();
    let plugin = f.plugin_hook("lockd", "lockd", &format!("target = {target:?}"), &[target.as_str()], "timeout_secs = 5");
    // After the plugin took its lock, the next hook's pre kills the lock
    // server (and waits until it is gone): the freeze and the snapshot still
    // happen, but the lock did not hold.
    let pid = lockd.pid();
    let killer = f.s.script(
        "kill-lockd",
        &format!("#!/bin/sh\nkill -9 {pid}\nwhile [ -n \"$(ls /proc/{pid}/fd 2>/dev/null)\" ]; do sleep 0.01; done\n"),
    );
    let config = f.config(&[plugin, format!("[[hook]]\nname = \"killer\"\npre = \"{}\"\n", killer.display())]);
    let run = run_json(f.session(&config, "true"));
    assert_eq!(run.code(), 3, "{}\n{}", run.report, run.stderr());
    assert_eq!(run.consistency(), "FileSystemConsistent", "{}", run.report);
    assert!(run.has_error("QuiesceNotHeld"), "{}", run.report);
    let message = run.report["errors"].as_array().unwrap().iter().find(|e| e["code"] == "QuiesceNotHeld").unwrap()["message"].to_string();
    assert!(message.contains(&target) && message.contains("lockd") && message.contains("before the freeze"), "{message}");
}

#[test]
fn lock_server_dying_while_frozen_leaves_the_label_app_consistent() {
    require!(Root, Plugins);
    // The disk was pinned while the lock held: a death afterwards changes
    // nothing in the snapshot (only the release in post fails).
    let f = Fixture::new("plugin-lock-lost-late");
    let lockd = Lockd::start("tcp:127.0.0.1:0");
    let target = lockd.target.clone();
    let plugin = f.plugin_hook("lockd", "lockd", &format!("target = {target:?}"), &[target.as_str()], "timeout_secs = 5");
    let config = f.config(&[f.script_hook(), plugin]);
    let run = run_json(f.session(&config, &format!("kill -9 {}; sleep 0.2", lockd.pid())));
    assert_eq!(run.consistency(), "AppConsistent", "{}", run.report);
    assert!(!run.has_error("QuiesceNotHeld"), "{}", run.report);
}

#[test]
fn plugin_trap_in_pre_drops_the_instance_and_its_connection() {
    require!(Root, Plugins);
    let f = Fixture::new("plugin-trap");
    let mut lockd = Lockd::start("tcp:127.0.0.1:0");
    let target = lockd.target.clone();
    // "trap-post" opens a connection in pre and keeps it; post panics while holding it.
    let config = f.config(&[
        f.script_hook(),
        f.plugin_hook("bad", "misbehave", &format!("mode = \"trap-post\", target = {target:?}"), &[target.as_str()], ""),
    ]);
    let run = run_json(f.session(&config, "true"));
    assert!(run.has_error("PluginTrapped"), "{:?}", run.error_codes());
    assert_eq!(run.consistency(), "AppConsistent", "a post failure does not change the label");
    lockd.wait_for("HELLO", Duration::from_secs(5));
    lockd.wait_for("closed", Duration::from_secs(5));
    assert_eq!(f.log(), "app-pre\napp-post\n");

    let config = f.config(&[f.script_hook(), f.plugin_hook("bad", "misbehave", "mode = \"trap-pre\"", &[], "")]);
    fs::write(f.file("log.txt"), "").unwrap();
    let run = run_json(f.session(&config, "true"));
    assert!(run.has_error("PluginTrapped"), "{:?}", run.error_codes());
    assert_eq!(run.consistency(), "FileSystemConsistent");
    let post = run.hook("bad", "post");
    assert_eq!(post["outcome"], "skipped");
    assert!(post["message"].as_str().unwrap().contains("dropped"), "{post}");
    assert_eq!(f.log(), "app-pre\napp-post\n", "the other hook's post still ran");
    assert!(!is_frozen(f.mnt.path()));
}

#[test]
fn plugin_blocked_on_a_silent_server_times_out_and_the_connection_closes() {
    require!(Root, Plugins);
    let f = Fixture::new("plugin-hang");
    let server = SilentServer::start();
    let target = server.target();
    let config = f.config(&[
        f.script_hook(),
        f.plugin_hook("hang", "misbehave", &format!("mode = \"block-read\", target = {target:?}"), &[target.as_str()], "timeout_secs = 1"),
    ]);
    let t = Instant::now();
    let run = run_json(f.session(&config, "true"));
    assert!(t.elapsed() < Duration::from_secs(15), "took {:?}", t.elapsed());
    assert!(run.has_error("PluginTimeout"), "{:?}", run.error_codes());
    assert_eq!(run.hook("hang", "pre")["outcome"], "timed_out");
    assert_eq!(server.next_event(Duration::from_secs(5)), Some("accepted"));
    assert_eq!(server.next_event(Duration::from_secs(5)), Some("eof"), "the dropped instance's connection closed");
    assert_eq!(run.consistency(), "FileSystemConsistent");
    assert_eq!(f.log(), "app-pre\napp-post\n");
}

#[test]
fn plugin_spinning_forever_is_stopped_and_retried_in_a_fresh_instance() {
    require!(Root, Plugins);
    let f = Fixture::new("plugin-loop");
    let config = f.config(&[f.plugin_hook("spin", "misbehave", "mode = \"loop\"", &[], "timeout_secs = 1\nretries = 1")]);
    let t = Instant::now();
    let run = run_json(f.session(&config, "true"));
    assert!(t.elapsed() < Duration::from_secs(15), "took {:?}", t.elapsed());
    assert!(run.has_error("PluginTimeout"), "{:?}", run.error_codes());
    assert_eq!(run.hook("spin", "pre")["attempts"], 2);
    assert_eq!(run.consistency(), "FileSystemConsistent");
}

#[test]
fn plugin_memory_bomb_is_stopped_at_its_limit() {
    require!(Root, Plugins);
    let f = Fixture::new("plugin-mem");
    let config = f.config(&[f.plugin_hook("bomb", "misbehave", "mode = \"memory-bomb\"", &[], "memory_mib = 16")]);
    let run = run_json(f.session(&config, "true"));
    assert!(run.has_error("PluginTrapped"), "{:?}", run.error_codes());
    assert!(run.report["errors"].to_string().contains("memory"), "{}", run.report["errors"]);
    assert_eq!(run.consistency(), "FileSystemConsistent");
}

#[test]
fn a_plugin_that_cannot_be_instantiated_within_its_memory_limit_fails_its_pre_and_others_still_run() {
    require!(Root, Plugins);
    // The one-shot makes plugin instances ahead, on its loading thread; one
    // that fails there is made again at pre, and that is what reports it.
    let f = Fixture::new("plugin-noinst");
    let config = f.config(&[f.script_hook(), f.plugin_hook("tiny", "noop", "", &[], "memory_mib = 1\non_failure = \"continue\"")]);
    let run = run_json(f.session(&config, "true"));
    assert!(run.has_error("PluginLoadFailed"), "{:?}", run.error_codes());
    assert!(run.report["errors"].to_string().contains("could not be instantiated"), "{}", run.report["errors"]);
    assert!(run.report["errors"].to_string().contains("memory"), "{}", run.report["errors"]);
    assert!(run.report["snapshot_taken"].as_bool().unwrap_or(false), "{}", run.report);
    assert_eq!(run.consistency(), "FileSystemConsistent");
    assert_eq!(f.log(), "app-pre\napp-post\n");
}

#[test]
fn ungranted_connect_and_file_read_are_denied_and_reported() {
    require!(Root, Plugins);
    let f = Fixture::new("plugin-deny");
    let secret = f.s.config("secret.txt", "hunter2");
    let config = f.config(&[
        f.plugin_hook("net", "misbehave", "mode = \"connect\", target = \"tcp:127.0.0.1:9\"", &[], ""),
        f.plugin_hook("file", "misbehave", &format!("mode = \"read-file\", path = {:?}", secret.display().to_string()), &[], ""),
    ]);
    let run = run_json(f.session(&config, "true"));
    let denied: Vec<String> = run.report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["code"] == "GrantDenied")
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    assert!(denied.iter().any(|m| m.contains("tcp:127.0.0.1:9")), "{denied:?}");
    assert!(denied.iter().any(|m| m.contains("secret.txt")), "{denied:?}");
    assert!(!run.report.to_string().contains("hunter2"), "the denied file's content never reached the plugin's output");
}

#[test]
fn malformed_and_wrong_version_plugins_are_refused_at_check() {
    require!(Root, Plugins);
    let f = Fixture::new("plugin-load");
    let config = f.config(&[f.plugin_hook("wrong", "wrong_version", "", &[], ""), f.plugin_hook("junk", "not_a_plugin", "", &[], "")]);
    let out = quiesce(&f.s)
        .env("QUIESCE_CACHE_DIR", f.file("cache"))
        .args(["check", "--json", "--config"])
        .arg(&config)
        .arg("--mount")
        .arg(f.mnt.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems: Vec<&serde_json::Value> = r["problems"].as_array().unwrap().iter().collect();
    assert_eq!(problems.len(), 2, "{r}");
    assert!(problems.iter().all(|p| p["code"] == "PluginLoadFailed"), "{r}");
    assert!(problems[0]["message"].as_str().unwrap().contains("0.1.0"), "says what was expected: {r}");
    // The session refuses them the same way and still takes its snapshot.
    let run = run_json(f.session(&config, "true"));
    assert_eq!(run.hook("wrong", "pre")["outcome"], "refused");
    assert!(run.has_error("PluginLoadFailed"));
    assert_eq!(run.consistency(), "FileSystemConsistent");
}

#[test]
fn check_shows_requested_grants_that_were_not_granted() {
    require!(Root, Plugins);
    let f = Fixture::new("plugin-check");
    let config = f.config(&[f.plugin_hook("lockd", "lockd", "", &[], "")]);
    let r = check_json(&f.s, &f.file("cache"), &config, f.mnt.path());
    assert_eq!(r["hooks"][0]["plugin"]["status"], "ok", "{r}");
    assert_eq!(r["hooks"][0]["plugin"]["not_granted"][0], "tcp:127.0.0.1:7390", "{r}");
}

#[test]
fn artifacts_are_stored_with_the_session_after_thaw() {
    require!(Root, Plugins);
    let f = Fixture::new("plugin-artifact");
    let config = f.config(&[f.plugin_hook("pg", "misbehave", "mode = \"artifact\"", &[], "")]);
    let run = run_json(f.session(&config, "true"));
    assert_eq!(run.code(), 0, "{}", run.report);
    let a = &run.report["artifacts"][0];
    assert_eq!(a["name"], "backup_label");
    let path = PathBuf::from(a["path"].as_str().unwrap());
    assert!(path.starts_with(f.file("state").join("sessions")), "{}", path.display());
    assert_eq!(fs::read(&path).unwrap(), b"START WAL LOCATION: 0/2000028");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o077, 0, "root-only");

    // They go with the point: forgetting it (a snapshot command without a
    // delete step) removes the session's artifact directory too.
    let session_dir = f.file("state").join("sessions").join(run.report["session_id"].as_str().unwrap());
    assert!(session_dir.is_dir());
    let out = quiesce(&f.s).args(["points", "delete", "--forget"]).arg(run.report["point"].as_str().unwrap()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!session_dir.exists(), "the artifacts went with the point");

    // A point that cannot be recorded (a catalog anyone may write to): the
    // snapshot exists, so its artifacts stay — and the error says where.
    let points_dir = f.file("state").join("points");
    fs::set_permissions(&points_dir, fs::Permissions::from_mode(0o777)).unwrap();
    let run = run_json(f.session(&config, "true"));
    fs::set_permissions(&points_dir, fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(run.error_codes(), ["PointNotRecorded"], "{}", run.report);
    let session_dir = f.file("state").join("sessions").join(run.report["session_id"].as_str().unwrap());
    assert!(session_dir.join("pg").join("backup_label").is_file(), "kept for the snapshot that exists");
    let msg = run.report["errors"][0]["message"].as_str().unwrap();
    assert!(msg.contains(&format!("artifacts stay in {}", session_dir.display())), "{msg}");

    // Without a snapshot there is no point to keep them with: not kept, and said so.
    let run = run_json(f.session(&config, "false"));
    assert!(run.report["artifacts"].as_array().is_none_or(|a| a.is_empty()), "{}", run.report);
    assert!(run.report["warnings"].to_string().contains("not kept, as no snapshot was taken"), "{}", run.report);
    assert!(!f.file("state").join("sessions").join(run.report["session_id"].as_str().unwrap()).exists());
}
