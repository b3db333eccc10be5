//! quiesce plugin for PostgreSQL 15+.
//!
//! # Modes (`mode` param)
//! - **`checkpoint`** (default) — for a snapshot that is atomic across every
//!   volume holding the data directory, WAL and tablespaces (one volume, or a
//!   multi-volume crash-consistent group). `pre` runs `CHECKPOINT`, so the
//!   restored server's crash recovery starts from a recent redo point and
//!   replays little WAL; nothing is held, `post` does nothing. The checkpoint's
//!   redo LSN is stored as the artifact `checkpoint_redo_lsn`. The restore is
//!   plain crash recovery: every transaction committed before the freeze.
//! - **`backup`** — PostgreSQL's non-exclusive online backup. `pre` calls
//!   `pg_backup_start(label, fast => true)` and keeps that session open
//!   through the snapshot; `post` calls `pg_backup_stop(wait_for_archive)` on
//!   the same session and hands its results to the host as artifacts:
//!   `backup_label`, `tablespace_map` (only if non-empty) and `stop_lsn`.
//!
//!   **Restoring a `backup` snapshot needs more than the snapshot.** The label
//!   says `BACKUP METHOD: streamed`: PostgreSQL will only call the copy
//!   consistent after replaying WAL up to the end-of-backup record that
//!   `pg_backup_stop` writes — *after* the snapshot was taken. So a restore
//!   needs (1) `backup_label` (and `tablespace_map`) written into the
//!   restored data directory, (2) `recovery.signal` with a `restore_command`
//!   reading a WAL archive (`archive_mode = on` on the original server) that
//!   holds WAL up to `stop_lsn`, and (3) usually `recovery_target =
//!   'immediate'`. The restored state is as of `pg_backup_stop`, not as of the
//!   snapshot. With the label but no archive PostgreSQL refuses to start
//!   ("WAL ends before end of online backup"). Use this mode when the
//!   snapshot is not atomic across volumes, or when you keep a WAL archive
//!   anyway (point-in-time recovery); otherwise `checkpoint` is simpler and
//!   restores on its own. It also stalls writers longer: on a primary
//!   `pg_backup_stop` switches WAL segments, writing out the rest of the
//!   current segment under the WAL write lock, right after the thaw (the
//!   `db_stall` bench measures it).
//!
//! Every mode stores the artifact `quiesce_times`: `name=unix-ns` lines read
//! from the *server's* clock (`clock_timestamp()`), e.g. `stop_called` and
//! `stop_returned` around `pg_backup_stop`, to match the restore against
//! application logs.
//!
//! # Params
//! | param | default | meaning |
//! |---|---|---|
//! | `target` | `tcp:127.0.0.1:5432` | `tcp:HOST:PORT`, or `unix:/DIR/.s.PGSQL.PORT` |
//! | `user` | `postgres` | a superuser, or a role with `pg_checkpoint` (checkpoint) / `EXECUTE` on the backup functions (backup) |
//! | `database` | `postgres` | |
//! | `password_file` | — | file holding the password (first line); needs a `file:` grant. Without it: `trust`/`peer` auth only |
//! | `allow_password_auth` | `""` | also answer weaker password requests: `md5`, `cleartext`, or `md5,cleartext`. Default: SCRAM-SHA-256 only |
//! | `max_scram_iterations` | `100000` | the most PBKDF2 iterations a server may ask for (PostgreSQL's default is 4096) |
//! | `mode` | `checkpoint` | `checkpoint` or `backup` |
//! | `label` | `quiesce <session id>` | the backup label (backup mode) |
//! | `wait_for_archive` | `true` | `pg_backup_stop(wait_for_archive)`: wait until the WAL the backup needs is archived |
//! | `fault` | `none` | **fault injection for tests only**: `hang-after-lock` (pre sleeps past its deadline once the backup is started / the checkpoint done) or `trap-after-lock` (pre panics then) |
//!
//! # Grants
//! The `target` as a `tcp:` or `unix:` grant, and `file:<password_file>`.
//! Credentials come only from the granted file, never from params or argv.
//!
//! # Authentication
//! Anyone who can bind the port (or socket) while PostgreSQL is down can
//! wait for this hook. So with a `password_file`, the server must log us in
//! with SCRAM-SHA-256 and prove it holds the password's verifier (its
//! signature is checked); a server that asks for the password in cleartext
//! or as MD5, or lets us in without asking (trust/peer), is refused, fatally,
//! with the fix in the message: `scram-sha-256` in pg_hba.conf, or the
//! `allow_password_auth` opt-in for cleartext/MD5. Without a `password_file`
//! only trust/peer can succeed. No TLS: SCRAM without channel binding.
//!
//! # Errors
//! Server down or starting up (connection refused, SQLSTATE 57P03, too many
//! connections): *retryable*. Authentication refused (by the server or by us), a standby
//! (`pg_is_in_recovery()`), a server older than 15, a missing password file:
//! *fatal*. A backup session that dies (post fails, the plugin traps or times
//! out, the host is killed) closes its connection, and PostgreSQL aborts a
//! non-exclusive backup whose session ends — the server is never left in
//! backup mode.

use std::io;

mod check;

use pgwire::{Client, Config, Error as PgError, Lsn, Refusal, ScramError};
use quiesce_plugin_sdk::{
    artifacts, clock, files, info, warn, Connection, Context, Failure as Fail, Finding, HookResult, Info, Plugin, Snapshot,
};

const DEFAULT_TARGET: &str = "tcp:127.0.0.1:5432";
const DEFAULT_PASSWORD_FILE: &str = "/etc/quiesce/secrets/postgres";
/// `pg_backup_start`/`pg_backup_stop` exist since 15.
const MIN_VERSION: u32 = 150000;

#[derive(Default)]
struct Postgres {
    /// The session that called `pg_backup_start` (backup mode), held until post.
    backup: Option<Backup>,
}

struct Backup {
    client: Client<Connection>,
    start_lsn: Lsn,
    times: Vec<(&'static str, u64)>,
}

/// Classifies a protocol error.
fn classify(target: &str, what: &str, e: PgError) -> Fail {
    let msg = format!("postgres at {target}: {what}: {e}");
    match &e {
        PgError::Io(io) if matches!(io.kind(), io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidInput) => Fail::Fatal(msg),
        PgError::Io(_) => Fail::Retry(msg),
        // 57P03 cannot_connect_now (starting up / shutting down), 53300 too_many_connections,
        // 40001/40P01 serialization failure / deadlock, 55P03 lock_not_available.
        PgError::Server(s) if matches!(s.code.as_str(), "57P03" | "53300" | "40001" | "40P01" | "55P03") => Fail::Retry(msg),
        PgError::Server(s) if s.code.starts_with("28") => {
            Fail::Fatal(format!("{msg} (authentication refused: check `user` and `password_file`)"))
        }
        PgError::Refused(r) => Fail::Fatal(format!("{msg}. Fix: {}", refusal_fix(*r))),
        PgError::Scram(ScramError::TooManyIterations { .. }) => Fail::Fatal(format!("{msg}. Fix: param `max_scram_iterations`")),
        PgError::Scram(_) | PgError::UnsupportedAuth(_) | PgError::Random(_) => Fail::Fatal(msg),
        PgError::Replica | PgError::Version { .. } => Fail::Fatal(msg),
        PgError::Server(_) | PgError::Protocol(_) => Fail::Fatal(msg),
    }
}

/// What the admin can do about a refused authentication request.
fn refusal_fix(r: Refusal) -> &'static str {
    match r {
        Refusal::Cleartext => {
            "use scram-sha-256 in pg_hba.conf for this connection, or set param allow_password_auth = \"cleartext\" \
             to send the password in cleartext anyway"
        }
        Refusal::Md5 => {
            "use scram-sha-256 in pg_hba.conf and set the role's password again with password_encryption = scram-sha-256, \
             or set param allow_password_auth = \"md5\""
        }
        Refusal::NoPassword => "set param password_file (and grant it as file:PATH)",
        Refusal::Unauthenticated => {
            "use scram-sha-256 in pg_hba.conf for this connection, or unset param password_file to log in with trust/peer"
        }
        Refusal::ChannelBindingOnly => "allow SCRAM-SHA-256 for this connection (this plugin connects without TLS)",
    }
}

/// `allow_password_auth`: which weaker password methods to answer.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct WeakAuth {
    md5: bool,
    cleartext: bool,
}

fn weak_auth(ctx: &Context) -> Result<WeakAuth, Fail> {
    let mut w = WeakAuth::default();
    for m in ctx.param_or("allow_password_auth", "").split(',').map(str::trim).filter(|m| !m.is_empty()) {
        match m {
            "md5" => w.md5 = true,
            "cleartext" => w.cleartext = true,
            other => {
                return Err(Fail::Fatal(format!(
                    "allow_password_auth: unknown method {other:?} (md5, cleartext, both comma-separated, or empty)"
                )))
            }
        }
    }
    Ok(w)
}

fn max_scram_iterations(ctx: &Context) -> Result<u32, Fail> {
    let Some(v) = ctx.param("max_scram_iterations") else { return Ok(pgwire::scram::DEFAULT_MAX_ITERATIONS) };
    v.parse::<u32>()
        .ok()
        .filter(|&n| n >= pgwire::scram::MIN_ITERATIONS)
        .ok_or_else(|| Fail::Fatal(format!("max_scram_iterations {v:?}: a whole number >= {}", pgwire::scram::MIN_ITERATIONS)))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Checkpoint,
    Backup,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    HangAfterLock,
    TrapAfterLock,
}

fn fault(ctx: &Context) -> Result<Fault, Fail> {
    match ctx.param_or("fault", "none") {
        "none" | "" => Ok(Fault::None),
        "hang-after-lock" => Ok(Fault::HangAfterLock),
        "trap-after-lock" => Ok(Fault::TrapAfterLock),
        f => Err(Fail::Fatal(format!("unknown fault {f:?} (none, hang-after-lock, trap-after-lock)"))),
    }
}

/// Fault injection for the host's fault tests: misbehave while holding what pre took.
fn inject(f: Fault) {
    match f {
        Fault::None => {}
        Fault::HangAfterLock => loop {
            warn!("fault injection: hang-after-lock — sleeping until the host kills this instance");
            clock::sleep(std::time::Duration::from_secs(3600));
        },
        Fault::TrapAfterLock => panic!("fault injection: trap-after-lock"),
    }
}

/// The password: first line of the granted `password_file`, if one is set.
fn password(ctx: &Context) -> Result<Option<String>, Fail> {
    let Some(path) = ctx.param("password_file").filter(|p| !p.is_empty()) else { return Ok(None) };
    let text = files::read_to_string(path).map_err(|e| Fail::Fatal(format!("password_file {path}: {e} (grant it as \"file:{path}\")")))?;
    let pw = text.lines().next().unwrap_or("").to_string();
    if pw.is_empty() {
        return Err(Fail::Fatal(format!("password_file {path} is empty")));
    }
    Ok(Some(pw))
}

/// Connects, authenticates and checks the server: version ≥ 15, a primary.
fn connect(ctx: &Context) -> Result<Client<Connection>, Fail> {
    let target = ctx.param_or("target", DEFAULT_TARGET);
    let mut c = login(ctx)?;
    let v = c.require_version(MIN_VERSION).map_err(|e| classify(target, "version", e))?;
    c.ensure_primary().map_err(|e| classify(target, "role", e))?;
    info!("connected to postgres {v} at {target}");
    Ok(c)
}

/// Connects and authenticates as the params say (`check` goes on from here
/// with its own questions).
fn login(ctx: &Context) -> Result<Client<Connection>, Fail> {
    let target = ctx.param_or("target", DEFAULT_TARGET);
    let pw = password(ctx)?;
    let weak = weak_auth(ctx)?;
    let max_iterations = max_scram_iterations(ctx)?;
    let conn = Connection::open(target).map_err(|e| match HookResult::from(e.clone()) {
        HookResult::Retryable(_) => Fail::Retry(format!("postgres at {target} is not reachable (server down?): {e}")),
        _ => Fail::Fatal(format!("postgres at {target}: {e}")),
    })?;
    let mut cfg = Config::new(ctx.param_or("user", "postgres"))
        .database(ctx.param_or("database", "postgres"))
        .application_name("quiesce")
        .allow_md5(weak.md5)
        .allow_cleartext(weak.cleartext)
        .max_scram_iterations(max_iterations);
    if let Some(pw) = &pw {
        cfg = cfg.password(pw);
    }
    Client::connect(conn, &cfg).map_err(|e| classify(target, "login", e))
}

/// The server's wall clock, ns since the Unix epoch.
fn server_now_ns(c: &mut Client<Connection>) -> Result<u64, PgError> {
    let v = c.query_value("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint")?;
    let us: u64 = v.as_deref().and_then(|s| s.parse().ok()).ok_or_else(|| PgError::Protocol(format!("clock_timestamp: {v:?}")))?;
    Ok(us * 1000)
}

impl Postgres {
    fn pre_checkpoint(&mut self, ctx: &Context, fault: Fault) -> Result<String, Fail> {
        let target = ctx.param_or("target", DEFAULT_TARGET).to_string();
        let mut c = connect(ctx)?;
        let t0 = server_now_ns(&mut c).map_err(|e| classify(&target, "clock", e))?;
        c.checkpoint().map_err(|e| classify(&target, "CHECKPOINT", e))?;
        let redo = c
            .query_value("SELECT redo_lsn::text FROM pg_control_checkpoint()")
            .map_err(|e| classify(&target, "pg_control_checkpoint", e))?
            .unwrap_or_default();
        let t1 = server_now_ns(&mut c).map_err(|e| classify(&target, "clock", e))?;
        artifacts::keep("checkpoint_redo_lsn", format!("{redo}\n").as_bytes())?;
        artifacts::keep_times(&[("checkpoint_called", t0), ("checkpoint_returned", t1)])?;
        inject(fault);
        let _ = c.close();
        Ok(format!("CHECKPOINT done, redo LSN {redo}"))
    }

    fn pre_backup(&mut self, ctx: &Context, fault: Fault) -> Result<String, Fail> {
        let target = ctx.param_or("target", DEFAULT_TARGET).to_string();
        let default_label = format!("quiesce {}", ctx.session_id);
        let label = ctx.param_or("label", &default_label).to_string();
        let mut c = connect(ctx)?;
        let start_lsn = c.backup_start(&label, true).map_err(|e| classify(&target, "pg_backup_start", e))?;
        let started = server_now_ns(&mut c).map_err(|e| classify(&target, "clock", e))?;
        info!("pg_backup_start({label:?}) at {start_lsn}; holding the session until post");
        self.backup = Some(Backup { client: c, start_lsn, times: vec![("backup_started", started)] });
        inject(fault);
        Ok(format!("backup {label:?} started at {start_lsn}"))
    }

    fn post_backup(&mut self, ctx: &Context, snapshot: &Snapshot) -> Result<String, Fail> {
        let Some(mut b) = self.backup.take() else {
            return Ok("no backup in progress (pre did not start one): nothing to stop".into());
        };
        let target = ctx.param_or("target", DEFAULT_TARGET).to_string();
        let wait = !matches!(ctx.param_or("wait_for_archive", "true"), "false" | "no" | "0");
        let called = server_now_ns(&mut b.client).map_err(|e| classify(&target, "clock", e))?;
        let stop = b.client.backup_stop(wait).map_err(|e| classify(&target, "pg_backup_stop", e))?;
        let returned = server_now_ns(&mut b.client).map_err(|e| classify(&target, "clock", e))?;
        for n in b.client.notices.drain(..) {
            warn!("pg_backup_stop: {n}");
        }
        let _ = b.client.close();
        b.times.push(("stop_called", called));
        b.times.push(("stop_returned", returned));
        artifacts::keep("backup_label", stop.labelfile.as_bytes())?;
        if !stop.spcmapfile.is_empty() {
            artifacts::keep("tablespace_map", stop.spcmapfile.as_bytes())?;
        }
        artifacts::keep("stop_lsn", format!("{}\n", stop.lsn).as_bytes())?;
        artifacts::keep_times(&b.times)?;
        Ok(format!(
            "backup stopped: WAL {}..{}; backup_label{} stored (snapshot taken: {}, {}); restore needs the WAL archive up to {}",
            b.start_lsn,
            stop.lsn,
            if stop.spcmapfile.is_empty() { "" } else { " and tablespace_map" },
            snapshot.taken,
            snapshot.label,
            stop.lsn
        ))
    }
}

fn mode(ctx: &Context) -> Result<Mode, Fail> {
    match ctx.param_or("mode", "checkpoint") {
        "checkpoint" => Ok(Mode::Checkpoint),
        "backup" => Ok(Mode::Backup),
        m => Err(Fail::Fatal(format!("unknown mode {m:?} (checkpoint or backup)"))),
    }
}

impl Plugin for Postgres {
    fn describe() -> Info {
        Info::new("postgres", env!("CARGO_PKG_VERSION"))
            .quiesces("PostgreSQL 15+: CHECKPOINT before an atomic snapshot, or pg_backup_start/pg_backup_stop around it (backup_label as artifact)")
            .grant(DEFAULT_TARGET)
            .grant(format!("file:{DEFAULT_PASSWORD_FILE}"))
            .param("target", "tcp:HOST:PORT or unix:/DIR/.s.PGSQL.PORT (must be granted)", Some(DEFAULT_TARGET))
            .param("user", "role to log in as", Some("postgres"))
            .param("database", "database to connect to", Some("postgres"))
            .param("password_file", "file with the password on its first line (grant file:PATH); unset: trust/peer auth", Some("(unset)"))
            .param(
                "allow_password_auth",
                "also answer the server's cleartext or MD5 password requests: md5, cleartext, or md5,cleartext (default: SCRAM-SHA-256 only)",
                Some(""),
            )
            .param("max_scram_iterations", "most PBKDF2 iterations a server may ask for in SCRAM", Some(&pgwire::scram::DEFAULT_MAX_ITERATIONS.to_string()))
            .param("mode", "checkpoint (atomic snapshots; restores by crash recovery) or backup (pg_backup_start/stop; restore needs backup_label + WAL archive)", Some("checkpoint"))
            .param("label", "backup label (backup mode)", Some("quiesce <session id>"))
            .param("wait_for_archive", "pg_backup_stop waits until the needed WAL is archived (backup mode)", Some("true"))
            .param("fault", "TESTS ONLY: hang-after-lock or trap-after-lock", Some("none"))
    }

    fn pre(&mut self, ctx: &Context) -> HookResult {
        // A retried pre must not leave an earlier attempt's session behind.
        self.backup = None;
        let r = mode(ctx).and_then(|m| Ok((m, fault(ctx)?))).and_then(|(m, f)| match m {
            Mode::Checkpoint => self.pre_checkpoint(ctx, f),
            Mode::Backup => self.pre_backup(ctx, f),
        });
        match r {
            Ok(m) => HookResult::ok(m),
            Err(f) => {
                self.backup = None; // closes the session: PostgreSQL aborts the backup
                f.into()
            }
        }
    }

    fn post(&mut self, ctx: &Context, snapshot: &Snapshot) -> HookResult {
        match mode(ctx) {
            Ok(Mode::Checkpoint) => HookResult::ok("checkpoint mode: nothing to release"),
            Ok(Mode::Backup) => match self.post_backup(ctx, snapshot) {
                Ok(m) => HookResult::ok(m),
                // The session is dropped with `b`: the backup is aborted, nothing stays held.
                Err(Fail::Retry(m) | Fail::Fatal(m)) => HookResult::fatal(format!("{m}; the backup session was closed (backup aborted)")),
            },
            Err(f) => f.into(),
        }
    }

    fn check(&mut self, ctx: &Context) -> Vec<Finding> {
        check::check(ctx)
    }
}

quiesce_plugin_sdk::register!(Postgres);
