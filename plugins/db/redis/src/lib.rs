//! quiesce plugin for Redis 6.2+ (primaries only).
//!
//! What a snapshot of Redis' files restores, per persistence mode, and the
//! least writer stall that gets it:
//! - AOF on (`appendonly yes`; Redis loads the AOF at start): `pre` pauses
//!   writers with `CLIENT PAUSE <pause_ms> WRITE` — a pause that **expires by
//!   itself**, so nothing the plugin or the host does wrong can block the
//!   application for longer — and, in the same round trip, reads the time and
//!   `INFO persistence`; it returns once `aof_buffer_length:0` and
//!   `aof_pending_bio_fsync:0` show every acknowledged write in the AOF file
//!   (in the page cache). The host's freeze (FIFREEZE syncs the file system)
//!   makes it durable before the snapshot; with freezing disabled, use
//!   `persist = "rdb"`. `post` unpauses first thing (`TIME` and
//!   `CLIENT UNPAUSE` in one round trip) and only then stores the artifacts.
//!   The snapshot holds exactly the paused state.
//! - RDB only (`appendonly no`): `pre` starts a `BGSAVE` of its own (a save
//!   or AOF rewrite already running is waited out first: it forked earlier)
//!   and waits until it is on disk (`rdb_bgsave_in_progress:0`,
//!   `rdb_last_bgsave_status:ok`, no newer save counted), so the freeze
//!   comes after a complete `dump.rdb`. **Writers are not paused**: Redis
//!   forks inside the `BGSAVE` command, and the child writes the data set as
//!   of that fork whatever the parent does next. The snapshot's Redis is the
//!   data set at the fork — bracketed by `TIME` before and after `BGSAVE`,
//!   sent in one round trip (`fork_after`, `fork_before`) — not at the
//!   freeze: writes acknowledged after the fork (during the save's last
//!   write-out, the freeze and the snapshot) are not in it, as they would
//!   not be after a crash of an RDB-only Redis. `post` has nothing to
//!   release; it says when a newer save (a `save` rule, another client's
//!   BGSAVE) started after pre's, so that dump.rdb may be a later one.
//! - `persist = "rdb"` with the AOF on: as AOF (paused until post, since the
//!   AOF in the snapshot is what Redis loads), plus a BGSAVE under the pause.
//!
//! Unlike a database lock, a Redis pause is not tied to the connection: if
//! the plugin traps or times out or the host is killed, writers stay paused
//! until `pause_ms` runs out. Keep `pause_ms` just above the longest
//! pre → snapshot → post; `post` says the quiesce did not hold (the label
//! drops to file-system-consistent) when the pause had already expired.
//!
//! # Artifacts
//! `quiesce_times`, ns since the Unix epoch from the server's clock
//! (`TIME`): with the pause, `paused=` (right after it took effect) and
//! `unpausing=` (right before `CLIENT UNPAUSE`), and where the pause went on
//! the plugin's side (monotonic clock): `pre_tail_ns=` (from the pause's
//! reply to pre's return) and `post_head_ns=` (from post's call to sending
//! the unpause); the rest is the host's. RDB only, `fork_after=` and
//! `fork_before=` (the RDB holds every write Redis ran before the first and
//! none it ran after the second). `persistence`: what was made durable
//! (`aof` or `rdb`, the RDB save count).
//!
//! # Params
//! | param | default | meaning |
//! |---|---|---|
//! | `target` | `tcp:127.0.0.1:6379` | `tcp:HOST:PORT` or `unix:/path/redis.sock` |
//! | `user` | — | ACL user (`AUTH user password`); unset: `AUTH password` |
//! | `password_file` | — | file with the password on its first line (grant `file:PATH`); unset: no AUTH |
//! | `pause_ms` | the hook's per-call deadline | how long the pause may last at most (AOF on) |
//! | `persist` | `auto` | `auto` (AOF if enabled, else RDB), `aof`, `rdb` |
//! | `fault` | `none` | **fault injection for tests only**: `hang-after-lock` / `trap-after-lock` — pre sleeps past its deadline / panics at its end (with writers paused, when it pauses them) |
//!
//! # Errors
//! Server down, `LOADING`, `BUSY`: *retryable*. `WRONGPASS`/`NOAUTH`, a
//! replica (`ROLE`), Redis older than 6.2, a failed AOF write or BGSAVE, a
//! save that did not finish within 80 % of the deadline: *fatal*. Every
//! failure after the pause unpauses before returning.

use std::io;
use std::time::Duration;

mod check;

use quiesce_plugin_sdk::{
    artifacts, clock, files, info, warn, Connection, Context, Failure as Fail, Finding, HookResult, Info, Plugin, Snapshot,
};
use resp::{Client, Error as RError, Fork, Persistence};

const DEFAULT_TARGET: &str = "tcp:127.0.0.1:6379";
/// Between looks at the AOF while writers wait.
const POLL: Duration = Duration::from_millis(2);
/// Between looks at a running BGSAVE (writers do not wait; Redis notices the
/// save's end only at its next `serverCron` tick, 100 ms apart by default).
const SAVE_POLL: Duration = Duration::from_millis(10);

/// AOF on: writers paused from pre to post.
struct Paused {
    client: Client<Connection>,
    paused_ns: u64,
    /// Monotonic time the pause was asked for, and for how long.
    since_mono_ns: u64,
    /// Monotonic: the pause's reply came / pre returned (its tail under the pause).
    replied_mono_ns: u64,
    pre_end_mono_ns: u64,
    pause_ms: u64,
    /// What pre made durable (the `persistence` artifact, stored by post).
    what: String,
}

/// What pre left for post.
enum Held {
    Paused(Paused),
    /// RDB only: a finished BGSAVE, writers never paused; the connection
    /// stays so that post can tell whether a newer save replaced it.
    Saved {
        client: Client<Connection>,
        fork: Fork,
    },
}

#[derive(Default)]
struct Redis {
    held: Option<Held>,
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

/// Fault injection for the host's fault tests: misbehave at the end of pre (writers paused, when pre pauses them).
fn inject(f: Option<&str>) {
    match f {
        Some("hang") => loop {
            warn!("fault injection: hang-after-lock — sleeping (writers paused, when pre paused them) until the host kills this instance");
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

/// `pause_ms`, by default the hook's deadline.
fn pause_ms(ctx: &Context) -> Result<u64, Fail> {
    match ctx.param("pause_ms") {
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| Fail::Fatal(format!("pause_ms = {v:?} is not a positive integer"))),
        None => Ok(ctx.deadline.as_millis().max(1) as u64),
    }
}

/// ns → ms, for messages.
fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl Redis {
    fn quiesce(&mut self, ctx: &Context) -> Result<String, Fail> {
        let target = ctx.param_or("target", DEFAULT_TARGET).to_string();
        let fault = fault(ctx)?;
        let pause_ms = pause_ms(ctx)?;
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
        // With the AOF on, the AOF is in the snapshot and Redis loads it
        // first: writers stay paused until post, whatever pre saves. With
        // it off, dump.rdb is all there is, and a BGSAVE's RDB is the data
        // set at its fork whatever writers do afterwards: no pause at all.
        let msg = if p.aof_enabled { self.pause(ctx, c, &target, pause_ms, aof)? } else { self.save(ctx, c, &target)? };
        inject(fault);
        Ok(format!("{msg} (redis {version} at {target})"))
    }

    /// RDB only: our own BGSAVE, waited for; writers are never paused.
    fn save(&mut self, ctx: &Context, mut c: Client<Connection>, target: &str) -> Result<String, Fail> {
        let budget = ctx.deadline.mul_f64(0.8);
        let t0 = clock::now_ns();
        let fork = c.bgsave(budget, SAVE_POLL).map_err(|e| classify(target, "BGSAVE", e))?;
        let waited = Duration::from_nanos(clock::now_ns().saturating_sub(t0));
        let p =
            c.wait_bgsave(&fork, budget.saturating_sub(waited), SAVE_POLL).map_err(|e| classify(target, "waiting for the BGSAVE", e))?;
        let done_ms = ms(clock::now_ns().saturating_sub(t0));
        let saves = p.rdb_saves.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
        let what = format!(
            "rdb: BGSAVE done (rdb_saves {saves}); dump.rdb holds the data set at its fork, between fork_after and fork_before \
             (server clock); writers were not paused, so writes after the fork are not in the snapshot"
        );
        artifacts::keep("persistence", format!("{what}\n").as_bytes())?;
        artifacts::keep_times(&[("fork_after", fork.after_ns), ("fork_before", fork.before_ns)])?;
        self.held = Some(Held::Saved { client: c, fork });
        Ok(format!(
            "RDB saved: BGSAVE forked within {:.2} ms and was on disk {done_ms:.1} ms after it was asked for (rdb_saves {saves}); \
             writers were not paused",
            ms(fork.before_ns.saturating_sub(fork.after_ns))
        ))
    }

    /// AOF on: pause writers until post, and make the files hold the paused state.
    fn pause(&mut self, ctx: &Context, mut c: Client<Connection>, target: &str, pause_ms: u64, aof: bool) -> Result<String, Fail> {
        info!("pausing writers at {target} for at most {pause_ms} ms");
        let since_mono_ns = clock::now_ns();
        // Pause, the time, and a first look at the AOF in one round trip:
        // writers wait from here on.
        let ms_text = pause_ms.to_string();
        let mut replies = match c.pipeline(&[&["CLIENT", "PAUSE", &ms_text, "WRITE"], &["TIME"], &["INFO", "persistence"]]) {
            Ok(r) => r.into_iter(),
            Err(e) => {
                // Sent, so perhaps in effect: release it if the connection still can.
                if let Err(u) = c.client_unpause() {
                    warn!("CLIENT UNPAUSE after a failed CLIENT PAUSE: {u}; a pause, if any, ends by itself within {pause_ms} ms");
                }
                return Err(classify(target, "CLIENT PAUSE", e));
            }
        };
        let mut next = || replies.next().unwrap_or_else(|| Err(RError::Protocol("pipeline lost a reply".into())));
        // Refused: nothing is paused (and UNPAUSE could end someone else's pause).
        resp::ok_reply("CLIENT PAUSE", next()).map_err(|e| classify(target, "CLIENT PAUSE", e))?;
        let (time, info) = (next(), next());
        let replied_mono_ns = clock::now_ns();
        // From here on every failure must unpause.
        let result = (|| {
            let paused_ns = time.and_then(resp::time_ns_of).map_err(|e| classify(target, "TIME", e))?;
            let budget = Duration::from_millis(pause_ms).min(ctx.deadline).mul_f64(0.8);
            let what = if aof {
                let first = info.map(|v| Persistence::from_info(&v.as_text().unwrap_or_default()));
                let written = first.and_then(|p| resp::aof_written(&p)).map_err(|e| classify(target, "INFO persistence", e))?;
                // In the same pipeline as the PAUSE, INFO may see writes
                // Redis ran just before it but writes to the AOF only before
                // it next sleeps: look again (at once, then every POLL).
                if !written {
                    c.wait_aof_written(budget, POLL).map_err(|e| classify(target, "waiting for the AOF write", e))?;
                }
                "aof: every acknowledged write is in the AOF file".to_string()
            } else {
                let p = c.bgsave_and_wait(budget, POLL).map_err(|e| classify(target, "BGSAVE", e))?;
                format!("rdb: BGSAVE done under the pause (rdb_saves {})", p.rdb_saves.map(|n| n.to_string()).unwrap_or_else(|| "?".into()))
            };
            Ok((paused_ns, what))
        })();
        match result {
            Ok((paused_ns, what)) => {
                let msg = format!("writers paused (at most {pause_ms} ms); {what}");
                let pre_end_mono_ns = clock::now_ns();
                self.held =
                    Some(Held::Paused(Paused { client: c, paused_ns, since_mono_ns, replied_mono_ns, pre_end_mono_ns, pause_ms, what }));
                Ok(msg)
            }
            Err(f) => {
                if let Err(e) = c.client_unpause() {
                    warn!("CLIENT UNPAUSE after a failed pre: {e}; the pause ends by itself within {pause_ms} ms");
                }
                Err(f)
            }
        }
    }

    /// AOF on: unpause first — writers wait until then — and only then
    /// look back.
    fn unpause(ctx: &Context, snapshot: &Snapshot, mut p: Paused) -> HookResult {
        let post_mono_ns = clock::now_ns();
        let held_ms = post_mono_ns.saturating_sub(p.since_mono_ns) / 1_000_000;
        // TIME and UNPAUSE in one round trip: `unpausing` is the server's
        // clock right before the unpause.
        let sending_mono_ns = clock::now_ns();
        let replies = p.client.pipeline(&[&["TIME"], &["CLIENT", "UNPAUSE"]]);
        let (unpausing, r) = match replies {
            Ok(v) => {
                let mut v = v.into_iter();
                let time = v.next().unwrap_or_else(|| Err(RError::Protocol("no reply".into())));
                let unpause = resp::ok_reply("CLIENT UNPAUSE", v.next().unwrap_or_else(|| Err(RError::Protocol("no reply".into()))));
                (time.and_then(resp::time_ns_of), unpause)
            }
            Err(e) => (Err(RError::Protocol("no TIME".into())), Err(e)),
        };
        let target = ctx.param_or("target", DEFAULT_TARGET);
        if let Ok(u) = unpausing {
            let times = [
                ("paused", p.paused_ns),
                ("unpausing", u),
                ("pre_tail_ns", p.pre_end_mono_ns.saturating_sub(p.replied_mono_ns)),
                ("post_head_ns", sending_mono_ns.saturating_sub(post_mono_ns)),
            ];
            if let Err(f) = artifacts::keep_times(&times) {
                warn!("{}", f.into_message());
            }
        }
        if let Err(f) = artifacts::keep("persistence", format!("{}\n", p.what).as_bytes()) {
            warn!("{}", f.into_message());
        }
        if held_ms >= p.pause_ms {
            warn!(
                "the pause ({} ms) had expired before post ({held_ms} ms): writes acknowledged after it may be in the snapshot",
                p.pause_ms
            );
            // Whatever UNPAUSE answered, the pause was over: the quiesce did
            // not hold through the snapshot, and the label must say so.
            return HookResult::not_held(format!(
                "the {} ms write pause expired {} ms before post, so the snapshot may hold writes made after it; raise pause_ms \
                 above the longest pre → snapshot → post (snapshot taken: {})",
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

    /// RDB only: nothing to release; says whether a newer save (a `save`
    /// rule, another client's BGSAVE) may have replaced pre's dump.rdb
    /// before the snapshot — a complete RDB either way, but a later one.
    fn after_save(snapshot: &Snapshot, mut client: Client<Connection>, fork: Fork) -> HookResult {
        let later = client.persistence().ok().and_then(|p| p.rdb_saves?.checked_sub(fork.saves?));
        match later {
            Some(n) if n > 0 => {
                warn!("{n} RDB save(s) started after pre's: the snapshot may hold a later dump.rdb than fork_before says");
                HookResult::ok(format!(
                    "nothing to release (writers were not paused); {n} more RDB save(s) started after pre's (a `save` rule or \
                     another client's BGSAVE), so the snapshot holds pre's dump.rdb or a later one — complete either way \
                     (snapshot taken: {})",
                    snapshot.taken
                ))
            }
            _ => HookResult::ok(format!(
                "nothing to release (writers were not paused; the snapshot holds pre's BGSAVE) (snapshot taken: {}, {})",
                snapshot.taken, snapshot.label
            )),
        }
    }
}

impl Plugin for Redis {
    fn describe() -> Info {
        Info::new("redis", env!("CARGO_PKG_VERSION"))
            .quiesces(
                "Redis 6.2+: with AOF, CLIENT PAUSE WRITE (self-expiring) from pre to post once every acknowledged write is in \
                 the AOF; RDB only, a BGSAVE finished in pre (the snapshot holds the data set at its fork), writers never paused",
            )
            .grant(DEFAULT_TARGET)
            .param("target", "tcp:HOST:PORT or unix:/path/redis.sock (must be granted)", Some(DEFAULT_TARGET))
            .param("user", "ACL user for AUTH (unset: the default user)", Some("(unset)"))
            .param("password_file", "file with the password on its first line (grant file:PATH); unset: no AUTH", Some("(unset)"))
            .param("pause_ms", "longest the write pause may last (it expires by itself; AOF on only)", Some("the hook's deadline"))
            .param("persist", "auto (AOF if enabled, else RDB), aof, or rdb", Some("auto"))
            .param("fault", "TESTS ONLY: hang-after-lock or trap-after-lock", Some("none"))
    }

    fn pre(&mut self, ctx: &Context) -> HookResult {
        self.held = None;
        self.quiesce(ctx).into()
    }

    fn post(&mut self, ctx: &Context, snapshot: &Snapshot) -> HookResult {
        match self.held.take() {
            Some(Held::Paused(p)) => Redis::unpause(ctx, snapshot, p),
            Some(Held::Saved { client, fork }) => Redis::after_save(snapshot, client, fork),
            None => HookResult::ok("nothing to release (pre did not finish)"),
        }
    }

    fn check(&mut self, ctx: &Context) -> Vec<Finding> {
        check::check(ctx)
    }
}

quiesce_plugin_sdk::register!(Redis);
