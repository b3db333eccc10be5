//! What the benchmarks share: percentiles, and the bare-ioctl floor every
//! freeze path is compared with.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use quiesce::snapshot::{SnapshotContext, SnapshotProvider, TakeFuture};

pub const FIFREEZE: libc::c_ulong = 0xC004_5877;
pub const FITHAW: libc::c_ulong = 0xC004_5878;

/// The `p` quantile (0..=1) of sorted samples.
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// The median of unsorted samples.
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    pct(&v, 0.5)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One FIFREEZE or FITHAW on an open directory fd.
pub fn ioctl_one(fd: &OwnedFd, req: libc::c_ulong) -> Result<(), String> {
    // SAFETY: ioctl on an open directory fd with an unused int argument.
    if unsafe { libc::ioctl(fd.as_raw_fd(), req as _, 0) } < 0 {
        return Err(format!("ioctl {req:#x}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

pub fn open_dir(p: &Path) -> OwnedFd {
    std::fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display())).into()
}

/// The floor: FIFREEZE of each mount in order, then FITHAW in reverse, from
/// this process on fds opened once.
pub struct Floor {
    fds: Vec<OwnedFd>,
}

impl Floor {
    /// `mounts` in freeze order (children before parents).
    pub fn new(mounts: &[&Path]) -> Floor {
        Floor { fds: mounts.iter().map(|p| open_dir(p)).collect() }
    }

    /// One freeze+thaw round; returns (total, time inside the ioctls).
    pub fn round(&self) -> (Duration, Duration) {
        let t = Instant::now();
        let mut in_kernel = Duration::ZERO;
        for (fd, req) in self.fds.iter().map(|f| (f, FIFREEZE)).chain(self.fds.iter().rev().map(|f| (f, FITHAW))) {
            let k = Instant::now();
            ioctl_one(fd, req).expect("floor ioctl");
            in_kernel += k.elapsed();
        }
        (t.elapsed(), in_kernel)
    }
}

/// A snapshot provider that takes no time: what is left is quiesce's own cost.
pub struct InstantSnapshot;

impl SnapshotProvider for InstantSnapshot {
    fn describe(&self) -> String {
        "instant (no-op)".into()
    }
    fn take<'a>(&'a self, _: &'a SnapshotContext) -> TakeFuture<'a> {
        Box::pin(async { Ok(quiesce::snapshot::Made::new(quiesce::snapshot::ProviderKind::External, Vec::new(), Vec::new())) })
    }
}
