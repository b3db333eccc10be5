//! quiesce as the QEMU guest agent's fsfreeze hook (issue 10), proven with
//! the real `qemu-ga` (Debian `qemu-guest-agent`) driven over its socket
//! with the calls libvirt, Proxmox VE and KubeVirt make
//! (`guest-fsfreeze-freeze-list` with mount points, `guest-fsfreeze-thaw`).
//! qemu-ga runs the hook the tree ships (`integrations/qemu-ga/fsfreeze-hook`),
//! which runs `quiesce fsfreeze-hook freeze|thaw`, a client of `quiesce serve`.
//!
//! qemu-ga has no auto-thaw: every test's mounts are thawed by the fixtures'
//! guards (`QemuGa` and `LoopMount` drop) on every path.

use std::time::{Duration, Instant};

use quiesce_tests::db::*;
use quiesce_tests::judge::assert_lock_point;
use quiesce_tests::qga::{Mountpoints, QemuGa};
use quiesce_tests::restore::*;
use quiesce_tests::service::Service;
use quiesce_tests::svc::ok;
use quiesce_tests::*;
use serde_json::{json, Value};

/// Tries one autocommit INSERT as root with `lock_wait_timeout = 1`: true if
/// the server refused it with 1205 (a backup lock or FTWRL is held), false if
/// it committed. A commit blocked by a frozen disk rather than a lock neither
/// errors nor returns: that counts as not locked once `limit` passes.
fn commit_refused_by_lock(my: &MariaDb, n: u64) -> bool {
    let socket = my.socket.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = (|| -> Result<(), mywire::Error> {
            let s = std::os::unix::net::UnixStream::connect(&socket)?;
            let mut c = mywire::Client::connect(s, &mywire::Config::new("root"))?;
            c.set_lock_wait_timeout(1)?;
            c.query(&format!("INSERT INTO q.probe VALUES ({n})")).map(|_| ())
        })();
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Err(e)) if e.is_lock_wait_timeout() => true,
        Ok(Ok(())) => false,
        Ok(Err(e)) => panic!("probe INSERT failed otherwise: {e}"),
        Err(_) => false,
    }
}

/// A MariaDB on the rig's inner disk with a `q.probe` table root may write to.
fn mariadb(st: &Stage) -> MariaDb {
    let my = MariaDb::start(st.rig.inner());
    my.connect_root().query("CREATE TABLE q.probe (n BIGINT PRIMARY KEY) ENGINE=InnoDB").expect("create probe table");
    my
}

/// The service config: the mariadb plugin over the server's Unix socket.
fn mariadb_service_config(st: &Stage, my: &MariaDb, extra: &str) -> std::path::PathBuf {
    let target = format!("unix:{}", my.socket.display());
    let cfg = st.plugin_config("quiesce_mariadb", &[("target", target.clone())], &[target], "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    st.s.config("service.toml", &format!("{extra}\n{text}"))
}

fn codes(report: &Value) -> Vec<String> {
    report["errors"].as_array().map(|a| a.iter().filter_map(|e| e["code"].as_str().map(String::from)).collect()).unwrap_or_default()
}

fn hook<'a>(report: &'a Value, name: &str, phase: &str) -> &'a Value {
    report["hooks"]
        .as_array()
        .and_then(|a| a.iter().find(|h| h["name"] == name && h["phase"] == phase))
        .unwrap_or_else(|| panic!("no {phase} hook {name} in {report}"))
}

fn qga_dir(s: &Scratch) -> std::path::PathBuf {
    let d = s.join("qga");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The order qemu-ga promises its hook: `freeze` before its FIFREEZE (the
/// pre hook can still write to the mount), the mount frozen while the
/// session is open, `thaw` after its FITHAW (the post hook writes again).
#[test]
fn qemu_ga_runs_quiesce_pre_hooks_before_its_freeze_and_post_hooks_after_its_thaw() {
    quiesce_tests::require!(Root, Mariadb, Plugins);
    let ms = MountedScratch::new("qga-order");
    let mnt = ms.mnt.path();
    let pre = ms.s.script(
        "pre.sh",
        &format!("#!/bin/sh\necho pre > {m}/written-by-pre\ndate +%s%N > {o}\n", m = mnt.display(), o = ms.file("pre.t").display()),
    );
    let post = ms.s.script(
        "post.sh",
        &format!("#!/bin/sh\necho post > {m}/written-by-post\ndate +%s%N > {o}\n", m = mnt.display(), o = ms.file("post.t").display()),
    );
    let config = ms.s.config(
        "service.toml",
        &format!("[freeze]\nenabled = true\n\n[[hook]]\nname = \"app\"\npre = \"{}\"\npost = \"{}\"\n", pre.display(), post.display()),
    );
    let svc = Service::start(&ms.s, &config);
    let mut c = svc.connect();
    let mut ga = QemuGa::with_quiesce_hook(&qga_dir(&ms.s), &svc.socket);
    let mounts = Mountpoints::new(&[mnt]);

    assert_eq!(ga.freeze_list(&mounts).unwrap_or_else(|e| panic!("freeze refused: {e}; log: {}", ga.log_text())), 1);
    // Frozen by qemu-ga; quiesce's pre ran before, its post not yet.
    assert_eq!(ga.status().unwrap(), "frozen");
    assert!(is_frozen(mnt), "qemu-ga said frozen but {} accepts writes", mnt.display());
    assert!(ms.file("pre.t").exists(), "pre hook did not run before qemu-ga froze");
    assert!(!ms.file("post.t").exists(), "post hook ran while frozen");
    let status = ok(&mut c, "status", json!({}));
    assert_eq!(status["session"]["mode"], "external", "{status}");
    assert_eq!(status["session"]["frozen"], json!([]), "quiesce froze nothing itself: {status}");

    assert_eq!(ga.thaw().unwrap(), 1);
    assert!(!is_frozen(mnt));
    assert!(ms.file("post.t").exists(), "post hook did not run after qemu-ga's thaw");
    assert_eq!(std::fs::read_to_string(mnt.join("written-by-pre")).unwrap(), "pre\n");
    assert_eq!(std::fs::read_to_string(mnt.join("written-by-post")).unwrap(), "post\n");
    let report = svc.last_report();
    assert_eq!(report["mode"], "external", "{report}");
    assert_eq!(report["snapshot_taken"], true, "{report}");
    assert_eq!(report["consistency"], "AppConsistent", "{report}");
    assert!(codes(&report).is_empty(), "{report}");
    assert_eq!(hook(&report, "app", "pre")["outcome"], "succeeded");
    assert_eq!(hook(&report, "app", "post")["outcome"], "succeeded");
    assert_eq!(ok(&mut c, "status", json!({}))["session"], Value::Null);
    // libvirt may call thaw again: nothing is open, the hook succeeds.
    assert_eq!(ga.thaw().unwrap(), 0);
}

/// A MariaDB under write load: the plugin's lock is taken before qemu-ga
/// freezes, held through qemu-ga's frozen window (a commit is refused by the
/// lock, not just stalled by the frozen disk), and released only after
/// qemu-ga's thaw. The snapshot taken in the window (a reflink clone of the
/// disk image) restores to exactly the locked state.
#[test]
fn mariadb_stays_locked_through_qemu_ga_frozen_window_and_is_released_after_its_thaw() {
    quiesce_tests::require!(Root, Mariadb, Plugins);
    let mut st = Stage::new("qga-mariadb");
    let my = mariadb(&st);
    let svc = Service::start(&st.s, &mariadb_service_config(&st, &my, ""));
    let mut ga = QemuGa::with_quiesce_hook(&qga_dir(&st.s), &svc.socket);
    let mounts = Mountpoints::new(&[st.rig.inner()]);
    let times = st.file("snap.times");
    let snapshot = st.rig.snapshot_cmd(&times);

    let mut writer = Writer::mariadb(&my);
    writer.wait_for(300, Duration::from_secs(60));
    assert_eq!(ga.freeze_list(&mounts).unwrap_or_else(|e| panic!("freeze refused: {e}; log: {}", ga.log_text())), 1);
    assert!(is_frozen(st.rig.inner()));
    assert!(commit_refused_by_lock(&my, 1), "no lock held while qemu-ga has the disk frozen");
    sh(&snapshot);
    assert_eq!(ga.thaw().unwrap(), 1);
    let after = writer.acked();
    writer.wait_for(after + 100, Duration::from_secs(30));
    let log = writer.stop();
    assert!(log.error.is_none(), "writer failed: {:?}", log.error);
    assert!(!commit_refused_by_lock(&my, 2), "the lock outlived the session");

    let report = svc.last_report();
    assert_eq!(report["mode"], "external", "{report}");
    assert_eq!(report["consistency"], "AppConsistent", "{report}");
    assert!(codes(&report).is_empty(), "{report}");
    let t = snap_times(&times);
    let artifact = report["artifacts"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["hook"] == "db" && a["name"] == "quiesce_times"))
        .and_then(|a| a["path"].as_str())
        .unwrap_or_else(|| panic!("no quiesce_times artifact: {report}"))
        .to_string();
    let tm = parse_times(&std::fs::read_to_string(&artifact).unwrap());
    assert!(tm["locked"] < t.start_ns && t.end_ns < tm["releasing"], "lock not held around qemu-ga's snapshot: {tm:?} {t:?}");

    let restored = restore_mariadb(&mut st.rig, &my);
    let k = gapless_prefix(&restored.rows()).unwrap();
    assert_lock_point(k, &log, tm["locked"], tm["releasing"]);
    println!(
        "[qemu-ga] mariadb: lock held {:.1} ms around qemu-ga's frozen window; restored 1..{k}; writer's longest gap {:.1} ms",
        (tm["releasing"] - tm["locked"]) as f64 / 1e6,
        log.max_gap_between(tm["locked"], tm["releasing"]).as_secs_f64() * 1e3
    );
}

/// The database is down: the plugin's pre fails, `quiesce fsfreeze-hook
/// freeze` exits non-zero, qemu-ga refuses to freeze (nothing frozen), and
/// quiesce's last report says why; the session is over (post ran).
#[test]
fn failing_pre_makes_qemu_ga_refuse_the_freeze_and_the_reason_is_in_the_last_report() {
    quiesce_tests::require!(Root, Mariadb, Plugins);
    let ms = MountedScratch::new("qga-fail");
    let dead = ms.file("no-such-mysqld.sock");
    let target = format!("unix:{}", dead.display());
    let plugin = quiesce_tests::plugins::install_plugin(&ms.s, "quiesce_mariadb");
    let config = ms.s.config(
        "service.toml",
        &format!(
            "[freeze]\nenabled = true\n\n[[hook]]\nname = \"db\"\nplugin = \"{}\"\nparams = {{ target = \"{target}\" }}\ngrants = [\"{target}\"]\n",
            plugin.display()
        ),
    );
    let svc = Service::start(&ms.s, &config);
    let mut c = svc.connect();
    let mut ga = QemuGa::with_quiesce_hook(&qga_dir(&ms.s), &svc.socket);
    let mnt = ms.mnt.path();

    let err = ga.freeze_list(&Mountpoints::new(&[mnt])).expect_err("qemu-ga froze although quiesce's pre hook failed");
    assert_eq!(ga.status().unwrap(), "thawed", "{err}");
    assert!(!is_frozen(mnt), "mount frozen after a refused freeze");
    assert!(err.desc.contains("hook"), "qemu-ga's error should name its hook: {err}");
    let report = svc.last_report();
    assert_eq!(report["snapshot_taken"], false, "{report}");
    assert_eq!(hook(&report, "db", "pre")["outcome"], "failed", "{report}");
    let reasons: Vec<&str> = report["errors"].as_array().unwrap().iter().filter_map(|e| e["message"].as_str()).collect();
    assert!(reasons.iter().any(|m| m.contains("not reachable") && m.contains(&dead.display().to_string())), "{report}");
    assert_eq!(ok(&mut c, "status", json!({}))["session"], Value::Null, "the failed session must be over");
    // libvirt follows a failed freeze with a thaw: the hook has nothing to end.
    assert_eq!(ga.thaw().unwrap(), 0);
    println!("[qemu-ga] refused freeze: qemu-ga said {err}; quiesce's report: {reasons:?}");
}

/// qemu-ga SIGKILLed between its freeze and its thaw: the thaw hook never
/// runs, and qemu-ga's mounts stay frozen (it has no auto-thaw; the guard
/// thaws them, as an admin would). quiesce's hold deadline ends the session
/// by itself: post hooks run, the database lock is released, the report
/// says `SessionHoldExpired`.
#[test]
fn qemu_ga_killed_while_frozen_the_hold_deadline_ends_the_session_and_releases_the_database_lock() {
    quiesce_tests::require!(Root, Mariadb, Plugins);
    let st = Stage::new("qga-killed");
    let my = mariadb(&st);
    let hold = 6;
    let svc = Service::start(&st.s, &mariadb_service_config(&st, &my, &format!("[service]\nexternal_hold_secs = {hold}\n")));
    let mut c = svc.connect();
    let mut ga = QemuGa::with_quiesce_hook(&qga_dir(&st.s), &svc.socket);
    let inner = st.rig.inner();

    let mut writer = Writer::mariadb(&my);
    writer.wait_for(300, Duration::from_secs(60));
    let begun = Instant::now();
    assert_eq!(ga.freeze_list(&Mountpoints::new(&[inner])).unwrap(), 1);
    ga.kill();
    assert!(is_frozen(inner), "qemu-ga has no auto-thaw: its mount should still be frozen");
    sh(&format!("fsfreeze -u {}", inner.display()));
    // Thawed, but the plugin's lock is held until quiesce ends the session.
    let status = ok(&mut c, "status", json!({}));
    assert_eq!(status["session"]["mode"], "external", "{status}");
    assert!(commit_refused_by_lock(&my, 1), "the lock was released before the hold deadline");

    let until = Instant::now() + Duration::from_secs(hold + 30);
    let report = loop {
        let r = c.call(json!({"v": 1, "id": "lr", "op": "last-report"}));
        if r["ok"] == true {
            break r["report"].clone();
        }
        assert!(Instant::now() < until, "no report {hold} s after the hold deadline: {r}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let ended = begun.elapsed();
    assert!(codes(&report).contains(&"SessionHoldExpired".to_string()), "{report}");
    assert_eq!(report["snapshot_taken"], false, "{report}");
    assert_eq!(hook(&report, "db", "post")["outcome"], "succeeded", "{report}");
    assert!(!commit_refused_by_lock(&my, 2), "the lock outlived the expired session");
    let n = writer.acked();
    writer.wait_for(n + 100, Duration::from_secs(30));
    let log = writer.stop();
    assert!(log.error.is_none(), "writer failed: {:?}", log.error);
    println!("[qemu-ga] killed while frozen: session ended by the service after {ended:?} (hold {hold} s); writer resumed");
}
