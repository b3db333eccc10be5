//! The adapters the tree ships for agents that take snapshots themselves
//! (issue 10), each driven the way its agent drives it, against a running
//! `quiesce serve` whose plugin (the `lockd` example plugin) holds a lock in
//! a real service from pre to post:
//!
//! - the Azure VM snapshot extension: `integrations/azure/quiesce-{pre,post}.sh`
//!   installed root-owned mode 0700 and named by a `VMSnapshotScriptPluginConfig.json`
//!   made from the sample in the tree; the extension's run as the README's
//!   "Migrating" section documents it (pre script with its params, the
//!   extension's own fsfreeze, the snapshot, thaw, post script);
//! - Velero: the pre and post exec-hook commands from the pod annotations in
//!   `integrations/kubernetes/velero-mariadb.yaml`, run as two separate processes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use quiesce_tests::plugins::{install_plugin, Lockd};
use quiesce_tests::service::Service;
use quiesce_tests::svc::ok;
use quiesce_tests::*;
use serde_json::{json, Value};

fn integrations() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../integrations")
}

/// The service config: one hook, the lockd plugin holding lockd's lock.
fn lockd_config(s: &Scratch, lockd: &Lockd) -> PathBuf {
    let plugin = install_plugin(s, "lockd");
    s.config(
        "service.toml",
        &format!(
            "[freeze]\nenabled = true\n\n[[hook]]\nname = \"lockd\"\nplugin = \"{}\"\nparams = {{ target = \"{t}\" }}\ngrants = [\"{t}\"]\n",
            plugin.display(),
            t = lockd.target
        ),
    )
}

/// Copies a file from the tree the way an admin installs it for the
/// extension: root-owned, mode 0700.
fn install(s: &Scratch, from: &Path, name: &str) -> PathBuf {
    s.script(name, &std::fs::read_to_string(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())))
}

/// One run of the Azure VM snapshot extension, as the Migrating section
/// documents its calling convention: it reads the config, refuses a script
/// that is not root-owned mode 0700, runs the pre script with
/// `preScriptParams` (as `sh <path> params…`, the reference's way; exit 0 =
/// go on), freezes the file systems itself (`fsfreeze -f`), snapshots, thaws
/// (`fsfreeze -u`), and runs the post script with `postScriptParams` — also
/// when the pre script failed. `during` runs while frozen.
struct ExtensionRun {
    pre_status: i32,
    post_status: i32,
    snapshot_taken: bool,
}

fn azure_extension_run(
    config: &Path,
    env: &[(&str, &std::ffi::OsStr)],
    mount: &Path,
    snapshot: &str,
    during: impl FnOnce(),
) -> ExtensionRun {
    use std::os::unix::fs::MetadataExt;
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
    let script = |loc: &str, params: &str| -> (PathBuf, Vec<String>) {
        let path = PathBuf::from(cfg[loc].as_str().unwrap());
        let md = std::fs::metadata(&path).unwrap();
        assert!(md.uid() == 0 && md.mode() & 0o777 == 0o700, "the extension refuses {}: not root-owned mode 0700", path.display());
        let params = cfg[params].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
        (path, params)
    };
    let run = |(path, params): (PathBuf, Vec<String>)| {
        let mut cmd = Command::new("sh");
        cmd.arg(&path).args(&params);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        eprintln!("{}: {}\n{}", path.display(), out.status, String::from_utf8_lossy(&out.stderr));
        out.status.code().unwrap_or(-1)
    };
    let pre_status = run(script("preScriptLocation", "preScriptParams"));
    let mut snapshot_taken = false;
    if pre_status == 0 || cfg["continueBackupOnFailure"] == true {
        sh(&format!("fsfreeze -f {}", mount.display()));
        during();
        snapshot_taken = Command::new("sh").arg("-c").arg(snapshot).status().unwrap().success();
        sh(&format!("fsfreeze -u {}", mount.display()));
    }
    let post_status = run(script("postScriptLocation", "postScriptParams"));
    ExtensionRun { pre_status, post_status, snapshot_taken }
}

/// The sample config from the tree, with the locations where this test installed the wrappers.
fn azure_config(s: &Scratch) -> PathBuf {
    let dir = integrations().join("azure");
    let pre = install(s, &dir.join("quiesce-pre.sh"), "quiesce-pre.sh");
    let post = install(s, &dir.join("quiesce-post.sh"), "quiesce-post.sh");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("VMSnapshotScriptPluginConfig.json")).unwrap()).unwrap();
    cfg["preScriptLocation"] = json!(pre);
    cfg["postScriptLocation"] = json!(post);
    s.config("VMSnapshotScriptPluginConfig.json", &serde_json::to_string_pretty(&cfg).unwrap())
}

#[test]
fn azure_extension_run_through_the_wrappers_holds_the_plugin_lock_across_its_own_freeze_and_snapshot() {
    quiesce_tests::require!(Root, Mariadb, Plugins);
    let ms = MountedScratch::new("azure");
    let mut lockd = Lockd::start("tcp:127.0.0.1:0");
    let svc = Service::start(&ms.s, &lockd_config(&ms.s, &lockd));
    let mut c = svc.connect();
    let config = azure_config(&ms.s);
    let bin = quiesce_client_bin();
    let env = [("QUIESCE_BIN", bin.as_os_str()), ("QUIESCE_SOCKET", svc.socket.as_os_str())];
    std::fs::write(ms.mnt.path().join("data"), "before the snapshot\n").unwrap();
    let snap = ms.file("snap.img");
    let snapshot = format!("cp --sparse=always {} {}", ms.mnt.image.display(), snap.display());

    let mut seen = None;
    let run = azure_extension_run(&config, &env, ms.mnt.path(), &snapshot, || {
        assert!(is_frozen(ms.mnt.path()));
        seen = Some((lockd.request("STATUS"), ok(&mut c, "status", json!({}))));
    });
    let (lock, status) = seen.expect("the extension never froze");
    assert_eq!(run.pre_status, 0, "pre wrapper failed");
    assert!(run.snapshot_taken);
    assert_eq!(run.post_status, 0, "post wrapper failed");
    assert!(lock.starts_with("LOCKED"), "lockd while the extension had the disk frozen: {lock}");
    assert_eq!(status["session"]["mode"], "external", "{status}");
    assert_eq!(lockd.request("STATUS"), "UNLOCKED");
    lockd.wait_for("UNLOCK", Duration::from_secs(5));

    let report = svc.last_report();
    assert_eq!(report["mode"], "external", "{report}");
    assert_eq!(report["consistency"], "AppConsistent", "{report}");
    assert_eq!(report["snapshot_taken"], true, "{report}");
    let img = LoopMount { image: snap.clone(), mountpoint: ms.file("restored"), fs: Fs::Ext4 };
    std::fs::create_dir_all(&img.mountpoint).unwrap();
    sh(&format!("mount -o loop,ro,noload {} {}", snap.display(), img.mountpoint.display()));
    assert_eq!(std::fs::read_to_string(img.mountpoint.join("data")).unwrap(), "before the snapshot\n");
}

/// The lock service is down: the pre wrapper exits non-zero (the extension
/// reports Pre-ScriptExecutionFailed) having ended the session itself (post
/// hooks ran, no snapshot under quiesce's name); the post script the
/// extension still runs finds nothing left to end and succeeds.
#[test]
fn azure_pre_wrapper_fails_when_the_plugin_cannot_quiesce_and_the_session_is_already_over() {
    quiesce_tests::require!(Root, Mariadb, Plugins);
    let ms = MountedScratch::new("azure-fail");
    let lockd = Lockd::start("tcp:127.0.0.1:0");
    let config = lockd_config(&ms.s, &lockd);
    drop(lockd);
    let svc = Service::start(&ms.s, &config);
    let mut c = svc.connect();
    let azure = azure_config(&ms.s);
    let bin = quiesce_client_bin();
    let env = [("QUIESCE_BIN", bin.as_os_str()), ("QUIESCE_SOCKET", svc.socket.as_os_str())];
    let run = azure_extension_run(&azure, &env, ms.mnt.path(), "true", || {});
    assert_ne!(run.pre_status, 0, "pre wrapper succeeded although the plugin could not lock");
    assert_eq!(run.post_status, 0, "post wrapper failed with no session left to end");
    assert_eq!(ok(&mut c, "status", json!({}))["session"], Value::Null);
    let report = svc.last_report();
    let pre = report["hooks"].as_array().unwrap().iter().find(|h| h["phase"] == "pre").cloned().unwrap_or_default();
    assert_eq!(pre["outcome"], "failed", "{report}");
    assert_eq!(report["snapshot_taken"], false, "{report}");
    assert!(report["errors"].to_string().contains("Connection refused"), "{report}");
    println!("[azure] pre wrapper exit {}, post wrapper exit {}; report errors {}", run.pre_status, run.post_status, report["errors"]);
}

/// The command array of a Velero hook annotation in the shipped example.
fn velero_command(annotation: &str) -> Vec<String> {
    let yaml = std::fs::read_to_string(integrations().join("kubernetes/velero-mariadb.yaml")).unwrap();
    let line = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{annotation}: ")))
        .unwrap_or_else(|| panic!("no {annotation} in the Velero example"));
    serde_json::from_str(line.trim().trim_matches('\'')).unwrap_or_else(|e| panic!("{annotation}: {line}: {e}"))
}

/// Velero's pre and post exec hooks are two processes: the lock taken by the
/// first stays held (the service keeps the plugin instance) until the
/// second ends the session.
#[test]
fn velero_pre_and_post_hook_commands_from_two_processes_hold_the_lock_between_them() {
    quiesce_tests::require!(Root, Mariadb, Plugins);
    let s = Scratch::new("velero");
    let mut lockd = Lockd::start("tcp:127.0.0.1:0");
    let svc = Service::start(&s, &lockd_config(&s, &lockd));
    let mut c = svc.connect();
    let run = |argv: Vec<String>| {
        assert!(argv[0].ends_with("/quiesce-client"), "{argv:?}");
        let out = Command::new(quiesce_client_bin()).args(&argv[1..]).env("QUIESCE_SOCKET", &svc.socket).output().unwrap();
        assert!(out.status.success(), "{argv:?}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };

    let pre = velero_command("pre.hook.backup.velero.io/command");
    assert!(pre.iter().any(|a| a == "begin"), "{pre:?}");
    let session = run(pre);
    assert!(!session.is_empty(), "begin printed no session id");
    assert!(lockd.request("STATUS").starts_with("LOCKED"), "lock not held after the pre hook's process exited");
    let status = ok(&mut c, "status", json!({}));
    assert_eq!(status["session"]["session_id"], session.as_str(), "{status}");
    assert_eq!(status["session"]["mode"], "none", "{status}");

    run(velero_command("post.hook.backup.velero.io/command"));
    assert_eq!(lockd.request("STATUS"), "UNLOCKED");
    lockd.wait_for("UNLOCK", Duration::from_secs(5));
    let report = svc.last_report();
    assert_eq!(report["session_id"], session.as_str(), "{report}");
    assert_eq!(report["mode"], "none", "{report}");
    assert_eq!(report["snapshot_taken"], true, "{report}");
}

/// With the database unreachable the plugin's pre fails; under the default
/// `on_failure = "continue"` the session would go on unquiesced and Velero's
/// `on-error: Fail` would never fire. The example's `--abort-on-error` makes
/// the pre hook exit 4 and ends the session at once (post hooks run, nothing
/// stays held until the hold deadline).
#[test]
fn velero_pre_hook_fails_the_backup_when_the_plugin_cannot_quiesce() {
    quiesce_tests::require!(Root, Mariadb, Plugins);
    let s = Scratch::new("velero-fail");
    let lockd = Lockd::start("tcp:127.0.0.1:0");
    let config = lockd_config(&s, &lockd);
    drop(lockd);
    let svc = Service::start(&s, &config);
    let pre = velero_command("pre.hook.backup.velero.io/command");
    assert!(pre.iter().any(|a| a == "--abort-on-error"), "{pre:?}");
    let out = Command::new(quiesce_client_bin()).args(&pre[1..]).env("QUIESCE_SOCKET", &svc.socket).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "the pre hook must fail Velero's backup: {err}");
    assert!(err.contains("a pre hook failed; session aborted"), "{err}");
    let mut c = svc.connect();
    assert_eq!(ok(&mut c, "status", json!({}))["session"], Value::Null, "the session was ended at once");
    let report = svc.last_report();
    assert_eq!(report["snapshot_taken"], false, "{report}");
    assert!(report["errors"].to_string().contains("SessionAborted"), "{report}");
    assert!(report["errors"].to_string().contains("Connection refused"), "{report}");
}
