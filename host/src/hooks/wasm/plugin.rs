//! A loaded plugin: compiled, checked against the world, pre-linked. Cheap
//! to keep for the process's life; each session makes its own instance.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use wasmtime::component::Component;

use super::bindings::{v0_1_0, v0_2_0, WitVersion};
use super::cache::CacheStatus;
use super::engine::WasmEngine;
use super::grants::Grants;
use super::instance::{CallContext, Finding, InstanceConfig, PluginInstance, Severity};
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

/// The pre-linked component, in the bindings of the version it speaks.
pub(crate) enum PluginPre {
    V0_1_0(v0_1_0::QuiescePluginPre<HostState>),
    V0_2_0(v0_2_0::QuiescePluginPre<HostState>),
}

impl PluginPre {
    pub(crate) fn version(&self) -> WitVersion {
        match self {
            PluginPre::V0_1_0(_) => WitVersion::V0_1_0,
            PluginPre::V0_2_0(_) => WitVersion::V0_2_0,
        }
    }
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
    pre: PluginPre,
}

impl Plugin {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        engine: WasmEngine,
        path: &Path,
        size: u64,
        sha256: String,
        component: &Component,
        pre: PluginPre,
        cache: CacheStatus,
        load_time: Duration,
    ) -> Plugin {
        let ty = component.component_type();
        let imports = ty.imports(engine.engine()).map(|(n, _)| n.to_owned()).collect();
        let exports = ty.exports(engine.engine()).map(|(n, _)| n.to_owned()).collect();
        let shared = Arc::new(Loaded { path: path.to_path_buf(), size, sha256, imports, exports, pre });
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

    /// The version of `quiesce:plugin` the plugin speaks.
    pub fn wit_version(&self) -> WitVersion {
        self.shared.pre.version()
    }

    pub(crate) fn pre(&self) -> &PluginPre {
        &self.shared.pre
    }
    pub(crate) fn engine(&self) -> &WasmEngine {
        &self.engine
    }

    /// Ends `instance` (one of this plugin's): its connections close now,
    /// its memory is freed on the engine's ticker thread.
    pub fn retire(&self, instance: PluginInstance) {
        if let Some(leftover) = instance.close() {
            self.engine.free_later(leftover);
        }
    }

    /// Calls `describe` in a throw-away instance with no grants (5 s, 64 MiB).
    pub async fn describe(&self) -> Result<PluginInfo, PluginError> {
        let mut cfg = InstanceConfig::new(self.shared.path.display().to_string());
        cfg.grants = Grants::none();
        cfg.call_timeout = Duration::from_secs(5);
        let mut inst = self.instantiate(cfg).await?;
        inst.describe().await.map_err(|outcome| PluginError::load(&self.shared.path, format!("describe failed: {outcome}")))
    }

    /// Runs the plugin's `check` in an instance of its own, with `cfg` — the
    /// admin's grants, params, memory limit, deadline and output cap, the
    /// same sandbox as `pre` and `post` — and drops the instance (its
    /// connections close). Never fails: what went wrong is in the result.
    /// A 0.1.0 plugin has no `check`: nothing runs ([`CheckRun::supported`]).
    pub async fn check(&self, cfg: InstanceConfig, check_id: &str) -> CheckRun {
        let mut run = CheckRun {
            wit_version: self.wit_version(),
            supported: self.wit_version().has_check(),
            findings: Vec::new(),
            failed: None,
            denials: Vec::new(),
        };
        if !run.supported {
            return run;
        }
        let mut inst = match self.instantiate(cfg).await {
            Ok(i) => i,
            Err(e) => {
                run.failed = Some(format!("could not be instantiated: {e}"));
                return run;
            }
        };
        let ctx = CallContext { session_id: check_id.to_owned(), attempt: 1 };
        match inst.check(&ctx).await {
            Ok(findings) => run.findings = findings,
            Err(outcome) => run.failed = Some(outcome.to_string()),
        }
        run.denials = inst.take_events().denials.iter().map(|d| format!("{d}; {}", d.advice())).collect();
        run
    }

    /// A fresh instance for one session, alive until dropped, a trap or a
    /// timeout.
    pub async fn instantiate(&self, cfg: InstanceConfig) -> Result<PluginInstance, PluginError> {
        PluginInstance::new(self, cfg).await
    }
}

/// What a plugin's `check` found ([`Plugin::check`]).
#[derive(Clone, Debug, Serialize)]
pub struct CheckRun {
    pub wit_version: WitVersion,
    /// False when the plugin's version has no `check` (0.1.0): nothing ran.
    pub supported: bool,
    /// In the plugin's order.
    pub findings: Vec<Finding>,
    /// The call itself failed (could not start, trapped, timed out, ran out
    /// of memory): how, in plain words.
    pub failed: Option<String>,
    /// Capability calls the grants refused during the check, with the fix.
    pub denials: Vec<String>,
}

impl CheckRun {
    /// Nothing says the hook would fail: the call worked, no `error`
    /// finding, no refused capability.
    pub fn ok(&self) -> bool {
        self.failed.is_none() && self.denials.is_empty() && !self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}
