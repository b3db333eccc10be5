//! The directories quiesce writes into as root — the run directory (lock,
//! state), the state directory (plugins' artifacts, metrics counters), the
//! plugin cache, the metrics textfile's directory — must be root's alone
//! ([`trust::open_trusted_dir`], the same check the session makes before it
//! writes), and the state directory needs room.
//!
//! A directory that does not exist yet is fine if the nearest existing one
//! above it passes: the session creates the rest beneath that one.

use std::path::Path;

use nix::sys::statvfs::statvfs;

use crate::trust::{self, TrustError};

use super::{Code, DoctorOptions, Finding, Group, Severity};

pub const NAME: &str = "directories";
pub const SPACE: &str = "space";

/// Below this, storing a plugin's artifact or the metrics counters fails.
const SPACE_ERROR_BYTES: u64 = 1024 * 1024;
/// Below this, it soon will.
const SPACE_WARN_BYTES: u64 = 16 * 1024 * 1024;
/// Every session's artifacts take a few inodes.
const INODES_ERROR: u64 = 64;

pub fn check_trust(opts: &DoctorOptions, metrics_dir: Option<&Path>) -> Group {
    let mut dirs: Vec<(&str, &Path)> =
        vec![("run directory", &opts.run_dir.path), ("state directory", &opts.state_dir), ("plugin cache", &opts.cache_dir)];
    if let Some(m) = metrics_dir {
        dirs.push(("metrics textfile directory", m));
    }
    let mut findings = Vec::new();
    for (what, path) in &dirs {
        if let Err(e) = trusted_or_creatable(path) {
            let fix = e.fix().unwrap_or_else(|| format!("chown root:root {p} && chmod 700 {p}", p = path.display()));
            findings.push(Finding {
                check: NAME,
                code: Code::DirectoryNotTrusted,
                severity: Severity::Error,
                cause: format!("the {what} {} cannot be trusted: {e}", path.display()),
                fix,
            });
        }
    }
    let summary =
        if findings.is_empty() { format!("{} directories root's alone", dirs.len()) } else { format!("{} untrusted", findings.len()) };
    Group { summary, findings }
}

/// The directory passes, or is missing beneath an ancestor that passes.
fn trusted_or_creatable(path: &Path) -> Result<(), TrustError> {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut at = path.as_path();
    loop {
        match trust::open_trusted_dir(at) {
            Ok(_) => return Ok(()),
            Err(e) if e.is_not_found() => match at.parent() {
                Some(parent) => at = parent,
                None => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
}

pub fn check_space(state_dir: &Path) -> Group {
    // The nearest existing directory: where the state directory will be made.
    let mut at = state_dir;
    while !at.exists() {
        match at.parent() {
            Some(p) => at = p,
            None => break,
        }
    }
    let st = match statvfs(at) {
        Ok(st) => st,
        Err(e) => {
            return Group { summary: format!("cannot tell the free space of {}: {e}", at.display()), findings: vec![] };
        }
    };
    let frsize = st.fragment_size().max(1);
    let free = st.blocks_available().saturating_mul(frsize);
    let inodes = st.files_available();
    // Some file systems (btrfs) report no inode counts at all.
    let inode_limited = st.files() > 0;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let summary = format!("{:.1} MiB free for the state directory {}", mib(free), state_dir.display());
    let severity = if free < SPACE_ERROR_BYTES || (inode_limited && inodes < INODES_ERROR) {
        Severity::Error
    } else if free < SPACE_WARN_BYTES {
        Severity::Warning
    } else {
        return Group { summary, findings: vec![] };
    };
    let cause = format!(
        "the file system holding the state directory {} has {:.1} MiB and {} inodes free: plugins' artifacts (a database's backup label) \
         and the metrics counters are stored there after each session, and fail when it is full",
        state_dir.display(),
        mib(free),
        if inode_limited { inodes.to_string() } else { "unlimited".into() }
    );
    let fix = format!(
        "df -h {p}; du -sh {p}/*; free space there, or set QUIESCE_STATE_DIR to a directory on a file system with room",
        p = state_dir.display()
    );
    Group { summary, findings: vec![Finding { check: SPACE, code: Code::StateSpaceLow, severity, cause, fix }] }
}
