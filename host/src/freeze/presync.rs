//! Flush dirty data before the freeze, so FIFREEZE itself is short.
//!
//! FIFREEZE syncs the file system after it has blocked new writers, so every
//! dirty page is written inside the freeze window. Syncing first — once the
//! applications are quiesced but before writers are blocked — moves that
//! work out of the window; FIFREEZE then only has the last few writes left.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Instant;

use super::plan::Target;

/// How long one `syncfs` took, or why it failed (a failure is not fatal:
/// FIFREEZE will sync anyway).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SyncTiming {
    pub path: PathBuf,
    pub sync_ms: f64,
    pub error: Option<String>,
}

/// `syncfs` each target, in order.
pub fn presync(targets: &[Target]) -> Vec<SyncTiming> {
    targets
        .iter()
        .map(|t| {
            let started = Instant::now();
            let result = File::open(&t.path).and_then(|dir| {
                // SAFETY: a valid open fd for the duration of the call.
                if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
            SyncTiming { path: t.path.clone(), sync_ms: started.elapsed().as_secs_f64() * 1e3, error: result.err().map(|e| e.to_string()) }
        })
        .collect()
}
