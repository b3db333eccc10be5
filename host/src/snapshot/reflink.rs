//! `reflink`: a clone of a disk image with the FICLONE ioctl — a
//! block-level, copy-on-write snapshot of a file (a VM disk image) on XFS
//! (`reflink=1`) or btrfs. It is instant, and the clone is exactly the
//! source's blocks at that moment. Delete removes the clone; restore clones
//! it again to a new path (the point itself stays untouched).

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{Made, ProviderKind, Restored, SnapshotContext, SnapshotError, SnapshotProvider, TakeFuture};

pub struct ReflinkClone {
    pub source: PathBuf,
    /// May contain `{session}`, replaced by the session id.
    pub dest: PathBuf,
}

impl SnapshotProvider for ReflinkClone {
    fn describe(&self) -> String {
        format!("reflink: {} -> {}", self.source.display(), self.dest.display())
    }

    fn take<'a>(&'a self, ctx: &'a SnapshotContext) -> TakeFuture<'a> {
        let dest = super::session_path(&self.dest, &ctx.session_id);
        Box::pin(async move {
            let source = self.source.clone();
            let err = |message: String| SnapshotError::Reflink { source_path: self.source.clone(), dest: dest.clone(), message };
            let dest2 = dest.clone();
            tokio::task::spawn_blocking(move || clone_file(&source, &dest2))
                .await
                .map_err(|e| err(e.to_string()))?
                .map_err(|e| err(e.to_string()))?;
            let mut made = Made::new(ProviderKind::Reflink, Vec::new(), vec![dest]);
            made.source = Some(self.source.clone());
            Ok(made)
        })
    }
}

nix::ioctl_write_int!(ficlone, 0x94, 9);

/// Clones `source` to a new file `dest` (never over an existing one).
pub fn clone_file(source: &Path, dest: &Path) -> std::io::Result<()> {
    let src = std::fs::File::open(source)?;
    // create_new: never overwrite an earlier snapshot; O_NOFOLLOW: never
    // write through a link someone planted at the destination.
    let dst = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(dest)?;
    // SAFETY: both fds are open for the duration of the call.
    let r = unsafe { ficlone(dst.as_raw_fd(), src.as_raw_fd() as libc::c_ulong) };
    if let Err(e) = r {
        drop(dst);
        let _ = std::fs::remove_file(dest);
        return Err(std::io::Error::other(format!("FICLONE: {e} (both files must be on one XFS-with-reflink or btrfs file system)")));
    }
    Ok(())
}

fn image(made: &Made, what: &str) -> Result<PathBuf, SnapshotError> {
    match made.paths.as_slice() {
        [one] => Ok(one.clone()),
        other => {
            Err(SnapshotError::Other(format!("a reflink point names exactly one image; this one names {} ({what} refused)", other.len())))
        }
    }
}

/// Removes the clone. Only a regular file is removed: a point whose path
/// became a directory or a link was tampered with.
pub(super) fn delete(made: &Made) -> Result<(), SnapshotError> {
    let path = image(made, "delete")?;
    let err = |message: String| SnapshotError::Reflink { source_path: path.clone(), dest: path.clone(), message };
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_file() => std::fs::remove_file(&path).map_err(|e| err(format!("cannot remove: {e}"))),
        Ok(_) => Err(err("is not a regular file any more; not removing it".into())),
        // Gone already: deleting is done.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(e.to_string())),
    }
}

/// Clones the point's image to `to` (which must not exist).
pub(super) fn restore(made: &Made, to: &Path) -> Result<Restored, SnapshotError> {
    let image = image(made, "restore")?;
    clone_file(&image, to).map_err(|e| SnapshotError::Reflink {
        source_path: image.clone(),
        dest: to.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(Restored { provider: ProviderKind::Reflink, ids: Vec::new(), paths: vec![to.to_path_buf()] })
}
