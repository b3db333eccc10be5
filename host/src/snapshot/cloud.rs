//! Cloud disks through their own CLIs (`az`, `aws`, `gcloud`).

use std::path::PathBuf;

use super::run::Step;
use super::{ProviderKind, SnapshotError};

/// The ids a step printed (its JSON reply).
pub(super) fn ids_from_output(_kind: ProviderKind, _step: Step, _stdout: &[String]) -> Result<(Vec<String>, Vec<PathBuf>), SnapshotError> {
    Ok((Vec::new(), Vec::new()))
}
