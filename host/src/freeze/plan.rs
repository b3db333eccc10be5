//! Which file systems to freeze, and in which order.
//!
//! Freezing the wrong thing or in the wrong order is how peers hang machines:
//! a pseudo or network fs cannot be frozen, a bind mount frozen twice fails
//! with EBUSY, and freezing the fs that holds a loop device's backing file
//! before the fs on that loop device deadlocks (open-vm-tools #6: the inner
//! fs's freeze flushes through the loop device into the already-frozen outer
//! one). The logic is a pure function over mountinfo plus a small
//! [`PlanEnv`] so it can be tested on synthetic tables as well as real ones.

use std::collections::{BTreeSet, HashMap};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::mountinfo::{self, MountInfoEntry, MountTable};
use super::FreezeError;

/// What the caller asked to freeze.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Mount points to freeze; empty = every eligible file system.
    pub mounts: Vec<PathBuf>,
    /// Mount points to leave alone: exact paths or `fnmatch(3)` globs.
    pub exclude: Vec<String>,
}

/// The file systems to freeze, in freeze order, and those left out with why.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct FreezePlan {
    /// In FREEZE order; thaw in reverse.
    pub targets: Vec<Target>,
    /// Mounts considered and not frozen, each with its reason.
    pub skipped: Vec<Skipped>,
}

impl FreezePlan {
    /// Targets in thaw order (the reverse of freeze order).
    pub fn thaw_order(&self) -> impl Iterator<Item = &Target> {
        self.targets.iter().rev()
    }
}

/// One file system to freeze.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Target {
    /// Mount point the freeze is issued on.
    #[serde(serialize_with = "crate::serde_path::lossy")]
    pub path: PathBuf,
    /// File system type from mountinfo.
    pub fs_type: String,
    /// Mount source (the block device).
    pub source: String,
    /// Superblock major:minor from mountinfo.
    pub dev: (u32, u32),
    /// Mount id, to check at freeze time that the path still leads to this mount.
    pub mount_id: u64,
}

/// A mount that will not be frozen.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Skipped {
    #[serde(serialize_with = "crate::serde_path::lossy")]
    pub path: PathBuf,
    pub fs_type: String,
    /// Why, in words an admin can act on.
    pub reason: String,
}

/// The facts about the machine the planner needs beyond mountinfo.
pub trait PlanEnv {
    /// Is `path` a block device node?
    fn is_block_device(&self, path: &Path) -> bool;
    /// If `device` is a loop device, the (major, minor) of the file system
    /// holding its backing file.
    fn loop_backing_dev(&self, device: &Path) -> Option<(u32, u32)>;
    /// Is `dev` a block device known to the kernel? Catches sources such as
    /// `/dev/root` that have no node in /dev.
    fn is_block_dev_number(&self, _dev: (u32, u32)) -> bool {
        false
    }
}

/// [`PlanEnv`] for the running machine: stat(2) and /sys/dev/block.
pub struct SystemEnv;

impl PlanEnv for SystemEnv {
    fn is_block_device(&self, path: &Path) -> bool {
        std::fs::metadata(path).map(|m| m.file_type().is_block_device()).unwrap_or(false)
    }

    fn loop_backing_dev(&self, device: &Path) -> Option<(u32, u32)> {
        let meta = std::fs::metadata(device).ok()?;
        if !meta.file_type().is_block_device() {
            return None;
        }
        let rdev = meta.rdev();
        let dev = PathBuf::from(format!("/sys/dev/block/{}:{}", libc::major(rdev), libc::minor(rdev)));
        // A partition of a loop device (loop0p1) depends on the same file.
        let file = std::fs::read(dev.join("loop/backing_file")).or_else(|_| std::fs::read(dev.join("../loop/backing_file"))).ok()?;
        let mut file = file.strip_suffix(b"\n").unwrap_or(&file).to_vec();
        // A deleted backing file still pins its fs, but can no longer be
        // stat'ed by name; the kernel marks it so.
        if let Some(s) = file.strip_suffix(b" (deleted)") {
            file = s.to_vec();
        }
        let st = std::fs::metadata(std::ffi::OsStr::from_bytes(&file)).ok()?;
        Some((libc::major(st.dev()), libc::minor(st.dev())))
    }

    fn is_block_dev_number(&self, dev: (u32, u32)) -> bool {
        dev.0 != 0 && Path::new(&format!("/sys/dev/block/{}:{}", dev.0, dev.1)).exists()
    }
}

/// Network and host-shared file systems: freezing them is meaningless
/// (the data lives elsewhere) and FIFREEZE is unsupported or hangs.
const NETWORK_FS: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ceph",
    "glusterfs",
    "9p",
    "afs",
    "lustre",
    "ncpfs",
    "coda",
    "davfs",
    "virtiofs",
    "fuse",
    "fuseblk",
    "sshfs",
    "ocfs2",
    "gfs2",
];

/// Block file systems whose kernel driver has no freeze support (FIFREEZE
/// would fail with EOPNOTSUPP) or that cannot be written anyway.
const NO_FREEZE_FS: &[&str] = &[
    "vfat", "msdos", "fat", "exfat", "iso9660", "udf", "squashfs", "erofs", "cramfs", "romfs", "ntfs", "ntfs3", "hfs", "hfsplus", "minix",
    "zfs", "swap",
];

/// Plans the freeze on the running machine.
pub fn plan(sel: &Selection) -> Result<FreezePlan, FreezeError> {
    let table = mountinfo::read()?;
    let sel = Selection { mounts: canonical_mounts(&sel.mounts)?, exclude: sel.exclude.clone() };
    plan_from(&table, &sel, &SystemEnv)
}

/// `--mount a/../b/` and `/b` name the same mount point; mountinfo has the canonical form.
fn canonical_mounts(mounts: &[PathBuf]) -> Result<Vec<PathBuf>, FreezeError> {
    mounts.iter().map(|p| std::fs::canonicalize(p).map_err(|source| FreezeError::BadPath { path: p.clone(), source })).collect()
}

/// Plans the freeze over a given mount table (`sel.mounts` must already be
/// canonical paths). A line of the table that could not be parsed is never
/// frozen: a `--mount` naming it is refused, and without `--mount` it is
/// listed as skipped.
pub fn plan_from(table: &MountTable, sel: &Selection, env: &dyn PlanEnv) -> Result<FreezePlan, FreezeError> {
    let mountinfo = table.entries.as_slice();
    // The last mount at a path is the visible one; earlier ones are covered
    // and opening their path would reach the covering mount instead.
    let mut visible: HashMap<&Path, usize> = HashMap::new();
    for (i, m) in mountinfo.iter().enumerate() {
        visible.insert(&m.mount_point, i);
    }

    let candidates: Vec<usize> = if sel.mounts.is_empty() {
        (0..mountinfo.len()).collect()
    } else {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for p in &sel.mounts {
            // Which of two mounts on this path is visible cannot be told
            // when one of their lines is unreadable.
            if let Some(u) = table.unparsed.iter().find(|u| u.mount_point.as_deref() == Some(p.as_path())) {
                return Err(FreezeError::Unparsable { path: p.clone(), line: u.line, reason: u.reason.clone() });
            }
            let i = *visible.get(p.as_path()).ok_or_else(|| FreezeError::NotAMountPoint { path: p.clone() })?;
            if seen.insert(i) {
                out.push(i);
            }
        }
        // Mount-table order, so "the first with root /" below means the same in both modes.
        out.sort_unstable();
        out
    };

    let mut plan = FreezePlan::default();
    if sel.mounts.is_empty() {
        for u in &table.unparsed {
            if let Some(path) = &u.mount_point {
                let reason = format!("its line {} in /proc/self/mountinfo cannot be parsed ({}): not judged, not frozen", u.line, u.reason);
                plan.skipped.push(Skipped { path: path.clone(), fs_type: "unknown".into(), reason });
            }
        }
    }
    let mut eligible: Vec<usize> = Vec::new();
    for &i in &candidates {
        let m = &mountinfo[i];
        match ineligible_reason(m, i, &visible, sel, env) {
            Some(reason) => plan.skipped.push(skip(m, reason)),
            None => eligible.push(i),
        }
    }

    // One freeze per superblock: prefer the mount of the whole fs (root "/")
    // over bind mounts of a subdirectory, else the first in mount order.
    let mut chosen: Vec<usize> = Vec::new();
    let mut by_dev: HashMap<(u32, u32), usize> = HashMap::new();
    let mut ordered = eligible.clone();
    ordered.sort_by_key(|&i| (mountinfo[i].root != Path::new("/"), i));
    for i in ordered {
        let m = &mountinfo[i];
        if let Some(&first) = by_dev.get(&m.dev) {
            let kind = if m.root == Path::new("/") { "another mount" } else { "a bind mount" };
            plan.skipped.push(skip(m, format!("{kind} of the file system already frozen at {}", mountinfo[first].mount_point.display())));
        } else {
            by_dev.insert(m.dev, i);
            chosen.push(i);
        }
    }
    chosen.sort_unstable();

    plan.targets = freeze_order(mountinfo, &chosen, env)
        .into_iter()
        .map(|i| {
            let m = &mountinfo[i];
            Target {
                path: m.mount_point.clone(),
                fs_type: m.fs_type.clone(),
                source: m.source.to_string_lossy().into_owned(),
                dev: m.dev,
                mount_id: m.mount_id,
            }
        })
        .collect();
    Ok(plan)
}

fn skip(m: &MountInfoEntry, reason: String) -> Skipped {
    Skipped { path: m.mount_point.clone(), fs_type: m.fs_type.clone(), reason }
}

fn ineligible_reason(m: &MountInfoEntry, i: usize, visible: &HashMap<&Path, usize>, sel: &Selection, env: &dyn PlanEnv) -> Option<String> {
    if let Some(pat) = sel.exclude.iter().find(|p| excluded(p, &m.mount_point)) {
        return Some(format!("excluded by {pat:?}"));
    }
    let base = m.fs_type.split('.').next().unwrap_or("");
    if NETWORK_FS.contains(&m.fs_type.as_str()) || base == "fuse" {
        return Some(format!("network or shared file system ({}): its data is not on this machine's disks", m.fs_type));
    }
    if NO_FREEZE_FS.contains(&m.fs_type.as_str()) {
        return Some(format!("{} does not support freezing", m.fs_type));
    }
    // Not major == 0: btrfs reports an anonymous 0:N device yet sits on a real disk.
    if !env.is_block_device(Path::new(&m.source)) && !env.is_block_dev_number(m.dev) {
        return Some(format!("pseudo file system ({}): no block device to snapshot", m.fs_type));
    }
    if m.read_only() {
        return Some("mounted read-only: already consistent, nothing to freeze".into());
    }
    if visible.get(m.mount_point.as_path()) != Some(&i) {
        return Some("covered by a later mount on the same directory".into());
    }
    None
}

fn excluded(pattern: &str, path: &Path) -> bool {
    if Path::new(pattern) == path {
        return true;
    }
    let (Ok(p), Ok(s)) = (CString::new(pattern), CString::new(path.as_os_str().as_bytes())) else {
        return false;
    };
    // SAFETY: both are valid NUL-terminated strings that outlive the call.
    unsafe { libc::fnmatch(p.as_ptr(), s.as_ptr(), 0) == 0 }
}

/// Topological sort of `chosen` (mount-table indices) into freeze order:
/// a mount below another is frozen before it, and a loop-mounted fs is
/// frozen before the fs holding its image. Ties go to the deeper mount
/// point, then the later mount, so the result is deterministic.
fn freeze_order(mountinfo: &[MountInfoEntry], chosen: &[usize], env: &dyn PlanEnv) -> Vec<usize> {
    let n = chosen.len();
    let backing: Vec<Option<(u32, u32)>> = chosen.iter().map(|&i| env.loop_backing_dev(Path::new(&mountinfo[i].source))).collect();
    // before[a] holds every b that must be frozen after a.
    let mut after_count = vec![0usize; n];
    let mut successors: Vec<Vec<usize>> = vec![Vec::new(); n];
    for a in 0..n {
        for b in 0..n {
            if a == b {
                continue;
            }
            let (ma, mb) = (&mountinfo[chosen[a]], &mountinfo[chosen[b]]);
            let below = ma.mount_point != mb.mount_point && ma.mount_point.starts_with(&mb.mount_point);
            let image_on = backing[a] == Some(mb.dev);
            if below || image_on {
                successors[a].push(b);
                after_count[b] += 1;
            }
        }
    }
    let priority = |k: usize| {
        let m = &mountinfo[chosen[k]];
        (m.mount_point.components().count(), chosen[k])
    };
    let mut done = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let ready = (0..n).filter(|&k| !done[k] && after_count[k] == 0).max_by_key(|&k| priority(k));
        // A cycle (an image stored below the mount of its own loop fs) has no
        // safe order; fall back to depth order rather than dropping mounts.
        let k = match ready {
            Some(k) => k,
            None => {
                let k = (0..n).filter(|&k| !done[k]).max_by_key(|&k| priority(k)).unwrap_or(0);
                tracing::warn!(mount = %mountinfo[chosen[k]].mount_point.display(), "freeze order has a cycle");
                k
            }
        };
        done[k] = true;
        order.push(chosen[k]);
        for &s in &successors[k] {
            after_count[s] = after_count[s].saturating_sub(1);
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Devices are "/dev/<x>"; `loops` maps a loop device to the dev of the fs holding its image.
    struct FakeEnv {
        loops: Vec<(&'static str, (u32, u32))>,
    }
    impl PlanEnv for FakeEnv {
        fn is_block_device(&self, path: &Path) -> bool {
            path.starts_with("/dev/")
        }
        fn loop_backing_dev(&self, device: &Path) -> Option<(u32, u32)> {
            self.loops.iter().find(|(d, _)| Path::new(d) == device).map(|(_, dev)| *dev)
        }
    }

    fn table(lines: &[&str]) -> MountTable {
        let t = mountinfo::parse(&lines.join("\n"));
        assert!(t.unparsed.is_empty(), "{:?}", t.unparsed);
        t
    }

    fn paths(p: &FreezePlan) -> Vec<&str> {
        p.targets.iter().map(|t| t.path.to_str().unwrap()).collect()
    }

    fn reason<'a>(p: &'a FreezePlan, path: &str) -> &'a str {
        &p.skipped.iter().find(|s| s.path == Path::new(path)).unwrap_or_else(|| panic!("{path} not skipped: {p:?}")).reason
    }

    const BASE: &[&str] = &[
        "1 0 254:0 / / rw - ext4 /dev/vda rw",
        "2 1 0:21 / /proc rw - proc proc rw",
        "3 1 0:22 / /run rw - tmpfs tmpfs rw",
        "4 1 7:0 / /data rw - xfs /dev/loop0 rw",
        "5 4 7:1 / /data/inner rw - ext4 /dev/loop1 rw",
        "6 1 0:40 / /srv/b rw - btrfs /dev/loop2 rw",
        "7 1 0:41 / /net rw - nfs4 host:/x rw",
        "8 1 8:1 / /boot/efi rw - vfat /dev/sda1 rw",
        "9 1 7:3 / /ro ro - ext4 /dev/loop3 rw",
        "10 1 0:44 / /fuse rw - fuse.sshfs me@h: rw",
    ];

    #[test]
    fn every_mode_orders_children_first_and_skips_with_reasons() {
        let env = FakeEnv { loops: vec![] };
        let p = plan_from(&table(BASE), &Selection::default(), &env).unwrap();
        // Equal depth: the later mount first.
        assert_eq!(paths(&p), ["/srv/b", "/data/inner", "/data", "/"]);
        assert!(reason(&p, "/proc").contains("pseudo"));
        assert!(reason(&p, "/net").contains("network"));
        assert!(reason(&p, "/fuse").contains("network"));
        assert!(reason(&p, "/boot/efi").contains("vfat does not support"));
        assert!(reason(&p, "/ro").contains("read-only"));
        assert_eq!(p.thaw_order().next().unwrap().path, Path::new("/"));
    }

    #[test]
    fn loop_fs_is_frozen_before_the_fs_holding_its_image_even_when_shallower() {
        // /a (ext4 on loop5) has its image on /deep/er/x (7:9); depth alone would freeze /deep/er/x first.
        let t = table(&[
            "1 0 254:0 / / rw - ext4 /dev/vda rw",
            "2 1 7:9 / /deep/er/x rw - xfs /dev/loop9 rw",
            "3 1 7:5 / /a rw - ext4 /dev/loop5 rw",
        ]);
        let env = FakeEnv { loops: vec![("/dev/loop5", (7, 9)), ("/dev/loop9", (254, 0))] };
        let p = plan_from(&t, &Selection::default(), &env).unwrap();
        assert_eq!(paths(&p), ["/a", "/deep/er/x", "/"]);
    }

    #[test]
    fn bind_mount_and_duplicate_mounts_are_frozen_once_via_the_whole_fs() {
        let t = table(&[
            "4 1 7:0 /sub /bind rw - xfs /dev/loop0 rw",
            "5 1 7:0 / /data rw - xfs /dev/loop0 rw",
            "6 1 7:0 / /again rw - xfs /dev/loop0 rw",
        ]);
        let env = FakeEnv { loops: vec![] };
        let p = plan_from(&t, &Selection::default(), &env).unwrap();
        assert_eq!(paths(&p), ["/data"]);
        assert!(reason(&p, "/bind").contains("bind mount of the file system already frozen at /data"));
        assert!(reason(&p, "/again").contains("another mount"));
    }

    #[test]
    fn selection_restricts_rejects_non_mountpoints_and_reports_ineligible() {
        let env = FakeEnv { loops: vec![] };
        let sel = Selection { mounts: vec!["/data".into(), "/proc".into(), "/data/inner".into()], exclude: vec![] };
        let p = plan_from(&table(BASE), &sel, &env).unwrap();
        assert_eq!(paths(&p), ["/data/inner", "/data"]);
        assert_eq!(p.skipped.len(), 1);
        assert!(reason(&p, "/proc").contains("pseudo"));

        let sel = Selection { mounts: vec!["/data/nope".into()], exclude: vec![] };
        let err = plan_from(&table(BASE), &sel, &env).unwrap_err();
        assert!(matches!(err, FreezeError::NotAMountPoint { ref path } if path == Path::new("/data/nope")), "{err}");
    }

    #[test]
    fn exclusions_take_exact_paths_and_globs() {
        let env = FakeEnv { loops: vec![] };
        let sel = Selection { mounts: vec![], exclude: vec!["/".into(), "/data*".into()] };
        let p = plan_from(&table(BASE), &sel, &env).unwrap();
        assert_eq!(paths(&p), ["/srv/b"]);
        assert!(reason(&p, "/data/inner").contains("excluded by \"/data*\""));
        assert!(reason(&p, "/").contains("excluded by \"/\""));
    }

    #[test]
    fn covered_mount_is_skipped() {
        let t = table(&["4 1 7:0 / /m rw - xfs /dev/loop0 rw", "5 1 7:1 / /m rw - ext4 /dev/loop1 rw"]);
        let p = plan_from(&t, &Selection::default(), &FakeEnv { loops: vec![] }).unwrap();
        assert_eq!(p.targets.len(), 1);
        assert_eq!(p.targets[0].dev, (7, 1));
        assert!(p.skipped[0].reason.contains("covered"));
    }

    #[test]
    fn a_cycle_still_plans_every_mount() {
        let t = table(&["4 1 7:0 / /m rw - xfs /dev/loop0 rw", "5 4 7:1 / /m/n rw - ext4 /dev/loop1 rw"]);
        // /m's image lives on /m/n, which is below /m: no order is safe.
        let env = FakeEnv { loops: vec![("/dev/loop0", (7, 1))] };
        let p = plan_from(&t, &Selection::default(), &env).unwrap();
        assert_eq!(paths(&p), ["/m/n", "/m"]);
    }

    #[test]
    fn an_unparsable_line_blocks_only_a_mount_that_names_it() {
        let mut lines = BASE.to_vec();
        lines.push("11 1 7:9 / /odd rw - ext4 /dev/loop9 rw extra");
        lines.push("12 1 7:8");
        let t = mountinfo::parse(&lines.join("\n"));
        assert_eq!(t.unparsed.len(), 2);
        let env = FakeEnv { loops: vec![] };
        // Every-mount mode (thaw --all, a session without --mount) plans the rest ...
        let p = plan_from(&t, &Selection::default(), &env).unwrap();
        assert_eq!(paths(&p), ["/srv/b", "/data/inner", "/data", "/"]);
        // ... and says which mount it left alone, and why.
        assert!(reason(&p, "/odd").contains("line 11"), "{p:?}");
        // A --mount elsewhere is unaffected.
        let p = plan_from(&t, &Selection { mounts: vec!["/data".into()], exclude: vec![] }, &env).unwrap();
        assert_eq!(paths(&p), ["/data"]);
        // A --mount on the bad line is refused, naming the line.
        let err = plan_from(&t, &Selection { mounts: vec!["/odd".into()], exclude: vec![] }, &env).unwrap_err();
        assert!(matches!(err, FreezeError::Unparsable { line: 11, .. }), "{err}");
        assert!(err.to_string().contains("/odd"), "{err}");
    }

    #[test]
    fn an_empty_source_mount_is_judged_like_any_other() {
        let t = table(&["1 0 254:0 / / rw - ext4 /dev/vda rw", "42 1 0:39 / /x rw,relatime - tmpfs  rw"]);
        let p = plan_from(&t, &Selection::default(), &FakeEnv { loops: vec![] }).unwrap();
        assert_eq!(paths(&p), ["/"]);
        assert!(reason(&p, "/x").contains("pseudo"), "{p:?}");
    }
}
