//! Changed blocks between two recovery points of the same disk: what an
//! incremental copy or a backup agent's changed-block tracking needs, found
//! from the file systems' own metadata instead of reading both copies.
//!
//! - **reflink images** (XFS `reflink=1`, btrfs): `FIEMAP` on both images.
//!   A clone shares its physical extents with the original until one side
//!   is written (copy-on-write), so a range mapped to the same physical
//!   bytes on both sides is unchanged; a range whose physical extents
//!   differ, or that is a hole on one side only, is reported as changed.
//!   Content is read only where FIEMAP cannot decide: an extent without a
//!   stable physical address (inline, encoded, not aligned, unknown). On
//!   XFS images none of those occur; the count is reported (`compared_bytes`).
//! - **btrfs snapshots**: the file extent items of the newer snapshot whose
//!   generation is above the older snapshot's (`BTRFS_IOC_TREE_SEARCH`, the
//!   ioctl `btrfs subvolume find-new` uses, with its `min_transid`
//!   pre-filter so unchanged leaves are skipped without being read). Files
//!   are named by walking the newer snapshot. A size change is reported as
//!   a changed tail; files gone from the newer snapshot are listed as
//!   `removed`. A hole punched into a file after the older snapshot writes
//!   no extent on file systems with `no-holes` (the default), so it is not
//!   reported — reflink images have no such gap.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::snapshot::btrfs::{subvol_info, FIRST_FREE_OBJECTID};
use crate::snapshot::{Made, ProviderKind};

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{0}")]
    Mismatch(String),
}

fn io(path: &Path, e: impl std::fmt::Display) -> DiffError {
    DiffError::Io { path: path.to_path_buf(), message: e.to_string() }
}

/// How the changed ranges were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    Fiemap,
    BtrfsGeneration,
}

/// A byte range `[offset, offset + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Range {
    pub offset: u64,
    pub len: u64,
}

impl Range {
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }
}

/// One file's changed ranges (in the newer point).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileDiff {
    /// The image (reflink), or the path inside the snapshot (btrfs).
    #[serde(serialize_with = "crate::serde_path::lossy")]
    pub path: PathBuf,
    /// Its size in the newer point.
    pub size: u64,
    pub changed_bytes: u64,
    pub ranges: Vec<Range>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub method: Method,
    pub files: Vec<FileDiff>,
    /// Every changed byte, all files.
    pub changed_bytes: u64,
    /// Bytes whose content had to be read because the extent map could not decide.
    pub compared_bytes: u64,
    /// btrfs: files in the older snapshot that the newer one no longer has.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "crate::serde_path::lossy_vec")]
    pub removed: Vec<PathBuf>,
}

/// The changed ranges between two points (`older`, `newer`) of the same disk.
pub fn between(older: &Made, newer: &Made) -> Result<Diff, DiffError> {
    if older.provider != newer.provider {
        return Err(DiffError::Mismatch(format!(
            "the points were made by different providers ({} and {}): no shared extents to compare",
            older.provider.as_str(),
            newer.provider.as_str()
        )));
    }
    if older.source.is_some() && newer.source.is_some() && older.source != newer.source {
        return Err(DiffError::Mismatch("the points are snapshots of different sources; diff compares points of one disk".into()));
    }
    let one = |m: &Made| match m.paths.as_slice() {
        [p] => Ok(p.clone()),
        _ => Err(DiffError::Mismatch(format!("a {} point names exactly one path; this one names {}", m.provider.as_str(), m.paths.len()))),
    };
    match older.provider {
        ProviderKind::Reflink => images(&one(older)?, &one(newer)?),
        ProviderKind::Btrfs => btrfs(&one(older)?, older.generation, &one(newer)?),
        other => Err(DiffError::Mismatch(format!(
            "changed blocks are known for reflink and btrfs points; a {} point's blocks live elsewhere (the cloud's own changed-block API)",
            other.as_str()
        ))),
    }
}

/// Two paths given directly: two image files, or two btrfs snapshots.
pub fn paths(older: &Path, newer: &Path) -> Result<Diff, DiffError> {
    let meta = |p: &Path| std::fs::metadata(p).map_err(|e| io(p, e));
    let (a, b) = (meta(older)?, meta(newer)?);
    match (a.is_file(), b.is_file(), a.is_dir(), b.is_dir()) {
        (true, true, _, _) => images(older, newer),
        (_, _, true, true) => btrfs(older, None, newer),
        _ => Err(DiffError::Mismatch("give two image files or two btrfs snapshots".into())),
    }
}

// ---------- FIEMAP ----------

const FS_IOC_FIEMAP_MAGIC: u8 = b'f';
const FIEMAP_FLAG_SYNC: u32 = 1;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
/// Extents whose physical address says nothing about sharing: unknown or
/// delayed allocation, encoded (compressed), inline or tail-packed data,
/// data not block-aligned.
const UNDECIDABLE: u32 = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400;
const BATCH: usize = 512;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [FiemapExtent; BATCH],
}

/// The ioctl number encodes only the header's size (`struct fiemap`).
#[repr(C)]
struct FiemapHeader {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
}

nix::ioctl_readwrite!(fiemap_ioctl, FS_IOC_FIEMAP_MAGIC, 11, FiemapHeader);

#[derive(Clone, Copy, Debug)]
struct Extent {
    logical: u64,
    physical: u64,
    len: u64,
    decidable: bool,
}

/// Every mapped extent of `file`, in logical order (after a sync, so
/// delayed allocations have their addresses).
fn extents(file: &File, path: &Path) -> Result<Vec<Extent>, DiffError> {
    let mut out = Vec::new();
    let mut start = 0u64;
    let mut map = Box::new(Fiemap {
        start: 0,
        length: 0,
        flags: 0,
        mapped_extents: 0,
        extent_count: 0,
        reserved: 0,
        extents: [FiemapExtent::default(); BATCH],
    });
    loop {
        map.start = start;
        map.length = u64::MAX - start;
        map.flags = FIEMAP_FLAG_SYNC;
        map.mapped_extents = 0;
        map.extent_count = BATCH as u32;
        // SAFETY: `map` is a header followed by BATCH extents, as
        // extent_count tells the kernel; the fd is open.
        unsafe { fiemap_ioctl(file.as_raw_fd(), (&mut *map as *mut Fiemap).cast::<FiemapHeader>()) }
            .map_err(|e| io(path, format!("FIEMAP: {e} (the file system cannot map extents)")))?;
        let n = (map.mapped_extents as usize).min(BATCH);
        if n == 0 {
            return Ok(out);
        }
        for e in &map.extents[..n] {
            out.push(Extent { logical: e.logical, physical: e.physical, len: e.length, decidable: e.flags & UNDECIDABLE == 0 });
        }
        let last = map.extents[n - 1];
        if last.flags & FIEMAP_EXTENT_LAST != 0 {
            return Ok(out);
        }
        let next = last.logical.saturating_add(last.length);
        if next <= start {
            return Ok(out);
        }
        start = next;
    }
}

/// What one side holds over a segment.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Hole,
    /// Physical address of the segment's first byte.
    At(u64),
    Undecidable,
}

/// The side's state at `pos`, and where it next changes.
fn side_at(ext: &[Extent], i: &mut usize, pos: u64) -> (Side, u64) {
    while *i < ext.len() && ext[*i].logical.saturating_add(ext[*i].len) <= pos {
        *i += 1;
    }
    match ext.get(*i) {
        Some(e) if e.logical <= pos => {
            let side = if e.decidable { Side::At(e.physical.saturating_add(pos - e.logical)) } else { Side::Undecidable };
            (side, e.logical.saturating_add(e.len))
        }
        Some(e) => (Side::Hole, e.logical),
        None => (Side::Hole, u64::MAX),
    }
}

/// Appends `[offset, offset+len)`, merging with the previous range when adjacent.
fn push(ranges: &mut Vec<Range>, offset: u64, len: u64) {
    if len == 0 {
        return;
    }
    if let Some(last) = ranges.last_mut() {
        if last.end() == offset {
            last.len += len;
            return;
        }
    }
    ranges.push(Range { offset, len });
}

/// Changed ranges between two images, from their extent maps.
pub fn images(older: &Path, newer: &Path) -> Result<Diff, DiffError> {
    let open = |p: &Path| File::open(p).map_err(|e| io(p, e));
    let (fa, fb) = (open(older)?, open(newer)?);
    let size = |f: &File, p: &Path| f.metadata().map(|m| m.len()).map_err(|e| io(p, e));
    let (sa, sb) = (size(&fa, older)?, size(&fb, newer)?);
    let (ea, eb) = (extents(&fa, older)?, extents(&fb, newer)?);
    let common = sa.min(sb);
    let (mut ia, mut ib) = (0, 0);
    let mut ranges = Vec::new();
    let mut compared = 0u64;
    let mut pos = 0u64;
    while pos < common {
        let (a, enda) = side_at(&ea, &mut ia, pos);
        let (b, endb) = side_at(&eb, &mut ib, pos);
        let end = enda.min(endb).min(common);
        let len = end - pos;
        let changed = match (a, b) {
            (Side::Hole, Side::Hole) => false,
            (Side::At(x), Side::At(y)) => x != y,
            (Side::Undecidable, _) | (_, Side::Undecidable) => {
                compared = compared.saturating_add(len);
                !same_content(&fa, &fb, pos, len).map_err(|e| io(newer, e))?
            }
            _ => true,
        };
        if changed {
            push(&mut ranges, pos, len);
        }
        pos = end;
    }
    // A size change: the tail exists on one side only.
    push(&mut ranges, common, sa.max(sb) - common);
    let changed_bytes = ranges.iter().map(|r| r.len).sum();
    Ok(Diff {
        method: Method::Fiemap,
        files: vec![FileDiff { path: newer.to_path_buf(), size: sb, changed_bytes, ranges }],
        changed_bytes,
        compared_bytes: compared,
        removed: Vec::new(),
    })
}

fn same_content(a: &File, b: &File, offset: u64, len: u64) -> std::io::Result<bool> {
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(ba.len() as u64) as usize;
        a.read_exact_at(&mut ba[..n], offset + done)?;
        b.read_exact_at(&mut bb[..n], offset + done)?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
        done += n as u64;
    }
    Ok(true)
}

// ---------- btrfs generations ----------

const BTRFS_EXTENT_DATA_KEY: u32 = 108;
const SEARCH_BUF: usize = 4096 - 104;
const FILE_EXTENT_INLINE: u8 = 0;

/// `struct btrfs_ioctl_search_key`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: u64,
    unused2: u64,
    unused3: u64,
    unused4: u64,
}

/// `struct btrfs_ioctl_search_args`.
#[repr(C)]
struct SearchArgs {
    key: SearchKey,
    buf: [u8; SEARCH_BUF],
}

const _: () = assert!(std::mem::size_of::<SearchArgs>() == 4096);

nix::ioctl_readwrite!(tree_search, 0x94, 17, SearchArgs);

fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0)
}

fn ne64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).and_then(|s| s.try_into().ok()).map(u64::from_ne_bytes).unwrap_or(0)
}

fn ne32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).and_then(|s| s.try_into().ok()).map(u32::from_ne_bytes).unwrap_or(0)
}

/// Extents written after `generation` in the snapshot `root`: inode → ranges.
fn changed_extents(root: &Path, generation: u64) -> Result<BTreeMap<u64, Vec<Range>>, DiffError> {
    let dir = File::open(root).map_err(|e| io(root, e))?;
    let mut args = Box::new(SearchArgs { key: SearchKey::default(), buf: [0; SEARCH_BUF] });
    let mut key = SearchKey {
        // 0: the tree of the subvolume the fd is in.
        tree_id: 0,
        max_objectid: u64::MAX,
        max_offset: u64::MAX,
        min_transid: generation.saturating_add(1),
        max_transid: u64::MAX,
        min_type: BTRFS_EXTENT_DATA_KEY,
        max_type: BTRFS_EXTENT_DATA_KEY,
        ..SearchKey::default()
    };
    let mut out: BTreeMap<u64, Vec<Range>> = BTreeMap::new();
    loop {
        key.nr_items = 4096;
        args.key = key;
        // SAFETY: args is a valid search_args; dir is open.
        unsafe { tree_search(dir.as_raw_fd(), &mut *args) }
            .map_err(|e| io(root, format!("BTRFS_IOC_TREE_SEARCH: {e} (not a btrfs snapshot?)")))?;
        let n = args.key.nr_items;
        if n == 0 {
            return Ok(out);
        }
        let mut at = 0usize;
        let (mut last_obj, mut last_type, mut last_off) = (0u64, 0u32, 0u64);
        for _ in 0..n {
            // struct btrfs_ioctl_search_header, native endian.
            let objectid = ne64(&args.buf, at + 8);
            let offset = ne64(&args.buf, at + 16);
            let kind = ne32(&args.buf, at + 24);
            let len = ne32(&args.buf, at + 28) as usize;
            let item = args.buf.get(at + 32..at + 32 + len).unwrap_or(&[]);
            at += 32 + len;
            (last_obj, last_type, last_off) = (objectid, kind, offset);
            // struct btrfs_file_extent_item, little endian, packed.
            if kind != BTRFS_EXTENT_DATA_KEY || item.len() < 21 || le64(item, 0) <= generation {
                continue;
            }
            let bytes = if item[20] == FILE_EXTENT_INLINE { le64(item, 8) } else { le64(item, 45) };
            let ranges = out.entry(objectid).or_default();
            push(ranges, offset, bytes);
        }
        // Continue after the last key returned.
        key.min_objectid = last_obj;
        key.min_type = last_type;
        match last_off.checked_add(1) {
            Some(o) => key.min_offset = o,
            None => {
                key.min_offset = 0;
                match last_type.checked_add(1) {
                    Some(t) if t <= BTRFS_EXTENT_DATA_KEY => key.min_type = t,
                    _ => {
                        key.min_type = BTRFS_EXTENT_DATA_KEY;
                        match last_obj.checked_add(1) {
                            Some(o) => key.min_objectid = o,
                            None => return Ok(out),
                        }
                    }
                }
            }
        }
        if key.min_type > BTRFS_EXTENT_DATA_KEY {
            key.min_type = BTRFS_EXTENT_DATA_KEY;
            key.min_offset = 0;
            match last_obj.checked_add(1) {
                Some(o) => key.min_objectid = o,
                None => return Ok(out),
            }
        }
    }
}

/// Regular files below `root` in this subvolume: relative path → (inode, size).
fn walk(root: &Path) -> Result<BTreeMap<PathBuf, (u64, u64)>, DiffError> {
    let dev = std::fs::symlink_metadata(root).map_err(|e| io(root, e))?.dev();
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for entry in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let entry = entry.map_err(|e| io(&dir, e))?;
            let meta = entry.metadata().map_err(|e| io(&entry.path(), e))?;
            let path = rel.join(entry.file_name());
            // Another subvolume (another st_dev, or a subvolume root) is
            // another tree: not part of this snapshot's extents.
            if meta.dev() != dev || (meta.is_dir() && meta.ino() == FIRST_FREE_OBJECTID) {
                continue;
            }
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                out.insert(path, (meta.ino(), meta.len()));
            }
        }
    }
    Ok(out)
}

/// Changed ranges between two btrfs snapshots of one subvolume.
/// `generation`: the older one's, as recorded when it was made (else read now).
pub fn btrfs(older: &Path, generation: Option<u64>, newer: &Path) -> Result<Diff, DiffError> {
    let generation = match generation {
        Some(g) => g,
        None => subvol_info(older).map_err(|e| io(older, e))?.generation,
    };
    let newer_gen = subvol_info(newer).map_err(|e| io(newer, e))?.generation;
    if newer_gen < generation {
        return Err(DiffError::Mismatch(format!(
            "{} (generation {newer_gen}) is older than {} (generation {generation}); give the older point first",
            newer.display(),
            older.display()
        )));
    }
    let changed = changed_extents(newer, generation)?;
    let old_files = walk(older)?;
    let new_files = walk(newer)?;
    let by_ino: HashMap<u64, (&PathBuf, u64)> = new_files.iter().map(|(p, (ino, size))| (*ino, (p, *size))).collect();
    let mut files: BTreeMap<PathBuf, FileDiff> = BTreeMap::new();
    for (ino, ranges) in changed {
        // Extents of files that are gone (or not regular) have no name here.
        let Some((path, size)) = by_ino.get(&ino) else { continue };
        // Extents past EOF (preallocated) are not content.
        let ranges: Vec<Range> =
            ranges.into_iter().filter(|r| r.offset < *size).map(|r| Range { offset: r.offset, len: r.len.min(size - r.offset) }).collect();
        files.insert((*path).clone(), FileDiff { path: (*path).clone(), size: *size, changed_bytes: 0, ranges });
    }
    for (path, (_, size)) in &new_files {
        let old_size = old_files.get(path).map(|(_, s)| *s).unwrap_or(0);
        if old_size != *size {
            let f = files.entry(path.clone()).or_insert_with(|| FileDiff {
                path: path.clone(),
                size: *size,
                changed_bytes: 0,
                ranges: Vec::new(),
            });
            let common = old_size.min(*size);
            f.ranges.push(Range { offset: common, len: old_size.max(*size) - common });
        }
    }
    let mut files: Vec<FileDiff> = files.into_values().collect();
    for f in &mut files {
        f.ranges = merged(std::mem::take(&mut f.ranges));
        f.changed_bytes = f.ranges.iter().map(|r| r.len).sum();
    }
    let removed = old_files.keys().filter(|p| !new_files.contains_key(*p)).cloned().collect();
    let changed_bytes = files.iter().map(|f| f.changed_bytes).sum();
    Ok(Diff { method: Method::BtrfsGeneration, files, changed_bytes, compared_bytes: 0, removed })
}

/// Sorted, overlapping and adjacent ranges joined.
fn merged(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.sort_by_key(|r| r.offset);
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.offset <= last.end() => {
                let end = last.end().max(r.end());
                last.len = end - last.offset;
            }
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(logical: u64, physical: u64, len: u64) -> Extent {
        Extent { logical, physical, len, decidable: true }
    }

    #[test]
    fn segments_follow_both_maps() {
        let a = [ext(0, 1000, 100), ext(200, 5000, 100)];
        let (mut i, mut j) = (0, 0);
        assert!(matches!(side_at(&a, &mut i, 50), (Side::At(1050), 100)));
        assert!(matches!(side_at(&a, &mut i, 100), (Side::Hole, 200)));
        assert!(matches!(side_at(&a, &mut j, 250), (Side::At(5050), 300)));
        assert!(matches!(side_at(&a, &mut j, 300), (Side::Hole, u64::MAX)));
    }

    #[test]
    fn ranges_merge_when_adjacent_or_overlapping() {
        let m = merged(vec![
            Range { offset: 10, len: 5 },
            Range { offset: 0, len: 10 },
            Range { offset: 12, len: 10 },
            Range { offset: 40, len: 1 },
        ]);
        assert_eq!(m, vec![Range { offset: 0, len: 22 }, Range { offset: 40, len: 1 }]);
    }
}
