//! Hostile plugins (issue 9): `plugins/testing/hostile` attacks the host the
//! ways an attacker with the WIT in hand would — floods of empty and huge
//! records, huge returned strings, thousands of ungranted requests, huge
//! names, spinning in host calls, sleeping forever, unbounded recursion,
//! memory, ungranted WASI, a huge custom section, a hostile `describe`.
//! Each test asserts the outcome and its code, that what the host kept is
//! bounded (in bytes), that the call ended within its deadline (with slack
//! for a loaded machine), and that the host still works afterwards.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use quiesce::hooks::wasm::{CallContext, CallOutcome, Events, InstanceConfig, LogSource, Plugin, PluginError, WasmEngine};
use quiesce::hooks::OUTPUT_CAP;
use quiesce_tests::plugins::*;
use quiesce_tests::*;

const SECOND: Duration = Duration::from_secs(1);
/// Slack for a loaded 2-core machine on top of a configured timeout.
const SLACK: Duration = Duration::from_secs(3);
/// What one call's events may hold at most: the output cap plus the one
/// summary record and the one denial summary (each well under 1 KiB), plus
/// the denials' own share of the budget (they count against the same cap).
const EVENTS_BOUND: usize = OUTPUT_CAP + 4096;

struct Env {
    scratch: Scratch,
    engine: WasmEngine,
    plugin: Plugin,
}

impl Env {
    fn new(name: &str) -> Env {
        let scratch = Scratch::new(name);
        let engine = WasmEngine::new(&scratch.join("cache")).expect("engine");
        let path = install_plugin(&scratch, "hostile");
        let plugin = engine.load(&path).unwrap_or_else(|e| panic!("load hostile: {e}"));
        Env { scratch, engine, plugin }
    }

    /// Runs `pre` in a fresh instance with `params`; the outcome, the
    /// events, how long it took.
    async fn attack(&self, params: &[(&str, &str)], timeout: Duration, memory: Option<usize>) -> (CallOutcome, Events, Duration) {
        let mut cfg = InstanceConfig::new("hostile");
        cfg.params = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        cfg.call_timeout = timeout;
        if let Some(m) = memory {
            cfg.memory_limit_bytes = m;
        }
        let mut inst = self.plugin.instantiate(cfg).await.expect("instantiate");
        let started = Instant::now();
        let outcome = inst.pre(&CallContext { session_id: "hostile".into(), attempt: 1 }).await;
        let took = started.elapsed();
        (outcome, inst.take_events(), took)
    }

    /// The host is healthy: a fresh instance of the same plugin answers.
    async fn still_works(&self) {
        let (outcome, ev, _) = self.attack(&[("mode", "ok")], 5 * SECOND, None).await;
        assert_eq!(outcome, CallOutcome::Ok("harmless".into()));
        assert!(ev.is_empty(), "{ev:?}");
    }
}

/// The bytes the events would put into a report or log.
fn events_bytes(ev: &Events) -> usize {
    serde_json::to_string(ev).expect("events serialize").len()
}

fn assert_bounded(ev: &Events) {
    let n = events_bytes(ev);
    assert!(n <= EVENTS_BOUND, "events hold {n} bytes, over {EVENTS_BOUND}");
    assert!(ev.logs.len() <= OUTPUT_CAP / 64 + 1, "{} records kept", ev.logs.len());
}

fn summary(ev: &Events) -> &str {
    let last = ev.logs.last().expect("a summary record");
    assert_eq!(last.source, LogSource::Host, "the last record is the host's summary: {last:?}");
    &last.message
}

#[tokio::test]
async fn a_flood_of_empty_log_records_is_capped_by_count_and_ends_in_time() {
    require!(Root, Plugins);
    let env = Env::new("hostile-empty-log");
    let timeout = 5 * SECOND;
    let (outcome, ev, took) = env.attack(&[("mode", "log-empty-flood"), ("n", "3000000")], timeout, None).await;
    // Either it finished its loop or the deadline stopped it; both end in time.
    assert!(matches!(outcome, CallOutcome::Ok(_) | CallOutcome::TimedOut), "{outcome:?}");
    assert!(took < timeout + SLACK, "took {took:?}");
    assert_bounded(&ev);
    assert!(ev.output_dropped_records > 1_000_000 || outcome == CallOutcome::TimedOut, "dropped {}", ev.output_dropped_records);
    assert!(summary(&ev).contains("more records"), "{}", summary(&ev));
    env.still_works().await;
}

#[tokio::test]
async fn huge_log_records_are_dropped_whole_and_counted() {
    require!(Root, Plugins);
    let env = Env::new("hostile-huge-log");
    let (outcome, ev, _) = env.attack(&[("mode", "log-huge"), ("size", "4194304"), ("n", "3")], 10 * SECOND, None).await;
    assert_eq!(outcome, CallOutcome::Ok("flooded".into()));
    assert_bounded(&ev);
    assert_eq!(ev.output_dropped_records, 3);
    assert_eq!(ev.output_dropped_bytes, 3 * 3 * 4194304);
    assert_eq!(ev.logs.len(), 1, "only the summary: {:?}", ev.logs.iter().map(|l| l.message.len()).collect::<Vec<_>>());
    env.still_works().await;
}

#[tokio::test]
async fn a_flood_of_empty_printed_lines_is_capped_by_count() {
    require!(Root, Plugins);
    let env = Env::new("hostile-empty-print");
    let (outcome, ev, took) = env.attack(&[("mode", "print-empty-flood"), ("n", "500000")], 10 * SECOND, None).await;
    assert!(matches!(outcome, CallOutcome::Ok(_) | CallOutcome::TimedOut), "{outcome:?}");
    assert!(took < 10 * SECOND + SLACK);
    assert_bounded(&ev);
    assert!(ev.output_dropped_records > 100_000, "dropped {}", ev.output_dropped_records);
    env.still_works().await;
}

#[tokio::test]
async fn an_endless_printed_line_is_cut_at_the_cap() {
    require!(Root, Plugins);
    let env = Env::new("hostile-endless-line");
    let (outcome, ev, _) = env.attack(&[("mode", "print-endless-line"), ("n", "32")], 10 * SECOND, None).await;
    assert_eq!(outcome, CallOutcome::Ok("flooded".into()));
    assert_bounded(&ev);
    let line = ev.logs.iter().find(|l| l.source == LogSource::Stdout).expect("the start of the line is kept");
    assert!(line.message.len() <= OUTPUT_CAP && line.message.len() > OUTPUT_CAP / 2, "{}", line.message.len());
    assert_eq!(ev.output_dropped_bytes, 32 * (1 << 20) - line.message.len() as u64);
}

#[tokio::test]
async fn huge_returned_messages_are_cut_to_the_output_cap() {
    require!(Root, Plugins);
    let env = Env::new("hostile-huge-result");
    let size = (16 << 20).to_string();
    for mode in ["huge-ok", "huge-retryable", "huge-fatal"] {
        let (outcome, ev, _) = env.attack(&[("mode", mode), ("size", &size)], 10 * SECOND, None).await;
        let message = match &outcome {
            CallOutcome::Ok(m) | CallOutcome::Retryable(m) | CallOutcome::Fatal(m) => m.clone(),
            other => panic!("{mode}: {other:?}"),
        };
        assert!(message.len() <= OUTPUT_CAP + 64, "{mode}: {} bytes kept", message.len());
        assert!(message.ends_with(" bytes dropped)"), "{mode}: {}", &message[message.len() - 60..]);
        assert!(ev.is_empty(), "{ev:?}");
    }
    env.still_works().await;
}

#[tokio::test]
async fn a_flood_of_ungranted_requests_keeps_sixteen_denials_and_one_summary() {
    require!(Root, Plugins);
    let env = Env::new("hostile-denials");
    let (outcome, ev, took) = env.attack(&[("mode", "denial-flood"), ("n", "2000"), ("size", "65536")], 20 * SECOND, None).await;
    assert_eq!(outcome, CallOutcome::Fatal("4000 requests refused".into()));
    assert!(took < 20 * SECOND + SLACK);
    assert_bounded(&ev);
    assert_eq!(ev.denials.len(), 17, "16 kept and one summary");
    assert_eq!(ev.denials_dropped, 4000 - 16);
    assert!(ev.denials[..16].iter().all(|d| d.requested.len() < 600), "requests are cut");
    let last = ev.denials[16].to_string();
    assert!(last.contains("3984 more grant denials"), "{last}");
    env.still_works().await;
}

#[tokio::test]
async fn huge_names_are_refused_without_growing_the_report() {
    require!(Root, Plugins);
    let env = Env::new("hostile-huge-names");
    let (outcome, ev, _) = env.attack(&[("mode", "huge-names"), ("size", &(8 << 20).to_string())], 20 * SECOND, None).await;
    let CallOutcome::Fatal(m) = &outcome else { panic!("{outcome:?}") };
    assert!(m.contains("connect refused=true") && m.contains("file refused=true"), "{m}");
    assert_bounded(&ev);
    // The host kept no 8 MiB artifact.
    env.still_works().await;
}

#[tokio::test]
async fn spinning_in_host_calls_is_stopped_at_the_deadline() {
    require!(Root, Plugins);
    let env = Env::new("hostile-spin-host");
    let timeout = 2 * SECOND;
    let (outcome, ev, took) = env.attack(&[("mode", "spin-host-calls")], timeout, None).await;
    assert_eq!(outcome, CallOutcome::TimedOut);
    assert!(took < timeout + SLACK, "took {took:?}");
    assert_bounded(&ev);
    env.still_works().await;
}

#[tokio::test]
async fn sleeping_forever_or_in_steps_ends_at_the_deadline() {
    require!(Root, Plugins);
    let env = Env::new("hostile-sleep");
    let timeout = SECOND;
    for mode in ["sleep-forever", "sleep-in-steps"] {
        let (outcome, _, took) = env.attack(&[("mode", mode)], timeout, None).await;
        assert_eq!(outcome, CallOutcome::TimedOut, "{mode}");
        assert!(took < timeout + SLACK, "{mode} took {took:?}");
    }
    env.still_works().await;
}

#[tokio::test]
async fn unbounded_recursion_traps_and_the_host_survives() {
    require!(Root, Plugins);
    let env = Env::new("hostile-recursion");
    let (outcome, ev, _) = env.attack(&[("mode", "recursion")], 10 * SECOND, None).await;
    let CallOutcome::Trapped(m) = &outcome else { panic!("{outcome:?}") };
    assert!(m.contains("stack") || m.contains("memory"), "{m}");
    assert_bounded(&ev);
    env.still_works().await;
}

#[tokio::test]
async fn memory_past_the_limit_is_refused_in_one_step_or_many() {
    require!(Root, Plugins);
    let env = Env::new("hostile-memory");
    let (outcome, _, _) = env.attack(&[("mode", "one-huge-allocation"), ("size", &(1u64 << 30).to_string())], 10 * SECOND, None).await;
    let CallOutcome::MemoryExhausted(m) = &outcome else { panic!("{outcome:?}") };
    assert!(m.contains("memory limit of 64 MiB exceeded"), "{m}");
    let (outcome, _, _) = env.attack(&[("mode", "memory-creep")], 10 * SECOND, Some(24 << 20)).await;
    let CallOutcome::MemoryExhausted(m) = &outcome else { panic!("{outcome:?}") };
    assert!(m.contains("memory limit of 24 MiB exceeded"), "{m}");
    env.still_works().await;
}

#[tokio::test]
async fn a_memory_limit_below_what_the_plugin_starts_with_refuses_instantiation_cleanly() {
    require!(Root, Plugins);
    let env = Env::new("hostile-memory-start");
    let mut cfg = InstanceConfig::new("tiny");
    cfg.memory_limit_bytes = 64 << 10;
    match env.plugin.instantiate(cfg).await {
        Err(PluginError::Runtime(m)) => assert!(m.contains("memory limit of 0 MiB exceeded"), "{m}"),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("instantiated within 64 KiB"),
    }
    env.still_works().await;
}

#[tokio::test]
async fn ungranted_wasi_sees_nothing_and_writes_nothing() {
    require!(Root, Plugins);
    let env = Env::new("hostile-ambient");
    let _ = std::fs::remove_file("/tmp/quiesce-hostile");
    let (outcome, ev, _) = env.attack(&[("mode", "ambient")], 10 * SECOND, None).await;
    let CallOutcome::Ok(seen) = &outcome else { panic!("{outcome:?}") };
    assert!(!seen.contains("ALLOWED"), "{seen}");
    assert_eq!(seen.matches("denied").count(), 11, "{seen}");
    assert!(!std::path::Path::new("/tmp/quiesce-hostile").exists(), "the plugin wrote outside its grants");
    assert_bounded(&ev);
}

/// `bytes` with a custom section of `len` bytes appended (a component may
/// carry custom sections anywhere at its top level).
fn with_custom_section(bytes: &[u8], len: usize) -> Vec<u8> {
    let name = b"hostile-padding";
    let mut payload = Vec::with_capacity(len + 32);
    payload.push(name.len() as u8);
    payload.extend_from_slice(name);
    payload.resize(payload.len() + len, 0xee);
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    let mut n = payload.len();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        out.push(if n == 0 { byte } else { byte | 0x80 });
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&payload);
    out
}

#[tokio::test]
async fn a_huge_custom_section_loads_within_bounds_and_a_file_over_the_cap_is_refused() {
    require!(Root, Plugins);
    let env = Env::new("hostile-custom");
    let noop = std::fs::read(built_plugin("noop")).expect("noop");
    let padded = env.scratch.join("padded.wasm");
    install_bytes(&padded, &with_custom_section(&noop, 32 << 20));
    let plugin = env.engine.load(&padded).expect("a custom section is ignored");
    let mut inst = plugin.instantiate(InstanceConfig::new("padded")).await.expect("instantiate");
    assert!(inst.pre(&CallContext { session_id: "s".into(), attempt: 1 }).await.is_success());

    let over = env.scratch.join("over.wasm");
    install_bytes(&over, &with_custom_section(&noop, 65 << 20));
    match env.engine.load(&over) {
        Err(e @ PluginError::Load { .. }) => assert!(e.to_string().contains("larger than 64 MiB are refused"), "{e}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a 65 MiB plugin was loaded"),
    }
    env.still_works().await;
}

#[tokio::test]
async fn a_hostile_describe_is_cut_to_bounds() {
    require!(Root, Plugins);
    let env = Env::new("hostile-describe");
    let info = env.plugin.describe().await.expect("describe");
    assert!(info.name.len() < 1100 && info.name.ends_with("bytes dropped)"), "{}", info.name.len());
    assert!(info.quiesces.len() < 1100);
    assert_eq!(info.grants.len(), 64);
    assert_eq!(info.params.len(), 64);
    let total = serde_json::to_string(&info).unwrap().len();
    assert!(total < 300_000, "describe keeps {total} bytes");
}

/// Runs `quiesce plugin inspect --json FILE` as `user` (via runuser).
fn inspect_as(s: &Scratch, user: Option<&str>, file: &std::path::Path) -> (std::process::Output, Duration) {
    let mut cmd = match user {
        Some(u) => {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", u, "--"]).arg(quiesce_bin());
            c
        }
        None => std::process::Command::new(quiesce_bin()),
    };
    cmd.env("QUIESCE_CACHE_DIR", s.join("cache"))
        .env_remove("QUIESCE_LOG_FILE")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .args(["plugin", "inspect", "--json"])
        .arg(file);
    let started = Instant::now();
    let out = cmd.output().expect("run quiesce");
    (out, started.elapsed())
}

/// A directory in /tmp owned by `nobody`, removed on drop.
struct TmpDir(PathBuf);

impl TmpDir {
    fn new(name: &str) -> TmpDir {
        let p = PathBuf::from(format!("/tmp/{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p).expect("mkdir");
        sh(&format!("chown nobody: {}", p.display()));
        TmpDir(p)
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_vendor_who_is_not_root_can_inspect_their_own_build_in_tmp() {
    require!(Root, Plugins);
    let s = Scratch::new("hostile-inspect-user");
    let dir = TmpDir::new("quiesce-vendor");
    let file = dir.0.join("lockd.wasm");
    std::fs::copy(built_plugin("lockd"), &file).expect("copy");
    sh(&format!("chown nobody: {}", file.display()));

    let (out, _) = inspect_as(&s, Some("nobody"), &file);
    assert!(out.status.success(), "stdout {} stderr {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["name"], "lockd");
    assert_eq!(v["requested_grants"], serde_json::json!(["tcp:127.0.0.1:7390"]));
    assert_eq!(v["accepted_in_place"], false);
    let why = v["acceptance"].as_str().unwrap();
    assert!(why.starts_with("no: ") && why.contains("chown root"), "{why}");
    assert_eq!(v["cache_used"], false);
    assert!(!s.join("cache").exists(), "a non-root inspect created the cache directory");

    // Root, on a root-owned file in a root-owned directory: accepted, cached.
    let trusted = install_plugin(&s, "lockd");
    let (out, _) = inspect_as(&s, None, &trusted);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["accepted_in_place"], true, "{v}");
    assert_eq!(v["cache_used"], true);
    // Root, on the vendor's file in /tmp: inspected in memory, nothing cached from it.
    let entries = std::fs::read_dir(s.join("cache")).map(|d| d.count()).unwrap_or(0);
    let (out, _) = inspect_as(&s, None, &file);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!((v["accepted_in_place"].as_bool(), v["cache_used"].as_bool()), (Some(false), Some(false)), "{v}");
    assert_eq!(std::fs::read_dir(s.join("cache")).map(|d| d.count()).unwrap_or(0), entries);
}

#[test]
fn inspecting_hostile_files_ends_with_bounded_output() {
    require!(Root, Plugins);
    let s = Scratch::new("hostile-inspect-files");
    let dir = TmpDir::new("quiesce-hostile-inspect");
    // A hostile describe: huge strings, thousands of grants.
    let file = dir.0.join("hostile.wasm");
    std::fs::copy(built_plugin("hostile"), &file).expect("copy");
    let (out, _) = inspect_as(&s, Some("nobody"), &file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.len() < 300_000, "inspect printed {} bytes", out.stdout.len());
    assert!(out.stderr.len() < 64 << 10, "stderr {} bytes", out.stderr.len());

    // A FIFO nobody writes to: refused at once, not waited on.
    let fifo = dir.0.join("fifo.wasm");
    sh(&format!("mkfifo {} && chmod 666 {}", fifo.display(), fifo.display()));
    let (out, took) = inspect_as(&s, Some("nobody"), &fifo);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["code"], "PluginLoadFailed");
    assert!(v["message"].as_str().unwrap().contains("not a regular file"), "{v}");
    assert!(took < 30 * SECOND);

    // A file over the size cap: refused before it is read.
    let big = dir.0.join("big.wasm");
    std::fs::File::create(&big).and_then(|f| f.set_len(65 << 20)).expect("sparse file");
    let (out, _) = inspect_as(&s, Some("nobody"), &big);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(v["message"].as_str().unwrap().contains("larger than 64 MiB are refused"), "{v}");

    // A file the user cannot read: the error says so.
    let secret = s.join("secret.wasm");
    std::fs::copy(built_plugin("noop"), &secret).expect("copy");
    sh(&format!("chmod 600 {}", secret.display()));
    let (out, _) = inspect_as(&s, Some("nobody"), &secret);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(v["message"].as_str().unwrap().contains("cannot read"), "{v}");
}

#[tokio::test]
async fn inspect_is_held_to_its_deadline() {
    require!(Root, Plugins);
    let env = Env::new("hostile-inspect-deadline");
    let path = install_plugin(&env.scratch, "hostile");
    let engine = WasmEngine::without_cache().expect("engine");
    let started = Instant::now();
    match quiesce::hooks::wasm::inspect_within(&engine, &path, Duration::from_millis(1)).await {
        Err(e) => assert!(e.to_string().contains("took longer than"), "{e}"),
        Ok(_) => panic!("compiling a component took under a millisecond"),
    }
    assert!(started.elapsed() < SLACK);
    drop(env.engine);
}

/// A whole session with several hostile hooks at once: the report and the
/// log stay small, each hook ends with its code, and the next session on the
/// same machine works.
#[test]
fn a_session_of_hostile_hooks_keeps_its_report_small_and_the_next_session_works() {
    require!(Root, Plugins);
    let s = Scratch::new("hostile-session");
    let mnt = LoopMount::new(&s.path, "mnt", Fs::Ext4);
    let plugin = install_plugin(&s, "hostile");
    let hook = |name: &str, params: &str, timeout: u32| {
        format!("[[hook]]\nname = \"{name}\"\nplugin = \"{}\"\nparams = {{ {params} }}\ntimeout_secs = {timeout}\n", plugin.display())
    };
    let config = s.config(
        "quiesce.toml",
        &[
            hook("empty-logs", "mode = \"log-empty-flood\", n = \"2000000\"", 10),
            hook("denials", "mode = \"denial-flood\", n = \"1000\", size = \"65536\"", 20),
            hook("huge-fatal", "mode = \"huge-fatal\", size = \"16777216\"", 10),
            hook("spin", "mode = \"spin-host-calls\"", 2),
            hook("prints", "mode = \"print-empty-flood\", n = \"300000\"", 10),
        ]
        .join("\n"),
    );
    let session = |config: &std::path::Path| {
        let mut cmd = quiesce(&s);
        cmd.env("QUIESCE_CACHE_DIR", s.join("cache"))
            .env("QUIESCE_STATE_DIR", s.join("state"))
            .args(["snapshot", "--config"])
            .arg(config)
            .arg("--mount")
            .arg(mnt.path())
            .args(["--snapshot-cmd", "true"]);
        run_json(cmd)
    };
    let run = session(&config);
    let report = serde_json::to_string(&run.report).unwrap();
    assert!(report.len() < 512 << 10, "the report is {} bytes", report.len());
    assert!(run.output.stderr.len() < 1 << 20, "stderr is {} bytes", run.output.stderr.len());
    let log = std::fs::metadata(s.join("quiesce.log")).map(|m| m.len()).unwrap_or(0);
    assert!(log < 2 << 20, "the log is {log} bytes");
    let codes: Vec<&str> = run.report["errors"].as_array().unwrap().iter().map(|e| e["code"].as_str().unwrap()).collect();
    assert_eq!(codes.iter().filter(|c| **c == "GrantDenied").count(), 17, "{codes:?}");
    assert!(codes.contains(&"PluginTimeout"), "{codes:?}");
    assert!(codes.contains(&"Pre-ScriptExecutionFailed"), "{codes:?}");
    assert_eq!(run.report["snapshot_taken"], true);
    assert_eq!(run.report["consistency"], "FileSystemConsistent");

    let calm = s.config("calm.toml", &hook("calm", "mode = \"ok\"", 5));
    let run = session(&calm);
    assert_eq!(run.report["consistency"], "AppConsistent", "{}", run.report);
    assert_eq!(run.code(), 0);
}

// ---- hand-made components: what Rust will not emit --------------------
// Built by `tests/crafted` (run by hand; see its Cargo.toml for why it is not
// a dev-dependency) and committed as bytes.

impl Env {
    fn load_crafted(&self, name: &str, bytes: &[u8]) -> Plugin {
        let path = self.scratch.join(name);
        install_bytes(&path, bytes);
        self.engine.load(&path).unwrap_or_else(|e| panic!("load {name}: {e}"))
    }
}

const PLAIN: &[u8] = include_bytes!("../crafted/plain.wasm");
const TABLE_GROW: &[u8] = include_bytes!("../crafted/table-grow.wasm");
const TWO_MEMORIES: &[u8] = include_bytes!("../crafted/two-memories.wasm");
const SECOND_MEMORY_GROW: &[u8] = include_bytes!("../crafted/second-memory-grow.wasm");
const FIVE_MEMORIES: &[u8] = include_bytes!("../crafted/five-memories.wasm");

fn call() -> CallContext {
    CallContext { session_id: "s".into(), attempt: 1 }
}

#[tokio::test]
async fn a_crafted_component_answers_like_a_plugin() {
    require!(Root, Plugins);
    // The control for the crafted attacks below: without an attack it runs.
    let env = Env::new("hostile-crafted");
    let plugin = env.load_crafted("plain.wasm", PLAIN);
    assert_eq!(plugin.describe().await.expect("describe").name, "crafted");
    let mut inst = plugin.instantiate(InstanceConfig::new("plain")).await.expect("instantiate");
    assert_eq!(inst.pre(&call()).await, CallOutcome::Ok(String::new()));
}

#[tokio::test]
async fn a_growing_table_counts_against_the_memory_limit() {
    require!(Root, Plugins);
    let env = Env::new("hostile-table");
    let plugin = env.load_crafted("table.wasm", TABLE_GROW);
    let mut cfg = InstanceConfig::new("table");
    cfg.memory_limit_bytes = 16 << 20;
    let mut inst = plugin.instantiate(cfg).await.expect("instantiate");
    let outcome = inst.pre(&call()).await;
    let CallOutcome::MemoryExhausted(m) = &outcome else { panic!("{outcome:?}") };
    assert!(m.contains("memory limit of 16 MiB exceeded"), "{m}");
    env.still_works().await;
}

#[tokio::test]
async fn several_memories_share_one_limit_and_their_number_is_capped() {
    require!(Root, Plugins);
    let env = Env::new("hostile-memories");
    // Two memories of 40 MiB each: each under a 64 MiB per-memory limit,
    // together over the instance's 64 MiB.
    match env.load_crafted("two.wasm", TWO_MEMORIES).instantiate(InstanceConfig::new("two")).await {
        Err(PluginError::Runtime(m)) => assert!(m.contains("memory limit of 64 MiB exceeded"), "{m}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("two 40 MiB memories were instantiated under a 64 MiB limit"),
    }
    // Growing a second memory counts too.
    let plugin = env.load_crafted("grow.wasm", SECOND_MEMORY_GROW);
    let mut inst = plugin.instantiate(InstanceConfig::new("grow")).await.expect("instantiate");
    let outcome = inst.pre(&call()).await;
    assert!(matches!(&outcome, CallOutcome::MemoryExhausted(m) if m.contains("limit of 64 MiB")), "{outcome:?}");
    // More memories than an instance may have: refused at instantiation.
    match env.load_crafted("many.wasm", FIVE_MEMORIES).instantiate(InstanceConfig::new("many")).await {
        Err(PluginError::Runtime(m)) => assert!(m.contains("memor"), "{m}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("five memories were instantiated"),
    }
    env.still_works().await;
}
