//! When was the last `AppConsistent` recovery point, and is there room for
//! the next one?
//!
//! Read from the catalog ([`Catalog::list`], as `quiesce points list` does).
//! A full catalog without automatic clean-up refuses the next backup before
//! anything is quiesced (`RpCollectionLimitReached` in its report): the
//! backup extension calls that `UserErrorRpCollectionLimitReached`.

use std::path::Path;

use crate::points::retention::format_utc;
use crate::points::{Catalog, Settings};
use crate::report::{label_name, Consistency};
use crate::rundir::unix_ms;

use super::{Code, Finding, Group, Severity};

pub const NAME: &str = "points";

pub fn check(state_dir: &Path, settings: &Settings) -> Group {
    let catalog = Catalog::new(state_dir);
    let finding = |code, severity, cause: String, fix: String| Finding { check: NAME, code, severity, cause, fix };
    let listing = match catalog.list() {
        Ok(l) => l,
        Err(e) => {
            return Group {
                summary: "cannot read the recovery point catalog".into(),
                findings: vec![finding(
                    Code::PointsCatalogUnreadable,
                    Severity::Error,
                    format!("cannot read the recovery point catalog: {e}; sessions cannot record points"),
                    format!("quiesce points list --json; make {} root's alone (see the directories check)", catalog.dir().display()),
                )],
            };
        }
    };
    let mut findings: Vec<Finding> = listing
        .problems
        .iter()
        .map(|p| {
            finding(
                Code::PointsCatalogUnreadable,
                Severity::Warning,
                format!("recovery point record {}: {}", p.path.display(), p.message),
                format!("inspect it, then remove it if it is not a point you need: rm {}", p.path.display()),
            )
        })
        .collect();
    let held = listing.points.len();
    let max = settings.max_points as usize;
    if held >= max {
        let (severity, how) = if settings.prune_after_session {
            (Severity::Warning, "the next session first prunes by the [points] keep_* policy, and is refused if that frees nothing")
        } else {
            (
                Severity::Error,
                "automatic clean-up is off (prune_after_session = false), so the next backup is refused before anything is quiesced",
            )
        };
        findings.push(finding(
            Code::UserErrorRpCollectionLimitReached,
            severity,
            format!(
                "the recovery point catalog {} holds {held} points, the most [points] max_points allows ({max}); {how}",
                catalog.dir().display()
            ),
            "quiesce points prune (with keep_* set in [points]), or quiesce points delete ID, or raise [points] max_points".into(),
        ));
    }
    let ago = |ms: u64| {
        let h = (unix_ms() as u64).saturating_sub(ms) as f64 / 3_600_000.0;
        format!("{} ({h:.1} h ago)", format_utc(ms))
    };
    let last_app = listing.latest(Consistency::AppConsistent);
    let summary = match (listing.points.last(), last_app) {
        (None, _) => "no recovery points yet".to_string(),
        (Some(_), Some(p)) => format!("{held} point(s); last AppConsistent point {} at {}", p.id, ago(p.unix_ms)),
        (Some(_), None) => format!("{held} point(s), none AppConsistent"),
    };
    if let Some(newest) = listing.points.last().filter(|p| !p.app_consistent()) {
        let last = match last_app {
            Some(p) => format!("the last AppConsistent point is {} from {}", p.id, ago(p.unix_ms)),
            None => "no point in the catalog is AppConsistent".into(),
        };
        findings.push(finding(
            Code::LastPointNotAppConsistent,
            Severity::Warning,
            format!(
                "the newest recovery point {} ({}, {}) is not AppConsistent; {last}",
                newest.id,
                label_name(newest.consistency),
                format_utc(newest.unix_ms)
            ),
            format!("quiesce points show {} (its report's errors say why); fix those, then run quiesce check", newest.id),
        ));
    }
    Group { summary, findings }
}
