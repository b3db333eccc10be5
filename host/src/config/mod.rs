//! What a session should do, read from the admin's config.
//!
//! Two formats feed one model: the widely deployed Azure-style JSON
//! (`VMSnapshotScriptPluginConfig.json`, read unchanged) and quiesce's native
//! TOML, which can declare several hooks. The format is detected from the
//! content, so `--config` takes either.

mod legacy;
mod native;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::trust::{self, Rule, TrustError};

/// Where quiesce looks when no `--config` is given: the native config first,
/// then the legacy file admins already have.
pub const NATIVE_DEFAULT: &str = "/etc/quiesce/quiesce.toml";
pub const LEGACY_DEFAULT: &str = "/etc/azure/VMSnapshotScriptPluginConfig.json";

/// Freeze settings when nothing overrides them.
pub const DEFAULT_MAX_FREEZE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file failed the ownership/mode checks; its content is not trusted.
    /// (The trust error names the file.)
    #[error("config {source}")]
    Untrusted { path: PathBuf, source: TrustError },
    /// The file was read but cannot be used; `format` is what its content
    /// looked like.
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, format: Format, message: String },
}

impl ConfigError {
    pub fn path(&self) -> &Path {
        match self {
            ConfigError::Untrusted { path, .. } | ConfigError::Invalid { path, .. } => path,
        }
    }

    /// Which format the admin meant, for deciding what an unusable config
    /// may still allow (see the session's fallback). A file that was read
    /// tells by its content, as a good one does. An untrusted file is not
    /// read — its content may be anyone's — so its *name* decides, which only
    /// the admin chose: the legacy default path or a `.json` name is legacy,
    /// anything else native.
    pub fn format(&self) -> Format {
        match self {
            ConfigError::Invalid { format, .. } => *format,
            ConfigError::Untrusted { path, .. } => Format::from_name(path),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Azure-style JSON.
    Legacy,
    /// quiesce's TOML.
    Native,
    /// No config file: no hooks, freeze with defaults.
    Builtin,
}

impl Format {
    /// Legacy for the legacy default path or a `.json` name, else native.
    fn from_name(path: &Path) -> Format {
        let json = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
        if json || path == Path::new(LEGACY_DEFAULT) {
            Format::Legacy
        } else {
            Format::Native
        }
    }

    /// A JSON object is the legacy format; anything else is TOML.
    fn sniff(text: &str) -> Format {
        if text.trim_start().starts_with('{') {
            Format::Legacy
        } else {
            Format::Native
        }
    }
}

/// Which permission rule a hook script must meet; the config format decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScriptPermissions {
    /// The Azure framework's mode 700 ([`Rule::LegacyScript`]).
    Legacy,
    /// Owner-writable only; read/execute for others passes with a warning ([`Rule::Script`]).
    Native,
}

impl ScriptPermissions {
    pub fn rule(self) -> Rule {
        match self {
            ScriptPermissions::Legacy => Rule::LegacyScript,
            ScriptPermissions::Native => Rule::Script,
        }
    }
}

/// What to do when a step fails: still take the (weaker) snapshot, or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    Continue,
    Abort,
}

/// A script and the arguments it is run with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScriptAction {
    pub path: PathBuf,
    pub args: Vec<String>,
    /// Retries after a failed attempt (N retries = up to N+1 attempts).
    pub retries: u32,
    pub permissions: ScriptPermissions,
}

/// A WebAssembly plugin hook: one instance lives from pre to post.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginAction {
    pub path: PathBuf,
    /// The admin's parameters, handed to every call.
    pub params: Vec<(String, String)>,
    /// What the admin allows (`tcp:HOST:PORT`, `unix:/path`, `file:/path`,
    /// `dir:/path`, `exec:/path`); everything else is refused.
    pub grants: Vec<String>,
    pub memory_mib: u64,
    /// Retries after a failed pre/post call.
    pub retries: u32,
}

/// What a hook runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HookBody {
    /// A pre and/or post script (the legacy pair, or native `pre`/`post`).
    Script { pre: Option<ScriptAction>, post: Option<ScriptAction> },
    /// A WebAssembly component exporting `quiesce:plugin/hooks`.
    Plugin(PluginAction),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HookSpec {
    pub name: String,
    pub body: HookBody,
    /// Per attempt (per call for plugins).
    pub timeout: Duration,
    pub retry_delay: Duration,
    pub on_failure: OnFailure,
    /// Exit codes that mean "succeeded with a warning" (the Azure samples exit 2 for that).
    pub warning_exit_codes: Vec<i32>,
}

impl HookSpec {
    /// The scripts of a script hook (None, None for a plugin).
    pub fn scripts(&self) -> (Option<&ScriptAction>, Option<&ScriptAction>) {
        match &self.body {
            HookBody::Script { pre, post } => (pre.as_ref(), post.as_ref()),
            HookBody::Plugin(_) => (None, None),
        }
    }

    pub fn plugin(&self) -> Option<&PluginAction> {
        match &self.body {
            HookBody::Plugin(p) => Some(p),
            HookBody::Script { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FreezeSettings {
    pub enabled: bool,
    /// Restrict freezing to these mount points; empty = every eligible one.
    pub mounts: Vec<PathBuf>,
    /// Mount points (or globs) never to freeze.
    pub exclude: Vec<String>,
    pub max_freeze: Duration,
    pub on_failure: OnFailure,
}

/// How the snapshot itself is taken, when quiesce takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum SnapshotSpec {
    /// Run by `/bin/sh -c` while frozen; exit 0 = taken. The optional
    /// delete/restore commands are run by `points delete` / `points restore`.
    Command {
        command: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        delete_command: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        restore_command: Option<String>,
    },
    /// Clone a file (a VM disk image) with FICLONE: an instant block-level copy.
    Reflink { source: PathBuf, dest: PathBuf },
    /// A read-only snapshot of a btrfs subvolume.
    Btrfs { source: PathBuf, dest: PathBuf },
    /// A cloud disk snapshot through the cloud's CLI (argv templates).
    #[serde(untagged)]
    Cloud(crate::snapshot::cloud::CloudSpec),
}

/// `[service]`: what `quiesce serve` takes from the native config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceSettings {
    /// Members of this group may use the socket (made 0660 root:GROUP)
    /// besides root; every connection is still checked by its peer credentials.
    pub group: Option<String>,
    /// How long a session begun with `freeze = "external"` or `"none"` is
    /// held for its `end` unless the client asks otherwise.
    pub external_hold: Duration,
    /// A connection with no request for this long is closed (unless a
    /// session bound to it is begun): an idle client must not keep one of
    /// the service's few connection slots for good.
    pub idle_timeout: Duration,
    /// The socket, unless `--socket` or `$QUIESCE_SOCKET` says otherwise.
    pub socket: Option<PathBuf>,
}

/// `[service] external_hold_secs` unless set.
pub const DEFAULT_EXTERNAL_HOLD: Duration = Duration::from_secs(60);

/// `[service] idle_timeout_secs` unless set.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings { group: None, external_hold: DEFAULT_EXTERNAL_HOLD, idle_timeout: DEFAULT_IDLE_TIMEOUT, socket: None }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// The file this came from (None for the built-in default).
    pub path: Option<PathBuf>,
    pub format: Format,
    /// In pre order; post hooks run in reverse.
    pub hooks: Vec<HookSpec>,
    pub freeze: FreezeSettings,
    pub snapshot: Option<SnapshotSpec>,
    /// `[snapshot] timeout_secs`: the longest the session waits for the
    /// provider (also for `--snapshot-cmd`); while frozen, the freeze
    /// deadline caps it too. None: the freeze deadline, or `max_freeze`.
    pub snapshot_timeout: Option<Duration>,
    /// `[points]`: the recovery point cap and retention.
    pub points: crate::points::Settings,
    pub service: ServiceSettings,
    /// `[metrics]`: where to publish Prometheus metrics after each session.
    pub metrics: Option<MetricsSettings>,
}

/// `[metrics] textfile = "PATH"`: a Prometheus text-format file for
/// node_exporter's textfile collector, rewritten atomically after each session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetricsSettings {
    /// Absolute, ending in `.prom` (node_exporter reads nothing else).
    pub textfile: PathBuf,
}

impl Config {
    /// No hooks; freeze every selected file system with the defaults.
    pub fn builtin() -> Config {
        Config {
            path: None,
            format: Format::Builtin,
            hooks: Vec::new(),
            freeze: FreezeSettings {
                enabled: true,
                mounts: Vec::new(),
                exclude: Vec::new(),
                max_freeze: DEFAULT_MAX_FREEZE,
                on_failure: OnFailure::Continue,
            },
            snapshot: None,
            snapshot_timeout: None,
            points: crate::points::Settings::default(),
            service: ServiceSettings::default(),
            metrics: None,
        }
    }

    /// Loads `path` after checking that only root can have written (or read) it.
    /// The content parsed is read from the very fd that was checked. A
    /// relative path is taken from the working directory (the check walks
    /// the absolute path from `/`).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        // Fails only for an empty path or without a working directory; the
        // trust check then names the path as not absolute.
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let path = path.as_path();
        let file = trust::open_trusted(path, Rule::Config).map_err(|source| ConfigError::Untrusted { path: path.to_path_buf(), source })?;
        let text = file.read_to_string().map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            format: Format::from_name(path),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Parses config text whose format is detected from the content: a JSON
    /// object is the legacy format, anything else is TOML.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let format = Format::sniff(text);
        let invalid = |message: String| ConfigError::Invalid { path: path.to_path_buf(), format, message };
        match format {
            Format::Legacy => legacy::parse(text),
            Format::Native | Format::Builtin => native::parse(text),
        }
        .map(|c| c.with_path(path))
        .map_err(invalid)
    }

    /// The config a session uses when `--config` is not given.
    pub fn default_path() -> Option<PathBuf> {
        [NATIVE_DEFAULT, LEGACY_DEFAULT].iter().map(PathBuf::from).find(|p| p.exists())
    }

    fn with_path(mut self, path: &Path) -> Config {
        self.path = Some(path.to_path_buf());
        self
    }
}

/// Timeouts are configured in whole seconds in both formats, validated by
/// the one duration validator: zero makes no sense for a hook and is refused
/// rather than read as "no timeout", and a huge value is refused rather than
/// overflowing a deadline later.
/// The most retries a hook may ask for. Every attempt keeps up to
/// `OUTPUT_CAP` bytes of output and costs up to its timeout, so a typo like
/// `4294967295` would keep a session (and its locks) going for years.
pub const MAX_RETRIES: u32 = 100;

/// The most memory a plugin hook may be given: a 32-bit WebAssembly memory
/// cannot use more than 4 GiB anyway.
pub const MAX_MEMORY_MIB: u64 = 4096;

fn checked_retries(field: &str, retries: u32) -> Result<u32, String> {
    if retries > MAX_RETRIES {
        Err(format!("`{field}` = {retries} is out of range (allowed: 0 to {MAX_RETRIES})"))
    } else {
        Ok(retries)
    }
}

fn positive_secs(field: &str, secs: u64) -> Result<Duration, String> {
    crate::duration::checked_secs(field, secs).map_err(|e| e.to_string())
}
