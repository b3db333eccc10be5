//! `quiesce plugin inspect FILE.wasm`: what a plugin is before anyone
//! grants it anything — its WIT version, imports, exports, the grants it asks
//! for, its size, and whether a compiled copy is cached.

use std::path::Path;

use serde::Serialize;

use super::engine::WasmEngine;
use super::plugin::{ParamDoc, PluginInfo};
use super::{CacheStatus, PluginError, HOOKS_INTERFACE, WIT_VERSION};

#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    pub path: String,
    pub wit_version: String,
    pub world: String,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    pub name: String,
    pub version: String,
    pub quiesces: String,
    pub requested_grants: Vec<String>,
    pub params: Vec<ParamDoc>,
    pub size: u64,
    pub sha256: String,
    /// A verified compiled copy was in the cache before this inspection.
    pub cached: bool,
    pub cache_dir: String,
}

/// Loads `path` (same checks as a session; warms the cache) and calls its
/// `describe` in an instance with no grants.
pub async fn inspect(engine: &WasmEngine, path: &Path) -> Result<Inspection, PluginError> {
    let plugin = engine.load(path)?;
    let info: PluginInfo = plugin.describe().await?;
    Ok(Inspection {
        path: path.display().to_string(),
        wit_version: WIT_VERSION.to_owned(),
        world: format!("quiesce:plugin/quiesce-plugin@{WIT_VERSION} (exports {HOOKS_INTERFACE}@{WIT_VERSION})"),
        imports: plugin.imports().to_vec(),
        exports: plugin.exports().to_vec(),
        name: info.name,
        version: info.version,
        quiesces: info.quiesces,
        requested_grants: info.grants,
        params: info.params,
        size: plugin.size(),
        sha256: plugin.sha256().to_owned(),
        cached: *plugin.cache_status() == CacheStatus::Hit,
        cache_dir: engine.cache_dir().display().to_string(),
    })
}
