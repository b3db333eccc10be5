//! Thawing without a guardian: the emergency path (`quiesce thaw --all`)
//! and the host's fallback when its guardian is lost. FITHAW on a file
//! system that is not frozen fails with EINVAL, so thawing is idempotent and
//! says "was not frozen" rather than failing.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::error::errno_name;
use super::plan::{plan, Selection};

/// `_IOWR('X', 119, int)`.
pub(crate) const FIFREEZE: libc::c_ulong = 0xC004_5877;
/// `_IOWR('X', 120, int)`.
pub(crate) const FITHAW: libc::c_ulong = 0xC004_5878;

/// What a thaw of one mount did.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ThawOutcome {
    /// It was frozen and is thawed now.
    Thawed,
    /// It was not frozen (FITHAW said EINVAL); nothing changed.
    NotFrozen,
    /// The thaw failed; `message` says why.
    Failed,
}

/// The result of thawing one mount.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ThawResult {
    #[serde(serialize_with = "crate::serde_path::lossy")]
    pub path: PathBuf,
    pub outcome: ThawOutcome,
    /// `thawed`, `was not frozen`, or the error.
    pub message: String,
    pub thaw_ms: f64,
}

/// Thaws each path, in the order given (pass thaw order: parents and
/// image-holding file systems first).
pub fn thaw_mounts<P: AsRef<Path>>(paths: &[P]) -> Vec<ThawResult> {
    paths.iter().map(|p| thaw_one(p.as_ref())).collect()
}

/// Thaws every eligible file system on the machine, in thaw order, whoever
/// froze it. For the emergency `quiesce thaw --all`.
pub fn thaw_all() -> Vec<ThawResult> {
    match plan(&Selection::default()) {
        Ok(p) => p.thaw_order().map(|t| thaw_one(&t.path)).collect(),
        Err(e) => vec![ThawResult {
            path: PathBuf::from("/proc/self/mountinfo"),
            outcome: ThawOutcome::Failed,
            message: e.to_string(),
            thaw_ms: 0.0,
        }],
    }
}

/// FITHAW on one mount point.
pub fn thaw_one(path: &Path) -> ThawResult {
    let started = Instant::now();
    let result = (|| -> io::Result<()> {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: valid C string; the fd is closed below on every path.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is open; FITHAW takes an unused int argument.
        let r = unsafe { libc::ioctl(fd, FITHAW as _, 0) };
        let err = io::Error::last_os_error();
        // SAFETY: closing the fd opened above.
        unsafe { libc::close(fd) };
        if r < 0 {
            Err(err)
        } else {
            Ok(())
        }
    })();
    let thaw_ms = crate::duration::ms(started.elapsed());
    let (outcome, message) = match result {
        Ok(()) => (ThawOutcome::Thawed, "thawed".to_string()),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (ThawOutcome::NotFrozen, "was not frozen".to_string()),
        Err(e) => {
            let name = e.raw_os_error().map(errno_name).unwrap_or("error");
            (ThawOutcome::Failed, format!("{name}: {e}"))
        }
    };
    ThawResult { path: path.to_path_buf(), outcome, message, thaw_ms }
}
