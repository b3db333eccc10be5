//! Proof by restore for the first-party database plugins (issue 5):
//! `plugins/db/{postgres,mariadb,redis}` run by `quiesce snapshot` as WASM
//! hooks (native config, `--mount` the inner disk, the snapshot a reflink
//! clone of the disk image) under a writer committing numbered rows; the
//! clone restored — with the artifacts the plugin handed over where the
//! database needs them — and judged against the writer's acknowledgements.
//! The same checks as `db_restore.rs` (legacy script pairs, freeze only, no
//! freeze), so the `[restore]` lines of both compare directly.
//!
//! Then what happens when a plugin holding its lock misbehaves (times out,
//! traps) or the host is SIGKILLed while frozen: the database accepts writes
//! again within the deadline. The faults are injected through the plugins'
//! documented, off-by-default `fault` param.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use quiesce_tests::db::*;
use quiesce_tests::judge::*;
use quiesce_tests::restore::*;
use quiesce_tests::*;

/// `name=value` lines of an artifact.
fn kv(text: &str) -> BTreeMap<String, String> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect()
}

/// The plugin's `quiesce_times` artifact: server-clock ns per event.
fn times(run: &Run) -> BTreeMap<String, u64> {
    run.times("db").unwrap_or_else(|| panic!("no quiesce_times artifact: {}", run.report["artifacts"]))
}

fn pg_tcp(pg: &Postgres, extra: &[(&'static str, &str)]) -> (Vec<(&'static str, String)>, Vec<String>) {
    let target = format!("tcp:127.0.0.1:{}", pg.port);
    let pw = pg.password_file.display().to_string();
    let mut params = vec![("target", target.clone()), ("password_file", pw.clone())];
    params.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    (params, vec![target, format!("file:{pw}")])
}

fn pg_unix(pg: &Postgres, extra: &[(&'static str, &str)]) -> (Vec<(&'static str, String)>, Vec<String>) {
    let target = format!("unix:{}/.s.PGSQL.{}", pg.socket_dir.display(), pg.port);
    let pw = pg.password_file.display().to_string();
    let mut params = vec![("target", target.clone()), ("password_file", pw.clone())];
    params.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    (params, vec![target, format!("file:{pw}")])
}

/// root over the Unix socket: `unix_socket` authentication, no password anywhere.
fn my_unix(my: &MariaDb, extra: &[(&'static str, &str)]) -> (Vec<(&'static str, String)>, Vec<String>) {
    let target = format!("unix:{}", my.socket.display());
    let mut params = vec![("target", target.clone())];
    params.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    (params, vec![target])
}

fn redis_tcp(r: &Redis, extra: &[(&'static str, &str)]) -> (Vec<(&'static str, String)>, Vec<String>) {
    let target = format!("tcp:127.0.0.1:{}", r.port);
    let pw = r.password_file.display().to_string();
    let mut params = vec![("target", target.clone()), ("password_file", pw.clone())];
    params.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    (params, vec![target, format!("file:{pw}")])
}

fn config(st: &Stage, plugin: &str, (params, grants): (Vec<(&'static str, String)>, Vec<String>), extra: &str) -> PathBuf {
    st.plugin_config(plugin, &params, &grants, extra)
}

// ---------------------------------------------------------------- PostgreSQL

/// `mode = "backup"`: the label from the artifacts alone cannot restore; with
/// the WAL archive the restore goes through the backup-label path and holds
/// the state as of `pg_backup_stop`.
#[test]
fn postgres_plugin_backup_mode_restores_through_backup_label_and_wal_archive() {
    require!(Root, Postgres, Plugins);
    let mut st = Stage::new("pgp-backup");
    let pg = Postgres::start_with(st.rig.inner(), PgOptions { archive: true, ..Default::default() });
    let config = config(&st, "quiesce_postgres", pg_tcp(&pg, &[("mode", "backup")]), "");
    let ((run, t), log) = under_load(Writer::postgres(&pg), || st.snapshot(&config));
    assert_eq!(run.consistency(), "AppConsistent", "{}", run.report);
    let files = PgBackupFiles {
        labelfile: run.artifact_text("db", "backup_label"),
        spcmapfile: run.artifact("db", "tablespace_map").map(|p| fs::read_to_string(p).unwrap()).unwrap_or_default(),
    };
    assert!(files.labelfile.starts_with("START WAL LOCATION:"), "{}", files.labelfile);
    assert!(files.labelfile.contains(&format!("LABEL: quiesce {}", run.report["session_id"].as_str().unwrap())), "{}", files.labelfile);
    let stop_lsn = pgwire::Lsn::parse(&run.artifact_text("db", "stop_lsn")).expect("stop_lsn artifact");
    let tm = times(&run);
    let (called, returned) = (tm["stop_called"], tm["stop_returned"]);
    assert!(tm["backup_started"] < t.start_ns && t.end_ns < called, "backup held around the snapshot: {tm:?} {t:?}");

    // The label alone is not enough (BACKUP METHOD: streamed).
    {
        let copy = st.rig.mount_copy("no-archive");
        let e = start_restored_postgres(&copy.mountpoint.join("pg/data"), &pg, Some(&files), false)
            .err()
            .expect("must not start without the archive");
        assert!(e.contains("WAL ends before end of online backup"), "{e}");
    }
    let restored = restore_postgres(&mut st.rig, &pg, Some(&files)).expect("restore with backup_label + archive");
    assert_backup_label_path(&restored);
    let k = gapless_prefix(&restored.rows()).unwrap();
    let before = log.last_acked_before(called);
    assert!(k >= before, "restored 1..{k}, but {before} was acknowledged before pg_backup_stop was called");
    let limit = log.first_acked_after(returned).unwrap_or(log.last() + 1);
    assert!(k <= limit, "restored 1..{k}: more than was sent before pg_backup_stop returned ({limit})");
    let consistent_at = restored.log_text().lines().find_map(|l| {
        l.split("consistent recovery state reached at ").nth(1).and_then(|s| pgwire::Lsn::parse(s.split_whitespace().next()?))
    });
    let consistent_at = consistent_at.expect("no 'consistent recovery state reached at' in the restored log");
    // Recovery becomes consistent exactly at the end-of-backup record, whose end pg_backup_stop returned.
    assert_eq!(consistent_at, stop_lsn, "recovery consistent at {consistent_at}, the plugin recorded stop LSN {stop_lsn}");
    report(
        "postgres",
        "wasm plugin, mode backup",
        &run,
        k,
        &log,
        t,
        &format!(
            "consistent at pg_backup_stop (stop LSN {stop_lsn}, recovery consistent at {consistent_at}): {} rows committed after the snapshot ended came back from the WAL archive",
            k.saturating_sub(log.last_acked_before(t.end_ns))
        ),
    );
}

/// `mode = "checkpoint"` (the default), over the Unix socket: crash recovery
/// of the snapshot, starting from the plugin's checkpoint.
#[test]
fn postgres_plugin_checkpoint_mode_restores_by_crash_recovery_from_its_checkpoint() {
    require!(Root, Postgres, Plugins);
    let mut st = Stage::new("pgp-checkpoint");
    let pg = Postgres::start(st.rig.inner());
    let config = config(&st, "quiesce_postgres", pg_unix(&pg, &[]), "");
    let ((run, t), log) = under_load(Writer::postgres(&pg), || st.snapshot(&config));
    assert_eq!(run.consistency(), "AppConsistent", "{}", run.report);
    let redo = pgwire::Lsn::parse(&run.artifact_text("db", "checkpoint_redo_lsn")).expect("redo lsn artifact");
    let restored = restore_postgres(&mut st.rig, &pg, None).expect("crash recovery");
    let k = gapless_prefix(&restored.rows()).unwrap();
    assert_durable_point_in_time(k, &log, t);
    assert_writers_stalled_while_frozen(&log, t);
    let (started, done) = redo_range(&restored);
    let started = started.unwrap_or_else(|| panic!("no 'redo starts at':\n{}", restored.log_text()));
    assert!(started >= redo, "recovery started at {started}, before the plugin's checkpoint (redo {redo})");
    report(
        "postgres",
        "wasm plugin, mode checkpoint",
        &run,
        k,
        &log,
        t,
        &format!("WAL replayed {:?} bytes (checkpoint redo {redo})", done.map(|d| d.0 - started.0)),
    );
}

// ------------------------------------------------------------------- MariaDB

fn mariadb_plugin_restore(method: &str) {
    let mut st = Stage::new(&format!("myp-{method}"));
    let my = MariaDb::start(st.rig.inner());
    let gtid0 = gtid_seq(&my.connect_root().gtid_binlog_pos().unwrap().unwrap());
    let config = config(&st, "quiesce_mariadb", my_unix(&my, &[("method", method)]), "");
    let ((run, t), log) = under_load(Writer::mariadb(&my), || st.snapshot(&config));
    assert_eq!(run.consistency(), "AppConsistent", "{}", run.report);
    let pos = kv(&run.artifact_text("db", "binlog_position"));
    let (bin_file, bin_pos): (&str, u64) = (&pos["file"], pos["position"].parse().unwrap());
    let recorded_gtid = pos["gtid_binlog_pos"].clone();
    let tm = times(&run);
    assert!(tm["locked"] < t.start_ns && t.end_ns < tm["releasing"], "lock held around the snapshot: {tm:?} {t:?}");

    let restored = restore_mariadb(&mut st.rig, &my);
    let k = gapless_prefix(&restored.rows()).unwrap();
    assert_lock_point(k, &log, tm["locked"], tm["releasing"]);
    assert_eq!(restored_gtid(&restored), recorded_gtid, "restored binlog GTID state vs the one recorded under the lock");
    assert_eq!(gtid_seq(&recorded_gtid) - gtid0, k, "one GTID per writer commit: the recorded position names the restored row count");
    assert_eq!(
        fs::metadata(restored.data_dir.join(bin_file)).unwrap().len(),
        bin_pos,
        "{bin_file} ends where SHOW MASTER STATUS said under the lock"
    );
    let held_ms = (tm["releasing"] - tm["locked"]) as f64 / 1e6;
    report(
        "mariadb",
        &format!("wasm plugin, method {method}"),
        &run,
        k,
        &log,
        t,
        &format!("binlog {bin_file}:{bin_pos} gtid {recorded_gtid} = restored; lock held {held_ms:.1} ms"),
    );
}

#[test]
fn mariadb_plugin_backup_stage_restores_exactly_the_locked_state_and_binlog_position() {
    require!(Root, Mariadb, Plugins);
    mariadb_plugin_restore("backup-stage");
}

#[test]
fn mariadb_plugin_ftwrl_restores_exactly_the_locked_state_and_binlog_position() {
    require!(Root, Mariadb, Plugins);
    mariadb_plugin_restore("ftwrl");
}

// --------------------------------------------------------------------- Redis

/// AOF: writers paused from pre to post; the restore holds exactly the paused state.
#[test]
fn redis_plugin_aof_restores_exactly_the_paused_state() {
    require!(Root, Redis, Plugins);
    let mut st = Stage::new("rdp-aof");
    let r = Redis::start(st.rig.inner(), true);
    let config = config(&st, "quiesce_redis", redis_tcp(&r, &[]), "");
    let ((run, t), log) = under_load(Writer::redis(&r), || st.snapshot(&config));
    assert_eq!(run.consistency(), "AppConsistent", "{}", run.report);
    let persisted = run.artifact_text("db", "persistence");
    assert!(persisted.starts_with("aof:"), "{persisted}");
    let tm = times(&run);
    assert!(tm["paused"] < t.start_ns && t.end_ns < tm["unpausing"], "paused around the snapshot: {tm:?} {t:?}");
    let restored = restore_redis(&mut st.rig, &r);
    let k = gapless_prefix(&restored.rows()).unwrap();
    assert_lock_point(k, &log, tm["paused"], tm["unpausing"]);
    let missing = log.last_acked_before(t.start_ns).saturating_sub(k);
    report(
        "redis",
        "AOF everysec, wasm plugin",
        &run,
        k,
        &log,
        t,
        &format!("{missing} writes acknowledged before the freeze missing; paused {:.1} ms", (tm["unpausing"] - tm["paused"]) as f64 / 1e6),
    );
}

/// RDB only: pre's BGSAVE, writers never paused; the restore holds exactly
/// the data set at the save's fork — every write acknowledged before
/// `fork_after`, none sent after `fork_before` — and the save was on disk
/// before the freeze.
fn redis_plugin_rdb_restore(st: &mut Stage, r: &Redis) {
    let config = config(st, "quiesce_redis", redis_tcp(r, &[]), "");
    let ((run, t), log) = under_load(Writer::redis(r), || st.snapshot(&config));
    assert_eq!(run.consistency(), "AppConsistent", "{}", run.report);
    let persisted = run.artifact_text("db", "persistence");
    assert!(persisted.starts_with("rdb: BGSAVE done"), "{persisted}");
    let tm = times(&run);
    let (after, before) = (tm["fork_after"], tm["fork_before"]);
    assert!(after <= before && before < t.start_ns, "forked before the snapshot: {tm:?} {t:?}");
    assert!(!tm.contains_key("paused"), "RDB only must not pause: {tm:?}");
    let restored = restore_redis(&mut st.rig, r);
    let k = gapless_prefix(&restored.rows()).unwrap();
    let acked = log.last_acked_before(after);
    assert!(k >= acked, "restored 1..{k}, but {acked} was acknowledged before the fork");
    // One writer, one write at a time: the write after the first one
    // acknowledged after `fork_before` was sent after the fork.
    if let Some(first_after) = log.first_acked_after(before) {
        assert!(
            k <= first_after,
            "restored 1..{k}: {} was sent only after the fork ({first_after} acknowledged after it)",
            first_after + 1
        );
    }
    let not_in = log.last_acked_before(t.start_ns).saturating_sub(k);
    report(
        "redis",
        "RDB, wasm plugin",
        &run,
        k,
        &log,
        t,
        &format!(
            "writers not paused; fork bracketed within {:.2} ms; {not_in} writes acknowledged after the fork, before the freeze, not in the snapshot (RDB as of the fork)",
            (before - after) as f64 / 1e6
        ),
    );
}

#[test]
fn redis_plugin_rdb_restores_exactly_the_state_at_its_bgsave_fork_without_pausing_writers() {
    require!(Root, Redis, Plugins);
    let mut st = Stage::new("rdp-rdb");
    let r = Redis::start(st.rig.inner(), false);
    redis_plugin_rdb_restore(&mut st, &r);
}

/// A save already running when pre asks (an automatic `save` rule, another
/// client's BGSAVE) forked earlier: its RDB misses the writes since. Pre
/// waits it out and forks its own; the restore holds the state at pre's fork.
#[test]
fn redis_plugin_rdb_waits_out_a_save_already_running_and_restores_its_own() {
    require!(Root, Redis, Plugins);
    let mut st = Stage::new("rdp-rdb-busy");
    let r = Redis::start(st.rig.inner(), false);
    let mut c = r.connect();
    // 2 000 filler keys at 1 ms each: a save that runs for about 2 s (the
    // delay is the forked child's; pre's own save runs at full speed).
    for i in 0..2000 {
        c.cmd(&["SET", &format!("filler:{i}"), "x"]).unwrap();
    }
    c.cmd(&["CONFIG", "SET", "rdb-key-save-delay", "1000"]).unwrap();
    c.cmd(&["BGSAVE"]).unwrap();
    c.cmd(&["CONFIG", "SET", "rdb-key-save-delay", "0"]).unwrap();
    assert!(c.persistence().unwrap().rdb_bgsave_in_progress, "the earlier save is running when pre starts");
    redis_plugin_rdb_restore(&mut st, &r);
}

// ------------------------------------------------------------ clear errors

/// The pre hook's report entry and the first error message.
fn pre_failure(run: &Run) -> (u64, String) {
    let h = run.hook("db", "pre");
    assert_eq!(h["outcome"], "failed", "{}", run.report);
    (h["attempts"].as_u64().unwrap(), h["message"].as_str().unwrap_or("").to_string())
}

/// `chattr +i` on a directory for the guard's life (root cannot create files
/// in it either); `-i` on drop, also when the test fails.
struct Immutable(PathBuf);

impl Immutable {
    fn new(dir: PathBuf) -> Immutable {
        let ok = std::process::Command::new("chattr").arg("+i").arg(&dir).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "chattr +i {}", dir.display());
        Immutable(dir)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// RDB only, the save fails (its directory refuses the temp file): pre
/// fails, fatally, naming the failed save; the snapshot goes on without the
/// application (file-system-consistent), and nothing was paused.
#[test]
fn redis_plugin_rdb_save_that_fails_fails_pre_and_the_label_says_so() {
    require!(Root, Redis, Plugins);
    let st = Stage::new("rdp-rdb-fail");
    let r = Redis::start(st.rig.inner(), false);
    let cfg = config(&st, "quiesce_redis", redis_tcp(&r, &[]), "retries = 1\nretry_delay_ms = 100");
    let run = {
        let _frozen_dir = Immutable::new(st.rig.inner().join("redis"));
        run_json(st.session(&cfg, "true", 30))
    };
    let (attempts, msg) = pre_failure(&run);
    assert_eq!(attempts, 1, "a failed save is fatal: {msg}");
    assert!(msg.contains("background save failed"), "{msg}");
    assert_eq!(run.consistency(), "FileSystemConsistent", "{}", run.report);
    assert!(!r.connect().persistence().unwrap().rdb_last_bgsave_ok);
    println!("[errors] redis RDB save failed: {msg}");
    // Writable again: the next session saves and is app-consistent.
    let run = run_json(st.session(&cfg, "true", 30));
    assert_eq!(run.consistency(), "AppConsistent", "{}", run.report);
}

/// Server down → retryable (retried); auth refused, replica → fatal (not retried).
#[test]
fn plugins_fail_clearly_on_server_down_auth_refused_and_replica() {
    require!(Root, Postgres, Mariadb, Redis, Plugins);
    let st = Stage::new("dbp-errors");
    let retries = "retries = 1\nretry_delay_ms = 100";
    let down = format!("tcp:127.0.0.1:{}", free_port());

    // Server down: retried, then failed; the snapshot goes on without the app.
    for plugin in ["quiesce_postgres", "quiesce_mariadb", "quiesce_redis"] {
        let cfg = st.plugin_config(plugin, &[("target", down.clone())], std::slice::from_ref(&down), retries);
        let run = run_json(st.session(&cfg, "true", 30));
        let (attempts, msg) = pre_failure(&run);
        assert_eq!(attempts, 2, "{plugin}: server down is retryable: {msg}");
        assert!(msg.contains("not reachable"), "{plugin}: {msg}");
        assert_eq!(run.consistency(), "FileSystemConsistent", "{plugin}");
        println!("[errors] {plugin} server down: {msg}");
    }

    let bad_pw = st.file("wrong-password");
    fs::write(&bad_pw, "not-the-password\n").unwrap();
    let pg = Postgres::start(st.rig.inner());
    let (mut params, mut grants) = pg_tcp(&pg, &[]);
    params[1].1 = bad_pw.display().to_string();
    grants[1] = format!("file:{}", bad_pw.display());
    let run = run_json(st.session(&st.plugin_config("quiesce_postgres", &params, &grants, retries), "true", 30));
    let (attempts, msg) = pre_failure(&run);
    assert_eq!(attempts, 1, "auth refused is fatal: {msg}");
    assert!(msg.contains("authentication refused") && msg.contains("28P01"), "{msg}");
    println!("[errors] postgres auth refused: {msg}");
    drop(pg);

    let r = Redis::start(st.rig.inner(), false);
    let (mut params, mut grants) = redis_tcp(&r, &[]);
    params[1].1 = bad_pw.display().to_string();
    grants[1] = format!("file:{}", bad_pw.display());
    let run = run_json(st.session(&st.plugin_config("quiesce_redis", &params, &grants, retries), "true", 30));
    let (attempts, msg) = pre_failure(&run);
    assert_eq!(attempts, 1, "auth refused is fatal: {msg}");
    assert!(msg.contains("WRONGPASS") && msg.contains("authentication refused"), "{msg}");
    println!("[errors] redis auth refused: {msg}");
    // A replica (of a primary that is not even there) is refused, not paused.
    r.connect().cmd(&["REPLICAOF", "127.0.0.1", &free_port().to_string()]).unwrap();
    let run = run_json(st.session(&config(&st, "quiesce_redis", redis_tcp(&r, &[]), retries), "true", 30));
    let (attempts, msg) = pre_failure(&run);
    assert_eq!(attempts, 1, "a replica is fatal: {msg}");
    assert!(msg.contains("replica"), "{msg}");
    println!("[errors] redis replica: {msg}");
    drop(r);

    let my = MariaDb::start(st.rig.inner());
    // `app` may not lock: a clear access error, not retried.
    let app_pw = st.file("app-password");
    fs::write(&app_pw, format!("{}\n", my.app_password)).unwrap();
    let tcp = format!("tcp:127.0.0.1:{}", my.port);
    let params = [("target", tcp.clone()), ("user", "app".to_string()), ("password_file", app_pw.display().to_string())];
    let run = run_json(st.session(
        &st.plugin_config("quiesce_mariadb", &params, &[tcp.clone(), format!("file:{}", app_pw.display())], retries),
        "true",
        30,
    ));
    let (attempts, msg) = pre_failure(&run);
    assert_eq!(attempts, 1, "{msg}");
    println!("[errors] mariadb app without RELOAD: {msg}");
    let params = [("target", tcp.clone()), ("user", "app".to_string()), ("password_file", bad_pw.display().to_string())];
    let run = run_json(st.session(
        &st.plugin_config("quiesce_mariadb", &params, &[tcp.clone(), format!("file:{}", bad_pw.display())], retries),
        "true",
        30,
    ));
    let (attempts, msg) = pre_failure(&run);
    assert_eq!(attempts, 1, "{msg}");
    assert!(msg.contains("1045") && msg.contains("access refused"), "{msg}");
    println!("[errors] mariadb auth refused: {msg}");
    // A long-running query: retryable, and no lock is taken meanwhile.
    let sock = my.socket.clone();
    let sleeper = std::thread::spawn(move || {
        let s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        let mut c = mywire::Client::connect(s, &mywire::Config::new("root")).unwrap();
        let _ = c.query("SELECT SLEEP(4)");
    });
    std::thread::sleep(Duration::from_millis(1500));
    let run = run_json(st.session(&config(&st, "quiesce_mariadb", my_unix(&my, &[]), retries), "true", 30));
    let (attempts, msg) = pre_failure(&run);
    assert_eq!(attempts, 2, "long queries are retryable: {msg}");
    assert!(msg.contains("running for 1 s or more") && msg.contains("SLEEP(4)"), "{msg}");
    println!("[errors] mariadb long query: {msg}");
    sleeper.join().unwrap();
    // A replica is refused.
    my.connect_root().query(&format!("CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='x'", free_port())).unwrap();
    let run = run_json(st.session(&config(&st, "quiesce_mariadb", my_unix(&my, &[]), retries), "true", 30));
    let (attempts, msg) = pre_failure(&run);
    assert_eq!(attempts, 1, "{msg}");
    assert!(msg.contains("is a replica"), "{msg}");
    println!("[errors] mariadb replica: {msg}");
}

// ------------------------------------------------------------------ faults

/// What a fault run saw: when the session ran, and when the host was killed (if it was).
struct FaultRun {
    what: &'static str,
    from_ns: u64,
    to_ns: u64,
}

/// Runs the three faults against one server under one writer:
/// - `hang-after-lock` with `timeout_secs = 2`: the host kills the call at
///   its deadline, drops the instance and with it the connection;
/// - `trap-after-lock`: the instance dies at once;
/// - the host SIGKILLed while frozen (snapshot command sleeping), the plugin
///   holding its lock: the kernel closes the connection; the guardian thaws
///   after `--max-freeze 3`.
///
/// `held` checks, while the hang is in progress, that the plugin really holds
/// its lock (so the recovery afterwards proves something).
/// `settle`: the pause between runs, so one fault's stall ends before the
/// next run starts (a Redis pause outlives the plugin by up to `pause_ms`).
/// Returns the writer's log and the three runs.
fn fault_suite(
    st: &Stage,
    writer: Writer,
    plugin: &str,
    conn: (Vec<(&'static str, String)>, Vec<String>),
    held: &dyn Fn() -> bool,
    settle: Duration,
) -> (WriterLog, Vec<FaultRun>) {
    let mut writer = writer;
    writer.wait_for(300, Duration::from_secs(60));
    let mut runs = Vec::new();
    let with_fault = |f: &str| {
        let (mut p, g) = conn.clone();
        p.push(("fault", f.to_string()));
        (p, g)
    };

    // 1. Timeout while holding the lock.
    let cfg = config(st, plugin, with_fault("hang-after-lock"), "timeout_secs = 2");
    let cmd = st.session(&cfg, "true", 30);
    let from_ns = now_ns();
    let session = std::thread::spawn(move || run_json(cmd));
    // Until the session ends: plugin loading (a first compile) may take a while on a busy machine.
    let mut saw_held = false;
    while !session.is_finished() && !saw_held {
        saw_held = held();
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = session.join().unwrap();
    let to_ns = now_ns();
    assert!(saw_held, "{plugin}: the lock was never seen held during the hang");
    assert_eq!(run.hook("db", "pre")["outcome"], "timed_out", "{}", run.report);
    assert!(run.has_error("PluginTimeout"), "{:?}", run.error_codes());
    assert_eq!(run.hook("db", "post")["outcome"], "skipped");
    runs.push(FaultRun { what: "timeout (2 s) holding the lock", from_ns, to_ns });
    std::thread::sleep(settle);

    // 2. Trap while holding the lock.
    let cfg = config(st, plugin, with_fault("trap-after-lock"), "timeout_secs = 10");
    let from_ns = now_ns();
    let run = run_json(st.session(&cfg, "true", 30));
    let to_ns = now_ns();
    assert!(run.has_error("PluginTrapped"), "{:?}\n{}", run.error_codes(), run.report);
    assert_eq!(run.hook("db", "post")["outcome"], "skipped");
    runs.push(FaultRun { what: "trap holding the lock", from_ns, to_ns });
    std::thread::sleep(settle);

    // 3. Host SIGKILLed while frozen, the plugin holding its lock.
    let cfg = config(st, plugin, conn.clone(), "timeout_secs = 10");
    let (pidfile, marker) = (st.file("sleeper.pid"), st.file("snapping"));
    let _ = fs::remove_file(&marker);
    let snap = format!("echo $$ > {}; touch {}; exec sleep 60", pidfile.display(), marker.display());
    let mut child = st.session(&cfg, &snap, 3).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t = Instant::now();
    while !marker.exists() {
        assert!(t.elapsed() < Duration::from_secs(30), "{plugin}: session never reached the snapshot");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(is_frozen(st.rig.inner()), "frozen during the snapshot");
    let kill_ns = now_ns();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    let _ = child.wait();
    if let Ok(pid) = fs::read_to_string(&pidfile).unwrap_or_default().trim().parse::<i32>() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    assert!(writable_within(st.rig.inner(), Duration::from_secs(6)).is_some(), "still frozen 6 s after the host was killed");
    runs.push(FaultRun { what: "host SIGKILLed while frozen (max-freeze 3 s)", from_ns: kill_ns, to_ns: now_ns() });
    std::thread::sleep(Duration::from_millis(800));
    let log = writer.stop();
    assert!(log.error.is_none(), "writer failed: {:?}", log.error);
    (log, runs)
}

/// The longest the writer went without an ack overlapping `r`, and whether it acked after it.
fn judge_fault(db: &str, log: &WriterLog, r: &FaultRun, limit: Duration) -> Duration {
    let gap = log.max_gap_between(r.from_ns, r.to_ns);
    let resumed = log.first_acked_after(r.to_ns).is_some();
    println!(
        "[fault] {db} {}: writers stalled at most {:.0} ms (limit {:.0} ms); writing again afterwards: {resumed}",
        r.what,
        gap.as_secs_f64() * 1e3,
        limit.as_secs_f64() * 1e3
    );
    assert!(resumed, "{db} {}: no write acknowledged afterwards", r.what);
    assert!(gap <= limit, "{db} {}: writers stalled {gap:?}, more than {limit:?}", r.what);
    gap
}

/// A direct write through the proto crate, bounded by `limit` (a write blocked on a frozen disk or a lock cannot be interrupted: it is left behind).
fn write_within<F: FnOnce() -> Result<(), String> + Send + 'static>(limit: Duration, f: F) -> Option<Duration> {
    let (tx, rx) = mpsc::channel();
    let t = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(())) => Some(t.elapsed()),
        _ => None,
    }
}

#[test]
fn mariadb_plugin_lock_is_released_when_the_plugin_times_out_traps_or_the_host_is_killed() {
    require!(Root, Mariadb, Plugins);
    let st = Stage::new("myp-faults");
    let my = MariaDb::start(st.rig.inner());
    my.connect_root().query("CREATE TABLE q.probe (n int) ENGINE=InnoDB").unwrap();
    let port = my.port;
    let (user, pw) = (my.app_user.clone(), my.app_password.clone());
    my.connect_root().query("GRANT INSERT ON q.probe TO app@'127.0.0.1'").unwrap();
    // A direct write through the proto crate, as the application would.
    let probe = move |limit: Duration| {
        let (user, pw) = (user.clone(), pw.clone());
        write_within(limit, move || {
            let s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
            let mut c = mywire::Client::connect(s, &mywire::Config::new(&user).password(&pw).database("q")).map_err(|e| e.to_string())?;
            c.query("INSERT INTO probe VALUES (1)").map(|_| ()).map_err(|e| e.to_string())
        })
    };
    let p2 = probe.clone();
    let held = move || p2(Duration::from_millis(300)).is_none();
    let (log, runs) = fault_suite(&st, Writer::mariadb(&my), "quiesce_mariadb", my_unix(&my, &[]), &held, Duration::from_millis(300));
    let hang = judge_fault("mariadb", &log, &runs[0], Duration::from_millis(3500));
    assert!(hang >= Duration::from_millis(1500), "the hung plugin's lock stalled writers only {hang:?}: was it held?");
    judge_fault("mariadb", &log, &runs[1], Duration::from_millis(1500));
    judge_fault("mariadb", &log, &runs[2], Duration::from_millis(4500));
    let took = probe(Duration::from_secs(2));
    assert!(took.is_some(), "a direct write did not succeed within 2 s after the faults");
    println!("[fault] mariadb: a direct INSERT after the faults took {took:?}");
    assert!(!held(), "writes still blocked after the faults");
}

#[test]
fn postgres_plugin_backup_ends_when_the_plugin_times_out_traps_or_the_host_is_killed() {
    require!(Root, Postgres, Plugins);
    let st = Stage::new("pgp-faults");
    let pg = Postgres::start_with(st.rig.inner(), PgOptions { archive: true, ..Default::default() });
    let (port, cfg) = (pg.port, pg.config());
    // pg_backup_start does not block writers; what must end is the backup
    // session: the plugin's connection (application_name `quiesce`).
    let sessions = move || -> u64 {
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut c = pgwire::Client::connect(s, &cfg).unwrap();
        c.query_value("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'quiesce'").unwrap().unwrap().parse().unwrap()
    };
    let s2 = sessions.clone();
    let (log, runs) = fault_suite(
        &st,
        Writer::postgres(&pg),
        "quiesce_postgres",
        pg_tcp(&pg, &[("mode", "backup")]),
        &move || s2() > 0,
        Duration::from_millis(300),
    );
    judge_fault("postgres", &log, &runs[0], Duration::from_millis(1500));
    judge_fault("postgres", &log, &runs[1], Duration::from_millis(1500));
    judge_fault("postgres", &log, &runs[2], Duration::from_millis(4500));
    assert_eq!(sessions(), 0, "the plugin's backup session outlived the faults");
    // And a new backup can start and stop at once: nothing is left half-done.
    let mut c = pg.connect();
    c.backup_start("after faults", true).unwrap();
    c.backup_stop(false).unwrap();
}

#[test]
fn redis_plugin_pause_ends_when_the_plugin_times_out_traps_or_the_host_is_killed() {
    require!(Root, Redis, Plugins);
    let st = Stage::new("rdp-faults");
    let r = Redis::start(st.rig.inner(), true);
    // The pause outlives the plugin (it is not tied to the connection): it
    // must end by itself, after pause_ms.
    let (port, pw) = (r.port, r.password.clone());
    let held = move || {
        let (port, pw) = (port, pw.clone());
        write_within(Duration::from_millis(200), move || {
            let s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
            let mut c = resp::Client::new(s);
            c.auth(&pw).map_err(|e| e.to_string())?;
            c.cmd(&["SET", "probe", "1"]).map(|_| ()).map_err(|e| e.to_string())
        })
        .is_none()
    };
    let (log, runs) =
        fault_suite(&st, Writer::redis(&r), "quiesce_redis", redis_tcp(&r, &[("pause_ms", "3000")]), &held, Duration::from_millis(3500));
    let hang = judge_fault("redis", &log, &runs[0], Duration::from_millis(4000));
    assert!(hang >= Duration::from_millis(1500), "the hung plugin's pause stalled writers only {hang:?}");
    // A trap leaves the pause in place until it expires (3 s): the bound is pause_ms.
    judge_fault("redis", &log, &runs[1], Duration::from_millis(4000));
    judge_fault("redis", &log, &runs[2], Duration::from_millis(4500));
    assert!(!held(), "writes still paused after the faults");
}
