//! WebAssembly hooks: third-party quiesce plugins run in a sandbox with
//! only the capabilities the administrator granted.
//!
//! A plugin is a WebAssembly component exporting `quiesce:plugin/hooks`
//! (the WIT packages in `wit/v0.1.0/` and `wit/v0.2.0/`; a plugin speaks
//! one, the host runs both — [`WitVersion`]). The life of one, as the session
//! drives it:
//!
//! ```no_run
//! # async fn demo() -> Result<(), quiesce::hooks::wasm::PluginError> {
//! use std::path::Path;
//! use quiesce::hooks::wasm::*;
//! let engine = WasmEngine::new(Path::new(DEFAULT_CACHE_DIR))?;       // once per process
//! let plugin = engine.load(Path::new("/etc/quiesce/plugins/pg.wasm"))?; // checks, compiles or loads from cache
//! let mut cfg = InstanceConfig::new("pg");
//! cfg.grants = Grants::parse(["tcp:127.0.0.1:5432"])?;
//! let mut inst = plugin.instantiate(cfg).await?;                       // one per session
//! let ctx = CallContext { session_id: "s1".into(), attempt: 1 };
//! let pre = inst.pre(&ctx).await;                                      // CallOutcome
//! // ... freeze, snapshot, thaw ...
//! let post = inst.post_outcome(&ctx, &SnapshotOutcome { taken: true, label: quiesce::report::Consistency::AppConsistent }).await;
//! // post.not_held: Some(why) when a 0.2.0 plugin says its quiesce did not hold
//! let events = inst.take_events();                                     // logs, grant denials
//! # Ok(()) }
//! ```
//!
//! Why it is built this way:
//! - **One instance per session, alive from pre to post**: its `Store` owns
//!   the plugin's connections, so a database session (and the lock it
//!   holds) spans the snapshot. After a trap or a timeout the store is
//!   dropped — the connections close, the database releases the lock — and
//!   the instance answers [`CallOutcome::Dead`] from then on.
//! - **Default deny**: WASI gets no preopens, no environment, no arguments,
//!   no sockets, no name lookup, no inherited stdio, and a wall clock stuck
//!   at the Unix epoch (real time is not the plugin's business; the
//!   `clock` import offers a monotonic clock). Everything else goes through
//!   quiesce's own imports, each checked against the [`Grants`]; a refusal
//!   is an error value for the guest and a [`GrantDenial`] for the report.
//! - **Two clocks on every call**: an epoch deadline stops a guest spinning
//!   in its own code, a `tokio` timeout stops one blocked inside a host call
//!   (a socket read), which epochs cannot reach.
//! - **Compiled code is cached on disk** ([`cache`]), on a root-only path,
//!   authenticated with a per-machine key, so a session loads a plugin in
//!   about a millisecond after the first time and never runs a planted entry.
//! - **Path grants are pinned** when an instance is set up (`pinned`): reads
//!   and Unix-socket connects resolve beneath them with no symlink followed.

mod bindings;
pub mod cache;
mod caps;
mod detect;
mod engine;
pub mod grants;
mod inspect;
mod instance;
mod output;
mod pinned;
mod plugin;
pub mod scaffold;
mod state;

use std::path::PathBuf;

pub use bindings::WitVersion;
pub use cache::CacheStatus;
pub use engine::{WasmEngine, DEFAULT_CACHE_DIR, SETTLED as PLUGIN_FILE_SETTLED};
pub use grants::{Grant, GrantError, Grants};
pub use inspect::{inspect, inspect_within, Inspection, INSPECT_DEADLINE};
pub use instance::{CallContext, CallOutcome, Finding, InstanceConfig, PluginInstance, PostOutcome, Severity, SnapshotOutcome};
pub use plugin::{CheckRun, ParamDoc, Plugin, PluginInfo};
pub use state::{Artifact, Events, GrantDenial, LogLevel, LogRecord, LogSource};

/// The newest WIT package version this host implements (`wit/v0.2.0/`);
/// [`WitVersion::ALL`] lists every one it loads.
pub const WIT_VERSION: &str = "0.2.0";
/// The interface every plugin exports.
pub const HOOKS_INTERFACE: &str = "quiesce:plugin/hooks";

/// Why a plugin cannot be used. All of these are reported as
/// `PluginLoadFailed`, except [`PluginError::Grant`] (a config problem).
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file failed the ownership/mode checks.
    #[error("plugin {}: {source}", .path.display())]
    Untrusted { path: PathBuf, source: crate::trust::TrustError },
    /// The file is not a component this host can run: says what it is and
    /// what was expected.
    #[error("plugin {}: {message}", .path.display())]
    Load { path: PathBuf, message: String },
    /// A grant in the config is malformed.
    #[error("{0}")]
    Grant(#[from] GrantError),
    /// The runtime itself failed (engine setup, instantiation).
    #[error("plugin runtime: {0}")]
    Runtime(String),
}

impl PluginError {
    pub(crate) fn load(path: &std::path::Path, message: impl Into<String>) -> PluginError {
        PluginError::Load { path: path.to_path_buf(), message: message.into() }
    }
}

/// `{:#}`-style rendering of a wasmtime error with its causes, on one line.
pub(crate) fn error_chain(e: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in e.chain() {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}
