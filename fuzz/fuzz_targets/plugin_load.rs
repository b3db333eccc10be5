//! Hostile components through the plugin loader and `inspect`: the fuzz
//! input is the `.wasm` file. The same path `quiesce plugin inspect` and a
//! session take — trust checks on a real file, the preamble checks, compile
//! (and write the cache entry), world check, link, instantiate, `describe` —
//! then a second load that must come from the cache.
//!
//! Compiling dominates: most mutations are refused by the preamble check or
//! the validator in microseconds, but each valid component costs a Cranelift
//! compile (tens of ms). The seeds are the repository's real plugins.
#![no_main]
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use quiesce::hooks::wasm::{inspect, CacheStatus, WasmEngine, HOOKS_INTERFACE};

struct World {
    /// Root-owned 0700 directory on a root-only path (the plugin trust rule
    /// refuses world-writable /tmp), removed at exit.
    dir: PathBuf,
    cache: PathBuf,
    engine: WasmEngine,
    rt: tokio::runtime::Runtime,
}

static WORLD: OnceLock<World> = OnceLock::new();

extern "C" fn cleanup() {
    if let Some(w) = WORLD.get() {
        let _ = fs::remove_dir_all(&w.dir);
    }
}

fn world() -> &'static World {
    WORLD.get_or_init(|| {
        let base = std::env::var_os("QUIESCE_FUZZ_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/run"));
        let dir = base.join(format!("quiesce-fuzz-{}", std::process::id()));
        fs::DirBuilder::new().mode(0o700).recursive(true).create(&dir).expect("create the fuzz directory");
        let cache = dir.join("cache");
        let engine = WasmEngine::new(&cache).expect("wasm engine");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        // SAFETY: registering a plain extern "C" fn.
        unsafe { libc::atexit(cleanup) };
        World { dir, cache, engine, rt }
    })
}

fuzz_target!(init: { world(); }, |data: &[u8]| {
    let w = world();
    let file = w.dir.join("plugin.wasm");
    fs::write(&file, data).expect("write the plugin file");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).expect("chmod");

    let first = w.rt.block_on(inspect(&w.engine, &file));
    if let Ok(i) = &first {
        assert_eq!(i.size, data.len() as u64);
        // Either frozen version (0.1.0 plugins keep loading beside 0.2.0), and
        // the one inspect names is the one the component exports.
        let wanted = format!("{HOOKS_INTERFACE}@{}", i.wit_version.as_str());
        assert!(i.exports.iter().any(|e| *e == wanted), "accepted without exporting {wanted}: {:?}", i.exports);
        // A fresh engine, as the next process: one engine keeps what it loaded in memory.
        let next = WasmEngine::new(&w.cache).expect("wasm engine");
        let again = next.load(&file).expect("a plugin that loaded once loads again");
        assert_eq!(*again.cache_status(), CacheStatus::Hit, "the second load comes from the cache");
        assert_eq!(again.sha256(), i.sha256);
    }
    // Compiled entries would fill the disk; every input starts cold.
    if let Ok(entries) = fs::read_dir(&w.cache) {
        // (The machine's cache key stays: the engines authenticate entries with it.)
        for e in entries.flatten().filter(|e| e.file_name() != "cache.key") {
            let _ = fs::remove_file(e.path());
        }
    }
});
