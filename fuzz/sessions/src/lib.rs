//! The client sessions the wire fuzz targets run against a lying server,
//! and that `record` runs against a real one to record the seed corpora.
//! One definition for both, so a recorded seed replays the exact exchange
//! the target makes. Each is what a database plugin does in `pre` and
//! `post`, in its order; every call may fail (a lying server), and the
//! session goes on with the next call, as far as the bytes go.

use std::io::{Read, Write};
use std::time::Duration;

/// The SCRAM client nonce: fixed, so that a recorded SCRAM exchange replays
/// (the server's reply extends it) and the fuzzer can reach the proof check.
pub const PG_NONCE: &str = "fuzzfuzzfuzzfuzzfuzzfuzz";
pub const PASSWORD: &str = "secret";

pub fn pg_config(user: &str) -> pgwire::Config {
    pgwire::Config::new(user).password(PASSWORD).database("postgres").application_name("quiesce")
}

/// Startup, SCRAM, version and recovery checks, backup start/stop.
pub fn postgres<S: Read + Write>(stream: S, cfg: &pgwire::Config) {
    let Ok(mut c) = pgwire::Client::connect_with_fixed_nonce(stream, cfg, PG_NONCE) else { return };
    let _ = c.parameter("server_version");
    let _ = c.backend_pid();
    let _ = c.require_version(150000);
    let _ = c.ensure_primary();
    let _ = c.simple_query("SELECT 1 AS one, NULL AS nothing; SELECT 'x'");
    if let Ok(start) = c.backup_start("quiesce", true) {
        let _ = start.to_string();
    }
    if let Ok(stop) = c.backup_stop(false) {
        let _ = stop.lsn.to_string();
    }
}

pub fn mariadb_config(user: &str) -> mywire::Config {
    mywire::Config::new(user).password(PASSWORD).database("mysql")
}

/// Handshake and authentication, then the MariaDB plugin's queries.
pub fn mariadb<S: Read + Write>(stream: S, cfg: &mywire::Config) {
    use mywire::BackupStage;
    let Ok(mut c) = mywire::Client::connect(stream, cfg) else { return };
    let _ = c.server_version().len();
    let _ = c.is_mariadb();
    let _ = c.version();
    let _ = c.read_only();
    let _ = c.replica_status();
    let _ = c.set_lock_wait_timeout(5);
    let _ = c.long_running_queries(10.0);
    for s in [BackupStage::Start, BackupStage::Flush, BackupStage::BlockDdl, BackupStage::BlockCommit] {
        let _ = c.backup_stage(s);
    }
    let _ = c.master_status();
    let _ = c.gtid_binlog_pos();
    let _ = c.backup_stage(BackupStage::End);
    let _ = c.flush_tables_with_read_lock();
    let _ = c.unlock_tables();
    let _ = c.query_all("SELECT 1 AS one, NULL AS nothing; SELECT 'x'");
    let _ = c.close();
}

/// The Redis plugin's calls; the polling loops get `poll` timeouts (zero
/// in the fuzz target: one round each).
pub fn redis<S: Read + Write>(stream: S, password: Option<&str>, poll: Duration) {
    let mut c = resp::Client::new(stream);
    if let Some(pw) = password {
        let _ = c.auth_user("default", pw);
    }
    let _ = c.ping();
    let _ = c.version();
    let _ = c.role();
    let _ = c.ensure_master();
    let _ = c.config_get("appendonly");
    let _ = c.lastsave();
    let _ = c.persistence();
    let _ = c.client_pause(5000, true);
    let _ = c.bgsave_and_wait(poll, poll);
    let _ = c.wait_aof_written(poll, poll);
    let _ = c.client_unpause();
    let _ = c.cmd(&["ECHO", "bye"]);
}
