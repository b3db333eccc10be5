//! Where plugins' artifacts go: a root-only directory per session.
//!
//! Some results cannot go into the snapshot — PostgreSQL's backup label is
//! only known after `pg_backup_stop()`, after the snapshot — so the plugin
//! hands them to the host, which keeps them with the session. They are
//! written after thaw, never into a frozen file system.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::hooks::wasm::Artifact;
use crate::report::ArtifactReport;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/quiesce";
pub const STATE_DIR_ENV: &str = "QUIESCE_STATE_DIR";

/// `$QUIESCE_STATE_DIR`, else `/var/lib/quiesce`.
pub fn state_dir_from_env() -> PathBuf {
    std::env::var_os(STATE_DIR_ENV).map(PathBuf::from).unwrap_or_else(|| DEFAULT_STATE_DIR.into())
}

/// Writes `<state>/sessions/<session>/<hook>/<name>` (dirs 0700, files 0600).
pub fn store(state_dir: &Path, session_id: &str, hook: &str, artifacts: &[Artifact]) -> std::io::Result<Vec<ArtifactReport>> {
    let dir = state_dir.join("sessions").join(session_id).join(sanitize(hook));
    DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
    let mut stored = Vec::new();
    for a in artifacts {
        let path = dir.join(&a.name);
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
        f.write_all(&a.data)?;
        f.sync_all()?;
        stored.push(ArtifactReport { hook: hook.to_string(), name: a.name.clone(), path, bytes: a.data.len() });
    }
    Ok(stored)
}

/// Hook names come from the admin's config; keep them one path component.
fn sanitize(name: &str) -> String {
    let s: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
    if s.is_empty() || s.starts_with('.') {
        format!("_{s}")
    } else {
        s
    }
}
