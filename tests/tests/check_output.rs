//! What `quiesce check` tells a person (issue 12, first impressions): plain
//! words, no Rust debug text or shorthand; and no warning about a grant the
//! plugin asks for only as the default of a parameter the config overrides.

use std::path::Path;

use quiesce_tests::plugins::install_plugin;
use quiesce_tests::*;

/// lockd's `describe` asks for its default target.
const LOCKD_DEFAULT: &str = "tcp:127.0.0.1:7390";

fn lockd_config(f: &MountedScratch, target: Option<&str>, grants: &[&str]) -> std::path::PathBuf {
    let plugin = install_plugin(&f.s, "lockd");
    let params = target.map(|t| format!("target = {t:?}")).unwrap_or_default();
    let grants: Vec<String> = grants.iter().map(|g| format!("{g:?}")).collect();
    f.s.config(
        "quiesce.toml",
        &format!(
            "[[hook]]\nname = \"lockd\"\nplugin = \"{}\"\nparams = {{ {params} }}\ngrants = [{}]\n",
            plugin.display(),
            grants.join(", ")
        ),
    )
}

fn check_text(f: &MountedScratch, config: &Path) -> String {
    let out = quiesce(&f.s)
        .env("QUIESCE_CACHE_DIR", f.file("cache"))
        .args(["check", "--config"])
        .arg(config)
        .arg("--mount")
        .arg(f.mnt.path())
        .output()
        .expect("run quiesce check");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn check_does_not_ask_for_a_grant_the_plugin_only_defaults_to() {
    require!(Root, Plugins);
    let f = MountedScratch::new("check-default-grant");
    let target = "tcp:127.0.0.1:40123";
    let config = lockd_config(&f, Some(target), &[target]);
    let r = check_json(&f.s, &f.file("cache"), &config, f.mnt.path());
    let plugin = &r["hooks"][0]["plugin"];
    assert_eq!(plugin["requested_grants"], serde_json::json!([LOCKD_DEFAULT]), "{r}");
    assert_eq!(plugin["not_granted"], serde_json::json!([]), "{r}");
    assert_eq!(plugin["default_only"], serde_json::json!([{ "grant": LOCKD_DEFAULT, "param": "target", "configured": target }]), "{r}");
    assert_eq!(r["ok"], true, "{r}");
    let text = check_text(&f, &config);
    assert!(!text.contains("not granted") && !text.contains("warning"), "{text}");
    assert!(text.contains(&format!("not needed: {LOCKD_DEFAULT} (the plugin asks for it as the default target")), "{text}");
}

#[test]
fn check_names_the_configured_target_when_it_is_not_granted() {
    require!(Root, Plugins);
    let f = MountedScratch::new("check-target-grant");
    let target = "tcp:127.0.0.1:40124";
    let config = lockd_config(&f, Some(target), &[]);
    let r = check_json(&f.s, &f.file("cache"), &config, f.mnt.path());
    assert_eq!(r["hooks"][0]["plugin"]["not_granted"], serde_json::json!([target]), "{r}");
    let text = check_text(&f, &config);
    assert!(text.contains(&format!("needed but not granted (calls needing them will be refused): {target}")), "{text}");
}

#[test]
fn check_output_is_plain_words() {
    require!(Root, Plugins);
    let f = MountedScratch::new("check-words");
    let pre = f.s.script("pre", "#!/bin/sh\ntrue\n");
    let post = f.s.script("post", "#!/bin/sh\ntrue\n");
    let plugin = install_plugin(&f.s, "lockd");
    let config = f.s.config(
        "quiesce.toml",
        &format!(
            "[[hook]]\nname = \"app\"\npre = \"{}\"\npost = \"{}\"\npost_args = [\"--fast\", \"a b\"]\nretries = 2\non_failure = \"abort\"\n\n\
             [[hook]]\nname = \"lockd\"\nplugin = \"{}\"\ngrants = [\"{LOCKD_DEFAULT}\"]\n",
            pre.display(),
            post.display(),
            plugin.display()
        ),
    );
    let text = check_text(&f, &config);
    for debug in ["Some(", "None", "Native", "Legacy", "Continue", "Abort", " x1", " x3", "[]", "{", "\\\""] {
        assert!(!text.contains(debug), "Rust debug text or shorthand {debug:?} in:\n{text}");
    }
    let expected = [
        format!("config: {} (quiesce TOML)", config.display()),
        "hook app: each attempt may take up to 30 s; if it fails, no snapshot is taken".to_string(),
        format!("  pre script {} (no arguments, up to 3 attempts): ok", pre.display()),
        format!("  post script {} (arguments \"--fast\" \"a b\", up to 3 attempts): ok", post.display()),
        "hook lockd: each attempt may take up to 30 s; if it fails, the snapshot is still taken, with a lower consistency label"
            .to_string(),
        format!("  plugin {}: ok", plugin.display()),
        format!("    granted: {LOCKD_DEFAULT}"),
        "check passed".to_string(),
    ];
    for line in &expected {
        assert!(text.lines().any(|l| l == line), "missing line {line:?} in:\n{text}");
    }
    assert!(text.contains(&format!("  {} (ext4 on /dev/loop", f.mnt.path().display())), "{text}");

    // A legacy config says what it is in words too.
    let legacy = legacy_config(&f.s, &pre, &post, serde_json::json!({}));
    let text = check_text(&f, &legacy);
    assert!(text.starts_with(&format!("config: {} (legacy Azure-style JSON)", legacy.display())), "{text}");
    assert!(text.contains("(arguments \"a1\" \"a 2\", 1 attempt): ok"), "{text}");
}
