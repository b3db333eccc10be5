//! `quiesce points …`: list, show, delete, prune and restore recovery points.
//! Argument parsing and printing only; the work is in `quiesce::points`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use quiesce::points::restore::{self, RestoreOptions};
use quiesce::points::{self, diff as changed, retention, Catalog, Point};
use quiesce::report::label_name;
use quiesce::rundir::{LockError, RunDir};
use quiesce::service::commands::USAGE;
use quiesce::session;

/// Exit status when something failed (a provider, a refused target, no such point).
const FAILED: u8 = 1;

#[derive(Subcommand)]
pub enum PointsCommand {
    /// Every recovery point, oldest first (unreadable records are reported and skipped).
    List(ListArgs),
    /// One point's record.
    Show(ShowArgs),
    /// Delete what the point's provider made, then its record.
    Delete(DeleteArgs),
    /// Delete the points the retention policy in [points] does not keep.
    Prune(PruneArgs),
    /// Restore a point to an alternate location (never over live data).
    Restore(RestoreArgs),
    /// The byte ranges that differ between two points of one disk: two reflink
    /// images (FIEMAP) or two btrfs snapshots (extent generations), older first.
    Diff(DiffArgs),
}

#[derive(Args)]
pub struct DiffArgs {
    /// The older point: its id, or its image / btrfs snapshot path.
    older: String,
    /// The newer point: its id, or its image / btrfs snapshot path.
    newer: String,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ListArgs {
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ShowArgs {
    id: String,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DeleteArgs {
    id: String,
    /// Remove only the record (after deleting the snapshot by hand).
    #[arg(long)]
    forget: bool,
}

#[derive(Args)]
pub struct PruneArgs {
    /// The config holding [points] (default: the session's default config).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Only list what would be deleted.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RestoreArgs {
    id: String,
    /// Where the provider restores to (must not hold data, unless --in-place).
    #[arg(long, value_name = "PATH")]
    to: PathBuf,
    /// Allow an existing target: it is moved aside to PATH.before-ID, never deleted. Mounts are still refused.
    #[arg(long)]
    in_place: bool,
    /// Loop-mount a restored disk image at this empty directory (artifacts go into it).
    #[arg(long, value_name = "DIR")]
    mount_at: Option<PathBuf>,
    /// PostgreSQL's data directory in the restored tree (default: searched for).
    #[arg(long, value_name = "DIR")]
    pg_data: Option<PathBuf>,
    /// For a point made by a snapshot command without restore_command: the command that restores it.
    #[arg(long, value_name = "CMD")]
    restore_cmd: Option<String>,
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: PointsCommand) -> ExitCode {
    let catalog = Catalog::from_env();
    match cmd {
        PointsCommand::List(a) => list(&catalog, a.json),
        PointsCommand::Show(a) => show(&catalog, &a.id, a.json),
        PointsCommand::Delete(a) => delete(&catalog, &a.id, a.forget),
        PointsCommand::Prune(a) => prune(&catalog, a),
        PointsCommand::Restore(a) => restore(&catalog, a),
        PointsCommand::Diff(a) => diff(&catalog, a),
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("quiesce: {e}");
    ExitCode::from(FAILED)
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string(v).unwrap_or_default());
}

fn list(catalog: &Catalog, json: bool) -> ExitCode {
    let listing = match catalog.list() {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    for p in &listing.problems {
        eprintln!("quiesce: warning: {}: {}", p.path.display(), p.message);
    }
    if json {
        print_json(&serde_json::json!({ "points": listing.points.iter().map(summary).collect::<Vec<_>>(), "problems": listing.problems }));
        return ExitCode::SUCCESS;
    }
    if listing.points.is_empty() {
        println!("no recovery points in {}", catalog.dir().display());
    }
    for p in &listing.points {
        println!(
            "{}  {}  {:<20}  {}{}",
            p.id,
            retention::format_utc(p.unix_ms),
            label_name(p.consistency),
            points::delete::describe_made(p),
            if p.delete_failed.is_some() { "  [delete failed]" } else { "" }
        );
    }
    ExitCode::SUCCESS
}

/// A point without its embedded report, for `list --json`.
fn summary(p: &Point) -> serde_json::Value {
    let mut v = serde_json::to_value(p).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("report");
    }
    v
}

fn show(catalog: &Catalog, id: &str, json: bool) -> ExitCode {
    let p = match catalog.get(id) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    if json {
        print_json(&p);
        return ExitCode::SUCCESS;
    }
    println!("point {} ({}), recorded {}", p.id, label_name(p.consistency), retention::format_utc(p.unix_ms));
    println!("  provider: {}", p.provider.as_deref().unwrap_or("-"));
    println!("  made: {}", points::delete::describe_made(&p));
    for m in &p.mounts {
        println!("  frozen: {}", m.display());
    }
    for h in &p.hooks {
        println!("  hook {} {:?} {:?}", h.name, h.phase, h.outcome);
    }
    for a in &p.artifacts {
        println!("  artifact {}/{}: {} ({} bytes)", a.hook, a.name, a.path.display(), a.bytes);
    }
    if let Some(f) = &p.delete_failed {
        println!("  delete failed at {}: {}", retention::format_utc(f.unix_ms), f.message);
    }
    ExitCode::SUCCESS
}

/// delete and prune change the catalog: not while a session runs (it may be
/// checking for room or recording a point).
fn session_lock() -> Result<quiesce::rundir::SessionLock, ExitCode> {
    RunDir::from_env().lock().map_err(|e| match e {
        LockError::Busy { .. } => fail(format!("{e}; a session is running: try again when it has finished")),
        e => fail(e),
    })
}

fn delete(catalog: &Catalog, id: &str, forget: bool) -> ExitCode {
    let _lock = match session_lock() {
        Ok(l) => l,
        Err(code) => return code,
    };
    let p = match catalog.get(id) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    match points::delete(catalog, &p, forget) {
        Ok(()) => {
            println!("deleted point {id} ({})", if forget { "record only".to_string() } else { points::delete::describe_made(&p) });
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn prune(catalog: &Catalog, a: PruneArgs) -> ExitCode {
    let config = match session::load_config(a.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("quiesce: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let _lock = match (a.dry_run, session_lock()) {
        (true, _) => None,
        (false, Ok(l)) => Some(l),
        (false, Err(code)) => return code,
    };
    let out = match points::prune(catalog, &config.points.policy, a.dry_run) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    if a.json {
        print_json(&out);
    } else {
        if out.plan.no_policy {
            println!(
                "no retention policy in [points] (keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly): keeping every point"
            );
        }
        for d in &out.plan.decisions {
            let rules: Vec<&str> = d.kept_by.iter().map(|r| r.name()).collect();
            let verdict = if d.keep() {
                format!("keep ({})", rules.join(", "))
            } else if a.dry_run {
                "would delete".into()
            } else if out.deleted.contains(&d.id) {
                "deleted".into()
            } else if out.forgotten.iter().any(|(id, _)| *id == d.id) {
                "record dropped (no delete step)".into()
            } else {
                "NOT deleted".into()
            };
            println!("{}  {}  {verdict}", d.id, retention::format_utc(d.unix_ms));
        }
        for p in out.problems() {
            eprintln!("quiesce: {p}");
        }
    }
    if out.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(FAILED)
    }
}

fn restore(catalog: &Catalog, a: RestoreArgs) -> ExitCode {
    let p = match catalog.get(&a.id) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let opts = RestoreOptions { to: a.to, in_place: a.in_place, mount_at: a.mount_at, pg_data: a.pg_data, restore_cmd: a.restore_cmd };
    let out = match restore::restore(&p, &opts) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    if a.json {
        print_json(&out);
        return ExitCode::SUCCESS;
    }
    println!("restored point {} ({}) to {}", out.point, label_name(out.consistency), join(&out.restored));
    if let Some(aside) = &out.moved_aside {
        println!("  what was at the target is now at {}", aside.display());
    }
    if let Some(m) = &out.mounted_at {
        println!("  mounted at {}", m.display());
    }
    for pl in &out.placed {
        println!("  wrote {} (artifact of hook {})", pl.path.display(), pl.hook);
    }
    if !out.todo.is_empty() {
        println!("still to do:");
        for (n, t) in out.todo.iter().enumerate() {
            println!("  {}. {t}", n + 1);
        }
    }
    ExitCode::SUCCESS
}

fn join(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// What `points diff` compares: a point in the catalog (by id), else a path.
enum Side {
    Point(Box<quiesce::snapshot::Made>),
    Path(PathBuf),
}

fn side(catalog: &Catalog, arg: &str) -> Result<Side, String> {
    if points::catalog::check_id(arg).is_ok() {
        match catalog.get(arg) {
            Ok(p) => return p.made.map(|m| Side::Point(Box::new(m))).ok_or_else(|| format!("point {arg} names nothing a provider made")),
            Err(points::CatalogError::NotFound { .. }) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(Side::Path(PathBuf::from(arg)))
}

fn diff(catalog: &Catalog, a: DiffArgs) -> ExitCode {
    let sides = side(catalog, &a.older).and_then(|o| side(catalog, &a.newer).map(|n| (o, n)));
    let result = match sides {
        Ok((Side::Point(o), Side::Point(n))) => changed::between(&o, &n),
        Ok((Side::Path(o), Side::Path(n))) => changed::paths(&o, &n),
        Ok(_) => return fail("points diff: compare two point ids or two paths, not one of each"),
        Err(e) => return fail(format!("points diff: {e}")),
    };
    let diff = match result {
        Ok(d) => d,
        Err(e) => return fail(format!("points diff: {e}")),
    };
    if a.json {
        print_json(&diff);
        return ExitCode::SUCCESS;
    }
    let method = match diff.method {
        changed::Method::Fiemap => "extent maps (FIEMAP)",
        changed::Method::BtrfsGeneration => "btrfs extent generations",
    };
    println!("{} bytes changed in {} file(s), from {method}", diff.changed_bytes, diff.files.len());
    for f in &diff.files {
        println!("  {}: {} of {} bytes in {} range(s)", f.path.display(), f.changed_bytes, f.size, f.ranges.len());
        for r in f.ranges.iter().take(20) {
            println!("    {}..{} ({} bytes)", r.offset, r.end(), r.len);
        }
        if f.ranges.len() > 20 {
            println!("    ... {} more (--json lists all)", f.ranges.len() - 20);
        }
    }
    for p in &diff.removed {
        println!("  removed: {}", p.display());
    }
    if diff.compared_bytes > 0 {
        println!("  ({} bytes compared by content: extents without a stable physical address)", diff.compared_bytes);
    }
    ExitCode::SUCCESS
}
