//! The legacy shell-script pairs admins run today around a snapshot, written
//! the way the Azure samples and their users do it — the baseline the WASM
//! plugins are measured against.
//!
//! A lock or backup that must outlive the pre script lives in a background
//! client whose input is a FIFO, held open by a sleeping writer; the post
//! script sends the release down the FIFO and ends the sleeper. Each script
//! stamps `date +%s%N` into its state directory at the moments that matter
//! (lock taken, about to release), so tests can judge the restore against them.

use std::fs;
use std::path::Path;

use crate::db::{MariaDb, Postgres, Redis, PG_BIN};
use crate::restore::PgBackupFiles;

/// (pre script body, post script body), for `Stage::legacy_pair`.
pub type Pair = (String, String);

/// Polls `file` for a line starting with `marker` for up to `secs`; fails the script otherwise.
fn wait_for(file: &str, marker: &str, tenths: u32) -> String {
    format!(
        "i=0; until grep -q '^{marker}' {file}; do i=$((i+1)); [ $i -lt {} ] || {{ echo 'no {marker}:'; cat {file}; exit 1; }}; sleep 0.05; done",
        tenths * 2
    )
}

/// A client reading SQL from `dir/fifo`, its output in `dir/out`, and the
/// sleeping writer that keeps the FIFO open (its pid in `dir/holder.pid`).
fn fifo_session(dir: &str, client: &str) -> String {
    format!(
        "rm -f {dir}/fifo {dir}/out; mkfifo {dir}/fifo\n\
         setsid sh -c 'exec {client} < {dir}/fifo > {dir}/out 2>&1' > /dev/null 2>&1 &\n\
         setsid sh -c 'exec sleep 3600 > {dir}/fifo' > /dev/null 2>&1 &\necho $! > {dir}/holder.pid"
    )
}

/// PostgreSQL: `pg_backup_start('quiesce-legacy', true)` in pre on a
/// background `psql`; `pg_backup_stop(true)` in post on the same session, its
/// `labelfile`/`spcmapfile` saved to `dir/labelfile`, `dir/spcmapfile`.
/// Stamps: `started`, `stopping`, `stopped`.
pub fn pg_backup_fifo(pg: &Postgres, dir: &Path) -> Pair {
    fs::create_dir_all(dir).unwrap();
    let d = dir.display().to_string();
    let psql =
        format!("{PG_BIN}/psql -X -q -A -t -v ON_ERROR_STOP=1 -h {} -p {} -U postgres -d postgres", pg.socket_dir.display(), pg.port);
    let pre = format!(
        "export PGPASSWORD=\"$(cat {pw})\"\n{session}\n\
         echo \"SELECT 'STARTED', pg_backup_start('quiesce-legacy', true);\" > {d}/fifo\n{wait}\ndate +%s%N > {d}/started",
        pw = pg.password_file.display(),
        session = fifo_session(&d, &psql),
        wait = wait_for(&format!("{d}/out"), "STARTED", 30),
    );
    let post = format!(
        "date +%s%N > {d}/stopping\n\
         printf '%s\\n' 'CREATE TEMP TABLE b AS SELECT * FROM pg_backup_stop(true);' '\\o {d}/labelfile' 'SELECT labelfile FROM b;' \
         '\\o {d}/spcmapfile' 'SELECT spcmapfile FROM b;' '\\o' \"SELECT 'STOPPED';\" > {d}/fifo\n{wait}\n\
         date +%s%N > {d}/stopped\nkill $(cat {d}/holder.pid)",
        wait = wait_for(&format!("{d}/out"), "STOPPED", 60),
    );
    (pre, post)
}

/// What [`pg_backup_fifo`]'s post script saved (psql ends each value with a newline of its own).
pub fn pg_backup_files(dir: &Path) -> PgBackupFiles {
    let read = |f: &str| {
        let s = fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        s.strip_suffix('\n').unwrap_or(&s).to_string()
    };
    PgBackupFiles { labelfile: read("labelfile"), spcmapfile: read("spcmapfile") }
}

/// MariaDB: `FLUSH TABLES WITH READ LOCK` (lock wait bounded to 10 s) held by
/// a background `mariadb` client; under the lock `SHOW MASTER STATUS` and
/// `@@gtid_binlog_pos` go to `dir/out` (lines 1 and 2); post unlocks.
/// Stamps: `locked`, `unlocking`.
pub fn mariadb_ftwrl_fifo(my: &MariaDb, dir: &Path) -> Pair {
    fs::create_dir_all(dir).unwrap();
    let d = dir.display().to_string();
    let cli = format!("{} -N -B -n", my.cli());
    let pre = format!(
        "{session}\n\
         printf '%s\\n' 'SET SESSION lock_wait_timeout = 10;' 'FLUSH TABLES WITH READ LOCK;' 'SHOW MASTER STATUS;' \
         'SELECT @@gtid_binlog_pos;' \"SELECT 'LOCKED';\" > {d}/fifo\n{wait}\ndate +%s%N > {d}/locked",
        session = fifo_session(&d, &cli),
        wait = wait_for(&format!("{d}/out"), "LOCKED", 30),
    );
    let post = format!(
        "date +%s%N > {d}/unlocking\nprintf '%s\\n' 'UNLOCK TABLES;' \"SELECT 'UNLOCKED';\" > {d}/fifo\n{wait}\nkill $(cat {d}/holder.pid)",
        wait = wait_for(&format!("{d}/out"), "UNLOCKED", 30),
    );
    (pre, post)
}

/// Redis (RDB persistence): `CLIENT PAUSE 60000 WRITE`, then `BGSAVE` and wait
/// for it; post `CLIENT UNPAUSE`. Stamps: `paused`, `unpausing`.
pub fn redis_pause_bgsave(r: &Redis, dir: &Path) -> Pair {
    fs::create_dir_all(dir).unwrap();
    let d = dir.display();
    let cli = r.cli();
    let pre = format!(
        "{cli} CLIENT PAUSE 60000 WRITE | grep -q OK\ndate +%s%N > {d}/paused\n\
         {cli} BGSAVE | grep -q 'Background saving started'\n\
         i=0; until {cli} INFO persistence | grep -q '^rdb_bgsave_in_progress:0'; do i=$((i+1)); [ $i -lt 3000 ] || exit 1; sleep 0.01; done\n\
         {cli} INFO persistence | grep -q '^rdb_last_bgsave_status:ok'"
    );
    let post = format!("date +%s%N > {d}/unpausing\n{cli} CLIENT UNPAUSE | grep -q OK");
    (pre, post)
}

/// PostgreSQL, the lighter way for an atomic single-volume snapshot:
/// `CHECKPOINT` in pre (so crash recovery of the snapshot replays little
/// WAL), its redo LSN saved to `dir/redo_lsn`; nothing to release in post.
pub fn pg_checkpoint(pg: &Postgres, dir: &Path) -> Pair {
    fs::create_dir_all(dir).unwrap();
    let pre = format!(
        "export PGPASSWORD=\"$(cat {pw})\"\n{PG_BIN}/psql -X -q -A -t -v ON_ERROR_STOP=1 -h {sock} -p {port} -U postgres -d postgres \
         -c CHECKPOINT -c 'SELECT redo_lsn FROM pg_control_checkpoint()' > {d}/redo_lsn",
        pw = pg.password_file.display(),
        sock = pg.socket_dir.display(),
        port = pg.port,
        d = dir.display(),
    );
    (pre, "true".into())
}

/// Redis (AOF, `appendfsync everysec`): `CLIENT PAUSE 60000 WRITE`, then wait
/// until `INFO persistence` shows every acknowledged write in the AOF file
/// (`aof_buffer_length:0`, `aof_pending_bio_fsync:0`); the freeze then syncs
/// the file to the disk. Post `CLIENT UNPAUSE`. Stamps: `paused`, `unpausing`.
/// (The sequence the `resp` crate's `wait_aof_written` implements.)
pub fn redis_pause_aof(r: &Redis, dir: &Path) -> Pair {
    fs::create_dir_all(dir).unwrap();
    let d = dir.display();
    let cli = r.cli();
    let pre = format!(
        "{cli} CLIENT PAUSE 60000 WRITE | grep -q OK\ndate +%s%N > {d}/paused\n\
         i=0; until {cli} INFO persistence | tr -d '\\r' > {d}/info && grep -qx 'aof_buffer_length:0' {d}/info \\\n\
           && grep -qx 'aof_pending_bio_fsync:0' {d}/info; do i=$((i+1)); [ $i -lt 3000 ] || exit 1; sleep 0.01; done\n\
         grep -qx 'aof_last_write_status:ok' {d}/info"
    );
    let post = format!("date +%s%N > {d}/unpausing\n{cli} CLIENT UNPAUSE | grep -q OK");
    (pre, post)
}
