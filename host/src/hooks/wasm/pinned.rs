//! Path grants pinned when an instance is set up, and the only way a
//! plugin's `read-file` or `connect("unix:…")` reaches a file.
//!
//! The host is root; the files a plugin may read are often in directories
//! other users can write (a database's data directory). Resolving the
//! granted path by name at each call would let such a user swap a component
//! for a symlink between the check and the open and redirect the read to
//! `/etc/shadow`. So:
//!
//! - when the instance is created, each `dir:` grant's directory, and each
//!   `file:`/`unix:` grant's parent directory, is opened (`O_PATH`) with
//!   `openat2(RESOLVE_NO_SYMLINKS)`. A symlink anywhere in a granted path is
//!   refused (the error names the real path to grant instead): what the
//!   admin wrote is what is used, and `/var/run`-style links do not turn a
//!   grant into something else later;
//! - each call resolves beneath that fd with `RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`: no
//!   symlink, no `..`, no `/proc` magic link, no other file system mounted
//!   below the grant (a user's FUSE mount could hang the host);
//! - the result is opened `O_PATH` first and `fstat`ed: a file read must be
//!   a regular file and is only then reopened for reading (through
//!   `/proc/self/fd`, the same inode), so a device node or FIFO is never
//!   opened for real (opening `/dev/watchdog` arms it; a FIFO blocks); a
//!   socket must be a socket and is connected to through `/proc/self/fd/N`,
//!   which names that inode and cannot be redirected.
//!
//! Hard links: a user can only link files they own or may read and write
//! (`fs.protected_hardlinks`, on by default), so a link in a granted
//! directory gives the plugin nothing its creator could not give anyway.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{self, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{self, FileStat, Mode, SFlag};

use super::grants::{Grant, Grants};

/// Why a path under the grants cannot be opened. The reach refusals
/// (`Symlink`, `OtherMount`, `Unpinned`) display as what the call would
/// need, since they become a `GrantDenial` ("… not granted (needs …)").
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// No grant covers the path.
    #[error("no grant covers it")]
    NotGranted,
    /// A symbolic link on the way: in the granted path when it was pinned,
    /// or below the grant now.
    #[error("{0}")]
    Symlink(String),
    /// On a file system mounted below the granted directory.
    #[error("a grant of the file system mounted below the granted directory (mounts below a grant are not crossed)")]
    OtherMount,
    /// There, but not what the call needs (a device, a FIFO, a directory).
    #[error("{0}, not a {1}")]
    WrongType(&'static str, &'static str),
    #[error("no such file")]
    NotFound,
    /// The grant could not be pinned when the instance was set up.
    #[error("a usable grant: {0}")]
    Unpinned(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The grants of one instance with their directories held open.
#[derive(Debug, Default)]
pub(crate) struct PinnedGrants {
    roots: Vec<Root>,
}

#[derive(Debug)]
struct Root {
    grant: Grant,
    /// `dir:` the directory itself; `file:`/`unix:` its parent — or why it
    /// could not be pinned.
    dir: Result<OwnedFd, String>,
}

impl PinnedGrants {
    /// Opens the directory of every path grant. A grant that cannot be
    /// pinned is logged and refuses every call under it, saying why.
    pub fn pin(plugin: &str, grants: &Grants) -> PinnedGrants {
        let mut roots = Vec::new();
        for g in grants.iter() {
            let Some(dir) = g.pinned_dir() else { continue };
            let pinned = pin_dir(dir);
            if let Err(why) = &pinned {
                tracing::warn!(plugin, "grant {g}: {why}; calls under it will be refused");
            }
            roots.push(Root { grant: g.clone(), dir: pinned });
        }
        PinnedGrants { roots }
    }

    /// Opens the regular file `p` (a normalized absolute path) for reading,
    /// beneath the grant that covers it.
    pub fn open_file(&self, p: &Path) -> Result<File, Refused> {
        let (dir, rel) = self.beneath(|g| g.covers_file(p))?;
        let (fd, st) = open_path(dir, &rel)?;
        match kind(&st) {
            SFlag::S_IFREG => {}
            SFlag::S_IFLNK => return Err(symlink_below()),
            other => return Err(Refused::WrongType(describe(other), "regular file")),
        }
        // Reopen the inode the O_PATH fd holds: it cannot be swapped, and
        // it was checked to be a regular file before anything real opened it.
        let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
        let file = File::from(fcntl::open(crate::trust::proc_fd(&fd).as_path(), flags, Mode::empty()).map_err(io)?);
        let again = stat::fstat(&file).map_err(io)?;
        if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino) || kind(&again) != SFlag::S_IFREG {
            return Err(Refused::Io(std::io::Error::other("the file changed while it was opened")));
        }
        Ok(file)
    }

    /// The Unix socket of the `unix:` grant `p`, as an `O_PATH` fd; connect
    /// through [`crate::trust::proc_fd`] of it.
    pub fn open_socket(&self, p: &Path) -> Result<OwnedFd, Refused> {
        let (dir, rel) = self.beneath(|g| g.covers_socket(p))?;
        let (fd, st) = open_path(dir, &rel)?;
        match kind(&st) {
            SFlag::S_IFSOCK => Ok(fd),
            SFlag::S_IFLNK => Err(symlink_below()),
            other => Err(Refused::WrongType(describe(other), "socket")),
        }
    }

    /// The pinned directory and the path beneath it for the best-ranked
    /// (lowest) grant `matches` accepts.
    fn beneath(&self, matches: impl Fn(&Grant) -> Option<(usize, PathBuf)>) -> Result<(&OwnedFd, PathBuf), Refused> {
        let best = self.roots.iter().filter_map(|r| matches(&r.grant).map(|(rank, rel)| (rank, r, rel))).min_by_key(|(rank, _, _)| *rank);
        let Some((_, root, rel)) = best else { return Err(Refused::NotGranted) };
        match &root.dir {
            Ok(fd) => Ok((fd, rel)),
            Err(why) => Err(Refused::Unpinned(why.clone())),
        }
    }
}

fn symlink_below() -> Refused {
    Refused::Symlink("a path without symbolic links (links below a grant are not followed)".into())
}

fn io(e: Errno) -> Refused {
    Refused::Io(e.into())
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn describe(k: SFlag) -> &'static str {
    match k {
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFLNK => "a symbolic link",
        _ => "something else",
    }
}

/// Opens `rel` beneath `dir` as an `O_PATH` fd: nothing on the way may be a
/// symlink, a magic link, `..` or another mount. A final symlink comes back
/// as an fd to the link itself (`O_PATH|O_NOFOLLOW`), and the caller's type
/// check refuses it.
fn open_path(dir: &OwnedFd, rel: &Path) -> Result<(OwnedFd, FileStat), Refused> {
    let how = OpenHow::new().flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).resolve(
        ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS | ResolveFlag::RESOLVE_NO_XDEV,
    );
    let fd = match fcntl::openat2(dir, rel, how) {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ENOTDIR) => return Err(Refused::NotFound),
        Err(Errno::ELOOP) => return Err(symlink_below()),
        Err(Errno::EXDEV) => return Err(Refused::OtherMount),
        Err(e) => return Err(io(e)),
    };
    let st = stat::fstat(&fd).map_err(io)?;
    Ok((fd, st))
}

/// Opens a granted directory by its absolute path without following any
/// symlink on the way.
fn pin_dir(dir: &Path) -> Result<OwnedFd, String> {
    let how = OpenHow::new()
        // No O_NOFOLLOW: with it a final symlink is ENOTDIR; without it,
        // RESOLVE_NO_SYMLINKS refuses it (ELOOP) like any other on the way.
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match fcntl::openat2(fcntl::AT_FDCWD, dir, how) {
        Ok(fd) => Ok(fd),
        Err(Errno::ELOOP) => {
            let real = std::fs::canonicalize(dir).map(|r| format!(" (it leads to {}: grant that)", r.display())).unwrap_or_default();
            Err(format!(
                "{} goes through a symbolic link{real}; granted paths must be real paths, so that what was granted is what is read",
                dir.display()
            ))
        }
        Err(Errno::ENOENT) => Err(format!("{} did not exist when the session started", dir.display())),
        Err(Errno::ENOTDIR) => Err(format!("{} is not a directory", dir.display())),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}
