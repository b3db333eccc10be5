//! Recovery points (issue 11): every session that took a snapshot records a
//! point; `quiesce points list/show/delete/prune/restore` on the real binary.
//!
//! The rig is the restore harness's: an XFS-with-reflink loop file system
//! (`outer`) holding an ext4 disk image mounted at `inner`, which quiesce
//! freezes while the `reflink` provider clones the image.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use quiesce_tests::restore::Stage;
use quiesce_tests::{gone_within, is_frozen, is_mountpoint, quiesce, run_json, sh, Fs, LoopMount, Run};
use serde_json::Value;

/// A native config: freeze `inner`, clone its disk image, plus `extra`.
fn config(st: &Stage, extra: &str) -> PathBuf {
    let outer = st.rig.outer.mountpoint.display().to_string();
    st.s.config(
        "quiesce.toml",
        &format!(
            "[freeze]\nmax_freeze_secs = 30\n\n[snapshot]\nkind = \"reflink\"\nsource = \"{}\"\ndest = \"{outer}/snap-{{session}}.img\"\n\n{extra}\n",
            st.rig.inner.image.display()
        ),
    )
}

/// `quiesce snapshot --config CONFIG --mount INNER`, its state in the scratch dir.
fn session_cmd(st: &Stage, config: &Path) -> Command {
    let mut cmd = quiesce(&st.s);
    cmd.env("QUIESCE_CACHE_DIR", st.file("cache")).env("QUIESCE_STATE_DIR", st.file("state"));
    cmd.arg("snapshot").arg("--config").arg(config).arg("--mount").arg(st.rig.inner()).arg("--max-freeze").arg("30");
    cmd
}

fn session(st: &Stage, config: &Path) -> Run {
    run_json(session_cmd(st, config))
}

/// `quiesce points ARGS…` against the scratch dir's state.
fn points(st: &Stage, args: &[&str]) -> Output {
    let mut cmd = quiesce(&st.s);
    cmd.env("QUIESCE_STATE_DIR", st.file("state")).arg("points").args(args);
    cmd.output().expect("run quiesce points")
}

fn points_json(st: &Stage, args: &[&str]) -> Value {
    let out = points(st, args);
    assert!(out.status.success(), "points {args:?}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("points {args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn listed(st: &Stage) -> Vec<Value> {
    points_json(st, &["list", "--json"])["points"].as_array().cloned().unwrap_or_default()
}

fn ids(list: &[Value]) -> Vec<String> {
    list.iter().map(|p| p["id"].as_str().unwrap_or_default().to_string()).collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn point_id(run: &Run) -> String {
    run.report["point"].as_str().unwrap_or_else(|| panic!("no point in the report: {}", run.report)).to_string()
}

/// A script hook that appends `pre`/`post` to `log` (outside the frozen mount).
fn logging_hook(st: &Stage, log: &Path) -> String {
    let pre = st.s.script("pre.sh", &format!("#!/bin/sh\necho pre >> {}\n", log.display()));
    let post = st.s.script("post.sh", &format!("#!/bin/sh\necho post >> {}\n", log.display()));
    format!("[[hook]]\nname = \"app\"\npre = \"{}\"\npost = \"{}\"\n", pre.display(), post.display())
}

#[test]
fn every_reflink_session_records_a_point_that_list_and_show_return() {
    quiesce_tests::require!(Root, Plugins);
    let st = Stage::new("pt-record");
    let log = st.file("hook.log");
    let cfg = config(&st, &logging_hook(&st, &log));
    let run = session(&st, &cfg);
    assert_eq!(run.code(), 0, "{}\n{}", run.report, run.stderr());
    let id = point_id(&run);
    assert_eq!(id, run.report["session_id"].as_str().unwrap());
    let snap = st.rig.outer.mountpoint.join(format!("snap-{id}.img"));
    assert!(snap.is_file());

    let list = listed(&st);
    assert_eq!(ids(&list), [id.as_str()]);
    let p = &list[0];
    assert_eq!(p["consistency"], "AppConsistent");
    assert_eq!(p["made"]["provider"], "reflink");
    assert_eq!(p["made"]["paths"][0], snap.display().to_string());
    assert_eq!(p["snapshot_paths"][0], snap.display().to_string());
    assert_eq!(p["mounts"][0], st.rig.inner().display().to_string());
    let outcomes: Vec<(String, String)> = p["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["phase"].as_str().unwrap().into(), h["outcome"].as_str().unwrap().into()))
        .collect();
    assert_eq!(outcomes, [("pre".to_string(), "succeeded".to_string()), ("post".to_string(), "succeeded".to_string())]);
    assert!(p.get("report").is_none(), "list leaves the embedded report out");

    let shown = points_json(&st, &["show", &id, "--json"]);
    assert_eq!(shown["report"]["session_id"], id.as_str(), "show carries the session report");
    assert_eq!(shown["report"]["point"], id.as_str());
    // The report as it was just before it was recorded: every step up to the recording, adding up.
    let steps: Vec<String> = quiesce_tests::report_steps(&shown["report"]).into_iter().map(|(n, _)| n).collect();
    assert_eq!(steps.last().map(String::as_str), Some("post"), "{steps:?}");
    assert!(shown["report"]["duration_ms"].as_f64().unwrap() > 0.0);
    let human = points(&st, &["list"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains(&format!("{id}  ")), "{}", String::from_utf8_lossy(&human.stdout));

    // A second session: a second point, listed oldest first.
    let run2 = session(&st, &cfg);
    assert_eq!(ids(&listed(&st)), [id, point_id(&run2)]);
    // The record is root's alone.
    let mode = fs::metadata(st.file("state/points")).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o700);
}

#[test]
fn a_session_without_a_snapshot_records_no_point() {
    quiesce_tests::require!(Root, Plugins);
    let st = Stage::new("pt-none");
    let cfg = st.s.config("quiesce.toml", "[freeze]\nmax_freeze_secs = 30\n\n[snapshot]\ncommand = \"exit 1\"\n");
    let run = session(&st, &cfg);
    assert_eq!(run.code(), 4, "{}", run.report);
    assert!(run.report.get("point").is_none(), "{}", run.report);
    assert!(listed(&st).is_empty());
}

#[test]
fn torn_and_corrupt_records_are_reported_with_their_path_and_skipped() {
    quiesce_tests::require!(Root, Plugins);
    let st = Stage::new("pt-torn");
    let cfg = config(&st, "");
    let good = point_id(&session(&st, &cfg));
    let dir = st.file("state/points");
    let record = fs::read(dir.join(format!("{good}.json"))).unwrap();
    // Half a real record, as a torn write would leave it, and garbage.
    fs::write(dir.join("q-1-torn.json"), &record[..record.len() / 2]).unwrap();
    fs::write(dir.join("q-2-corrupt.json"), b"\x00\x01 not json").unwrap();

    let out = points(&st, &["list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(v["points"].as_array().unwrap()), [good.as_str()]);
    let problems = v["problems"].as_array().unwrap();
    let message = |name: &str| {
        problems
            .iter()
            .find(|p| p["path"] == dir.join(name).display().to_string())
            .and_then(|p| p["message"].as_str())
            .unwrap_or_else(|| panic!("{name} not reported: {problems:?}"))
            .to_string()
    };
    assert!(message("q-1-torn.json").contains("torn"));
    assert!(message("q-2-corrupt.json").contains("corrupt"));
    assert!(stderr(&out).contains("q-1-torn.json"), "warned on stderr too: {}", stderr(&out));

    // Never fatal: the next session records its point. (A session reads the
    // records only when the catalog may be full — `points list` and
    // `doctor` name the bad ones.)
    let run = session(&st, &cfg);
    assert!(run.error_codes().is_empty() && run.report["point"].is_string(), "{}", run.report);
    assert_eq!(ids(&listed(&st)).len(), 2);
    let shown = points(&st, &["show", "q-1-torn"]);
    assert_eq!(shown.status.code(), Some(1));
    assert!(stderr(&shown).contains("torn"), "{}", stderr(&shown));
}

/// strace holds the session in the catalog's fsync of the finished
/// temporary record (`delay_enter`), and the session is SIGKILLed there:
/// the point never appears half-written, the leftover is reported, and the
/// catalog keeps working.
#[test]
fn a_session_killed_while_writing_its_record_leaves_no_torn_record() {
    quiesce_tests::require!(Root, Plugins);
    let st = Stage::new("pt-kill");
    let cfg = config(&st, "");
    let earlier = point_id(&session(&st, &cfg));
    let mut cmd = Command::new("strace");
    cmd.args(["-o", "/dev/null", "-e", "trace=fsync", "-e", "inject=fsync:delay_enter=60000000"]);
    let inner = session_cmd(&st, &cfg);
    cmd.arg(inner.get_program()).args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut strace = cmd.arg("--json").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("strace");
    let dir = st.file("state/points");
    let until = Instant::now() + Duration::from_secs(60);
    let tmp = loop {
        let found = fs::read_dir(&dir).ok().and_then(|d| {
            d.flatten().map(|e| e.path()).find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".json.tmp")))
        });
        if let Some(t) = found.filter(|t| fs::metadata(t).map(|m| m.len() > 0).unwrap_or(false)) {
            break t;
        }
        assert!(Instant::now() < until, "the session never started writing its record");
        std::thread::sleep(Duration::from_millis(20));
    };
    // The writer is strace's child, blocked in fsync.
    let children = fs::read_to_string(format!("/proc/{}/task/{}/children", strace.id(), strace.id())).unwrap();
    let pid: i32 = children.split_whitespace().next().and_then(|p| p.parse().ok()).expect("the traced session");
    assert!(!is_frozen(st.rig.inner()), "recording happens after thaw");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    // strace (which stops its tracees at exit) would sit out its injected
    // delay before letting the killed session die: end it, and the session's
    // pending SIGKILL ends it without returning to user space.
    let _ = strace.kill();
    let _ = strace.wait();
    assert!(gone_within(pid, Duration::from_secs(10)), "the session survived SIGKILL");

    let v = points_json(&st, &["list", "--json"]);
    assert_eq!(ids(v["points"].as_array().unwrap()), [earlier.as_str()], "the killed session's point is not there, not half there");
    let problem = v["problems"].as_array().unwrap().iter().find(|p| p["path"] == tmp.display().to_string()).cloned();
    assert!(problem.is_some_and(|p| p["message"].as_str().unwrap_or_default().contains("killed")), "{v}");
    let next = session(&st, &cfg);
    assert!(next.error_codes().is_empty(), "{}", next.report);
    assert_eq!(ids(&listed(&st)), [earlier, point_id(&next)]);
}

#[test]
fn max_points_reached_refuses_the_session_before_any_hook_or_freeze() {
    quiesce_tests::require!(Root, Plugins);
    let st = Stage::new("pt-max");
    let log = st.file("hook.log");
    let cfg = config(&st, &format!("[points]\nmax_points = 2\n\n{}", logging_hook(&st, &log)));
    for _ in 0..2 {
        assert_eq!(session(&st, &cfg).code(), 0);
    }
    let images_before = fs::read_dir(&st.rig.outer.mountpoint).unwrap().count();
    let run = session(&st, &cfg);
    assert_eq!(run.code(), 4, "{}", run.report);
    assert_eq!(run.error_codes(), ["RpCollectionLimitReached"]);
    let msg = run.report["errors"][0]["message"].as_str().unwrap();
    assert!(msg.contains("quiesce points prune") && msg.contains("max_points") && msg.contains("points delete"), "{msg}");
    assert_eq!(fs::read_to_string(&log).unwrap(), "pre\npost\npre\npost\n", "no hook ran for the refused session");
    assert!(run.report["freeze"]["mounts"].as_array().unwrap().is_empty(), "nothing frozen: {}", run.report);
    assert!(run.report["hooks"].as_array().unwrap().is_empty());
    assert_eq!(fs::read_dir(&st.rig.outer.mountpoint).unwrap().count(), images_before, "no snapshot made");
    assert_eq!(listed(&st).len(), 2);
    assert!(!is_frozen(st.rig.inner()));

    // With automatic clean-up and a policy that lets one go, the session makes room first.
    let cfg = config(&st, &format!("[points]\nmax_points = 2\nkeep_last = 1\nprune_after_session = true\n\n{}", logging_hook(&st, &log)));
    let old = ids(&listed(&st));
    let run = session(&st, &cfg);
    assert_eq!(run.code(), 0, "{}", run.report);
    let now = ids(&listed(&st));
    assert_eq!(now, [point_id(&run)], "made room, recorded, pruned after: {now:?} (was {old:?})");
    for gone in &old {
        assert!(!st.rig.outer.mountpoint.join(format!("snap-{gone}.img")).exists(), "pruned points' images are deleted");
    }
}

/// Marks a file immutable until dropped: the real reason a provider's delete fails.
struct Immutable(PathBuf);
impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn a_provider_failing_mid_prune_keeps_that_record_marked_and_deletes_the_rest() {
    quiesce_tests::require!(Root, Plugins);
    let st = Stage::new("pt-delete");
    let cfg = config(&st, "[points]\nkeep_last = 1\n");
    let all: Vec<String> = (0..3).map(|_| point_id(&session(&st, &cfg))).collect();
    let image = |id: &str| st.rig.outer.mountpoint.join(format!("snap-{id}.img"));

    // Dry run: says what would go, deletes nothing.
    let dry = points_json(&st, &["prune", "--config", cfg.to_str().unwrap(), "--dry-run", "--json"]);
    let would: Vec<&str> = dry["plan"]["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kept_by"].as_array().unwrap().is_empty())
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(would, [all[1].as_str(), all[0].as_str()]);
    assert_eq!(listed(&st).len(), 3);

    // The oldest point's image cannot be removed: the provider's delete fails.
    sh(&format!("chattr +i {}", image(&all[0]).display()));
    let guard = Immutable(image(&all[0]));
    let out = points(&st, &["prune", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let err = stderr(&out);
    assert!(err.contains(&all[0]) && err.contains("record is kept, marked"), "{err}");
    assert_eq!(ids(&listed(&st)), [all[0].clone(), all[2].clone()], "the middle one went; the failed one stayed");
    assert!(!image(&all[1]).exists());
    assert!(image(&all[0]).exists());
    let shown = points_json(&st, &["show", &all[0], "--json"]);
    assert!(shown["delete_failed"]["message"].as_str().unwrap_or_default().contains("cannot remove"), "{shown}");
    assert!(String::from_utf8_lossy(&points(&st, &["list"]).stdout).contains("[delete failed]"));

    // Once the cause is fixed, delete again succeeds.
    drop(guard);
    let out = points(&st, &["delete", &all[0]]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!image(&all[0]).exists());
    assert_eq!(ids(&listed(&st)), [all[2].clone()]);
    let out = points(&st, &["delete", &all[0]]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no recovery point"), "{}", stderr(&out));
    let out = points(&st, &["show", "../../etc/passwd"]);
    assert!(stderr(&out).contains("not a recovery point id"), "{}", stderr(&out));
}

#[test]
fn restore_is_refused_over_a_mount_a_mount_below_a_non_empty_dir_and_a_disk_in_use() {
    quiesce_tests::require!(Root, Plugins);
    let st = Stage::new("pt-refuse");
    let cfg = config(&st, "");
    let id = point_id(&session(&st, &cfg));
    let refused = |to: &Path, extra: &[&str], why: &str| {
        let mut args = vec!["restore", &id, "--to", to.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = points(&st, &args);
        assert_eq!(out.status.code(), Some(1), "restore to {} {extra:?} must be refused", to.display());
        assert!(stderr(&out).contains(why), "{}: {}", to.display(), stderr(&out));
    };
    let inner = st.rig.inner().to_path_buf();
    fs::write(inner.join("live"), "live data").unwrap();
    refused(&inner, &[], "is a mount point");
    refused(&inner, &["--in-place"], "is a mount point");
    // The scratch dir has the outer and inner mounts below it.
    refused(&st.s.path, &["--in-place"], "is mounted below it");
    let full = st.file("full");
    fs::create_dir_all(&full).unwrap();
    fs::write(full.join("keep"), "mine").unwrap();
    refused(&full, &[], "--in-place");
    // The live disk image behind the inner mount.
    refused(&st.rig.inner.image, &["--in-place"], "disk image behind /dev/loop");
    refused(&st.rig.inner.image, &[], "not an empty directory");
    assert_eq!(fs::read_to_string(inner.join("live")).unwrap(), "live data");
    assert_eq!(fs::read_to_string(full.join("keep")).unwrap(), "mine");
    assert!(is_mountpoint(&inner));
}

#[test]
fn restore_to_an_alternate_location_gives_the_snapshots_data() {
    quiesce_tests::require!(Root, Plugins);
    let st = Stage::new("pt-restore");
    let cfg = config(&st, "");
    let inner = st.rig.inner().to_path_buf();
    fs::write(inner.join("data"), "at the snapshot").unwrap();
    let id = point_id(&session(&st, &cfg));
    fs::write(inner.join("data"), "after the snapshot").unwrap();
    fs::write(inner.join("later"), "new").unwrap();

    // Block for block the snapshot's image (the restore is a clone of it).
    let plain = st.rig.outer.mountpoint.join("plain.img");
    let out = points(&st, &["restore", &id, "--to", plain.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    sh(&format!("cmp {} {}", plain.display(), st.rig.outer.mountpoint.join(format!("snap-{id}.img")).display()));

    let img = st.rig.outer.mountpoint.join("restored.img");
    let at = st.file("restored");
    let out = points(&st, &["restore", &id, "--to", img.to_str().unwrap(), "--mount-at", at.to_str().unwrap(), "--json"]);
    // Unmounted and detached when the test ends, also when it fails.
    let _restored = LoopMount { image: img.clone(), mountpoint: at.clone(), fs: Fs::Ext4 };
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["restored"][0], img.display().to_string());
    assert_eq!(v["mounted_at"], at.display().to_string());
    assert!(is_mountpoint(&at));
    assert_eq!(fs::read_to_string(at.join("data")).unwrap(), "at the snapshot");
    assert!(!at.join("later").exists());
    assert_eq!(fs::read_to_string(inner.join("data")).unwrap(), "after the snapshot", "the source is untouched");

    // In place over an existing (unused) file: it is moved aside, not lost.
    let out = points(&st, &["restore", &id, "--to", plain.to_str().unwrap(), "--in-place"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let aside = PathBuf::from(format!("{}.before-{id}", plain.display()));
    assert!(aside.is_file(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("now at"));
}

#[test]
fn a_point_that_cannot_be_recorded_is_an_error_and_the_label_stands() {
    quiesce_tests::require!(Root, Plugins);
    let st = Stage::new("pt-unrecorded");
    let log = st.file("hook.log");
    let cfg = config(&st, &logging_hook(&st, &log));
    // A state directory anyone may write to: its records could name anything, so the catalog refuses it.
    let open = st.file("open-state");
    fs::create_dir_all(&open).unwrap();
    sh(&format!("chmod 0777 {}", open.display()));
    let mut cmd = session_cmd(&st, &cfg);
    cmd.env("QUIESCE_STATE_DIR", &open);
    let run = run_json(cmd);
    assert_eq!(run.report["snapshot_taken"], true, "{}", run.report);
    assert_eq!(run.consistency(), "AppConsistent", "recording is after the label: {}", run.report);
    assert_eq!(run.error_codes(), ["PointNotRecorded"]);
    assert!(run.report["errors"][0]["message"].as_str().unwrap().contains("0777"), "{}", run.report);
    assert!(run.report.get("point").is_none());
    assert_eq!(run.code(), 3);
}

/// The two-phase flow records its point where every session ends: the id
/// an agent passes to `end` is the point's snapshot id.
#[test]
fn a_two_phase_session_records_the_agents_snapshot_id_and_a_full_catalog_forgets_the_oldest_agent_record() {
    quiesce_tests::require!(Root, Plugins);
    let m = quiesce_tests::MountedScratch::new("pt-2phase");
    let cfg = m.s.config("quiesce.toml", "[freeze]\nmax_freeze_secs = 30\n\n[points]\nmax_points = 1\n");
    let svc = quiesce_tests::service::Service::start(&m.s, &cfg);
    let begin = || {
        let mut cmd = svc.cmd(&m.s);
        cmd.args(["begin", "--json", "--mount"]).arg(m.mnt.path()).stdin(Stdio::null());
        let out = cmd.output().expect("quiesce begin");
        (out.status.code(), serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null), stderr(&out))
    };
    let (code, begun, err) = begin();
    assert_eq!(code, Some(0), "{begun} {err}\n{}", svc.log());
    let id = begun["session_id"].as_str().unwrap().to_string();
    let mut cmd = svc.cmd(&m.s);
    cmd.args(["end", "--json", "--snapshot-id", "snap-0007", &id]).stdin(Stdio::null());
    let out = cmd.output().expect("quiesce end");
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    assert_eq!(reply["report"]["point"], id.as_str(), "{reply}");

    let mut cmd = quiesce(&m.s);
    cmd.env("QUIESCE_STATE_DIR", m.s.join("state")).args(["points", "show", &id, "--json"]);
    let shown: Value = serde_json::from_slice(&cmd.output().unwrap().stdout).unwrap();
    assert_eq!(shown["snapshot_ids"], serde_json::json!(["snap-0007"]));
    assert_eq!(shown["mounts"], serde_json::json!([m.mnt.path().display().to_string()]));

    // The catalog is full, but of a snapshot quiesce cannot delete (the
    // agent's own): the next begin forgets that record (the snapshot is
    // untouched) instead of stopping the machine's backups.
    let (code, begun2, err) = begin();
    assert_eq!(code, Some(0), "{begun2} {err}");
    let id2 = begun2["session_id"].as_str().unwrap().to_string();
    let mut cmd = svc.cmd(&m.s);
    cmd.args(["end", "--json", &id2]).stdin(Stdio::null());
    let reply: Value = serde_json::from_slice(&cmd.output().unwrap().stdout).unwrap();
    assert_eq!(reply["report"]["point"], id2.as_str(), "{reply}");
    let warned = reply["report"]["warnings"].to_string();
    assert!(warned.contains(&format!("recovery point {id} forgotten")), "{warned}");
    assert!(!is_frozen(m.mnt.path()));
}

#[test]
fn prune_drops_only_the_record_of_a_snapshot_quiesce_cannot_delete_and_says_so() {
    quiesce_tests::require!(Root, Plugins);
    let st = Stage::new("pt-forget");
    let marker = st.file("made");
    let cfg = st.s.config(
        "quiesce.toml",
        &format!(
            "[freeze]\nmax_freeze_secs = 30\n\n[snapshot]\ncommand = \"touch {m}; echo snapshot-id: vol@$QUIESCE_SESSION_ID\"\n\n[points]\nkeep_last = 1\n",
            m = marker.display()
        ),
    );
    let first = point_id(&session(&st, &cfg));
    let second = point_id(&session(&st, &cfg));
    let out = points(&st, &["prune", "--config", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(first.as_str()) && text.contains("record dropped (no delete step)"), "{text}");
    assert!(
        stderr(&out).contains(&format!("vol@{first}")) && stderr(&out).contains("delete it with the tool that made it"),
        "{}",
        stderr(&out)
    );
    assert_eq!(ids(&listed(&st)), [second.as_str()]);
    // An explicit delete does not forget silently: it says why, and --forget is the admin's call.
    let out = points(&st, &["delete", &second]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("delete_command") && stderr(&out).contains("--forget"), "{}", stderr(&out));
    assert!(points(&st, &["delete", &second, "--forget"]).status.success());
    assert!(listed(&st).is_empty());
}

#[test]
fn points_diff_takes_two_point_ids_and_finds_what_was_written_between() {
    quiesce_tests::require!(Root, Plugins);
    let st = Stage::new("pt-diff");
    let cfg = config(&st, "");
    let a = point_id(&session(&st, &cfg));
    sh(&format!("dd if=/dev/urandom of={}/blob bs=1M count=4 conv=fsync status=none", st.rig.inner().display()));
    let b = point_id(&session(&st, &cfg));
    let d = points_json(&st, &["diff", &a, &b, "--json"]);
    let changed = d["changed_bytes"].as_u64().unwrap();
    assert!(changed >= 4 << 20, "4 MiB written between the points, {changed} bytes reported: {d}");
    let by_path = points_json(
        &st,
        &[
            "diff",
            st.rig.outer.mountpoint.join(format!("snap-{a}.img")).to_str().unwrap(),
            st.rig.outer.mountpoint.join(format!("snap-{b}.img")).to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(by_path["changed_bytes"], d["changed_bytes"], "by id and by path the same");
}
