//! Example plugin: holds a lock in a line-protocol service for the length of
//! the snapshot.
//!
//! `pre` connects to the granted `target`, sends `LOCK <session-id>` and
//! expects `OK`; the connection stays open in the plugin's state. `post`
//! sends `UNLOCK` on that same connection and expects `OK`. If the instance
//! dies in between, the host closes the connection and the service drops the
//! lock by itself — the property a database session gives a real plugin.

use std::io::{BufRead, BufReader, Write};

use quiesce_plugin_sdk::{info, Connection, Context, Error, ErrorKind, HookResult, Info, Plugin, Snapshot};

const DEFAULT_TARGET: &str = "tcp:127.0.0.1:7390";

#[derive(Default)]
struct Lockd {
    conn: Option<BufReader<Connection>>,
}

/// Sends one request line and reads one reply line.
fn request(conn: &mut BufReader<Connection>, line: &str) -> Result<String, Error> {
    conn.get_mut().write_all(format!("{line}\n").as_bytes())?;
    let mut reply = String::new();
    if conn.read_line(&mut reply)? == 0 {
        return Err(Error::new(ErrorKind::Refused, format!("{}: closed the connection after {line:?}", conn.get_ref().target())));
    }
    Ok(reply.trim_end().to_owned())
}

impl Plugin for Lockd {
    fn describe() -> Info {
        Info::new("lockd", env!("CARGO_PKG_VERSION"))
            .quiesces("lockd: holds the service's write lock from pre to post")
            .grant(DEFAULT_TARGET)
            .param("target", "where lockd listens (tcp:HOST:PORT or unix:/path)", Some(DEFAULT_TARGET))
    }

    fn pre(&mut self, ctx: &Context) -> HookResult {
        let target = ctx.param_or("target", DEFAULT_TARGET);
        let mut conn = match Connection::open(target) {
            Ok(c) => BufReader::new(c),
            Err(e) => return e.into(),
        };
        match request(&mut conn, &format!("LOCK {}", ctx.session_id)) {
            Ok(r) if r == "OK" => {
                info!("locked {target} for session {}", ctx.session_id);
                self.conn = Some(conn);
                HookResult::ok(format!("lock held on {target}"))
            }
            Ok(r) => HookResult::retryable(format!("{target} answered {r:?} to LOCK")),
            Err(e) => e.into(),
        }
    }

    fn post(&mut self, _ctx: &Context, snapshot: &Snapshot) -> HookResult {
        let Some(mut conn) = self.conn.take() else {
            return HookResult::fatal("no lock held: pre did not lock");
        };
        let result = match request(&mut conn, "UNLOCK") {
            Ok(r) if r == "OK" => HookResult::ok(format!("unlocked after snapshot ({}, taken: {})", snapshot.label, snapshot.taken)),
            Ok(r) => HookResult::fatal(format!("answered {r:?} to UNLOCK")),
            Err(e) => HookResult::fatal(e.to_string()),
        };
        let _ = conn.get_mut().shutdown();
        result
    }
}

quiesce_plugin_sdk::register!(Lockd);
