//! Replacing a whole file, as root, in a directory someone already checked.
//!
//! A reader (node_exporter, `quiesce status`, the next session) must see the
//! old content or the new, never half: the bytes go to a temporary name in
//! the same directory (same file system, so `rename` is atomic) and are
//! renamed over the old file. Both names are used relative to the checked
//! directory fd and never through a symlink: the temporary name is created
//! `O_EXCL|O_NOFOLLOW`, and one left over by a killed writer (or planted) is
//! unlinked as a name, not followed.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;

use nix::fcntl::{self, OFlag};
use nix::sys::stat::{self, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// Writes `bytes` as `dir/name` with permission bits `mode` (set exactly,
/// whatever the umask), via `dir/NAME.tmp` (a name node_exporter, which reads
/// only `*.prom`, ignores). With `sync`, the data reaches
/// the disk before the rename (for state that must survive a crash).
pub fn replace(dir: &OwnedFd, name: &str, bytes: &[u8], mode: u32, sync: bool) -> io::Result<()> {
    let tmp = format!("{name}.tmp");
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    let perm = Mode::from_bits_truncate(mode);
    let fd = match fcntl::openat(dir, tmp.as_str(), flags, perm) {
        Ok(fd) => fd,
        Err(_) => {
            let _ = unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            fcntl::openat(dir, tmp.as_str(), flags, perm)?
        }
    };
    let written = (|| {
        stat::fchmod(&fd, perm)?;
        let mut f = File::from(fd);
        f.write_all(bytes)?;
        if sync {
            f.sync_all()?;
        }
        drop(f);
        fcntl::renameat(dir, tmp.as_str(), dir, name).map_err(io::Error::from)
    })();
    if written.is_err() {
        let _ = unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    written
}
