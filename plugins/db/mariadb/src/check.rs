//! `check`: what `pre` and `post` will need, verified without locking
//! anything — the login, the server and method, the privileges the lock and
//! the statements around it need (`SHOW GRANTS`, and the non-locking
//! statements pre runs, tried for real), and the binary log's state.

use mywire::{Client, Error as MyError};
use quiesce_plugin_sdk::{Connection, Context, Failure as Fail, Finding};

use super::{classify, login, method, num_param, version_of, Method, DEFAULT_TARGET};

fn failure_message(f: Fail) -> String {
    match f {
        Fail::Retry(m) | Fail::Fatal(m) => m,
    }
}

/// 1227: "Access denied; you need (at least one of) the X privilege(s)".
fn denied(e: &MyError) -> bool {
    matches!(e.code(), Some(1227 | 1142 | 1044))
}

pub(crate) fn check(ctx: &Context) -> Vec<Finding> {
    let mut out = Vec::new();
    let target = ctx.param_or("target", DEFAULT_TARGET);
    let params = method(ctx).and_then(|m| {
        num_param(ctx, "lock_wait_timeout_secs", 5.0)?;
        num_param(ctx, "long_query_secs", 1.0)?;
        Ok(m)
    });
    let method = match params {
        Ok(m) => m,
        Err(f) => {
            out.push(Finding::error("MyBadParam", failure_message(f)));
            return out;
        }
    };
    let mut c = match login(ctx, target) {
        Ok(c) => c,
        Err(f) => {
            out.push(Finding::error("MyLoginFailed", failure_message(f)));
            return out;
        }
    };
    let version = c.server_version().to_string();
    out.push(Finding::passed("MyLoggedIn", format!("logged in to {version} at {target}")));
    server(&mut c, target, method, &version, &mut out);
    let _ = c.close();
    out
}

fn server(c: &mut Client<Connection>, target: &str, method: Method, version: &str, out: &mut Vec<Finding>) {
    let (major, minor) = version_of(version);
    match (c.is_mariadb(), method) {
        (true, _) if (major, minor) < (10, 4) => {
            out.push(Finding::error("MyTooOld", format!("MariaDB {version} is too old: the plugin needs 10.4 or later; upgrade the server")))
        }
        (false, Method::BackupStage) => out.push(Finding::error(
            "MyBackupStageUnsupported",
            format!("{target} runs MySQL {version}: BACKUP STAGE is MariaDB's; set param method = \"ftwrl\""),
        )),
        (false, _) if (major, minor) < (5, 7) => {
            out.push(Finding::error("MyTooOld", format!("MySQL {version} is too old: the plugin needs 5.7 or later; upgrade the server")))
        }
        _ => {}
    }
    let account = c.query_value("SELECT CURRENT_USER()").ok().flatten().unwrap_or_else(|| "?".into());
    let grantee = match account.rsplit_once('@') {
        Some((u, h)) => format!("'{u}'@'{h}'"),
        None => account.clone(),
    };

    // The global privileges, from SHOW GRANTS (the account's and its active role's).
    let grants: Vec<String> = match c.query_all("SHOW GRANTS") {
        Ok(sets) => sets.into_iter().flat_map(|rs| rs.rows).filter_map(|r| r.into_iter().next().flatten()).collect(),
        Err(e) => {
            out.push(Finding::error("MyQueryFailed", failure_message(classify(target, "SHOW GRANTS", e))));
            Vec::new()
        }
    };
    let global: Vec<String> = grants
        .iter()
        .filter_map(|g| {
            let rest = g.strip_prefix("GRANT ")?;
            let (privs, on) = rest.split_once(" ON ")?;
            on.trim_start().starts_with("*.*").then(|| privs.to_ascii_uppercase())
        })
        .collect();
    let has = |p: &str| global.iter().any(|privs| privs.contains("ALL PRIVILEGES") || privs.split(',').any(|x| x.trim() == p));
    let lock = match method {
        Method::BackupStage => "BACKUP STAGE",
        Method::Ftwrl => "FLUSH TABLES WITH READ LOCK",
    };
    if has("RELOAD") {
        out.push(Finding::passed("MyReloadGranted", format!("{account} has RELOAD, which {lock} needs")));
    } else {
        out.push(Finding::error(
            "MyReloadMissing",
            format!("{account} lacks the RELOAD privilege, which {lock} needs: GRANT RELOAD ON *.* TO {grantee};"),
        ));
    }
    if !has("PROCESS") {
        out.push(Finding::warning(
            "MyProcessMissing",
            format!(
                "{account} lacks PROCESS: pre sees only its own statements, so it cannot avoid locking behind another user's long query \
                 (which stalls every writer): GRANT PROCESS ON *.* TO {grantee};"
            ),
        ));
    }

    // What pre runs besides the lock, tried for real (none of it locks).
    match c.replica_status() {
        Ok(Some(rs)) => {
            let master = rs.first("Master_Host").or(rs.first("Source_Host")).unwrap_or("?").to_string();
            out.push(Finding::error(
                "MyIsReplica",
                format!("{target} is a replica of {master}: locking a replica stalls replication; quiesce its primary instead"),
            ));
        }
        Ok(None) => out.push(Finding::passed("MyIsPrimary", "the server is not a replica")),
        Err(e) if denied(&e) => out.push(Finding::error(
            "MyReplicaStatusDenied",
            format!("{account} may not run SHOW REPLICA STATUS, which pre runs to refuse replicas ({e}): GRANT REPLICA MONITOR ON *.* TO {grantee}; (MariaDB 10.5.9+; SUPER before)"),
        )),
        Err(e) => out.push(Finding::error("MyQueryFailed", failure_message(classify(target, "SHOW REPLICA STATUS", e)))),
    }
    match c.master_status() {
        Ok(Some(p)) => {
            out.push(Finding::passed("MyBinlogOn", format!("binary logging is on (at {}:{}); pre records the position under the lock", p.file, p.position)))
        }
        Ok(None) => out.push(Finding::info(
            "MyBinlogOff",
            "binary logging is off: no binlog position is recorded, so the snapshot cannot seed a replica or point-in-time recovery; \
             set log_bin (and server_id) if you need that",
        )),
        Err(e) if denied(&e) => out.push(Finding::error(
            "MyBinlogStatusDenied",
            format!("{account} may not run SHOW MASTER STATUS, which pre runs under the lock ({e}): GRANT BINLOG MONITOR ON *.* TO {grantee}; (MariaDB 10.5.2+; REPLICATION CLIENT before)"),
        )),
        Err(e) => out.push(Finding::error("MyQueryFailed", failure_message(classify(target, "SHOW MASTER STATUS", e)))),
    }
}
