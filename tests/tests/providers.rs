//! Snapshot providers for real: each one takes a point in a real session,
//! and deletes and restores it on real loop file systems (a reflink clone
//! on XFS `reflink=1` of an ext4 disk image, a read-only btrfs snapshot, a
//! shell command); the clouds' argv contracts through fake `az`/`aws`/
//! `gcloud` executables that record their argv and answer what the real
//! CLI answers (a test of quiesce's side of the contract: no cloud is
//! reachable here); and `points diff` against a brute-force compare.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use quiesce::interrupt::Interrupt;
use quiesce::points::diff;
use quiesce::report::Report;
use quiesce::rundir::RunDir;
use quiesce::session::{load_config, Session, SessionOptions};
use quiesce::snapshot::{self, cloud, Made, ProviderKind, SnapshotContext};
use quiesce_tests::blocks::{self, Rng, BLOCK};
use quiesce_tests::restore::Stage;
use quiesce_tests::*;

/// One session in this process, its state in the scratch directory. The
/// mounts are always explicit: never a machine-wide freeze.
fn session(s: &Scratch, config: &Path, mounts: &[&Path]) -> Report {
    assert!(!mounts.is_empty(), "a test session names the loop mounts it may freeze");
    let opts = SessionOptions {
        run_dir: Some(RunDir::new(s.join("run"))),
        mounts: mounts.iter().map(|m| m.to_path_buf()).collect(),
        cache_dir: Some(s.join("cache")),
        state_dir: Some(s.join("state")),
        ..Default::default()
    };
    let session = Session::prepare(load_config(Some(config)), opts).expect("prepare session");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(session.run(Interrupt::never()))
}

fn made(report: &Report) -> Made {
    assert!(report.snapshot_taken, "no snapshot: {:?}", report.errors);
    report.snapshot.made.clone().expect("the report carries what the provider made")
}

// ---------- reflink ----------

#[test]
fn reflink_point_is_taken_frozen_then_restored_to_a_new_image_and_deleted() {
    quiesce_tests::require!(Root);
    let mut st = Stage::new("prov-reflink");
    fs::write(st.rig.inner().join("before.txt"), "in the point\n").unwrap();
    sh("sync");
    let outer = st.rig.outer.mountpoint.clone();
    let config = st.s.config(
        "q.toml",
        &format!(
            "[freeze]\nmax_freeze_secs = 30\n[snapshot]\nkind = \"reflink\"\nsource = \"{}\"\ndest = \"{}/point-{{session}}.img\"\n",
            st.rig.inner.image.display(),
            outer.display()
        ),
    );
    let report = session(&st.s, &config, &[st.rig.inner()]);
    let m = made(&report);
    assert_eq!(report.consistency, quiesce::report::Consistency::FileSystemConsistent, "{:?}", report.errors);
    let point = outer.join(format!("point-{}.img", report.session_id));
    assert_eq!(
        (m.provider, m.paths.clone(), m.source.clone()),
        (ProviderKind::Reflink, vec![point.clone()], Some(st.rig.inner.image.clone()))
    );
    assert_eq!(report.snapshot.paths, vec![point.clone()]);
    // What the catalog stores survives a round trip.
    let m: Made = serde_json::from_value(serde_json::to_value(&m).unwrap()).unwrap();

    fs::write(st.rig.inner().join("after.txt"), "not in the point\n").unwrap();
    let restored = outer.join("restored.img");
    let r = snapshot::restore(&m, &restored).expect("restore");
    assert_eq!(r.paths, vec![restored.clone()]);
    // Restoring never overwrites.
    let again = snapshot::restore(&m, &restored).unwrap_err().to_string();
    assert!(again.contains("exists"), "{again}");
    let mp = st.s.join("restored");
    fs::create_dir_all(&mp).unwrap();
    sh(&format!("mount -o loop {} {}", restored.display(), mp.display()));
    st.rig.restored = Some(LoopMount { image: restored.clone(), mountpoint: mp.clone(), fs: Fs::Ext4 });
    assert_eq!(fs::read_to_string(mp.join("before.txt")).unwrap(), "in the point\n");
    assert!(!mp.join("after.txt").exists(), "the point is the disk at snapshot time");
    st.rig.restored = None;

    snapshot::delete(&m).expect("delete");
    assert!(!point.exists());
    snapshot::delete(&m).expect("deleting a deleted point is done, not an error");
    assert!(restored.exists(), "the restored copy is independent of the point");
}

#[test]
fn reflink_clone_onto_the_frozen_file_system_is_refused_instead_of_blocking() {
    quiesce_tests::require!(Root);
    let st = Stage::new("prov-reflink-frozen");
    // The destination on the inner (frozen) file system: FICLONE would block until the thaw.
    let config = st.s.config(
        "q.toml",
        &format!(
            "[freeze]\nmax_freeze_secs = 30\n[snapshot]\nkind = \"reflink\"\nsource = \"{}\"\ndest = \"{}/p-{{session}}.img\"\n",
            st.rig.inner.image.display(),
            st.rig.inner().display()
        ),
    );
    let report = session(&st.s, &config, &[st.rig.inner()]);
    assert!(!report.snapshot_taken);
    let m = &report.errors[0].message;
    assert!(m.contains("frozen for this session") && m.contains("Exclude"), "{m}");
    assert!(writable_within(st.rig.inner(), std::time::Duration::from_secs(10)).is_some(), "thawed");
}

// ---------- btrfs ----------

/// A btrfs loop mount with a subvolume `vol` and a `points` directory.
struct Btrfs {
    mnt: LoopMount,
    s: Scratch,
}

impl Btrfs {
    fn new(name: &str) -> Btrfs {
        let s = Scratch::new(name);
        let mnt = LoopMount::with_size(&s.path, "b", Fs::Btrfs, 512);
        sh(&format!("btrfs -q subvolume create {}", mnt.path().join("vol").display()));
        fs::create_dir_all(mnt.path().join("points")).unwrap();
        Btrfs { mnt, s }
    }
    fn vol(&self) -> PathBuf {
        self.mnt.path().join("vol")
    }
    fn config(&self, freeze: bool) -> PathBuf {
        self.s.config(
            "q.toml",
            &format!(
                "[freeze]\nenabled = {freeze}\nmax_freeze_secs = 30\n[snapshot]\nkind = \"btrfs\"\nsource = \"{}\"\ndest = \"{}/points/{{session}}\"\n",
                self.vol().display(),
                self.mnt.path().display()
            ),
        )
    }
    fn ctx(&self, id: &str) -> SnapshotContext {
        SnapshotContext { session_id: id.into(), frozen_mounts: Vec::new() }
    }
}

fn take(spec_config: &Path, ctx: &SnapshotContext) -> Made {
    let config = load_config(Some(spec_config)).expect("config");
    let provider = snapshot::from_spec(config.snapshot.as_ref().expect("a provider"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(provider.take(ctx)).expect("take")
}

#[test]
fn btrfs_point_is_read_only_restores_writable_and_deletes() {
    quiesce_tests::require!(Root);
    let b = Btrfs::new("prov-btrfs");
    fs::write(b.vol().join("data"), "point\n").unwrap();
    let report = session(&b.s, &b.config(false), &[b.mnt.path()]);
    let m = made(&report);
    let point = b.mnt.path().join("points").join(&report.session_id);
    assert_eq!((m.provider, m.paths.clone()), (ProviderKind::Btrfs, vec![point.clone()]));
    assert!(m.generation.is_some());
    assert_eq!(fs::read_to_string(point.join("data")).unwrap(), "point\n");
    let ro = fs::write(point.join("data"), "x").unwrap_err();
    assert_eq!(ro.raw_os_error(), Some(libc::EROFS), "the point is read-only: {ro}");

    fs::write(b.vol().join("data"), "changed\n").unwrap();
    let to = b.mnt.path().join("restored");
    snapshot::restore(&m, &to).expect("restore");
    assert_eq!(fs::read_to_string(to.join("data")).unwrap(), "point\n");
    fs::write(to.join("data"), "restored and writable\n").expect("the restore is writable");
    assert_eq!(fs::read_to_string(point.join("data")).unwrap(), "point\n", "the point is untouched");
    assert!(snapshot::restore(&m, &to).is_err(), "never over an existing path");

    snapshot::delete(&m).expect("delete");
    assert!(!point.exists());
    let list = sh(&format!("btrfs subvolume list {}", b.mnt.path().display()));
    assert!(!list.contains(&format!("points/{}", report.session_id)), "{list}");
    assert!(list.contains("restored"), "{list}");
    // A path that is no longer a subvolume is not deleted.
    fs::create_dir_all(&point).unwrap();
    let e = snapshot::delete(&m).unwrap_err().to_string();
    assert!(e.contains("not a btrfs subvolume"), "{e}");
    assert!(point.exists());
}

#[test]
fn btrfs_snapshot_of_a_frozen_file_system_is_refused_and_thawed() {
    quiesce_tests::require!(Root);
    let b = Btrfs::new("prov-btrfs-frozen");
    let report = session(&b.s, &b.config(true), &[b.mnt.path()]);
    assert!(!report.snapshot_taken);
    let m = &report.errors[0].message;
    assert!(m.contains("frozen for this session"), "{m}");
    assert!(writable_within(b.mnt.path(), std::time::Duration::from_secs(10)).is_some());
    assert_eq!(fs::read_dir(b.mnt.path().join("points")).unwrap().count(), 0, "nothing made after the thaw");
}

/// Appends `n\n` records to `path` until stopped; returns how many it wrote.
fn writer(path: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        use std::io::Write;
        let mut f = fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            f.write_all(format!("{n}\n").as_bytes()).unwrap();
            n += 1;
        }
        n
    })
}

/// The records `0\n1\n…` in order, possibly cut inside the last one: returns how many are whole.
fn records(text: &str) -> u64 {
    let mut n = 0u64;
    let mut rest = text;
    while let Some(i) = rest.find('\n') {
        assert_eq!(&rest[..i], n.to_string(), "record {n} out of order");
        n += 1;
        rest = &rest[i + 1..];
    }
    assert!(n.to_string().starts_with(rest), "the cut record {rest:?} is a prefix of {n}");
    n
}

#[test]
fn btrfs_point_restored_under_write_load_on_the_source_is_the_point_in_time() {
    quiesce_tests::require!(Root);
    let b = Btrfs::new("prov-btrfs-load");
    let log = b.vol().join("log");
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(log.clone(), stop.clone());
    while fs::metadata(&log).map(|m| m.len()).unwrap_or(0) < 100_000 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let report = session(&b.s, &b.config(false), &[b.mnt.path()]);
    let m = made(&report);
    let point_log = m.paths[0].join("log");
    let in_point = fs::read(&point_log).unwrap();
    let n = records(std::str::from_utf8(&in_point).unwrap());
    assert!(n > 0);
    // Restore while the writer keeps writing to the source.
    let to = b.mnt.path().join("restored");
    snapshot::restore(&m, &to).expect("restore under load");
    let restored = fs::read(to.join("log")).unwrap();
    stop.store(true, Ordering::SeqCst);
    let written = w.join().unwrap();
    assert_eq!(restored, in_point, "the restore is the point, not the source as it is now");
    assert_eq!(fs::read(&point_log).unwrap(), in_point, "the point did not move");
    assert!(written > n, "the source went on ({written} records, {n} in the point)");
    assert!(fs::metadata(&log).unwrap().len() > restored.len() as u64);
}

// ---------- command ----------

#[test]
fn command_point_records_printed_ids_and_paths_and_runs_its_delete_and_restore_commands() {
    quiesce_tests::require!(Root);
    let ms = MountedScratch::new("prov-cmd");
    let store = ms.s.join("store");
    fs::create_dir_all(&store).unwrap();
    let calls = ms.s.join("calls");
    let config = ms.s.config(
        "q.toml",
        &format!(
            r#"[freeze]
max_freeze_secs = 30
[snapshot]
kind = "command"
command = "mkdir {store}/$QUIESCE_SESSION_ID && echo creating && echo \"snapshot-id: arr-$QUIESCE_SESSION_ID\" && echo \"snapshot-path: {store}/$QUIESCE_SESSION_ID\""
delete_command = "printf 'delete %s %s\n' \"$QUIESCE_SNAPSHOT_IDS\" \"$QUIESCE_SNAPSHOT_PATHS\" >> {calls} && rmdir \"$QUIESCE_SNAPSHOT_PATHS\""
restore_command = "printf 'restore %s\n' \"$QUIESCE_RESTORE_TO\" >> {calls} && mkdir \"$QUIESCE_RESTORE_TO\" && echo \"snapshot-path: $QUIESCE_RESTORE_TO\""
"#,
            store = store.display(),
            calls = calls.display()
        ),
    );
    let report = session(&ms.s, &config, &[ms.mnt.path()]);
    let m = made(&report);
    let sid = &report.session_id;
    assert_eq!(m.ids, vec![format!("arr-{sid}")]);
    assert_eq!(m.paths, vec![store.join(sid)]);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["snapshot"]["ids"][0], format!("arr-{sid}"));
    assert_eq!(json["snapshot"]["paths"][0], store.join(sid).display().to_string());

    // A target with shell syntax reaches the command as data, never as code.
    let to = ms.s.join("r $(touch pwned)");
    let r = snapshot::restore(&m, &to).expect("restore");
    assert_eq!(r.paths, vec![to.clone()]);
    assert!(to.is_dir());
    assert!(!ms.s.join("pwned").exists() && !Path::new("/pwned").exists());
    snapshot::delete(&m).expect("delete");
    assert!(!store.join(sid).exists());
    assert_eq!(fs::read_to_string(&calls).unwrap(), format!("restore {}\ndelete arr-{sid} {}\n", to.display(), store.join(sid).display()));

    // Without a delete command, delete says how to get one.
    let mut bare = m.clone();
    bare.delete = None;
    let e = snapshot::delete(&bare).unwrap_err().to_string();
    assert!(e.contains("delete_command"), "{e}");
}

// ---------- clouds ----------

/// A fake CLI: records its argv (one call per line, arguments separated by
/// 0x1f) and answers as the real one does with JSON output.
const FAKE_CLI: &str = r#"#!/bin/sh
me=$(basename "$0")
{ printf '%s' "$me"; for a in "$@"; do printf '\037%s' "$a"; done; printf '\n'; } >> CALLS
arg_after() { want=$1; shift; while [ $# -gt 0 ]; do [ "$1" = "$want" ] && { echo "$2"; return; }; shift; done; }
case "$me $1 $2" in
  "az snapshot create") n=$(arg_after --name "$@")
     printf '{"id": "/subscriptions/0000-11/resourceGroups/rg/providers/Microsoft.Compute/snapshots/%s", "name": "%s", "incremental": true, "provisioningState": "Succeeded", "creationData": {"createOption": "Copy", "sourceResourceId": "x"}}\n' "$n" "$n" ;;
  "az resource tag") printf '{"id": "%s", "tags": {}}\n' "$(arg_after --ids "$@")" ;;
  "az disk create") printf '{"id": "/subscriptions/0000-11/resourceGroups/rg/providers/Microsoft.Compute/disks/%s", "provisioningState": "Succeeded"}\n' "$(arg_after --name "$@")" ;;
  "aws ec2 create-snapshots") printf '{\n  "Snapshots": [\n    {"Description": "d", "SnapshotId": "snap-0a11", "VolumeId": "vol-01", "State": "pending", "VolumeSize": 8, "OwnerId": "1234"},\n    {"Description": "d", "SnapshotId": "snap-0b22", "VolumeId": "vol-02", "State": "pending", "VolumeSize": 100, "OwnerId": "1234"}\n  ]\n}\n' ;;
  "aws ec2 create-volume") printf '{"AvailabilityZone": "eu-west-1a", "VolumeId": "vol-from-%s", "State": "creating"}\n' "$(arg_after --snapshot-id "$@")" ;;
  "gcloud compute snapshots") if [ "$3" = create ]; then printf '[\n  {\n    "id": "7311",\n    "kind": "compute#snapshot",\n    "name": "%s",\n    "status": "READY"\n  }\n]\n' "$4"; else echo "Updated [$4]." >&2; fi ;;
  "gcloud compute disks") printf '[{"id": "99", "name": "%s", "status": "READY"}]\n' "$4" ;;
esac
exit 0
"#;

struct Cloud {
    ms: MountedScratch,
    bin: PathBuf,
    calls: PathBuf,
}

impl Cloud {
    fn new(name: &str) -> Cloud {
        let ms = MountedScratch::new(name);
        let bin = ms.s.join("bin");
        fs::create_dir_all(&bin).unwrap();
        let calls = ms.s.join("calls");
        for cli in ["az", "aws", "gcloud"] {
            write_mode(&bin.join(cli), &FAKE_CLI.replace("CALLS", &calls.display().to_string()), 0o755);
        }
        Cloud { ms, bin, calls }
    }

    /// Every recorded call, as argv (the program's name first).
    fn calls(&self) -> Vec<Vec<String>> {
        let text = fs::read_to_string(&self.calls).unwrap_or_default();
        text.lines().map(|l| l.split('\u{1f}').map(String::from).collect()).collect()
    }

    /// The default templates of `kind`, with the program given by its path
    /// here (the in-process session cannot change its own PATH safely).
    fn config(&self, kind: cloud::CloudKind, params: &str) -> PathBuf {
        let name = kind.provider().as_str();
        let mut text = format!("[freeze]\nmax_freeze_secs = 30\n[snapshot]\nkind = \"{name}\"\n{params}\n");
        for (key, mut argv) in ["create", "finalize", "delete", "restore"].into_iter().zip(cloud::defaults(kind)) {
            argv[0] = self.bin.join(&argv[0]).display().to_string();
            text.push_str(&format!("{key} = {}\n", serde_json::to_string(&argv).unwrap()));
        }
        self.ms.s.config("q.toml", &text)
    }
}

fn s(a: &[&str]) -> Vec<String> {
    a.iter().map(|x| x.to_string()).collect()
}

#[test]
fn azure_snapshot_is_created_incremental_tagged_pending_then_final_and_deleted_and_restored_by_id() {
    quiesce_tests::require!(Root);
    let c = Cloud::new("prov-azure");
    let disk = "/subscriptions/0000-11/resourceGroups/rg/providers/Microsoft.Compute/disks/data1";
    // Through the binary: `az` found in quiesce's PATH, the default templates as shipped.
    let config = c.ms.s.config(
        "az.toml",
        &format!("[freeze]\nmax_freeze_secs = 30\n[snapshot]\nkind = \"azure\"\ndisk = \"{disk}\"\nresource_group = \"rg\"\n"),
    );
    let path = format!("{}:{}", c.bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = quiesce(&c.ms.s);
    cmd.env("PATH", path)
        .env("QUIESCE_STATE_DIR", c.ms.s.join("state"))
        .args(["snapshot", "--config"])
        .arg(&config)
        .arg("--mount")
        .arg(c.ms.mnt.path());
    let run = run_json(cmd);
    assert_eq!(run.code(), 3, "taken, FileSystemConsistent (no pre hook): {}", run.stderr());
    let sid = run.report["session_id"].as_str().unwrap().to_string();
    let id = format!("/subscriptions/0000-11/resourceGroups/rg/providers/Microsoft.Compute/snapshots/quiesce-{sid}");
    assert_eq!(run.report["snapshot"]["ids"], serde_json::json!([id]));
    let calls = c.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    #[rustfmt::skip]
    assert_eq!(calls[0], s(&["az", "snapshot", "create", "--resource-group", "rg", "--name", &format!("quiesce-{sid}"), "--source", disk,
        "--incremental", "true", "--tags", &format!("quiesce-session={sid}"), "quiesce-consistency=Pending", "--output", "json"]));
    #[rustfmt::skip]
    assert_eq!(calls[1], s(&["az", "resource", "tag", "--ids", &id, "--is-incremental", "--tags",
        "quiesce-consistency=FileSystemConsistent", "--output", "json"]));
    assert_eq!(run.consistency(), "FileSystemConsistent");

    // In process: what the catalog would hold, deleted and restored by id.
    fs::remove_file(&c.calls).unwrap();
    let config = c.config(cloud::CloudKind::Azure, &format!("disk = \"{disk}\"\nresource_group = \"rg\""));
    let report = session(&c.ms.s, &config, &[c.ms.mnt.path()]);
    let m = made(&report);
    let id = format!("/subscriptions/0000-11/resourceGroups/rg/providers/Microsoft.Compute/snapshots/quiesce-{}", report.session_id);
    assert_eq!((m.provider, m.ids.clone()), (ProviderKind::Azure, vec![id.clone()]));
    let r = snapshot::restore(&m, Path::new("data1-restored")).expect("restore");
    assert_eq!(r.ids, vec!["/subscriptions/0000-11/resourceGroups/rg/providers/Microsoft.Compute/disks/data1-restored".to_string()]);
    snapshot::delete(&m).expect("delete");
    let calls = c.calls();
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert_eq!(
        calls[2][1..],
        s(&["disk", "create", "--resource-group", "rg", "--name", "data1-restored", "--source", &id, "--output", "json"])
    );
    assert_eq!(calls[3][1..], s(&["snapshot", "delete", "--ids", &id]));
}

#[test]
fn aws_snapshots_every_volume_at_once_and_tags_deletes_and_restores_each_id() {
    quiesce_tests::require!(Root);
    let c = Cloud::new("prov-aws");
    let config = c.config(cloud::CloudKind::Aws, "instance = \"i-0123456789abcdef0\"\nzone = \"eu-west-1a\"");
    let report = session(&c.ms.s, &config, &[c.ms.mnt.path()]);
    let m = made(&report);
    let sid = &report.session_id;
    assert_eq!(m.ids, s(&["snap-0a11", "snap-0b22"]));
    assert_eq!(report.snapshot.ids, m.ids);
    let calls = c.calls();
    #[rustfmt::skip]
    assert_eq!(calls[0][1..], s(&["ec2", "create-snapshots", "--instance-specification", "InstanceId=i-0123456789abcdef0,ExcludeBootVolume=false",
        "--description", &format!("quiesce-{sid}"), "--tag-specifications",
        &format!("ResourceType=snapshot,Tags=[{{Key=quiesce-session,Value={sid}}},{{Key=quiesce-consistency,Value=Pending}}]"), "--output", "json"]));
    for (call, id) in calls[1..].iter().zip(["snap-0a11", "snap-0b22"]) {
        assert_eq!(
            call[1..],
            s(&["ec2", "create-tags", "--resources", id, "--tags", "Key=quiesce-consistency,Value=FileSystemConsistent"])
        );
    }
    assert_eq!(calls.len(), 3);
    let r = snapshot::restore(&m, Path::new("restored")).expect("restore");
    assert_eq!(r.ids, s(&["vol-from-snap-0a11", "vol-from-snap-0b22"]));
    snapshot::delete(&m).expect("delete");
    let calls = c.calls();
    #[rustfmt::skip]
    assert_eq!(calls[3][1..], s(&["ec2", "create-volume", "--snapshot-id", "snap-0a11", "--availability-zone", "eu-west-1a",
        "--tag-specifications", "ResourceType=volume,Tags=[{Key=Name,Value=restored}]", "--output", "json"]));
    assert_eq!(calls[5][1..], s(&["ec2", "delete-snapshot", "--snapshot-id", "snap-0a11"]));
    assert_eq!(calls[6][1..], s(&["ec2", "delete-snapshot", "--snapshot-id", "snap-0b22"]));
}

#[test]
fn gcp_snapshot_carries_lowercase_labels_and_is_relabelled_deleted_and_restored_by_name() {
    quiesce_tests::require!(Root);
    let c = Cloud::new("prov-gcp");
    let config = c.config(cloud::CloudKind::Gcp, "disk = \"data-1\"\nzone = \"europe-west1-b\"");
    let report = session(&c.ms.s, &config, &[c.ms.mnt.path()]);
    let m = made(&report);
    let sid = &report.session_id;
    let name = format!("quiesce-{sid}");
    assert_eq!(m.ids, vec![name.clone()]);
    let calls = c.calls();
    #[rustfmt::skip]
    assert_eq!(calls[0][1..], s(&["compute", "snapshots", "create", &name, "--source-disk", "data-1", "--source-disk-zone", "europe-west1-b",
        "--labels", &format!("quiesce-session={sid},quiesce-consistency=pending"), "--format", "json"]));
    assert_eq!(calls[1][1..], s(&["compute", "snapshots", "add-labels", &name, "--labels", "quiesce-consistency=file-system-consistent"]));
    let r = snapshot::restore(&m, Path::new("data-1-restored")).expect("restore");
    assert_eq!(r.ids, s(&["data-1-restored"]));
    snapshot::delete(&m).expect("delete");
    let calls = c.calls();
    assert_eq!(
        calls[2][1..],
        s(&["compute", "disks", "create", "data-1-restored", "--source-snapshot", &name, "--zone", "europe-west1-b", "--format", "json"])
    );
    assert_eq!(calls[3][1..], s(&["compute", "snapshots", "delete", &name, "--quiet"]));
}

#[test]
fn cloud_placeholder_values_and_printed_ids_cannot_inject_arguments() {
    quiesce_tests::require!(Root);
    let c = Cloud::new("prov-inject");
    // A parameter trying to add a tag and a flag stays one escaped value.
    let config = c.config(cloud::CloudKind::Azure, "disk = \"d1 --yes\"\nresource_group = \"rg quiesce-consistency=AppConsistent\"");
    let report = session(&c.ms.s, &config, &[c.ms.mnt.path()]);
    let m = made(&report);
    let calls = c.calls();
    assert_eq!(calls[0].len(), 16, "no argument added: {:?}", calls[0]);
    assert_eq!(calls[0][4], "rg%20quiesce-consistency%3DAppConsistent");
    assert_eq!(calls[0][8], "d1%20--yes");
    // A restore target that is an option is refused before anything runs.
    let e = snapshot::restore(&m, Path::new("--yes")).unwrap_err().to_string();
    assert!(e.contains("may not start with `-`"), "{e}");
    // One that would add AWS-style tags is escaped (and the id the fake
    // then answers with, which carries the `%`, is refused in turn).
    let _ = snapshot::restore(&m, Path::new("x,Key=owner"));
    assert_eq!(c.calls().last().unwrap()[6], "x%2CKey%3Downer");
    let n = c.calls().len();

    // An id in the CLI's reply that could become an option or a second argument is refused.
    let evil_bin = c.ms.s.join("evil");
    fs::create_dir_all(&evil_bin).unwrap();
    write_mode(&evil_bin.join("az"), "#!/bin/sh\necho '{\"id\": \"--delete-all x\"}'\n", 0o755);
    let config = c.ms.s.config(
        "evil.toml",
        &format!(
            "[snapshot]\nkind = \"azure\"\ndisk = \"d\"\nresource_group = \"rg\"\ncreate = [\"{}\", \"snapshot\", \"create\", \"{{disk}}\", \"{{resource_group}}\"]\n",
            evil_bin.join("az").display()
        ),
    );
    let ctx = SnapshotContext { session_id: "q-1-abc".into(), frozen_mounts: Vec::new() };
    let provider = snapshot::from_spec(load_config(Some(&config)).unwrap().snapshot.as_ref().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let e = rt.block_on(provider.take(&ctx)).unwrap_err().to_string();
    assert!(e.contains("will not pass on"), "{e}");
    assert_eq!(c.calls().len(), n, "nothing ran with the id");

    // A typo in a template is a config error, not text.
    let bad = c.ms.s.config("bad.toml", "[snapshot]\nkind = \"gcp\"\ndisk = \"d\"\nzone = \"z\"\ncreate = [\"gcloud\", \"{sesion}\"]\n");
    let e = load_config(Some(&bad)).unwrap_err().to_string();
    assert!(e.contains("{sesion}"), "{e}");
}

// ---------- changed blocks ----------

fn ranges(d: &diff::Diff) -> Vec<(u64, u64)> {
    blocks::merge(d.files.iter().flat_map(|f| f.ranges.iter().map(|r| (r.offset, r.len))).collect())
}

#[test]
fn reflink_diff_is_exactly_the_blocks_random_writes_changed_on_several_seeds() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("prov-diff-reflink");
    let x = LoopMount::with_size(&s.path, "x", Fs::Xfs, 512);
    assert!(sh(&format!("xfs_info {}", x.path().display())).contains("reflink=1"), "XFS with reflink");
    for seed in 1..=5u64 {
        let mut rng = Rng::new(seed);
        let size = 48 << 20;
        let img = x.path().join(format!("disk-{seed}.img"));
        // Holes too: a write into a hole is a change from "no extent" to data.
        blocks::random_image(&img, size, &[(8 << 20, 12 << 20), (40 << 20, 48 << 20)], &mut rng);
        let spec = |dest: &str| {
            s.config(
                &format!("r{seed}{dest}.toml"),
                &format!(
                    "[snapshot]\nkind = \"reflink\"\nsource = \"{}\"\ndest = \"{}/{dest}-{seed}.img\"\n",
                    img.display(),
                    x.path().display()
                ),
            )
        };
        let ctx = SnapshotContext { session_id: format!("q-{seed}"), frozen_mounts: Vec::new() };
        let a = take(&spec("a"), &ctx);
        let touched = blocks::random_writes(&img, size, 200, 3 * BLOCK, &mut rng);
        let b = take(&spec("b"), &ctx);
        let d = diff::between(&a, &b).expect("diff");
        let brute = blocks::brute_force(&a.paths[0], &b.paths[0]);
        assert_eq!(d.compared_bytes, 0, "XFS maps every extent");
        assert_eq!(ranges(&d), brute, "seed {seed}: FIEMAP = brute force");
        assert_eq!(brute, touched, "seed {seed}: and both = the blocks written");
        assert_eq!(d.changed_bytes, blocks::total(&brute));
        if seed == 1 {
            // The CLI prints the same.
            let out = quiesce(&s).args(["points", "diff", "--json"]).arg(&a.paths[0]).arg(&b.paths[0]).output().unwrap();
            let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
            assert_eq!(j["changed_bytes"], d.changed_bytes);
            assert_eq!(j["method"], "fiemap");
        }
        for m in [&a, &b] {
            snapshot::delete(m).unwrap();
        }
        fs::remove_file(&img).unwrap();
    }
}

#[test]
fn btrfs_diff_covers_every_changed_block_and_only_written_ones_on_several_seeds() {
    quiesce_tests::require!(Root);
    let b = Btrfs::new("prov-diff-btrfs");
    for seed in 1..=5u64 {
        let mut rng = Rng::new(seed + 100);
        let size = 32 << 20;
        let img = b.vol().join("disk.img");
        let _ = fs::remove_file(&img);
        blocks::random_image(&img, size, &[(4 << 20, 6 << 20)], &mut rng);
        fs::write(b.vol().join("gone.txt"), "x").unwrap();
        let a = take(&b.config(false), &b.ctx(&format!("a{seed}")));
        let touched = blocks::random_writes(&img, size, 150, 3 * BLOCK, &mut rng);
        fs::remove_file(b.vol().join("gone.txt")).unwrap();
        let newer = take(&b.config(false), &b.ctx(&format!("b{seed}")));
        let d = diff::between(&a, &newer).expect("diff");
        let brute = blocks::brute_force(&a.paths[0].join("disk.img"), &newer.paths[0].join("disk.img"));
        assert_eq!(d.files.len(), 1, "only the image changed: {:?}", d.files);
        assert_eq!(d.removed, vec![PathBuf::from("gone.txt")]);
        let got = ranges(&d);
        assert!(blocks::covers(&got, &brute), "seed {seed}: every changed block is reported");
        assert!(blocks::covers(&touched, &got), "seed {seed}: only written blocks are reported");
        assert_eq!(got, touched, "seed {seed}: exactly the written blocks");
        for m in [&a, &newer] {
            snapshot::delete(m).unwrap();
        }
    }
}
