//! `check`: what `pre` and `post` will need, verified without taking a
//! checkpoint or starting a backup — the login, the server (15+, a
//! primary), the role's privileges for the mode, and for `backup` mode WAL
//! archiving (without an archive a backup-mode snapshot cannot be restored).

use pgwire::{Client, QueryResult};
use quiesce_plugin_sdk::{Connection, Context, Failure as Fail, Finding};

use super::{classify, login, max_scram_iterations, mode, weak_auth, Mode, DEFAULT_TARGET, MIN_VERSION};

/// `"name"` with embedded quotes doubled: the role as a GRANT names it.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn failure_message(f: Fail) -> String {
    match f {
        Fail::Retry(m) | Fail::Fatal(m) => m,
    }
}

/// One row of `sql`, or the finding that says why not.
fn row(c: &mut Client<Connection>, target: &str, what: &str, sql: &str) -> Result<QueryResult, Finding> {
    c.query(sql).map_err(|e| Finding::error("PgQueryFailed", failure_message(classify(target, what, e))))
}

pub(crate) fn check(ctx: &Context) -> Vec<Finding> {
    let mut out = Vec::new();
    let target = ctx.param_or("target", DEFAULT_TARGET);
    let user = ctx.param_or("user", "postgres");
    let params = mode(ctx).and_then(|m| {
        weak_auth(ctx)?;
        max_scram_iterations(ctx)?;
        Ok(m)
    });
    let mode = match params {
        Ok(m) => m,
        Err(f) => {
            out.push(Finding::error("PgBadParam", failure_message(f)));
            return out;
        }
    };
    let mut c = match login(ctx) {
        Ok(c) => c,
        Err(f) => {
            out.push(Finding::error("PgLoginFailed", failure_message(f)));
            return out;
        }
    };
    out.push(Finding::passed("PgLoggedIn", format!("logged in to PostgreSQL at {target} as role {user}")));
    if let Err(f) = server(&mut c, target, mode, user, &mut out) {
        out.push(f);
    }
    let _ = c.close();
    out
}

/// Everything after the login; `Err` for a query that failed outright.
fn server(c: &mut Client<Connection>, target: &str, mode: Mode, user: &str, out: &mut Vec<Finding>) -> Result<(), Finding> {
    let r = row(
        c,
        target,
        "privileges",
        "SELECT current_setting('server_version_num') AS version, pg_is_in_recovery()::text AS recovery, \
         r.rolsuper::text AS superuser, \
         pg_has_role(current_user, 'pg_checkpoint', 'MEMBER')::text AS checkpoint, \
         has_function_privilege('pg_backup_start(text, boolean)', 'EXECUTE')::text AS backup_start, \
         has_function_privilege('pg_backup_stop(boolean)', 'EXECUTE')::text AS backup_stop, \
         current_setting('archive_mode') AS archive_mode, current_setting('archive_command') AS archive_command, \
         current_setting('archive_library') AS archive_library \
         FROM pg_roles r WHERE r.rolname = current_user",
    );
    let r = match r {
        Ok(r) => r,
        // Older than 15: pg_checkpoint, pg_backup_start or archive_library do not exist.
        Err(_) => {
            let v = c.server_version_num().unwrap_or(0);
            if v < MIN_VERSION {
                out.push(Finding::error(
                    "PgTooOld",
                    format!("PostgreSQL at {target} is version {v}; the plugin needs 15 or later (pg_backup_start, pg_checkpoint): upgrade the server"),
                ));
                return Ok(());
            }
            return row(c, target, "privileges", "SELECT 1").map(drop);
        }
    };
    let yes = |col: &str| r.first(col) == Some("true");
    let version = r.first("version").and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
    out.push(Finding::passed("PgVersionSupported", format!("server version {version} (15 or later is needed)")));
    if r.first("recovery") == Some("true") {
        out.push(Finding::error(
            "PgIsStandby",
            format!("PostgreSQL at {target} is a standby (pg_is_in_recovery() is true): point `target` at the primary"),
        ));
    } else {
        out.push(Finding::passed("PgIsPrimary", "the server is a primary (not in recovery)"));
    }
    let role = ident(user);
    match mode {
        Mode::Checkpoint if yes("superuser") => {
            out.push(Finding::passed("PgCheckpointAllowed", format!("role {user} may run CHECKPOINT (a superuser)")));
            out.push(Finding::info(
                "PgSuperuserNotNeeded",
                format!("role {user} is a superuser; checkpoint mode needs only pg_checkpoint: CREATE ROLE backup LOGIN PASSWORD '…'; GRANT pg_checkpoint TO backup; then set param user = \"backup\""),
            ));
        }
        Mode::Checkpoint if yes("checkpoint") => {
            out.push(Finding::passed("PgCheckpointAllowed", format!("role {user} may run CHECKPOINT (a member of pg_checkpoint)")))
        }
        Mode::Checkpoint => out.push(Finding::error(
            "PgCheckpointNotAllowed",
            format!("role {user} may not run CHECKPOINT (neither a superuser nor a member of pg_checkpoint): as a superuser run GRANT pg_checkpoint TO {role};"),
        )),
        Mode::Backup => {
            if yes("backup_start") && yes("backup_stop") {
                out.push(Finding::passed("PgBackupAllowed", format!("role {user} may run pg_backup_start and pg_backup_stop")));
            } else {
                out.push(Finding::error(
                    "PgBackupNotAllowed",
                    format!("role {user} may not run pg_backup_start/pg_backup_stop: as a superuser run GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean), pg_backup_stop(boolean) TO {role};"),
                ));
            }
            let archive_mode = r.first("archive_mode").unwrap_or("off");
            let archiver = [r.first("archive_command").unwrap_or(""), r.first("archive_library").unwrap_or("")];
            if archive_mode == "off" {
                out.push(Finding::error(
                    "PgWalArchivingOff",
                    "archive_mode is off: a backup-mode snapshot cannot be restored without the WAL up to pg_backup_stop's position; \
                     set archive_mode = on and an archive_command (restart PostgreSQL), or use mode = \"checkpoint\" for snapshots that are atomic across volumes",
                ));
            } else if archiver.iter().all(|a| a.trim().is_empty() || *a == "(disabled)") {
                out.push(Finding::error(
                    "PgWalArchiverUnset",
                    format!("archive_mode is {archive_mode} but neither archive_command nor archive_library is set: WAL is never archived and pg_backup_stop would wait forever; set archive_command"),
                ));
            } else {
                out.push(Finding::passed("PgWalArchivingOn", format!("WAL archiving is on (archive_mode = {archive_mode})")));
            }
        }
    }
    Ok(())
}
