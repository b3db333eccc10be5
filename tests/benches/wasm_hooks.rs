//! What a WebAssembly hook costs, next to the shell script it replaces.
//!
//! - engine setup: Engine, linker, epoch ticker thread, cache directory;
//! - first load: trust checks, read, compile (Cranelift), cache write, link;
//! - cached load: the same with a verified cache entry instead of compiling;
//! - instantiate: a fresh Store + WASI context + instance (once per session);
//! - no-op pre+post on a live instance, and instantiate + pre + post;
//! - the same no-op pair as shell scripts: bare fork/exec + wait, and
//!   through quiesce's script runner (what a session pays per script hook).
//!
//! Needs the plugins built (`cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml`).
//! Prints medians and the shell/WASM ratio.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use quiesce::hooks::script::{run_script, ScriptSpec};
use quiesce::hooks::wasm::{CacheStatus, CallContext, InstanceConfig, SnapshotOutcome, WasmEngine};
use quiesce::trust::{open_trusted, Rule};
use quiesce_tests::plugins::install_plugin;
use quiesce_tests::Scratch;

const ROUNDS: usize = 60;
const COMPILE_ROUNDS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn measure(rounds: usize, mut f: impl FnMut()) -> Duration {
    for _ in 0..3.min(rounds) {
        f();
    }
    median(
        (0..rounds)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn clear_cache(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("cache dir").flatten() {
        let _ = std::fs::remove_file(e.path());
    }
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1000.0 {
        format!("{:>9.3} ms", us / 1000.0)
    } else {
        format!("{us:>9.1} µs")
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    quiesce::logging::gate().set_stderr(false);
    let s = Scratch::new("bench-wasm");
    let cache = s.join("cache");
    let path = install_plugin(&s, "noop");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let setup = measure(10, || {
        WasmEngine::new(&cache).expect("engine");
    });
    let engine = WasmEngine::new(&cache).expect("engine");

    let first = measure(COMPILE_ROUNDS, || {
        clear_cache(&cache);
        let p = engine.load(&path).expect("load");
        assert_eq!(*p.cache_status(), CacheStatus::Miss);
    });
    let cached = measure(ROUNDS, || {
        let p = engine.load(&path).expect("load");
        assert_eq!(*p.cache_status(), CacheStatus::Hit);
    });

    let plugin = engine.load(&path).expect("load");
    let ctx = CallContext { session_id: "bench".into(), attempt: 1 };
    let snap = SnapshotOutcome { taken: true, label: quiesce::report::Consistency::AppConsistent };
    let instantiate = measure(ROUNDS, || {
        rt.block_on(plugin.instantiate(InstanceConfig::new("noop"))).expect("instantiate");
    });
    let mut live = rt.block_on(plugin.instantiate(InstanceConfig::new("noop"))).expect("instantiate");
    let calls = measure(ROUNDS, || {
        rt.block_on(async {
            assert!(live.pre(&ctx).await.is_success());
            assert!(live.post(&ctx, &snap).await.is_success());
        });
    });
    let session = measure(ROUNDS, || {
        rt.block_on(async {
            let mut inst = plugin.instantiate(InstanceConfig::new("noop")).await.expect("instantiate");
            assert!(inst.pre(&ctx).await.is_success());
            assert!(inst.post(&ctx, &snap).await.is_success());
        });
    });

    let pre = s.script("pre.sh", "#!/bin/sh\nexit 0\n");
    let post = s.script("post.sh", "#!/bin/sh\nexit 0\n");
    let fork = measure(ROUNDS, || {
        for p in [&pre, &post] {
            assert!(Command::new(p).status().expect("spawn").success());
        }
    });
    let (pre_f, post_f) = (open_trusted(&pre, Rule::Script).unwrap(), open_trusted(&post, Rule::Script).unwrap());
    let spec = ScriptSpec::new("noop");
    let runner = measure(ROUNDS, || {
        rt.block_on(async {
            assert!(run_script(&pre_f, &spec).await.outcome.is_success());
            assert!(run_script(&post_f, &spec).await.outcome.is_success());
        });
    });

    let ratio = |shell: Duration, wasm: Duration| shell.as_secs_f64() / wasm.as_secs_f64();
    println!("wasm_hooks: medians ({ROUNDS} rounds; compile {COMPILE_ROUNDS}), noop plugin {} bytes", plugin.size());
    println!("  {:<52} {}", "engine + linker setup (once per process)", fmt(setup));
    println!("  {:<52} {}", "first load (trust check, read, compile, cache write)", fmt(first));
    println!("  {:<52} {}", "cached load (trust check, read, verify, deserialize)", fmt(cached));
    println!("  {:<52} {}", "instantiate (Store + WASI ctx + instance)", fmt(instantiate));
    println!("  {:<52} {}", "WASM no-op pre+post, live instance", fmt(calls));
    println!("  {:<52} {}", "WASM no-op instantiate+pre+post (one session)", fmt(session));
    println!("  {:<52} {}", "shell no-op pre+post, bare fork/exec+wait", fmt(fork));
    println!("  {:<52} {}", "shell no-op pre+post, quiesce script runner", fmt(runner));
    println!("  ratio bare fork/exec : WASM instantiate+pre+post   {:>8.1}x", ratio(fork, session));
    println!("  ratio script runner  : WASM instantiate+pre+post   {:>8.1}x", ratio(runner, session));
}
