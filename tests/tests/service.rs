//! `quiesce serve` and its clients against the real binary, real loop file
//! systems and real hook scripts and plugins (issue 10): the two-phase
//! session is the one-shot session cut in two, the service never forgets a
//! begun session, and nothing a client does stalls another or leaves a file
//! system frozen. Every native `begin` here names its loop mount.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use quiesce_tests::plugins::{install_plugin, Lockd};
use quiesce_tests::service::{error_code, Conn, Service};
use quiesce_tests::*;
use serde_json::{json, Value};

/// A scratch dir with one loop mount, and the hooks and requests these tests share.
struct Fixture(MountedScratch);

impl std::ops::Deref for Fixture {
    type Target = MountedScratch;
    fn deref(&self) -> &MountedScratch {
        &self.0
    }
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        Fixture(MountedScratch::new(name))
    }

    fn log(&self) -> String {
        self.read("log.txt")
    }

    /// A script hook "app" whose pre and post append to log.txt (post with
    /// QUIESCE_SNAPSHOT_TAKEN); `pre_body` runs after the pre's line.
    fn hook(&self, pre_body: &str, on_failure: &str) -> String {
        let log = self.file("log.txt");
        let pre = self.s.script("app-pre", &format!("#!/bin/sh\necho pre >> {}\n{pre_body}\n", log.display()));
        let post = self.s.script("app-post", &format!("#!/bin/sh\necho \"post $QUIESCE_SNAPSHOT_TAKEN\" >> {}\n", log.display()));
        format!(
            "[[hook]]\nname = \"app\"\npre = \"{}\"\npost = \"{}\"\non_failure = \"{on_failure}\"\ntimeout_secs = 20\n",
            pre.display(),
            post.display()
        )
    }

    /// The lockd example plugin as hook `name`, locking `target`: its path and the config.
    fn lockd_config(&self, name: &str, target: &str) -> (PathBuf, PathBuf) {
        let plugin = install_plugin(&self.s, "lockd");
        let hook = format!(
            "[[hook]]\nname = \"{name}\"\nplugin = \"{}\"\nparams = {{ target = {target:?} }}\ngrants = [{target:?}]\ntimeout_secs = 5\n",
            plugin.display()
        );
        (plugin, self.config(&hook))
    }

    fn config(&self, text: &str) -> PathBuf {
        self.s.config("quiesce.toml", text)
    }

    fn mount(&self) -> String {
        self.mnt.path().display().to_string()
    }

    fn begin(&self, svc: &Service, freeze: &str) -> Value {
        let reply = svc.request(json!({"v":1,"id":1,"op":"begin","freeze":freeze,"mounts":[self.mount()]}));
        assert_eq!(reply["ok"], true, "{reply}\n{}", svc.log());
        reply
    }
}

fn end(svc: &Service, extra: Value) -> Value {
    let mut req = json!({"v":1,"id":2,"op":"end"});
    if let (Some(r), Some(e)) = (req.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    let reply = svc.request(req);
    assert_eq!(reply["ok"], true, "{reply}\n{}", svc.log());
    reply
}

fn codes(report: &Value) -> Vec<String> {
    report["errors"].as_array().map(|a| a.iter().filter_map(|e| e["code"].as_str().map(String::from)).collect()).unwrap_or_default()
}

fn run_cmd(mut cmd: Command) -> (i32, String, String) {
    let out = cmd.stdin(Stdio::null()).output().expect("run quiesce");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn native_begin_freezes_until_end_and_the_report_carries_the_snapshot_id() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-native");
    let svc = Service::start(&f.s, &f.config(&f.hook("", "continue")));
    let mut cmd = svc.cmd(&f.s);
    cmd.args(["begin", "--json", "--mount"]).arg(f.mnt.path());
    let (code, out, err) = run_cmd(cmd);
    assert_eq!(code, 0, "{out}{err}\n{}", svc.log());
    let begun: Value = serde_json::from_str(out.trim()).expect("begin --json");
    assert_eq!(begun["proceed"], true);
    assert_eq!(begun["mode"], "native");
    assert_eq!(begun["frozen"], json!([f.mount()]));
    assert!(begun["deadline_unix_ms"].as_u64().is_some(), "{begun}");
    assert!(is_frozen(f.mnt.path()), "frozen between begin and end");
    let st = svc.wait_status("the frozen session", |s| s["session"]["phase"] == "frozen");
    assert_eq!(st["session"]["session_id"], begun["session_id"]);
    assert_eq!(f.log(), "pre\n", "pre ran at begin, post not yet");

    let mut cmd = svc.cmd(&f.s);
    cmd.args(["end", "--json", "--snapshot-id", "snap-0042"]).arg(begun["session_id"].as_str().unwrap());
    let (code, out, err) = run_cmd(cmd);
    let reply: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("end --json: {e}: {out}{err}"));
    let report = &reply["report"];
    assert_eq!(code, 0, "{report}");
    assert_eq!(reply["exit_code"], 0);
    assert_eq!(report["mode"], "native");
    assert_eq!(report["consistency"], "AppConsistent");
    assert_eq!(report["snapshot_taken"], true);
    assert_eq!(report["snapshot"]["ids"], json!(["snap-0042"]));
    assert_eq!(report["session_id"], begun["session_id"]);
    assert!(report["freeze"]["window_ms"].as_f64().is_some(), "{report}");
    // The agent's part, between the two calls, is a step of its own.
    let steps = quiesce_tests::report_steps(report);
    let names: Vec<&str> = steps.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["plan", "lock", "catalog", "probe", "presync", "guardian", "plugins", "pre", "freeze", "held", "thaw", "post", "record"]
    );
    assert!(writable_within(f.mnt.path(), Duration::from_secs(5)).is_some(), "thawed after end");
    assert_eq!(f.log(), "pre\npost true\n");
    assert_eq!(svc.last_report()["session_id"], begun["session_id"]);
    assert!(svc.request(json!({"v":1,"id":3,"op":"status"}))["session"].is_null());
}

#[test]
fn external_and_none_sessions_freeze_nothing_and_label_by_the_hooks_and_the_agents_word() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-external");
    let svc = Service::start(&f.s, &f.config(&f.hook("", "continue")));
    for mode in ["external", "none"] {
        let begun = f.begin(&svc, mode);
        assert_eq!(begun["proceed"], true);
        assert_eq!(begun["frozen"], json!([]), "{mode}: quiesce froze nothing");
        assert!(!is_frozen(f.mnt.path()), "{mode}: not frozen");
        let st = svc.wait_status("the begun session", |s| s["session"]["phase"] == "begun");
        assert_eq!(st["session"]["mode"], mode);
        let reply = end(&svc, json!({"snapshot": "taken", "snapshot_id": format!("{mode}-1")}));
        let report = &reply["report"];
        assert_eq!(report["mode"], mode);
        assert_eq!(report["consistency"], "AppConsistent", "{mode}: every pre hook succeeded and the agent took it: {report}");
        assert_eq!(report["freeze"]["mounts"], json!([]));
        assert_eq!(report["snapshot"]["ids"], json!([format!("{mode}-1")]));
    }
    // The agent says its snapshot failed: not taken, post hooks told so.
    f.begin(&svc, "external");
    let reply = end(&svc, json!({"snapshot": "failed"}));
    assert_eq!(reply["exit_code"], 4);
    assert_eq!(reply["report"]["snapshot_taken"], false);
    assert!(codes(&reply["report"]).contains(&"SnapshotFailed".to_string()), "{}", reply["report"]);
    assert!(f.log().ends_with("post false\n"), "{}", f.log());
}

#[test]
fn external_session_with_a_failing_pre_under_continue_proceeds_listing_the_error() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-ext-fail");
    let svc = Service::start(&f.s, &f.config(&f.hook("exit 1", "continue")));
    let begun = f.begin(&svc, "external");
    assert_eq!(begun["proceed"], true, "{begun}");
    assert_eq!(begun["errors"][0]["code"], "Pre-ScriptExecutionFailed", "{begun}");
    let report = end(&svc, json!({}))["report"].clone();
    assert_eq!(report["consistency"], "FileSystemConsistent", "the external freeze is trusted, the app was not quiesced: {report}");
}

#[test]
fn a_pre_hook_failing_under_abort_ends_the_session_at_begin_with_its_report() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-abort");
    let svc = Service::start(&f.s, &f.config(&f.hook("exit 3", "abort")));
    let mut cmd = svc.cmd(&f.s);
    cmd.args(["begin", "--json", "--mount"]).arg(f.mnt.path());
    let (code, out, _) = run_cmd(cmd);
    assert_eq!(code, 4, "{out}");
    let begun: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(begun["proceed"], false);
    assert_eq!(begun["report"]["snapshot_taken"], false);
    assert_eq!(begun["report"]["freeze"]["mounts"], json!([]), "never froze");
    assert_eq!(f.log(), "pre\npost false\n", "post ran at once");
    assert!(svc.request(json!({"v":1,"id":1,"op":"status"}))["session"].is_null(), "the slot is free");
    assert!(!is_frozen(f.mnt.path()));
}

/// How often the service's epoch ticker thread has gone to sleep and woken
/// (the kernel's count of its voluntary context switches).
fn epoch_ticker_wakeups(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the service's threads");
    let ticker = tasks
        .filter_map(Result::ok)
        .find(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "quiesce-epoch"))
        .expect("the service has a quiesce-epoch thread");
    let status = std::fs::read_to_string(ticker.path().join("status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches")
}

/// The service keeps its plugin engine for days: its epoch ticker (what
/// stops a spinning plugin) must tick while a plugin runs, not every 10 ms
/// of an idle daemon's life. It used to wake 100 times a second for good.
#[test]
fn an_idle_service_with_plugins_loaded_does_not_wake_to_tick() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-idle-ticker");
    let plugin = install_plugin(&f.s, "noop");
    let svc = Service::start(&f.s, &f.config(&format!("[[hook]]\nname = \"noop\"\nplugin = \"{}\"\n", plugin.display())));
    let begun = f.begin(&svc, "native");
    let ended = end(&svc, json!({"session_id": begun["session_id"]}));
    assert_eq!(ended["report"]["consistency"], "AppConsistent", "{ended}");
    assert_eq!(ended["report"]["hooks"][0]["outcome"], "succeeded", "the plugin ran: {ended}");
    let before = epoch_ticker_wakeups(svc.pid());
    std::thread::sleep(Duration::from_secs(2));
    let woke = epoch_ticker_wakeups(svc.pid()) - before;
    assert!(woke <= 4, "the epoch ticker woke {woke} times in 2 idle seconds (it ticks every 10 ms while a plugin runs)");
}

#[test]
fn a_session_not_ended_within_its_hold_is_ended_by_the_service() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-hold");
    let svc = Service::start(&f.s, &f.config(&f.hook("", "continue")));
    let begun = svc.request(json!({"v":1,"id":1,"op":"begin","mounts":[f.mount()],"hold_secs":1}));
    assert_eq!(begun["proceed"], true, "{begun}");
    assert!(is_frozen(f.mnt.path()));
    svc.wait_status("the session ended", |s| s["session"].is_null());
    let report = svc.last_report();
    assert_eq!(report["session_id"], begun["session_id"]);
    assert!(codes(&report).contains(&"SessionHoldExpired".to_string()), "{report}");
    assert_eq!(report["snapshot_taken"], false);
    assert_eq!(f.log(), "pre\npost false\n", "post hooks ran, told the snapshot was not taken");
    assert!(writable_within(f.mnt.path(), Duration::from_secs(5)).is_some(), "thawed");
    // The run-dir lock is released: a one-shot session runs.
    let run = run_json(quiesce_snapshot(&f.s, &f.config(""), f.mnt.path(), "true"));
    assert_eq!(run.code(), 3, "{}", run.report);
    assert!(!run.has_error("BackupOperationInProgress"), "{}", run.report);
}

/// Begins a session bound to a connection of its own (`while_begun` runs
/// then), closes that connection and waits until the service has ended the
/// session: `begin`'s reply.
fn begin_bound_then_close(svc: &Service, begin: Value, while_begun: impl FnOnce()) -> Value {
    let mut conn = svc.connect();
    let begun = conn.call(begin);
    assert_eq!(begun["proceed"], true, "{begun}");
    while_begun();
    drop(conn);
    svc.wait_status("the bound session ended", |s| s["session"].is_null());
    begun
}

/// An agent that kills its `begin` while the pre hooks run (the Azure
/// extension's script timeout, Velero's hook timeout) never learns that the
/// session began: the service aborts it once the pre hooks are done instead
/// of holding what they locked until the hold deadline.
#[test]
fn a_begin_whose_client_is_gone_before_its_reply_is_aborted_not_held() {
    quiesce_tests::require!(Root);
    let f = Fixture::new("svc-undelivered");
    let svc = Service::start(&f.s, &f.config(&f.hook("sleep 1", "continue")));
    let mut c = svc.connect();
    c.send_raw(b"{\"v\":1,\"id\":1,\"op\":\"begin\",\"freeze\":\"external\",\"tag\":\"azure\",\"hold_secs\":300}\n").unwrap();
    let t = Instant::now();
    while f.log() != "pre\n" {
        assert!(t.elapsed() < Duration::from_secs(10), "the pre hook never ran:\n{}", svc.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(c);
    while f.log() != "pre\npost false\n" {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the session was not ended after its client was gone (log {:?}):\n{}",
            f.log(),
            svc.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = svc.last_report();
    assert!(codes(&report).contains(&"SessionAborted".to_string()), "{report}");
    assert!(report.to_string().contains("gone before its `begin` was answered"), "{report}");
    assert!(svc.request(json!({"v":1,"id":2,"op":"status"}))["session"].is_null());
}

#[test]
fn a_bound_session_is_aborted_when_its_connection_closes() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-bind");
    let svc = Service::start(&f.s, &f.config(&f.hook("", "continue")));
    begin_bound_then_close(&svc, json!({"v":1,"id":"b","op":"begin","mounts":[f.mount()],"bind":true}), || {
        assert!(is_frozen(f.mnt.path()))
    });
    let report = svc.last_report();
    assert!(codes(&report).contains(&"SessionAborted".to_string()), "{report}");
    assert!(writable_within(f.mnt.path(), Duration::from_secs(5)).is_some(), "thawed");
    assert_eq!(f.log(), "pre\npost false\n");
}

#[test]
fn an_idle_connection_is_closed_with_a_reason_but_never_while_its_bound_session_is_begun() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-idle");
    let config = f.config(&format!("[service]\nidle_timeout_secs = 1\n{}", f.hook("", "continue")));
    let svc = Service::start(&f.s, &config);
    let mut idle = svc.connect();
    assert_eq!(idle.call(json!({"v":1,"id":1,"op":"status"}))["ok"], true);
    let t = Instant::now();
    let bye = idle.reply().expect("a last line before the close");
    assert_eq!(error_code(&bye), "IdleTimeout", "{bye}");
    assert!(bye["error"]["message"].as_str().unwrap().contains("idle_timeout_secs"), "{bye}");
    assert!(idle.reply().is_none(), "then closed");
    assert!(t.elapsed() < Duration::from_secs(30), "closed after about a second, not never");

    // Bound, begun: the connection outlives the idle timeout with its session.
    let mut bound = svc.connect();
    let begun = bound.call(json!({"v":1,"id":"b","op":"begin","freeze":"none","bind":true,"hold_secs":60}));
    assert_eq!(begun["proceed"], true, "{begun}");
    std::thread::sleep(Duration::from_millis(2500));
    let st = bound.call(json!({"v":1,"id":"s","op":"status"}));
    assert_eq!(st["session"]["session_id"], begun["session_id"], "still begun, still connected: {st}");
    let ended = bound.call(json!({"v":1,"id":"e","op":"end","session_id":begun["session_id"]}));
    assert_eq!(ended["report"]["snapshot_taken"], true, "{ended}");
    assert_eq!(f.log(), "pre\npost true\n", "ended by its `end`, not aborted");
    // Its session over, it is an idle connection like any other.
    assert_eq!(error_code(&bound.reply().expect("the idle close")), "IdleTimeout");
    assert!(svc.log().contains("no request for 1 s"), "{}", svc.log());
}

#[test]
fn the_log_held_for_an_aborted_external_session_is_written_once_a_later_session_finds_it_thawed() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-loghold");
    let svc = Service::start(&f.s, &f.config(&f.hook("", "continue")));
    // The agent's external session is bound to its connection; the agent
    // dies: the session is aborted, and nobody says whether the agent thawed.
    let external = begin_bound_then_close(&svc, json!({"v":1,"id":"b","op":"begin","freeze":"external","bind":true}), || ());
    assert!(codes(&svc.last_report()).contains(&"SessionAborted".to_string()));
    // A later `none` session finds the log's file system thawed and writes
    // out what was held (it used to stay held until a native or a normally
    // ended external session).
    let log = held_records_written(&svc, || svc.log());
    assert!(log.contains(external["session_id"].as_str().unwrap()), "the held records came out too");
}

/// An agent begins an external session bound to its connection, freezes
/// `mount` and dies holding it: the session is aborted with the agent's
/// freeze still on. `begin`'s reply, and the freeze — drop it (thaw) before
/// the service: a process blocked on the frozen file system cannot even be
/// killed until then.
fn agent_dies_holding_a_freeze(svc: &Service, mount: &Path) -> (Value, ForeignFreeze) {
    let mut agent_conn = svc.connect();
    let begun = agent_conn.call(json!({"v":1,"id":"b","op":"begin","freeze":"external","bind":true}));
    assert_eq!(begun["proceed"], true, "{begun}");
    let freeze = ForeignFreeze::new(mount);
    drop(agent_conn);
    svc.wait_status("the bound session aborted", |s| s["session"].is_null());
    (begun, freeze)
}

/// A whole session on one connection whose replies must come within 10 s:
/// `begin`'s reply and `end`'s.
fn session_answered_within_10s(svc: &Service, begin: Value) -> (Value, Value) {
    let mut c = svc.connect();
    c.stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let begun = c.call(begin);
    assert_eq!(begun["proceed"], true, "{begun}");
    let ended = c.call(json!({"v":1,"id":2,"op":"end","session_id":begun["session_id"]}));
    (begun, ended)
}

/// Runs a `none` session and waits until its records reached `log`: all that
/// was held before it came out too.
fn held_records_written(svc: &Service, log: impl Fn() -> String) -> String {
    let last = svc.request(json!({"v":1,"id":4,"op":"begin","freeze":"none"}));
    let id = last["session_id"].as_str().unwrap().to_string();
    end(svc, json!({"session_id": id}));
    let until = Instant::now() + Duration::from_secs(10);
    while !log().contains(&id) {
        assert!(Instant::now() < until, "the records never came out:\n{}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
    log()
}

/// The service's stderr is a file on the file system an agent froze, and the
/// agent died holding it: the records held since its session must stay held
/// when a later session ends — written, they would block the session thread
/// until the agent's freeze ends.
#[test]
fn a_held_log_is_not_written_to_a_stderr_file_on_a_file_system_an_agent_still_holds_frozen() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-stderr-frozen");
    let stderr = f.mnt.path().join("serve.stderr");
    let svc = Service::start_with_stderr(&f.s, &f.config(&f.hook("", "continue")), &stderr, |_| {});
    let (external, agent) = agent_dies_holding_a_freeze(&svc, f.mnt.path());
    let (later, ended) = session_answered_within_10s(&svc, json!({"v":1,"id":1,"op":"begin","freeze":"none"}));
    assert_eq!(ended["ok"], true, "answered while the agent still holds the stderr file's file system: {ended}");
    assert!(svc.request(json!({"v":1,"id":3,"op":"status"}))["session"].is_null());
    assert!(is_frozen(f.mnt.path()));
    drop(agent);

    // Thawed: the next session finds it so and writes everything out.
    let log = held_records_written(&svc, || svc.log());
    assert!(log.contains(external["session_id"].as_str().unwrap()) && log.contains(later["session_id"].as_str().unwrap()), "{log}");
}

/// An agent froze the file system with the service's log file and its
/// metrics textfile, then died: its external session is aborted with the
/// agent's freeze still on. Ending it must not write the textfile there,
/// and a later native session of another file system must not write the
/// held log there after its own thaw — either would hang the session thread
/// until somebody thawed.
#[test]
fn an_agents_freeze_left_on_never_hangs_the_metrics_or_a_later_native_sessions_log() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-agent-left");
    let other = LoopMount::new(&f.s.path, "other", Fs::Ext4);
    let prom = f.mnt.path().join("prom");
    std::fs::create_dir(&prom).unwrap();
    let log_file = f.mnt.path().join("quiesce.log");
    let config = f.config(&format!("[metrics]\ntextfile = \"{}/quiesce.prom\"\n\n{}", prom.display(), f.hook("", "continue")));
    let svc = Service::start_with(&f.s, &config, |c| {
        c.env("QUIESCE_LOG_FILE", &log_file);
    });
    let (external, agent) = agent_dies_holding_a_freeze(&svc, f.mnt.path());
    let report = svc.last_report();
    assert!(report["warnings"].to_string().contains("metrics not written"), "{report}");

    let (later, ended) = session_answered_within_10s(&svc, json!({"v":1,"id":1,"op":"begin","freeze":"native","mounts":[other.path()]}));
    assert_eq!(ended["report"]["consistency"], "AppConsistent", "answered with the log's file system still frozen: {ended}");
    assert!(is_frozen(f.mnt.path()) && !is_frozen(other.path()));
    drop(agent);

    let log = held_records_written(&svc, || std::fs::read_to_string(&log_file).unwrap_or_default());
    for held in [&external["session_id"], &later["session_id"]] {
        assert!(log.contains(held.as_str().unwrap()), "the held records came out once thawed:\n{log}");
    }
    assert!(prom.join("quiesce.prom").is_file(), "published again once thawed");
}

#[test]
fn racing_begins_get_one_session_and_backup_operation_in_progress() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-race");
    let svc = Service::start(&f.s, &f.config(&f.hook("sleep 1", "continue")));
    let socket = svc.socket.clone();
    let replies: Vec<Value> = (0..4)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || Conn::connect(&socket).call(json!({"v":1,"id":i,"op":"begin","freeze":"none"})))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    let won: Vec<&Value> = replies.iter().filter(|r| r["ok"] == true).collect();
    assert_eq!(won.len(), 1, "{replies:#?}");
    for r in replies.iter().filter(|r| r["ok"] != true) {
        assert_eq!(error_code(r), "BackupOperationInProgress", "{r}");
    }
    end(&svc, json!({"session_id": won[0]["session_id"]}));
    assert_eq!(f.log(), "pre\npost true\n", "only one session ran");
}

#[test]
fn bad_input_gets_clear_errors_and_never_stalls_another_client_or_the_session() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-bad");
    let svc = Service::start(&f.s, &f.config(&f.hook("", "continue")));
    assert_eq!(error_code(&svc.request(json!({"v":1,"id":1,"op":"last-report"}))), "NoReport");
    let mut c = svc.connect();
    for (line, code) in [
        ("this is not json\n", "BadRequest"),
        ("[1,2,3]\n", "BadRequest"),
        ("{\"v\":1,\"id\":5,\"op\":\"explode\"}\n", "BadRequest"),
        ("{\"v\":1,\"id\":6,\"op\":\"begin\",\"freeze\":\"sideways\"}\n", "BadRequest"),
        ("{\"v\":9,\"id\":7,\"op\":\"status\"}\n", "UnsupportedVersion"),
        ("{\"v\":1,\"id\":8,\"op\":\"end\"}\n", "UnknownSession"),
    ] {
        c.send_raw(line.as_bytes()).unwrap();
        let r = c.reply().expect("a reply");
        assert_eq!(error_code(&r), code, "{line}: {r}");
    }
    // A native begin without mounts would freeze everything: refused.
    let r = c.call(json!({"v":1,"id":9,"op":"begin"}));
    assert_eq!(error_code(&r), "BadRequest", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("mounts"), "{r}");

    let begun = f.begin(&svc, "native");
    // Half a line, never finished; a client that floods requests and never reads.
    let mut half = svc.connect();
    half.send_raw(b"{\"v\":1,\"id\":1,\"op\":\"sta").unwrap();
    let mut flooder = svc.connect();
    flooder.stream.set_nonblocking(true).unwrap();
    let mut sent = 0usize;
    let flood = b"{\"v\":1,\"id\":1,\"op\":\"status\"}\n".repeat(1000);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        match flooder.stream.write(&flood) {
            Ok(n) => sent += n,
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    assert!(sent > 100_000, "the flooder's replies filled its socket ({sent} bytes of requests sent)");
    // Others are still served, and the session still ends.
    let st = svc.request(json!({"v":1,"id":2,"op":"status"}));
    assert_eq!(st["session"]["session_id"], begun["session_id"], "{st}");
    let wrong = svc.request(json!({"v":1,"id":3,"op":"end","session_id":"q-0-00000000"}));
    assert_eq!(error_code(&wrong), "UnknownSession", "{wrong}");
    assert!(is_frozen(f.mnt.path()), "a wrong id ends nothing");
    let report = end(&svc, json!({"session_id": begun["session_id"]}))["report"].clone();
    assert_eq!(report["consistency"], "AppConsistent", "{report}");
    // A line over 64 KiB: RequestTooLarge, then the connection is closed.
    let mut big = svc.connect();
    let mut line = b"{\"v\":1,\"id\":1,\"op\":\"status\",\"pad\":\"".to_vec();
    line.extend(std::iter::repeat_n(b'x', 70 * 1024));
    line.extend(b"\"}\n");
    let _ = big.send_raw(&line);
    let r = big.reply().expect("an error reply");
    assert_eq!(error_code(&r), "RequestTooLarge", "{r}");
    assert!(big.reply().is_none(), "then closed");
    drop((half, flooder));
    assert_eq!(svc.request(json!({"v":1,"id":"v","op":"version"}))["protocol"], 1);
}

#[test]
fn sighup_reloads_a_good_config_and_keeps_the_old_one_when_the_new_fails() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-hup");
    let config = f.config(&f.hook("", "continue"));
    let svc = Service::start(&f.s, &config);
    assert_eq!(svc.request(json!({"v":1,"id":1,"op":"version"}))["config_generation"], 1);
    // A new hook: the next session runs it.
    let log = f.file("log.txt");
    let other = f.s.script("other-pre", &format!("#!/bin/sh\necho other >> {}\n", log.display()));
    f.s.config("quiesce.toml", &format!("[[hook]]\nname = \"other\"\npre = \"{}\"\n", other.display()));
    let hup = || unsafe { libc::kill(svc.pid() as i32, libc::SIGHUP) };
    hup();
    svc.wait_status("generation 2", |s| s["config_generation"] == 2);
    f.begin(&svc, "none");
    end(&svc, json!({}));
    assert_eq!(f.log(), "other\n");
    // A broken config: kept the good one, and says why.
    f.s.config("quiesce.toml", "[[hook]]\nname = \"broken\"\ntimout_secs = 3\n");
    hup();
    let st = svc.wait_status("the reload error", |s| s["config_error"].is_string());
    assert!(st["config_error"].as_str().unwrap().contains("timout_secs"), "{st}");
    assert_eq!(st["config_generation"], 2);
    f.begin(&svc, "none");
    let report = end(&svc, json!({}))["report"].clone();
    assert_eq!(report["consistency"], "AppConsistent", "{report}");
    assert_eq!(f.log(), "other\nother\n", "the kept config's hook ran");
    assert!(svc.log().contains("keeping the one in use"), "{}", svc.log());
}

/// A service started with a config that fails to load loads it afresh at
/// every `begin`: the `begin` is checked against what it loaded then — a
/// native freeze without mounts is refused while the config names none, and
/// freezes the config's `[freeze] mounts` once it is fixed (no SIGHUP).
#[test]
fn a_service_started_with_a_broken_config_checks_each_begin_against_the_config_it_loads_then() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-broken-start");
    let svc = Service::start(&f.s, &f.config("[[hook]]\nname = \"broken\"\ntimout_secs = 3\n"));
    assert!(svc.request(json!({"v":1,"id":1,"op":"status"}))["config_error"].as_str().unwrap().contains("timout_secs"));
    let r = svc.request(json!({"v":1,"id":2,"op":"begin","freeze":"native"}));
    assert_eq!(error_code(&r), "BadRequest", "{r}");
    assert!(!is_frozen(f.mnt.path()));
    f.config(&format!("[freeze]\nenabled = true\nmounts = [{:?}]\n{}", f.mount(), f.hook("", "continue")));
    let begun = svc.request(json!({"v":1,"id":3,"op":"begin","freeze":"native"}));
    assert_eq!(begun["frozen"][0], f.mount(), "{begun}");
    assert!(is_frozen(f.mnt.path()));
    let report = end(&svc, json!({"session_id": begun["session_id"]}))["report"].clone();
    assert_eq!(report["consistency"], "AppConsistent", "{report}");
}

/// A reload compiles the new config's plugins on a thread of its own: the
/// session thread must end a frozen session the moment its `end` comes, not
/// after seconds of compiling (the freeze window would grow by them).
#[test]
fn a_reload_compiles_new_plugins_aside_while_a_frozen_session_is_ended_at_once() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-hup-aside");
    let svc = Service::start(&f.s, &f.config(&f.hook("", "continue")));
    let begun = f.begin(&svc, "native");
    assert!(is_frozen(f.mnt.path()));
    // Never compiled in this scratch's cache: seconds of Cranelift in a debug build.
    let plugin = install_plugin(&f.s, "quiesce_postgres");
    f.config(&format!("[[hook]]\nname = \"pg\"\nplugin = \"{}\"\n", plugin.display()));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(svc.pid() as i32, libc::SIGHUP) };
    svc.wait_status("generation 2", |s| s["config_generation"] == 2);
    let report = end(&svc, json!({"session_id": begun["session_id"]}))["report"].clone();
    assert_eq!(report["consistency"], "AppConsistent", "the begun session kept its config: {report}");
    assert!(!is_frozen(f.mnt.path()));
    let ready = format!("plugin {} ready", plugin.display());
    let t = Instant::now();
    while !svc.log().contains(&ready) {
        assert!(t.elapsed() < Duration::from_secs(120), "the reloaded plugin never loaded:\n{}", svc.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = svc.log();
    let (thawed, loaded) = (log.find("thawed in").unwrap(), log.find(&ready).unwrap());
    assert!(thawed < loaded, "the session was thawed while the plugin compiled, not after:\n{log}");
}

/// A reload that starts the WebAssembly engine — its cache directory on the
/// very file system the begun session holds frozen — must not hold up that
/// session's `end`: the reload thread waits for the thaw, the session thread
/// does not.
#[test]
fn a_reload_that_would_write_to_the_frozen_file_system_never_holds_up_the_end() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-hup-frozen");
    let cache = f.mnt.path().join("cache");
    let svc = Service::start_with(&f.s, &f.config(&format!("[freeze]\nmax_freeze_secs = 60\n{}", f.hook("", "continue"))), |c| {
        c.env("QUIESCE_CACHE_DIR", &cache);
    });
    let begun = f.begin(&svc, "native");
    assert!(is_frozen(f.mnt.path()));
    let plugin = install_plugin(&f.s, "noop");
    f.config(&format!("[[hook]]\nname = \"noop\"\nplugin = \"{}\"\n", plugin.display()));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(svc.pid() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(300));
    let mut c = svc.connect();
    c.stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let ended = c.call(json!({"v":1,"id":2,"op":"end","session_id":begun["session_id"]}));
    assert_eq!(ended["report"]["consistency"], "AppConsistent", "ended at once, not at max-freeze: {ended}");
    assert!(!is_frozen(f.mnt.path()));
    // Thawed, the reload goes through and the next session runs the plugin.
    svc.wait_status("generation 2", |s| s["config_generation"] == 2);
    let next = svc.request(json!({"v":1,"id":3,"op":"begin","freeze":"none"}));
    let report = end(&svc, json!({"session_id": next["session_id"]}))["report"].clone();
    assert_eq!(report["hooks"][0]["name"], "noop", "{report}");
    assert!(cache.is_dir(), "the engine's cache was made once the file system thawed");
}

#[test]
fn socket_activation_serves_on_the_socket_systemd_passes() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-activate");
    let config = f.config(&f.hook("", "continue"));
    let socket = f.file("act/quiesce.sock");
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let stderr = f.file("serve.stderr");
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l").arg(&socket).arg(quiesce_bin()).arg("serve").arg("--config").arg(&config);
    cmd.env("QUIESCE_RUN_DIR", f.file("run"))
        .env("QUIESCE_LOG_FILE", f.file("quiesce.log"))
        .env("QUIESCE_CACHE_DIR", f.file("cache"))
        .env("QUIESCE_STATE_DIR", f.file("state"))
        .env_remove("QUIESCE_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap());
    let child = cmd.spawn().expect("systemd-socket-activate (Debian's systemd package)");
    // Listening before quiesce even starts: the first connection starts it.
    let svc = Service::adopt(child, socket.clone(), stderr);
    let v = svc.request(json!({"v":1,"id":1,"op":"version"}));
    assert_eq!(v["ok"], true, "{v}\n{}", svc.log());
    assert!(svc.log().contains("socket activation"), "{}", svc.log());
    f.begin(&svc, "native");
    assert!(is_frozen(f.mnt.path()));
    let report = end(&svc, json!({}))["report"].clone();
    assert_eq!(report["consistency"], "AppConsistent", "{report}");
}

/// `runuser -u nobody -- python3 -c ...`: a status request as an unprivileged user.
fn status_as_nobody(socket: &Path) -> Value {
    let code = format!(
        "import socket,json\ns=socket.socket(socket.AF_UNIX)\ns.connect({:?})\ns.sendall(b'{{\"v\":1,\"id\":1,\"op\":\"status\"}}\\n')\nprint(s.makefile().readline())",
        socket.display().to_string()
    );
    let out = Command::new("runuser").args(["-u", "nobody", "--", "python3", "-c", &code]).stdin(Stdio::null()).output().expect("runuser");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn a_user_who_is_not_root_is_refused_even_when_the_socket_lets_them_connect() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-peer");
    // nobody must be able to reach the socket at all, for the check that counts to be the one refusing.
    std::fs::set_permissions(&f.s.path, std::fs::Permissions::from_mode(0o711)).unwrap();
    let svc = Service::start(&f.s, &f.config(&f.hook("", "continue")));
    let sock_dir = svc.socket.parent().unwrap().to_path_buf();
    assert_eq!(std::fs::metadata(&svc.socket).unwrap().permissions().mode() & 0o777, 0o600, "created 0600");
    std::fs::set_permissions(&sock_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&svc.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = status_as_nobody(&svc.socket);
    assert_eq!(error_code(&r), "NotAuthorized", "{r}");
    assert_eq!(r["id"], 1, "the refusal answers the request the client sent: {r}");
    // Refused peers looping on connect() (each left silent, so the service
    // would wait for its request): a few are answered at a time, the rest
    // closed at once; root is served meanwhile, and the log gets a line a
    // second, not one per connection.
    let code = format!(
        "import socket\nconns=[]\nfor i in range(300):\n s=socket.socket(socket.AF_UNIX); s.connect({:?}); conns.append(s)\n\
         print('connected', flush=True)\nimport sys; sys.stdin.readline()\n",
        svc.socket.display().to_string()
    );
    let mut runuser = Command::new("runuser");
    runuser.args(["-u", "nobody", "--", "python3", "-c", &code]);
    let (mut child, _out, line) = first_line_of(runuser);
    assert_eq!(line.trim(), "connected");
    assert_eq!(svc.request(json!({"v":1,"id":2,"op":"status"}))["ok"], true, "root is served during the flood");
    drop(child.stdin.take());
    child.wait().unwrap();
    let refusals = svc.log().lines().filter(|l| l.contains("refused connection")).count();
    assert!((1..=5).contains(&refusals), "{refusals} refusal lines for 301 refused connections:\n{}", svc.log());
    drop(svc);
    // `[service] group` names nobody's group: allowed, the socket 0660 root:nogroup.
    let config = f.config(&format!("{}\n[service]\ngroup = \"nogroup\"\n", f.hook("", "continue")));
    let svc = Service::start(&f.s, &config);
    let meta = std::fs::metadata(&svc.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), 65534);
    let r = status_as_nobody(&svc.socket);
    assert_eq!(r["ok"], true, "{r}");
}

/// A client running as `nobody` (`runuser`): one connection, a request per
/// `call`, relayed by a few lines of Python.
struct NobodyClient {
    child: std::process::Child,
    to: std::process::ChildStdin,
    from: std::io::BufReader<std::process::ChildStdout>,
}

impl NobodyClient {
    fn connect(socket: &Path) -> NobodyClient {
        let code = format!(
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect({:?})\nf=s.makefile('rwb')\n\
             for line in sys.stdin:\n f.write(line.encode()); f.flush(); sys.stdout.write(f.readline().decode()); sys.stdout.flush()",
            socket.display().to_string()
        );
        let mut child = Command::new("runuser")
            .args(["-u", "nobody", "--", "python3", "-c", &code])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("runuser");
        let to = child.stdin.take().unwrap();
        let from = std::io::BufReader::new(child.stdout.take().unwrap());
        NobodyClient { child, to, from }
    }

    fn call(&mut self, req: Value) -> Value {
        use std::io::{BufRead, Write};
        writeln!(self.to, "{req}").expect("to the nobody client");
        let mut line = String::new();
        self.from.read_line(&mut line).expect("from the nobody client");
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }
}

impl Drop for NobodyClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` with piped stdin and stdout: the child, the rest of its
/// stdout, and the first line it printed (read before anything else runs).
fn first_line_of(mut cmd: Command) -> (std::process::Child, std::io::BufReader<std::process::ChildStdout>, String) {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("start the client");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    (child, out, line)
}

/// The service with the app hook, `[service] group = "nogroup"`, and the
/// way to its socket open to `nobody`.
fn service_open_to_nogroup(f: &Fixture) -> Service {
    std::fs::set_permissions(&f.s.path, std::fs::Permissions::from_mode(0o711)).unwrap();
    let svc = Service::start(&f.s, &f.config(&format!("{}\n[service]\ngroup = \"nogroup\"\n", f.hook("", "continue"))));
    std::fs::set_permissions(svc.socket.parent().unwrap(), std::fs::Permissions::from_mode(0o755)).unwrap();
    svc
}

#[test]
fn a_group_member_filling_every_connection_it_may_use_never_locks_root_out() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-slots");
    let svc = service_open_to_nogroup(&f);
    // As nobody: 48 connections, each answered once and then left idle, and a 49th.
    let code = format!(
        "import json,socket,sys\nconns=[]\n\
         def conn():\n s=socket.socket(socket.AF_UNIX); s.connect({sock:?}); f=s.makefile('rwb'); conns.append((s,f)); return f\n\
         for i in range(48):\n f=conn(); f.write(b'{{\"op\":\"status\"}}\\n'); f.flush(); assert json.loads(f.readline())['ok']\n\
         print(json.loads(conn().readline())['error']['code'], flush=True)\nsys.stdin.readline()\n",
        sock = svc.socket.display().to_string()
    );
    let mut runuser = Command::new("runuser");
    runuser.args(["-u", "nobody", "--", "python3", "-c", &code]);
    let (mut child, _out, line) = first_line_of(runuser);
    assert_eq!(line.trim(), "TooManyConnections", "the 49th is told at once, not left in the backlog");
    // Root's agents still get in, and a whole session goes through.
    assert_eq!(svc.request(json!({"v":1,"id":1,"op":"status"}))["ok"], true);
    assert_eq!(fsfreeze_hook(&svc, &f.s, "freeze"), 0);
    assert_eq!(fsfreeze_hook(&svc, &f.s, "thaw"), 0);
    assert_eq!(svc.last_report()["consistency"], "AppConsistent");
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    // The member's slots are free again once its connections closed.
    let until = Instant::now() + Duration::from_secs(10);
    while status_as_nobody(&svc.socket)["ok"] != true {
        assert!(Instant::now() < until, "nobody's slots were never freed\n{}", svc.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_group_member_freezes_only_the_configs_mounts_and_loses_access_when_the_group_is_dropped() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-group");
    std::fs::set_permissions(&f.s.path, std::fs::Permissions::from_mode(0o711)).unwrap();
    let group = "\n[service]\ngroup = \"nogroup\"\n";
    // No `[freeze] mounts`: a member may run the hooks, never choose what to freeze.
    let config = f.config(&format!("{}{group}", f.hook("", "continue")));
    let svc = Service::start(&f.s, &config);
    std::fs::set_permissions(svc.socket.parent().unwrap(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = NobodyClient::connect(&svc.socket);
    let r = c.call(json!({"v":1,"id":1,"op":"begin","freeze":"native","mounts":[f.mount()]}));
    assert_eq!(error_code(&r), "NotAuthorized", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("[freeze] mounts"), "{r}");
    assert!(!is_frozen(f.mnt.path()));
    assert!(!f.log().contains("pre"), "refused before any hook ran: {}", f.log());
    let r = c.call(json!({"v":1,"id":2,"op":"begin","freeze":"none"}));
    assert_eq!(r["ok"], true, "hooks without a freeze are what the group is for: {r}");
    let r = c.call(json!({"v":1,"id":3,"op":"end","session_id":r["session_id"]}));
    assert_eq!(r["ok"], true, "{r}");
    // Mounts outside a native freeze would only let a member probe root's
    // paths; a hold beyond external_hold_secs (60 s by default) would keep
    // the plugins' database locks as long as the member liked.
    let r = c.call(json!({"v":1,"id":4,"op":"begin","freeze":"none","mounts":["/root"]}));
    assert_eq!(error_code(&r), "NotAuthorized", "{r}");
    let r = c.call(json!({"v":1,"id":5,"op":"begin","freeze":"external","hold_secs":86400}));
    assert_eq!(error_code(&r), "NotAuthorized", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("external_hold_secs (60 s)"), "{r}");
    assert_eq!(f.log(), "pre\npost true\n", "no hook ran for a refused begin");
    // Root's session is root's to end: a member can neither end nor abort it, by id or without.
    let root = svc.request(json!({"v":1,"id":6,"op":"begin","freeze":"none"}));
    assert_eq!(root["ok"], true, "{root}");
    for req in [json!({"v":1,"id":7,"op":"end"}), json!({"v":1,"id":8,"op":"abort","session_id":root["session_id"]})] {
        let r = c.call(req);
        assert_eq!(error_code(&r), "NotAuthorized", "{r}");
    }
    assert_eq!(f.log(), "pre\npost true\npre\n", "root's session is still begun");
    assert_eq!(end(&svc, json!({}))["report"]["session_id"], root["session_id"]);
    drop(c);
    drop(svc);

    // With `[freeze] mounts`: exactly those, nothing else (here the scratch
    // directory, which a broken check would try to plan, not freeze).
    let config = f.config(&format!("{}\n[freeze]\nenabled = true\nmounts = [{:?}]\n{group}", f.hook("", "continue"), f.mount()));
    let svc = Service::start(&f.s, &config);
    std::fs::set_permissions(svc.socket.parent().unwrap(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = NobodyClient::connect(&svc.socket);
    let other = f.s.path.display().to_string();
    let r = c.call(json!({"v":1,"id":1,"op":"begin","freeze":"native","mounts":[other]}));
    assert_eq!(error_code(&r), "NotAuthorized", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains(&other), "{r}");
    let r = c.call(json!({"v":1,"id":2,"op":"begin","freeze":"native","mounts":[f.mount()]}));
    assert_eq!(r["ok"], true, "{r}\n{}", svc.log());
    assert!(is_frozen(f.mnt.path()));
    let r = c.call(json!({"v":1,"id":3,"op":"end","session_id":r["session_id"]}));
    assert_eq!(r["report"]["consistency"], "AppConsistent", "{r}");
    assert!(!is_frozen(f.mnt.path()));

    // The admin drops the group and reloads: the open connection is refused from its next request on.
    let status = c.call(json!({"v":1,"id":4,"op":"status"}));
    assert_eq!(status["ok"], true, "{status}");
    f.config(&format!("{}\n[freeze]\nenabled = true\nmounts = [{:?}]\n", f.hook("", "continue"), f.mount()));
    unsafe { libc::kill(svc.pid() as i32, libc::SIGHUP) };
    let until = Instant::now() + Duration::from_secs(10);
    while svc.request(json!({"v":1,"id":1,"op":"version"}))["config_generation"] != 2 {
        assert!(Instant::now() < until, "the reload never showed:\n{}", svc.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = c.call(json!({"v":1,"id":5,"op":"status"}));
    assert_eq!(error_code(&r), "NotAuthorized", "{r}");
}

/// A tag is a name anyone may give: root's id-less `end --tag azure` (the
/// Azure post script after its refused pre) must not end a member's
/// session that calls itself `azure`. And a member's refused begins are
/// refused before the slot is claimed, so they never turn root's `begin`
/// away as "another begin is starting".
#[test]
fn a_members_session_is_not_ended_by_roots_tag_and_its_refused_begins_never_turn_root_away() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-member-tag");
    let svc = service_open_to_nogroup(&f);
    let mut member = NobodyClient::connect(&svc.socket);
    let m = member.call(json!({"v":1,"id":1,"op":"begin","freeze":"none","tag":"azure"}));
    assert_eq!(m["proceed"], true, "{m}");
    for op in ["end", "abort"] {
        let r = svc.request(json!({"v":1,"id":2,"op":op,"tag":"azure"}));
        assert_eq!(error_code(&r), "UnknownSession", "{r}");
        assert!(r["error"]["message"].as_str().unwrap().contains("begun by uid"), "{r}");
    }
    assert_eq!(f.log(), "pre\n", "the member's session is still begun");
    let r = member.call(json!({"v":1,"id":3,"op":"end","tag":"azure"}));
    assert_eq!(r["report"]["session_id"], m["session_id"], "the member ends its own by its tag: {r}");

    // The member floods begins that are refused (a hold beyond
    // external_hold_secs) while root runs sessions: root is never refused.
    let code = format!(
        "import socket\ns=socket.socket(socket.AF_UNIX); s.connect({:?}); f=s.makefile('rwb')\n\
         for i in range(3000):\n f.write(b'{{\"op\":\"begin\",\"freeze\":\"none\",\"hold_secs\":86400}}\\n'); f.flush(); assert b'NotAuthorized' in f.readline()\n\
         print('done', flush=True)\n",
        svc.socket.display().to_string()
    );
    let mut flood =
        Command::new("runuser").args(["-u", "nobody", "--", "python3", "-c", &code]).stdout(Stdio::piped()).spawn().expect("runuser");
    let mut root_sessions = 0;
    while flood.try_wait().unwrap().is_none() {
        let b = svc.request(json!({"v":1,"id":4,"op":"begin","freeze":"none"}));
        assert_eq!(b["ok"], true, "root's begin refused while a member's refused begins ran: {b}");
        end(&svc, json!({"session_id": b["session_id"]}));
        root_sessions += 1;
    }
    assert!(flood.wait().unwrap().success(), "every flooded begin was refused NotAuthorized");
    assert!(root_sessions > 0);
}

#[test]
fn cli_snapshot_is_refused_while_a_service_session_is_begun_and_vice_versa() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-lock");
    let config = f.config(&f.hook("", "continue"));
    let svc = Service::start(&f.s, &config);
    let begun = f.begin(&svc, "external");
    let mut cmd = svc.cmd(&f.s);
    cmd.arg("snapshot").arg("--config").arg(&config).arg("--mount").arg(f.mnt.path()).arg("--snapshot-cmd").arg("true");
    let run = run_json(cmd);
    assert_eq!(run.code(), 4);
    assert!(run.has_error("BackupOperationInProgress"), "{}", run.report);
    end(&svc, json!({"session_id": begun["session_id"]}));

    let marker = f.file("snapping");
    let mut cmd = svc.cmd(&f.s);
    cmd.arg("snapshot").arg("--config").arg(&config).arg("--mount").arg(f.mnt.path());
    cmd.arg("--snapshot-cmd").arg(format!("touch {}; sleep 2", marker.display()));
    let one_shot = std::thread::spawn(move || run_json(cmd));
    let t = Instant::now();
    while !marker.exists() {
        assert!(t.elapsed() < Duration::from_secs(30), "the one-shot session never reached its snapshot");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut cmd = svc.cmd(&f.s);
    cmd.args(["begin", "--freeze", "external"]);
    let (code, out, err) = run_cmd(cmd);
    assert_eq!(code, 4, "{out}{err}");
    assert!(err.contains("BackupOperationInProgress"), "{err}");
    assert_eq!(one_shot.join().unwrap().code(), 0);
    assert!(svc.request(json!({"v":1,"id":1,"op":"status"}))["session"].is_null(), "the slot is free again");
}

#[test]
fn service_killed_mid_session_leaves_nothing_frozen_and_the_plugin_lock_released() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-kill");
    let mut lockd = Lockd::start("tcp:127.0.0.1:0");
    let target = lockd.target.clone();
    let (_, config) = f.lockd_config("lockd", &target);
    let mut svc = Service::start(&f.s, &config);
    let begun = f.begin(&svc, "native");
    assert_eq!(begun["proceed"], true, "{begun}");
    assert!(lockd.request("STATUS").starts_with("LOCKED q-"), "the plugin holds the lock from begin");
    assert!(is_frozen(f.mnt.path()));
    svc.kill();
    assert!(writable_within(f.mnt.path(), Duration::from_secs(10)).is_some(), "the guardian thawed when the service died");
    lockd.wait_for("closed", Duration::from_secs(10));
    assert_eq!(lockd.request("STATUS"), "UNLOCKED", "the plugin's connection closed with the process");
    // Nothing holds the run-dir lock either.
    let run = run_json(quiesce_snapshot(&f.s, &f.config(""), f.mnt.path(), "true"));
    assert!(!run.has_error("BackupOperationInProgress"), "{}", run.report);
}

/// The freeze guardians `pid` has forked that are still running.
fn guardians_of(pid: u32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let comm = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(')')).map(|(c, _)| c.to_string());
            let rest: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
            comm.as_deref() == Some("quiesce-guard") && rest.first() != Some(&"Z") && rest.get(1) == Some(&pid.to_string().as_str())
        })
        .collect()
}

/// The one guardian the service keeps ready, once it is there.
fn spare_of(svc: &Service) -> i32 {
    let t = Instant::now();
    loop {
        match guardians_of(svc.pid())[..] {
            [one] => return one,
            ref other if t.elapsed() > Duration::from_secs(10) => panic!("expected one spare guardian, found {other:?}\n{}", svc.log()),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// `pid`'s tracer, from /proc (0: none).
fn tracer_of(pid: i32) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("TracerPid:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// The kernel refuses every FITHAW of a service session's guardian (strace
/// injects EIO into the ioctls on the mount, as `session_faults` does for
/// the one-shot session). The service reports it truthfully, stays up, lets
/// no new session in while the guardian still holds the mount frozen — and
/// serves the next session once the fault clears and the guardian lets go.
#[test]
fn a_fithaw_the_kernel_refuses_is_reported_and_the_service_serves_again_once_the_guardian_thawed() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-fithaw");
    let svc = Service::start(&f.s, &f.config(&format!("[freeze]\nmax_freeze_secs = 2\n{}", f.hook("", "continue"))));
    let spare = spare_of(&svc);
    let trace = f.file("strace.out");
    let mut strace = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=ioctl", "-e", "inject=ioctl:error=EIO:when=2+", "-P"])
        .arg(f.mnt.path())
        .arg("-o")
        .arg(&trace)
        .args(["-p", &svc.pid().to_string(), "-p", &spare.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("strace");
    // Ends the fault whatever happens: strace detaches its tracees as it goes.
    struct Detach<'a>(&'a mut std::process::Child);
    impl Drop for Detach<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let detach = Detach(&mut strace);
    let t = Instant::now();
    while tracer_of(svc.pid() as i32) == 0 || tracer_of(spare) == 0 {
        assert!(t.elapsed() < Duration::from_secs(20), "strace never attached");
        std::thread::sleep(Duration::from_millis(10));
    }

    let begun = f.begin(&svc, "native");
    assert_eq!(begun["proceed"], true, "{begun}");
    let reply = end(&svc, json!({"session_id": begun["session_id"]}));
    let report = &reply["report"];
    assert_eq!(reply["exit_code"], 3, "taken while frozen and quiesced, but the thaw failed: {report}");
    let thaw = report["errors"].as_array().unwrap().iter().find(|e| e["code"] == "FsThawFailed").unwrap_or_else(|| panic!("{report}"));
    let msg = thaw["message"].as_str().unwrap();
    assert!(msg.contains(&f.mount()) && msg.contains("EIO") && msg.contains("STILL FROZEN"), "{msg}");
    assert_eq!(report["freeze"]["still_frozen"][0], f.mount(), "{report}");
    assert_eq!(f.log(), "pre\npost true\n", "the post hooks still ran");
    let ioctls = std::fs::read_to_string(&trace).unwrap_or_default();
    let ioctls: Vec<&str> = ioctls.lines().filter(|l| l.contains("ioctl(")).collect();
    assert!(ioctls.first().is_some_and(|l| l.contains("FIFREEZE")) && ioctls.len() > 2, "{ioctls:?}");
    assert!(ioctls.iter().all(|l| l.starts_with(&format!("{spare} "))), "only the guardian touched the mount: {ioctls:?}");

    // The guardian keeps the mount frozen and retrying, and holds the
    // session lock: a new session waits its turn, refused at once.
    assert!(is_frozen(f.mnt.path()));
    let busy = svc.request(json!({"v":1,"id":3,"op":"begin","freeze":"native","mounts":[f.mount()]}));
    assert_eq!(error_code(&busy), "BackupOperationInProgress", "{busy}");
    assert!(is_frozen(f.mnt.path()));

    // The fault clears: the guardian's next retry thaws, it exits, and the
    // same service runs the next session in full.
    drop(detach);
    assert!(writable_within(f.mnt.path(), Duration::from_secs(30)).is_some(), "the guardian thawed once FITHAW worked again");
    let t = Instant::now();
    let next = loop {
        let r = svc.request(json!({"v":1,"id":4,"op":"begin","freeze":"native","mounts":[f.mount()]}));
        if r["ok"] == true {
            break r;
        }
        assert_eq!(error_code(&r), "BackupOperationInProgress", "{r}");
        assert!(t.elapsed() < Duration::from_secs(30), "the lock was never freed: {r}\n{}", svc.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    let report = end(&svc, json!({"session_id": next["session_id"]}))["report"].clone();
    assert_eq!(report["consistency"], "AppConsistent", "{report}");
    assert!(!is_frozen(f.mnt.path()));
}

#[test]
fn the_service_freezes_through_a_guardian_it_forked_ahead_and_forks_anew_when_that_one_was_killed() {
    quiesce_tests::require!(Root);
    let f = Fixture::new("svc-spare");
    let config = f.config(&f.hook("", "abort"));
    let svc = Service::start(&f.s, &config);
    let state = f.s.path.join("run/state.json");

    // Ready before any session: the session arms it, it freezes and thaws.
    let spare = spare_of(&svc);
    let begun = f.begin(&svc, "native");
    assert_eq!(begun["proceed"], true, "{begun}");
    assert!(is_frozen(f.mnt.path()));
    let recorded: Value = serde_json::from_str(&std::fs::read_to_string(&state).expect("state file")).expect("state json");
    assert_eq!(recorded["guardian_pid"], json!(spare), "the session's guardian is the spare: {recorded}");
    let ended = end(&svc, json!({"session_id": begun["session_id"]}));
    assert_eq!(ended["exit_code"], 0, "{ended}");
    assert!(writable_within(f.mnt.path(), Duration::from_secs(2)).is_some());

    // A new one for the next session; this one is killed while it waits.
    let next = spare_of(&svc);
    assert_ne!(next, spare, "a guardian serves one session");
    // SAFETY: plain kill(2) of the service's idle spare guardian.
    assert_eq!(unsafe { libc::kill(next, libc::SIGKILL) }, 0);
    assert!(gone_within(next, Duration::from_secs(5)), "the killed spare is gone");
    let begun = f.begin(&svc, "native");
    assert_eq!(begun["proceed"], true, "a session forks its own guardian when the spare is gone: {begun}");
    assert!(is_frozen(f.mnt.path()));
    let ended = end(&svc, json!({"session_id": begun["session_id"]}));
    assert_eq!(ended["exit_code"], 0, "{ended}");
    assert!(writable_within(f.mnt.path(), Duration::from_secs(2)).is_some());
    assert_eq!(f.log(), "pre\npost true\npre\npost true\n");
}

#[test]
fn no_spare_guardian_is_kept_while_the_config_turns_freezing_off_and_a_reload_brings_one_or_ends_it() {
    quiesce_tests::require!(Root);
    let f = Fixture::new("svc-nofreeze");
    let off = format!("[freeze]\nenabled = false\n\n{}", f.hook("", "abort"));
    let config = f.config(&off);
    let svc = Service::start(&f.s, &config);
    // A session through the worker, so that its loop has come round since.
    f.begin(&svc, "none");
    assert_eq!(end(&svc, json!({}))["exit_code"], 0);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(guardians_of(svc.pid()), Vec::<i32>::new(), "freezing is off: no idle guardian\n{}", svc.log());

    let reload = |text: &str, generation: u64| {
        f.config(text);
        // SAFETY: plain kill(2) of the service under test.
        unsafe { libc::kill(svc.pid() as i32, libc::SIGHUP) };
        let until = Instant::now() + Duration::from_secs(10);
        while svc.request(json!({"v":1,"id":2,"op":"version"}))["config_generation"] != generation && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    reload(&f.hook("", "abort"), 2);
    let spare = spare_of(&svc);
    reload(&off, 3);
    // The worker sees the reload as a job: its loop ends the spare then.
    assert!(gone_within(spare, Duration::from_secs(5)), "the spare ended when freezing was turned off\n{}", svc.log());
    assert_eq!(guardians_of(svc.pid()), Vec::<i32>::new());
}

#[test]
fn plugins_stay_loaded_across_sessions_and_a_changed_file_is_loaded_again() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-warm");
    let mut lockd = Lockd::start("tcp:127.0.0.1:0");
    let target = lockd.target.clone();
    let (plugin, config) = f.lockd_config("p", &target);
    // A plugin file changed in the last 2 s is read again rather than remembered (coarse timestamps).
    std::thread::sleep(Duration::from_millis(2100));
    let svc = Service::start_with(&f.s, &config, |c| {
        c.arg("--verbose");
    });
    for _ in 0..2 {
        f.begin(&svc, "none");
        assert_eq!(end(&svc, json!({}))["report"]["consistency"], "AppConsistent");
    }
    lockd.wait_for(" UNLOCK", Duration::from_secs(5));
    let log = svc.log();
    assert!(log.contains("cache: Memory"), "the second session reused the loaded plugin:\n{log}");
    // Replaced by another plugin at the same path: loaded again, and it is the new one that runs.
    quiesce_tests::plugins::install_bytes(&plugin, &std::fs::read(quiesce_tests::plugins::built_plugin("noop")).unwrap());
    f.begin(&svc, "none");
    let report = end(&svc, json!({}))["report"].clone();
    let pre = report["hooks"].as_array().unwrap().iter().find(|h| h["phase"] == "pre").unwrap().clone();
    assert_eq!(pre["outcome"], "succeeded", "{report}");
    assert!(pre.get("message").is_none_or(|m| !m.as_str().unwrap_or("").contains("lock held")), "the noop plugin ran, not lockd: {pre}");
}

/// `quiesce fsfreeze-hook ARG` as qemu-ga runs it: stdio on /dev/null, judged by its exit status.
fn fsfreeze_hook(svc: &Service, s: &Scratch, arg: &str) -> i32 {
    let mut cmd = svc.cmd(s);
    cmd.args(["fsfreeze-hook", arg]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    cmd.status().expect("run the hook").code().unwrap_or(-1)
}

#[test]
fn fsfreeze_hook_freeze_and_thaw_as_qemu_ga_calls_them() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-fshook");
    let svc = Service::start(&f.s, &f.config(&f.hook("", "continue")));
    let hook = |arg: &str| fsfreeze_hook(&svc, &f.s, arg);
    assert_eq!(hook("freeze"), 0);
    let st = svc.wait_status("the external session", |s| s["session"]["mode"] == "external");
    assert!(!is_frozen(f.mnt.path()), "qemu-ga freezes, not quiesce");
    assert_eq!(hook("thaw"), 0);
    let report = svc.last_report();
    assert_eq!(report["session_id"], st["session"]["session_id"]);
    assert_eq!(report["consistency"], "AppConsistent", "{report}");
    assert_eq!(f.log(), "pre\npost true\n");
    assert_eq!(hook("thaw"), 0, "thaw with no session (after a failed freeze) is fine");
    // A user the socket is not open to is told so (not "is it running?"), and qemu-ga must not freeze.
    for arg in ["freeze", "thaw"] {
        let out = Command::new("runuser")
            .args(["-u", "nobody", "--", "env"])
            .arg(format!("QUIESCE_SOCKET={}", svc.socket.display()))
            .arg(quiesce_tests::quiesce_client_bin())
            .args(["fsfreeze-hook", arg])
            .stdin(Stdio::null())
            .output()
            .expect("runuser");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{arg} as nobody: {err}");
        assert!(err.contains("not allowed to use the quiesce service"), "{arg} as nobody: {err}");
    }
    drop(svc);

    // A failing pre makes the freeze fail; the session is aborted, its post ran.
    let svc = Service::start(&f.s, &f.config(&f.hook("exit 1", "continue")));
    std::fs::remove_file(f.file("log.txt")).unwrap();
    let hook = |arg: &str| fsfreeze_hook(&svc, &f.s, arg);
    assert_ne!(hook("freeze"), 0);
    assert!(svc.request(json!({"v":1,"id":1,"op":"status"}))["session"].is_null());
    assert_eq!(f.log(), "pre\npost false\n");
    let report = svc.last_report();
    assert!(codes(&report).contains(&"Pre-ScriptExecutionFailed".to_string()), "{report}");
    assert_eq!(hook("thaw"), 0);
    drop(svc);

    // No service: the freeze fails (qemu-ga then does not freeze), exit 5.
    let mut cmd = quiesce(&f.s);
    cmd.env("QUIESCE_SOCKET", f.file("nothing/here.sock")).args(["fsfreeze-hook", "freeze"]);
    let (code, _, err) = run_cmd(cmd);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("here.sock") && err.contains("systemctl start quiesce.socket"), "{err}");
    // ... but the thaw succeeds: qemu-ga has thawed, and a service that is gone has no session left.
    let mut cmd = quiesce(&f.s);
    cmd.env("QUIESCE_SOCKET", f.file("nothing/here.sock")).args(["fsfreeze-hook", "thaw"]);
    let (code, _, err) = run_cmd(cmd);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("here.sock") && err.contains("no session is left to end"), "{err}");
}

/// `end --missing-ok` (the Azure post wrapper's): no session left to end is
/// success, told by the service's refusal code, while an `end` that ends a
/// session keeps the report's status — a hook's message can no longer pass
/// for the "nothing left" case (the wrapper used to match text).
#[test]
fn end_missing_ok_is_success_only_when_no_session_is_left() {
    quiesce_tests::require!(Root);
    let f = Fixture::new("svc-missing-ok");
    let svc = Service::start(&f.s, &f.config(&f.hook("", "continue")));
    let end_cmd = |extra: &[&str]| {
        let mut cmd = svc.cmd(&f.s);
        cmd.args(["end", "--tag", "azure"]).args(extra);
        run_cmd(cmd)
    };
    let (code, _, err) = end_cmd(&[]);
    assert_eq!(code, 4, "no session, no --missing-ok: {err}");
    let (code, _, err) = end_cmd(&["--missing-ok"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("UnknownSession") && err.contains("--missing-ok"), "{err}");
    let mut begin = svc.cmd(&f.s);
    begin.args(["begin", "--freeze", "none", "--tag", "azure"]);
    assert_eq!(run_cmd(begin).0, 0);
    let (code, out, err) = end_cmd(&["--missing-ok", "--snapshot-failed"]);
    assert_eq!(code, 4, "a session that was there and whose snapshot failed: {out}{err}");
    assert!(out.contains("SnapshotFailed"), "{out}");
}

#[test]
fn one_agents_end_never_ends_another_agents_session() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-tags");
    let svc = Service::start(&f.s, &f.config(&f.hook("", "continue")));
    // Agent B's session is begun; qemu-ga's freeze is refused, and the thaw
    // libvirt sends after a failed freeze must not end B's session.
    let b = svc.request(json!({"v":1,"id":1,"op":"begin","freeze":"none","hold_secs":300}));
    assert_eq!(b["ok"], true, "{b}");
    assert_eq!(fsfreeze_hook(&svc, &f.s, "freeze"), 4, "one session at a time");
    assert_eq!(fsfreeze_hook(&svc, &f.s, "thaw"), 0, "nothing of qemu-ga's to end");
    let st = svc.request(json!({"v":1,"id":2,"op":"status"}));
    assert_eq!(st["session"]["session_id"], b["session_id"], "B's session is still begun: {st}");
    assert_eq!(st["session"]["tag"], Value::Null);
    let r = svc.request(json!({"v":1,"id":3,"op":"end","tag":"azure"}));
    assert_eq!(error_code(&r), "UnknownSession", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("another agent's"), "{r}");
    assert_eq!(f.log(), "pre\n", "no post hook ran for B before B's own end");
    assert_eq!(end(&svc, json!({}))["report"]["session_id"], b["session_id"]);
    assert_eq!(f.log(), "pre\npost true\n");

    // A tagged session is ended by its tag (and by its id), not by an untagged end.
    let t = svc.request(json!({"v":1,"id":4,"op":"begin","freeze":"none","tag":"velero"}));
    assert_eq!(svc.request(json!({"v":1,"id":3,"op":"status"}))["session"]["tag"], "velero");
    assert_eq!(error_code(&svc.request(json!({"v":1,"id":5,"op":"end"}))), "UnknownSession");
    assert_eq!(end(&svc, json!({"tag":"velero"}))["report"]["session_id"], t["session_id"]);
    drop(svc);

    // An end without an id, sent while another client's begin runs its pre
    // hooks, is refused at once — not queued to end that session after them.
    std::fs::remove_file(f.file("log.txt")).unwrap();
    let svc = Service::start(&f.s, &f.config(&f.hook("sleep 2", "continue")));
    std::thread::scope(|scope| {
        let begin = scope.spawn(|| svc.request(json!({"v":1,"id":1,"op":"begin","freeze":"none"})));
        svc.wait_status("the begin's pre hooks", |s| s["session"]["phase"] == "pre");
        let r = svc.request(json!({"v":1,"id":2,"op":"end"}));
        assert_eq!(error_code(&r), "UnknownSession", "{r}");
        assert!(r["error"]["message"].as_str().unwrap().contains("still beginning"), "{r}");
        let b = begin.join().unwrap();
        assert_eq!(b["proceed"], true, "{b}");
        let st = svc.request(json!({"v":1,"id":3,"op":"status"}));
        assert_eq!(st["session"]["session_id"], b["session_id"], "still begun after its begin answered: {st}");
        assert_eq!(f.log(), "pre\n");
        assert_eq!(end(&svc, json!({"session_id": b["session_id"]}))["report"]["consistency"], "AppConsistent");
    });
}

#[test]
fn the_python_client_drives_begin_and_end() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-python");
    let svc = Service::start(&f.s, &f.config(&f.hook("", "continue")));
    let client_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../integrations/python");
    let script = format!(
        "import sys; sys.path.insert(0, {dir:?})\nfrom quiesce_client import Quiesce, QuiesceError\nq = Quiesce()\n\
         s = q.call('begin', freeze='native', mounts=[{m:?}])\nprint(s['session_id'], flush=True)\ninput()\n\
         r = q.call('end', session_id=s['session_id'], snapshot='taken', snapshot_id='py-1')\n\
         print(r['report']['consistency'], r['report']['snapshot']['ids'][0], r['exit_code'])\n\
         try:\n    q.call('end')\nexcept QuiesceError as e:\n    print(e.code)\n",
        dir = client_dir.display().to_string(),
        m = f.mount()
    );
    let mut python = Command::new("python3");
    python.args(["-c", &script]).env("QUIESCE_SOCKET", &svc.socket);
    let (mut child, mut out, id) = first_line_of(python);
    assert!(id.starts_with("q-"), "{id}");
    assert!(is_frozen(f.mnt.path()), "frozen between the Python client's begin and end");
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(rest, "AppConsistent py-1 0\nUnknownSession\n");

    // From a shell: KEY=TEXT stays a string (a numeric snapshot id), KEY:=JSON is JSON; exit statuses as quiesce-client's.
    let cli = |socket: &Path, args: &[&str]| {
        let out =
            Command::new("python3").arg(client_dir.join("quiesce_client.py")).args(args).env("QUIESCE_SOCKET", socket).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = cli(&svc.socket, &["begin", "freeze=none", "tag=py", "hold_secs:=60"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cli(&svc.socket, &["end", "tag=py", "snapshot_id=6712345678901234567"]);
    assert_eq!(code, 0, "{out}{err}");
    let reply: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["report"]["snapshot"]["ids"], json!(["6712345678901234567"]), "{reply}");
    assert_eq!(cli(&svc.socket, &["end", "tag=py"]).0, 4, "refused: no session");
    assert_eq!(cli(&svc.socket, &["begin", "freeze=sideways"]).0, 2, "BadRequest");
    assert_eq!(cli(&svc.socket, &["status", "no-equals-sign"]).0, 2);
    let (code, _, err) = cli(&f.file("nothing/here.sock"), &["status"]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("cannot use the quiesce service"), "{err}");
}

#[test]
fn an_agent_freezing_the_log_file_system_during_an_external_session_stalls_nothing() {
    quiesce_tests::require!(Root, Plugins);
    let f = Fixture::new("svc-logfreeze");
    let config = f.config(&f.hook("", "continue"));
    // The service's log file lives on the file system the "agent" (this test, like qemu-ga) freezes.
    let log_file = f.mnt.path().join("quiesce.log");
    let svc = Service::start_with(&f.s, &config, |c| {
        c.env("QUIESCE_LOG_FILE", &log_file);
    });
    let begun = f.begin(&svc, "external");
    // Thawed before the service is stopped if an assertion fails: a process
    // blocked on the frozen file system cannot even be killed until then.
    let agent = ForeignFreeze::new(f.mnt.path());
    // The reload logs; the worker then answers the `end` for a wrong id: both
    // would wait for the thaw if a log record were written now.
    unsafe { libc::kill(svc.pid() as i32, libc::SIGHUP) };
    let mut c = svc.connect();
    c.stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = c.call(json!({"v":1,"id":1,"op":"end","session_id":"q-0-00000000"}));
    let answered = error_code(&r) == "UnknownSession";
    // SIGHUP is asynchronous: ask until the reload shows (it must, frozen log or not).
    let until = Instant::now() + Duration::from_secs(10);
    let mut generation = json!(null);
    while generation != 2 && Instant::now() < until {
        generation = svc.request(json!({"v":1,"id":2,"op":"version"}))["config_generation"].clone();
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(agent);
    assert!(answered, "{r}");
    assert_eq!(generation, 2, "the reload went through while the log's file system was frozen");
    let report = end(&svc, json!({"session_id": begun["session_id"]}))["report"].clone();
    assert_eq!(report["consistency"], "AppConsistent", "{report}");
    let log = std::fs::read_to_string(&log_file).unwrap_or_default();
    assert!(log.contains("(generation 2)"), "the held records were written after the agent's thaw:\n{log}");
}
