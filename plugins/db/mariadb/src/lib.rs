//! quiesce plugin for MariaDB (10.4+) and MySQL (5.7+, `method = "ftwrl"` only).
//!
//! `pre` opens one session, takes a global lock that stops commits, and
//! records the binary log position *under the lock*; the session (and the
//! lock) is kept in the plugin instance through the freeze and snapshot;
//! `post` releases it on the same session. The restored copy's InnoDB and
//! binlog crash recovery then end exactly at the recorded position.
//!
//! # Methods (`method` param)
//! - **`backup-stage`** (default, MariaDB only): `BACKUP STAGE START`,
//!   `FLUSH`, `BLOCK_DDL`, `BLOCK_COMMIT`; post `BACKUP STAGE END`. Writers
//!   are blocked only from `BLOCK_COMMIT` on (and only at commit).
//! - **`ftwrl`**: `FLUSH TABLES WITH READ LOCK`; post `UNLOCK TABLES`. It
//!   closes every open table and blocks every write statement, not just
//!   commits.
//!
//! Measured (`cargo bench -p quiesce-tests --bench db_stall -- my`: MariaDB
//! 10.11 on an ext4 loop disk, 2 shared cores, one writer committing
//! autocommit InnoDB INSERTs as fast as acknowledged; the stall of a session
//! is the longest gap between two acknowledgements overlapping it; median
//! [max] of 5 sessions, two runs):
//!
//! | method | run 1 | run 2 |
//! |---|---|---|
//! | freeze only (no plugin) | 63.5 [108.3] ms | 68.2 [84.6] ms |
//! | `backup-stage` | 77.3 [106.2] ms | 89.3 [106.4] ms |
//! | `ftwrl` | 94.5 [100.0] ms | 92.5 [93.3] ms |
//! | legacy FTWRL script pair | 167.5 [204.0] ms | 164.8 [177.8] ms |
//!
//! `backup-stage` had the lower median in both runs, by 3–17 ms — a small
//! margin, within this machine's noise for the maxima — and it does less
//! that can go wrong under other loads: it does not close every open table,
//! does not block non-committing statements, and only blocks writers from
//! `BLOCK_COMMIT` on. So it is the default on MariaDB; `ftwrl` is there for
//! MySQL. (With statements running longer than `long_query_secs` the plugin
//! takes neither lock: it fails retryable first.)
//!
//! Both are bounded: `SET SESSION lock_wait_timeout = lock_wait_timeout_secs`
//! first, so a lock queued behind a long query or DDL fails (error 1205)
//! instead of stalling every writer queued behind it; and before locking the
//! plugin looks in `information_schema.PROCESSLIST` for statements running
//! longer than `long_query_secs` — if there are any it fails *retryable*
//! without taking any lock (the host retries as configured).
//!
//! # Artifacts
//! - `binlog_position`: `file=`, `position=` (`SHOW MASTER STATUS`) and
//!   `gtid_binlog_pos=` (`@@gtid_binlog_pos`), read under the lock — the
//!   point a replica or point-in-time recovery continues from.
//! - `quiesce_times`: `locked=` and `releasing=`, ns since the Unix epoch from
//!   the server's clock (`NOW(6)`): when the lock was held, and just before
//!   it was released; and where the hold went on the plugin's side
//!   (monotonic clock, ns): `block_ns=` (the blocking statement itself —
//!   `BACKUP STAGE BLOCK_COMMIT` syncs the binary log inside it, and commits
//!   wait from its start), `pre_tail_ns=` (from its reply to pre's return),
//!   `post_head_ns=` (from post's call to sending the release).
//!
//! # Params
//! | param | default | meaning |
//! |---|---|---|
//! | `target` | `unix:/run/mysqld/mysqld.sock` | `unix:/path/mysqld.sock` or `tcp:HOST:PORT` |
//! | `user` | `root` | over a Unix socket `root` authenticates by `unix_socket` (the host runs as root): no password |
//! | `password_file` | — | file with the password on its first line (grant `file:PATH`), for `mysql_native_password` |
//! | `method` | `backup-stage` | `backup-stage` or `ftwrl` |
//! | `lock_wait_timeout_secs` | `5` | how long the lock may wait (writers may queue behind it that long) |
//! | `long_query_secs` | `1` | statements running at least this long make pre fail (retryable) before locking |
//! | `fault` | `none` | **fault injection for tests only**: `hang-after-lock` / `trap-after-lock` — pre sleeps past its deadline / panics while holding the lock |
//!
//! # Errors
//! Server down, too many connections, long-running queries, lock wait
//! timeout: *retryable*. Access denied, a replica (`SHOW REPLICA STATUS` not
//! empty), a server too old (or MySQL with `backup-stage`), no binary log
//! with `require_binlog = true`: *fatal*. On every failure the session is
//! closed, and the server drops what it held; the same when the plugin traps
//! or times out (the host drops the instance) or the host is killed (the
//! kernel closes the socket).

use std::io;

mod check;

use mywire::{BackupStage, Client, Config, Error as MyError};
use quiesce_plugin_sdk::{
    artifacts, clock, files, info, warn, Connection, Context, Failure as Fail, Finding, HookResult, Info, Plugin, Snapshot,
};

const DEFAULT_TARGET: &str = "unix:/run/mysqld/mysqld.sock";
const DEFAULT_METHOD: &str = "backup-stage";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    Ftwrl,
    BackupStage,
}

struct Held {
    client: Client<Connection>,
    method: Method,
    locked_ns: u64,
    /// Monotonic: the blocking statement was sent / answered, pre returned.
    block_sent_mono_ns: u64,
    blocked_mono_ns: u64,
    pre_end_mono_ns: u64,
}

#[derive(Default)]
struct MariaDb {
    held: Option<Held>,
}

fn classify(target: &str, what: &str, e: MyError) -> Fail {
    let msg = format!("mariadb at {target}: {what}: {e}");
    match &e {
        MyError::Io(io) if matches!(io.kind(), io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidInput) => Fail::Fatal(msg),
        MyError::Io(_) => Fail::Retry(msg),
        // 1205 lock wait timeout, 1213 deadlock, 1040 too many connections, 1053 shutdown in progress.
        MyError::Server(s) if matches!(s.code, 1205 | 1213 | 1040 | 1053) => Fail::Retry(match s.code {
            1205 => format!("{msg} (the lock could not be had within lock_wait_timeout_secs: a long statement or DDL holds tables; writers were stalled at most that long)"),
            _ => msg,
        }),
        // 1045 access denied, 1698 access denied (unix_socket), 1044 db access denied, 1227 missing privilege.
        MyError::Server(s) if matches!(s.code, 1045 | 1698 | 1044 | 1227) => {
            Fail::Fatal(format!("{msg} (access refused: check `user`, `password_file`, or run the host as the unix_socket user)"))
        }
        MyError::UnsupportedAuth(_) => Fail::Fatal(format!("{msg} (authentication refused)")),
        MyError::Server(_) | MyError::Protocol(_) => Fail::Fatal(msg),
    }
}

fn fault(ctx: &Context) -> Result<Option<&'static str>, Fail> {
    match ctx.param_or("fault", "none") {
        "none" | "" => Ok(None),
        "hang-after-lock" => Ok(Some("hang")),
        "trap-after-lock" => Ok(Some("trap")),
        f => Err(Fail::Fatal(format!("unknown fault {f:?} (none, hang-after-lock, trap-after-lock)"))),
    }
}

/// Fault injection for the host's fault tests: misbehave while holding the lock.
fn inject(f: Option<&str>) {
    match f {
        Some("hang") => loop {
            warn!("fault injection: hang-after-lock — sleeping with the lock held until the host kills this instance");
            clock::sleep(std::time::Duration::from_secs(3600));
        },
        Some(_) => panic!("fault injection: trap-after-lock"),
        None => {}
    }
}

fn method(ctx: &Context) -> Result<Method, Fail> {
    match ctx.param_or("method", DEFAULT_METHOD) {
        "ftwrl" => Ok(Method::Ftwrl),
        "backup-stage" => Ok(Method::BackupStage),
        m => Err(Fail::Fatal(format!("unknown method {m:?} (backup-stage or ftwrl)"))),
    }
}

fn num_param(ctx: &Context, name: &str, default: f64) -> Result<f64, Fail> {
    match ctx.param(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|x| *x >= 0.0)
            .ok_or_else(|| Fail::Fatal(format!("{name} = {v:?} is not a non-negative number"))),
    }
}

fn password(ctx: &Context) -> Result<String, Fail> {
    let Some(path) = ctx.param("password_file").filter(|p| !p.is_empty()) else { return Ok(String::new()) };
    let text = files::read_to_string(path).map_err(|e| Fail::Fatal(format!("password_file {path}: {e} (grant it as \"file:{path}\")")))?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// `(major, minor)` of `10.11.6-MariaDB-…` / `8.0.36`.
fn version_of(v: &str) -> (u32, u32) {
    let mut it = v.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// The server's wall clock, ns since the Unix epoch.
fn server_now_ns(c: &mut Client<Connection>) -> Result<u64, MyError> {
    let v = c.query_value("SELECT CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS UNSIGNED)")?;
    let us: u64 = v.as_deref().and_then(|s| s.trim().parse().ok()).ok_or_else(|| MyError::Protocol(format!("NOW(6): {v:?}")))?;
    Ok(us * 1000)
}

impl MariaDb {
    fn lock(&mut self, ctx: &Context) -> Result<String, Fail> {
        let target = ctx.param_or("target", DEFAULT_TARGET).to_string();
        let method = method(ctx)?;
        let fault = fault(ctx)?;
        let wait = num_param(ctx, "lock_wait_timeout_secs", 5.0)?.ceil().max(1.0) as u32;
        let long = num_param(ctx, "long_query_secs", 1.0)?;
        let mut c = login(ctx, &target)?;
        let version = c.server_version().to_string();
        let (major, minor) = version_of(&version);
        match (c.is_mariadb(), method) {
            (true, _) if (major, minor) < (10, 4) => {
                return Err(Fail::Fatal(format!("mariadb at {target}: version {version} is too old, need 10.4 or later")))
            }
            (false, Method::BackupStage) => {
                return Err(Fail::Fatal(format!("{target} runs MySQL {version}: BACKUP STAGE is MariaDB's; set method = \"ftwrl\"")))
            }
            (false, _) if (major, minor) < (5, 7) => {
                return Err(Fail::Fatal(format!("MySQL at {target}: version {version} is too old, need 5.7 or later")))
            }
            _ => {}
        }
        if let Some(rs) = c.replica_status().map_err(|e| classify(&target, "SHOW REPLICA STATUS", e))? {
            let master = rs.first("Master_Host").or(rs.first("Source_Host")).unwrap_or("?").to_string();
            return Err(Fail::Fatal(format!(
                "mariadb at {target} is a replica of {master}; quiesce its primary (locking a replica stalls replication)"
            )));
        }
        c.set_lock_wait_timeout(wait).map_err(|e| classify(&target, "SET lock_wait_timeout", e))?;
        let long_running = c.long_running_queries(long).map_err(|e| classify(&target, "PROCESSLIST", e))?;
        if !long_running.is_empty() {
            let list: Vec<String> = long_running
                .iter()
                .take(5)
                .map(|p| format!("id {} ({}, {:.1} s): {}", p.id, p.user, p.time_secs, p.info.chars().take(80).collect::<String>()))
                .collect();
            return Err(Fail::Retry(format!(
                "mariadb at {target}: {} statement(s) running for {long} s or more; locking now would stall every writer behind them: {}",
                long_running.len(),
                list.join("; ")
            )));
        }
        let mut block_sent_mono_ns = clock::now_ns();
        match method {
            Method::Ftwrl => c.flush_tables_with_read_lock().map_err(|e| classify(&target, "FLUSH TABLES WITH READ LOCK", e))?,
            Method::BackupStage => {
                for stage in [BackupStage::Start, BackupStage::Flush, BackupStage::BlockDdl, BackupStage::BlockCommit] {
                    block_sent_mono_ns = clock::now_ns();
                    c.backup_stage(stage).map_err(|e| classify(&target, stage.sql(), e))?;
                }
            }
        }
        let blocked_mono_ns = clock::now_ns();
        let locked_ns = server_now_ns(&mut c).map_err(|e| classify(&target, "clock", e))?;
        let pos = c.master_status().map_err(|e| classify(&target, "SHOW MASTER STATUS", e))?;
        let gtid = c.gtid_binlog_pos().map_err(|e| classify(&target, "@@gtid_binlog_pos", e))?;
        let mut rec = String::new();
        if let Some(p) = &pos {
            rec.push_str(&format!("file={}\nposition={}\n", p.file, p.position));
        }
        if let Some(g) = &gtid {
            rec.push_str(&format!("gtid_binlog_pos={g}\n"));
        }
        if pos.is_none() {
            warn!("binary logging is off at {target}: no binlog position to record");
        }
        artifacts::keep("binlog_position", rec.as_bytes())?;
        let summary = match &pos {
            Some(p) => format!("{}:{} gtid {}", p.file, p.position, gtid.as_deref().unwrap_or("-")),
            None => "binlog off".into(),
        };
        info!("{method:?} held at {target}; {summary}");
        self.held = Some(Held { client: c, method, locked_ns, block_sent_mono_ns, blocked_mono_ns, pre_end_mono_ns: clock::now_ns() });
        inject(fault);
        Ok(format!("{} held on {target} (MariaDB/MySQL {version}); binlog {summary}", lock_name(method)))
    }
}

/// Connects to `target` and logs in as the params say.
fn login(ctx: &Context, target: &str) -> Result<Client<Connection>, Fail> {
    let pw = password(ctx)?;
    let conn = Connection::open(target).map_err(|e| match HookResult::from(e.clone()) {
        HookResult::Retryable(_) => Fail::Retry(format!("mariadb at {target} is not reachable (server down?): {e}")),
        _ => Fail::Fatal(format!("mariadb at {target}: {e}")),
    })?;
    let cfg = Config::new(ctx.param_or("user", "root")).password(&pw);
    Client::connect(conn, &cfg).map_err(|e| classify(target, "login", e))
}

fn lock_name(m: Method) -> &'static str {
    match m {
        Method::Ftwrl => "FLUSH TABLES WITH READ LOCK",
        Method::BackupStage => "BACKUP STAGE BLOCK_COMMIT",
    }
}

impl Plugin for MariaDb {
    fn describe() -> Info {
        Info::new("mariadb", env!("CARGO_PKG_VERSION"))
            .quiesces("MariaDB/MySQL: BACKUP STAGE BLOCK_COMMIT or FLUSH TABLES WITH READ LOCK held from pre to post; binlog/GTID position as artifact")
            .grant(DEFAULT_TARGET)
            .param("target", "unix:/path/mysqld.sock or tcp:HOST:PORT (must be granted)", Some(DEFAULT_TARGET))
            .param("user", "user to log in as (root over a Unix socket: unix_socket auth, no password)", Some("root"))
            .param("password_file", "file with the password on its first line (grant file:PATH)", Some("(unset)"))
            .param("method", "backup-stage (MariaDB) or ftwrl", Some(DEFAULT_METHOD))
            .param("lock_wait_timeout_secs", "longest wait for the lock (writers queue behind a waiting lock)", Some("5"))
            .param("long_query_secs", "statements running this long make pre fail (retryable) before locking", Some("1"))
            .param("fault", "TESTS ONLY: hang-after-lock or trap-after-lock", Some("none"))
    }

    fn pre(&mut self, ctx: &Context) -> HookResult {
        // A retried pre must not keep an earlier attempt's session.
        self.held = None;
        // Whatever was taken goes with the client, dropped here.
        self.lock(ctx).into()
    }

    fn post(&mut self, ctx: &Context, snapshot: &Snapshot) -> HookResult {
        let Some(mut h) = self.held.take() else {
            return HookResult::ok("no lock held (pre did not take one): nothing to release");
        };
        let post_mono_ns = clock::now_ns();
        let target = ctx.param_or("target", DEFAULT_TARGET).to_string();
        // One round trip before the release (writers still wait): the
        // server's clock, so `releasing` bounds the lock on the clock the
        // writers' commits are judged by.
        let releasing = server_now_ns(&mut h.client);
        let sending_mono_ns = clock::now_ns();
        let released = match h.method {
            Method::Ftwrl => h.client.unlock_tables(),
            Method::BackupStage => h.client.backup_stage(BackupStage::End),
        };
        let _ = h.client.close();
        if let Ok(r) = releasing {
            let times = [
                ("locked", h.locked_ns),
                ("releasing", r),
                ("block_ns", h.blocked_mono_ns.saturating_sub(h.block_sent_mono_ns)),
                ("pre_tail_ns", h.pre_end_mono_ns.saturating_sub(h.blocked_mono_ns)),
                ("post_head_ns", sending_mono_ns.saturating_sub(post_mono_ns)),
            ];
            if let Err(f) = artifacts::keep_times(&times) {
                warn!("{}", f.into_message());
            }
        }
        match released {
            Ok(()) => HookResult::ok(format!("{} released (snapshot taken: {}, {})", lock_name(h.method), snapshot.taken, snapshot.label)),
            Err(e) => HookResult::fatal(format!(
                "mariadb at {target}: releasing {}: {e}; the session was closed, which releases it too",
                lock_name(h.method)
            )),
        }
    }

    fn check(&mut self, ctx: &Context) -> Vec<Finding> {
        check::check(ctx)
    }
}

quiesce_plugin_sdk::register!(MariaDb);
