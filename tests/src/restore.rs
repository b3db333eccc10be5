//! The restore harness: a real block-level snapshot of a database's disk,
//! restored and started.
//!
//! An XFS file system with reflink (the "outer" mount) holds the database's
//! ext4 *disk image*, itself loop-mounted (the "inner" mount) as the data
//! directory's file system. quiesce freezes the inner mount and runs
//! [`SnapshotRig::snapshot_cmd`] — `cp --reflink=always` of the disk image, an
//! instant copy-on-write clone — while it is frozen. The clone is then
//! loop-mounted elsewhere and a second server is started on it.
//!
//! The snapshot command records when it ran (`date +%s%N` before and after
//! the clone) in a file outside the frozen mount, so the restored rows can be
//! judged against the writer's acknowledgements ([`crate::db::WriterLog`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::db::{allow_traverse, MariaDb, Postgres, Redis};
use crate::legacy::Pair;
use crate::{legacy_config, quiesce, run_json, sh, Fs, LoopMount, Run, Scratch};

/// Outer XFS image size: sparse, so only what is written costs disk.
pub const OUTER_MIB: u32 = 2048;
/// The database's disk.
pub const INNER_MIB: u32 = 512;

/// Field order is drop order: restored copy, inner disk, outer file system.
pub struct SnapshotRig {
    pub restored: Option<LoopMount>,
    pub inner: LoopMount,
    pub outer: LoopMount,
    dir: PathBuf,
}

impl SnapshotRig {
    /// Creates `<dir>/outer` (XFS, reflink) holding `disk.img` (ext4) mounted at `<dir>/inner`.
    pub fn new(dir: &Path) -> SnapshotRig {
        let outer_img = dir.join("outer.img");
        let outer_mp = dir.join("outer");
        fs::create_dir_all(&outer_mp).unwrap();
        sh(&format!("truncate -s {OUTER_MIB}M {0} && mkfs.xfs -q -f -m reflink=1 {0}", outer_img.display()));
        sh(&format!("mount -o loop {} {}", outer_img.display(), outer_mp.display()));
        let outer = LoopMount { image: outer_img, mountpoint: outer_mp.clone(), fs: Fs::Xfs };
        let disk = outer_mp.join("disk.img");
        let inner_mp = dir.join("inner");
        fs::create_dir_all(&inner_mp).unwrap();
        sh(&format!("truncate -s {INNER_MIB}M {0} && mkfs.ext4 -q -F {0}", disk.display()));
        sh(&format!("mount -o loop {} {}", disk.display(), inner_mp.display()));
        let inner = LoopMount { image: disk, mountpoint: inner_mp.clone(), fs: Fs::Ext4 };
        allow_traverse(&inner_mp);
        SnapshotRig { restored: None, inner, outer, dir: dir.to_path_buf() }
    }

    /// The mount to freeze (and where the database's data lives).
    pub fn inner(&self) -> &Path {
        &self.inner.mountpoint
    }

    pub fn snap_image(&self) -> PathBuf {
        self.outer.mountpoint.join("snap.img")
    }

    /// The `--snapshot-cmd`: clone the disk image; record start and end times
    /// in `times`; tell quiesce what it made (`snapshot-path:`), so the
    /// session's recovery point names the clone.
    pub fn snapshot_cmd(&self, times: &Path) -> String {
        format!(
            "date +%s%N > {t} && cp --reflink=always {src} {dst} && date +%s%N >> {t} && echo snapshot-path: {dst}",
            t = times.display(),
            src = self.inner.image.display(),
            dst = self.snap_image().display()
        )
    }

    /// The newest recovery point the sessions on this rig recorded.
    pub fn latest_point(&self) -> String {
        let out = self.points().args(["list", "--json"]).output().expect("quiesce points list");
        assert!(out.status.success(), "points list: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("points list --json");
        let last = v["points"].as_array().and_then(|p| p.last()).cloned();
        last.and_then(|p| p["id"].as_str().map(String::from)).unwrap_or_else(|| panic!("no recovery point recorded: {v}"))
    }

    /// `quiesce points …` with the state directory the rig's sessions use.
    fn points(&self) -> Command {
        let mut cmd = Command::new(crate::quiesce_bin());
        cmd.env("QUIESCE_STATE_DIR", self.dir.join("state"))
            .env("QUIESCE_RUN_DIR", self.dir.join("run"))
            .env("QUIESCE_LOG_FILE", self.dir.join("quiesce.log"))
            .env_remove("RUST_LOG")
            .arg("points");
        cmd
    }

    /// Whether the point is an agent's snapshot (a two-phase session driven
    /// by qemu-ga or another agent that took the snapshot itself): its record
    /// names nothing quiesce made, so only the agent can restore it.
    fn agent_took(&self, id: &str) -> bool {
        let out = self.points().args(["show", id, "--json"]).output().expect("quiesce points show");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("points show --json");
        v.get("made").is_none_or(|m| m.is_null())
    }

    /// What the agent's own restore does here: a clone of the image it cloned, loop-mounted.
    fn restore_agents_clone(&self, img: &Path, mp: &Path) -> LoopMount {
        let ok = Command::new("cp").arg("--reflink=always").arg(self.snap_image()).arg(img).status().expect("cp");
        assert!(ok.success(), "cloning the agent's snapshot {}", self.snap_image().display());
        std::fs::create_dir_all(mp).unwrap();
        let ok = Command::new("mount").args(["-o", "loop"]).arg(img).arg(mp).status().expect("mount");
        let mount = LoopMount { image: img.to_path_buf(), mountpoint: mp.to_path_buf(), fs: Fs::Ext4 };
        assert!(ok.success(), "mounting the agent's snapshot {}", img.display());
        allow_traverse(mp);
        mount
    }

    /// `quiesce points restore POINT --to <outer>/<name>.img --mount-at <dir>/<name>`:
    /// a clone of the point's image (the command that took it has no restore
    /// step, so the restore says how), loop-mounted, artifacts put in place.
    fn restore_point(&self, name: &str) -> LoopMount {
        let id = self.latest_point();
        let img = self.outer.mountpoint.join(format!("{name}.img"));
        let mp = self.dir.join(name);
        if self.agent_took(&id) {
            return self.restore_agents_clone(&img, &mp);
        }
        let out = self
            .points()
            .args(["restore", &id, "--to"])
            .arg(&img)
            .arg("--mount-at")
            .arg(&mp)
            .args(["--restore-cmd", r#"cp --reflink=always "$QUIESCE_SNAPSHOT_PATHS" "$QUIESCE_RESTORE_TO""#])
            .output()
            .expect("quiesce points restore");
        // Unmounted and detached on drop, whatever happens next.
        let mount = LoopMount { image: img, mountpoint: mp.clone(), fs: Fs::Ext4 };
        assert!(
            out.status.success(),
            "points restore {id}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        eprintln!("[restore] {}", String::from_utf8_lossy(&out.stdout).trim());
        allow_traverse(&mp);
        mount
    }

    /// Restores the latest point with `quiesce points restore` and mounts it
    /// at `<dir>/restored` (mounting replays the ext4 journal of the clone, as
    /// booting a restored disk would); returns that path.
    pub fn mount_snapshot(&mut self) -> PathBuf {
        assert!(self.restored.is_none(), "snapshot already mounted");
        let mount = self.restore_point("restored");
        let mp = mount.mountpoint.clone();
        self.restored = Some(mount);
        mp
    }
}

impl SnapshotRig {
    /// Another restore of the latest point, mounted at `<dir>/<name>`, for a
    /// second restore independent of the first. Drop it before the rig.
    pub fn mount_copy(&self, name: &str) -> LoopMount {
        self.restore_point(name)
    }
}

/// A scratch directory with a [`SnapshotRig`], and `quiesce snapshot` runs
/// on it. Field order = drop order: the rig's mounts before the directory.
pub struct Stage {
    pub rig: SnapshotRig,
    pub s: Scratch,
}

impl Stage {
    pub fn new(name: &str) -> Stage {
        let s = Scratch::new(name);
        let rig = SnapshotRig::new(&s.path);
        Stage { rig, s }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.s.join(name)
    }

    /// A native config without hooks: freeze only, or (`false`) no freeze at all.
    pub fn native_config(&self, freeze: bool) -> PathBuf {
        self.s.config("quiesce.toml", &format!("[freeze]\nenabled = {freeze}\nmax_freeze_secs = 30\n"))
    }

    /// A legacy (Azure-style) config running this script pair, no snapshot if pre fails.
    pub fn legacy_pair(&self, (pre, post): &Pair) -> PathBuf {
        let pre = self.s.script("pre.sh", &format!("#!/bin/sh\nset -eu\n{pre}\n"));
        let post = self.s.script("post.sh", &format!("#!/bin/sh\nset -eu\n{post}\n"));
        legacy_config(
            &self.s,
            &pre,
            &post,
            serde_json::json!({"preScriptParams": [], "postScriptParams": [], "timeoutInSeconds": 60, "continueBackupOnFailure": false}),
        )
    }

    /// `quiesce snapshot --config CONFIG --mount INNER --snapshot-cmd "cp --reflink=always …" --json`.
    /// Panics unless a snapshot was taken without errors.
    pub fn snapshot(&self, config: &Path) -> (Run, SnapTimes) {
        let times = self.file("snap.times");
        let _ = fs::remove_file(&times);
        let _ = fs::remove_file(self.rig.snap_image());
        let run = run_json(self.session(config, &self.rig.snapshot_cmd(&times), 30));
        assert_eq!(run.report["snapshot_taken"], true, "{}\n{}", run.report, run.stderr());
        assert!(run.error_codes().is_empty(), "{:?}\n{}", run.error_codes(), run.report);
        (run, snap_times(&times))
    }

    /// `quiesce snapshot --config CONFIG --mount INNER --snapshot-cmd CMD --max-freeze SECS`,
    /// its plugin cache and artifact store (`state/`) in the scratch directory.
    pub fn session(&self, config: &Path, snapshot_cmd: &str, max_freeze_secs: u32) -> Command {
        let mut cmd = quiesce(&self.s);
        cmd.env("QUIESCE_CACHE_DIR", self.file("cache"))
            .env("QUIESCE_STATE_DIR", self.file("state"))
            .arg("snapshot")
            .arg("--config")
            .arg(config)
            .arg("--mount")
            .arg(self.rig.inner())
            .arg("--snapshot-cmd")
            .arg(snapshot_cmd)
            .arg("--max-freeze")
            .arg(max_freeze_secs.to_string());
        cmd
    }

    /// A native config running one WebAssembly plugin hook (installed from
    /// the plugins build), freezing on. `params` are `key = "value"` pairs.
    pub fn plugin_config(&self, plugin: &str, params: &[(&str, String)], grants: &[String], extra: &str) -> PathBuf {
        let path = crate::plugins::install_plugin(&self.s, plugin);
        let params: Vec<String> = params.iter().map(|(k, v)| format!("{k} = {v:?}")).collect();
        let grants: Vec<String> = grants.iter().map(|g| format!("{g:?}")).collect();
        self.s.config(
            "plugin.toml",
            &format!(
                "[freeze]\nenabled = true\nmax_freeze_secs = 30\n\n[[hook]]\nname = \"db\"\nplugin = \"{}\"\nparams = {{ {} }}\ngrants = [{}]\n{extra}\n",
                path.display(),
                params.join(", "),
                grants.join(", ")
            ),
        )
    }
}

/// When the snapshot command ran (it runs while the inner mount is frozen).
#[derive(Clone, Copy, Debug)]
pub struct SnapTimes {
    pub start_ns: u64,
    pub end_ns: u64,
}

/// Reads the file [`SnapshotRig::snapshot_cmd`] or a hook wrote: one `date +%s%N` per line.
pub fn read_times(path: &Path) -> Vec<u64> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| l.trim().parse().unwrap_or_else(|_| panic!("{}: bad time {l:?}", path.display())))
        .collect()
}

pub fn snap_times(path: &Path) -> SnapTimes {
    let t = read_times(path);
    assert_eq!(t.len(), 2, "snapshot command did not finish: {t:?}");
    SnapTimes { start_ns: t[0], end_ns: t[1] }
}

/// `rows` must be exactly 1, 2, …, k: a writer commits one number at a time,
/// so a consistent restore holds a gapless prefix. Returns k.
pub fn gapless_prefix(rows: &[u64]) -> Result<u64, String> {
    for (i, &n) in rows.iter().enumerate() {
        if n != i as u64 + 1 {
            return Err(format!("restored rows are not 1..k: position {i} holds {n} (of {} rows)", rows.len()));
        }
    }
    Ok(rows.len() as u64)
}

/// What `pg_backup_stop()` returned, stored outside the snapshot.
#[derive(Clone, Debug, Default)]
pub struct PgBackupFiles {
    pub labelfile: String,
    pub spcmapfile: String,
}

/// Mounts the snapshot and starts PostgreSQL on it.
///
/// Without `backup`: plain crash recovery from the snapshot's own WAL.
/// With `backup`: the backup-label path — `backup_label` (and a non-empty
/// `tablespace_map`) written into the restored data directory, plus
/// `recovery.signal` with `restore_command` reading the original server's WAL
/// archive and `recovery_target = 'immediate'`: a backup started with
/// `pg_backup_start` is consistent only once WAL up to its end-of-backup
/// record (written by `pg_backup_stop`, after the snapshot) is replayed.
pub fn restore_postgres(rig: &mut SnapshotRig, original: &Postgres, backup: Option<&PgBackupFiles>) -> Result<Postgres, String> {
    let mp = rig.mount_snapshot();
    start_restored_postgres(&mp.join("pg/data"), original, backup, true)
}

/// Starts PostgreSQL on a restored data directory (see [`restore_postgres`]);
/// `use_archive = false` writes only the label (no `recovery.signal`, no
/// `restore_command`): what a restore from the snapshot and the label alone is.
pub fn start_restored_postgres(
    data: &Path,
    original: &Postgres,
    backup: Option<&PgBackupFiles>,
    use_archive: bool,
) -> Result<Postgres, String> {
    let mut settings = vec!["archive_mode=off".to_string()];
    if let Some(b) = backup {
        // A point whose plugin handed over the label: `quiesce points restore`
        // has put it in place already; it must be exactly what was returned.
        for (name, text) in [("backup_label", &b.labelfile), ("tablespace_map", &b.spcmapfile)] {
            match fs::read_to_string(data.join(name)) {
                Ok(placed) => assert_eq!(&placed, text, "the {name} `quiesce points restore` put into {}", data.display()),
                Err(_) if !text.is_empty() => fs::write(data.join(name), text).unwrap(),
                Err(_) => {}
            }
        }
        if use_archive {
            fs::write(data.join("recovery.signal"), "").unwrap();
            let arch = original.archive_dir.as_ref().ok_or("the original server has no WAL archive")?;
            settings.push(format!("restore_command='cp {}/%f %p'", arch.display()));
            settings.push("recovery_target=immediate".into());
            settings.push("recovery_target_action=promote".into());
        }
        sh(&format!("chown postgres: {0}/backup_label; chown -f postgres: {0}/recovery.signal {0}/tablespace_map || true", data.display()));
    }
    Postgres::try_start_existing(data, &original.password, &settings)
}

/// Mounts the snapshot and starts MariaDB on it (InnoDB and binlog crash recovery).
pub fn restore_mariadb(rig: &mut SnapshotRig, original: &MariaDb) -> MariaDb {
    let mp = rig.mount_snapshot();
    MariaDb::start_existing(&mp.join("my"), &original.app_password)
}

/// Mounts the snapshot and starts Redis on it with the original's persistence settings.
pub fn restore_redis(rig: &mut SnapshotRig, original: &Redis) -> Redis {
    let mp = rig.mount_snapshot();
    Redis::start_existing(&mp.join("redis"), original.appendonly, &original.password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gapless_prefix_accepts_only_1_to_k() {
        assert_eq!(gapless_prefix(&[]), Ok(0));
        assert_eq!(gapless_prefix(&[1, 2, 3]), Ok(3));
        assert!(gapless_prefix(&[1, 3]).is_err());
        assert!(gapless_prefix(&[2, 3]).is_err());
        assert!(gapless_prefix(&[1, 2, 2]).is_err());
    }
}
