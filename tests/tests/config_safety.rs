//! What an admin's files can and cannot make quiesce do: a config that
//! cannot be used never widens what gets frozen, relative `--config` paths,
//! the legacy framework's mode-700 rule for scripts, bounded durations, the
//! run directory checked like any trusted path, and `check` saying exactly
//! what the session would.
//!
//! Every session here passes `--mount` for a loop file system it created,
//! except the library-level tests of "no --mount", which assert that no
//! freeze is even planned before they let the session run.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use quiesce::config::Format;
use quiesce::report::ErrorCode;
use quiesce::rundir::RunDir;
use quiesce::session::{load_config, Session, SessionOptions};
use quiesce::snapshot::ShellCommand;
use quiesce_tests::*;
use serde_json::json;

/// [`MountedScratch`] plus what these scenarios do with it.
struct Fixture(MountedScratch);

impl std::ops::Deref for Fixture {
    type Target = MountedScratch;
    fn deref(&self) -> &MountedScratch {
        &self.0
    }
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        Fixture(MountedScratch::new(name))
    }

    /// Creates the session's run directory (as `mkdir` would: 0755) and returns it.
    fn run_dir(&self) -> PathBuf {
        let d = self.file("run");
        fs::create_dir(&d).unwrap();
        d
    }

    /// A script that appends `tag` to log.txt.
    fn script(&self, name: &str, tag: &str) -> PathBuf {
        self.s.script(name, &format!("#!/bin/sh\necho {tag} >> {}\n", self.file("log.txt").display()))
    }

    fn legacy_pair(&self) -> PathBuf {
        let pre = self.script("pre.sh", "pre");
        let post = self.script("post.sh", "post");
        legacy_config(&self.s, &pre, &post, json!({}))
    }

    /// `quiesce snapshot --config CONFIG --mount MNT --snapshot-cmd 'touch snapped'`.
    fn snapshot(&self, config: &Path) -> Run {
        let mut cmd = quiesce(&self.s);
        cmd.env("QUIESCE_CACHE_DIR", self.file("cache"));
        cmd.arg("snapshot").arg("--config").arg(config).arg("--mount").arg(self.mnt.path());
        cmd.arg("--snapshot-cmd").arg(format!("touch {}", self.file("snapped").display()));
        run_json(cmd)
    }

    /// `quiesce check --json --config CONFIG [--mount MNT]`, parsed, with its exit code.
    fn check(&self, config: &Path, with_mount: bool) -> (i32, serde_json::Value) {
        let mut cmd = quiesce(&self.s);
        cmd.env("QUIESCE_CACHE_DIR", self.file("cache"));
        cmd.arg("check").arg("--json").arg("--config").arg(config);
        if with_mount {
            cmd.arg("--mount").arg(self.mnt.path());
        }
        let out = cmd.output().unwrap();
        let v = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
        (out.status.code().unwrap_or(-1), v)
    }

    fn frozen_paths(run: &Run) -> Vec<String> {
        run.report["freeze"]["mounts"].as_array().unwrap().iter().map(|m| m["path"].as_str().unwrap().to_string()).collect()
    }
}

fn codes(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|e| e["code"].as_str().unwrap().to_string()).collect()
}

fn native_config(f: &Fixture, name: &str, body: &str) -> PathBuf {
    f.s.config(name, body)
}

/// A native config that excludes the test's mount: what a fall-back to
/// "freeze everything" would ignore.
fn excluding_native_config(f: &Fixture) -> String {
    let pre = f.script("npre.sh", "native-pre");
    format!("[freeze]\nexclude = [\"{}\"]\n\n[[hook]]\nname = \"db\"\npre = \"{}\"\n", f.mnt.path().display(), pre.display())
}

// ------------------------------------------------ an unusable config (issue 8.8)

/// In-process, so that the plan can be checked before anything could freeze:
/// without `--mount`, a wrong fall-back would freeze every file system.
fn run_without_mount(f: &Fixture, config: &Path) -> quiesce::report::Report {
    let marker = f.file("snapped");
    let opts = SessionOptions {
        run_dir: Some(RunDir::new(f.file("run"))),
        provider: Some(Box::new(ShellCommand::new(format!("touch {}", marker.display())))),
        cache_dir: Some(f.file("cache")),
        state_dir: Some(f.file("state")),
        ..Default::default()
    };
    let session = Session::prepare(load_config(Some(config)), opts).expect("prepare");
    assert!(session.plan().is_none(), "an unusable native config planned a freeze: {:?}", session.plan());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(session.run(quiesce::interrupt::Interrupt::never()))
}

#[test]
fn unusable_native_config_without_mount_takes_no_snapshot_and_freezes_nothing() {
    require!(Root);
    let f = Fixture::new("native-unusable");
    let body = excluding_native_config(&f);
    let untrusted = native_config(&f, "quiesce.toml", &body);
    sh(&format!("chmod 0644 {}", untrusted.display()));
    let broken = native_config(&f, "broken.toml", &format!("{body}\nnot toml at all ["));
    for (config, code) in [(&untrusted, ErrorCode::InsufficientPermissionforConfig), (&broken, ErrorCode::IncorrectJSONConfigFile)] {
        let report = run_without_mount(&f, config);
        assert!(!report.snapshot_taken);
        assert_eq!(report.exit_code(), 4, "{:?}", report.errors);
        assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
        assert_eq!(report.errors[0].code, code);
        assert!(report.errors[0].message.contains("--mount"), "says how to proceed: {}", report.errors[0].message);
        assert!(report.hooks.is_empty());
        assert!(report.freeze.mounts.is_empty());
        assert!(!f.file("snapped").exists(), "the snapshot command ran");
        assert_eq!(f.read("log.txt"), "", "a hook ran");
    }
    // `check` (which freezes nothing, so it may run without --mount) says the same.
    let (code, r) = f.check(&untrusted, false);
    assert_eq!(code, 1);
    assert_eq!(codes(&r["problems"]), ["InsufficientPermissionforConfig"], "{r}");
    assert!(r["problems"][0]["message"].as_str().unwrap().contains("no snapshot taken"), "{r}");
    assert_eq!(r["freeze"]["enabled"], false, "{r}");
}

#[test]
fn unusable_native_config_with_mount_freezes_only_that_mount_without_hooks() {
    require!(Root);
    let f = Fixture::new("native-unusable-mount");
    let config = native_config(&f, "quiesce.toml", &excluding_native_config(&f));
    sh(&format!("chmod 0640 {}", config.display()));
    let run = f.snapshot(&config);
    assert!(run.has_error("InsufficientPermissionforConfig"), "{:?}", run.error_codes());
    assert_eq!(Fixture::frozen_paths(&run), [f.mnt.path().display().to_string()]);
    assert_eq!(run.consistency(), "FileSystemConsistent");
    assert_eq!(run.code(), 3);
    assert!(f.file("snapped").exists());
    assert_eq!(f.read("log.txt"), "", "no hook of an untrusted config runs");
}

#[test]
fn unusable_legacy_config_keeps_the_azure_fallback() {
    require!(Root);
    let f = Fixture::new("legacy-unusable");
    let config = f.legacy_pair();
    sh(&format!("chmod 0644 {}", config.display()));
    // Without --mount the legacy fall-back plans every eligible file system
    // (planning only: this session is never run).
    let session = Session::prepare(load_config(Some(&config)), SessionOptions::default()).expect("prepare");
    assert!(session.plan().is_some(), "the legacy JSON keeps the Azure framework's fall-back");
    assert_eq!(session.config_error().map(|e| e.code), Some(ErrorCode::InsufficientPermissionforConfig));
    // With --mount, it freezes that mount and takes the snapshot, without hooks.
    let run = f.snapshot(&config);
    assert!(run.has_error("InsufficientPermissionforConfig"), "{:?}", run.error_codes());
    assert_eq!(run.consistency(), "FileSystemConsistent");
    assert_eq!(f.read("log.txt"), "");
}

#[test]
fn an_unreadable_configs_format_comes_from_its_name_not_its_content() {
    require!(Root);
    let f = Fixture::new("format-by-name");
    // Untrusted files are not read: whatever their content says, the name decides.
    let json_named = f.s.config("admin.json", "[freeze]\nenabled = true\n");
    let toml_named = f.s.config("admin.conf", "{\"preScriptLocation\": \"/a\", \"postScriptLocation\": \"/b\"}");
    for p in [&json_named, &toml_named] {
        sh(&format!("chmod 0666 {}", p.display()));
    }
    assert_eq!(load_config(Some(&json_named)).unwrap_err().format(), Format::Legacy);
    assert_eq!(load_config(Some(&toml_named)).unwrap_err().format(), Format::Native);
    // A trusted file that fails to parse is judged by its content.
    let broken_json = f.s.config("broken.conf", "{ \"preScriptLocation\": ");
    assert_eq!(load_config(Some(&broken_json)).unwrap_err().format(), Format::Legacy);
}

// ------------------------------------------------ relative --config (issue 8.9)

#[test]
fn relative_config_path_is_taken_from_the_working_directory() {
    require!(Root);
    let f = Fixture::new("relative");
    f.legacy_pair();
    let mut cmd = quiesce(&f.s);
    cmd.current_dir(&f.s.path)
        .args(["snapshot", "--config", "./VMSnapshotScriptPluginConfig.json", "--mount"])
        .arg(f.mnt.path())
        .args(["--snapshot-cmd", "true"]);
    let run = run_json(cmd);
    assert_eq!(run.consistency(), "AppConsistent", "{:?}", run.report["errors"]);
    assert_eq!(run.code(), 0);
    assert_eq!(run.report["config"]["path"], f.file("VMSnapshotScriptPluginConfig.json").display().to_string());
    assert_eq!(f.read("log.txt"), "pre\npost\n");

    // The trust walk still runs on the absolute path: a world-writable
    // directory above the working directory is refused.
    let open = f.file("open");
    fs::create_dir(&open).unwrap();
    sh(&format!("chmod 0777 {}", open.display()));
    fs::copy(f.file("VMSnapshotScriptPluginConfig.json"), open.join("c.json")).unwrap();
    let out =
        quiesce(&f.s).current_dir(&open).args(["check", "--json", "--config", "c.json", "--mount"]).arg(f.mnt.path()).output().unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(codes(&r["problems"]), ["InsufficientPermissionforConfig"], "{r}");
    assert!(r["problems"][0]["message"].as_str().unwrap().contains(&open.display().to_string()), "{r}");
}

// ------------------------------------------------ script modes (issue 8.10)

#[test]
fn legacy_script_readable_by_others_is_refused_with_the_fix() {
    require!(Root);
    let f = Fixture::new("legacy-0755");
    let config = f.legacy_pair();
    for (script, mode, code) in
        [("pre.sh", "0755", "InsufficientPermissionforPre-Script"), ("post.sh", "0750", "InsufficientPermissionforPost-Script")]
    {
        sh(&format!("chmod 0700 {} {}", f.file("pre.sh").display(), f.file("post.sh").display()));
        let path = f.file(script);
        sh(&format!("chmod {mode} {}", path.display()));
        let run = f.snapshot(&config);
        assert!(run.has_error(code), "{mode} {script}: {:?}", run.error_codes());
        let msg = run.report["errors"].to_string();
        assert!(msg.contains(&format!("chmod 700 {}", path.display())), "names the fix: {msg}");
        assert_eq!(f.read("log.txt"), "", "neither script of a refused pair runs");
        assert_eq!(run.consistency(), "FileSystemConsistent");
        // check says the same.
        let (code_, r) = f.check(&config, true);
        assert_eq!(code_, 1);
        assert_eq!(codes(&r["problems"]), [code], "{r}");
    }
}

#[test]
fn native_script_readable_by_others_runs_with_a_warning() {
    require!(Root);
    let f = Fixture::new("native-0755");
    let pre = f.script("pre.sh", "pre");
    sh(&format!("chmod 0755 {}", pre.display()));
    let config = native_config(&f, "quiesce.toml", &format!("[[hook]]\nname = \"db\"\npre = \"{}\"\n", pre.display()));
    let run = f.snapshot(&config);
    assert_eq!(f.read("log.txt"), "pre\n");
    assert_eq!(run.consistency(), "AppConsistent");
    let warnings = run.report["warnings"].to_string();
    assert!(warnings.contains(&format!("chmod 700 {}", pre.display())), "{warnings}");
    let (code, r) = f.check(&config, true);
    assert_eq!(code, 0, "{r}");
    assert!(r["warnings"].to_string().contains(&format!("chmod 700 {}", pre.display())), "{r}");
}

// ------------------------------------------------ check = the session's validation

#[test]
fn check_reports_what_the_session_refuses() {
    require!(Root, Plugins);
    let f = Fixture::new("check-agrees");
    let good = f.script("good.sh", "good");
    let open = f.script("open.sh", "open");
    sh(&format!("chmod 0722 {}", open.display()));
    let config = native_config(
        &f,
        "quiesce.toml",
        &format!(
            "[[hook]]\nname = \"a\"\npre = \"{good}\"\npost = \"{missing}\"\n\n\
             [[hook]]\nname = \"b\"\npre = \"{open}\"\npost = \"{good}\"\n\n\
             [[hook]]\nname = \"c\"\nplugin = \"{plugin}\"\n",
            good = good.display(),
            missing = f.file("missing.sh").display(),
            open = open.display(),
            plugin = f.file("missing.wasm").display(),
        ),
    );
    let (code, r) = f.check(&config, true);
    assert_eq!(code, 1);
    let run = f.snapshot(&config);
    assert_eq!(codes(&r["problems"]), run.error_codes(), "check: {r}\nsession: {}", run.report["errors"]);
    assert_eq!(codes(&r["problems"]), ["Post-ScriptNotFound", "InsufficientPermissionforPre-Script", "PluginLoadFailed"]);
    assert_eq!(r["hooks"][0]["pre"]["status"], "ok");
    assert!(r["hooks"][1]["post"]["status"].as_str().unwrap().starts_with("not checked"), "{r}");
    assert_eq!(f.read("log.txt"), "", "a refused pair does not run");
}

// ------------------------------------------------ durations (issue 8.3, config side)

#[test]
fn absurd_durations_are_config_errors_naming_the_field() {
    require!(Root);
    let f = Fixture::new("durations");
    let pre = f.script("pre.sh", "pre");
    let post = f.script("post.sh", "post");
    let legacy = legacy_config(&f.s, &pre, &post, json!({"timeoutInSeconds": 1e19}));
    let run = f.snapshot(&legacy);
    assert!(run.has_error("IncorrectJSONConfigFile"), "{:?}", run.error_codes());
    let msg = run.report["errors"].to_string();
    assert!(msg.contains("timeoutInSeconds") && msg.contains("86400"), "{msg}");
    assert_eq!(run.consistency(), "FileSystemConsistent", "legacy fall-back, limited to --mount");

    let native =
        native_config(&f, "quiesce.toml", &format!("[[hook]]\nname = \"db\"\npre = \"{}\"\nretry_delay_ms = 99999999999\n", pre.display()));
    let (code, r) = f.check(&native, true);
    assert_eq!(code, 1);
    assert!(r["problems"][0]["message"].as_str().unwrap().contains("retry_delay_ms"), "{r}");
    assert_eq!(f.read("log.txt"), "");
}

// ------------------------------------------------ the run directory (issue 8.6)

#[test]
fn symlinked_lock_file_is_not_followed_and_its_target_is_untouched() {
    require!(Root);
    let f = Fixture::new("lock-symlink");
    let config = f.legacy_pair();
    let run_dir = f.run_dir();
    let victim = f.file("victim");
    fs::write(&victim, "precious").unwrap();
    symlink(&victim, run_dir.join("session.lock")).unwrap();
    let run = f.snapshot(&config);
    assert!(run.has_error("IncorrectPluginhostFile"), "{:?}", run.error_codes());
    assert!(run.report["errors"].to_string().contains("symbolic link"), "{}", run.report["errors"]);
    assert_eq!(run.code(), 4);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious", "the symlink's target was written");
    assert_eq!(f.read("log.txt"), "");
    assert!(!f.file("snapped").exists());
}

#[test]
fn symlinked_state_files_are_replaced_not_followed() {
    require!(Root);
    let f = Fixture::new("state-symlink");
    let config = f.legacy_pair();
    let run_dir = f.run_dir();
    for name in ["state.json", "state.json.tmp"] {
        let victim = f.file(&format!("victim-{name}"));
        fs::write(&victim, "precious").unwrap();
        symlink(&victim, run_dir.join(name)).unwrap();
    }
    let run = f.snapshot(&config);
    assert_eq!(run.consistency(), "AppConsistent", "{:?}", run.report["errors"]);
    for name in ["state.json", "state.json.tmp"] {
        assert_eq!(fs::read_to_string(f.file(&format!("victim-{name}"))).unwrap(), "precious", "{name}'s target was written");
    }
}

#[test]
fn run_directory_writable_by_others_or_a_symlink_is_refused_with_the_fix() {
    require!(Root);
    let f = Fixture::new("run-dir-mode");
    let config = f.legacy_pair();
    let run_dir = f.run_dir();
    sh(&format!("chmod 0770 {}", run_dir.display()));
    let run = f.snapshot(&config);
    assert!(run.has_error("IncorrectPluginhostFile"), "{:?}", run.error_codes());
    let msg = run.report["errors"].to_string();
    assert!(msg.contains(&format!("chown root:root {d} && chmod 700 {d}", d = run_dir.display())), "{msg}");
    assert_eq!(run.code(), 4);
    assert_eq!(f.read("log.txt"), "");

    // A symlink as the run directory: refused too, its target untouched.
    fs::remove_dir(&run_dir).unwrap();
    let elsewhere = f.file("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    symlink(&elsewhere, &run_dir).unwrap();
    let run = f.snapshot(&config);
    assert!(run.has_error("IncorrectPluginhostFile"), "{:?}", run.error_codes());
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0, "something was created through the symlink");

    // Fixed as the message says, it works.
    fs::remove_file(&run_dir).unwrap();
    fs::create_dir(&run_dir).unwrap();
    sh(&format!("chmod 0700 {}", run_dir.display()));
    assert_eq!(f.snapshot(&config).code(), 0);
}

#[test]
fn legacy_rule_refuses_any_group_or_other_bit_native_rule_only_write_bits() {
    require!(Root);
    use quiesce::trust::{open_trusted, Rule, TrustError};
    let s = Scratch::new("legacy-rule");
    let p = s.join("pre.sh");
    for mode in [0o700, 0o500] {
        write_mode(&p, "#!/bin/sh\n", mode);
        open_trusted(&p, Rule::LegacyScript).unwrap_or_else(|e| panic!("{mode:o}: {e}"));
    }
    for mode in [0o755, 0o750, 0o701, 0o710, 0o704] {
        write_mode(&p, "#!/bin/sh\n", mode);
        let e = open_trusted(&p, Rule::LegacyScript).unwrap_err();
        assert!(matches!(e, TrustError::GroupOrOtherAccess { mode: m, .. } if m == mode), "{mode:o}: {e}");
        assert!(e.to_string().contains(&format!("chmod 700 {}", p.display())), "{e}");
        let f = open_trusted(&p, Rule::Script).unwrap_or_else(|e| panic!("{mode:o}: {e}"));
        assert!(f.group_or_other_access().is_some_and(|w| w.contains("chmod 700")), "{mode:o}");
    }
    write_mode(&p, "#!/bin/sh\n", 0o700);
    assert!(open_trusted(&p, Rule::Script).unwrap().group_or_other_access().is_none());
}
