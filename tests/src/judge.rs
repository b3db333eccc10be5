//! Judging a restored database against what its writer was told (issue 5):
//! the checks the restore tests share. Each asserts exactly what one way of
//! taking the snapshot guarantees, and [`report`] prints the `[restore]`
//! line that says what differed.

use std::path::Path;
use std::time::Duration;

use crate::db::{MariaDb, Postgres, Writer, WriterLog};
use crate::restore::{read_times, SnapTimes};
use crate::Run;

/// How long the writer runs before and after the session.
pub const WARMUP_ACKS: u64 = 300;
pub const AFTER: Duration = Duration::from_millis(500);

/// One time stamp (`date +%s%N`) a hook script wrote.
pub fn stamp(path: &Path) -> u64 {
    let t = read_times(path);
    assert_eq!(t.len(), 1, "{}: {t:?}", path.display());
    t[0]
}

/// Runs the writer around `session`, stops it a little later and returns its log.
pub fn under_load<T>(mut writer: Writer, session: impl FnOnce() -> T) -> (T, WriterLog) {
    writer.wait_for(WARMUP_ACKS, Duration::from_secs(60));
    let out = session();
    std::thread::sleep(AFTER);
    let log = writer.stop();
    assert!(log.error.is_none(), "writer failed: {:?}", log.error);
    (out, log)
}

pub fn report(db: &str, mode: &str, run: &Run, k: u64, log: &WriterLog, t: SnapTimes, extra: &str) {
    println!(
        "[restore] {db} {mode}: label {}, restored 1..{k}; acked {} in all, {} before the snapshot started, \
         first after it ended {:?}; {} acks during the snapshot; writer's longest gap around the session {:.1} ms; \
         freeze window {} ms{}{extra}",
        run.consistency(),
        log.last(),
        log.last_acked_before(t.start_ns),
        log.first_acked_after(t.end_ns),
        log.acked_between(t.start_ns, t.end_ns).len(),
        log.max_gap_between(t.start_ns.saturating_sub(5_000_000_000), t.end_ns + 5_000_000_000).as_secs_f64() * 1e3,
        run.report["freeze"]["window_ms"],
        if extra.is_empty() { "" } else { "; " },
    );
}

/// Freeze only, or no freeze, with a durable-commit database: every write
/// acknowledged before the snapshot command started is on the disk (it was
/// made durable before it was acknowledged, and the clone copies the disk),
/// and the restore holds no write that was *sent* after the snapshot ended:
/// at most the one in flight then, whose commit may have reached the disk
/// before its acknowledgement reached the writer.
pub fn assert_durable_point_in_time(k: u64, log: &WriterLog, t: SnapTimes) {
    let before = log.last_acked_before(t.start_ns);
    assert!(k >= before, "acknowledged writes lost: restored 1..{k}, but {before} was acknowledged before the snapshot");
    let limit = log.first_acked_after(t.end_ns).unwrap_or(log.last() + 1);
    assert!(k <= limit, "restored 1..{k}, but writes up to {limit} were at most in flight when the snapshot ended");
}

/// A frozen file system stalls every commit: while the snapshot command ran,
/// the writer got at most the one acknowledgement that was already on its way.
pub fn assert_writers_stalled_while_frozen(log: &WriterLog, t: SnapTimes) {
    let during = log.acked_between(t.start_ns, t.end_ns);
    assert!(during.len() <= 1, "{} writes acknowledged while the mount was frozen: {:?}", during.len(), &during[..during.len().min(5)]);
}

/// A lock held from `locked_ns` (when the pre script had it) to `unlock_ns`
/// (just before the post script released it): everything acknowledged before
/// the lock is restored; nothing acknowledged after the release is (the write
/// in flight then was blocked by the lock, so it cannot be on the snapshot);
/// and the writer got at most one ack (already on its way) while it was held.
pub fn assert_lock_point(k: u64, log: &WriterLog, locked_ns: u64, unlock_ns: u64) {
    let before = log.last_acked_before(locked_ns);
    assert!(k >= before, "acknowledged writes lost: restored 1..{k}, but {before} was acknowledged before the lock");
    if let Some(first_after) = log.first_acked_after(unlock_ns) {
        assert!(k < first_after, "restored 1..{k} includes {first_after}, acknowledged only after the lock was released");
    }
    let during = log.acked_between(locked_ns, unlock_ns);
    assert!(during.len() <= 1, "{} writes acknowledged while the lock was held: {:?}", during.len(), &during[..during.len().min(5)]);
    assert!(k <= before + during.len() as u64, "restored 1..{k}: more than was acknowledged by the time of the lock");
}

/// The restored server went through the backup-label path: PostgreSQL
/// renames `backup_label` once it has used it, and says where it started.
pub fn assert_backup_label_path(restored: &Postgres) {
    assert!(restored.data_dir.join("backup_label.old").exists(), "backup_label was not consumed");
    assert!(!restored.data_dir.join("backup_label").exists());
    let log = restored.log_text();
    assert!(log.contains("starting backup recovery") || log.contains("starting point-in-time recovery"), "{log}");
    assert!(log.contains("consistent recovery state reached"), "{log}");
}

/// Where crash recovery of a restored server started and ended ("redo starts at", "redo done at").
pub fn redo_range(restored: &Postgres) -> (Option<pgwire::Lsn>, Option<pgwire::Lsn>) {
    let text = restored.log_text();
    let find = |what: &str| {
        text.lines().find_map(|l| l.split(what).nth(1)).and_then(|s| pgwire::Lsn::parse(s.split_whitespace().next().unwrap_or("")))
    };
    (find("redo starts at "), find("redo done at "))
}

/// Sequence number of a single-domain GTID position `0-1-N`.
pub fn gtid_seq(pos: &str) -> u64 {
    pos.rsplit('-').next().and_then(|s| s.trim().parse().ok()).unwrap_or_else(|| panic!("gtid {pos:?}"))
}

/// The binlog position as of the restored data: the GTID state the restored
/// server recovered from its binlog. Every writer commit is one GTID.
pub fn restored_gtid(restored: &MariaDb) -> String {
    restored.connect_root().gtid_binlog_pos().unwrap().expect("gtid_binlog_pos")
}
