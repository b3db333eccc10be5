//! The `pgwire`, `mywire` and `resp` clients against real servers: every
//! call a database hook makes, on a throwaway server on a loop mount.

use std::net::TcpStream;
use std::time::Duration;

use quiesce_tests::db::*;
use quiesce_tests::*;

/// Field order = drop order: server, then mount, then directory.
struct OnMount<T> {
    db: T,
    _mnt: LoopMount,
    _s: Scratch,
}

fn on_mount<T>(name: &str, start: impl FnOnce(&std::path::Path) -> T) -> OnMount<T> {
    let s = Scratch::new(name);
    let mnt = LoopMount::with_size(&s.path, "data", Fs::Ext4, 512);
    db::allow_traverse(mnt.path());
    let db = start(mnt.path());
    OnMount { db, _mnt: mnt, _s: s }
}

#[test]
fn pgwire_speaks_scram_and_runs_the_backup_functions() {
    require!(Root, Postgres);
    let b = on_mount("pgwire", |p| Postgres::start_with(p, PgOptions { archive: true, ..Default::default() }));
    let pg = &b.db;
    let mut c = pg.connect();
    assert!(c.server_version_num().unwrap() >= 150000);
    assert!(c.parameter("server_version").unwrap().starts_with("15"));
    c.ensure_primary().unwrap();
    let lsn0 = c.current_wal_lsn().unwrap();
    c.checkpoint().unwrap();
    let start = c.backup_start("quiesce test's \\ label", true).unwrap();
    assert!(start >= lsn0);
    // A second backup on the same session is refused with a typed error.
    let e = c.backup_start("again", true).err().unwrap();
    assert_eq!(e.sqlstate(), Some("55000"), "{e}");
    let stop = c.backup_stop(true).unwrap();
    assert!(stop.lsn > start);
    assert!(stop.labelfile.contains("LABEL: quiesce test's \\ label"), "{}", stop.labelfile);
    assert!(stop.labelfile.contains("BACKUP METHOD: streamed"));
    assert_eq!(stop.spcmapfile, "");
    // The Unix socket works the same way.
    let mut u = pg.connect_unix();
    assert_eq!(u.query_value("SELECT 1 + 1").unwrap().as_deref(), Some("2"));
    // A wrong password: SQLSTATE 28P01.
    let s = TcpStream::connect(("127.0.0.1", pg.port)).unwrap();
    let e = pgwire::Client::connect(s, &pgwire::Config::new("postgres").password("wrong")).err().unwrap();
    assert_eq!(e.sqlstate(), Some("28P01"), "{e}");
    // No password at all.
    let s = TcpStream::connect(("127.0.0.1", pg.port)).unwrap();
    assert!(matches!(
        pgwire::Client::connect(s, &pgwire::Config::new("postgres")),
        Err(pgwire::Error::Refused(pgwire::Refusal::NoPassword))
    ));
}

#[test]
fn mywire_authenticates_root_by_socket_and_app_by_password_and_locks() {
    require!(Root, Mariadb);
    let b = on_mount("mywire", MariaDb::start);
    let my = &b.db;
    let mut root = my.connect_root();
    assert!(root.is_mariadb(), "{}", root.server_version());
    assert!(root.version().unwrap().starts_with("10.11"));
    assert!(!root.read_only().unwrap());
    assert!(root.replica_status().unwrap().is_none());
    root.set_lock_wait_timeout(2).unwrap();
    assert_eq!(root.query_value("SELECT @@session.lock_wait_timeout").unwrap().as_deref(), Some("2"));
    let mut app = my.connect_app();
    app.query("INSERT INTO t VALUES (1)").unwrap();

    // A long query found before locking.
    let mut slow = my.connect_app();
    let h = std::thread::spawn(move || slow.query("SELECT SLEEP(3)").map(|_| ()));
    std::thread::sleep(Duration::from_millis(1500));
    let long = root.long_running_queries(1.0).unwrap();
    assert_eq!(long.len(), 1, "{long:?}");
    assert!(long[0].info.contains("SLEEP(3)") && long[0].time_secs >= 1.0, "{long:?}");
    h.join().unwrap().unwrap();

    root.flush_tables_with_read_lock().unwrap();
    let pos = root.master_status().unwrap().expect("binlog is on");
    assert!(pos.file.starts_with("binlog.") && pos.position > 0, "{pos:?}");
    let gtid = root.gtid_binlog_pos().unwrap().expect("gtid");
    assert!(gtid.starts_with("0-1-"), "{gtid}");
    // Writers are blocked while the lock is held: a write with a short lock wait fails with 1205.
    app.query("SET SESSION lock_wait_timeout = 1").unwrap();
    let e = app.query("INSERT INTO t VALUES (2)").err().unwrap();
    assert!(e.is_lock_wait_timeout(), "{e}");
    root.unlock_tables().unwrap();
    app.query("INSERT INTO t VALUES (2)").unwrap();

    for stage in [mywire::BackupStage::Start, mywire::BackupStage::Flush, mywire::BackupStage::BlockDdl, mywire::BackupStage::BlockCommit] {
        root.backup_stage(stage).unwrap_or_else(|e| panic!("{stage:?}: {e}"));
    }
    assert!(root.master_status().unwrap().is_some());
    let e = app.query("INSERT INTO t VALUES (3)").err().unwrap();
    assert!(e.is_lock_wait_timeout(), "BLOCK_COMMIT blocks commits: {e}");
    root.backup_stage(mywire::BackupStage::End).unwrap();
    app.query("INSERT INTO t VALUES (3)").unwrap();
    assert_eq!(my.rows(), vec![1, 2, 3]);

    // A wrong password: 1045.
    let s = TcpStream::connect(("127.0.0.1", my.port)).unwrap();
    let e = mywire::Client::connect(s, &mywire::Config::new("app").password("wrong")).err().unwrap();
    assert_eq!(e.code(), Some(1045), "{e}");
}

#[test]
fn resp_reads_persistence_pauses_writes_and_saves() {
    require!(Root, Redis);
    let b = on_mount("resp", |p| Redis::start(p, true));
    let r = &b.db;
    let mut c = r.connect();
    assert!(c.version().unwrap().starts_with('7'));
    c.ensure_master().unwrap();
    assert_eq!(c.config_get("appendfsync").unwrap().as_deref(), Some("everysec"));
    assert_eq!(c.config_get("appendonly").unwrap().as_deref(), Some("yes"));
    let p = c.persistence().unwrap();
    assert!(p.aof_enabled && p.aof_last_write_ok && !p.loading);
    for k in ["aof_buffer_length", "aof_pending_bio_fsync", "rdb_saves", "rdb_last_save_time", "rdb_bgsave_in_progress"] {
        assert!(p.fields.contains_key(k), "INFO persistence has no {k}: {:?}", p.fields.keys());
    }
    c.cmd(&["SET", "a", "1"]).unwrap();
    let saved = c.bgsave_and_wait(Duration::from_secs(30), Duration::from_millis(10)).unwrap();
    assert_eq!(saved.rdb_saves, p.rdb_saves.map(|n| n + 1));
    assert!(c.lastsave().unwrap() >= p.rdb_last_save_time);

    // CLIENT PAUSE WRITE: another client's write waits until UNPAUSE; reads do not.
    c.client_pause(10_000, true).unwrap();
    c.wait_aof_written(Duration::from_secs(5), Duration::from_millis(5)).unwrap();
    let mut w = r.connect();
    let h = std::thread::spawn(move || {
        let t = std::time::Instant::now();
        w.cmd(&["SET", "b", "2"]).unwrap();
        t.elapsed()
    });
    let mut reader = r.connect();
    assert_eq!(reader.cmd(&["GET", "a"]).unwrap(), resp::Value::Bulk(b"1".to_vec()));
    std::thread::sleep(Duration::from_millis(400));
    c.client_unpause().unwrap();
    let waited = h.join().unwrap();
    assert!(waited >= Duration::from_millis(350), "the write was not paused: {waited:?}");

    // A wrong password.
    let mut bad = resp::Client::new(TcpStream::connect(("127.0.0.1", r.port)).unwrap());
    assert_eq!(bad.auth("wrong").err().unwrap().kind(), Some("WRONGPASS"));
    assert_eq!(bad.cmd(&["GET", "a"]).err().unwrap().kind(), Some("NOAUTH"));
}
