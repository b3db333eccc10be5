//! Proof by restore (issue 5): a live database under a writer committing
//! numbered rows, a `quiesce snapshot` of its disk (a reflink clone of the
//! disk image, taken while quiesce has the data mount frozen), the clone
//! restored and started as a second server, and its rows judged against
//! what the writer had been told was committed.
//!
//! Per database, three ways of taking the snapshot:
//! - the legacy shell-script pair admins use today (a background client
//!   holding the lock/backup session, released through a FIFO in post);
//! - freeze only (no hooks);
//! - no freeze at all (crash-consistent).
//!
//! What each asserts is exactly what that method guarantees — see the
//! `assert_*` helpers. The `[restore]` lines printed by each test say what
//! differed (`cargo test -- --nocapture`).

use std::fs;
use std::time::Duration;

use quiesce_tests::db::*;
use quiesce_tests::judge::*;
use quiesce_tests::legacy;
use quiesce_tests::restore::*;

// ---------------------------------------------------------------- PostgreSQL

/// The way admins keep `pg_backup_start` alive today: a background `psql`
/// whose input is a FIFO held open by a sleeping writer; post sends
/// `pg_backup_stop()` down the FIFO and saves `backup_label` outside the snapshot.
#[test]
fn postgres_legacy_fifo_backup_restores_through_backup_label() {
    quiesce_tests::require!(Root, Postgres);
    let mut st = Stage::new("pg-legacy");
    let pg = Postgres::start_with(st.rig.inner(), PgOptions { archive: true, ..Default::default() });
    let d = st.file("hook");
    let config = st.legacy_pair(&legacy::pg_backup_fifo(&pg, &d));
    let ((run, t), log) = under_load(Writer::postgres(&pg), || st.snapshot(&config));
    assert_eq!(run.consistency(), "AppConsistent", "{}", run.report);
    // psql ends each value with a newline of its own.
    let files = legacy::pg_backup_files(&d);
    assert!(files.labelfile.starts_with("START WAL LOCATION:"), "{}", files.labelfile);
    let (stop_called, stop_returned) = (stamp(&st.file("hook/stopping")), stamp(&st.file("hook/stopped")));

    // The label alone is not enough: without the WAL written after the
    // snapshot (up to pg_backup_stop's end-of-backup record) PostgreSQL refuses.
    {
        let copy = st.rig.mount_copy("no-archive");
        let e = start_restored_postgres(&copy.mountpoint.join("pg/data"), &pg, Some(&files), false)
            .err()
            .expect("must not start without the archive");
        assert!(e.contains("WAL ends before end of online backup"), "{e}");
    }
    let restored = restore_postgres(&mut st.rig, &pg, Some(&files)).expect("restore with backup_label");
    assert_backup_label_path(&restored);
    let rows = restored.rows();
    let k = gapless_prefix(&rows).unwrap();
    // The backup is consistent at pg_backup_stop's end-of-backup record, not
    // at the snapshot: recovery must replay (archived) WAL up to it, and with
    // it every commit made before pg_backup_stop was called.
    let before = log.last_acked_before(stop_called);
    assert!(k >= before, "restored 1..{k}, but {before} was acknowledged before pg_backup_stop was called");
    let limit = log.first_acked_after(stop_returned).unwrap_or(log.last() + 1);
    assert!(k <= limit, "restored 1..{k}: more than was sent before pg_backup_stop returned ({limit})");
    report(
        "postgres",
        "legacy FIFO pg_backup_start/stop",
        &run,
        k,
        &log,
        t,
        &format!(
            "consistent at pg_backup_stop: {} rows committed after the snapshot ended came back from the WAL archive",
            k.saturating_sub(log.last_acked_before(t.end_ns))
        ),
    );
}

/// `CHECKPOINT` in pre: the restore is crash recovery, as with freeze only,
/// but it starts from that checkpoint's redo point.
#[test]
fn postgres_checkpoint_script_restores_from_that_checkpoint() {
    quiesce_tests::require!(Root, Postgres);
    let mut st = Stage::new("pg-checkpoint");
    let pg = Postgres::start(st.rig.inner());
    let config = st.legacy_pair(&legacy::pg_checkpoint(&pg, &st.file("hook")));
    let ((run, t), log) = under_load(Writer::postgres(&pg), || st.snapshot(&config));
    assert_eq!(run.consistency(), "AppConsistent", "{}", run.report);
    let redo = pgwire::Lsn::parse(&fs::read_to_string(st.file("hook/redo_lsn")).unwrap()).expect("redo lsn");
    let restored = restore_postgres(&mut st.rig, &pg, None).expect("crash recovery");
    let k = gapless_prefix(&restored.rows()).unwrap();
    assert_durable_point_in_time(k, &log, t);
    assert_writers_stalled_while_frozen(&log, t);
    let (started, done) = redo_range(&restored);
    let started = started.unwrap_or_else(|| panic!("no 'redo starts at' in the restored server's log:\n{}", restored.log_text()));
    assert!(started >= redo, "recovery started at {started}, before the pre script's checkpoint (redo {redo})");
    report(
        "postgres",
        "legacy CHECKPOINT script",
        &run,
        k,
        &log,
        t,
        &format!("WAL replayed {:?} bytes (checkpoint redo {redo})", done.map(|d| d.0 - started.0)),
    );
}

#[test]
fn postgres_freeze_only_restores_by_crash_recovery() {
    quiesce_tests::require!(Root, Postgres);
    let mut st = Stage::new("pg-freeze");
    let pg = Postgres::start(st.rig.inner());
    let config = st.native_config(true);
    let ((run, t), log) = under_load(Writer::postgres(&pg), || st.snapshot(&config));
    let restored = restore_postgres(&mut st.rig, &pg, None).expect("crash recovery of a frozen snapshot");
    let k = gapless_prefix(&restored.rows()).unwrap();
    assert_durable_point_in_time(k, &log, t);
    assert_writers_stalled_while_frozen(&log, t);
    assert!(restored.log_text().contains("database system was interrupted"), "a frozen snapshot of a running server needs crash recovery");
    let (started, done) = redo_range(&restored);
    report("postgres", "freeze only", &run, k, &log, t, &format!("WAL replayed {:?} bytes", started.zip(done).map(|(s, d)| d.0 - s.0)));
}

#[test]
fn postgres_without_freeze_restores_by_crash_recovery() {
    quiesce_tests::require!(Root, Postgres);
    let mut st = Stage::new("pg-crash");
    let pg = Postgres::start(st.rig.inner());
    let config = st.native_config(false);
    let ((run, t), log) = under_load(Writer::postgres(&pg), || st.snapshot(&config));
    assert!(run.report["freeze"]["mounts"].as_array().map(|m| m.is_empty()).unwrap_or(true), "{}", run.report);
    let restored = restore_postgres(&mut st.rig, &pg, None).expect("crash recovery of an unfrozen snapshot");
    let k = gapless_prefix(&restored.rows()).unwrap();
    assert_durable_point_in_time(k, &log, t);
    report("postgres", "no freeze", &run, k, &log, t, "");
}

// ------------------------------------------------------------------- MariaDB

/// The way admins hold `FLUSH TABLES WITH READ LOCK` today: a background
/// `mariadb` client reading from a FIFO; post sends `UNLOCK TABLES` down it.
#[test]
fn mariadb_legacy_fifo_ftwrl_restores_exactly_the_locked_state() {
    quiesce_tests::require!(Root, Mariadb);
    let mut st = Stage::new("my-legacy");
    let my = MariaDb::start(st.rig.inner());
    let gtid0 = gtid_seq(&my.connect_root().gtid_binlog_pos().unwrap().unwrap());
    let d = st.file("hook");
    let config = st.legacy_pair(&legacy::mariadb_ftwrl_fifo(&my, &d));
    let ((run, t), log) = under_load(Writer::mariadb(&my), || st.snapshot(&config));
    assert_eq!(run.consistency(), "AppConsistent", "{}", run.report);
    let out = fs::read_to_string(d.join("out")).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() >= 3, "pre script output: {out}");
    let master: Vec<&str> = lines[0].split('\t').collect();
    let (bin_file, bin_pos): (&str, u64) = (master[0], master[1].parse().unwrap());
    let recorded_gtid = lines[1].trim().to_string();

    let restored = restore_mariadb(&mut st.rig, &my);
    let k = gapless_prefix(&restored.rows()).unwrap();
    assert_lock_point(k, &log, stamp(&st.file("hook/locked")), stamp(&st.file("hook/unlocking")));
    // The binlog position recorded under the lock is exactly the restored data's.
    assert_eq!(restored_gtid(&restored), recorded_gtid, "restored binlog GTID state vs the one recorded under the lock");
    assert_eq!(gtid_seq(&recorded_gtid) - gtid0, k, "one GTID per writer commit: the recorded position must name the restored row count");
    let restored_binlog = restored.data_dir.join(bin_file);
    assert_eq!(fs::metadata(&restored_binlog).unwrap().len(), bin_pos, "{bin_file} ends where SHOW MASTER STATUS said under the lock");
    report("mariadb", "legacy FIFO FTWRL", &run, k, &log, t, &format!("binlog {bin_file}:{bin_pos} gtid {recorded_gtid} = restored"));
}

#[test]
fn mariadb_freeze_only_restores_by_crash_recovery() {
    quiesce_tests::require!(Root, Mariadb);
    let mut st = Stage::new("my-freeze");
    let my = MariaDb::start(st.rig.inner());
    let gtid0 = gtid_seq(&my.connect_root().gtid_binlog_pos().unwrap().unwrap());
    let config = st.native_config(true);
    let ((run, t), log) = under_load(Writer::mariadb(&my), || st.snapshot(&config));
    let restored = restore_mariadb(&mut st.rig, &my);
    let k = gapless_prefix(&restored.rows()).unwrap();
    assert_durable_point_in_time(k, &log, t);
    assert_writers_stalled_while_frozen(&log, t);
    let g = restored_gtid(&restored);
    report(
        "mariadb",
        "freeze only",
        &run,
        k,
        &log,
        t,
        &format!("restored binlog gtid {g} ({} commits; no position was recorded)", gtid_seq(&g) - gtid0),
    );
}

#[test]
fn mariadb_without_freeze_restores_by_crash_recovery() {
    quiesce_tests::require!(Root, Mariadb);
    let mut st = Stage::new("my-crash");
    let my = MariaDb::start(st.rig.inner());
    let gtid0 = gtid_seq(&my.connect_root().gtid_binlog_pos().unwrap().unwrap());
    let config = st.native_config(false);
    let ((run, t), log) = under_load(Writer::mariadb(&my), || st.snapshot(&config));
    let restored = restore_mariadb(&mut st.rig, &my);
    let k = gapless_prefix(&restored.rows()).unwrap();
    assert_durable_point_in_time(k, &log, t);
    let g = restored_gtid(&restored);
    report("mariadb", "no freeze", &run, k, &log, t, &format!("restored binlog gtid {g} ({} commits)", gtid_seq(&g) - gtid0));
}

// --------------------------------------------------------------------- Redis

/// The way admins snapshot an RDB-only Redis today: pause writers with
/// `CLIENT PAUSE … WRITE`, `BGSAVE`, wait for it; post unpauses.
#[test]
fn redis_legacy_pause_and_bgsave_restores_exactly_the_paused_state() {
    quiesce_tests::require!(Root, Redis);
    let mut st = Stage::new("rd-legacy");
    let r = Redis::start(st.rig.inner(), false);
    let d = st.file("hook");
    let config = st.legacy_pair(&legacy::redis_pause_bgsave(&r, &d));
    let ((run, t), log) = under_load(Writer::redis(&r), || st.snapshot(&config));
    assert_eq!(run.consistency(), "AppConsistent", "{}", run.report);
    let restored = restore_redis(&mut st.rig, &r);
    let k = gapless_prefix(&restored.rows()).unwrap();
    assert_lock_point(k, &log, stamp(&st.file("hook/paused")), stamp(&st.file("hook/unpausing")));
    report("redis", "legacy CLIENT PAUSE + BGSAVE (RDB)", &run, k, &log, t, "");
}

/// Freeze alone does not make an RDB-only Redis consistent with what it
/// acknowledged: its data is in memory, and the disk holds only the last
/// save (here: none since start). The restore is a consistent but stale prefix.
#[test]
fn redis_rdb_freeze_only_loses_acknowledged_writes() {
    quiesce_tests::require!(Root, Redis);
    let mut st = Stage::new("rd-rdb-freeze");
    let r = Redis::start(st.rig.inner(), false);
    let config = st.native_config(true);
    let ((run, t), log) = under_load(Writer::redis(&r), || st.snapshot(&config));
    let restored = restore_redis(&mut st.rig, &r);
    let k = gapless_prefix(&restored.rows()).unwrap();
    let before = log.last_acked_before(t.start_ns);
    assert!(k < before, "expected the last save's state, not the acknowledged one: restored 1..{k}, acked {before}");
    report("redis", "RDB, freeze only", &run, k, &log, t, &format!("{} acknowledged writes missing", before - k));
}

/// `appendonly yes`, `appendfsync everysec`: Redis acknowledges a write after
/// `write(2)` to the AOF — normally. While a background fsync is slow it may
/// postpone that write for up to 2 s and still acknowledge (see the `resp`
/// crate's docs): so freeze alone guarantees only acks older than 2 s.
const AOF_EVERYSEC_SLACK_NS: u64 = 2_000_000_000;

#[test]
fn redis_aof_freeze_only_restores_what_was_written() {
    quiesce_tests::require!(Root, Redis);
    let mut st = Stage::new("rd-aof-freeze");
    let r = Redis::start(st.rig.inner(), true);
    let config = st.native_config(true);
    let mut writer = Writer::redis(&r);
    // Long enough that the 2 s bound means something.
    writer.wait_for(WARMUP_ACKS, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(2500));
    let ((run, t), log) = under_load(writer, || st.snapshot(&config));
    let restored = restore_redis(&mut st.rig, &r);
    let k = gapless_prefix(&restored.rows()).unwrap();
    let guaranteed = log.last_acked_before(t.start_ns - AOF_EVERYSEC_SLACK_NS);
    assert!(guaranteed > 0 && k >= guaranteed, "restored 1..{k}, but {guaranteed} was acknowledged more than 2 s before the freeze");
    let limit = log.first_acked_after(t.end_ns).unwrap_or(log.last() + 1);
    assert!(k <= limit);
    assert_writers_stalled_while_frozen(&log, t);
    let missing = log.last_acked_before(t.start_ns).saturating_sub(k);
    report("redis", "AOF everysec, freeze only", &run, k, &log, t, &format!("{missing} writes acknowledged before the freeze missing"));
}

/// The fix for the above, as the Redis plugin will do it: pause writers,
/// wait until Redis has written every acknowledged write to the AOF file,
/// then freeze. The restore holds exactly the paused state.
#[test]
fn redis_aof_pause_until_written_restores_exactly_the_paused_state() {
    quiesce_tests::require!(Root, Redis);
    let mut st = Stage::new("rd-aof-pause");
    let r = Redis::start(st.rig.inner(), true);
    let config = st.legacy_pair(&legacy::redis_pause_aof(&r, &st.file("hook")));
    let ((run, t), log) = under_load(Writer::redis(&r), || st.snapshot(&config));
    assert_eq!(run.consistency(), "AppConsistent", "{}", run.report);
    let restored = restore_redis(&mut st.rig, &r);
    let k = gapless_prefix(&restored.rows()).unwrap();
    assert_lock_point(k, &log, stamp(&st.file("hook/paused")), stamp(&st.file("hook/unpausing")));
    report("redis", "AOF, CLIENT PAUSE + wait for the AOF write", &run, k, &log, t, "");
}

#[test]
fn redis_aof_without_freeze_restores_what_was_fsynced() {
    quiesce_tests::require!(Root, Redis);
    let mut st = Stage::new("rd-aof-crash");
    let r = Redis::start(st.rig.inner(), true);
    let config = st.native_config(false);
    let mut writer = Writer::redis(&r);
    writer.wait_for(WARMUP_ACKS, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(2500));
    let ((run, t), log) = under_load(writer, || st.snapshot(&config));
    let restored = restore_redis(&mut st.rig, &r);
    let k = gapless_prefix(&restored.rows()).unwrap();
    // Without a freeze only what Redis fsynced (once a second) is on the disk.
    let guaranteed = log.last_acked_before(t.start_ns - AOF_EVERYSEC_SLACK_NS);
    assert!(guaranteed > 0 && k >= guaranteed, "restored 1..{k}, but {guaranteed} was acknowledged more than 2 s before the snapshot");
    let limit = log.first_acked_after(t.end_ns).unwrap_or(log.last() + 1);
    assert!(k <= limit);
    let missing = log.last_acked_before(t.start_ns).saturating_sub(k);
    report("redis", "AOF everysec, no freeze", &run, k, &log, t, &format!("{missing} writes acknowledged before the snapshot missing"));
}
