//! WebAssembly plugin scenarios: real components built from `plugins/`
//! (`cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml`), real TCP
//! and Unix servers on loopback, the real wasmtime runtime.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quiesce::hooks::wasm::{
    CacheStatus, CallContext, CallOutcome, Grants, InstanceConfig, Plugin, PluginError, PluginInstance, SnapshotOutcome, WasmEngine,
};
use quiesce::report::Consistency;
use quiesce_tests::plugins::*;
use quiesce_tests::*;

struct Env {
    scratch: Scratch,
    engine: WasmEngine,
}

impl Env {
    fn new(name: &str) -> Env {
        let scratch = Scratch::new(name);
        let engine = WasmEngine::new(&scratch.join("cache")).expect("engine");
        Env { scratch, engine }
    }

    fn load(&self, name: &str) -> Plugin {
        let path = install_plugin(&self.scratch, name);
        self.engine.load(&path).unwrap_or_else(|e| panic!("load {name}: {e}"))
    }

    async fn instance(&self, name: &str, grants: &[&str], params: &[(&str, &str)], timeout: Duration) -> PluginInstance {
        instance_of(&self.load(name), name, grants, params, timeout).await
    }
}

async fn instance_of(plugin: &Plugin, name: &str, grants: &[&str], params: &[(&str, &str)], timeout: Duration) -> PluginInstance {
    let mut cfg = InstanceConfig::new(name);
    cfg.grants = Grants::parse(grants).expect("grants");
    cfg.params = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    cfg.call_timeout = timeout;
    plugin.instantiate(cfg).await.expect("instantiate")
}

fn ctx(attempt: u32) -> CallContext {
    CallContext { session_id: "test-session".into(), attempt }
}

fn taken() -> SnapshotOutcome {
    SnapshotOutcome { taken: true, label: Consistency::AppConsistent }
}

const SECOND: Duration = Duration::from_secs(1);
/// Slack for a loaded 2-core machine on top of a configured timeout.
const SLACK: Duration = Duration::from_secs(2);

#[tokio::test]
async fn state_lives_from_pre_to_post() {
    require!(Root, Plugins);
    let env = Env::new("wasm-state");
    let mut lockd = Lockd::start("tcp:127.0.0.1:0");
    let target = lockd.target.clone();
    let mut inst = env.instance("lockd", &[&target], &[("target", &target)], 5 * SECOND).await;

    let pre = inst.pre(&ctx(1)).await;
    assert_eq!(pre, CallOutcome::Ok(format!("lock held on {target}")));
    let locked = lockd.wait_for("LOCK test-session -> OK", 5 * SECOND);
    let conn = locked.split(' ').nth(1).expect("conn number").to_owned();
    // Between pre and post (where the snapshot happens) the lock is held by
    // the plugin's connection.
    assert_eq!(lockd.request("STATUS"), format!("LOCKED test-session conn {conn}"));

    let post = inst.post(&ctx(1), &taken()).await;
    assert_eq!(post, CallOutcome::Ok("unlocked after snapshot (AppConsistent, taken: true)".into()));
    // UNLOCK arrived on the very connection that locked.
    lockd.wait_for(&format!("conn {conn} UNLOCK -> OK"), 5 * SECOND);
    assert_eq!(lockd.request("STATUS"), "UNLOCKED");
    assert!(inst.is_alive());
    let ev = inst.take_events();
    assert!(ev.logs.iter().any(|l| l.message.contains("locked") && l.message.contains("test-session")), "{:?}", ev.logs);
    assert!(ev.denials.is_empty());
}

#[tokio::test]
async fn unix_socket_target_is_reached_through_the_connections_resource() {
    require!(Root, Plugins);
    let env = Env::new("wasm-unix");
    let sock = env.scratch.join("lockd.sock");
    let mut lockd = Lockd::start(&format!("unix:{}", sock.display()));
    let target = lockd.target.clone();
    let mut inst = env.instance("lockd", &[&target], &[("target", &target)], 5 * SECOND).await;
    assert!(inst.pre(&ctx(1)).await.is_success());
    lockd.wait_for("LOCK test-session -> OK", 5 * SECOND);
    assert!(lockd.request("STATUS").starts_with("LOCKED test-session"));
    assert!(inst.post(&ctx(1), &taken()).await.is_success());
    assert_eq!(lockd.request("STATUS"), "UNLOCKED");
}

#[tokio::test]
async fn lock_is_released_when_the_instance_dies() {
    require!(Root, Plugins);
    // A plugin that locked in pre and is then dropped (a later trap, or the
    // session ending): the service sees the connection close and releases.
    let env = Env::new("wasm-release");
    let mut lockd = Lockd::start("tcp:127.0.0.1:0");
    let target = lockd.target.clone();
    let mut inst = env.instance("lockd", &[&target], &[("target", &target)], 5 * SECOND).await;
    assert!(inst.pre(&ctx(1)).await.is_success());
    assert!(lockd.request("STATUS").starts_with("LOCKED"));
    inst.kill("test");
    lockd.wait_for("closed, lock released", 5 * SECOND);
    assert_eq!(lockd.request("STATUS"), "UNLOCKED");
    assert_eq!(inst.post(&ctx(1), &taken()).await, CallOutcome::Dead);
}

#[tokio::test]
async fn retiring_an_instance_at_the_sessions_end_closes_its_connections() {
    require!(Root, Plugins);
    // A session ends its instances with `Plugin::retire`: the connections
    // close there (the database releases what they held, even if post did
    // not), the memory is freed later on the engine's thread.
    let env = Env::new("wasm-retire");
    let mut lockd = Lockd::start("tcp:127.0.0.1:0");
    let target = lockd.target.clone();
    let plugin = env.load("lockd");
    let mut inst = instance_of(&plugin, "lockd", &[&target], &[("target", &target)], 5 * SECOND).await;
    assert!(inst.pre(&ctx(1)).await.is_success());
    assert!(lockd.request("STATUS").starts_with("LOCKED"));
    plugin.retire(inst);
    lockd.wait_for("closed, lock released", 5 * SECOND);
    assert_eq!(lockd.request("STATUS"), "UNLOCKED");
}

#[tokio::test]
async fn infinite_loop_is_stopped_by_the_epoch_deadline() {
    require!(Root, Plugins);
    let env = Env::new("wasm-loop");
    let server = SilentServer::start();
    let target = server.target();
    let timeout = Duration::from_millis(500);
    let mut inst = env.instance("misbehave", &[&target], &[("mode", "loop"), ("target", &target)], timeout).await;

    let t = Instant::now();
    let out = inst.pre(&ctx(1)).await;
    let took = t.elapsed();
    assert_eq!(out, CallOutcome::TimedOut);
    assert!(took >= timeout - Duration::from_millis(50) && took < timeout + SLACK, "took {took:?}");
    assert!(!inst.is_alive());
    // The connection it opened before spinning is closed with the instance.
    assert_eq!(server.next_event(5 * SECOND), Some("accepted"));
    assert_eq!(server.next_event(5 * SECOND), Some("eof"));
    assert_eq!(inst.post(&ctx(1), &taken()).await, CallOutcome::Dead);
    assert!(inst.death().is_some_and(|d| d.contains("timed out")), "{:?}", inst.death());
}

#[tokio::test]
async fn blocked_host_read_is_stopped_by_the_call_timeout() {
    require!(Root, Plugins);
    // Epochs cannot interrupt a guest waiting inside a host call; the
    // wall-clock timeout around the call must.
    let env = Env::new("wasm-blocked");
    let server = SilentServer::start();
    let target = server.target();
    let timeout = Duration::from_millis(500);
    let mut inst = env.instance("misbehave", &[&target], &[("mode", "block-read"), ("target", &target)], timeout).await;

    let t = Instant::now();
    let out = inst.pre(&ctx(1)).await;
    let took = t.elapsed();
    assert_eq!(out, CallOutcome::TimedOut);
    assert!(took >= timeout - Duration::from_millis(50) && took < timeout + SLACK, "took {took:?}");
    assert_eq!(server.next_event(5 * SECOND), Some("accepted"));
    assert_eq!(server.next_event(5 * SECOND), Some("eof"), "the server must see the plugin's connection close");
    assert_eq!(inst.post(&ctx(1), &taken()).await, CallOutcome::Dead);
}

#[tokio::test]
async fn host_sleep_past_the_deadline_times_out() {
    require!(Root, Plugins);
    let env = Env::new("wasm-sleep");
    let timeout = Duration::from_millis(300);
    let mut inst = env.instance("misbehave", &[], &[("mode", "sleep")], timeout).await;
    let t = Instant::now();
    assert_eq!(inst.pre(&ctx(1)).await, CallOutcome::TimedOut);
    assert!(t.elapsed() < timeout + SLACK);
}

#[tokio::test]
async fn memory_bomb_is_stopped_at_the_memory_limit() {
    require!(Root, Plugins);
    let env = Env::new("wasm-memory");
    let plugin = env.load("misbehave");
    let mut cfg = InstanceConfig::new("bomb");
    cfg.params = vec![("mode".into(), "memory-bomb".into())];
    cfg.memory_limit_bytes = 32 << 20;
    cfg.call_timeout = 10 * SECOND;
    let mut inst = plugin.instantiate(cfg).await.expect("instantiate");
    let t = Instant::now();
    let out = inst.pre(&ctx(1)).await;
    match &out {
        CallOutcome::MemoryExhausted(m) => assert!(m.starts_with("memory limit of 32 MiB exceeded"), "{m}"),
        other => panic!("expected MemoryExhausted, got {other:?}"),
    }
    assert!(t.elapsed() < 5 * SECOND, "took {:?}", t.elapsed());
    assert!(!inst.is_alive());
    assert_eq!(inst.post(&ctx(1), &taken()).await, CallOutcome::Dead);
}

#[tokio::test]
async fn trap_in_pre_kills_the_instance_and_says_why() {
    require!(Root, Plugins);
    let env = Env::new("wasm-trap-pre");
    let mut inst = env.instance("misbehave", &[], &[("mode", "trap-pre")], 5 * SECOND).await;
    match inst.pre(&ctx(1)).await {
        CallOutcome::Trapped(m) => assert!(m.contains("deliberate panic in pre"), "the panic message should be in: {m}"),
        other => panic!("expected Trapped, got {other:?}"),
    }
    assert!(!inst.is_alive());
    assert_eq!(inst.post(&ctx(1), &taken()).await, CallOutcome::Dead);
}

#[tokio::test]
async fn trap_in_post_closes_the_connection_opened_in_pre() {
    require!(Root, Plugins);
    let env = Env::new("wasm-trap-post");
    let server = SilentServer::start();
    let target = server.target();
    let mut inst = env.instance("misbehave", &[&target], &[("mode", "trap-post"), ("target", &target)], 5 * SECOND).await;
    assert!(inst.pre(&ctx(1)).await.is_success());
    assert_eq!(server.next_event(5 * SECOND), Some("accepted"));
    // Still open between pre and post.
    assert_eq!(server.next_event(Duration::from_millis(300)), None);
    match inst.post(&ctx(1), &taken()).await {
        CallOutcome::Trapped(m) => assert!(m.contains("deliberate panic in post"), "{m}"),
        other => panic!("expected Trapped, got {other:?}"),
    }
    assert_eq!(server.next_event(5 * SECOND), Some("eof"));
    assert!(!inst.is_alive());
}

#[tokio::test]
async fn connect_to_an_ungranted_target_is_an_error_value_and_recorded() {
    require!(Root, Plugins);
    let env = Env::new("wasm-deny-connect");
    let granted = SilentServer::start();
    let other = SilentServer::start();
    let (g, o) = (granted.target(), other.target());
    let mut inst = env.instance("misbehave", &[&g], &[("mode", "connect"), ("target", &o)], 5 * SECOND).await;

    let out = inst.pre(&ctx(1)).await;
    // The guest got an error of kind `denied` (it printed the kind), not a trap.
    match &out {
        CallOutcome::Fatal(m) => assert!(m.starts_with("Denied: connect") && m.contains(&o), "{m}"),
        other => panic!("expected the plugin's own Fatal, got {other:?}"),
    }
    assert!(inst.is_alive(), "a denial must not kill the plugin");
    let ev = inst.take_events();
    assert_eq!(ev.denials.len(), 1, "{:?}", ev.denials);
    assert_eq!(ev.denials[0].capability, "connect");
    assert_eq!(ev.denials[0].requested, o);
    assert_eq!(other.next_event(Duration::from_millis(300)), None, "no connection may reach the ungranted server");
    // And the granted one still works on the same instance.
    assert!(inst.post(&ctx(1), &taken()).await.is_success());
}

#[tokio::test]
async fn file_reads_need_a_grant_and_stay_inside_it() {
    require!(Root, Plugins);
    let env = Env::new("wasm-files");
    let dir = env.scratch.join("conf");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("db.cnf"), "password=hunter2\n").unwrap();
    std::fs::write(env.scratch.join("secret"), "outside\n").unwrap();
    std::os::unix::fs::symlink(env.scratch.join("secret"), dir.join("escape")).unwrap();
    let file = dir.join("db.cnf").display().to_string();
    let escape = dir.join("escape").display().to_string();

    let read = |grants: Vec<String>, path: String| {
        let env = &env;
        async move {
            let g: Vec<&str> = grants.iter().map(String::as_str).collect();
            let mut inst = env.instance("misbehave", &g, &[("mode", "read-file"), ("path", &path)], 5 * SECOND).await;
            let out = inst.pre(&ctx(1)).await;
            (out, inst.take_events())
        }
    };

    let (out, ev) = read(vec![], file.clone()).await;
    assert!(matches!(&out, CallOutcome::Fatal(m) if m.starts_with("Denied: read-file")), "{out:?}");
    assert_eq!(ev.denials.len(), 1);
    assert_eq!(ev.denials[0].capability, "read-file");

    let (out, _) = read(vec![format!("file:{file}")], file.clone()).await;
    assert_eq!(out, CallOutcome::Ok("password=hunter2\n".into()));

    let (out, _) = read(vec![format!("dir:{}", dir.display())], file.clone()).await;
    assert_eq!(out, CallOutcome::Ok("password=hunter2\n".into()));

    // A symlink inside the granted directory does not lead out of it.
    let (out, ev) = read(vec![format!("dir:{}", dir.display())], escape).await;
    assert!(matches!(&out, CallOutcome::Fatal(m) if m.starts_with("Denied")), "{out:?}");
    assert_eq!(ev.denials.len(), 1);

    // `..` is refused before anything is opened.
    let (out, _) = read(vec![format!("dir:{}", dir.display())], format!("{}/../secret", dir.display())).await;
    assert!(matches!(&out, CallOutcome::Fatal(m) if m.starts_with("Invalid")), "{out:?}");
}

#[tokio::test]
async fn exec_runs_only_granted_executables() {
    require!(Root, Plugins);
    let env = Env::new("wasm-exec");
    let script = env.scratch.script("hello.sh", "#!/bin/sh\necho \"hello $1\"\n");
    let s = script.display().to_string();
    let mut inst = env.instance("misbehave", &[], &[("mode", "exec"), ("exec", &s), ("args", "world")], 5 * SECOND).await;
    assert!(matches!(inst.pre(&ctx(1)).await, CallOutcome::Fatal(m) if m.starts_with("Denied: exec")));
    assert_eq!(inst.take_events().denials.len(), 1);

    let mut inst =
        env.instance("misbehave", &[&format!("exec:{s}")], &[("mode", "exec"), ("exec", &s), ("args", "world")], 5 * SECOND).await;
    assert_eq!(inst.pre(&ctx(1)).await, CallOutcome::Ok("status 0 output \"hello world\\n\"".into()));
}

#[tokio::test]
async fn sandbox_shows_no_environment_arguments_files_network_or_wall_clock() {
    require!(Root, Plugins);
    let env = Env::new("wasm-ambient");
    let server = SilentServer::start();
    let wasi_target = server.addr.to_string();
    // Even granting the address does not open WASI sockets: only the
    // connections resource reaches the network.
    let grant = server.target();
    let mut inst = env.instance("misbehave", &[&grant], &[("mode", "ambient"), ("wasi-target", &wasi_target)], 5 * SECOND).await;
    assert_eq!(inst.pre(&ctx(1)).await, CallOutcome::Ok("env=0 args=0 fs=false net=false wall=0".into()));
    assert_eq!(server.next_event(Duration::from_millis(300)), None);
}

#[tokio::test]
async fn log_records_and_output_are_captured_per_call() {
    require!(Root, Plugins);
    let env = Env::new("wasm-log");
    let mut inst = env.instance("misbehave", &[], &[("mode", "log")], 5 * SECOND).await;
    assert!(inst.pre(&ctx(1)).await.is_success());
    let ev = inst.take_events();
    let find = |m: &str| ev.logs.iter().find(|l| l.message == m).unwrap_or_else(|| panic!("no {m:?} in {:?}", ev.logs));
    let rec = find("structured");
    assert_eq!(rec.fields, vec![("key".to_string(), "value".to_string())]);
    assert_eq!(format!("{:?}", find("to stdout").source), "Stdout");
    assert_eq!(format!("{:?}", find("to stderr").source), "Stderr");
    // In the order the plugin produced them.
    let order: Vec<&str> = ev.logs.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(order, ["structured", "to stdout", "to stderr"]);
    assert!(inst.take_events().is_empty(), "events are taken once");
}

#[tokio::test]
async fn output_beyond_the_cap_is_dropped_and_counted() {
    require!(Root, Plugins);
    let env = Env::new("wasm-flood");
    let plugin = env.load("misbehave");
    let mut cfg = InstanceConfig::new("flood");
    cfg.params = vec![("mode".into(), "flood".into())];
    cfg.output_cap = 4096;
    let mut inst = plugin.instantiate(cfg).await.expect("instantiate");
    // A chatty plugin is not killed for it (println! would panic on a failed write).
    assert_eq!(inst.pre(&ctx(1)).await, CallOutcome::Ok("flooded".into()));
    let ev = inst.take_events();
    let kept: usize = ev.logs.iter().map(|l| l.message.len()).sum();
    assert!(kept <= 4096, "kept {kept} bytes");
    assert!(ev.output_dropped_bytes > 1_000_000, "dropped {}", ev.output_dropped_bytes);
}

#[tokio::test]
async fn artifacts_are_kept_by_the_host_even_after_the_instance_dies() {
    require!(Root, Plugins);
    let env = Env::new("wasm-artifacts");
    let mut inst = env.instance("misbehave", &[], &[("mode", "artifact")], 5 * SECOND).await;
    assert!(inst.pre(&ctx(1)).await.is_success());
    assert_eq!(inst.artifacts().len(), 1);
    assert_eq!(inst.artifacts()[0].name, "backup_label");
    inst.kill("test");
    assert_eq!(inst.artifacts()[0].data, b"START WAL LOCATION: 0/2000028");
}

#[tokio::test]
async fn retryable_keeps_the_instance_alive_and_sees_the_attempt() {
    require!(Root, Plugins);
    let env = Env::new("wasm-retry");
    let mut inst = env.instance("misbehave", &[], &[("mode", "retry")], 5 * SECOND).await;
    assert_eq!(inst.pre(&ctx(1)).await, CallOutcome::Retryable("attempt 1".into()));
    assert_eq!(inst.pre(&ctx(2)).await, CallOutcome::Retryable("attempt 2".into()));
    assert!(inst.is_alive());
}

fn load_err(env: &Env, file: &str, bytes: &[u8]) -> String {
    let path = env.scratch.join(file);
    install_bytes(&path, bytes);
    match env.engine.load(&path) {
        Err(e @ PluginError::Load { .. }) => e.to_string(),
        Err(e) => panic!("expected PluginError::Load, got {e:?}"),
        Ok(_) => panic!("{file} was accepted"),
    }
}

#[test]
fn malformed_wasm_is_refused_naming_what_was_expected() {
    require!(Root, Plugins);
    let env = Env::new("wasm-malformed");
    let m = load_err(&env, "junk.wasm", b"#!/bin/sh\necho I am not wasm\n");
    assert!(
        m.contains("not a WebAssembly file")
            && m.contains("expected a WebAssembly component exporting quiesce:plugin/hooks@0.1.0 or @0.2.0"),
        "{m}"
    );
    // Right magic, right layer, garbage after: wasmtime's parser refuses it.
    let m = load_err(&env, "truncated.wasm", b"\0asm\x0d\0\x01\0\x07\xff\xff");
    assert!(m.contains("not a valid component"), "{m}");
}

#[test]
fn core_module_is_refused_as_not_a_component() {
    require!(Root, Plugins);
    let env = Env::new("wasm-core");
    // The smallest valid core module: magic + version 1, no sections.
    let m = load_err(&env, "core.wasm", b"\0asm\x01\0\0\0");
    assert!(m.contains("a core WebAssembly module") && m.contains("not a component") && m.contains("wasm32-wasip2"), "{m}");
}

#[test]
fn component_for_another_wit_version_is_refused() {
    require!(Root, Plugins);
    let env = Env::new("wasm-version");
    let path = install_plugin(&env.scratch, "wrong_version");
    let e = env.engine.load(&path).err().expect("refused");
    let m = e.to_string();
    assert!(matches!(e, PluginError::Load { .. }));
    assert!(m.contains("targets quiesce:plugin@0.9.0") && m.contains("implements quiesce:plugin@0.1.0 and 0.2.0"), "{m}");
}

#[test]
fn component_of_another_world_is_refused() {
    require!(Root, Plugins);
    let env = Env::new("wasm-world");
    let path = install_plugin(&env.scratch, "not_a_plugin");
    let m = env.engine.load(&path).err().expect("refused").to_string();
    assert!(m.contains("another world") && m.contains("wasi:cli/run") && m.contains("quiesce:plugin/hooks@0.1.0 or @0.2.0"), "{m}");
}

#[test]
fn plugin_writable_by_others_is_refused() {
    require!(Root, Plugins);
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new("wasm-trust");
    let path = install_plugin(&env.scratch, "noop");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let e = env.engine.load(&path).err().expect("refused");
    assert!(matches!(e, PluginError::Untrusted { .. }), "{e}");
    assert!(e.to_string().contains("writable by group or others"), "{e}");
    // No exec bit is needed for a plugin.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    env.engine.load(&path).expect("0600 is fine");
}

fn cache_entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "cwasm")).collect()
}

#[test]
fn second_load_uses_the_cache_and_is_fast() {
    require!(Root, Plugins);
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new("wasm-cache");
    let path = install_plugin(&env.scratch, "lockd");
    let first = env.engine.load(&path).expect("first load");
    assert_eq!(*first.cache_status(), CacheStatus::Miss);
    let cache_dir = env.scratch.join("cache");
    assert_eq!(std::fs::metadata(&cache_dir).unwrap().permissions().mode() & 0o777, 0o700);
    let entries = cache_entries(&cache_dir);
    assert_eq!(entries.len(), 1);
    assert_eq!(std::fs::metadata(&entries[0]).unwrap().permissions().mode() & 0o777, 0o600);

    // A second engine (a new process, in effect) finds the entry.
    let engine2 = WasmEngine::new(&cache_dir).unwrap();
    let second = engine2.load(&path).expect("second load");
    assert_eq!(*second.cache_status(), CacheStatus::Hit);
    assert!(
        second.load_time() * 5 < first.load_time(),
        "cached load {:?} should be far faster than compiling {:?}",
        second.load_time(),
        first.load_time()
    );
    assert!(second.load_time() < Duration::from_millis(100), "cached load took {:?}", second.load_time());
    eprintln!("first load (compile) {:?}, cached load {:?}", first.load_time(), second.load_time());
}

#[tokio::test]
async fn corrupted_cache_entry_is_detected_and_rebuilt() {
    require!(Root, Plugins);
    let env = Env::new("wasm-corrupt");
    let path = install_plugin(&env.scratch, "noop");
    env.engine.load(&path).expect("first load");
    let entry = cache_entries(&env.scratch.join("cache")).pop().expect("entry");
    // What the next process finds on disk: a fresh engine per load (one
    // engine keeps a plugin it loaded in memory and never rereads its entry).
    let load_fresh = || WasmEngine::new(&env.scratch.join("cache")).unwrap().load(&path).unwrap();

    // Flip one byte in the middle of the compiled code.
    let mut bytes = std::fs::read(&entry).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&entry, &bytes).unwrap();
    let p = load_fresh();
    assert!(matches!(p.cache_status(), CacheStatus::Rebuilt(r) if r.starts_with("not authentic")), "{:?}", p.cache_status());
    let mut inst = p.instantiate(InstanceConfig::new("noop")).await.unwrap();
    assert!(inst.pre(&ctx(1)).await.is_success());

    // The MAC itself flipped (in the trailer: magic, MAC, length).
    let mut bytes = std::fs::read(&entry).unwrap();
    let tag = bytes.len() - 40;
    bytes[tag] ^= 0x01;
    std::fs::write(&entry, &bytes).unwrap();
    assert!(matches!(load_fresh().cache_status(), CacheStatus::Rebuilt(r) if r.starts_with("not authentic")));

    // The artifact's first byte (the ELF header wasmtime would map).
    let mut bytes = std::fs::read(&entry).unwrap();
    bytes[0] ^= 0x01;
    std::fs::write(&entry, &bytes).unwrap();
    assert!(matches!(load_fresh().cache_status(), CacheStatus::Rebuilt(r) if r.starts_with("not authentic")));

    // Truncated: the trailer is gone.
    let len = std::fs::metadata(&entry).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&entry).unwrap().set_len(len - 100).unwrap();
    assert!(matches!(load_fresh().cache_status(), CacheStatus::Rebuilt(r) if r.starts_with("bad trailer")));

    // A trailer whose length disagrees with the file.
    let mut bytes = std::fs::read(&entry).unwrap();
    let n = bytes.len();
    bytes[n - 8] ^= 0x01;
    std::fs::write(&entry, &bytes).unwrap();
    assert!(matches!(load_fresh().cache_status(), CacheStatus::Rebuilt(r) if r.starts_with("length")), "{:?}", load_fresh().cache_status());

    // Not ours at all.
    std::fs::write(&entry, b"\x7fELF this is not a cache entry at all, but long enough for a trailer.......").unwrap();
    assert_eq!(*load_fresh().cache_status(), CacheStatus::Rebuilt("bad trailer".into()));

    // And the rewritten entry is good again.
    assert_eq!(*load_fresh().cache_status(), CacheStatus::Hit);
}

#[tokio::test]
async fn describe_reports_what_the_plugin_asks_for() {
    require!(Root, Plugins);
    let env = Env::new("wasm-describe");
    let plugin = env.load("lockd");
    let info = plugin.describe().await.expect("describe");
    assert_eq!(info.name, "lockd");
    assert_eq!(info.grants, vec!["tcp:127.0.0.1:7390".to_string()]);
    assert_eq!(info.params[0].name, "target");
    assert!(plugin.imports().iter().any(|i| i == "quiesce:plugin/connections@0.2.0"), "{:?}", plugin.imports());
    assert!(plugin.exports().iter().any(|e| e == "quiesce:plugin/hooks@0.2.0"));
}

#[test]
fn cli_plugin_inspect_prints_version_imports_grants_and_cache_state() {
    require!(Root, Plugins);
    let s = Scratch::new("wasm-cli");
    let path = install_plugin(&s, "lockd");
    let run = |json: bool| {
        let mut cmd = quiesce(&s);
        cmd.env("QUIESCE_CACHE_DIR", s.join("cache")).args(["plugin", "inspect"]).arg(&path);
        if json {
            cmd.arg("--json");
        }
        cmd.output().expect("run quiesce")
    };
    let out = run(true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["wit_version"], "0.2.0");
    assert_eq!(v["has_check"], true);
    assert_eq!(v["requested_grants"], serde_json::json!(["tcp:127.0.0.1:7390"]));
    assert_eq!(v["cached"], false);
    assert!(v["imports"].as_array().unwrap().iter().any(|i| i == "quiesce:plugin/connections@0.2.0"));
    assert_eq!(v["size"], std::fs::metadata(&path).unwrap().len());

    let out = run(false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("requested grants: tcp:127.0.0.1:7390") && text.contains("compiled copy was cached: yes"), "{text}");

    let bad = s.join("core.wasm");
    install_bytes(&bad, b"\0asm\x01\0\0\0");
    let out = quiesce(&s).env("QUIESCE_CACHE_DIR", s.join("cache")).args(["plugin", "inspect", "--json"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["code"], "PluginLoadFailed");
}
