//! `check`: what `pre` and `post` will need, verified without pausing
//! anything — the login, the server (6.2+, a primary), that the ACL lets
//! this user run `CLIENT PAUSE` (asked with a timeout Redis rejects after
//! its ACL check, so nothing is ever paused) and the other commands pre
//! runs, and the persistence mode pre will make durable.

use quiesce_plugin_sdk::{Connection, Context, Failure as Fail, Finding};
use resp::{Client, Error as RError, Value};

use super::{classify, connect, version_of, DEFAULT_TARGET};

fn noperm(e: &RError) -> bool {
    e.kind() == Some("NOPERM")
}

/// Sends `args`, which Redis refuses *after* its ACL check (a bad argument):
/// `Ok(true)` when the ACL allows the command, `Ok(false)` when it does not.
/// Nothing runs either way.
fn acl_allows(c: &mut Client<Connection>, args: &[&str]) -> Result<bool, RError> {
    match c.cmd(args) {
        Err(e) if noperm(&e) => Ok(false),
        Err(RError::Server(_)) => Ok(true),
        Err(e) => Err(e),
        // Not expected with the bad argument; the command was allowed.
        Ok(_) => Ok(true),
    }
}

pub(crate) fn check(ctx: &Context) -> Vec<Finding> {
    let mut out = Vec::new();
    let target = ctx.param_or("target", DEFAULT_TARGET);
    let user = ctx.param("user").filter(|u| !u.is_empty()).unwrap_or("default");
    if let Some(v) = ctx.param("pause_ms") {
        if v.trim().parse::<u64>().ok().filter(|&n| n > 0).is_none() {
            out.push(Finding::error("RedisBadParam", format!("pause_ms = {v:?} is not a positive integer (milliseconds)")));
        }
    }
    let persist = ctx.param_or("persist", "auto");
    if !matches!(persist, "auto" | "aof" | "rdb") {
        out.push(Finding::error("RedisBadParam", format!("unknown persist {persist:?} (auto, aof, rdb)")));
    }
    let mut c = match connect(ctx, target) {
        Ok(c) => c,
        Err(f) => {
            out.push(Finding::error("RedisLoginFailed", Fail::into_message(f)));
            return out;
        }
    };
    // Connecting does not say whether AUTH was asked; PING does.
    if let Err(e) = c.ping() {
        out.push(Finding::error("RedisLoginFailed", Fail::into_message(classify(target, "PING", e))));
        return out;
    }
    out.push(Finding::passed("RedisLoggedIn", format!("logged in to Redis at {target} as user {user}")));
    let denied = |cmd: &str| {
        Finding::error(
            "RedisCommandDenied",
            format!(
                "the ACL does not let user {user} run {cmd}, which pre or post runs: ACL SETUSER {user} +{}",
                cmd.to_lowercase().replace(' ', "|")
            ),
        )
    };
    let failed = |what: &str, e: RError| Finding::error("RedisQueryFailed", Fail::into_message(classify(target, what, e)));

    match c.version() {
        Ok(v) if version_of(&v) >= (6, 2) => {
            out.push(Finding::passed("RedisVersionSupported", format!("Redis {v} (6.2 or later is needed)")))
        }
        Ok(v) => out.push(Finding::error(
            "RedisTooOld",
            format!("Redis {v} is too old: CLIENT PAUSE … WRITE needs 6.2 or later; upgrade the server"),
        )),
        Err(e) if noperm(&e) => out.push(denied("INFO")),
        Err(e) => out.push(failed("INFO server", e)),
    }
    match c.role() {
        Ok(resp::Role::Master { .. }) => out.push(Finding::passed("RedisIsPrimary", "the server is a primary")),
        Ok(_) => out.push(Finding::error(
            "RedisIsReplica",
            format!("Redis at {target} is a replica: pausing it quiesces nothing; point `target` at the primary"),
        )),
        Err(e) if noperm(&e) => out.push(denied("ROLE")),
        Err(e) => out.push(failed("ROLE", e)),
    }
    if let Err(e) = c.time_ns() {
        out.push(if noperm(&e) { denied("TIME") } else { failed("TIME", e) });
    }
    match acl_allows(&mut c, &["CLIENT", "PAUSE", "quiesce-check-only", "WRITE"]) {
        Ok(true) => {
            out.push(Finding::passed("RedisPauseAllowed", format!("the ACL lets user {user} run CLIENT PAUSE (asked without pausing)")))
        }
        Ok(false) => out.push(Finding::error(
            "RedisPauseDenied",
            format!("the ACL does not let user {user} run CLIENT PAUSE, which pre needs: ACL SETUSER {user} +client|pause +client|unpause"),
        )),
        Err(e) => out.push(failed("CLIENT PAUSE (ACL probe)", e)),
    }
    // UNPAUSE cannot be probed harmlessly (it would end someone else's
    // pause): ask the ACL itself where this user may (Redis 7+).
    match c.cmd(&["ACL", "DRYRUN", user, "CLIENT", "UNPAUSE"]) {
        Ok(Value::Simple(s)) if s == "OK" => out.push(Finding::passed("RedisUnpauseAllowed", format!("the ACL lets user {user} run CLIENT UNPAUSE"))),
        Ok(v) => out.push(Finding::error(
            "RedisUnpauseDenied",
            format!(
                "the ACL does not let user {user} run CLIENT UNPAUSE, which post needs ({}): ACL SETUSER {user} +client|unpause",
                v.as_text().unwrap_or_default()
            ),
        )),
        Err(_) => out.push(Finding::info(
            "RedisUnpauseUnverified",
            format!("could not ask the ACL whether user {user} may run CLIENT UNPAUSE (ACL DRYRUN needs Redis 7 and the acl permission); make sure it may: ACL SETUSER {user} +client|unpause"),
        )),
    }
    match c.persistence() {
        Ok(p) if p.aof_enabled && persist != "rdb" => out.push(Finding::passed(
            "RedisPersistenceAof",
            "AOF is on: pre waits under the pause until every acknowledged write is in the AOF (the freeze makes it durable)",
        )),
        Ok(_) if persist == "aof" => out.push(Finding::error(
            "RedisAofOff",
            "persist = \"aof\" but the server has appendonly no: CONFIG SET appendonly yes (and in redis.conf), or set persist = \"auto\"",
        )),
        Ok(p) => {
            out.push(Finding::info(
                "RedisPersistenceRdb",
                if p.aof_enabled {
                    "persist = \"rdb\" with appendonly yes: pre runs BGSAVE under the pause (the AOF, which Redis loads first, must match), so writers wait as long as the save takes; persist = \"auto\" waits only for the AOF write"
                } else {
                    "RDB only: pre runs BGSAVE without pausing writers and waits until it is on disk; the snapshot holds the data set as of the save's fork, not the writes acknowledged after it (during the save, the freeze and the snapshot); appendonly yes keeps those"
                },
            ));
            match acl_allows(&mut c, &["BGSAVE", "quiesce-check-only"]) {
                Ok(true) => {}
                Ok(false) => out.push(denied("BGSAVE")),
                Err(e) => out.push(failed("BGSAVE (ACL probe)", e)),
            }
        }
        Err(e) if noperm(&e) => out.push(denied("INFO")),
        Err(e) => out.push(failed("INFO persistence", e)),
    }
    out
}
