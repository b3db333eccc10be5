//! quiesce plugin for Redis 6.2+ (primaries only).
//!
//! `pre` pauses writers with `CLIENT PAUSE <pause_ms> WRITE` — a pause that
//! **expires by itself**, so nothing the plugin or the host does wrong can
//! block the application for longer — and then makes the files on disk hold
//! exactly the paused state:
//! - AOF (`appendonly yes`): waits until `INFO persistence` shows
//!   `aof_buffer_length:0` and `aof_pending_bio_fsync:0` — every acknowledged
//!   write is in the AOF file (in the page cache). The host's freeze
//!   (FIFREEZE syncs the file system) makes it durable before the snapshot.
//!   This relies on the freeze: with freezing disabled, use `persist = "rdb"`.
//! - RDB only: `BGSAVE` *after* pausing, and waits for that save to finish.
//!
//! `post` sends `CLIENT UNPAUSE`.
//!
//! Unlike a database lock, a Redis pause is not tied to the connection: if
//! the plugin traps or times out or the host is killed, writers stay paused
//! until `pause_ms` runs out. Keep `pause_ms` just above the longest
//! pre → snapshot → post; `post` warns when the pause had already expired
//! (then writes acknowledged after the expiry may be in the snapshot).
//!
//! # Artifacts
//! `quiesce_times`: `paused=` (after the pause took effect) and `unpausing=`
//! (just before `CLIENT UNPAUSE`), ns since the Unix epoch from the server's
//! clock (`TIME`); `persistence`: what was made durable (`aof` or `rdb`, the
//! RDB save count).
//!
//! # Params
//! | param | default | meaning |
//! |---|---|---|
//! | `target` | `tcp:127.0.0.1:6379` | `tcp:HOST:PORT` or `unix:/path/redis.sock` |
//! | `user` | — | ACL user (`AUTH user password`); unset: `AUTH password` |
//! | `password_file` | — | file with the password on its first line (grant `file:PATH`); unset: no AUTH |
//! | `pause_ms` | the hook's per-call deadline | how long the pause may last at most |
//! | `persist` | `auto` | `auto` (AOF if enabled, else RDB), `aof`, `rdb` |
//! | `fault` | `none` | **fault injection for tests only**: `hang-after-lock` / `trap-after-lock` — pre sleeps past its deadline / panics while writers are paused |
//!
//! # Errors
//! Server down, `LOADING`, `BUSY`: *retryable*. `WRONGPASS`/`NOAUTH`, a
//! replica (`ROLE`), Redis older than 6.2, a failed AOF write or BGSAVE:
//! *fatal*. Every failure after the pause unpauses before returning.

use std::io;
use std::time::Duration;

mod check;

use quiesce_plugin_sdk::{
    artifacts, clock, files, info, warn, Connection, Context, Failure as Fail, Finding, HookResult, Info, Plugin, Snapshot,
};
use resp::{Client, Error as RError, Value};

const DEFAULT_TARGET: &str = "tcp:127.0.0.1:6379";
const POLL: Duration = Duration::from_millis(2);

struct Paused {
    client: Client<Connection>,
    paused_ns: u64,
    /// Monotonic time the pause was asked for, and for how long.
    since_mono_ns: u64,
    pause_ms: u64,
}

#[derive(Default)]
struct Redis {
    paused: Option<Paused>,
}

fn classify(target: &str, what: &str, e: RError) -> Fail {
    let msg = format!("redis at {target}: {what}: {e}");
    match (&e, e.kind()) {
        (RError::Io(io), _) if matches!(io.kind(), io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidInput) => Fail::Fatal(msg),
        (RError::Io(_), _) => Fail::Retry(msg),
        (_, Some("LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN")) => Fail::Retry(msg),
        (_, Some("WRONGPASS" | "NOAUTH" | "NOPERM")) => {
            Fail::Fatal(format!("{msg} (authentication refused: check `password_file`/`user`)"))
        }
        _ => Fail::Fatal(msg),
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

/// Fault injection for the host's fault tests: misbehave while writers are paused.
fn inject(f: Option<&str>) {
    match f {
        Some("hang") => loop {
            warn!("fault injection: hang-after-lock — sleeping with writers paused until the host kills this instance");
            clock::sleep(Duration::from_secs(3600));
        },
        Some(_) => panic!("fault injection: trap-after-lock"),
        None => {}
    }
}

/// `(major, minor)` of `7.0.15`.
fn version_of(v: &str) -> (u32, u32) {
    let mut it = v.trim().split('.').map(|s| s.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// The server's clock (`TIME`), ns since the Unix epoch.
fn server_now_ns(c: &mut Client<Connection>) -> Result<u64, RError> {
    match c.cmd(&["TIME"])? {
        Value::Array(v) if v.len() == 2 => {
            let n = |x: &Value| x.as_text().and_then(|s| s.parse::<u64>().ok());
            match (n(&v[0]), n(&v[1])) {
                (Some(s), Some(us)) => Ok(s * 1_000_000_000 + us * 1000),
                _ => Err(RError::Protocol(format!("TIME returned {v:?}"))),
            }
        }
        v => Err(RError::Protocol(format!("TIME returned {v:?}"))),
    }
}

fn store(name: &str, data: &[u8]) -> Result<(), Fail> {
    artifacts::store(name, data).map_err(|e| Fail::Fatal(format!("cannot hand artifact {name} to the host: {e}")))
}

fn connect(ctx: &Context, target: &str) -> Result<Client<Connection>, Fail> {
    let conn = Connection::open(target).map_err(|e| match HookResult::from(e.clone()) {
        HookResult::Retryable(_) => Fail::Retry(format!("redis at {target} is not reachable (server down?): {e}")),
        _ => Fail::Fatal(format!("redis at {target}: {e}")),
    })?;
    let mut c = Client::new(conn);
    if let Some(path) = ctx.param("password_file").filter(|p| !p.is_empty()) {
        let text =
            files::read_to_string(path).map_err(|e| Fail::Fatal(format!("password_file {path}: {e} (grant it as \"file:{path}\")")))?;
        let pw = resp::secret_from_file_contents(&text);
        match ctx.param("user").filter(|u| !u.is_empty()) {
            Some(u) => c.auth_user(u, pw),
            None => c.auth(pw),
        }
        .map_err(|e| classify(target, "AUTH", e))?;
    }
    Ok(c)
}

impl Redis {
    fn pause(&mut self, ctx: &Context) -> Result<String, Fail> {
        let target = ctx.param_or("target", DEFAULT_TARGET).to_string();
        let fault = fault(ctx)?;
        let pause_ms = match ctx.param("pause_ms") {
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| Fail::Fatal(format!("pause_ms = {v:?} is not a positive integer")))?,
            None => ctx.deadline.as_millis().max(1) as u64,
        };
        let mut c = connect(ctx, &target)?;
        let version = c.version().map_err(|e| classify(&target, "INFO server", e))?;
        if version_of(&version) < (6, 2) {
            return Err(Fail::Fatal(format!("redis at {target}: version {version} is too old, need 6.2 or later (CLIENT PAUSE … WRITE)")));
        }
        c.ensure_master().map_err(|e| classify(&target, "ROLE", e))?;
        let p = c.persistence().map_err(|e| classify(&target, "INFO persistence", e))?;
        if p.loading {
            return Err(Fail::Retry(format!("redis at {target} is still loading its data set")));
        }
        let aof = match ctx.param_or("persist", "auto") {
            "auto" => p.aof_enabled,
            "aof" if p.aof_enabled => true,
            "aof" => return Err(Fail::Fatal(format!("persist = \"aof\" but redis at {target} has appendonly no"))),
            "rdb" => false,
            m => return Err(Fail::Fatal(format!("unknown persist {m:?} (auto, aof, rdb)"))),
        };

        let since_mono_ns = clock::now_ns();
        c.client_pause(pause_ms, true).map_err(|e| classify(&target, "CLIENT PAUSE", e))?;
        // From here on every failure must unpause.
        let result = (|| {
            let paused_ns = server_now_ns(&mut c).map_err(|e| classify(&target, "TIME", e))?;
            let budget = Duration::from_millis(pause_ms).min(ctx.deadline).mul_f64(0.8);
            let what = if aof {
                c.wait_aof_written(budget, POLL).map_err(|e| classify(&target, "waiting for the AOF write", e))?;
                "aof: every acknowledged write is in the AOF file".to_string()
            } else {
                let p = c.bgsave_and_wait(budget, POLL).map_err(|e| classify(&target, "BGSAVE", e))?;
                format!("rdb: BGSAVE done (rdb_saves {})", p.rdb_saves.map(|n| n.to_string()).unwrap_or_else(|| "?".into()))
            };
            store("persistence", format!("{what}\n").as_bytes())?;
            Ok((paused_ns, what))
        })();
        match result {
            Ok((paused_ns, what)) => {
                info!("writers paused at {target} for at most {pause_ms} ms; {what}");
                self.paused = Some(Paused { client: c, paused_ns, since_mono_ns, pause_ms });
                inject(fault);
                Ok(format!("writers paused (at most {pause_ms} ms) on redis {version} at {target}; {what}"))
            }
            Err(f) => {
                if let Err(e) = c.client_unpause() {
                    warn!("CLIENT UNPAUSE after a failed pre: {e}; the pause ends by itself within {pause_ms} ms");
                }
                Err(f)
            }
        }
    }
}

impl Plugin for Redis {
    fn describe() -> Info {
        Info::new("redis", env!("CARGO_PKG_VERSION"))
            .quiesces("Redis 6.2+: CLIENT PAUSE WRITE (self-expiring) from pre to post, the AOF written or a BGSAVE done under the pause")
            .grant(DEFAULT_TARGET)
            .param("target", "tcp:HOST:PORT or unix:/path/redis.sock (must be granted)", Some(DEFAULT_TARGET))
            .param("user", "ACL user for AUTH (unset: the default user)", Some("(unset)"))
            .param("password_file", "file with the password on its first line (grant file:PATH); unset: no AUTH", Some("(unset)"))
            .param("pause_ms", "longest the write pause may last (it expires by itself)", Some("the hook's deadline"))
            .param("persist", "auto (AOF if enabled, else RDB), aof, or rdb", Some("auto"))
            .param("fault", "TESTS ONLY: hang-after-lock or trap-after-lock", Some("none"))
    }

    fn pre(&mut self, ctx: &Context) -> HookResult {
        self.paused = None;
        self.pause(ctx).into()
    }

    fn post(&mut self, ctx: &Context, snapshot: &Snapshot) -> HookResult {
        let Some(mut p) = self.paused.take() else {
            return HookResult::ok("writers not paused (pre did not pause them): nothing to release");
        };
        let target = ctx.param_or("target", DEFAULT_TARGET).to_string();
        let held_ms = clock::now_ns().saturating_sub(p.since_mono_ns) / 1_000_000;
        let unpausing = server_now_ns(&mut p.client);
        let r = p.client.client_unpause();
        if let Ok(u) = unpausing {
            if let Err(Fail::Fatal(m) | Fail::Retry(m)) =
                store("quiesce_times", format!("paused={}\nunpausing={u}\n", p.paused_ns).as_bytes())
            {
                warn!("{m}");
            }
        }
        let expired = held_ms >= p.pause_ms;
        if expired {
            warn!(
                "the pause ({} ms) had expired before post ({held_ms} ms): writes acknowledged after it may be in the snapshot",
                p.pause_ms
            );
            // Whatever UNPAUSE answered, the pause was over: the quiesce did
            // not hold through the snapshot, and the label must say so.
            return HookResult::not_held(format!(
                "the {} ms write pause expired {} ms before post, so the snapshot may hold writes made after it; raise pause_ms                  above the longest pre → snapshot → post (snapshot taken: {})",
                p.pause_ms,
                held_ms - p.pause_ms,
                snapshot.taken
            ));
        }
        match r {
            Ok(()) => HookResult::ok(format!("unpaused after {held_ms} ms (snapshot taken: {}, {})", snapshot.taken, snapshot.label)),
            Err(e) => {
                HookResult::fatal(format!("redis at {target}: CLIENT UNPAUSE: {e}; the pause ends by itself within {} ms", p.pause_ms))
            }
        }
    }

    fn check(&mut self, ctx: &Context) -> Vec<Finding> {
        check::check(ctx)
    }
}

quiesce_plugin_sdk::register!(Redis);
