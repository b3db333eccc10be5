//! `quiesce doctor` names each broken state, created for real: a session
//! holding the lock, one killed that left its state, a file system frozen
//! by someone else, a guardian that outlived its host, untrusted files and
//! directories, a plugin that does not load, a full state file system, a
//! service socket nobody answers — and says nothing alarming when all is well.
//! Every run is scoped to the test's own loop mounts with `--mount`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use quiesce_tests::db::Redis;
use quiesce_tests::plugins::{install_bytes, install_plugin};
use quiesce_tests::*;
use serde_json::Value;

/// A scratch directory with one loop mount and every directory quiesce uses
/// inside it (run, state, cache, the service socket).
struct Machine {
    mnt: LoopMount,
    s: Scratch,
}

impl Machine {
    fn new(name: &str) -> Machine {
        let s = Scratch::new(name);
        let mnt = LoopMount::new(&s.path, "mnt", Fs::Ext4);
        Machine { mnt, s }
    }

    /// A native config with one script hook (pre and post), trusted.
    fn config(&self) -> PathBuf {
        let pre = self.s.script("pre.sh", "#!/bin/sh\nexit 0\n");
        let post = self.s.script("post.sh", "#!/bin/sh\nexit 0\n");
        self.s.config("quiesce.toml", &format!("[[hook]]\nname = \"app\"\npre = \"{}\"\npost = \"{}\"\n", pre.display(), post.display()))
    }

    fn cmd(&self) -> Command {
        let mut cmd = quiesce(&self.s);
        cmd.env("QUIESCE_STATE_DIR", self.s.join("state"))
            .env("QUIESCE_CACHE_DIR", self.s.join("cache"))
            .env("QUIESCE_SOCKET", self.s.join("quiesce.sock"));
        cmd
    }

    /// `quiesce doctor --json --config CONFIG --mount MNT`.
    fn doctor(&self, config: &Path) -> Doctor {
        self.doctor_with(config, |_| {})
    }

    fn doctor_with(&self, config: &Path, tweak: impl FnOnce(&mut Command)) -> Doctor {
        let mut cmd = self.cmd();
        cmd.args(["doctor", "--json", "--config"]).arg(config).arg("--mount").arg(self.mnt.path());
        tweak(&mut cmd);
        let out = cmd.output().expect("run quiesce doctor");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("doctor --json: {e}\nstdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr)));
        Doctor { code: out.status.code().unwrap_or(-1), json }
    }

    /// A session whose snapshot command writes its pid, says it is
    /// snapshotting, and sleeps: returns once the mount is frozen.
    fn start_slow_session(&self) -> Session {
        let pidfile = self.s.join("sleeper.pid");
        let marker = self.s.join("snapping");
        let snap = format!("echo $$ > {}; touch {}; exec sleep 60", pidfile.display(), marker.display());
        let child = self
            .cmd()
            .args(["snapshot", "--json", "--max-freeze", "60", "--config"])
            .arg(self.config())
            .arg("--mount")
            .arg(self.mnt.path())
            .arg("--snapshot-cmd")
            .arg(snap)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start quiesce snapshot");
        let session = Session { child, pidfile };
        let t = Instant::now();
        while !marker.exists() {
            assert!(t.elapsed() < Duration::from_secs(30), "the session never reached its snapshot");
            std::thread::sleep(Duration::from_millis(10));
        }
        session
    }

    /// One full session (`quiesce snapshot --json`) on the test's mount: its report.
    fn snapshot(&self, config: &Path, snapshot_cmd: &str) -> Value {
        let mut cmd = self.cmd();
        cmd.args(["snapshot", "--config"]).arg(config).arg("--mount").arg(self.mnt.path()).args(["--snapshot-cmd", snapshot_cmd]);
        run_json(cmd).report
    }

    /// What the running session wrote to its state file.
    fn state(&self) -> Value {
        serde_json::from_str(&fs::read_to_string(self.s.join("run/state.json")).expect("state.json")).expect("state.json is JSON")
    }
}

/// A background session; ended (SIGTERM: it thaws and runs post hooks) on drop.
struct Session {
    child: Child,
    pidfile: PathBuf,
}

impl Session {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
        let _ = self.child.wait();
        if let Ok(pid) = fs::read_to_string(&self.pidfile).unwrap_or_default().trim().parse::<i32>() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

struct Doctor {
    code: i32,
    json: Value,
}

impl Doctor {
    fn findings(&self, code: &str) -> Vec<&Value> {
        self.json["findings"].as_array().map(|a| a.iter().filter(|f| f["code"] == code).collect()).unwrap_or_default()
    }

    /// The one finding with this code; panics with the whole diagnosis otherwise.
    fn finding(&self, code: &str) -> &Value {
        let found = self.findings(code);
        assert_eq!(found.len(), 1, "expected one {code} finding: {:#}", self.json);
        found[0]
    }

    fn codes(&self) -> Vec<String> {
        self.json["findings"]
            .as_array()
            .map(|a| a.iter().filter_map(|f| f["code"].as_str().map(String::from)).collect())
            .unwrap_or_default()
    }
}

/// Thaws a file system the test froze with `fsfreeze -f`, whatever happens.
struct Thaw<'a>(&'a Path);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(self.0).stderr(Stdio::null()).status();
    }
}

#[test]
fn a_healthy_machine_has_no_problem_and_no_warning_and_exits_0() {
    quiesce_tests::require!(Root, Redis, Plugins);
    let m = Machine::new("doctor-healthy");
    let d = m.doctor(&m.config());
    assert_eq!(d.code, 0, "{:#}", d.json);
    assert_eq!(d.json["healthy"], true);
    assert_eq!(d.json["errors"], 0, "{:#}", d.json);
    assert_eq!(d.json["warnings"], 0, "{:#}", d.json);
    // No service socket here: said, but only as a note.
    assert_eq!(d.finding("ServiceNotInstalled")["severity"], "info");
    // Another test's freeze sets the global RCU knob for a millisecond: if the
    // doctor read it then, that is a note about the machine, not this setup.
    let codes: Vec<String> = d.codes().into_iter().filter(|c| c != "RcuExpedited").collect();
    assert_eq!(codes, ["ServiceNotInstalled"], "{:#}", d.json);
    assert!(d.findings("RcuExpedited").iter().all(|f| f["severity"] == "info"), "{:#}", d.json);
    let rcu = d.json["checks"].as_array().unwrap().iter().find(|c| c["check"] == "rcu").expect("an rcu check");
    assert!(rcu["summary"].as_str().unwrap().starts_with("/sys/kernel/rcu_expedited "), "{rcu}");
}

#[test]
fn a_running_session_is_backup_operation_in_progress_and_its_freeze_is_expected() {
    quiesce_tests::require!(Root, Redis, Plugins);
    let m = Machine::new("doctor-running");
    let session = m.start_slow_session();
    let d = m.doctor(&m.config());
    let busy = d.finding("UserErrorBackupOperationInProgress");
    assert_eq!(busy["severity"], "warning", "a running backup is not a fault: {busy:#}");
    assert!(busy["cause"].as_str().unwrap().contains(&format!("pid {}", session.pid())), "{busy:#}");
    let frozen = d.finding("FileSystemFrozen");
    assert_eq!(frozen["severity"], "info", "frozen by the running session for its snapshot: {frozen:#}");
    assert_eq!(d.code, 0, "warnings alone keep the exit status 0: {:#}", d.json);
    drop(session);
    assert!(writable_within(m.mnt.path(), Duration::from_secs(10)).is_some(), "the session thawed on SIGTERM");
}

#[test]
fn a_state_file_left_by_a_killed_session_is_named_stale() {
    quiesce_tests::require!(Root, Redis, Plugins);
    let m = Machine::new("doctor-stale");
    let session = m.start_slow_session();
    let state = m.state();
    let guardian = state["guardian_pid"].as_i64().expect("guardian pid in the state") as i32;
    kill(Pid::from_raw(session.pid()), Signal::SIGKILL).unwrap();
    // The guardian sees its host gone, thaws, and exits (releasing the lock).
    assert!(gone_within(guardian, Duration::from_secs(10)), "the guardian thaws and exits when its host dies");
    let d = m.doctor(&m.config());
    let stale = d.finding("SessionStateStale");
    assert_eq!(stale["severity"], "warning");
    let cause = stale["cause"].as_str().unwrap();
    assert!(cause.contains(state["session_id"].as_str().unwrap()) && cause.contains("is gone"), "{cause}");
    assert!(stale["fix"].as_str().unwrap().contains(&format!("rm {}", m.s.join("run/state.json").display())), "{stale:#}");
    assert!(d.findings("FileSystemFrozen").is_empty(), "the guardian thawed: {:#}", d.json);
    assert!(d.findings("UserErrorBackupOperationInProgress").is_empty(), "nobody holds the lock: {:#}", d.json);
    assert_eq!(d.code, 0, "{:#}", d.json);
    drop(session);
}

#[test]
fn a_file_system_frozen_by_someone_else_is_a_problem_with_the_thaw_command() {
    quiesce_tests::require!(Root, Redis, Plugins);
    let m = Machine::new("doctor-frozen");
    let config = m.config();
    sh(&format!("fsfreeze -f {}", m.mnt.path().display()));
    let _thaw = Thaw(m.mnt.path());
    let d = m.doctor(&config);
    let f = d.finding("FileSystemFrozen");
    assert_eq!(f["severity"], "error");
    assert_eq!(
        f["fix"].as_str().unwrap(),
        format!(
            "if no backup tool is taking a snapshot of it right now (another agent, `fsfreeze -f`): quiesce thaw --mount {}",
            m.mnt.path().display()
        )
    );
    assert!(d.findings("FsFreezeFailed").is_empty(), "the same freeze is not reported twice: {:#}", d.json);
    assert_eq!(d.code, 1);
    assert!(is_frozen(m.mnt.path()), "the doctor did not thaw it");
}

#[test]
fn a_guardian_that_outlived_its_host_is_named_and_the_fix_ends_it() {
    quiesce_tests::require!(Root, Redis, Plugins);
    let m = Machine::new("doctor-orphan");
    let session = m.start_slow_session();
    let guardian = m.state()["guardian_pid"].as_i64().expect("guardian pid") as i32;
    // Stopped, the guardian cannot notice its host's death: it outlives it.
    kill(Pid::from_raw(guardian), Signal::SIGSTOP).unwrap();
    let _resume = Resume(guardian);
    kill(Pid::from_raw(session.pid()), Signal::SIGKILL).unwrap();
    assert!(gone_within(session.pid(), Duration::from_secs(10)));
    let mut session = session;
    let _ = session.child.wait();

    let d = m.doctor(&m.config());
    let g = d.finding("GuardianOrphaned");
    assert_eq!(g["severity"], "error");
    assert!(g["cause"].as_str().unwrap().contains(&format!("freeze guardian pid {guardian}")), "{g:#}");
    assert!(g["cause"].as_str().unwrap().contains("stopped"), "{g:#}");
    assert_eq!(d.finding("FileSystemFrozen")["severity"], "error", "frozen, and no live session froze it");
    assert_eq!(d.finding("UserErrorBackupOperationInProgress")["severity"], "error", "the lock is held without a session");
    assert_eq!(d.code, 1);

    // The fix as printed: the guardian thaws and exits.
    let fix = g["fix"].as_str().unwrap();
    let command = fix.split("   (").next().unwrap();
    sh(command);
    assert!(gone_within(guardian, Duration::from_secs(10)), "`{command}` ended the guardian");
    assert!(writable_within(m.mnt.path(), Duration::from_secs(10)).is_some(), "and it thawed");
    let after = m.doctor(&m.config());
    assert!(after.findings("GuardianOrphaned").is_empty() && after.findings("FileSystemFrozen").is_empty(), "{:#}", after.json);
    assert_eq!(after.code, 0, "{:#}", after.json);
    drop(session);
}

/// Resumes (and ends) a guardian the test stopped, whatever happens.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGTERM);
        let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

#[test]
fn a_config_readable_by_others_is_named_with_the_session_code_and_chmod() {
    quiesce_tests::require!(Root, Redis, Plugins);
    let m = Machine::new("doctor-config-mode");
    let config = m.config();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).unwrap();
    let d = m.doctor(&config);
    let f = d.finding("InsufficientPermissionforConfig");
    assert_eq!(f["severity"], "error");
    assert_eq!(f["fix"].as_str().unwrap(), format!("chmod 600 {}", config.display()));
    assert_eq!(d.code, 1);
}

#[test]
fn a_script_writable_by_others_is_named_with_the_session_code_and_chmod() {
    quiesce_tests::require!(Root, Redis, Plugins);
    let m = Machine::new("doctor-script-mode");
    let config = m.config();
    let pre = m.s.join("pre.sh");
    fs::set_permissions(&pre, fs::Permissions::from_mode(0o777)).unwrap();
    let d = m.doctor(&config);
    let f = d.finding("InsufficientPermissionforPre-Script");
    assert_eq!(f["fix"].as_str().unwrap(), format!("chmod 700 {}", pre.display()));
    assert_eq!(d.code, 1);
    // The fix as printed makes it pass.
    sh(f["fix"].as_str().unwrap());
    assert!(m.doctor(&config).findings("InsufficientPermissionforPre-Script").is_empty());
}

#[test]
fn a_run_directory_writable_by_everyone_is_not_trusted() {
    quiesce_tests::require!(Root, Redis, Plugins);
    let m = Machine::new("doctor-run-dir");
    let run = m.s.join("run");
    fs::create_dir(&run).unwrap();
    fs::set_permissions(&run, fs::Permissions::from_mode(0o777)).unwrap();
    let d = m.doctor(&m.config());
    let f = d.finding("DirectoryNotTrusted");
    assert!(f["cause"].as_str().unwrap().contains(&format!("run directory {}", run.display())), "{f:#}");
    assert_eq!(f["fix"].as_str().unwrap(), format!("chown root {}; chmod go-w {}", run.display(), run.display()));
    assert_eq!(d.code, 1);
}

#[test]
fn a_plugin_that_does_not_load_is_named_plugin_load_failed() {
    quiesce_tests::require!(Root, Redis, Plugins);
    let m = Machine::new("doctor-plugin");
    // A real component, but not a quiesce plugin; and a file that is no component at all.
    let component = install_plugin(&m.s, "not_a_plugin");
    let garbage = m.s.join("garbage.wasm");
    install_bytes(&garbage, b"this is not WebAssembly");
    for plugin in [component, garbage] {
        let config = m.s.config("plugin.toml", &format!("[[hook]]\nname = \"p\"\nplugin = \"{}\"\n", plugin.display()));
        let d = m.doctor(&config);
        let f = d.finding("PluginLoadFailed");
        assert_eq!(f["severity"], "error");
        assert!(f["cause"].as_str().unwrap().contains(&plugin.display().to_string()), "{f:#}");
        assert!(f["fix"].as_str().unwrap().starts_with(&format!("quiesce plugin inspect {}", plugin.display())), "{f:#}");
        assert_eq!(d.code, 1);
    }
}

#[test]
fn a_full_state_file_system_is_named_state_space_low() {
    quiesce_tests::require!(Root, Redis, Plugins);
    let m = Machine::new("doctor-full");
    let small = LoopMount::with_size(&m.s.path, "small", Fs::Ext4, 4);
    // Fill it as root (reserved blocks too); dd stops at ENOSPC.
    let _ = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}/fill", small.path().display()))
        .arg("bs=64k")
        .stderr(Stdio::null())
        .status();
    let state = small.path().join("quiesce-state");
    let d = m.doctor_with(&m.config(), |c| {
        c.env("QUIESCE_STATE_DIR", &state);
    });
    let f = d.finding("StateSpaceLow");
    assert_eq!(f["severity"], "error");
    assert!(f["cause"].as_str().unwrap().contains(&state.display().to_string()), "{f:#}");
    assert_eq!(d.code, 1);
}

#[test]
fn a_service_socket_nobody_answers_is_guest_agent_status_unavailable() {
    quiesce_tests::require!(Root, Redis, Plugins);
    let m = Machine::new("doctor-service");
    let sock = m.s.join("quiesce.sock");
    // A socket left behind by a service that died: connections are refused.
    drop(UnixListener::bind(&sock).unwrap());
    let d = m.doctor(&m.config());
    let f = d.finding("UserErrorGuestAgentStatusUnavailable");
    assert_eq!(f["severity"], "error");
    assert!(f["cause"].as_str().unwrap().contains("connect"), "{f:#}");
    assert!(f["fix"].as_str().unwrap().starts_with("systemctl restart quiesce.socket"), "{f:#}");
    assert_eq!(d.code, 1);

    // A service that accepts and never answers (hung).
    fs::remove_file(&sock).unwrap();
    let _hung = UnixListener::bind(&sock).unwrap();
    let d = m.doctor(&m.config());
    let f = d.finding("UserErrorGuestAgentStatusUnavailable");
    assert!(f["cause"].as_str().unwrap().contains("no reply within"), "{f:#}");
    assert_eq!(d.code, 1);
}

#[test]
fn a_metrics_textfile_directory_others_may_write_is_not_trusted() {
    quiesce_tests::require!(Root, Redis, Plugins);
    let m = Machine::new("doctor-metrics-dir");
    let textdir = m.s.join("textfile");
    fs::create_dir(&textdir).unwrap();
    fs::set_permissions(&textdir, fs::Permissions::from_mode(0o777)).unwrap();
    let config = m.s.config("metrics.toml", &format!("[metrics]\ntextfile = \"{}/quiesce.prom\"\n", textdir.display()));
    let d = m.doctor(&config);
    let f = d.finding("DirectoryNotTrusted");
    assert!(f["cause"].as_str().unwrap().contains(&format!("metrics textfile directory {}", textdir.display())), "{f:#}");
    assert_eq!(f["fix"].as_str().unwrap(), format!("chown root {}; chmod go-w {}", textdir.display(), textdir.display()));
    assert_eq!(d.code, 1);
}

#[test]
fn a_full_recovery_point_catalog_is_rp_collection_limit_reached() {
    quiesce_tests::require!(Root, Redis, Plugins);
    let m = Machine::new("doctor-points-full");
    let pre = m.s.script("pre.sh", "#!/bin/sh\nexit 0\n");
    let config = m.s.config("points.toml", &format!("[points]\nmax_points = 1\n\n[[hook]]\nname = \"app\"\npre = \"{}\"\n", pre.display()));
    let report = m.snapshot(&config, "true");
    assert_eq!(report["consistency"], "AppConsistent", "{report}");
    let d = m.doctor(&config);
    let f = d.finding("UserErrorRpCollectionLimitReached");
    assert_eq!(f["severity"], "error", "automatic clean-up is off: the next backup is refused");
    assert!(f["fix"].as_str().unwrap().starts_with("quiesce points prune"), "{f:#}");
    let points = d.json["checks"].as_array().unwrap().iter().find(|c| c["check"] == "points").unwrap();
    let id = report["session_id"].as_str().unwrap();
    assert!(points["summary"].as_str().unwrap().contains(&format!("last AppConsistent point {id}")), "{points:#}");
    assert_eq!(d.code, 1);
}

#[test]
fn a_newest_point_weaker_than_app_consistent_is_named_with_the_last_good_one() {
    quiesce_tests::require!(Root, Redis, Plugins);
    let m = Machine::new("doctor-points-weak");
    let config = m.config();
    let good = m.snapshot(&config, "true");
    assert_eq!(good["consistency"], "AppConsistent", "{good}");
    // The application's pre hook now fails: the next point is only file-system consistent.
    m.s.script("pre.sh", "#!/bin/sh\nexit 1\n");
    let weak = m.snapshot(&config, "true");
    assert_eq!(weak["consistency"], "FileSystemConsistent", "{weak}");
    let d = m.doctor(&m.s.join("quiesce.toml"));
    let f = d.finding("LastPointNotAppConsistent");
    assert_eq!(f["severity"], "warning");
    let cause = f["cause"].as_str().unwrap();
    assert!(cause.contains(weak["session_id"].as_str().unwrap()) && cause.contains("FileSystemConsistent"), "{cause}");
    assert!(cause.contains(&format!("the last AppConsistent point is {}", good["session_id"].as_str().unwrap())), "{cause}");
    assert!(d.findings("UserErrorRpCollectionLimitReached").is_empty());
    assert_eq!(d.code, 0, "a weaker point is a warning: {:#}", d.json);
}

#[test]
fn a_plugin_that_cannot_log_in_to_what_it_was_granted_is_plugin_check_failed() {
    quiesce_tests::require!(Root, Redis, Plugins);
    let m = Machine::new("doctor-plugin-check");
    let redis = Redis::start(&m.s.path, false);
    let plugin = install_plugin(&m.s, "quiesce_redis");
    let config_with = |password_file: &Path| {
        let target = format!("tcp:127.0.0.1:{}", redis.port);
        m.s.config(
            "redis.toml",
            &format!(
                "[[hook]]\nname = \"cache\"\nplugin = \"{}\"\nparams = {{ target = \"{target}\", password_file = \"{pw}\" }}\n\
                 grants = [\"{target}\", \"file:{pw}\"]\n",
                plugin.display(),
                pw = password_file.display()
            ),
        )
    };
    // The admin's password file holds a stale password: the plugin cannot log in.
    let wrong = m.s.config("wrong-password", "not-the-password\n");
    let d = m.doctor(&config_with(&wrong));
    let f = d.finding("PluginCheckFailed");
    assert_eq!(f["severity"], "error");
    assert!(f["cause"].as_str().unwrap().starts_with("hook cache:"), "{f:#}");
    assert_eq!(d.code, 1, "{:#}", d.json);

    // With the right password the same check passes.
    let d = m.doctor(&config_with(&redis.password_file));
    assert!(d.findings("PluginCheckFailed").is_empty(), "{:#}", d.json);
    assert!(d.findings("PluginLoadFailed").is_empty(), "{:#}", d.json);
}
