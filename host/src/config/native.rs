//! quiesce's own TOML config: several hooks, each with its own timeout,
//! retries and failure policy; freeze and snapshot settings.
//!
//! Unknown keys are errors here (unlike the legacy format): a typo such as
//! `timout_secs` must not silently fall back to a default.

use std::path::PathBuf;

use serde::Deserialize;

use crate::snapshot::cloud::{CloudKind, CloudSpec};
use crate::snapshot::ProviderKind;

use std::collections::BTreeMap;

use super::{
    checked_retries, positive_secs, Config, Format, HookBody, HookSpec, MetricsSettings, OnFailure, PluginAction, ScriptAction,
    ScriptPermissions, SnapshotSpec, MAX_MEMORY_MIB,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeFile {
    #[serde(default)]
    freeze: FreezeTable,
    snapshot: Option<SnapshotTable>,
    #[serde(default, rename = "hook")]
    hooks: Vec<HookTable>,
    #[serde(default)]
    points: crate::points::PointsTable,
    #[serde(default)]
    service: ServiceTable,
    metrics: Option<MetricsTable>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ServiceTable {
    group: Option<String>,
    external_hold_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    socket: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsTable {
    textfile: PathBuf,
}

/// node_exporter's textfile collector reads only `*.prom` files, so any other
/// name would be written and never seen: refused here instead.
fn metrics_settings(t: MetricsTable) -> Result<MetricsSettings, String> {
    let path = t.textfile;
    if !path.is_absolute() {
        return Err(format!("[metrics] textfile must be an absolute path, got {}", path.display()));
    }
    if path.extension().is_none_or(|e| e != "prom") || path.file_stem().is_none_or(|s| s.is_empty() || s.to_string_lossy().starts_with('.'))
    {
        return Err(format!(
            "[metrics] textfile {}: node_exporter's textfile collector reads only files named NAME.prom (not hidden); \
             name it e.g. /var/lib/prometheus/node-exporter/quiesce.prom",
            path.display()
        ));
    }
    Ok(MetricsSettings { textfile: path })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FreezeTable {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    mounts: Vec<PathBuf>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default = "default_max_freeze")]
    max_freeze_secs: u64,
    #[serde(default = "continue_")]
    on_failure: OnFailure,
}

impl Default for FreezeTable {
    fn default() -> Self {
        FreezeTable {
            enabled: true,
            mounts: Vec::new(),
            exclude: Vec::new(),
            max_freeze_secs: default_max_freeze(),
            on_failure: OnFailure::Continue,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SnapshotTable {
    /// Which provider; inferred from `command` / `reflink_*` when absent.
    kind: Option<ProviderKind>,
    command: Option<String>,
    delete_command: Option<String>,
    restore_command: Option<String>,
    /// reflink: the image; btrfs: the subvolume.
    source: Option<PathBuf>,
    /// Where the snapshot goes; `{session}` is replaced by the session id.
    dest: Option<PathBuf>,
    /// The older spelling of `source`/`dest` for reflink.
    reflink_source: Option<PathBuf>,
    reflink_dest: Option<PathBuf>,
    /// The longest the session waits for the provider (alone, it applies to `--snapshot-cmd`).
    timeout_secs: Option<u64>,
    /// Cloud parameters: `{disk}`, `{resource_group}`, `{instance}`, `{zone}`.
    disk: Option<String>,
    resource_group: Option<String>,
    instance: Option<String>,
    zone: Option<String>,
    /// Cloud: the snapshot's name template (default `quiesce-{session}`).
    name: Option<String>,
    /// Cloud: argv templates replacing the defaults.
    create: Option<Vec<String>>,
    finalize: Option<Vec<String>>,
    delete: Option<Vec<String>>,
    restore: Option<Vec<String>>,
}

/// The `[snapshot]` table as a provider spec (None: no provider, only a timeout).
fn snapshot_spec(t: SnapshotTable) -> Result<Option<SnapshotSpec>, String> {
    let kind = match t.kind {
        Some(k) => k,
        None if t.command.is_some() => ProviderKind::Command,
        None if t.reflink_source.is_some() || t.reflink_dest.is_some() => ProviderKind::Reflink,
        None if t.source.is_none()
            && t.dest.is_none()
            && t.delete_command.is_none()
            && t.restore_command.is_none()
            && t.disk.is_none()
            && t.create.is_none()
            && t.instance.is_none() =>
        {
            return Ok(None)
        }
        None => return Err("[snapshot] needs `kind` (\"reflink\", \"btrfs\", \"command\", \"azure\", \"aws\" or \"gcp\")".into()),
    };
    let name = kind.as_str();
    let cloud_keys = [
        ("disk", t.disk.is_some()),
        ("resource_group", t.resource_group.is_some()),
        ("instance", t.instance.is_some()),
        ("zone", t.zone.is_some()),
        ("name", t.name.is_some()),
        ("create", t.create.is_some()),
        ("finalize", t.finalize.is_some()),
        ("delete", t.delete.is_some()),
        ("restore", t.restore.is_some()),
    ];
    let stray = |keys: &[(&str, bool)]| -> Result<(), String> {
        match keys.iter().find(|(_, set)| *set) {
            Some((key, _)) => Err(format!("[snapshot] kind = \"{name}\" does not take `{key}`")),
            None => Ok(()),
        }
    };
    let absolute = |key: &str, p: Option<PathBuf>| -> Result<PathBuf, String> {
        match p {
            Some(p) if p.is_absolute() => Ok(p),
            Some(p) => Err(format!("[snapshot] `{key}` must be an absolute path, got {}", p.display())),
            None => Err(format!("[snapshot] kind = \"{name}\" needs `{key}`")),
        }
    };
    match kind {
        ProviderKind::External => Err("[snapshot] kind = \"external\" is an embedder's own provider; a config names one of \"reflink\", \"btrfs\", \"command\", \"azure\", \"aws\", \"gcp\"".into()),
        ProviderKind::Azure | ProviderKind::Aws | ProviderKind::Gcp => {
            stray(&[
                ("command", t.command.is_some()),
                ("delete_command", t.delete_command.is_some()),
                ("restore_command", t.restore_command.is_some()),
                ("source", t.source.is_some()),
                ("dest", t.dest.is_some()),
                ("reflink_source", t.reflink_source.is_some()),
                ("reflink_dest", t.reflink_dest.is_some()),
            ])?;
            let cloud = match kind {
                ProviderKind::Azure => CloudKind::Azure,
                ProviderKind::Aws => CloudKind::Aws,
                _ => CloudKind::Gcp,
            };
            let params = [("disk", t.disk), ("resource_group", t.resource_group), ("instance", t.instance), ("zone", t.zone)]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
                .collect();
            let spec = CloudSpec::resolve(cloud, params, t.name, [t.create, t.finalize, t.delete, t.restore])?;
            Ok(Some(SnapshotSpec::Cloud(spec)))
        }
        ProviderKind::Command => {
            stray(&cloud_keys)?;
            stray(&[
                ("source", t.source.is_some()),
                ("dest", t.dest.is_some()),
                ("reflink_source", t.reflink_source.is_some()),
                ("reflink_dest", t.reflink_dest.is_some()),
            ])?;
            let command = t.command.ok_or("[snapshot] kind = \"command\" needs `command`")?;
            Ok(Some(SnapshotSpec::Command { command, delete_command: t.delete_command, restore_command: t.restore_command }))
        }
        ProviderKind::Reflink | ProviderKind::Btrfs => {
            stray(&cloud_keys)?;
            stray(&[
                ("command", t.command.is_some()),
                ("delete_command", t.delete_command.is_some()),
                ("restore_command", t.restore_command.is_some()),
            ])?;
            if kind == ProviderKind::Btrfs {
                stray(&[("reflink_source", t.reflink_source.is_some()), ("reflink_dest", t.reflink_dest.is_some())])?;
            }
            if (t.source.is_some() && t.reflink_source.is_some()) || (t.dest.is_some() && t.reflink_dest.is_some()) {
                return Err("[snapshot] takes `source`/`dest` or the older `reflink_source`/`reflink_dest`, not both".into());
            }
            let source = absolute("source", t.source.or(t.reflink_source))?;
            let dest = absolute("dest", t.dest.or(t.reflink_dest))?;
            Ok(Some(if kind == ProviderKind::Reflink {
                SnapshotSpec::Reflink { source, dest }
            } else {
                SnapshotSpec::Btrfs { source, dest }
            }))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HookTable {
    name: String,
    pre: Option<PathBuf>,
    #[serde(default)]
    pre_args: Vec<String>,
    post: Option<PathBuf>,
    #[serde(default)]
    post_args: Vec<String>,
    #[serde(default = "default_timeout")]
    timeout_secs: u64,
    #[serde(default)]
    retries: u32,
    #[serde(default)]
    retry_delay_ms: u64,
    #[serde(default = "continue_")]
    on_failure: OnFailure,
    #[serde(default = "default_warning_codes")]
    warning_exit_codes: Vec<i32>,
    /// A WebAssembly plugin instead of scripts.
    plugin: Option<PathBuf>,
    #[serde(default)]
    params: BTreeMap<String, String>,
    #[serde(default)]
    grants: Vec<String>,
    #[serde(default = "default_memory_mib")]
    memory_mib: u64,
}

fn yes() -> bool {
    true
}
fn continue_() -> OnFailure {
    OnFailure::Continue
}
fn default_max_freeze() -> u64 {
    super::DEFAULT_MAX_FREEZE.as_secs()
}
fn default_timeout() -> u64 {
    30
}
fn default_warning_codes() -> Vec<i32> {
    vec![2]
}
fn default_memory_mib() -> u64 {
    64
}

/// Scripts or a plugin — never both in one hook.
fn hook_body(h: &HookTable) -> Result<HookBody, String> {
    let name = &h.name;
    let absolute = |field: &str, p: &PathBuf| -> Result<(), String> {
        if p.is_absolute() {
            Ok(())
        } else {
            Err(format!("hook {name:?}: `{field}` must be an absolute path, got {}", p.display()))
        }
    };
    if let Some(plugin) = &h.plugin {
        if h.pre.is_some() || h.post.is_some() {
            return Err(format!("hook {name:?} has both `plugin` and `pre`/`post`; split it into two hooks"));
        }
        absolute("plugin", plugin)?;
        if h.memory_mib == 0 || h.memory_mib > MAX_MEMORY_MIB {
            return Err(format!("hook {name:?}: `memory_mib` = {} is out of range (allowed: 1 to {MAX_MEMORY_MIB})", h.memory_mib));
        }
        return Ok(HookBody::Plugin(PluginAction {
            path: plugin.clone(),
            params: h.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            grants: h.grants.clone(),
            memory_mib: h.memory_mib,
            retries: checked_retries(&format!("hook {name:?}: retries"), h.retries)?,
        }));
    }
    if !h.params.is_empty() || !h.grants.is_empty() {
        return Err(format!("hook {name:?}: `params` and `grants` are for plugins; scripts take `pre_args`/`post_args`"));
    }
    let action = |field: &str, path: &Option<PathBuf>, args: &[String]| -> Result<Option<ScriptAction>, String> {
        match path {
            Some(p) => {
                absolute(field, p)?;
                Ok(Some(ScriptAction {
                    path: p.clone(),
                    args: args.to_vec(),
                    retries: checked_retries(&format!("hook {name:?}: retries"), h.retries)?,
                    permissions: ScriptPermissions::Native,
                }))
            }
            None => Ok(None),
        }
    };
    let pre = action("pre", &h.pre, &h.pre_args)?;
    let post = action("post", &h.post, &h.post_args)?;
    if pre.is_none() && post.is_none() {
        return Err(format!("hook {name:?} has neither `pre`, `post` nor `plugin`"));
    }
    Ok(HookBody::Script { pre, post })
}

pub(super) fn parse(text: &str) -> Result<Config, String> {
    let file: NativeFile = toml::from_str(text).map_err(|e| format!("not a valid quiesce TOML config: {e}"))?;
    let mut hooks = Vec::with_capacity(file.hooks.len());
    for h in file.hooks {
        if hooks.iter().any(|other: &HookSpec| other.name == h.name) {
            return Err(format!("hook name {:?} is used twice; names must be unique", h.name));
        }
        let body = hook_body(&h)?;
        hooks.push(HookSpec {
            body,
            timeout: positive_secs(&format!("hook {:?}: timeout_secs", h.name), h.timeout_secs)?,
            retry_delay: crate::duration::checked_delay_ms(&format!("hook {:?}: retry_delay_ms", h.name), h.retry_delay_ms)
                .map_err(|e| e.to_string())?,
            on_failure: h.on_failure,
            warning_exit_codes: h.warning_exit_codes,
            name: h.name,
        });
    }
    let snapshot_timeout = match file.snapshot.as_ref().and_then(|t| t.timeout_secs) {
        Some(secs) => Some(positive_secs("snapshot.timeout_secs", secs)?),
        None => None,
    };
    let snapshot = match file.snapshot {
        None => None,
        Some(t) => snapshot_spec(t)?,
    };
    let mut config = Config::builtin();
    config.format = Format::Native;
    config.hooks = hooks;
    config.snapshot = snapshot;
    config.snapshot_timeout = snapshot_timeout;
    config.freeze.enabled = file.freeze.enabled;
    config.freeze.mounts = file.freeze.mounts;
    config.freeze.exclude = file.freeze.exclude;
    config.freeze.max_freeze = positive_secs("freeze.max_freeze_secs", file.freeze.max_freeze_secs)?;
    config.freeze.on_failure = file.freeze.on_failure;
    config.points = file.points.settings()?;
    if let Some(secs) = file.service.external_hold_secs {
        config.service.external_hold = positive_secs("service.external_hold_secs", secs)?;
    }
    if let Some(secs) = file.service.idle_timeout_secs {
        config.service.idle_timeout = positive_secs("service.idle_timeout_secs", secs)?;
    }
    if let Some(g) = &file.service.group {
        if g.is_empty() || g.len() > 64 || !g.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
            return Err(format!("service.group {g:?} is not a group name"));
        }
    }
    if let Some(p) = &file.service.socket {
        if !p.is_absolute() {
            return Err(format!("service.socket must be an absolute path, got {}", p.display()));
        }
    }
    config.service.group = file.service.group;
    config.service.socket = file.service.socket;
    config.metrics = file.metrics.map(metrics_settings).transpose()?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn several_hooks_with_their_own_policies() {
        let c = parse(
            r#"
            [freeze]
            mounts = ["/srv/db"]
            exclude = ["/boot", "/mnt/scratch*"]
            max_freeze_secs = 20
            on_failure = "abort"

            [snapshot]
            command = "cloud-snap create"

            [[hook]]
            name = "db"
            pre = "/etc/quiesce/db-pre"
            pre_args = ["--fast", ""]
            post = "/etc/quiesce/db-post"
            timeout_secs = 5
            retries = 2
            retry_delay_ms = 250
            on_failure = "abort"

            [[hook]]
            name = "app"
            post = "/etc/quiesce/app-post"
            "#,
        )
        .unwrap();
        assert_eq!(c.hooks.len(), 2);
        let db = &c.hooks[0];
        assert_eq!(db.scripts().0.unwrap().args, vec!["--fast", ""]);
        assert_eq!(db.scripts().0.unwrap().retries, 2);
        assert_eq!(db.timeout, Duration::from_secs(5));
        assert_eq!(db.retry_delay, Duration::from_millis(250));
        assert_eq!(db.on_failure, OnFailure::Abort);
        assert!(c.hooks[1].scripts().0.is_none());
        assert_eq!(c.hooks[1].timeout, Duration::from_secs(30));
        assert_eq!(c.freeze.max_freeze, Duration::from_secs(20));
        assert_eq!(c.freeze.on_failure, OnFailure::Abort);
        assert_eq!(
            c.snapshot,
            Some(SnapshotSpec::Command { command: "cloud-snap create".into(), delete_command: None, restore_command: None })
        );
    }

    #[test]
    fn every_duration_is_bounded_and_named() {
        let hook = |extra: &str| parse(&format!("[[hook]]\nname = \"db\"\npre = \"/a\"\n{extra}\n"));
        let e = hook("timeout_secs = 18446744073709551615").err().unwrap_or_default();
        assert!(e.contains("hook \"db\": timeout_secs") && e.contains("86400"), "{e}");
        let e = hook("retry_delay_ms = 18446744073709551615").err().unwrap_or_default();
        assert!(e.contains("hook \"db\": retry_delay_ms") && e.contains("86400"), "{e}");
        assert_eq!(hook("retry_delay_ms = 0").unwrap().hooks[0].retry_delay, Duration::ZERO);
        let e = parse("[freeze]\nmax_freeze_secs = 0\n").err().unwrap_or_default();
        assert!(e.contains("freeze.max_freeze_secs"), "{e}");
        let e = parse("[snapshot]\ncommand = \"true\"\ntimeout_secs = 100000\n").err().unwrap_or_default();
        assert!(e.contains("snapshot.timeout_secs"), "{e}");
        // A negative number is refused by the TOML reader, which names the line.
        let e = hook("timeout_secs = -1").err().unwrap_or_default();
        assert!(e.contains("timeout_secs = -1"), "{e}");
    }

    #[test]
    fn typos_are_errors_not_defaults() {
        let e = parse("[[hook]]\nname = \"x\"\npre = \"/a\"\ntimout_secs = 5\n").unwrap_err();
        assert!(e.contains("timout_secs"), "{e}");
    }

    #[test]
    fn duplicate_or_empty_hooks_are_errors() {
        assert!(parse("[[hook]]\nname = \"x\"\npre = \"/a\"\n[[hook]]\nname = \"x\"\npre = \"/b\"\n").is_err());
        assert!(parse("[[hook]]\nname = \"x\"\n").unwrap_err().contains("neither"));
        assert!(parse("[[hook]]\nname = \"x\"\npre = \"rel\"\n").unwrap_err().contains("absolute"));
    }

    #[test]
    fn plugin_hooks_take_params_grants_and_memory() {
        let c = parse(
            r#"
            [[hook]]
            name = "pg"
            plugin = "/usr/lib/quiesce/plugins/postgres.wasm"
            params = { port = "5432", mode = "backup" }
            grants = ["tcp:127.0.0.1:5432", "file:/etc/quiesce/pg.pass"]
            memory_mib = 32
            retries = 1
            "#,
        )
        .unwrap();
        let p = c.hooks[0].plugin().unwrap();
        assert_eq!(p.params, vec![("mode".to_string(), "backup".to_string()), ("port".to_string(), "5432".to_string())]);
        assert_eq!(p.grants.len(), 2);
        assert_eq!(p.memory_mib, 32);
        assert_eq!(p.retries, 1);
        let e = parse("[[hook]]\nname = \"x\"\nplugin = \"/a.wasm\"\npre = \"/b\"\n").unwrap_err();
        assert!(e.contains("both"), "{e}");
        let e = parse("[[hook]]\nname = \"x\"\npre = \"/b\"\ngrants = [\"tcp:a:1\"]\n").unwrap_err();
        assert!(e.contains("plugins"), "{e}");
    }

    #[test]
    fn absurd_retries_and_memory_are_refused_naming_the_hook() {
        let e = parse("[[hook]]\nname = \"x\"\npre = \"/a\"\nretries = 101\n").unwrap_err();
        assert!(e.contains("\"x\": retries") && e.contains("0 to 100"), "{e}");
        let e = parse("[[hook]]\nname = \"p\"\nplugin = \"/a.wasm\"\nmemory_mib = 1000000\n").unwrap_err();
        assert!(e.contains("memory_mib") && e.contains("1 to 4096"), "{e}");
    }

    #[test]
    fn service_section_is_read_and_checked() {
        let c = parse("[service]\ngroup = \"backup\"\nexternal_hold_secs = 120\nsocket = \"/run/q/q.sock\"\n").unwrap();
        assert_eq!(c.service.group.as_deref(), Some("backup"));
        assert_eq!(c.service.external_hold, Duration::from_secs(120));
        assert_eq!(c.service.socket.as_deref(), Some(std::path::Path::new("/run/q/q.sock")));
        assert_eq!(parse("").unwrap().service.external_hold, Duration::from_secs(60));
        assert!(parse("[service]\nexternal_hold_secs = 0\n").unwrap_err().contains("external_hold_secs"));
        assert_eq!(parse("").unwrap().service.idle_timeout, Duration::from_secs(300));
        assert_eq!(parse("[service]\nidle_timeout_secs = 5\n").unwrap().service.idle_timeout, Duration::from_secs(5));
        assert!(parse("[service]\nidle_timeout_secs = 0\n").unwrap_err().contains("idle_timeout_secs"));
        assert!(parse("[service]\ngroup = \"a b\"\n").unwrap_err().contains("group"));
        assert!(parse("[service]\nsocket = \"rel.sock\"\n").unwrap_err().contains("absolute"));
        assert!(parse("[service]\ngrup = \"x\"\n").unwrap_err().contains("grup"));
    }

    #[test]
    fn snapshot_kinds_take_only_their_own_keys() {
        let snap = |body: &str| parse(&format!("[snapshot]\n{body}\n")).map(|c| c.snapshot);
        assert_eq!(
            snap("kind = \"btrfs\"\nsource = \"/srv/vol\"\ndest = \"/srv/points/{session}\"").unwrap(),
            Some(SnapshotSpec::Btrfs { source: "/srv/vol".into(), dest: "/srv/points/{session}".into() })
        );
        // The older reflink spelling still works, without `kind`.
        assert!(matches!(snap("reflink_source = \"/a.img\"\nreflink_dest = \"/b.img\"").unwrap(), Some(SnapshotSpec::Reflink { .. })));
        let e = snap("kind = \"btrfs\"\nsource = \"/v\"\ndest = \"/d\"\ncommand = \"x\"").unwrap_err();
        assert!(e.contains("does not take `command`"), "{e}");
        let e = snap("kind = \"reflink\"\nsource = \"rel.img\"\ndest = \"/d\"").unwrap_err();
        assert!(e.contains("absolute"), "{e}");
        let e = snap("kind = \"aws\"\ninstance = \"i-1\"").unwrap_err();
        assert!(e.contains("`zone`"), "{e}");
        let e = snap("kind = \"external\"").unwrap_err();
        assert!(e.contains("embedder"), "{e}");
        let c = snap("kind = \"aws\"\ninstance = \"i-1\"\nzone = \"eu-west-1a\"").unwrap();
        assert!(matches!(c, Some(SnapshotSpec::Cloud(ref spec)) if spec.create[0] == "aws" && spec.params["instance"] == "i-1"));
        let c = snap("kind = \"command\"\ncommand = \"snap\"\ndelete_command = \"unsnap\"").unwrap();
        assert_eq!(c, Some(SnapshotSpec::Command { command: "snap".into(), delete_command: Some("unsnap".into()), restore_command: None }));
    }

    #[test]
    fn metrics_textfile_must_be_an_absolute_prom_file() {
        let c = parse("[metrics]\ntextfile = \"/var/lib/node/quiesce.prom\"\n").unwrap();
        assert_eq!(c.metrics, Some(MetricsSettings { textfile: PathBuf::from("/var/lib/node/quiesce.prom") }));
        assert!(parse("").unwrap().metrics.is_none());
        let e = parse("[metrics]\ntextfile = \"quiesce.prom\"\n").unwrap_err();
        assert!(e.contains("absolute"), "{e}");
        for bad in ["/var/lib/node/quiesce.txt", "/var/lib/node/.prom", "/var/lib/node/quiesce"] {
            let e = parse(&format!("[metrics]\ntextfile = \"{bad}\"\n")).unwrap_err();
            assert!(e.contains("NAME.prom"), "{bad}: {e}");
        }
        let e = parse("[metrics]\ntext_file = \"/a.prom\"\n").unwrap_err();
        assert!(e.contains("text_file"), "{e}");
    }

    #[test]
    fn empty_file_is_freeze_only() {
        let c = parse("").unwrap();
        assert!(c.hooks.is_empty());
        assert!(c.freeze.enabled);
    }
}
