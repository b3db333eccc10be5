//! One wasmtime `Engine` per process: the compiler settings, the epoch
//! ticker that enforces per-call deadlines, the linker with every import a
//! plugin may use, and the compiled-code cache.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};

use super::bindings::{v0_1_0, v0_2_0, WitVersion};
use super::cache::{hex, sha256, Cache, CacheStatus};
use super::detect::{self, Kind};
use super::instance::Leftover;
use super::plugin::{Loaded, Plugin, PluginPre};
use super::state::HostState;
use super::{error_chain, PluginError};
use crate::trust::{self, Rule};

/// Where compiled plugins are cached unless the caller says otherwise
/// (the CLI honours `$QUIESCE_CACHE_DIR`).
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/quiesce/plugins";

/// Granularity of the epoch deadline: a spinning plugin overruns its
/// timeout by at most about this much.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Larger files are refused before anything is read into memory.
pub(crate) const MAX_PLUGIN_BYTES: u64 = 64 << 20;

/// The plugin runtime. Cheap to clone; the epoch ticker stops when the last
/// clone is dropped, and ticks only while guest code runs (see [`Ticker`]).
#[derive(Clone)]
pub struct WasmEngine {
    inner: Arc<Inner>,
}

type Linked = Result<Linker<HostState>, String>;

struct Inner {
    engine: Engine,
    /// Every import a plugin may use. Built on the ticker thread while this
    /// one reads and verifies the cached plugin (a few hundred µs each, and
    /// a one-shot session pays both): taken from `linker_rx` at first use.
    linker: OnceLock<Linked>,
    linker_rx: Mutex<Option<mpsc::Receiver<Linked>>>,
    cache: Cache,
    /// Hands what `Drop` retires to the ticker thread, which then stops.
    retire: Mutex<Option<mpsc::Sender<ToTicker>>>,
    ticker: Ticker,
    /// Plugins loaded before, by path, with the identity of the file they
    /// were read from: a long-lived process (the service) loads an unchanged
    /// plugin without reading, verifying or linking it again.
    loaded: Mutex<HashMap<PathBuf, (FileKey, Arc<Loaded>)>>,
}

/// What identifies one version of a plugin file: replacing or rewriting it
/// changes the inode, the size or the change time (ctime cannot be set back
/// by a user, unlike mtime).
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileKey {
    fn of(file: &File) -> Option<FileKey> {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata().ok()?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Some(FileKey {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }
}

/// File timestamps advance in coarse ticks (a few ms), so a same-size
/// rewrite within the tick of a load would keep its key (git's "racily
/// clean" index entries): a file changed this recently is not remembered,
/// only read again. A later change then lands in a later tick.
pub const SETTLED: std::time::Duration = std::time::Duration::from_secs(2);

impl FileKey {
    fn settled(&self) -> bool {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0);
        now.saturating_sub(self.ctime_ns.max(self.mtime_ns)) >= SETTLED.as_nanos() as i128
    }
}

/// More distinct plugin paths than any config names; past it the memo is
/// cleared rather than grown.
const LOADED_CAP: usize = 256;

/// What an engine owns that takes long to free: the linker (every WASI
/// and quiesce import) and the loaded plugins (compiled code, type
/// registrations). Freed on the ticker thread, not on the one that drops
/// the last clone: that is a one-shot session's own thread, which would pay
/// the `free`s and `munmap`s before it reports (and the
/// process exit that follows does not need it freed).
struct Retired {
    _linker: OnceLock<Linked>,
    _loaded: HashMap<PathBuf, (FileKey, Arc<Loaded>)>,
}

/// What the engine's users hand the ticker thread.
enum ToTicker {
    /// The last clone of the engine is gone: free what it left, then stop.
    Engine(Box<Retired>),
    /// What a closed plugin instance left (its memory).
    Instance(Leftover),
    /// Guest code started running: tick until none runs.
    Wake,
}

/// Switches the epoch ticker on while guest code runs. The service keeps
/// its engine for days; a ticker that woke every 10 ms for the whole of
/// them would keep an idle daemon on the CPU 100 times a second (a VM's
/// steal time, a laptop's battery) for nothing: an epoch only matters to
/// a guest that is running.
#[derive(Clone)]
pub(crate) struct Ticker {
    running: Arc<AtomicUsize>,
    wake: mpsc::Sender<ToTicker>,
}

/// Guest code may be running while this lives (an instantiation or a call).
pub(crate) struct GuestRunning {
    running: Arc<AtomicUsize>,
}

impl Ticker {
    pub(crate) fn guest_running(&self) -> GuestRunning {
        if self.running.fetch_add(1, Ordering::SeqCst) == 0 {
            // A ticker that is gone (the engine dropped) has nothing to tick.
            let _ = self.wake.send(ToTicker::Wake);
        }
        GuestRunning { running: self.running.clone() }
    }
}

impl Drop for GuestRunning {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let retired = Retired {
            _linker: std::mem::take(&mut self.linker),
            _loaded: std::mem::take(self.loaded.get_mut().unwrap_or_else(|p| p.into_inner())),
        };
        // A ticker that is gone already hands it back in the error, which
        // frees it here.
        if let Some(tx) = self.retire.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(ToTicker::Engine(Box::new(retired)));
        }
    }
}

impl WasmEngine {
    /// Sets up the engine, its ticker thread and the cache directory
    /// (created root-only if missing; an unusable one disables caching
    /// with a warning rather than failing).
    pub fn new(cache_dir: &Path) -> Result<WasmEngine, PluginError> {
        Self::with_cache(Cache::open(cache_dir))
    }

    /// An engine that never reads or writes a cache (nor creates its
    /// directory): for `inspect` by a user who is not root.
    pub fn without_cache() -> Result<WasmEngine, PluginError> {
        Self::with_cache(Cache::disabled("not used by this command"))
    }

    fn with_cache(cache: Cache) -> Result<WasmEngine, PluginError> {
        let rt = |e: wasmtime::Error| PluginError::Runtime(error_chain(&e));
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let engine = Engine::new(&config).map_err(rt)?;
        let ticker_engine = engine.clone();
        let (linker_tx, linker_rx) = mpsc::sync_channel(1);
        let (retire_tx, retire_rx) = mpsc::channel::<ToTicker>();
        let ticker = Ticker { running: Arc::new(AtomicUsize::new(0)), wake: retire_tx.clone() };
        let running = ticker.running.clone();
        std::thread::Builder::new()
            .name("quiesce-epoch".into())
            .spawn(move || {
                // Nobody waiting (the engine was dropped unused) is fine.
                let _ = linker_tx.send(build_linker(&ticker_engine));
                // Ticks keep their schedule: a message between two (a leftover
                // to free, a `Wake`) must not put the next one off.
                let mut next_tick = Instant::now() + EPOCH_TICK;
                loop {
                    // Checked before each wait: a guest that starts after
                    // the check sends `Wake`, which ends a wait without end.
                    let next = if running.load(Ordering::SeqCst) > 0 {
                        retire_rx.recv_timeout(next_tick.saturating_duration_since(Instant::now()))
                    } else {
                        retire_rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
                    };
                    match next {
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            ticker_engine.increment_epoch();
                            next_tick = Instant::now() + EPOCH_TICK;
                        }
                        Ok(ToTicker::Wake) => next_tick = Instant::now() + EPOCH_TICK,
                        Ok(ToTicker::Instance(leftover)) => drop(leftover),
                        // The last clone is gone: free what it left, stop.
                        Ok(ToTicker::Engine(retired)) => {
                            drop(retired);
                            return;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
            .map_err(|e| PluginError::Runtime(format!("cannot start the epoch ticker thread: {e}")))?;

        Ok(WasmEngine {
            inner: Arc::new(Inner {
                engine,
                linker: OnceLock::new(),
                linker_rx: Mutex::new(Some(linker_rx)),
                cache,
                retire: Mutex::new(Some(retire_tx)),
                ticker,
                loaded: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Frees `leftover` on the ticker thread (here, if that thread is gone).
    pub(crate) fn free_later(&self, leftover: Leftover) {
        let tx = self.inner.retire.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(tx) = tx {
            // A ticker that is gone hands it back in the error: freed here.
            let _ = tx.send(ToTicker::Instance(leftover));
        }
    }

    /// The linker the ticker thread built (waiting for it the first time),
    /// or one built here if that thread is gone.
    fn linker(&self) -> Result<&Linker<HostState>, PluginError> {
        let linked = self.inner.linker.get_or_init(|| {
            let rx = self.inner.linker_rx.lock().unwrap_or_else(|p| p.into_inner()).take();
            match rx.map(|rx| rx.recv()) {
                Some(Ok(linked)) => linked,
                _ => build_linker(&self.inner.engine),
            }
        });
        linked.as_ref().map_err(|e| PluginError::Runtime(e.clone()))
    }

    /// What a plugin instance holds while its guest code runs.
    pub(crate) fn ticker(&self) -> &Ticker {
        &self.inner.ticker
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub fn cache_dir(&self) -> &Path {
        self.inner.cache.dir()
    }

    /// Whether a verified compiled entry exists for these plugin bytes.
    pub fn is_cached(&self, wasm: &[u8]) -> bool {
        self.inner.cache.contains(&self.inner.engine, wasm)
    }

    /// Opens `path` under the plugin trust rule (root-owned, not writable by
    /// group or others, every directory on the way likewise), reads it from
    /// the checked fd, and makes a [`Plugin`] of it: refused with
    /// [`PluginError::Load`] unless it is a component of a
    /// `quiesce:plugin` world this host implements ([`WitVersion`]).
    pub fn load(&self, path: &Path) -> Result<Plugin, PluginError> {
        let started = Instant::now();
        let file = trust::open_trusted(path, Rule::Plugin).map_err(|source| PluginError::Untrusted { path: path.to_path_buf(), source })?;
        // The trust checks above run every time; only reading, verifying
        // and linking an unchanged file is skipped.
        let key = FileKey::of(file.file());
        if let Some(key) = key {
            let known = self.loaded().get(path).filter(|(k, _)| *k == key).map(|(_, l)| l.clone());
            if let Some(shared) = known {
                tracing::debug!("plugin {} unchanged since this process loaded it: reused (cache: Memory)", path.display());
                return Ok(Plugin::reused(self.clone(), shared, started.elapsed()));
            }
        }
        let bytes = read_checked(file.file(), path)?;
        let plugin = self.load_bytes(path, bytes, started)?;
        // Read after the file was read: a change while reading shows as a new key next time.
        if let (Some(key), Some(after)) = (key, FileKey::of(file.file())) {
            if key == after && key.settled() {
                let mut loaded = self.loaded();
                if loaded.len() >= LOADED_CAP {
                    loaded.clear();
                }
                loaded.insert(path.to_path_buf(), (key, plugin.shared().clone()));
            }
        }
        Ok(plugin)
    }

    fn loaded(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (FileKey, Arc<Loaded>)>> {
        // A panic elsewhere while holding it leaves a consistent map (insert/get/clear only).
        self.inner.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn load_bytes(&self, path: &Path, bytes: Vec<u8>, started: Instant) -> Result<Plugin, PluginError> {
        if let Kind::Other(what) = detect::classify(&bytes) {
            return Err(PluginError::load(path, what));
        }
        let engine = &self.inner.engine;
        // Hashed once: the cache key and the reported digest both come from it.
        let digest = sha256(&bytes);
        let (component, cache) = self
            .inner
            .cache
            .load_or_compile(engine, &bytes, &digest)
            .map_err(|e| PluginError::load(path, format!("not a valid component: {}; {}", error_chain(&e), detect::expected())))?;
        self.link(path, &bytes, &digest, &component, cache, started)
    }

    /// Checks a compiled component against the world and pre-links it.
    pub(crate) fn link(
        &self,
        path: &Path,
        bytes: &[u8],
        digest: &[u8; 32],
        component: &Component,
        cache: CacheStatus,
        started: Instant,
    ) -> Result<Plugin, PluginError> {
        let engine = &self.inner.engine;
        let version = detect::check_world(engine, component).map_err(|m| PluginError::load(path, m))?;
        let linked = self.linker()?.instantiate_pre(component).and_then(|pre| match version {
            WitVersion::V0_1_0 => v0_1_0::QuiescePluginPre::new(pre).map(PluginPre::V0_1_0),
            WitVersion::V0_2_0 => v0_2_0::QuiescePluginPre::new(pre).map(PluginPre::V0_2_0),
        });
        let pre = linked.map_err(|e| {
            PluginError::load(
                path,
                format!("cannot be linked: {} (quiesce offers WASI 0.2 and quiesce:plugin@{version} imports only)", error_chain(&e)),
            )
        })?;
        let plugin = Plugin::new(self.clone(), path, bytes.len() as u64, hex(digest), component, pre, cache, started.elapsed());
        tracing::debug!(
            "loaded plugin {} ({} bytes, cache: {:?}) in {:.3} ms",
            path.display(),
            bytes.len(),
            plugin.cache_status(),
            started.elapsed().as_secs_f64() * 1e3
        );
        Ok(plugin)
    }
}

/// WASI 0.2 and every `quiesce:plugin` version's imports, side by side
/// (their names carry the version).
fn build_linker(engine: &Engine) -> Linked {
    let rt = |e: wasmtime::Error| format!("cannot set up the plugin imports: {}", error_chain(&e));
    let mut linker = Linker::<HostState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(rt)?;
    v0_1_0::QuiescePlugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s).map_err(rt)?;
    v0_2_0::QuiescePlugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s).map_err(rt)?;
    Ok(linker)
}

pub(crate) fn read_checked(file: &File, path: &Path) -> Result<Vec<u8>, PluginError> {
    let io = |e: std::io::Error| PluginError::load(path, format!("cannot read: {e}"));
    let len = file.metadata().map_err(io)?.len();
    if len > MAX_PLUGIN_BYTES {
        return Err(PluginError::load(path, format!("{len} bytes; plugins larger than {} MiB are refused", MAX_PLUGIN_BYTES >> 20)));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_PLUGIN_BYTES + 1).read_to_end(&mut bytes).map_err(io)?;
    Ok(bytes)
}
