//! The catalog: one JSON record per recovery point, `<state>/points/<id>.json`.
//!
//! A record says what a snapshot is worth (its label) and what the provider
//! made, and `points delete` hands what it names to the provider to delete:
//! so a record is as powerful as root. The directory must pass the trust
//! walk (root's alone, every directory above it too), records are opened
//! beneath its fd with `O_NOFOLLOW` and must be root-owned regular files
//! writable by nobody else, or they are refused — for reading as well.
//!
//! Writes are atomic and durable: an `O_EXCL` temporary file beneath the
//! checked directory, fsync, rename (a new record never replaces an existing
//! one: `RENAME_NOREPLACE`), fsync of the directory. A writer killed at any
//! moment leaves the old state or the new one, plus at worst a hidden
//! temporary file, which listing reports. A record that is torn or corrupt
//! anyway (a disk error, a hand edit, a copy) is reported with its path and
//! skipped: one bad record never hides the others or stops a session.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{self, OFlag, RenameFlags};
use nix::sys::stat::{self, Mode, SFlag};
use nix::unistd::{self, UnlinkatFlags};
use serde::{Deserialize, Serialize};

use crate::report::{Consistency, HookKind, Outcome, Phase};
use crate::trust::{self, TrustError};

use super::Made;

/// The catalog's directory below the state directory.
pub const POINTS_DIR: &str = "points";

/// The largest record written or read. A session report with every hook's
/// messages is a few KiB; what exceeds this is dropped from the record (the
/// report first), never written unbounded or read into memory unbounded.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// The record format; a newer one is reported, not guessed at.
pub const FORMAT: u32 = 1;

/// One recovery point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    pub format: u32,
    /// The session's id: sortable, unique per machine.
    pub id: String,
    /// When the point was recorded (Unix ms), right after its session ended.
    pub unix_ms: u64,
    /// The recovery point type: the session's label.
    pub consistency: Consistency,
    /// What took the snapshot, as the report describes it.
    #[serde(default)]
    pub provider: Option<String>,
    /// What the provider made, as it returned it (its delete and restore take this).
    #[serde(default)]
    pub made: Option<Made>,
    /// Snapshot ids (a cloud's, an agent's `snapshot_id`).
    #[serde(default)]
    pub snapshot_ids: Vec<String>,
    /// What the provider made on this machine (an image, a subvolume).
    #[serde(default)]
    pub snapshot_paths: Vec<PathBuf>,
    /// The file systems frozen for it (empty when nothing was frozen).
    #[serde(default)]
    pub mounts: Vec<PathBuf>,
    #[serde(default)]
    pub hooks: Vec<PointHook>,
    /// What plugins handed over (a backup label, a binlog position), kept
    /// under the state directory outside the snapshot.
    #[serde(default)]
    pub artifacts: Vec<PointArtifact>,
    /// Set when a delete was attempted and the provider failed: what it
    /// made may be partly gone. The record stays until a delete succeeds.
    #[serde(default)]
    pub delete_failed: Option<DeleteFailure>,
    /// The session's report as it printed it (dropped if the record would
    /// be larger than [`MAX_RECORD_BYTES`]).
    #[serde(default)]
    pub report: EmbeddedReport,
}

/// A point's report kept as the JSON text it was recorded as: listing the
/// catalog (every session does, to check `max_points`) then reads past it
/// instead of building a tree of every report it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EmbeddedReport(Box<serde_json::value::RawValue>);

impl EmbeddedReport {
    /// `value` as JSON text (`null` if it cannot be serialized).
    pub fn of(value: &impl Serialize) -> EmbeddedReport {
        serde_json::value::to_raw_value(value).map(EmbeddedReport).unwrap_or_default()
    }

    /// The report as a JSON tree (`null` if the text is not JSON, which a
    /// record read back from disk cannot be: it parsed as part of the record).
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or_default()
    }
}

impl Default for EmbeddedReport {
    fn default() -> EmbeddedReport {
        EmbeddedReport(serde_json::value::RawValue::NULL.to_owned())
    }
}

impl Point {
    pub fn app_consistent(&self) -> bool {
        self.consistency == Consistency::AppConsistent
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PointHook {
    pub name: String,
    pub kind: HookKind,
    pub phase: Phase,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PointArtifact {
    pub hook: String,
    pub name: String,
    pub path: PathBuf,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeleteFailure {
    pub unix_ms: u64,
    pub message: String,
}

/// Why the catalog could not do something; each names the path and the fix.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog {0}")]
    Untrusted(#[from] TrustError),
    #[error("{id:?} is not a recovery point id (ids are like q-1764481212-0a1b2c3d)")]
    BadId { id: String },
    #[error("no recovery point {id} in {} (see `quiesce points list`)", .dir.display())]
    NotFound { id: String, dir: PathBuf },
    #[error("{}: exists already; a new record never replaces one", .0.display())]
    Exists(PathBuf),
    #[error("{}: {message}", .path.display())]
    Bad { path: PathBuf, message: String },
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// A record that could not be read, with its path: reported, skipped.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(serialize_with = "crate::serde_path::lossy")]
    pub path: PathBuf,
    pub message: String,
}

/// Every readable point (oldest first) and what could not be read.
#[derive(Debug, Default)]
pub struct Listing {
    pub points: Vec<Point>,
    pub problems: Vec<Problem>,
}

impl Listing {
    /// The newest point with this label, if any (e.g. "when was the last
    /// AppConsistent point", for `doctor`).
    pub fn latest(&self, consistency: Consistency) -> Option<&Point> {
        self.points.iter().rev().find(|p| p.consistency == consistency)
    }
}

/// Whether a write may replace an existing record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    New,
    Replace,
}

/// The catalog under a state directory.
#[derive(Debug, Clone)]
pub struct Catalog {
    dir: PathBuf,
}

impl Catalog {
    /// The catalog of `state_dir` (`<state_dir>/points`); touches nothing.
    pub fn new(state_dir: &Path) -> Catalog {
        Catalog { dir: state_dir.join(POINTS_DIR) }
    }

    /// The catalog under `$QUIESCE_STATE_DIR` (default /var/lib/quiesce).
    pub fn from_env() -> Catalog {
        Catalog::new(&crate::session::state_dir_from_env())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes `point` atomically and durably (see the module doc).
    pub fn write(&self, point: &Point, mode: WriteMode) -> Result<PathBuf, CatalogError> {
        check_id(&point.id)?;
        let bytes = encode(point).map_err(|message| CatalogError::Bad { path: self.record_path(&point.id), message })?;
        let state = self.dir.parent().unwrap_or(Path::new("/"));
        let parent = trust::create_trusted_dir(state, 0o700)?;
        let dir = trust::trusted_subdir(&parent, OsStr::new(POINTS_DIR), &self.dir, 0o700)?;
        let name = format!("{}.json", point.id);
        let tmp = format!(".{name}.tmp");
        let path = self.dir.join(&name);
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e: Errno| CatalogError::Io { path: p, source: e.into() }
        };
        let tmp_path = self.dir.join(&tmp);
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match fcntl::openat(&dir, tmp.as_str(), flags, Mode::from_bits_truncate(0o600)) {
            Ok(fd) => fd,
            // Left by a writer of this record that was killed: remove the
            // name (never what it may point at) and start again.
            Err(Errno::EEXIST) => {
                unistd::unlinkat(&dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir).map_err(io(&tmp_path))?;
                fcntl::openat(&dir, tmp.as_str(), flags, Mode::from_bits_truncate(0o600)).map_err(io(&tmp_path))?
            }
            Err(e) => return Err(io(&tmp_path)(e)),
        };
        let mut f = File::from(fd);
        if let Err(source) = f.write_all(&bytes).and_then(|()| f.sync_all()) {
            let _ = unistd::unlinkat(&dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(CatalogError::Io { path: tmp_path, source });
        }
        drop(f);
        let renamed = match mode {
            WriteMode::New => fcntl::renameat2(&dir, tmp.as_str(), &dir, name.as_str(), RenameFlags::RENAME_NOREPLACE),
            WriteMode::Replace => fcntl::renameat(&dir, tmp.as_str(), &dir, name.as_str()),
        };
        if let Err(e) = renamed {
            let _ = unistd::unlinkat(&dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(if e == Errno::EEXIST { CatalogError::Exists(path) } else { io(&path)(e) });
        }
        // The rename is durable only once the directory is.
        self.sync_dir(&dir)?;
        Ok(path)
    }

    /// Every point, oldest first; unreadable records and leftovers of killed
    /// writers are reported in `problems`. A missing catalog is empty; an
    /// untrusted one is an error (its records could name anything).
    pub fn list(&self) -> Result<Listing, CatalogError> {
        let Some(dir) = self.open_dir()? else { return Ok(Listing::default()) };
        let mut listing = Listing::default();
        for name in self.names(&dir, &mut listing.problems)? {
            let path = self.dir.join(&name);
            let bytes = name.as_bytes();
            if bytes.starts_with(b".") && bytes.ends_with(b".json.tmp") {
                listing.problems.push(Problem {
                    path,
                    message: "left by a writer that was killed before it finished (the record it was writing was never \
                              published); safe to delete"
                        .into(),
                });
                continue;
            }
            let Some(id) = bytes.strip_suffix(b".json").and_then(|s| std::str::from_utf8(s).ok()) else {
                listing.problems.push(Problem { path, message: "not a recovery point record (expected <id>.json); ignored".into() });
                continue;
            };
            match self.read_at(&dir, id) {
                Ok(p) => listing.points.push(p),
                Err(e) => listing.problems.push(Problem { path, message: problem_message(e) }),
            }
        }
        listing.points.sort_by(|a, b| a.unix_ms.cmp(&b.unix_ms).then_with(|| a.id.cmp(&b.id)));
        Ok(listing)
    }

    /// At least as many as [`Catalog::list`] would return (every name a
    /// record could have), without reading any: enough to tell that there
    /// is room for one more.
    pub fn count_at_most(&self) -> Result<usize, CatalogError> {
        let Some(dir) = self.open_dir()? else { return Ok(0) };
        let names = self.names(&dir, &mut Vec::new())?;
        Ok(names.iter().filter(|n| !n.as_bytes().starts_with(b".") && n.as_bytes().ends_with(b".json")).count())
    }

    /// The directory's entry names, sorted.
    fn names(&self, dir: &OwnedFd, problems: &mut Vec<Problem>) -> Result<Vec<std::ffi::OsString>, CatalogError> {
        let entries =
            std::fs::read_dir(crate::trust::proc_fd(dir)).map_err(|source| CatalogError::Io { path: self.dir.clone(), source })?;
        let mut names: Vec<std::ffi::OsString> = Vec::new();
        for e in entries {
            match e {
                Ok(e) => names.push(e.file_name()),
                Err(source) => problems.push(Problem { path: self.dir.clone(), message: format!("cannot list: {source}") }),
            }
        }
        names.sort();
        Ok(names)
    }

    /// The point `id`.
    pub fn get(&self, id: &str) -> Result<Point, CatalogError> {
        check_id(id)?;
        let Some(dir) = self.open_dir()? else { return Err(self.not_found(id)) };
        self.read_at(&dir, id)
    }

    /// Removes the record of `id` (what it names must be deleted first) and
    /// makes that durable.
    pub fn remove(&self, id: &str) -> Result<(), CatalogError> {
        self.unlink(id, true)
    }

    /// Removes the record of `id` without waiting for the disk (no fsync of
    /// the directory): for a record of a snapshot quiesce does not manage,
    /// which a crash may bring back only to be forgotten again.
    pub fn forget(&self, id: &str) -> Result<(), CatalogError> {
        self.unlink(id, false)
    }

    fn unlink(&self, id: &str, durable: bool) -> Result<(), CatalogError> {
        check_id(id)?;
        let Some(dir) = self.open_dir()? else { return Err(self.not_found(id)) };
        let name = format!("{id}.json");
        let path = self.dir.join(&name);
        match unistd::unlinkat(&dir, name.as_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) => {}
            Err(Errno::ENOENT) => return Err(self.not_found(id)),
            Err(e) => return Err(CatalogError::Io { path, source: e.into() }),
        }
        if durable {
            self.sync_dir(&dir)?;
        }
        // The session's artifacts go with its record (after it: a record
        // without its artifacts is less wrong than artifacts left for good).
        if let Some(state_dir) = self.dir.parent() {
            if let Err(e) = crate::session::artifacts::remove(state_dir, id) {
                tracing::warn!("point {id}: its record is gone, but its artifacts are not: {e}");
            }
        }
        Ok(())
    }

    /// fsync of the directory (through an `O_PATH` fd it cannot be done).
    fn sync_dir(&self, dir: &OwnedFd) -> Result<(), CatalogError> {
        let io = |e: Errno| CatalogError::Io { path: self.dir.clone(), source: e.into() };
        let d = fcntl::openat(dir, ".", OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).map_err(io)?;
        unistd::fsync(&d).map_err(io)
    }

    fn not_found(&self, id: &str) -> CatalogError {
        CatalogError::NotFound { id: id.to_string(), dir: self.dir.clone() }
    }

    /// The checked directory, or None when there is none yet.
    fn open_dir(&self) -> Result<Option<OwnedFd>, CatalogError> {
        match trust::open_trusted_dir(&self.dir) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn read_at(&self, dir: &OwnedFd, id: &str) -> Result<Point, CatalogError> {
        check_id(id)?;
        let name = format!("{id}.json");
        let path = self.dir.join(&name);
        let bad = |message: String| CatalogError::Bad { path: path.clone(), message };
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = match fcntl::openat(dir, name.as_str(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Err(self.not_found(id)),
            Err(Errno::ELOOP) => return Err(bad("is a symbolic link; a record must be a regular file (refused, not followed)".into())),
            Err(e) => return Err(CatalogError::Io { path, source: e.into() }),
        };
        let st = stat::fstat(&fd).map_err(|e| CatalogError::Io { path: path.clone(), source: e.into() })?;
        if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
            return Err(bad("not a regular file".into()));
        }
        if st.st_uid != 0 && st.st_uid != unistd::geteuid().as_raw() {
            return Err(bad(format!("owned by uid {}; only records root wrote are trusted", st.st_uid)));
        }
        if st.st_mode & 0o022 != 0 {
            return Err(bad(format!("writable by group or others (mode {:04o}); not trusted", st.st_mode & 0o7777)));
        }
        // Sized from fstat: one read for the record (plus the one that sees
        // its end), not a doubling series of small ones; still capped.
        let mut buf = Vec::with_capacity(usize::try_from(st.st_size).unwrap_or(0).min(MAX_RECORD_BYTES).saturating_add(1));
        File::from(fd)
            .take(MAX_RECORD_BYTES as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|source| CatalogError::Io { path: path.clone(), source })?;
        if buf.len() > MAX_RECORD_BYTES {
            return Err(bad(format!("larger than {MAX_RECORD_BYTES} bytes; not read")));
        }
        let point: Point = serde_json::from_slice(&buf).map_err(|e| {
            bad(if e.is_eof() { format!("torn record (ends early: {e}); skipped") } else { format!("corrupt record ({e}); skipped") })
        })?;
        if point.format > FORMAT {
            return Err(bad(format!("record format {} is newer than this quiesce reads ({FORMAT}); upgrade quiesce", point.format)));
        }
        if point.id != id {
            return Err(bad(format!("names point {:?}, not {id:?} (renamed by hand?)", point.id)));
        }
        Ok(point)
    }
}

/// The record's bytes, at most [`MAX_RECORD_BYTES`]: the embedded report
/// goes first if it does not fit, then the hooks' list.
fn encode(point: &Point) -> Result<Vec<u8>, String> {
    let mut p = point.clone();
    for step in 0..3 {
        let bytes = serde_json::to_vec_pretty(&p).map_err(|e| format!("cannot encode the record: {e}"))?;
        if bytes.len() <= MAX_RECORD_BYTES {
            return Ok(bytes);
        }
        match step {
            0 => {
                p.report = EmbeddedReport::of(
                    &serde_json::json!({ "dropped": format!("the report made the record larger than {MAX_RECORD_BYTES} bytes") }),
                )
            }
            _ => p.hooks.clear(),
        }
    }
    Err(format!("the record is larger than {MAX_RECORD_BYTES} bytes even without its report and hooks"))
}

fn problem_message(e: CatalogError) -> String {
    match e {
        CatalogError::Bad { message, .. } => message,
        CatalogError::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// Ids become file names: one component, no leading dot, a bounded length.
pub fn check_id(id: &str) -> Result<(), CatalogError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(CatalogError::BadId { id: id.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        // Not under /tmp: the trust walk refuses a world-writable directory on the path.
        let d = PathBuf::from(format!("/run/quiesce-unit-catalog-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn point(id: &str, unix_ms: u64) -> Point {
        Point {
            format: FORMAT,
            id: id.into(),
            unix_ms,
            consistency: Consistency::AppConsistent,
            provider: Some("test".into()),
            made: None,
            snapshot_ids: vec!["snap-1".into()],
            snapshot_paths: vec![],
            mounts: vec!["/mnt/a".into()],
            hooks: vec![],
            artifacts: vec![],
            delete_failed: None,
            report: EmbeddedReport::of(&serde_json::json!({"session_id": id})),
        }
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_skipped_with_their_path() {
        let state = dir("rt");
        let c = Catalog::new(&state);
        assert!(c.list().unwrap().points.is_empty(), "no catalog yet: empty, not an error");
        c.write(&point("q-2-b", 2000), WriteMode::New).unwrap();
        c.write(&point("q-1-a", 1000), WriteMode::New).unwrap();
        assert!(matches!(c.write(&point("q-1-a", 5), WriteMode::New), Err(CatalogError::Exists(_))));
        std::fs::write(c.dir().join("q-3-torn.json"), &serde_json::to_vec(&point("q-3-torn", 3000)).unwrap()[..40]).unwrap();
        std::fs::write(c.dir().join("q-4-junk.json"), b"{\"format\": 1, \"id\": 7}").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", c.dir().join("q-5-link.json")).unwrap();
        std::fs::write(c.dir().join(".q-6.json.tmp"), b"{").unwrap();
        let l = c.list().unwrap();
        let _ = std::fs::remove_dir_all(&state);
        assert_eq!(l.points.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["q-1-a", "q-2-b"]);
        let msg = |name: &str| l.problems.iter().find(|p| p.path.ends_with(name)).map(|p| p.message.clone()).unwrap_or_default();
        assert!(msg("q-3-torn.json").contains("torn"), "{:?}", l.problems);
        assert!(msg("q-4-junk.json").contains("corrupt"), "{:?}", l.problems);
        assert!(msg("q-5-link.json").contains("symbolic link"), "{:?}", l.problems);
        assert!(msg(".q-6.json.tmp").contains("killed"), "{:?}", l.problems);
    }

    #[test]
    fn ids_cannot_leave_the_catalog() {
        for id in ["../x", "a/b", ".hidden", "", "a b"] {
            assert!(matches!(check_id(id), Err(CatalogError::BadId { .. })), "{id:?}");
        }
        check_id("q-1764481212-0a1b2c3d").unwrap();
    }

    #[test]
    fn an_oversized_report_is_dropped_not_written() {
        let mut p = point("q-big", 1);
        p.report = EmbeddedReport::of(&serde_json::json!({ "x": "y".repeat(MAX_RECORD_BYTES) }));
        let bytes = encode(&p).unwrap();
        assert!(bytes.len() <= MAX_RECORD_BYTES);
        let back: Point = serde_json::from_slice(&bytes).unwrap();
        assert!(back.report.value()["dropped"].as_str().unwrap_or_default().contains("larger"));
    }
}
