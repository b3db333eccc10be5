//! `quiesce plugin inspect FILE.wasm`: what a plugin is before anyone
//! grants it anything — its WIT version, imports, exports, the grants it asks
//! for, its size — and whether a session would accept the file where it lies.
//!
//! Inspecting is for vendors as much as for admins: it works on any file the
//! caller can read, as any user. Reading is not a trust decision (the trust
//! walk that a session does is reported as a verdict, not enforced), so:
//! - the file is compiled in memory and nothing is written, unless the
//!   caller is root and the file passes the session's trust checks (then it
//!   is loaded exactly as a session would, warming the cache);
//! - a hostile file gets no more than a session would give it: at most
//!   64 MiB read, reading and compiling under [`INSPECT_DEADLINE`] (a FIFO or
//!   a compiler bomb does not hang the command), `describe` in an instance
//!   with no grants, 64 MiB of memory and 5 s.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use wasmtime::component::Component;

use super::detect::{self, Kind};
use super::engine::{read_checked, WasmEngine};
use super::plugin::{ParamDoc, Plugin, PluginInfo};
use super::{error_chain, CacheStatus, PluginError, WitVersion, HOOKS_INTERFACE};
use crate::trust::{self, Rule};

/// How long reading and compiling a file may take (a small plugin compiles
/// in a fifth of a second, a large one in a few seconds on a busy machine).
pub const INSPECT_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    pub path: String,
    /// The version of `quiesce:plugin` the plugin speaks.
    pub wit_version: WitVersion,
    /// Whether it exports `check` (0.2.0 and later).
    pub has_check: bool,
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
    /// Whether this inspection used the cache at all (only as root, for a
    /// file a session would accept).
    pub cache_used: bool,
    pub cache_dir: String,
    /// Whether a session would load the file from where it lies.
    pub accepted_in_place: bool,
    /// Why (not), and the fix.
    pub acceptance: String,
}

/// Inspects `path` under [`INSPECT_DEADLINE`].
pub async fn inspect(engine: &WasmEngine, path: &Path) -> Result<Inspection, PluginError> {
    inspect_within(engine, path, INSPECT_DEADLINE).await
}

/// [`inspect`] with another deadline for reading and compiling.
pub async fn inspect_within(engine: &WasmEngine, path: &Path, deadline: Duration) -> Result<Inspection, PluginError> {
    // The session's verdict on the file where it lies: the same walk, the
    // same messages (each names the fix).
    let verdict = trust::open_trusted(path, Rule::Plugin).map(drop);
    let use_cache = verdict.is_ok() && nix::unistd::geteuid().is_root();
    let (accepted_in_place, acceptance) = match &verdict {
        Ok(()) => (true, "yes: a session would load this file from here".to_owned()),
        Err(e) => (false, format!("no: {e}")),
    };

    let loader = engine.clone();
    let owned: PathBuf = path.to_path_buf();
    let job = tokio::task::spawn_blocking(move || if use_cache { loader.load(&owned) } else { load_in_memory(&loader, &owned) });
    let plugin: Plugin = match tokio::time::timeout(deadline, job).await {
        Ok(Ok(loaded)) => loaded?,
        Ok(Err(join)) => return Err(PluginError::load(path, format!("the compiler failed: {join}"))),
        // The blocking thread cannot be stopped; the command ends soon after.
        Err(_) => {
            return Err(PluginError::load(path, format!("reading and compiling took longer than {} s; refused", deadline.as_secs_f64())))
        }
    };
    let info: PluginInfo = plugin.describe().await?;
    Ok(Inspection {
        path: path.display().to_string(),
        wit_version: plugin.wit_version(),
        has_check: plugin.wit_version().has_check(),
        world: format!("quiesce:plugin/quiesce-plugin@{v} (exports {HOOKS_INTERFACE}@{v})", v = plugin.wit_version()),
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
        cache_used: use_cache,
        cache_dir: engine.cache_dir().display().to_string(),
        accepted_in_place,
        acceptance,
    })
}

/// Reads any readable regular file (a FIFO or device is refused, not
/// waited on) and compiles it in memory; writes nothing.
fn load_in_memory(engine: &WasmEngine, path: &Path) -> Result<Plugin, PluginError> {
    let started = Instant::now();
    let io = |e: std::io::Error| PluginError::load(path, format!("cannot read: {e}"));
    let file: File = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path).map_err(io)?;
    if !file.metadata().map_err(io)?.is_file() {
        return Err(PluginError::load(path, "not a regular file"));
    }
    let bytes = read_checked(&file, path)?;
    if let Kind::Other(what) = detect::classify(&bytes) {
        return Err(PluginError::load(path, what));
    }
    let component = Component::new(engine.engine(), &bytes)
        .map_err(|e| PluginError::load(path, format!("not a valid component: {}; {}", error_chain(&e), detect::expected())))?;
    engine.link(
        path,
        &bytes,
        &super::cache::sha256(&bytes),
        &component,
        CacheStatus::Disabled("compiled in memory for inspection".into()),
        started,
    )
}
