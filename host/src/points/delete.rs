//! Deleting points: what the provider made first, then the record.
//!
//! The order matters to a tired admin: a record without its snapshot is a
//! lie the next restore finds out, a snapshot without its record is a leak
//! nobody finds. So the provider deletes first; when it fails (a cloud CLI
//! times out, a subvolume is busy) the record stays, marked with what
//! failed, and says so — `points delete ID` again retries, and `--forget`
//! drops the record once the admin has cleaned up by hand. A snapshot with
//! no delete step at all (a snapshot command without `delete_command`, an
//! agent's own snapshot) is not quiesce's to delete: `prune` drops only its
//! record and says so, so such points cannot fill `max_points` for good.

use serde::Serialize;

use super::catalog::{Catalog, CatalogError, DeleteFailure, Point, WriteMode};
use super::retention::{self, Candidate, Decision, Plan, Policy};
use crate::rundir::unix_ms;
use crate::snapshot;

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("{0}")]
    Catalog(#[from] CatalogError),
    #[error(
        "point {id}: the provider could not delete what it made ({what}): {message}. The record is kept{marked} so nothing is \
         forgotten: fix the cause and run `quiesce points delete {id}` again, or delete it by hand and run \
         `quiesce points delete {id} --forget`"
    )]
    Provider { id: String, what: String, message: String, marked: &'static str, unsupported: bool },
}

/// Deletes what `point` made (unless `forget`), then its record.
pub fn delete(catalog: &Catalog, point: &Point, forget: bool) -> Result<(), DeleteError> {
    if let (Some(made), false) = (&point.made, forget) {
        if let Err(e) = snapshot::delete(made) {
            // No delete step at all: nothing was attempted, nothing to mark.
            let unsupported = matches!(e, snapshot::SnapshotError::Unsupported(_));
            let mut marked = point.clone();
            marked.delete_failed = Some(DeleteFailure { unix_ms: unix_ms() as u64, message: e.to_string() });
            let marked = match (unsupported, catalog.write(&marked, WriteMode::Replace)) {
                (true, _) => "",
                (false, Ok(_)) => ", marked as a failed delete,",
                (false, Err(w)) => {
                    tracing::error!("cannot mark point {} as a failed delete: {w}", point.id);
                    " (it could not be marked)"
                }
            };
            return Err(DeleteError::Provider {
                id: point.id.clone(),
                what: describe_made(point),
                message: e.to_string(),
                marked,
                unsupported,
            });
        }
    }
    catalog.remove(&point.id)?;
    tracing::info!("deleted recovery point {} ({})", point.id, describe_made(point));
    Ok(())
}

/// What a point names, for messages: `reflink /x/snap.img`, `aws snap-1, snap-2`.
pub fn describe_made(point: &Point) -> String {
    let Some(m) = &point.made else { return "nothing quiesce can delete; only the record".into() };
    let mut names: Vec<String> = m.paths.iter().map(|p| p.display().to_string()).collect();
    names.extend(m.ids.iter().cloned());
    format!("{} {}", m.provider.as_str(), if names.is_empty() { "(nothing named)".into() } else { names.join(", ") })
}

/// What `prune` did (or, with `dry_run`, would do).
#[derive(Debug, Serialize)]
pub struct PruneOutcome {
    pub dry_run: bool,
    pub plan: Plan,
    /// Ids deleted (with `dry_run`: none).
    pub deleted: Vec<String>,
    /// Points the plan drops that could not be deleted, and why.
    pub failed: Vec<(String, String)>,
    /// Points the plan drops whose snapshot has no delete step quiesce knows
    /// (a snapshot command without `delete_command`, an agent's snapshot):
    /// only their records were removed; the snapshots are the tool's that made them.
    pub forgotten: Vec<(String, String)>,
    /// Records that could not be read (skipped: never deleted blind).
    pub unreadable: Vec<super::Problem>,
}

impl PruneOutcome {
    /// One line per problem, for a report's warnings.
    pub fn problems(&self) -> Vec<String> {
        let mut v: Vec<String> = self.failed.iter().map(|(id, why)| format!("prune: point {id} not deleted: {why}")).collect();
        v.extend(self.forgotten.iter().map(|(id, what)| {
            format!("prune: dropped the record of point {id}; quiesce cannot delete its snapshot ({what}): delete it with the tool that made it")
        }));
        v.extend(self.unreadable.iter().map(|p| format!("prune: {} skipped: {}", p.path.display(), p.message)));
        v
    }

    /// What happened, for warnings: deletions and problems.
    pub fn messages(&self) -> Vec<String> {
        let mut v: Vec<String> = self.deleted.iter().map(|id| format!("pruned recovery point {id} to make room")).collect();
        v.extend(self.problems());
        v
    }
}

/// Plans by `policy` over the readable points and deletes what it drops
/// (unless `dry_run`). Each delete is [`delete`]'s: a provider failure
/// leaves that record, marked, and the prune goes on with the next.
pub fn prune(catalog: &Catalog, policy: &Policy, dry_run: bool) -> Result<PruneOutcome, CatalogError> {
    let listing = catalog.list()?;
    let candidates: Vec<Candidate> = listing
        .points
        .iter()
        .map(|p| Candidate {
            id: p.id.clone(),
            unix_ms: p.unix_ms,
            app_consistent: p.app_consistent(),
            deletable: p.made.as_ref().is_some_and(snapshot::Made::deletable),
        })
        .collect();
    let plan = retention::plan(&candidates, policy);
    let mut out =
        PruneOutcome { dry_run, plan, deleted: Vec::new(), failed: Vec::new(), forgotten: Vec::new(), unreadable: listing.problems };
    if dry_run {
        return Ok(out);
    }
    let drop: Vec<&Decision> = out.plan.removed().collect();
    let (mut deleted, mut failed, mut forgotten) = (Vec::new(), Vec::new(), Vec::new());
    for d in drop {
        let Some(point) = listing.points.iter().find(|p| p.id == d.id) else { continue };
        match delete(catalog, point, false) {
            Ok(()) if point.made.is_none() => forgotten.push((d.id.clone(), describe_made(point))),
            Ok(()) => deleted.push(d.id.clone()),
            // No delete step at all is not a failed delete: the policy drops
            // the record, or points nobody can delete would fill the cap forever.
            Err(DeleteError::Provider { unsupported: true, .. }) => match delete(catalog, point, true) {
                Ok(()) => forgotten.push((d.id.clone(), describe_made(point))),
                Err(e) => failed.push((d.id.clone(), e.to_string())),
            },
            Err(e) => failed.push((d.id.clone(), e.to_string())),
        }
    }
    (out.deleted, out.failed, out.forgotten) = (deleted, failed, forgotten);
    Ok(out)
}
