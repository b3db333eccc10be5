//! How long a snapshot stalls a database's writers.
//!
//! Same rig as the restore tests (an ext4 disk image on reflink XFS, the
//! snapshot a `cp --reflink=always` of it while quiesce has the disk frozen),
//! one writer committing numbered rows as fast as the server acknowledges.
//! For each database and method, 5 sessions (`DB_STALL_ROUNDS=N` for more); the stall of a session is
//! the longest gap between two acknowledgements overlapping the session.
//!
//! Methods:
//! - (a) legacy: the shell-script pair admins use today (`quiesce_tests::legacy`):
//!   PostgreSQL `pg_backup_start/stop` on a background psql, MariaDB
//!   `FLUSH TABLES WITH READ LOCK` on a background client, Redis (RDB)
//!   `CLIENT PAUSE WRITE` + `BGSAVE`, Redis (AOF) `CLIENT PAUSE WRITE` + wait
//!   for `aof_buffer_length:0`; locks held by a background client are released
//!   through a FIFO;
//! - (b) freeze only: no hooks;
//! - (c) the WASM plugin (`plugins/db/*`): PostgreSQL both `mode`s (`backup`,
//!   what (a) does, and the default `checkpoint`), MariaDB both `method`s (`backup-stage`, `ftwrl`) — the
//!   measurement behind the plugin's default — Redis with its default
//!   `persist = "auto"`.
//!
//! Also printed: the freeze window quiesce reported, and the writer's
//! baseline (the longest gap over an equally long stretch without a session).
//! Needs root; `cargo bench -p quiesce-tests --bench db_stall [-- pg|my|redis|redis-aof]`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quiesce_tests::db::*;
use quiesce_tests::legacy;
use quiesce_tests::restore::Stage;

/// Sessions per method (`DB_STALL_ROUNDS` overrides, for a steadier median on a noisy machine).
fn rounds() -> usize {
    std::env::var("DB_STALL_ROUNDS").ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0).unwrap_or(5)
}
const PAUSE_BETWEEN: Duration = Duration::from_millis(400);

struct Sample {
    stall: Duration,
    window_ms: f64,
    /// The kernel's FIFREEZE and FITHAW, and quiesce's own time in the
    /// window (`freeze.host_ms`: the snapshot command's start and end).
    fifreeze_ms: f64,
    fithaw_ms: f64,
    host_ms: f64,
    /// The pre hooks' time (the freeze waits for it).
    pre_ms: f64,
    session: Duration,
    /// Where the hold of the plugin's lock (or pause) went, when it reports
    /// one (`quiesce_times`): see [`Breakdown`].
    breakdown: Option<Breakdown>,
    /// The stall's gap: the acknowledgements before and after it (ns).
    gap: (u64, u64),
    /// The snapshot command's start and end (ns), to place the gap.
    snap: (u64, u64),
    /// PostgreSQL backup mode: `pg_backup_stop`'s call and return (server
    /// clock, ns) — it switches WAL segments right after the thaw.
    backup_stop: Option<(u64, u64)>,
}

impl Sample {
    /// How long before the snapshot command's start the writer's gap began.
    fn gap_lead_ms(&self) -> f64 {
        (self.snap.0 as f64 - self.gap.0 as f64) / 1e6
    }
    /// How long after the snapshot command's end the writer's gap ended.
    fn gap_tail_ms(&self) -> f64 {
        (self.gap.1 as f64 - self.snap.1 as f64) / 1e6
    }
}

/// The plugin's lock, from `locked`/`paused` to `releasing`/`unpausing`
/// (server clock), against the snapshot command's start and end (`date`,
/// same machine): lock → snapshot start is the tail of pre, the pre-freeze
/// syncfs, the guardian start and FIFREEZE; snapshot end → release is
/// FITHAW and the post call up to the release.
#[derive(Clone, Copy)]
struct Breakdown {
    held_ms: f64,
    to_snapshot_ms: f64,
    snapshot_ms: f64,
    to_release_ms: f64,
    sync_ms: f64,
    pre_ms: f64,
    post_ms: f64,
    /// The plugin's own share of the hold, when it reports it (Redis:
    /// `pre_tail_ns`, `post_head_ns`): from the lock's reply to pre's
    /// return, from post's call to sending the release.
    pre_tail_ms: f64,
    post_head_ms: f64,
    /// The blocking statement itself (MariaDB: `block_ns`, BLOCK_COMMIT or
    /// FTWRL): writers may wait from its start.
    block_ms: f64,
    /// The lock's ends (server clock, ns), to place the writer's gap.
    locked_ns: u64,
    released_ns: u64,
    /// The writer's stall before the lock was reported taken (the lock
    /// statement itself), and after the release was about to be sent (the
    /// release and the first commit after it); filled in by [`measure`].
    gap_before_lock_ms: f64,
    gap_after_release_ms: f64,
}

fn breakdown(run: &quiesce_tests::Run, t: quiesce_tests::restore::SnapTimes) -> Option<Breakdown> {
    let times = run.times("db")?;
    let get = |keys: &[&str]| keys.iter().find_map(|k| times.get(*k).copied());
    let (from, to) = (get(&["locked", "paused"])?, get(&["releasing", "unpausing"])?);
    let ms = |a: u64, b: u64| (b as f64 - a as f64) / 1e6;
    let hook_ms = |phase: &str| run.hook("db", phase)["duration_ms"].as_f64().unwrap_or(f64::NAN);
    Some(Breakdown {
        held_ms: ms(from, to),
        to_snapshot_ms: ms(from, t.start_ns),
        snapshot_ms: ms(t.start_ns, t.end_ns),
        to_release_ms: ms(t.end_ns, to),
        sync_ms: run.report["freeze"]["mounts"][0]["sync_ms"].as_f64().unwrap_or(f64::NAN),
        pre_ms: hook_ms("pre"),
        post_ms: hook_ms("post"),
        pre_tail_ms: get(&["pre_tail_ns"]).map(|n| n as f64 / 1e6).unwrap_or(f64::NAN),
        post_head_ms: get(&["post_head_ns"]).map(|n| n as f64 / 1e6).unwrap_or(f64::NAN),
        block_ms: get(&["block_ns"]).map(|n| n as f64 / 1e6).unwrap_or(f64::NAN),
        locked_ns: from,
        released_ns: to,
        gap_before_lock_ms: f64::NAN,
        gap_after_release_ms: f64::NAN,
    })
}

fn backup_stop(run: &quiesce_tests::Run) -> Option<(u64, u64)> {
    let times = run.times("db")?;
    Some((*times.get("stop_called")?, *times.get("stop_returned")?))
}

struct Row {
    db: &'static str,
    method: String,
    samples: Vec<Sample>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

impl Row {
    fn stall_ms(&self) -> f64 {
        median(self.samples.iter().map(|s| s.stall.as_secs_f64() * 1e3).collect())
    }
    fn max_stall_ms(&self) -> f64 {
        self.samples.iter().map(|s| s.stall.as_secs_f64() * 1e3).fold(0.0, f64::max)
    }
    fn window_ms(&self) -> f64 {
        median(self.samples.iter().map(|s| s.window_ms).collect())
    }
    fn med(&self, f: fn(&Sample) -> f64) -> f64 {
        median(self.samples.iter().map(f).collect())
    }
    fn pre_ms(&self) -> f64 {
        median(self.samples.iter().map(|s| s.pre_ms).collect())
    }
    fn session_ms(&self) -> f64 {
        median(self.samples.iter().map(|s| s.session.as_secs_f64() * 1e3).collect())
    }
    /// Median of one breakdown field, if the plugin reported its lock.
    fn part(&self, f: fn(&Breakdown) -> f64) -> Option<f64> {
        let v: Vec<f64> = self.samples.iter().filter_map(|s| s.breakdown.as_ref().map(f)).collect();
        (!v.is_empty()).then(|| median(v))
    }
}

/// Runs [`rounds`] sessions with `config` under `writer`; returns the samples and the baseline gap.
fn measure(st: &Stage, mut writer: Writer, config: &Path, baseline: &mut Vec<Duration>) -> Vec<Sample> {
    writer.wait_for(200, Duration::from_secs(60));
    // Each session's sample, its stall filled in once the writer's log is in.
    let mut samples = Vec::new();
    let mut spans = Vec::new();
    let mut quiet = Vec::new();
    for _ in 0..rounds() {
        let q0 = now_ns();
        std::thread::sleep(PAUSE_BETWEEN);
        let t0 = now_ns();
        quiet.push((q0, t0));
        let started = Instant::now();
        let (run, times) = st.snapshot(config);
        spans.push((t0, now_ns()));
        let freeze = &run.report["freeze"];
        let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
        let hooks = run.report["hooks"].as_array().cloned().unwrap_or_default();
        samples.push(Sample {
            stall: Duration::ZERO,
            window_ms: freeze["window_ms"].as_f64().unwrap_or(0.0),
            fifreeze_ms: f(&freeze["mounts"][0]["freeze_ms"]),
            fithaw_ms: f(&freeze["mounts"][0]["thaw_ms"]),
            host_ms: f(&freeze["host_ms"]),
            pre_ms: hooks.iter().filter(|h| h["phase"] == "pre").filter_map(|h| h["duration_ms"].as_f64()).fold(0.0, |a, b| a + b),
            session: started.elapsed(),
            breakdown: breakdown(&run, times),
            gap: (0, 0),
            snap: (times.start_ns, times.end_ns),
            backup_stop: backup_stop(&run),
        });
    }
    std::thread::sleep(PAUSE_BETWEEN);
    let log = writer.stop();
    assert!(log.error.is_none(), "writer failed: {:?}", log.error);
    baseline.extend(quiet.iter().map(|&(a, b)| log.max_gap_between(a + 50_000_000, b)));
    for (s, &(a, b)) in samples.iter_mut().zip(&spans) {
        s.gap = log.max_gap_span_between(a, b);
        s.stall = Duration::from_nanos(s.gap.1 - s.gap.0);
        if let Some(b) = s.breakdown.as_mut() {
            b.gap_before_lock_ms = (b.locked_ns as f64 - s.gap.0 as f64) / 1e6;
            b.gap_after_release_ms = (s.gap.1 as f64 - b.released_ns as f64) / 1e6;
        }
    }
    samples
}

fn bench_db<D>(
    db: &'static str,
    start: impl Fn(&Stage) -> D,
    writer: impl Fn(&D) -> Writer,
    clear: impl Fn(&D),
    legacy: impl Fn(&D, &Stage) -> legacy::Pair,
    plugin: impl Fn(&D, &Stage) -> Vec<(String, PathBuf)>,
) -> (Vec<Row>, f64) {
    // Each writer numbers from 1: start it on an empty table.
    let writer = |d: &D| {
        clear(d);
        writer(d)
    };
    let st = Stage::new(&format!("bench-{db}"));
    let server = start(&st);
    let mut baseline = Vec::new();
    let mut rows = Vec::new();

    let config = st.legacy_pair(&legacy(&server, &st));
    rows.push(Row { db, method: "(a) legacy script pair".into(), samples: measure(&st, writer(&server), &config, &mut baseline) });

    let config = st.native_config(true);
    rows.push(Row { db, method: "(b) freeze only".into(), samples: measure(&st, writer(&server), &config, &mut baseline) });

    // (c) the WASM plugin(s), same load, same rig.
    for (method, config) in plugin(&server, &st) {
        rows.push(Row { db, method: method.clone(), samples: measure(&st, writer(&server), &config, &mut baseline) });
    }

    let base = median(baseline.iter().map(|d| d.as_secs_f64() * 1e3).collect());
    drop(server);
    (rows, base)
}

/// One plugin config per value of its `key` param (a mode or method), each a
/// method of its own in the table.
fn plugin_per_choice(
    st: &Stage,
    plugin: &str,
    params: &[(&str, String)],
    grants: &[String],
    key: &str,
    choices: &[&str],
) -> Vec<(String, PathBuf)> {
    choices
        .iter()
        .map(|c| {
            let mut params = params.to_vec();
            params.push((key, c.to_string()));
            let cfg = st.plugin_config(plugin, &params, grants, "");
            // One config file per choice: plugin_config writes plugin.toml.
            let path = st.file(&format!("plugin-{c}.toml"));
            std::fs::copy(&cfg, &path).unwrap();
            (format!("(c) wasm plugin ({c})"), path)
        })
        .collect()
}

fn redis_plugin(r: &Redis, st: &Stage) -> Vec<(String, PathBuf)> {
    let target = format!("tcp:127.0.0.1:{}", r.port);
    let pw = r.password_file.display().to_string();
    let params = [("target", target.clone()), ("password_file", pw.clone())];
    vec![("(c) wasm plugin".into(), st.plugin_config("quiesce_redis", &params, &[target, format!("file:{pw}")], ""))]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let want = |db: &str| args.is_empty() || args.iter().any(|a| a == db);
    let mut all = Vec::new();
    if want("pg") {
        all.push(bench_db(
            "postgres",
            |st| Postgres::start_with(st.rig.inner(), PgOptions { archive: true, ..Default::default() }),
            Writer::postgres,
            Postgres::clear_rows,
            |pg, st| legacy::pg_backup_fifo(pg, &st.file("hook")),
            |pg, st| {
                let target = format!("tcp:127.0.0.1:{}", pg.port);
                let pw = pg.password_file.display().to_string();
                let params = [("target", target.clone()), ("password_file", pw.clone())];
                plugin_per_choice(st, "quiesce_postgres", &params, &[target, format!("file:{pw}")], "mode", &["backup", "checkpoint"])
            },
        ));
    }
    if want("my") {
        all.push(bench_db(
            "mariadb",
            |st| MariaDb::start(st.rig.inner()),
            Writer::mariadb,
            MariaDb::clear_rows,
            |my, st| legacy::mariadb_ftwrl_fifo(my, &st.file("hook")),
            |my, st| {
                let target = format!("unix:{}", my.socket.display());
                plugin_per_choice(
                    st,
                    "quiesce_mariadb",
                    &[("target", target.clone())],
                    std::slice::from_ref(&target),
                    "method",
                    &["backup-stage", "ftwrl"],
                )
            },
        ));
    }
    if want("redis-aof") {
        all.push(bench_db(
            "redis-aof",
            |st| Redis::start(st.rig.inner(), true),
            Writer::redis,
            Redis::clear_rows,
            |r, st| legacy::redis_pause_aof(r, &st.file("hook")),
            redis_plugin,
        ));
    }
    if want("redis") {
        all.push(bench_db(
            "redis",
            |st| Redis::start(st.rig.inner(), false),
            Writer::redis,
            Redis::clear_rows,
            |r, st| legacy::redis_pause_bgsave(r, &st.file("hook")),
            redis_plugin,
        ));
    }

    println!("\nwriter stall per snapshot session, median of {} (max in brackets); ratio = stall / freeze-only stall", rounds());
    println!(
        "{:<10} {:<30} {:>18} {:>8} {:>14} {:>9} {:>8} {:>8} {:>9} {:>12} {:>9} {:>9}",
        "database",
        "method",
        "stall ms",
        "ratio",
        "freeze win ms",
        "FIFREEZE",
        "FITHAW",
        "host ms",
        "pre ms",
        "session ms",
        "gap lead",
        "gap tail"
    );
    for (rows, base) in &all {
        let freeze = rows.iter().find(|r| r.method.starts_with("(b)")).map(Row::stall_ms).unwrap_or(f64::NAN);
        for r in rows {
            println!(
                "{:<10} {:<30} {:>9.1} [{:>6.1}] {:>8.2} {:>14.1} {:>9.1} {:>8.1} {:>8.1} {:>9.1} {:>12.1} {:>9.1} {:>9.1}",
                r.db,
                r.method,
                r.stall_ms(),
                r.max_stall_ms(),
                r.stall_ms() / freeze,
                r.window_ms(),
                r.med(|s| s.fifreeze_ms),
                r.med(|s| s.fithaw_ms),
                r.med(|s| s.host_ms),
                r.pre_ms(),
                r.session_ms(),
                r.med(Sample::gap_lead_ms),
                r.med(Sample::gap_tail_ms)
            );
        }
        println!(
            "{:<10} {:<30} {:>9.1}   (longest gap in {} ms without a session)",
            rows[0].db,
            "baseline",
            base,
            PAUSE_BETWEEN.as_millis() - 50
        );
    }
    for (rows, _) in &all {
        for r in rows {
            let v: Vec<(f64, f64, f64)> = r
                .samples
                .iter()
                .filter_map(|s| {
                    let (called, returned) = s.backup_stop?;
                    let ms = |a: u64, b: u64| (b as f64 - a as f64) / 1e6;
                    Some((ms(s.snap.1, called), ms(called, returned), ms(called, s.gap.1)))
                })
                .collect();
            if v.is_empty() {
                continue;
            }
            println!(
                "{} {}: snapshot end → pg_backup_stop call {:.1} ms, the call {:.1} ms, its call → the writer's gap end {:.1} ms (medians)",
                r.db,
                r.method,
                median(v.iter().map(|x| x.0).collect()),
                median(v.iter().map(|x| x.1).collect()),
                median(v.iter().map(|x| x.2).collect())
            );
        }
    }
    println!("\nwhere a plugin's hold goes (medians, ms): lock/pause taken → snapshot command start → its end → release (server clock vs `date`)");
    println!(
        "{:<10} {:<30} {:>8} {:>12} {:>9} {:>12} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9} {:>11} {:>11}",
        "database",
        "method",
        "held",
        "→snapshot",
        "snapshot",
        "→release",
        "syncfs",
        "pre",
        "post",
        "lock stmt",
        "pre tail",
        "post head",
        "stall<lock",
        "stall>rel."
    );
    for (rows, _) in &all {
        for r in rows {
            let Some(held) = r.part(|b| b.held_ms) else { continue };
            let p = |f: fn(&Breakdown) -> f64| r.part(f).unwrap_or(f64::NAN);
            println!(
                "{:<10} {:<30} {:>8.1} {:>12.1} {:>9.1} {:>12.1} {:>9.1} {:>8.1} {:>8.1} {:>9.2} {:>9.2} {:>9.2} {:>11.1} {:>11.1}",
                r.db,
                r.method,
                held,
                p(|b| b.to_snapshot_ms),
                p(|b| b.snapshot_ms),
                p(|b| b.to_release_ms),
                p(|b| b.sync_ms),
                p(|b| b.pre_ms),
                p(|b| b.post_ms),
                p(|b| b.block_ms),
                p(|b| b.pre_tail_ms),
                p(|b| b.post_head_ms),
                p(|b| b.gap_before_lock_ms),
                p(|b| b.gap_after_release_ms)
            );
        }
    }
}
