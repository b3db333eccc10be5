//! `quiesce points restore ID --to PATH`: a point's snapshot restored to an
//! alternate location by its provider, never over live data, with the
//! database artifacts the point kept put where the database needs them, and
//! a list of what the admin must still do.
//!
//! "Never over live data": a target that is a mount point or has a mount
//! below it is always refused (a restore there would hide or shadow what a
//! running system uses); an existing non-empty directory or file only with
//! `--in-place`, and then it is renamed aside (`PATH.before-ID`), not
//! deleted, and a file that backs a loop device (a mounted disk image) is
//! refused. The restored tree is whatever the snapshot held — the source
//! machine's users' content — so artifacts are written beneath it with
//! `openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_XDEV)`, new files
//! only (`O_EXCL`): a planted symlink cannot send a root write elsewhere.
//!
//! Where PostgreSQL's `backup_label` goes: the data directory in the restored
//! tree, given by `--pg-data DIR` (relative to the restored tree, or an
//! absolute path inside it), else found by looking for the one directory
//! holding `PG_VERSION` and `global/pg_control` at most four levels down.
//! None or several found: nothing is written and the admin is told what to
//! copy where. The plugin's config cannot say it (the postgres plugin is
//! given a socket or port, not the data directory, and the snapshot may be
//! mounted anywhere), so the restore does not pretend it can.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{self, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{self, Mode};
use serde::Serialize;

use super::catalog::Point;
use crate::report::{label_name, Consistency};
use crate::snapshot::{self, Action, ProviderKind};
use crate::trust::{self, Rule};

/// The largest artifact copied into a restored tree (the plugins' artifacts
/// are small text: a label, an LSN, a binlog position).
const MAX_ARTIFACT_BYTES: u64 = 16 << 20;
/// How deep and how wide the data-directory search looks.
const SEARCH_DEPTH: usize = 4;
const SEARCH_ENTRIES: usize = 20_000;

/// PostgreSQL's files, written into the restored data directory.
const PG_FILES: [&str; 2] = ["backup_label", "tablespace_map"];

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Where the provider restores to (a new image file, a new subvolume,
    /// `$QUIESCE_RESTORE_TO` for a command).
    pub to: PathBuf,
    /// Allow an existing non-empty target (renamed aside first).
    pub in_place: bool,
    /// Loop-mount a restored disk image here (an empty directory).
    pub mount_at: Option<PathBuf>,
    /// The PostgreSQL data directory in the restored tree.
    pub pg_data: Option<PathBuf>,
    /// For a point a command made without a `restore_command`: the command
    /// that restores it (`$QUIESCE_SNAPSHOT_PATHS`, `$QUIESCE_SNAPSHOT_IDS`,
    /// `$QUIESCE_RESTORE_TO` in its environment).
    pub restore_cmd: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("refusing to restore to {}: {why}", .path.display())]
    Target { path: PathBuf, why: String },
    #[error("point {id} cannot be restored by quiesce: {why}")]
    Unrestorable { id: String, why: String },
    #[error("point {id}: the provider's restore failed: {message}")]
    Provider { id: String, message: String },
    #[error("mount {} at {}: {message}", .image.display(), .at.display())]
    Mount { image: PathBuf, at: PathBuf, message: String },
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// An artifact written into the restored tree.
#[derive(Debug, Clone, Serialize)]
pub struct Placed {
    pub hook: String,
    pub name: String,
    #[serde(serialize_with = "crate::serde_path::lossy")]
    pub path: PathBuf,
}

/// What a restore did and what is left to the admin.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub point: String,
    pub consistency: Consistency,
    /// What now holds the restored data.
    #[serde(serialize_with = "crate::serde_path::lossy_vec")]
    pub restored: Vec<PathBuf>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    /// `--in-place`: where what was at the target went.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "crate::serde_path::lossy_opt")]
    pub moved_aside: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "crate::serde_path::lossy_opt")]
    pub mounted_at: Option<PathBuf>,
    pub placed: Vec<Placed>,
    /// What the admin must still do, in order.
    pub todo: Vec<String>,
}

/// Restores `point` as `opts` says (see the module doc). Blocking.
pub fn restore(point: &Point, opts: &RestoreOptions) -> Result<Outcome, RestoreError> {
    let to = std::path::absolute(&opts.to).map_err(|source| RestoreError::Io { path: opts.to.clone(), source })?;
    let unrestorable = |why: String| RestoreError::Unrestorable { id: point.id.clone(), why };
    let mut made = point.made.clone().ok_or_else(|| unrestorable("its record names nothing a provider made".into()))?;
    if let Some(cmd) = &opts.restore_cmd {
        if made.provider != ProviderKind::Command {
            return Err(unrestorable(format!(
                "--restore-cmd is for points a snapshot command made; this one is {}",
                made.provider.as_str()
            )));
        }
        made.restore = Some(Action::Shell { command: cmd.clone(), session_id: point.id.clone() });
    } else if made.provider == ProviderKind::Command && made.restore.is_none() {
        return Err(unrestorable(
            "the snapshot command that made it had no `restore_command`; pass `--restore-cmd CMD` (it gets \
             $QUIESCE_SNAPSHOT_PATHS, $QUIESCE_SNAPSHOT_IDS and $QUIESCE_RESTORE_TO)"
                .into(),
        ));
    }
    let mounts = mount_points()?;
    let moved_aside = prepare_target(&to, opts.in_place, &point.id, &mounts)?;
    let mount_at = match &opts.mount_at {
        Some(m) => {
            let m = std::path::absolute(m).map_err(|source| RestoreError::Io { path: m.clone(), source })?;
            check_mount_dir(&m, &mounts)?;
            Some(m)
        }
        None => None,
    };
    let restored = snapshot::restore(&made, &to).map_err(|e| RestoreError::Provider { id: point.id.clone(), message: e.to_string() })?;
    let mut out = Outcome {
        point: point.id.clone(),
        consistency: point.consistency,
        restored: restored.paths.clone(),
        ids: restored.ids.clone(),
        moved_aside,
        mounted_at: None,
        placed: Vec::new(),
        todo: Vec::new(),
    };
    // The tree artifacts go into: a mounted image, or a restored directory.
    let tree = match &mount_at {
        Some(m) => {
            let image = restored.paths.first().filter(|p| p.is_file()).cloned().ok_or_else(|| {
                unrestorable(format!("--mount-at needs a restored disk image; the provider restored {:?}", restored.paths))
            })?;
            loop_mount(&image, m)?;
            out.mounted_at = Some(m.clone());
            out.todo.push(format!("when done: umount {}", m.display()));
            Some(m.clone())
        }
        None => restored.paths.iter().find(|p| p.is_dir()).cloned(),
    };
    place_artifacts(point, tree.as_deref(), opts.pg_data.as_deref(), &mut out);
    if point.consistency != Consistency::AppConsistent {
        out.todo.push(format!(
            "the point is {}: applications were not quiesced, so each database runs crash recovery when started on it",
            label_name(point.consistency)
        ));
    }
    Ok(out)
}

/// Every mount point, canonical, as the kernel lists them.
fn mount_points() -> Result<Vec<PathBuf>, RestoreError> {
    let table = crate::freeze::mountinfo::read()
        .map_err(|e| RestoreError::Io { path: PathBuf::from("/proc/self/mountinfo"), source: std::io::Error::other(e.to_string()) })?;
    Ok(table.entries.into_iter().map(|e| e.mount_point).collect())
}

/// `path` with its existing part resolved (mount points are listed resolved).
fn resolved(path: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => resolved(parent).join(name),
        _ => path.to_path_buf(),
    }
}

/// Refuses a mount point or a directory with a mount below it.
fn check_no_mounts(path: &Path, mounts: &[PathBuf]) -> Result<(), RestoreError> {
    let real = resolved(path);
    let refuse = |why: String| Err(RestoreError::Target { path: path.to_path_buf(), why });
    if mounts.iter().any(|m| *m == real) {
        return refuse("it is a mount point (live data may be there); unmount it or choose another target".into());
    }
    if let Some(below) = mounts.iter().find(|m| m.starts_with(&real)) {
        return refuse(format!("{} is mounted below it; unmount it or choose another target", below.display()));
    }
    Ok(())
}

/// Makes `to` ready for the provider, which creates it: absent is fine, an
/// empty directory is removed, anything else needs `in_place` and is
/// renamed aside (returned).
fn prepare_target(to: &Path, in_place: bool, id: &str, mounts: &[PathBuf]) -> Result<Option<PathBuf>, RestoreError> {
    check_no_mounts(to, mounts)?;
    let refuse = |why: String| Err(RestoreError::Target { path: to.to_path_buf(), why });
    let io = |source: std::io::Error| RestoreError::Io { path: to.to_path_buf(), source };
    let meta = match std::fs::symlink_metadata(to) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    if meta.file_type().is_symlink() {
        return refuse("it is a symbolic link; name the real path".into());
    }
    if meta.is_dir() && std::fs::read_dir(to).map_err(io)?.next().is_none() {
        // rmdir fails on a directory that is no longer empty: no race to lose data in.
        std::fs::remove_dir(to).map_err(io)?;
        return Ok(None);
    }
    if !in_place {
        return refuse(format!(
            "it exists and is not an empty directory; restoring there could overwrite live data. Restore elsewhere, or pass \
             --in-place to move it aside to {}.before-{id} first",
            to.display()
        ));
    }
    if meta.is_file() {
        if let Some(dev) = loop_backing(to) {
            return refuse(format!("it is the disk image behind {dev} (in use); detach it first"));
        }
    }
    let aside = PathBuf::from(format!("{}.before-{id}", to.display()));
    if std::fs::symlink_metadata(&aside).is_ok() {
        return refuse(format!("{} exists already (an earlier in-place restore?); move it away first", aside.display()));
    }
    std::fs::rename(to, &aside).map_err(io)?;
    Ok(Some(aside))
}

/// The loop device whose backing file is `file`, if any.
fn loop_backing(file: &Path) -> Option<String> {
    let real = std::fs::canonicalize(file).ok()?;
    let meta = std::fs::metadata(&real).ok()?;
    for e in std::fs::read_dir("/sys/block").ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = std::fs::read_to_string(e.path().join("loop/backing_file")) else { continue };
        let backing = backing.trim_end_matches('\n');
        // A deleted-and-recreated file keeps its old name with " (deleted)": compare inodes too.
        let same = Path::new(backing) == real
            || std::fs::metadata(backing).map(|m| m.ino() == meta.ino() && m.dev() == meta.dev()).unwrap_or(false);
        if same {
            return Some(format!("/dev/{name}"));
        }
    }
    None
}

/// A mount target: not a mount point, nothing below, an empty directory (made if missing).
fn check_mount_dir(at: &Path, mounts: &[PathBuf]) -> Result<(), RestoreError> {
    check_no_mounts(at, mounts)?;
    let io = |source: std::io::Error| RestoreError::Io { path: at.to_path_buf(), source };
    match std::fs::symlink_metadata(at) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(at).map_err(io),
        Err(e) => Err(io(e)),
        Ok(m) if m.is_dir() && !m.file_type().is_symlink() && std::fs::read_dir(at).map_err(io)?.next().is_none() => Ok(()),
        Ok(_) => Err(RestoreError::Target { path: at.to_path_buf(), why: "--mount-at must be an empty directory".into() }),
    }
}

fn loop_mount(image: &Path, at: &Path) -> Result<(), RestoreError> {
    let err = |message: String| RestoreError::Mount { image: image.to_path_buf(), at: at.to_path_buf(), message };
    let out = std::process::Command::new("/bin/mount")
        .arg("-o")
        .arg("loop")
        .arg(image)
        .arg(at)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| err(format!("cannot run /bin/mount: {e}")))?;
    if !out.status.success() {
        return Err(err(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

/// Puts PostgreSQL's label files into the restored data directory and says
/// what every artifact means for the admin.
fn place_artifacts(point: &Point, tree: Option<&Path>, pg_hint: Option<&Path>, out: &mut Outcome) {
    let text = |name: &str| -> Option<String> {
        let a = point.artifacts.iter().find(|a| a.name == name)?;
        read_artifact(&a.path).ok().map(|b| String::from_utf8_lossy(&b).trim().to_string())
    };
    let pg: Vec<_> = point.artifacts.iter().filter(|a| PG_FILES.contains(&a.name.as_str())).collect();
    if !pg.is_empty() {
        let data = match tree {
            None => Err("the restored data is not a directory here (mount the image with --mount-at)".to_string()),
            Some(root) => find_pg_data(root, pg_hint),
        };
        match data {
            Ok((root, rel)) => {
                for a in &pg {
                    match place(&root, &rel, a) {
                        Ok(path) => out.placed.push(Placed { hook: a.hook.clone(), name: a.name.clone(), path }),
                        Err(e) => out.todo.push(format!(
                            "copy {} to {}/{}: quiesce could not ({e})",
                            a.path.display(),
                            root.join(&rel).display(),
                            a.name
                        )),
                    }
                }
                let stop = text("stop_lsn").map(|l| format!(" up to at least {l} (the backup's end)")).unwrap_or_default();
                out.todo.push(format!(
                    "PostgreSQL must replay the original server's archived WAL{stop} before the copy is consistent: in {d} create \
                     recovery.signal and set restore_command (reading your WAL archive) and recovery_target = 'immediate', \
                     recovery_target_action = 'promote'; then start PostgreSQL on {d} (it refuses to start without that WAL)",
                    d = root.join(&rel).display()
                ));
            }
            Err(why) => {
                let files: Vec<String> = pg.iter().map(|a| a.path.display().to_string()).collect();
                out.todo.push(format!(
                    "copy {} into the restored PostgreSQL data directory (owner postgres, mode 600): {why}",
                    files.join(" and ")
                ));
            }
        }
    }
    if let Some(lsn) = text("checkpoint_redo_lsn") {
        out.todo.push(format!(
            "PostgreSQL: start it on the restored data directory; crash recovery replays WAL from the pre hook's checkpoint (redo {lsn})"
        ));
    }
    if let Some(pos) = text("binlog_position") {
        out.todo.push(format!(
            "MariaDB/MySQL: start it on the restored data directory (InnoDB and binlog crash recovery); the binlog position recorded \
             under the lock, for a replica or point-in-time recovery: {}",
            pos.replace('\n', " ")
        ));
    }
    for a in &point.artifacts {
        let known =
            PG_FILES.contains(&a.name.as_str()) || matches!(a.name.as_str(), "stop_lsn" | "checkpoint_redo_lsn" | "binlog_position");
        if !known {
            out.todo.push(format!("artifact {} of hook {} is kept at {}", a.name, a.hook, a.path.display()));
        }
    }
}

/// An artifact's bytes, read from the root-only state directory.
fn read_artifact(path: &Path) -> Result<Vec<u8>, String> {
    let f = trust::open_trusted(path, Rule::Config).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    f.file().take(MAX_ARTIFACT_BYTES + 1).read_to_end(&mut buf).map_err(|e| format!("{}: {e}", path.display()))?;
    if buf.len() as u64 > MAX_ARTIFACT_BYTES {
        return Err(format!("{}: larger than {MAX_ARTIFACT_BYTES} bytes", path.display()));
    }
    Ok(buf)
}

/// The data directory as (tree root, path relative to it).
fn find_pg_data(root: &Path, hint: Option<&Path>) -> Result<(PathBuf, PathBuf), String> {
    if let Some(h) = hint {
        let rel = if h.is_absolute() {
            h.strip_prefix(root).map_err(|_| format!("--pg-data {} is not inside the restored tree {}", h.display(), root.display()))?
        } else {
            h
        };
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(format!("--pg-data {} must be a plain path inside the restored tree (no `..`)", h.display()));
        }
        return Ok((root.to_path_buf(), rel.to_path_buf()));
    }
    let root_dev = std::fs::symlink_metadata(root).map_err(|e| format!("{}: {e}", root.display()))?.dev();
    let mut found = Vec::new();
    let mut queue = std::collections::VecDeque::from([(PathBuf::new(), 0usize)]);
    let mut seen = 0usize;
    while let Some((rel, depth)) = queue.pop_front() {
        let dir = root.join(&rel);
        if dir.join("PG_VERSION").is_file() && dir.join("global/pg_control").is_file() {
            found.push(rel.clone());
            continue;
        }
        if depth >= SEARCH_DEPTH {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            seen += 1;
            if seen > SEARCH_ENTRIES {
                return Err(format!("searched {SEARCH_ENTRIES} entries without settling on a data directory; pass --pg-data"));
            }
            // Not through links, not into other file systems.
            let Ok(m) = e.path().symlink_metadata() else { continue };
            if m.is_dir() && m.dev() == root_dev {
                queue.push_back((rel.join(e.file_name()), depth + 1));
            }
        }
    }
    match found.len() {
        1 => Ok((root.to_path_buf(), found.remove(0))),
        0 => Err(format!(
            "no PostgreSQL data directory (PG_VERSION and global/pg_control) within {SEARCH_DEPTH} levels of {}; pass --pg-data",
            root.display()
        )),
        _ => Err(format!(
            "several PostgreSQL data directories under {} ({}); pass --pg-data",
            root.display(),
            found.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// Writes the artifact as a new file beneath `root/rel`, owned like that directory.
fn place(root: &Path, rel: &Path, a: &super::catalog::PointArtifact) -> Result<PathBuf, String> {
    let data = read_artifact(&a.path)?;
    let target = root.join(rel).join(&a.name);
    let sys = |what: &str, e: Errno| format!("{what} {}: {e}", target.display());
    let root_fd = fcntl::open(root, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| sys("open", e))?;
    let beneath =
        ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS | ResolveFlag::RESOLVE_NO_XDEV;
    let dir_path: &Path = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let dir: OwnedFd =
        fcntl::openat2(&root_fd, dir_path, OpenHow::new().flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).resolve(beneath))
            .map_err(|e| match e {
                Errno::ELOOP => format!("{} goes through a symbolic link (not followed)", root.join(rel).display()),
                Errno::EXDEV => format!("{} crosses into another mount", root.join(rel).display()),
                e => sys("open", e),
            })?;
    let owner = stat::fstat(&dir).map_err(|e| sys("stat", e))?;
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = fcntl::openat(&dir, a.name.as_str(), flags, Mode::from_bits_truncate(0o600)).map_err(|e| match e {
        Errno::EEXIST => format!("{} exists already in the restored tree (not overwritten)", target.display()),
        e => sys("create", e),
    })?;
    // SAFETY: fd is open for the call.
    if unsafe { libc::fchown(fd.as_raw_fd(), owner.st_uid, owner.st_gid) } != 0 {
        return Err(format!("chown {}: {}", target.display(), std::io::Error::last_os_error()));
    }
    let mut f = File::from(fd);
    f.write_all(&data).and_then(|()| f.sync_all()).map_err(|e| format!("write {}: {e}", target.display()))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_with_a_mount_at_or_below_it_is_refused() {
        let mounts = vec![PathBuf::from("/"), PathBuf::from("/srv/db"), PathBuf::from("/srv/other/inner")];
        assert!(check_no_mounts(Path::new("/srv/db"), &mounts).is_err());
        assert!(check_no_mounts(Path::new("/srv/other"), &mounts).is_err());
        assert!(check_no_mounts(Path::new("/srv/restore-here"), &mounts).is_ok());
        assert!(check_no_mounts(Path::new("/srv/dbx"), &mounts).is_ok(), "a sibling sharing a prefix is not below");
    }

    #[test]
    fn pg_data_hints_stay_inside_the_tree() {
        let root = Path::new("/r");
        assert_eq!(find_pg_data(root, Some(Path::new("pg/data"))).unwrap().1, PathBuf::from("pg/data"));
        assert_eq!(find_pg_data(root, Some(Path::new("/r/pg/data"))).unwrap().1, PathBuf::from("pg/data"));
        assert!(find_pg_data(root, Some(Path::new("../etc"))).is_err());
        assert!(find_pg_data(root, Some(Path::new("/etc"))).is_err());
    }
}
