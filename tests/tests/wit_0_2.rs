//! `quiesce:plugin@0.2.0` (issue 12): plugins that can be checked before the
//! first backup, a typed label, and a `post` that can say the quiesce did
//! not hold. Against real components (the 0.2.0 plugins built from
//! `plugins/`, a 0.1.0 component built by the released SDK and kept as a
//! fixture, a crate made by `quiesce plugin new` and built offline) and
//! real PostgreSQL, MariaDB and Redis servers configured to pass and to
//! fail each check.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use quiesce::hooks::wasm::{CallContext, CallOutcome, Grants, InstanceConfig, SnapshotOutcome, WasmEngine, WitVersion};
use quiesce::report::Consistency;
use quiesce_tests::db::*;
use quiesce_tests::plugins::*;
use quiesce_tests::*;

const SECOND: Duration = Duration::from_secs(1);

/// A component built against `quiesce:plugin@0.1.0` by the 0.1.0 SDK
/// (`plugins/examples/lockd` before the SDK moved to 0.2.0).
fn lockd_0_1_0() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/wit-0.1.0/lockd.wasm")
}

/// One plugin hook, freezing off (a check freezes nothing anyway; a session
/// with `--snapshot-cmd` then takes its snapshot unfrozen).
fn plugin_config(s: &Scratch, wasm: &Path, params: &[(&str, String)], grants: &[String]) -> PathBuf {
    let params: Vec<String> = params.iter().map(|(k, v)| format!("{k} = {v:?}")).collect();
    let grants: Vec<String> = grants.iter().map(|g| format!("{g:?}")).collect();
    s.config(
        "quiesce.toml",
        &format!(
            "[freeze]\nenabled = false\n\n[[hook]]\nname = \"db\"\nplugin = \"{}\"\ntimeout_secs = 30\nparams = {{ {} }}\ngrants = [{}]\n",
            wasm.display(),
            params.join(", "),
            grants.join(", ")
        ),
    )
}

/// `quiesce check --json --config CONFIG` (its cache in the scratch dir).
fn check(s: &Scratch, config: &Path) -> serde_json::Value {
    let out = quiesce(s).env("QUIESCE_CACHE_DIR", s.join("cache")).args(["check", "--json", "--config"]).arg(config).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("check --json: {e}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    assert_eq!(out.status.code(), Some(if v["ok"] == true { 0 } else { 1 }), "{v}");
    v
}

/// `quiesce check` in plain words.
fn check_text(s: &Scratch, config: &Path) -> String {
    let out = quiesce(s).env("QUIESCE_CACHE_DIR", s.join("cache")).args(["check", "--config"]).arg(config).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `quiesce snapshot --json --snapshot-cmd true --config CONFIG` (unfrozen:
/// the config turns freezing off), cache and state in the scratch dir.
fn session(s: &Scratch, config: &Path) -> Run {
    let mut cmd = quiesce(s);
    cmd.env("QUIESCE_CACHE_DIR", s.join("cache")).env("QUIESCE_STATE_DIR", s.join("state"));
    cmd.args(["snapshot", "--snapshot-cmd", "true", "--config"]).arg(config);
    run_json(cmd)
}

/// The first hook's plugin check findings: (severity, code, message).
fn findings(r: &serde_json::Value) -> Vec<(String, String, String)> {
    plugin_findings(r)
}

/// The finding with `code`, asserting its severity; its message.
fn finding(r: &serde_json::Value, severity: &str, code: &str) -> String {
    let all = findings(r);
    let f = all.iter().find(|(_, c, _)| c == code).unwrap_or_else(|| panic!("no finding {code}: {all:#?}"));
    assert_eq!(f.0, severity, "{code}: {all:#?}");
    f.2.clone()
}

fn errors(r: &serde_json::Value) -> Vec<String> {
    findings(r).into_iter().filter(|(s, _, _)| s == "error").map(|(_, c, _)| c).collect()
}

fn password_file(s: &Scratch, name: &str, password: &str) -> String {
    let p = s.join(name);
    write_mode(&p, &format!("{password}\n"), 0o600);
    p.display().to_string()
}

// ------------------------------------------------------------ both versions

#[tokio::test]
async fn a_0_1_0_plugin_keeps_loading_and_holding_its_lock_beside_0_2_0_plugins() {
    quiesce_tests::require!(Root, Postgres, Mariadb, Redis, Plugins);
    let s = Scratch::new("wit-old");
    let engine = WasmEngine::new(&s.join("cache")).unwrap();
    let old = s.join("lockd-0.1.0.wasm");
    install_bytes(&old, &fs::read(lockd_0_1_0()).unwrap());
    let old = engine.load(&old).expect("a 0.1.0 component loads");
    let new = engine.load(&install_plugin(&s, "lockd")).expect("a 0.2.0 component loads in the same engine");
    assert_eq!((old.wit_version(), new.wit_version()), (WitVersion::V0_1_0, WitVersion::V0_2_0));
    assert!(old.exports().iter().any(|e| e == "quiesce:plugin/hooks@0.1.0"), "{:?}", old.exports());

    let mut lockd = Lockd::start("tcp:127.0.0.1:0");
    let target = lockd.target.clone();
    let mut cfg = InstanceConfig::new("old");
    cfg.grants = Grants::parse([target.as_str()]).unwrap();
    cfg.params = vec![("target".into(), target.clone())];
    let mut inst = old.instantiate(cfg.clone()).await.unwrap();
    let ctx = CallContext { session_id: "s-old".into(), attempt: 1 };
    assert_eq!(inst.pre(&ctx).await, CallOutcome::Ok(format!("lock held on {target}")));
    lockd.wait_for("LOCK s-old -> OK", 5 * SECOND);
    // The typed label reaches a 0.1.0 plugin as the string it always got.
    let post = inst.post_outcome(&ctx, &SnapshotOutcome { taken: true, label: Consistency::FileSystemConsistent }).await;
    assert_eq!(post.outcome, CallOutcome::Ok("unlocked after snapshot (FileSystemConsistent, taken: true)".into()));
    assert_eq!(post.not_held, None, "a 0.1.0 plugin cannot say its quiesce did not hold");
    assert_eq!(lockd.request("STATUS"), "UNLOCKED");

    // No check in 0.1.0: nothing runs, and it says so.
    let run = old.check(cfg.clone(), "c1").await;
    assert!(!run.supported && run.ok() && run.findings.is_empty(), "{run:?}");
    // The same plugin rebuilt against 0.2.0 runs the SDK's default check.
    let run = new.check(cfg, "c2").await;
    assert!(run.supported && run.ok() && run.findings.is_empty(), "{run:?}");
}

#[test]
fn inspect_and_check_say_which_wit_version_a_plugin_speaks() {
    quiesce_tests::require!(Root, Postgres, Mariadb, Redis, Plugins);
    let s = Scratch::new("wit-inspect");
    let old = s.join("lockd-0.1.0.wasm");
    install_bytes(&old, &fs::read(lockd_0_1_0()).unwrap());
    let inspect = |path: &Path| {
        let out = quiesce(&s).env("QUIESCE_CACHE_DIR", s.join("cache")).args(["plugin", "inspect", "--json"]).arg(path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let v = inspect(&old);
    assert_eq!((v["wit_version"].as_str(), v["has_check"].as_bool()), (Some("0.1.0"), Some(false)), "{v}");
    let v = inspect(&install_plugin(&s, "quiesce_redis"));
    assert_eq!((v["wit_version"].as_str(), v["has_check"].as_bool()), (Some("0.2.0"), Some(true)), "{v}");
    let out = quiesce(&s).env("QUIESCE_CACHE_DIR", s.join("cache")).args(["plugin", "inspect"]).arg(&old).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("WIT: quiesce:plugin@0.1.0") && text.contains("in advance (quiesce check): no"), "{text}");

    // `quiesce check` of a 0.1.0 plugin: loads, cannot check, says so in plain words.
    let config = plugin_config(&s, &old, &[("target", "tcp:127.0.0.1:7390".into())], &["tcp:127.0.0.1:7390".into()]);
    let r = check(&s, &config);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["hooks"][0]["plugin"]["wit_version"], "0.1.0");
    assert_eq!(r["hooks"][0]["plugin"]["check"]["supported"], false);
    let text = check_text(&s, &config);
    assert!(text.contains("speaks quiesce:plugin@0.1.0, which cannot check its connection and privileges in advance"), "{text}");
}

// ------------------------------------------------------------ plugin new

/// Where the generated crate builds: kept between runs (a fresh build of
/// wit-bindgen takes minutes here), apart from the plugins' own target.
fn generated_target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugin-new-test")
}

#[test]
fn plugin_new_makes_a_crate_that_builds_offline_for_wasm32_wasip2_and_passes_inspect_and_check() {
    quiesce_tests::require!(Root, Postgres, Mariadb, Redis, Plugins);
    let s = Scratch::new("wit-new");
    let out = quiesce(&s).args(["plugin", "new", "probe-db", "--dir"]).arg(s.join("src")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let root = s.join("src/probe-db");
    // Everything it needs is inside the crate: no path out of it.
    let manifest = fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("quiesce-plugin-sdk = { path = \"sdk\" }") && !manifest.contains(".."), "{manifest}");
    assert_eq!(
        fs::read(root.join("sdk/wit/plugin.wit")).unwrap(),
        fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit/v0.2.0/plugin.wit")).unwrap()
    );
    // Not twice.
    let again = quiesce(&s).args(["plugin", "new", "probe-db", "--dir"]).arg(s.join("src")).output().unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let build = Command::new("cargo")
        .args(["build", "--release", "--offline", "--quiet"])
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", generated_target_dir())
        .output()
        .expect("run cargo");
    assert!(build.status.success(), "the generated crate does not build:\n{}", String::from_utf8_lossy(&build.stderr));
    let wasm = s.join("probe_db.wasm");
    install_bytes(&wasm, &fs::read(generated_target_dir().join("wasm32-wasip2/release/probe_db.wasm")).unwrap());

    let out = quiesce(&s).env("QUIESCE_CACHE_DIR", s.join("cache")).args(["plugin", "inspect", "--json"]).arg(&wasm).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["name"].as_str(), v["wit_version"].as_str(), v["has_check"].as_bool()), (Some("probe-db"), Some("0.2.0"), Some(true)));
    assert_eq!(v["accepted_in_place"], true, "{v}");

    let config = plugin_config(&s, &wasm, &[], &[]);
    let r = check(&s, &config);
    assert_eq!(r["ok"], true, "{r}");
    assert!(finding(&r, "info", "NothingCheckedYet").contains("write Plugin::check"));
    let text = check_text(&s, &config);
    assert!(
        text.contains("the plugin's own check (quiesce:plugin@0.2.0") && text.contains("note     this plugin checks nothing yet"),
        "{text}"
    );
    // And a session runs it.
    let run = session(&s, &config);
    assert_eq!((run.consistency(), run.code()), ("AppConsistent", 0), "{}", run.report);
}

// ------------------------------------------------------------ PostgreSQL

fn pg_params(pg: &Postgres, user: &str, pw_file: &str, extra: &[(&'static str, &str)]) -> (Vec<(&'static str, String)>, Vec<String>) {
    let target = format!("tcp:127.0.0.1:{}", pg.port);
    let mut params = vec![("target", target.clone()), ("user", user.to_owned()), ("password_file", pw_file.to_owned())];
    params.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    (params, vec![target, format!("file:{pw_file}")])
}

#[test]
fn postgres_check_passes_a_pg_checkpoint_role_and_names_the_grant_a_role_without_it_needs() {
    quiesce_tests::require!(Root, Postgres, Mariadb, Redis, Plugins);
    let s = Scratch::new("wit-pg");
    let pg = Postgres::start(&s.path);
    let mut c = pg.connect();
    for sql in ["CREATE ROLE ckpt LOGIN PASSWORD 'pw-ckpt'", "GRANT pg_checkpoint TO ckpt", "CREATE ROLE plain LOGIN PASSWORD 'pw-plain'"] {
        c.simple_query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let plugin = install_plugin(&s, "quiesce_postgres");
    let cfg = |user: &str, pw: &str, extra: &[(&'static str, &str)]| {
        let (params, grants) = pg_params(&pg, user, &password_file(&s, &format!("pw-{user}"), pw), extra);
        plugin_config(&s, &plugin, &params, &grants)
    };

    // Least privilege: a role with pg_checkpoint passes, and a session with it is AppConsistent.
    let config = cfg("ckpt", "pw-ckpt", &[]);
    let r = check(&s, &config);
    assert_eq!(r["ok"], true, "{r}");
    assert!(finding(&r, "passed", "PgCheckpointAllowed").contains("member of pg_checkpoint"));
    finding(&r, "passed", "PgLoggedIn");
    finding(&r, "passed", "PgIsPrimary");
    let run = session(&s, &config);
    assert_eq!((run.consistency(), run.code()), ("AppConsistent", 0), "{}", run.report);

    // Without pg_checkpoint: the fix, named.
    let r = check(&s, &cfg("plain", "pw-plain", &[]));
    assert_eq!(r["ok"], false);
    assert!(finding(&r, "error", "PgCheckpointNotAllowed").contains("GRANT pg_checkpoint TO \"plain\";"), "{r}");
    assert!(r["problems"].as_array().unwrap().iter().any(|p| p["code"] == "PluginCheckFailed"), "{r}");
    let text = check_text(&s, &cfg("plain", "pw-plain", &[]));
    assert!(text.contains("problem  role plain may not run CHECKPOINT") && text.contains("(PgCheckpointNotAllowed)"), "{text}");

    // Backup mode, no archive: both missing pieces named.
    let r = check(&s, &cfg("plain", "pw-plain", &[("mode", "backup")]));
    assert!(finding(&r, "error", "PgBackupNotAllowed")
        .contains("GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean), pg_backup_stop(boolean) TO \"plain\";"));
    assert!(finding(&r, "error", "PgWalArchivingOff").contains("archive_mode = on"));

    // A wrong password: the login fails, and nothing else is claimed.
    let r = check(&s, &cfg("ckpt", "not-the-password", &[]));
    assert_eq!(errors(&r), vec!["PgLoginFailed".to_string()], "{r}");
    // The superuser passes, with the least-privilege advice.
    let r = check(&s, &cfg("postgres", &pg.password, &[]));
    assert_eq!(r["ok"], true, "{r}");
    assert!(finding(&r, "info", "PgSuperuserNotNeeded").contains("GRANT pg_checkpoint TO backup"));
}

#[test]
fn postgres_check_passes_backup_mode_with_archiving_and_refuses_a_standby() {
    quiesce_tests::require!(Root, Postgres, Mariadb, Redis, Plugins);
    let s = Scratch::new("wit-pgb");
    let mut pg = Postgres::start_with(&s.path, PgOptions { archive: true, ..Default::default() });
    let mut c = pg.connect();
    for sql in
        ["CREATE ROLE bk LOGIN PASSWORD 'pw-bk'", "GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean), pg_backup_stop(boolean) TO bk"]
    {
        c.simple_query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    drop(c);
    let plugin = install_plugin(&s, "quiesce_postgres");
    let pw = password_file(&s, "pw-bk", "pw-bk");
    let (params, grants) = pg_params(&pg, "bk", &pw, &[("mode", "backup")]);
    let r = check(&s, &plugin_config(&s, &plugin, &params, &grants));
    assert_eq!(r["ok"], true, "{r}");
    finding(&r, "passed", "PgBackupAllowed");
    finding(&r, "passed", "PgWalArchivingOn");

    // The same data directory as a standby (standby.signal, no primary):
    // in recovery for good, accepting read-only logins.
    pg.stop();
    fs::write(pg.data_dir.join("standby.signal"), "").unwrap();
    sh(&format!("chown postgres: {}", pg.data_dir.join("standby.signal").display()));
    let standby = Postgres::start_existing(&pg.data_dir, &pg.password, &["hot_standby=on".into()]);
    let (params, grants) = pg_params(&standby, "bk", &pw, &[]);
    let r = check(&s, &plugin_config(&s, &plugin, &params, &grants));
    assert_eq!(r["ok"], false);
    assert!(finding(&r, "error", "PgIsStandby").contains("point `target` at the primary"), "{r}");
}

// ------------------------------------------------------------ MariaDB

#[test]
fn mariadb_check_passes_a_least_privilege_user_and_names_each_grant_a_plain_user_lacks() {
    quiesce_tests::require!(Root, Postgres, Mariadb, Redis, Plugins);
    let s = Scratch::new("wit-my");
    let my = MariaDb::start(&s.path);
    let mut root = my.connect_root();
    for sql in [
        "CREATE USER qb@'127.0.0.1' IDENTIFIED BY 'pw-qb'",
        "GRANT RELOAD, PROCESS, BINLOG MONITOR, REPLICA MONITOR ON *.* TO qb@'127.0.0.1'",
    ] {
        root.query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let plugin = install_plugin(&s, "quiesce_mariadb");
    let cfg = |user: &str, pw: &str| {
        let target = format!("tcp:127.0.0.1:{}", my.port);
        let pw = password_file(&s, &format!("pw-{user}"), pw);
        plugin_config(
            &s,
            &plugin,
            &[("target", target.clone()), ("user", user.into()), ("password_file", pw.clone())],
            &[target, format!("file:{pw}")],
        )
    };

    let config = cfg("qb", "pw-qb");
    let r = check(&s, &config);
    assert_eq!(r["ok"], true, "{r}");
    finding(&r, "passed", "MyReloadGranted");
    finding(&r, "passed", "MyIsPrimary");
    assert!(finding(&r, "passed", "MyBinlogOn").contains("binlog."), "{r}");
    assert!(findings(&r).iter().all(|(sev, _, _)| sev == "passed"), "{r}");
    let run = session(&s, &config);
    assert_eq!((run.consistency(), run.code()), ("AppConsistent", 0), "the least-privilege user runs the session: {}", run.report);

    // `app` (INSERT, SELECT on q.*): every missing privilege, with its GRANT.
    let r = check(&s, &cfg(&my.app_user, &my.app_password));
    assert_eq!(r["ok"], false);
    assert!(finding(&r, "error", "MyReloadMissing").contains("GRANT RELOAD ON *.* TO 'app'@'127.0.0.1';"), "{r}");
    assert!(finding(&r, "error", "MyReplicaStatusDenied").contains("GRANT REPLICA MONITOR ON *.*"), "{r}");
    assert!(finding(&r, "error", "MyBinlogStatusDenied").contains("GRANT BINLOG MONITOR ON *.*"), "{r}");
    assert!(finding(&r, "warning", "MyProcessMissing").contains("GRANT PROCESS ON *.*"), "{r}");

    let r = check(&s, &cfg("qb", "wrong"));
    assert_eq!(errors(&r), vec!["MyLoginFailed".to_string()], "{r}");

    // A server without a binary log: said (nothing to record), not a failure.
    let s2 = Scratch::new("wit-my-nobin");
    let nobin = MariaDb::start_with_args(&s2.path, &["--skip-log-bin"]);
    let target = format!("unix:{}", nobin.socket.display());
    let plugin = install_plugin(&s2, "quiesce_mariadb");
    let r = check(&s2, &plugin_config(&s2, &plugin, &[("target", target.clone())], &[target]));
    assert_eq!(r["ok"], true, "{r}");
    assert!(finding(&r, "info", "MyBinlogOff").contains("set log_bin"), "{r}");
}

// ------------------------------------------------------------ Redis

fn redis_params(
    r: &Redis,
    user: Option<&str>,
    pw_file: &str,
    extra: &[(&'static str, &str)],
) -> (Vec<(&'static str, String)>, Vec<String>) {
    let target = format!("tcp:127.0.0.1:{}", r.port);
    let mut params = vec![("target", target.clone()), ("password_file", pw_file.to_owned())];
    if let Some(u) = user {
        params.push(("user", u.to_owned()));
    }
    params.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    (params, vec![target, format!("file:{pw_file}")])
}

#[test]
fn redis_check_finds_an_acl_that_forbids_client_pause_without_pausing_anything() {
    quiesce_tests::require!(Root, Postgres, Mariadb, Redis, Plugins);
    let s = Scratch::new("wit-rd");
    let r = Redis::start(&s.path, true);
    let mut c = r.connect();
    for acl in [
        &["ACL", "SETUSER", "pauser", "on", ">pw-pauser", "~*", "&*", "+@all"][..],
        &["ACL", "SETUSER", "nopause", "on", ">pw-nopause", "~*", "&*", "+@all", "-client|pause"][..],
        // Least privilege: exactly the commands pre and post run (AUTH is always allowed).
        &["ACL", "SETUSER", "qb", "on", ">pw-qb", "+ping", "+info", "+role", "+time", "+client|pause", "+client|unpause"][..],
    ] {
        c.cmd(acl).unwrap_or_else(|e| panic!("{acl:?}: {e}"));
    }
    let plugin = install_plugin(&s, "quiesce_redis");
    let cfg = |user: &str, pw: &str, extra: &[(&'static str, &str)]| {
        let (params, grants) = redis_params(&r, Some(user), &password_file(&s, &format!("pw-{user}"), pw), extra);
        plugin_config(&s, &plugin, &params, &grants)
    };

    let r1 = check(&s, &cfg("pauser", "pw-pauser", &[]));
    assert_eq!(r1["ok"], true, "{r1}");
    finding(&r1, "passed", "RedisPauseAllowed");
    finding(&r1, "passed", "RedisUnpauseAllowed");
    finding(&r1, "passed", "RedisPersistenceAof");
    finding(&r1, "passed", "RedisIsPrimary");

    let r2 = check(&s, &cfg("nopause", "pw-nopause", &[]));
    assert_eq!(r2["ok"], false);
    assert!(finding(&r2, "error", "RedisPauseDenied").contains("ACL SETUSER nopause +client|pause"), "{r2}");

    // The probes paused nothing: every CLIENT PAUSE the server executed
    // failed (the timeout it refuses), and the ACL rejected the other one.
    let stats = c.info("commandstats").unwrap();
    let line = stats.lines().find(|l| l.starts_with("cmdstat_client|pause:")).unwrap_or_else(|| panic!("{stats}"));
    let field = |name: &str| -> u64 {
        line.split([':', ',']).find_map(|kv| kv.strip_prefix(&format!("{name}="))).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    assert!(field("calls") >= 1 && field("failed_calls") == field("calls"), "a CLIENT PAUSE succeeded: {line}");
    assert!(field("rejected_calls") >= 1, "{line}");

    // The least-privilege user passes (UNPAUSE cannot be asked of the ACL
    // without the acl permission: a note, not a problem) and runs a session.
    let config = cfg("qb", "pw-qb", &[]);
    let rq = check(&s, &config);
    assert_eq!(rq["ok"], true, "{rq}");
    finding(&rq, "passed", "RedisPauseAllowed");
    finding(&rq, "info", "RedisUnpauseUnverified");
    let run = session(&s, &config);
    assert_eq!((run.consistency(), run.code()), ("AppConsistent", 0), "the least-privilege user runs the session: {}", run.report);

    // RDB only: said, with what it costs; `persist = "aof"` then cannot work.
    c.cmd(&["CONFIG", "SET", "appendonly", "no"]).unwrap();
    let r3 = check(&s, &cfg("pauser", "pw-pauser", &[]));
    let rdb = finding(&r3, "info", "RedisPersistenceRdb");
    assert!(rdb.contains("BGSAVE without pausing writers") && rdb.contains("as of the save's fork"), "{r3}");
    let r4 = check(&s, &cfg("pauser", "pw-pauser", &[("persist", "aof")]));
    assert!(finding(&r4, "error", "RedisAofOff").contains("appendonly yes"), "{r4}");

    let r5 = check(&s, &cfg("pauser", "wrong", &[]));
    assert_eq!(errors(&r5), vec!["RedisLoginFailed".to_string()], "{r5}");

    // A replica: pausing it quiesces nothing (its primary takes the writes).
    let s2 = Scratch::new("wit-rd-replica");
    let replica = Redis::start(&s2.path, true);
    replica.connect().cmd(&["REPLICAOF", "127.0.0.1", &r.port.to_string()]).unwrap();
    let (params, grants) = redis_params(&replica, None, &replica.password_file.display().to_string(), &[]);
    let r6 = check(&s2, &plugin_config(&s2, &install_plugin(&s2, "quiesce_redis"), &params, &grants));
    assert!(finding(&r6, "error", "RedisIsReplica").contains("point `target` at the primary"), "{r6}");
}

/// The pause expires by itself after `pause_ms`; the snapshot command sleeps
/// past it. Post knows (its own clock) and says the quiesce did not hold:
/// the snapshot may hold writes made after the pause, so the report's label
/// comes down and the exit status says so.
#[test]
fn redis_pause_that_expires_before_the_snapshot_ends_lowers_the_label_to_file_system_consistent() {
    quiesce_tests::require!(Root, Postgres, Mariadb, Redis, Plugins);
    let m = MountedScratch::new("wit-rd-expire");
    let r = Redis::start(&m.s.path, true);
    let (params, grants) = redis_params(&r, None, &r.password_file.display().to_string(), &[("pause_ms", "200")]);
    let params: Vec<String> = params.iter().map(|(k, v)| format!("{k} = {v:?}")).collect();
    let grants: Vec<String> = grants.iter().map(|g| format!("{g:?}")).collect();
    let config = m.s.config(
        "quiesce.toml",
        &format!(
            "[[hook]]\nname = \"db\"\nplugin = \"{}\"\nparams = {{ {} }}\ngrants = [{}]\n",
            install_plugin(&m.s, "quiesce_redis").display(),
            params.join(", "),
            grants.join(", ")
        ),
    );
    let run = run_json(quiesce_snapshot(&m.s, &config, m.mnt.path(), "sleep 1"));
    assert_eq!(run.report["snapshot_taken"], true, "{}", run.report);
    assert_eq!(run.consistency(), "FileSystemConsistent", "{}", run.report);
    assert_eq!(run.code(), 3);
    assert!(run.has_error("QuiesceNotHeld"), "{}", run.report);
    let msg = run.report["errors"].as_array().unwrap().iter().find(|e| e["code"] == "QuiesceNotHeld").unwrap()["message"].to_string();
    assert!(msg.contains("200 ms write pause expired") && msg.contains("raise pause_ms"), "{msg}");

    // With a pause that lasts, the same session is AppConsistent.
    let config = fs::read_to_string(&config).unwrap().replace("pause_ms = \"200\"", "pause_ms = \"30000\"");
    let config = m.s.config("quiesce.toml", &config);
    let run = run_json(quiesce_snapshot(&m.s, &config, m.mnt.path(), "sleep 1"));
    assert_eq!((run.consistency(), run.code()), ("AppConsistent", 0), "{}", run.report);
}
