//! `btrfs`: a read-only snapshot of a subvolume, made with the kernel's own
//! ioctls (`BTRFS_IOC_SNAP_CREATE_V2` with `BTRFS_SUBVOL_RDONLY`), so no
//! `btrfs` tool is needed on the machine. Delete is `BTRFS_IOC_SNAP_DESTROY`;
//! restore is a *writable* snapshot of the read-only one at a new path
//! (instant, copy-on-write: the point stays intact and can be restored again).
//!
//! The snapshot's generation is recorded in [`Made::generation`]: `points
//! diff` reports the extents a later point wrote after it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

use super::{Made, ProviderKind, Restored, SnapshotContext, SnapshotError, SnapshotProvider, TakeFuture};

const BTRFS_IOCTL_MAGIC: u8 = 0x94;
/// `BTRFS_SUBVOL_NAME_MAX + 1`.
const SUBVOL_NAME_LEN: usize = 4040;
/// `BTRFS_PATH_NAME_MAX + 1`.
const PATH_NAME_LEN: usize = 4088;
const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;
/// Every subvolume's root directory has this inode number.
pub const FIRST_FREE_OBJECTID: u64 = 256;

/// `struct btrfs_ioctl_vol_args_v2`.
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; SUBVOL_NAME_LEN],
}

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; PATH_NAME_LEN],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Timespec {
    sec: u64,
    nsec: u32,
}

/// `struct btrfs_ioctl_get_subvol_info_args` (Linux ≥ 4.18).
#[repr(C)]
pub(crate) struct SubvolInfo {
    pub treeid: u64,
    name: [u8; 256],
    parent_id: u64,
    dirid: u64,
    pub generation: u64,
    pub flags: u64,
    uuid: [u8; 16],
    parent_uuid: [u8; 16],
    received_uuid: [u8; 16],
    pub ctransid: u64,
    pub otransid: u64,
    stransid: u64,
    rtransid: u64,
    times: [Timespec; 4],
    reserved: [u64; 8],
}

nix::ioctl_write_ptr!(snap_create_v2, BTRFS_IOCTL_MAGIC, 23, VolArgsV2);
nix::ioctl_write_ptr!(snap_destroy, BTRFS_IOCTL_MAGIC, 15, VolArgs);
nix::ioctl_read!(get_subvol_info, BTRFS_IOCTL_MAGIC, 60, SubvolInfo);

pub struct BtrfsSnapshot {
    /// The subvolume snapshotted.
    pub source: PathBuf,
    /// Where the snapshot goes (on the same btrfs); `{session}` is replaced
    /// by the session id.
    pub dest: PathBuf,
}

impl SnapshotProvider for BtrfsSnapshot {
    fn describe(&self) -> String {
        format!("btrfs: {} -> {} (read-only)", self.source.display(), self.dest.display())
    }

    fn take<'a>(&'a self, ctx: &'a SnapshotContext) -> TakeFuture<'a> {
        let dest = super::session_path(&self.dest, &ctx.session_id);
        let source = self.source.clone();
        Box::pin(async move {
            let joined = tokio::task::spawn_blocking(move || -> Result<Made, SnapshotError> {
                snapshot(&source, &dest, true)?;
                let info = subvol_info(&dest)?;
                let mut made = Made::new(ProviderKind::Btrfs, Vec::new(), vec![dest]);
                made.source = Some(source);
                made.generation = Some(info.generation);
                Ok(made)
            })
            .await;
            joined.map_err(|e| SnapshotError::Other(format!("btrfs snapshot task: {e}")))?
        })
    }
}

fn err(op: &'static str, path: &Path, message: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Btrfs { op, path: path.to_path_buf(), message: message.to_string() }
}

fn open_dir(path: &Path, op: &'static str) -> Result<OwnedFd, SnapshotError> {
    open(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).map_err(|e| err(op, path, e))
}

/// The parent directory's fd and the last component, for the name-based ioctls.
fn parent_and_name(path: &Path, op: &'static str) -> Result<(OwnedFd, Vec<u8>), SnapshotError> {
    let name = path.file_name().ok_or_else(|| err(op, path, "has no final name"))?.as_bytes().to_vec();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((open_dir(parent, op)?, name))
}

/// Snapshots the subvolume `source` to the new path `dest` (same btrfs).
pub fn snapshot(source: &Path, dest: &Path, read_only: bool) -> Result<(), SnapshotError> {
    let op = "snapshot";
    let src = open_dir(source, op)?;
    let (parent, name) = parent_and_name(dest, op)?;
    if name.len() >= SUBVOL_NAME_LEN || name.contains(&0) {
        return Err(err(op, dest, "name too long for btrfs"));
    }
    let mut args = VolArgsV2 {
        fd: src.as_raw_fd() as i64,
        transid: 0,
        flags: if read_only { BTRFS_SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; SUBVOL_NAME_LEN],
    };
    args.name[..name.len()].copy_from_slice(&name);
    // SAFETY: both fds are open; args is a valid, initialised struct.
    unsafe { snap_create_v2(parent.as_raw_fd(), &args) }.map_err(|e| {
        let hint = match e {
            nix::errno::Errno::ENOTTY | nix::errno::Errno::EINVAL => {
                format!("{e} ({} must be a btrfs subvolume and the destination on the same btrfs)", source.display())
            }
            nix::errno::Errno::EXDEV => format!("{e} (source and destination must be on the same btrfs)"),
            nix::errno::Errno::EEXIST => format!("{e} (never overwriting an earlier snapshot)"),
            _ => e.to_string(),
        };
        err(op, dest, format!("from {}: {hint}", source.display()))
    })?;
    Ok(())
}

/// The subvolume's ids and generation (`BTRFS_IOC_GET_SUBVOL_INFO`).
pub(crate) fn subvol_info(path: &Path) -> Result<SubvolInfo, SnapshotError> {
    let fd = open_dir(path, "info")?;
    // SAFETY: all-zero is a valid SubvolInfo (plain integers and byte arrays).
    let mut info: SubvolInfo = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; the kernel fills `info`.
    unsafe { get_subvol_info(fd.as_raw_fd(), &mut info) }.map_err(|e| err("info", path, format!("{e} (not a btrfs subvolume?)")))?;
    Ok(info)
}

fn point(made: &Made, what: &'static str) -> Result<PathBuf, SnapshotError> {
    match made.paths.as_slice() {
        [one] => Ok(one.clone()),
        other => {
            Err(SnapshotError::Other(format!("a btrfs point names exactly one snapshot; this one names {} ({what} refused)", other.len())))
        }
    }
}

/// Deletes the snapshot subvolume. A path that is not a subvolume's root is
/// refused (a point whose path now names something else was tampered with).
pub(super) fn delete(made: &Made) -> Result<(), SnapshotError> {
    let op = "delete";
    let path = point(made, op)?;
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(op, &path, e)),
        Ok(m) => {
            use std::os::unix::fs::MetadataExt;
            if !m.is_dir() || m.ino() != FIRST_FREE_OBJECTID {
                return Err(err(op, &path, "is not a btrfs subvolume any more; not deleting it"));
            }
        }
    }
    let (parent, name) = parent_and_name(&path, op)?;
    if name.len() >= PATH_NAME_LEN {
        return Err(err(op, &path, "name too long for btrfs"));
    }
    let mut args = VolArgs { fd: 0, name: [0; PATH_NAME_LEN] };
    args.name[..name.len()].copy_from_slice(&name);
    // SAFETY: parent is open; args is a valid struct.
    unsafe { snap_destroy(parent.as_raw_fd(), &args) }.map_err(|e| err(op, &path, e))?;
    Ok(())
}

/// A writable snapshot of the point at `to` (which must not exist).
pub(super) fn restore(made: &Made, to: &Path) -> Result<Restored, SnapshotError> {
    let path = point(made, "restore")?;
    snapshot(&path, to, false)?;
    Ok(Restored { provider: ProviderKind::Btrfs, ids: Vec::new(), paths: vec![to.to_path_buf()] })
}

// The kernel ABI: the ioctl numbers encode these sizes.
const _: () = assert!(std::mem::size_of::<VolArgsV2>() == 4096);
const _: () = assert!(std::mem::size_of::<VolArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<SubvolInfo>() == 504);
