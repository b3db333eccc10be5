//! The Azure-style `VMSnapshotScriptPluginConfig.json`, read unchanged.
//!
//! Field meanings and defaults follow the reference framework; its 1800 s
//! timeout cap is not copied (users set longer timeouts on purpose, Azure #706).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{positive_secs, Config, FreezeSettings, HookBody, HookSpec, OnFailure, ScriptAction, ScriptPermissions};

/// The name the legacy script pair is reported under.
pub const HOOK_NAME: &str = "ScriptRunner";

/// The reference's default when `timeoutInSeconds` is absent.
const DEFAULT_TIMEOUT_SECS: u64 = 10;
const TIMEOUT_FIELD: &str = "timeoutInSeconds";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LegacyFile {
    #[serde(default)]
    plugin_name: Option<String>,
    pre_script_location: Option<String>,
    post_script_location: Option<String>,
    #[serde(default)]
    pre_script_params: Vec<String>,
    #[serde(default)]
    post_script_params: Vec<String>,
    #[serde(default)]
    pre_script_no_of_retries: u32,
    #[serde(default)]
    post_script_no_of_retries: u32,
    /// Any JSON number, so that a negative or fractional value gets our
    /// message (naming the field and the range), not serde's.
    timeout_in_seconds: Option<serde_json::Number>,
    continue_backup_on_failure: Option<bool>,
    fs_freeze_enabled: Option<bool>,
}

pub(super) fn parse(text: &str) -> Result<Config, String> {
    let file: LegacyFile = serde_json::from_str(text).map_err(|e| format!("not a valid legacy JSON config: {e}"))?;
    if let Some(name) = &file.plugin_name {
        if name != HOOK_NAME {
            tracing::warn!("legacy config has pluginName {name:?}; the reference expects {HOOK_NAME:?} (ignored)");
        }
    }
    let location = |field: &str, value: Option<String>| -> Result<PathBuf, String> {
        match value {
            Some(v) if v.starts_with('/') => Ok(PathBuf::from(v)),
            Some(v) if v.is_empty() => Err(format!("`{field}` is empty; set the absolute path of the script")),
            Some(v) => Err(format!("`{field}` must be an absolute path, got {v:?}")),
            None => Err(format!("`{field}` is missing; set the absolute path of the script")),
        }
    };
    let pre = location("preScriptLocation", file.pre_script_location)?;
    let post = location("postScriptLocation", file.post_script_location)?;
    let timeout = match file.timeout_in_seconds {
        None => positive_secs(TIMEOUT_FIELD, DEFAULT_TIMEOUT_SECS)?,
        Some(n) => match n.as_u64() {
            Some(secs) => positive_secs(TIMEOUT_FIELD, secs)?,
            None => crate::duration::checked_secs_f64(TIMEOUT_FIELD, n.as_f64().unwrap_or(f64::NAN)).map_err(|e| e.to_string())?,
        },
    };
    let on_failure = if file.continue_backup_on_failure.unwrap_or(true) { OnFailure::Continue } else { OnFailure::Abort };
    let hook = HookSpec {
        name: HOOK_NAME.to_string(),
        body: HookBody::Script {
            pre: Some(ScriptAction {
                path: pre,
                args: file.pre_script_params,
                retries: file.pre_script_no_of_retries,
                permissions: ScriptPermissions::Legacy,
            }),
            post: Some(ScriptAction {
                path: post,
                args: file.post_script_params,
                retries: file.post_script_no_of_retries,
                permissions: ScriptPermissions::Legacy,
            }),
        },
        timeout,
        retry_delay: Duration::ZERO,
        on_failure,
        warning_exit_codes: vec![2],
    };
    let mut config = Config::builtin();
    config.format = super::Format::Legacy;
    config.hooks = vec![hook];
    config.freeze = FreezeSettings {
        enabled: file.fs_freeze_enabled.unwrap_or(true),
        // The legacy contract has one switch for every failure.
        on_failure,
        ..config.freeze
    };
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"{
        "pluginName": "ScriptRunner",
        "preScriptLocation": "/etc/azure/pre.sh",
        "postScriptLocation": "/etc/azure/post.sh",
        "preScriptParams": ["", ""],
        "postScriptParams": ["x"],
        "preScriptNoOfRetries": 2,
        "postScriptNoOfRetries": 1,
        "timeoutInSeconds": 3600,
        "continueBackupOnFailure": false,
        "fsFreezeEnabled": false,
        "appName": "ignored"
    }"#;

    #[test]
    fn reads_every_field() {
        let c = parse(TEMPLATE).unwrap();
        let h = &c.hooks[0];
        let (pre, post) = h.scripts();
        assert_eq!(pre.unwrap().path, PathBuf::from("/etc/azure/pre.sh"));
        assert_eq!(pre.unwrap().args, vec!["", ""]);
        assert_eq!(pre.unwrap().retries, 2);
        assert_eq!(post.unwrap().retries, 1);
        assert_eq!(post.unwrap().args, vec!["x"]);
        assert_eq!(h.timeout, Duration::from_secs(3600), "no 1800 s cap");
        assert_eq!(h.on_failure, OnFailure::Abort);
        assert_eq!(c.freeze.on_failure, OnFailure::Abort);
        assert!(!c.freeze.enabled);
    }

    #[test]
    fn defaults_match_the_reference() {
        let c = parse(r#"{"preScriptLocation": "/a", "postScriptLocation": "/b"}"#).unwrap();
        let h = &c.hooks[0];
        assert_eq!(h.timeout, Duration::from_secs(10));
        assert_eq!(h.on_failure, OnFailure::Continue);
        assert!(c.freeze.enabled);
        assert_eq!(h.scripts().0.unwrap().retries, 0);
    }

    #[test]
    fn missing_location_is_invalid() {
        let e = parse(r#"{"preScriptLocation": "/a"}"#).unwrap_err();
        assert!(e.contains("postScriptLocation"), "{e}");
        let e = parse(r#"{"preScriptLocation": "a.sh", "postScriptLocation": "/b"}"#).unwrap_err();
        assert!(e.contains("absolute"), "{e}");
    }

    #[test]
    fn wrong_types_are_invalid() {
        let e = parse(r#"{"preScriptLocation": "/a", "postScriptLocation": "/b", "timeoutInSeconds": "ten"}"#).unwrap_err();
        assert!(e.contains("timeoutInSeconds") || e.contains("invalid type"), "{e}");
        assert!(parse(r#"{"preScriptLocation": "/a", "postScriptLocation": "/b", "timeoutInSeconds": 0}"#).is_err());
    }

    #[test]
    fn timeouts_no_cap_at_1800_but_bounded_and_named() {
        let t = |v: &str| parse(&format!(r#"{{"preScriptLocation": "/a", "postScriptLocation": "/b", "timeoutInSeconds": {v}}}"#));
        assert_eq!(t("7200").unwrap().hooks[0].timeout, Duration::from_secs(7200));
        assert_eq!(t("2.5").unwrap().hooks[0].timeout, Duration::from_millis(2500));
        for bad in ["-1", "0", "18446744073709551615", "1e300", "86401"] {
            let e = t(bad).unwrap_err();
            assert!(e.contains("`timeoutInSeconds`") && e.contains("86400"), "{bad}: {e}");
        }
    }
}
