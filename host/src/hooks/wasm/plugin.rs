//! A loaded plugin: compiled, checked against the world, pre-linked. Cheap
//! to keep for the process's life; each session makes its own instance.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use wasmtime::component::Component;

use super::bindings::v0_1_0::QuiescePluginPre;
use super::cache::{sha256_hex, CacheStatus};
use super::engine::WasmEngine;
use super::grants::Grants;
use super::instance::{InstanceConfig, PluginInstance};
use super::state::HostState;
use super::PluginError;

/// What a plugin says about itself (its `describe` export).
#[derive(Clone, Debug, Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub quiesces: String,
    /// The grants it asks for; the admin's config decides.
    pub grants: Vec<String>,
    pub params: Vec<ParamDoc>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ParamDoc {
    pub name: String,
    pub description: String,
    pub required: bool,
    pub default: Option<String>,
}

/// Cloning is cheap (the compiled code and the pre-linked instance are shared).
#[derive(Clone)]
pub struct Plugin {
    engine: WasmEngine,
    shared: Arc<Loaded>,
    cache: CacheStatus,
    load_time: Duration,
}

/// What loading a plugin file produced: kept by the engine for the next
/// load of the same unchanged file (see `WasmEngine::load`).
pub(crate) struct Loaded {
    path: PathBuf,
    size: u64,
    sha256: String,
    imports: Vec<String>,
    exports: Vec<String>,
    pre: QuiescePluginPre<HostState>,
}

impl Plugin {
    pub(crate) fn new(
        engine: WasmEngine,
        path: &Path,
        bytes: &[u8],
        component: &Component,
        pre: QuiescePluginPre<HostState>,
        cache: CacheStatus,
        load_time: Duration,
    ) -> Plugin {
        let ty = component.component_type();
        let imports = ty.imports(engine.engine()).map(|(n, _)| n.to_owned()).collect();
        let exports = ty.exports(engine.engine()).map(|(n, _)| n.to_owned()).collect();
        let shared =
            Arc::new(Loaded { path: path.to_path_buf(), size: bytes.len() as u64, sha256: sha256_hex(bytes), imports, exports, pre });
        Plugin { engine, shared, cache, load_time }
    }

    /// The same loaded plugin again, as a later load found it.
    pub(crate) fn reused(engine: WasmEngine, shared: Arc<Loaded>, load_time: Duration) -> Plugin {
        Plugin { engine, shared, cache: CacheStatus::Memory, load_time }
    }

    pub(crate) fn shared(&self) -> &Arc<Loaded> {
        &self.shared
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }
    pub fn size(&self) -> u64 {
        self.shared.size
    }
    pub fn sha256(&self) -> &str {
        &self.shared.sha256
    }
    /// Interfaces the component imports (WASI and quiesce).
    pub fn imports(&self) -> &[String] {
        &self.shared.imports
    }
    pub fn exports(&self) -> &[String] {
        &self.shared.exports
    }
    /// Whether this load compiled, used the cache, or found it loaded already.
    pub fn cache_status(&self) -> &CacheStatus {
        &self.cache
    }
    /// Time `WasmEngine::load` took (trust checks, read, compile or cache load, link).
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    pub(crate) fn pre(&self) -> &QuiescePluginPre<HostState> {
        &self.shared.pre
    }
    pub(crate) fn engine(&self) -> &WasmEngine {
        &self.engine
    }

    /// Calls `describe` in a throw-away instance with no grants (5 s, 64 MiB).
    pub async fn describe(&self) -> Result<PluginInfo, PluginError> {
        let mut cfg = InstanceConfig::new(self.shared.path.display().to_string());
        cfg.grants = Grants::none();
        cfg.call_timeout = Duration::from_secs(5);
        let mut inst = self.instantiate(cfg).await?;
        inst.describe().await.map_err(|outcome| PluginError::load(&self.shared.path, format!("describe failed: {outcome}")))
    }

    /// A fresh instance for one session, alive until dropped, a trap or a
    /// timeout.
    pub async fn instantiate(&self, cfg: InstanceConfig) -> Result<PluginInstance, PluginError> {
        PluginInstance::new(self, cfg).await
    }
}
