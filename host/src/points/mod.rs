//! Recovery points: every session that took a snapshot leaves a labelled,
//! restorable point in a catalog under the state directory.
//!
//! The report says what a snapshot is worth at the moment it is taken; the
//! point keeps saying it afterwards, with what the provider made (so it can
//! be deleted and restored), the hooks' outcomes and the artifacts plugins
//! handed over (a backup label the restore needs). The number of points is
//! capped (`[points] max_points`, 18 by default like the cloud whose
//! instant restore points this mirrors); a retention policy in the way
//! restic and borg users know it says which points `prune` keeps.
//!
//! - [`catalog`]: the records (atomic, durable, trusted; bad ones skipped).
//! - [`retention`]: the pure planner for `keep_*`.
//! - [`diff`]: the byte ranges that changed between two points of one disk.
//! - [`delete`]: the provider's delete, then the record; `prune`.
//! - [`restore`]: to an alternate location, never over live data; artifacts
//!   put where the database needs them.
//!
//! A session touches this module twice: [`check_room`] before anything is
//! quiesced, [`record_session`] once its report is final.

pub mod catalog;
pub mod delete;
pub mod diff;
pub mod restore;
pub mod retention;

use std::path::Path;

use serde::Deserialize;

pub use catalog::{Catalog, CatalogError, EmbeddedReport, Listing, Point, PointArtifact, PointHook, Problem, WriteMode};
pub use delete::{delete, prune, DeleteError, PruneOutcome};
pub use retention::{Policy, Rule};

use crate::report::{ErrorCode, Report, ReportError};
use crate::rundir::unix_ms;

/// What a provider made, as it described it (its delete and restore take it).
pub type Made = crate::snapshot::Made;

/// The default cap: the cloud this mirrors keeps at most 18 instant restore
/// points per VM and fails new backups when clean-up cannot make room.
pub const DEFAULT_MAX_POINTS: u32 = 18;
/// A cap beyond this is a typo, not a plan (every listing reads every record).
pub const MAX_MAX_POINTS: u32 = 10_000;

/// `[points]` of the native config.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Settings {
    pub max_points: u32,
    pub policy: Policy,
    /// Prune by the policy after each session that recorded a point (and
    /// before one, when the catalog is full).
    pub prune_after_session: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { max_points: DEFAULT_MAX_POINTS, policy: Policy::default(), prune_after_session: false }
    }
}

/// `[points]` as written; unknown keys are errors, like the rest of the native config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointsTable {
    max_points: Option<u32>,
    #[serde(default)]
    prune_after_session: bool,
    #[serde(default)]
    keep_last: u32,
    #[serde(default)]
    keep_hourly: u32,
    #[serde(default)]
    keep_daily: u32,
    #[serde(default)]
    keep_weekly: u32,
    #[serde(default)]
    keep_monthly: u32,
    #[serde(default)]
    app_consistent_only: Vec<Rule>,
}

impl PointsTable {
    pub(crate) fn settings(self) -> Result<Settings, String> {
        let max_points = self.max_points.unwrap_or(DEFAULT_MAX_POINTS);
        if max_points == 0 || max_points > MAX_MAX_POINTS {
            return Err(format!("`points.max_points` = {max_points} is out of range (allowed: 1 to {MAX_MAX_POINTS})"));
        }
        let policy = Policy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            app_consistent_only: self.app_consistent_only,
        };
        if self.prune_after_session && policy.is_empty() {
            return Err("`points.prune_after_session` needs a retention policy (`keep_last`, `keep_daily`, …); \
                        without one nothing would ever be pruned"
                .into());
        }
        Ok(Settings { max_points, policy, prune_after_session: self.prune_after_session })
    }
}

/// Before anything is quiesced: is there room for one more point? Only a
/// session that will take a snapshot (`takes_snapshot`) records one. When
/// the catalog holds `max_points` and `prune_after_session` is set, prunes by
/// the policy first (the automatic clean-up). `Err` is the session's
/// `RpCollectionLimitReached`, naming the fix. A catalog that cannot be read
/// does not stop a snapshot: that goes to `warnings` (recording will say more).
pub fn check_room(state_dir: &Path, settings: &Settings, takes_snapshot: bool, warnings: &mut Vec<String>) -> Result<(), ReportError> {
    if !takes_snapshot {
        return Ok(());
    }
    let catalog = Catalog::new(state_dir);
    let max = settings.max_points as usize;
    // While there is room, counting names is enough; every record is read
    // (and problems reported) once the catalog may be full.
    if catalog.count_at_most().is_ok_and(|n| n < max) {
        return Ok(());
    }
    let read = |warnings: &mut Vec<String>| match catalog.list() {
        Ok(l) => {
            warnings.extend(l.problems.iter().map(|p| format!("recovery point catalog: {}: {}", p.path.display(), p.message)));
            Some(l)
        }
        Err(e) => {
            warnings.push(format!("cannot read the recovery point catalog ({e}); cannot tell whether max_points is reached"));
            None
        }
    };
    let Some(mut listing) = read(warnings) else { return Ok(()) };
    if listing.points.len() >= max && settings.prune_after_session {
        match prune(&catalog, &settings.policy, false) {
            Ok(out) => {
                warnings.extend(out.messages());
                listing = read(&mut Vec::new()).unwrap_or(listing);
            }
            Err(e) => warnings.push(format!("automatic clean-up of recovery points failed: {e}")),
        }
    }
    let mut held = listing.points.len();
    if held >= max {
        held = held.saturating_sub(forget_undeletable(&catalog, &listing, held + 1 - max, warnings));
    }
    if held < max {
        return Ok(());
    }
    let tried = if settings.prune_after_session {
        "the retention policy keeps them all (automatic clean-up could not make room)"
    } else {
        "automatic clean-up is off (`prune_after_session = false`)"
    };
    Err(ReportError {
        code: ErrorCode::RpCollectionLimitReached,
        message: format!(
            "the recovery point catalog {} holds {held} points, the most `[points] max_points` allows ({max}), and {tried}; \
             nothing was quiesced and no snapshot taken. Fix: `quiesce points prune` (with `keep_*` set in [points]), \
             `quiesce points delete ID`, or raise `max_points`",
            catalog.dir().display()
        ),
    })
}

/// Makes room by forgetting the records of the oldest points whose snapshot
/// quiesce cannot delete anyway (an agent's own snapshot, a snapshot command
/// without `delete_command`): nothing on disk or in a cloud changes, and a
/// full catalog of such records must not stop the next backup (a qemu-ga or
/// Velero driven machine would stop being quiesced after `max_points`
/// snapshots). Points quiesce manages are never dropped here: only the
/// retention policy deletes them. Returns how many records it dropped.
fn forget_undeletable(catalog: &Catalog, listing: &Listing, wanted: usize, warnings: &mut Vec<String>) -> usize {
    let mut unmanaged: Vec<&Point> = listing.points.iter().filter(|p| !p.made.as_ref().is_some_and(|m| m.deletable())).collect();
    unmanaged.sort_by_key(|p| p.unix_ms);
    let mut forgotten = 0;
    for p in unmanaged.into_iter().take(wanted) {
        match catalog.forget(&p.id) {
            Ok(()) => {
                forgotten += 1;
                warnings.push(format!(
                    "recovery point {} forgotten to stay within max_points: its snapshot ({}) is not quiesce's to delete and is untouched",
                    p.id,
                    delete::describe_made(p)
                ));
            }
            Err(e) => warnings.push(format!("cannot forget recovery point {} to make room: {e}", p.id)),
        }
    }
    forgotten
}

/// Once the session's report is final: records its point (when a snapshot
/// was taken) and sets `report.point`; then, with `prune_after_session`,
/// prunes. A failure is an error in the report (the label stays what it
/// is); a pruning problem is a warning.
pub fn record_session(state_dir: &Path, settings: &Settings, report: &mut Report) {
    if !report.snapshot_taken {
        return;
    }
    let refuse = |report: &mut Report, why: String| {
        // Its artifacts (a backup label) belong to a snapshot that exists:
        // kept, but no point will take them along when it goes.
        let artifacts = match report.artifacts.first().and_then(|a| a.path.parent()?.parent()) {
            Some(dir) => format!("; its plugins' artifacts stay in {} for that snapshot's restore — remove them with it", dir.display()),
            None => String::new(),
        };
        let m = format!(
            "the snapshot was taken, but its recovery point was not recorded: {why}. `quiesce points` will not list it and \
             nothing will delete it: keep the report's snapshot ids/paths{artifacts}"
        );
        tracing::error!("{m}");
        report.errors.push(ReportError { code: ErrorCode::PointNotRecorded, message: m });
    };
    if !report.freeze.still_frozen.is_empty() {
        // The catalog may be on a file system still frozen: a write there would block until it thaws.
        return refuse(report, "a file system is still frozen and the catalog may be on it".into());
    }
    let catalog = Catalog::new(state_dir);
    report.point = Some(report.session_id.clone());
    let point = point_of(report, unix_ms() as u64);
    match catalog.write(&point, WriteMode::New) {
        Ok(path) => {
            tracing::info!("recorded recovery point {} ({}) at {}", point.id, crate::report::label_name(point.consistency), path.display())
        }
        Err(e) => {
            report.point = None;
            return refuse(report, e.to_string());
        }
    }
    if settings.prune_after_session {
        // `snapshot::delete` runs command and cloud steps on a thread of their
        // own, so pruning is safe from inside the session's runtime.
        match prune(&catalog, &settings.policy, false) {
            Ok(out) => report.warnings.extend(out.problems()),
            Err(e) => report.warnings.push(format!("pruning recovery points after the session failed: {e}")),
        }
    }
}

/// The record of a finished session.
pub fn point_of(report: &Report, now_ms: u64) -> Point {
    Point {
        format: catalog::FORMAT,
        id: report.session_id.clone(),
        unix_ms: now_ms,
        consistency: report.consistency,
        provider: report.snapshot.provider.clone(),
        made: report.snapshot.made.clone(),
        snapshot_ids: report.snapshot.ids.clone(),
        snapshot_paths: report.snapshot.paths.clone(),
        mounts: report.freeze.mounts.iter().map(|m| m.path.clone()).collect(),
        hooks: report.hooks.iter().map(|h| PointHook { name: h.name.clone(), kind: h.kind, phase: h.phase, outcome: h.outcome }).collect(),
        artifacts: report
            .artifacts
            .iter()
            .map(|a| PointArtifact { hook: a.hook.clone(), name: a.name.clone(), path: a.path.clone(), bytes: a.bytes as u64 })
            .collect(),
        delete_failed: None,
        report: catalog::EmbeddedReport::of(report),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn parse(text: &str) -> Result<Settings, String> {
        Config::parse(Path::new("/etc/quiesce/quiesce.toml"), text).map(|c| c.points).map_err(|e| e.to_string())
    }

    #[test]
    fn points_section_reads_the_cap_and_the_policy() {
        assert_eq!(parse("").unwrap(), Settings::default());
        assert_eq!(Settings::default().max_points, 18);
        let s = parse(
            "[points]\nmax_points = 30\nkeep_last = 2\nkeep_daily = 7\nkeep_monthly = 6\napp_consistent_only = [\"daily\", \"monthly\"]\nprune_after_session = true\n",
        )
        .unwrap();
        assert_eq!(s.max_points, 30);
        assert!(s.prune_after_session);
        assert_eq!((s.policy.keep_last, s.policy.keep_daily, s.policy.keep_weekly, s.policy.keep_monthly), (2, 7, 0, 6));
        assert_eq!(s.policy.app_consistent_only, [Rule::Daily, Rule::Monthly]);
    }

    #[test]
    fn points_section_refuses_what_would_surprise() {
        let e = parse("[points]\nmax_points = 0\n").unwrap_err();
        assert!(e.contains("points.max_points") && e.contains("1 to 10000"), "{e}");
        let e = parse("[points]\nprune_after_session = true\n").unwrap_err();
        assert!(e.contains("needs a retention policy"), "{e}");
        let e = parse("[points]\nkeep_dayly = 3\n").unwrap_err();
        assert!(e.contains("keep_dayly"), "{e}");
        let e = parse("[points]\nkeep_last = 1\napp_consistent_only = [\"yearly\"]\n").unwrap_err();
        assert!(e.contains("yearly"), "{e}");
    }
}
