//! The freeze module on real loop-mounted file systems: planning against
//! the live mount table, freezing and thawing through the guardian, and the
//! guardian's promise that nothing stays frozen when the host dies, the
//! deadline passes or the guardian is told to stop.
//!
//! Every test creates its own mounts in its own `Scratch` and passes them
//! explicitly: nothing here freezes a file system it did not create.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use quiesce::freeze::{
    is_frozen as probe_frozen, plan, thaw_mounts, FreezeError, FreezePlan, Guardian, Selection, Spare, ThawOutcome, ThawReason,
};
use quiesce_tests::{
    alive, gone_within, is_frozen, quiesce, quiesce_bin, run_json, sh, writable_within, BindMount, ForeignFreeze, Fs, LoopMount, Scratch,
    WriteProbe,
};

fn plan_for(mounts: &[&Path]) -> FreezePlan {
    plan(&Selection { mounts: mounts.iter().map(|p| p.to_path_buf()).collect(), exclude: vec![] }).expect("plan")
}

fn target_paths(p: &FreezePlan) -> Vec<PathBuf> {
    p.targets.iter().map(|t| t.path.clone()).collect()
}

/// Thaws with util-linux on drop: a test that froze something itself
/// (to play "another process") must not leave it frozen when it fails.
#[test]
fn plan_orders_children_before_parents() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("plan-nested");
    let outer = LoopMount::new(&s.path, "outer", Fs::Ext4);
    // Image outside `outer`, mount point inside: only the nesting orders them.
    let inner = LoopMount::split(&s.path, outer.path(), "inner", Fs::Ext4);
    let p = plan_for(&[outer.path(), inner.path()]);
    assert_eq!(target_paths(&p), vec![inner.path().to_path_buf(), outer.path().to_path_buf()]);
    assert_eq!(p.thaw_order().next().unwrap().path, outer.path());
}

#[test]
fn plan_freezes_loop_image_fs_after_the_fs_on_it() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("plan-loop");
    std::fs::create_dir_all(s.join("deep/er")).unwrap();
    // The outer fs is mounted deeper than the inner one, so depth order alone
    // would freeze the outer (image-holding) fs first and deadlock.
    let outer = LoopMount::new(&s.join("deep/er"), "outer", Fs::Xfs);
    let inner = LoopMount::split(outer.path(), &s.path, "inner", Fs::Ext4);
    let p = plan_for(&[outer.path(), inner.path()]);
    assert_eq!(target_paths(&p), vec![inner.path().to_path_buf(), outer.path().to_path_buf()]);

    // And that order really freezes and thaws without hanging.
    let mut g = Guardian::start(&p, Duration::from_secs(20), &[]).unwrap();
    let started = Instant::now();
    let frozen = g.freeze().expect("freeze inner then outer");
    assert_eq!(frozen.mounts.len(), 2);
    assert!(is_frozen(inner.path()) && is_frozen(outer.path()));
    let thawed = g.thaw().unwrap();
    assert_eq!(thawed.reason, ThawReason::Asked);
    assert_eq!(thawed.mounts[0].path, outer.path(), "thaw order is the reverse of freeze order");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(writable_within(inner.path(), Duration::from_secs(2)).is_some());
}

#[test]
fn plan_skips_bind_mount_of_listed_superblock() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("plan-bind");
    let a = LoopMount::new(&s.path, "a", Fs::Ext4);
    std::fs::create_dir_all(a.path().join("sub")).unwrap();
    let bind = BindMount::new(&a.path().join("sub"), &s.join("bind"));
    let p = plan_for(&[&bind.mountpoint, a.path()]);
    assert_eq!(target_paths(&p), vec![a.path().to_path_buf()]);
    let skipped = p.skipped.iter().find(|k| k.path == bind.mountpoint).expect("bind mount skipped");
    assert!(skipped.reason.contains("bind mount"), "{}", skipped.reason);
    assert!(skipped.reason.contains(&a.path().display().to_string()), "{}", skipped.reason);
    drop(bind);
}

#[test]
fn plan_skips_read_only_mount() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("plan-ro");
    let ro = LoopMount::new(&s.path, "ro", Fs::Ext4);
    let rw = LoopMount::new(&s.path, "rw", Fs::Ext4);
    sh(&format!("mount -o remount,ro {}", ro.path().display()));
    let p = plan_for(&[ro.path(), rw.path()]);
    assert_eq!(target_paths(&p), vec![rw.path().to_path_buf()]);
    assert_eq!(p.skipped.len(), 1);
    assert!(p.skipped[0].reason.contains("read-only"), "{}", p.skipped[0].reason);
}

#[test]
fn plan_skips_excluded_glob() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("plan-excl");
    let a1 = LoopMount::new(&s.path, "app1", Fs::Ext4);
    let a2 = LoopMount::new(&s.path, "app2", Fs::Ext4);
    let b = LoopMount::new(&s.path, "b", Fs::Ext4);
    let sel = Selection {
        mounts: vec![a1.path().into(), a2.path().into(), b.path().into()],
        exclude: vec![format!("{}/app*", s.path.display())],
    };
    let p = plan(&sel).unwrap();
    assert_eq!(target_paths(&p), vec![b.path().to_path_buf()]);
    for m in [&a1, &a2] {
        let k = p.skipped.iter().find(|k| k.path == m.path()).expect("excluded mount listed as skipped");
        assert!(k.reason.contains("excluded"), "{}", k.reason);
    }
}

#[test]
fn plan_rejects_non_mountpoint() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("plan-nomp");
    let a = LoopMount::new(&s.path, "a", Fs::Ext4);
    std::fs::create_dir_all(a.path().join("dir")).unwrap();
    let err = plan(&Selection { mounts: vec![a.path().join("dir")], exclude: vec![] }).unwrap_err();
    match &err {
        FreezeError::NotAMountPoint { path } => assert_eq!(path, &a.path().join("dir")),
        other => panic!("expected NotAMountPoint, got {other:?}"),
    }
    assert!(err.to_string().contains("is not a mount point"), "{err}");
}

#[test]
fn freeze_and_thaw_ext4_xfs_btrfs() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("freeze-3");
    let mounts = [LoopMount::new(&s.path, "e", Fs::Ext4), LoopMount::new(&s.path, "x", Fs::Xfs), LoopMount::new(&s.path, "b", Fs::Btrfs)];
    let p = plan_for(&mounts.iter().map(|m| m.path()).collect::<Vec<_>>());
    assert_eq!(p.targets.len(), 3, "{p:?}");
    let mut g = Guardian::start(&p, Duration::from_secs(30), &[]).unwrap();
    let frozen = g.freeze().expect("freeze");
    let types: Vec<&str> = frozen.mounts.iter().map(|m| m.fs_type.as_str()).collect();
    assert_eq!(types.len(), 3);
    for fs in ["ext4", "xfs", "btrfs"] {
        assert!(types.contains(&fs), "{types:?}");
    }
    assert!(frozen.first_freeze_ns > 0 && frozen.all_frozen_ns >= frozen.first_freeze_ns);
    for m in &mounts {
        assert!(is_frozen(m.path()), "{} ({}) should be frozen", m.path().display(), m.fs.name());
    }
    let thawed = g.thaw().expect("thaw");
    assert_eq!(thawed.reason, ThawReason::Asked);
    assert_eq!(thawed.mounts.len(), 3);
    assert!(thawed.mounts.iter().all(|m| m.error.is_none()), "{:?}", thawed.mounts);
    assert!(thawed.last_thaw_ns > frozen.all_frozen_ns);
    assert!(thawed.auto_thawed_at_ns.is_none());
    for m in &mounts {
        assert!(writable_within(m.path(), Duration::from_secs(2)).is_some(), "{} still frozen", m.path().display());
    }
}

/// A cold FIFREEZE waits for RCU grace periods; the guardian expedites them
/// for the length of its freeze and puts the global knob back.
#[test]
fn a_freeze_expedites_rcu_grace_periods_and_puts_the_knob_back() {
    quiesce_tests::require!(Root);
    let knob = Path::new("/sys/kernel/rcu_expedited");
    let normal = || std::fs::read_to_string(knob).is_ok_and(|v| v.trim() == "0");
    if !normal() || std::fs::OpenOptions::new().write(true).open(knob).is_err() {
        eprintln!("skipped: {} is not a writable 0 here", knob.display());
        return;
    }
    let s = Scratch::new("rcu");
    let a = LoopMount::new(&s.path, "a", Fs::Ext4);
    // Other tests in this binary freeze in parallel, and a guardian that
    // finds the knob already set by one of them leaves it alone: a few tries.
    let mut expedited = false;
    for _ in 0..5 {
        let mut g = Guardian::start(&plan_for(&[a.path()]), Duration::from_secs(30), &[]).expect("guardian");
        let frozen = g.freeze().expect("freeze");
        g.thaw().expect("thaw");
        if frozen.rcu_expedited {
            expedited = true;
            break;
        }
    }
    assert!(expedited, "the guardian expedited the grace periods of its freeze");
    let t = Instant::now();
    while !normal() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(normal(), "{} is back to 0", knob.display());
}

#[test]
fn a_spare_guardian_forked_before_the_plan_freezes_and_thaws_what_it_is_armed_with() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("spare");
    // Forked first, holding nothing: the mounts do not exist yet.
    let spare = Spare::fork(4).expect("fork a spare");
    let pid = spare.pid();
    let a = LoopMount::new(&s.path, "a", Fs::Ext4);
    let b = LoopMount::new(&s.path, "b", Fs::Xfs);
    let mut g = spare.arm(&plan_for(&[a.path(), b.path()]), Duration::from_secs(30), &[]).expect("arm");
    assert_eq!(g.pid(), pid, "the spare itself serves the session");
    let frozen = g.freeze().expect("freeze");
    assert_eq!(frozen.mounts.len(), 2);
    assert!(is_frozen(a.path()) && is_frozen(b.path()));
    let thawed = g.thaw().expect("thaw");
    assert_eq!(thawed.mounts.len(), 2);
    for m in [&a, &b] {
        assert!(writable_within(m.path(), Duration::from_secs(2)).is_some(), "{} still frozen", m.path().display());
    }
    drop(g);
    assert!(!alive(pid), "dropped after its session, the guardian is gone and reaped");
}

#[test]
fn a_spare_guardian_refuses_more_targets_than_it_has_room_for_and_a_dead_one_cannot_be_armed() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("spare-bad");
    let a = LoopMount::new(&s.path, "a", Fs::Ext4);
    let b = LoopMount::new(&s.path, "b", Fs::Ext4);
    let plan = plan_for(&[a.path(), b.path()]);

    let small = Spare::fork(1).expect("fork");
    let pid = small.pid();
    let err = small.arm(&plan, Duration::from_secs(30), &[]).err().expect("2 targets for room for 1");
    assert!(err.to_string().contains("room for 1"), "{err}");
    assert!(!alive(pid), "the refused spare is ended");

    // A spare killed while it waited (an admin's kill, the OOM killer) is
    // an error at arming — the service then forks a fresh one.
    let spare = Spare::fork(4).expect("fork");
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(spare.pid(), libc::SIGKILL) }, 0);
    assert!(gone_within(spare.pid(), Duration::from_secs(5)), "the killed spare is gone");
    assert!(spare.arm(&plan, Duration::from_secs(30), &[]).is_err(), "a dead spare cannot be armed");
    assert!(!is_frozen(a.path()) && !is_frozen(b.path()));
}

#[test]
fn guardian_freezes_again_after_thaw() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("refreeze");
    let a = LoopMount::new(&s.path, "a", Fs::Ext4);
    let mut g = Guardian::start(&plan_for(&[a.path()]), Duration::from_secs(30), &[]).unwrap();
    for _ in 0..3 {
        g.freeze().expect("freeze");
        assert!(probe_frozen(a.path(), Duration::from_millis(200)).unwrap());
        assert_eq!(g.thaw().unwrap().mounts.len(), 1);
        assert!(!probe_frozen(a.path(), Duration::from_secs(2)).unwrap());
    }
    // A second freeze while frozen is refused, not stacked.
    g.freeze().unwrap();
    let err = g.freeze().unwrap_err();
    assert_eq!(err.errno_name, "EALREADY");
}

#[test]
fn ebusy_mount_is_reported_and_left_frozen() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("ebusy");
    let mounts = [LoopMount::new(&s.path, "a", Fs::Ext4), LoopMount::new(&s.path, "b", Fs::Xfs), LoopMount::new(&s.path, "c", Fs::Ext4)];
    let p = plan_for(&mounts.iter().map(|m| m.path()).collect::<Vec<_>>());
    let order = target_paths(&p);
    // Someone else froze the second one in freeze order: the first is
    // frozen by the guardian before it hits EBUSY.
    let foreign = ForeignFreeze::new(&order[1]);
    let mut g = Guardian::start(&p, Duration::from_secs(30), &[]).unwrap();
    let err = g.freeze().expect_err("freeze must fail on a mount frozen by someone else");
    assert_eq!(err.path.as_deref(), Some(order[1].as_path()));
    assert_eq!(err.errno_name, "EBUSY");
    assert_eq!(err.error.raw_os_error(), Some(libc::EBUSY));
    let msg = err.to_string();
    assert!(msg.contains("EBUSY: already frozen by another process; quiesce will not thaw it"), "{msg}");
    assert_eq!(err.thawed_back.iter().map(|t| t.path.clone()).collect::<Vec<_>>(), vec![order[0].clone()]);
    assert!(!g.is_frozen());

    assert!(writable_within(&order[0], Duration::from_secs(2)).is_some(), "thawed back");
    assert!(writable_within(&order[2], Duration::from_secs(2)).is_some(), "never frozen");
    assert!(is_frozen(&order[1]), "the foreign freeze must be left alone");
    drop(g);
    assert!(is_frozen(&order[1]), "not even the guardian's exit may thaw it");
    drop(foreign);
    assert!(writable_within(&order[1], Duration::from_secs(2)).is_some());
}

/// Pids of the probe children this test's thread started: children of the
/// process (any thread's) that carry this thread's name — a probe child is a
/// clone that never execs; other tests' children run other programs.
fn probe_children_of_this_thread() -> Vec<u32> {
    let me = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .flat_map(|t| {
            std::fs::read_to_string(t.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .map(|p| p.parse().unwrap())
                .collect::<Vec<u32>>()
        })
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c == me))
        .collect();
    pids.sort_unstable();
    pids
}

#[test]
fn probe_detects_frozen_and_thawed() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("probe");
    for fs in [Fs::Ext4, Fs::Xfs, Fs::Btrfs] {
        let m = LoopMount::new(&s.path, fs.name(), fs);
        assert!(!probe_frozen(m.path(), Duration::from_secs(2)).unwrap(), "{} thawed", fs.name());
        let f = ForeignFreeze::new(m.path());
        let t = Instant::now();
        assert!(probe_frozen(m.path(), Duration::from_millis(200)).unwrap(), "{} frozen", fs.name());
        assert!(t.elapsed() < Duration::from_secs(1), "the probe must not hang");
        // Asked again while its first child is still blocked: frozen, without one more blocked child per call.
        let before = probe_children_of_this_thread();
        assert_eq!(before.len(), 1, "the first probe's child, still blocked: {before:?}");
        for _ in 0..5 {
            assert!(probe_frozen(m.path(), Duration::from_millis(200)).unwrap(), "{} still frozen", fs.name());
        }
        assert_eq!(probe_children_of_this_thread(), before, "{}: no new probe child while one is blocked", fs.name());
        drop(f);
        assert!(!probe_frozen(m.path(), Duration::from_secs(2)).unwrap(), "{} thawed again", fs.name());
        // The probe changes nothing on disk.
        let names: Vec<_> = std::fs::read_dir(m.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(!names.iter().any(|n| n.to_string_lossy().contains("quiesce-probe")), "{names:?}");
    }
}

#[test]
fn guardian_thaws_at_deadline() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("deadline");
    let a = LoopMount::new(&s.path, "a", Fs::Ext4);
    let b = LoopMount::new(&s.path, "b", Fs::Xfs);
    let mut g = Guardian::start(&plan_for(&[a.path(), b.path()]), Duration::from_secs(1), &[]).unwrap();
    let frozen = g.freeze().unwrap();
    let t0 = Instant::now();
    let mut pa = WriteProbe::start(a.path());
    let mut pb = WriteProbe::start(b.path());
    let wa = pa.wait_done(Duration::from_secs(2)).expect("a writable within deadline + 1 s");
    let wb = pb.wait_done(Duration::from_secs(2)).expect("b writable within deadline + 1 s");
    // Not thawed early: the writes stayed blocked until about the deadline.
    assert!(t0.elapsed() >= Duration::from_millis(800), "thawed after {:?}", t0.elapsed());
    assert!(wa >= Duration::from_millis(800) && wb >= Duration::from_millis(800), "{wa:?} {wb:?}");

    let mut auto = None;
    for _ in 0..100 {
        auto = g.auto_thawed();
        if auto.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let auto = auto.expect("auto-thaw reported");
    assert_eq!(auto.reason, ThawReason::Deadline);
    assert_eq!(auto.mounts.len(), 2);
    let window = auto.at_ns - frozen.first_freeze_ns;
    assert!((1_000_000_000..2_000_000_000).contains(&window), "window {window} ns");
    let thawed = g.thaw().unwrap();
    assert_eq!(thawed.reason, ThawReason::Deadline);
    assert_eq!(thawed.auto_thawed_at_ns, Some(auto.at_ns));
    assert!(g.freeze().is_err(), "the guardian exits after an automatic thaw");
}

#[test]
fn guardian_thaws_when_host_dies() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("hostdies");
    let a = LoopMount::new(&s.path, "a", Fs::Ext4);
    let b = LoopMount::new(&s.path, "b", Fs::Xfs);
    let mut host = Command::new(env!("CARGO_BIN_EXE_guardian_host"))
        .arg("30")
        .arg(a.path())
        .arg(b.path())
        .process_group(0)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn guardian_host");
    let host_pid = host.id() as i32;
    let mut line = String::new();
    BufReader::new(host.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.first(), Some(&"FROZEN"), "host said {line:?}");
    let guardian_pid: i32 = fields[1].parse().unwrap();
    assert!(is_frozen(a.path()) && is_frozen(b.path()));

    // SIGKILL the host and everything in its process group.
    // SAFETY: plain kill(2) on the group we created.
    assert_eq!(unsafe { libc::kill(-host_pid, libc::SIGKILL) }, 0);
    let killed = Instant::now();
    host.wait().unwrap();
    for m in [&a, &b] {
        let w = writable_within(m.path(), Duration::from_secs(1));
        assert!(w.is_some(), "{} still frozen 1 s after the host died", m.path().display());
    }
    assert!(killed.elapsed() < Duration::from_secs(5));
    assert!(gone_within(guardian_pid, Duration::from_secs(2)), "the guardian exits after thawing");
}

#[test]
fn guardian_thaws_on_sigterm_to_guardian() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("sigterm");
    let a = LoopMount::new(&s.path, "a", Fs::Btrfs);
    let mut g = Guardian::start(&plan_for(&[a.path()]), Duration::from_secs(30), &[]).unwrap();
    g.freeze().unwrap();
    assert!(is_frozen(a.path()));
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(g.pid(), libc::SIGTERM) }, 0);
    assert!(writable_within(a.path(), Duration::from_secs(1)).is_some(), "thawed on SIGTERM");
    let thawed = g.thaw().unwrap();
    assert_eq!(thawed.reason, ThawReason::Signal(libc::SIGTERM));
    assert!(thawed.auto_thawed_at_ns.is_some());
    assert_eq!(thawed.mounts.len(), 1);
}

#[test]
fn guardian_thaws_on_any_terminating_signal_but_not_on_harmless_ones() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("signals");
    let a = LoopMount::new(&s.path, "a", Fs::Ext4);
    let p = plan_for(&[a.path()]);
    for sig in [libc::SIGINT, libc::SIGHUP, libc::SIGUSR1, libc::SIGALRM] {
        let mut g = Guardian::start(&p, Duration::from_secs(30), &[]).unwrap();
        g.freeze().unwrap();
        // Default-ignored or stopping signals must neither thaw nor stop it.
        for harmless in [libc::SIGWINCH, libc::SIGCHLD, libc::SIGTSTP] {
            // SAFETY: plain kill(2) on our own child.
            assert_eq!(unsafe { libc::kill(g.pid(), harmless) }, 0);
        }
        assert!(probe_frozen(a.path(), Duration::from_millis(300)).unwrap(), "harmless signals keep the freeze");
        assert!(g.auto_thawed().is_none());
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(g.pid(), sig) }, 0);
        assert!(writable_within(a.path(), Duration::from_secs(1)).is_some(), "thawed on signal {sig}");
        assert_eq!(g.thaw().unwrap().reason, ThawReason::Signal(sig));
    }
}

#[test]
fn dropping_a_frozen_guardian_thaws_and_reaps_it() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("drop");
    let a = LoopMount::new(&s.path, "a", Fs::Xfs);
    let mut g = Guardian::start(&plan_for(&[a.path()]), Duration::from_secs(30), &[]).unwrap();
    g.freeze().unwrap();
    let pid = g.pid();
    assert!(is_frozen(a.path()));
    drop(g);
    assert!(writable_within(a.path(), Duration::from_secs(1)).is_some());
    // Reaped, not a zombie: /proc/<pid> is gone.
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn thaw_is_idempotent() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("thaw");
    let a = LoopMount::new(&s.path, "a", Fs::Ext4);
    let foreign = ForeignFreeze::new(a.path());
    let first = thaw_mounts(&[a.path()]);
    assert_eq!(first[0].outcome, ThawOutcome::Thawed, "{first:?}");
    let second = thaw_mounts(&[a.path()]);
    assert_eq!(second[0].outcome, ThawOutcome::NotFrozen, "{second:?}");
    assert_eq!(second[0].message, "was not frozen");
    assert!(writable_within(a.path(), Duration::from_secs(2)).is_some());
    drop(foreign);
}

// ---------------------------------------------------------------- mountinfo as the kernel writes it

/// `mount -t tmpfs "" DIR`: a mount whose source is empty, which the kernel
/// shows as an empty field between two spaces. Unmounted on drop.
struct EmptySourceTmpfs(PathBuf);
impl EmptySourceTmpfs {
    fn new(dir: &Path) -> EmptySourceTmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", ""]).arg(dir).status().unwrap();
        assert!(ok.success(), "mount -t tmpfs \"\" {}", dir.display());
        EmptySourceTmpfs(dir.to_path_buf())
    }
}
impl Drop for EmptySourceTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A loop ext4 mounted at a path given as bytes. Thawed and unmounted on drop
/// (`mount -o loop` detaches the device at umount).
struct BytesMount(PathBuf);
impl BytesMount {
    fn new(image: &Path, dir: &Path) -> BytesMount {
        std::fs::create_dir_all(dir).unwrap();
        sh(&format!("truncate -s 64M {i} && mkfs.ext4 -q -F {i}", i = image.display()));
        let ok = Command::new("mount").args(["-o", "loop"]).arg(image).arg(dir).status().unwrap();
        assert!(ok.success());
        BytesMount(dir.to_path_buf())
    }
}
impl Drop for BytesMount {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.0).stderr(Stdio::null()).status();
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn empty_source_mount_does_not_stop_planning_snapshot_or_thaw() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("empty-source");
    let mnt = LoopMount::new(&s.path, "mnt", Fs::Ext4);
    let odd = EmptySourceTmpfs::new(&s.join("odd"));
    // Lossy: another test may have a non-UTF-8 mount point in the table.
    let table = String::from_utf8_lossy(&std::fs::read("/proc/self/mountinfo").unwrap()).into_owned();
    let line = table.lines().find(|l| l.contains(&format!(" {} ", odd.0.display()))).expect("the tmpfs is in mountinfo");
    assert!(line.contains(" - tmpfs  rw"), "the kernel writes the empty source as an empty field: {line}");

    // Every-mount planning (what `thaw --all` uses) reads the line and judges it.
    let all = plan(&Selection::default()).expect("an empty source must not break the mount table");
    let skipped = all.skipped.iter().find(|k| k.path == odd.0).expect("the tmpfs is judged");
    assert!(skipped.reason.contains("pseudo"), "{skipped:?}");

    // A session and the emergency thaw of an unrelated mount both work.
    let mut cmd = quiesce(&s);
    cmd.args(["snapshot", "--mount"]).arg(mnt.path()).args(["--snapshot-cmd", "true"]);
    let run = run_json(cmd);
    assert_eq!(run.report["snapshot_taken"], true, "{}", run.report);
    assert_eq!(run.report["freeze"]["mounts"][0]["path"], mnt.path().display().to_string());
    assert!(!is_frozen(mnt.path()));
    sh(&format!("fsfreeze -f {}", mnt.path().display()));
    let out = quiesce(&s).args(["thaw", "--json", "--mount"]).arg(mnt.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"thawed\""), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(!is_frozen(mnt.path()));
    // And the tmpfs itself can be named: refused as a pseudo file system, not as a broken table.
    let p = plan(&Selection { mounts: vec![odd.0.clone()], exclude: vec![] }).unwrap();
    assert!(p.targets.is_empty() && p.skipped.len() == 1, "{p:?}");
}

#[test]
fn non_utf8_mount_point_with_a_space_is_frozen_and_thawed_by_its_bytes() {
    quiesce_tests::require!(Root);
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let s = Scratch::new("bytes-path");
    let dir = s.path.join(OsStr::from_bytes(b"caf\xe9 d\\isk"));
    let m = BytesMount::new(&s.join("bytes.img"), &dir);
    let p = plan_for(&[&m.0]);
    assert_eq!(target_paths(&p), std::slice::from_ref(&m.0));
    let mut cmd = quiesce(&s);
    cmd.args(["snapshot", "--mount"]).arg(&m.0).args(["--snapshot-cmd", "true"]);
    let run = run_json(cmd);
    assert_eq!(run.report["snapshot_taken"], true, "{}", run.report);
    assert_eq!(run.report["freeze"]["mounts"].as_array().unwrap().len(), 1, "{}", run.report);
    // The shell-based probe cannot name this path; the host's own probe takes bytes.
    assert!(!probe_frozen(&m.0, Duration::from_millis(300)).unwrap());
    // status lists it (as display shows it), while frozen by someone else.
    assert!(Command::new("fsfreeze").arg("-f").arg(&m.0).status().unwrap().success());
    let out = quiesce(&s).args(["status", "--json", "--mount"]).arg(&m.0).output().unwrap();
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", out));
    assert_eq!(st["frozen"][0]["path"], m.0.to_string_lossy().as_ref(), "{st}");
    let out = quiesce(&s).args(["thaw", "--json", "--mount"]).arg(&m.0).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(!probe_frozen(&m.0, Duration::from_millis(300)).unwrap());
}

// ---------------------------------------------------------------- status only reads

#[test]
fn status_polled_during_twenty_sessions_never_takes_the_lock() {
    quiesce_tests::require!(Root);
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Arc;
    let s = Scratch::new("status-poll");
    let mnt = LoopMount::new(&s.path, "mnt", Fs::Ext4);
    let stop = Arc::new(AtomicBool::new(false));
    let polls = Arc::new(AtomicU32::new(0));
    let pollers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, polls, run_dir, m) = (stop.clone(), polls.clone(), s.join("run"), mnt.path().to_path_buf());
            let log = s.join("status.log");
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let out = Command::new(quiesce_bin())
                        .env("QUIESCE_RUN_DIR", &run_dir)
                        .env("QUIESCE_LOG_FILE", &log)
                        .args(["status", "--json", "--mount"])
                        .arg(&m)
                        .output()
                        .unwrap();
                    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                    polls.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let lock = s.join("run").join("session.lock");
    for i in 0..24 {
        let seen = s.join(&format!("lock-pid-{i}"));
        let mut cmd = quiesce(&s);
        // A state dir per session: 24 recovery points would pass the default max_points (18).
        cmd.env("QUIESCE_STATE_DIR", s.join(&format!("state-{i}")))
            .args(["snapshot", "--json", "--mount"])
            .arg(mnt.path())
            .arg("--snapshot-cmd")
            .arg(format!("cat {} > {}", lock.display(), seen.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let child = cmd.spawn().unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(!report["errors"].to_string().contains("BackupOperationInProgress"), "session {i}: {}", report["errors"]);
        assert_eq!(report["snapshot_taken"], true, "session {i}: {report}");
        assert_eq!(std::fs::read_to_string(&seen).unwrap(), pid.to_string(), "session {i}: the lock holds another pid");
    }
    stop.store(true, Ordering::SeqCst);
    for p in pollers {
        p.join().unwrap();
    }
    assert!(polls.load(Ordering::SeqCst) > 0);
}

#[test]
fn status_creates_and_writes_nothing() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("status-ro");
    let run_dir = s.join("run");
    let tmpfs = EmptySourceTmpfs::new(&s.join("t"));
    let status = || quiesce(&s).args(["status", "--json", "--mount"]).arg(&tmpfs.0).output().unwrap();
    // No run directory: status says so and does not create one.
    let out = status();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["session_running"], false);
    assert!(!run_dir.exists(), "status created the run directory");

    // A lock held by another process (a running session): status sees it
    // held, and leaves the file exactly as it was.
    std::fs::create_dir(&run_dir).unwrap();
    let lock = run_dir.join("session.lock");
    std::fs::write(&lock, "4242").unwrap();
    let mut holder = Command::new("flock").arg("--no-fork").arg("-x").arg(&lock).args(["sleep", "60"]).spawn().unwrap();
    let t = Instant::now();
    // `flock -n` fails while the holder has it (and disturbs nothing).
    let held = || !Command::new("flock").args(["-n", "-x"]).arg(&lock).arg("true").status().unwrap().success();
    while !held() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let meta = std::fs::metadata(&lock).unwrap();
    let out = status();
    let after = std::fs::metadata(&lock).unwrap();
    holder.kill().unwrap();
    holder.wait().unwrap();
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["session_running"], true, "{st}");
    assert_eq!(std::fs::read_to_string(&lock).unwrap(), "4242", "status rewrote the lock's pid");
    assert_eq!((meta.modified().unwrap(), meta.len()), (after.modified().unwrap(), after.len()));
    assert_eq!(std::fs::read_dir(&run_dir).unwrap().count(), 1, "status created a file");
    // Once the holder is gone, nothing is running.
    let out = status();
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["session_running"], false, "{st}");
}
