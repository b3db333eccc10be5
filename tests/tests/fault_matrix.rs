//! The fault matrix (issue 8): every fault injected at every phase it can
//! hit, against the real `quiesce` binary, real loop file systems, real
//! scripts and plugins, a real MariaDB and real signals. Each cell checks
//! (a) nothing of ours frozen past `--max-freeze` + 1 s, (b) the database
//! lock released, (c) no process left behind, (d) a truthful report and exit
//! status (see `quiesce_tests::faults`). The table prints with
//! `cargo test -p quiesce-tests --test fault_matrix -- --nocapture`; the test
//! fails if any cell does.
//!
//! The session of every cell: a MariaDB plugin hook `db` (signal and database
//! rows only), a script hook `app` (pre and post scripts), a `misbehave`
//! plugin hook `plug` (plugin rows only), `--max-freeze 2`, hook timeouts
//! 2 s, a snapshot command script; post hooks run in reverse order.
//! Freeze and thaw take microseconds; signals hit them through strace holding
//! the guardian's FIFREEZE/FITHAW for a second (`IoctlFault::Delay`). Hooks
//! and the snapshot command do not run then, so their rows show `—` there.

use std::sync::Mutex;

use nix::sys::signal::Signal;
use quiesce_tests::db::MariaDb;
use quiesce_tests::faults::*;
use quiesce_tests::Scratch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    HostKill,
    GroupKill,
    Term,
    HookHang,
    HookCrash,
    SetsidGrandchild,
    PluginTrap,
    PluginTimeout,
    SnapshotHang,
    SnapshotFail,
    FreezeBusy,
    PartialFreeze,
    ThawFails,
    DbKilled,
}

const FAULTS: [Fault; 14] = [
    Fault::HostKill,
    Fault::GroupKill,
    Fault::Term,
    Fault::HookHang,
    Fault::HookCrash,
    Fault::SetsidGrandchild,
    Fault::PluginTrap,
    Fault::PluginTimeout,
    Fault::SnapshotHang,
    Fault::SnapshotFail,
    Fault::FreezeBusy,
    Fault::PartialFreeze,
    Fault::ThawFails,
    Fault::DbKilled,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::HostKill => "host SIGKILL",
            Fault::GroupKill => "host process-group SIGKILL",
            Fault::Term => "host SIGTERM",
            Fault::HookHang => "hook hangs",
            Fault::HookCrash => "hook crashes (SIGSEGV)",
            Fault::SetsidGrandchild => "hook's setsid grandchild, hook hangs",
            Fault::PluginTrap => "plugin traps",
            Fault::PluginTimeout => "plugin times out",
            Fault::SnapshotHang => "snapshot command hangs",
            Fault::SnapshotFail => "snapshot command fails",
            Fault::FreezeBusy => "FIFREEZE EBUSY",
            Fault::PartialFreeze => "partial freeze failure (2nd mount EBUSY)",
            Fault::ThawFails => "FITHAW fails (EIO, every time)",
            Fault::DbKilled => "database server SIGKILLed",
        }
    }

    /// The signal and database rows need the MariaDB.
    fn needs_db(self) -> bool {
        matches!(self, Fault::HostKill | Fault::GroupKill | Fault::Term | Fault::DbKilled)
    }
}

const KILLED: Expect = Expect { exit: Exit::Killed, consistency: "", snapshot_taken: false, codes: &[], may: &[], says: "" };

const fn taken(exit: i32, consistency: &'static str, codes: &'static [&'static str]) -> Expect {
    Expect { exit: Exit::Code(exit), consistency, snapshot_taken: true, codes, may: &[], says: "" }
}

const fn not_taken(codes: &'static [&'static str], may: &'static [&'static str]) -> Expect {
    Expect { exit: Exit::Code(4), consistency: "None", snapshot_taken: false, codes, may, says: "" }
}

/// What each cell must report: `None` where the fault cannot hit the phase.
/// A failing pre hook leaves the applications unquiesced (FileSystemConsistent);
/// a failing post hook does not change the label; a failed freeze with
/// quiesced applications is CrashConsistent; no snapshot is None, exit 4.
fn expected(f: Fault, p: Phase) -> Option<Expect> {
    use Phase::*;
    const FSC: &str = "FileSystemConsistent";
    const APP: &str = "AppConsistent";
    const CRASH: &str = "CrashConsistent";
    Some(match (f, p) {
        (Fault::HostKill | Fault::GroupKill, _) => KILLED,
        (Fault::Term, Pre) => not_taken(&["Interrupted"], &[]),
        // Mid-FIFREEZE: once frozen, the session must not start the snapshot.
        (Fault::Term, Freeze) => not_taken(&["Interrupted"], &["SnapshotFailed", "FsFreezeTimeout"]),
        (Fault::Term, Snapshot) => not_taken(&["Interrupted", "SnapshotFailed"], &[]),
        // Mid-FITHAW or in post: the snapshot was taken, frozen and quiesced.
        (Fault::Term, Thaw) => Expect { may: &["FsFreezeTimeout"], ..taken(3, APP, &["Interrupted"]) },
        (Fault::Term, Post) => taken(3, APP, &["Interrupted"]),
        (Fault::HookHang, Pre) => taken(3, FSC, &["Pre-ScriptTimeout"]),
        (Fault::HookHang, Post) => taken(3, APP, &["Post-ScriptTimeout"]),
        (Fault::HookCrash, Pre) => taken(3, FSC, &["Pre-ScriptExecutionFailed"]),
        (Fault::HookCrash, Post) => taken(3, APP, &["Post-ScriptExecutionFailed"]),
        (Fault::SetsidGrandchild, Pre) => taken(3, FSC, &["Pre-ScriptTimeout"]),
        // Abandoned and killed at the freeze deadline: no snapshot (SnapshotTimeout,
        // the `session` branch's code); the auto-thaw may be reported too.
        (Fault::SetsidGrandchild, Snapshot) => not_taken(&["SnapshotTimeout"], &["FsFreezeTimeout"]),
        (Fault::SetsidGrandchild, Post) => taken(3, APP, &["Post-ScriptTimeout"]),
        (Fault::PluginTrap, Pre) => taken(3, FSC, &["PluginTrapped"]),
        (Fault::PluginTrap, Post) => taken(3, APP, &["PluginTrapped"]),
        (Fault::PluginTimeout, Pre) => taken(3, FSC, &["PluginTimeout"]),
        (Fault::PluginTimeout, Post) => taken(3, APP, &["PluginTimeout"]),
        (Fault::SnapshotHang, Snapshot) => not_taken(&["SnapshotTimeout"], &["FsFreezeTimeout"]),
        (Fault::SnapshotFail, Snapshot) => not_taken(&["SnapshotFailed"], &[]),
        (Fault::FreezeBusy, Freeze) => Expect { says: "already frozen", ..taken(3, CRASH, &["FsFreezeFailed"]) },
        // The inner mount was frozen, then thawed back when the outer one was busy.
        (Fault::PartialFreeze, Freeze) => Expect { says: "thawed back", ..taken(3, CRASH, &["FsFreezeFailed"]) },
        // Taken while frozen and quiesced; the refused thaw must be reported (and
        // `status` must show the mount frozen while it lasts: checked in the cell).
        // No recovery point while a file system is still frozen (the catalog
        // may be on it): PointNotRecorded, the snapshot's ids stay in the report.
        (Fault::ThawFails, Thaw) => taken(3, APP, &["FsThawFailed", "PointNotRecorded"]),
        // The lock holder died before the freeze: the host sees the plugin's
        // connection closed by the server once everything is frozen, so the
        // label may not claim the lock held (QuiesceNotHeld).
        (Fault::DbKilled, Pre) => taken(3, FSC, &["QuiesceNotHeld", "Post-ScriptExecutionFailed"]),
        // Killed while frozen (it cannot even die before the thaw: it is blocked
        // on the frozen file system) or after the snapshot: the disk was pinned
        // with the lock held; only releasing it fails.
        (Fault::DbKilled, Snapshot | Post) => taken(3, APP, &["Post-ScriptExecutionFailed"]),
        _ => return None,
    })
}

/// How each fault is injected at a phase.
fn recipe(f: Fault, p: Phase, rig: &Rig, db: Option<&Db>) -> Spec {
    let mut s = Spec::plain();
    let at = |phase: Phase, act: Act, s: &mut Spec| match phase {
        Phase::Pre => s.pre = act,
        Phase::Snapshot => s.snapshot = act,
        Phase::Post => s.post = act,
        Phase::Freeze | Phase::Thaw => unreachable!("no script runs in {phase:?}"),
    };
    match f {
        Fault::HostKill | Fault::GroupKill | Fault::Term => {
            match p {
                // The guardian's FIFREEZE (its ioctl 1) or first FITHAW (2) is
                // held for a second; the signal lands while it is.
                Phase::Freeze => s.ioctl = Some(IoctlFault::Delay("1")),
                Phase::Thaw => s.ioctl = Some(IoctlFault::Delay("2")),
                _ => at(p, Act::WaitGo, &mut s),
            }
            let signal = if f == Fault::Term { Signal::SIGTERM } else { Signal::SIGKILL };
            s.signal = Some(SignalAt { signal, group: f == Fault::GroupKill, phase: p });
        }
        Fault::HookHang => at(p, Act::Hang, &mut s),
        Fault::HookCrash => at(p, Act::Crash, &mut s),
        Fault::SetsidGrandchild => at(p, Act::SetsidHang, &mut s),
        Fault::PluginTrap => s.plugin = Some(if p == Phase::Pre { "trap-pre" } else { "trap-post" }),
        Fault::PluginTimeout => s.plugin = Some(if p == Phase::Pre { "loop" } else { "loop-post" }),
        Fault::SnapshotHang => s.snapshot = Act::Hang,
        Fault::SnapshotFail => s.snapshot = Act::Fail,
        // After the pre-session probe, before the guardian's FIFREEZE.
        Fault::FreezeBusy => {
            s.pre = Act::FreezeForeign(rig.mounts[0].path().to_path_buf());
            s.left_frozen = vec![0];
        }
        // mounts[0] (inner) is frozen first and succeeds; mounts[1] (outer) is busy.
        Fault::PartialFreeze => {
            s.pre = Act::FreezeForeign(rig.mounts[1].path().to_path_buf());
            s.left_frozen = vec![1];
        }
        // Every FITHAW refused until the test clears the fault: while it
        // lasts the truth is "still frozen"; after it, thawed on time.
        Fault::ThawFails => s.ioctl = Some(IoctlFault::Fail("2+")),
        Fault::DbKilled => {
            let pid_file = db.expect("the db row has a server").pid_file.clone();
            at(p, if p == Phase::Pre { Act::KillPidFileAndWait(pid_file) } else { Act::KillPidFile(pid_file) }, &mut s)
        }
    }
    s
}

fn cell(f: Fault, p: Phase, my: Option<&MariaDb>) -> CellResult {
    let expect = expected(f, p).expect("only applicable cells run");
    run_cell(f.name(), p, || {
        let rig = Rig::new("matrix", f == Fault::PartialFreeze);
        let db = my.map(|m| Db::new(m, f == Fault::DbKilled));
        let spec = recipe(f, p, &rig, db.as_ref());
        rig.run(&spec, &expect, db.as_ref())
    })
}

#[test]
fn every_fault_at_every_phase_thaws_on_time_releases_locks_leaves_nothing_behind_and_reports_truthfully() {
    quiesce_tests::require!(Root, Mariadb, Plugins);
    // MATRIX_CELLS=text runs only the cells whose "fault @ phase" contains it.
    let only = std::env::var("MATRIX_CELLS").unwrap_or_default();
    let cells: Vec<(Fault, Phase)> = FAULTS
        .iter()
        .flat_map(|&f| PHASES.iter().map(move |&p| (f, p)))
        .filter(|&(f, p)| expected(f, p).is_some() && format!("{} @ {}", f.name(), p.name()).contains(only.as_str()))
        .collect();
    let results = Mutex::new(Vec::new());
    let plain: Mutex<Vec<(Fault, Phase)>> = Mutex::new(cells.iter().copied().filter(|(f, _)| !f.needs_db()).collect());
    std::thread::scope(|scope| {
        // The database lane: one server for the cells that only check its
        // lock (BACKUP STAGE is per server, so they run one at a time), a
        // fresh one for each cell that kills it.
        scope.spawn(|| {
            let s = Scratch::new("matrix-db");
            let shared = MariaDb::start(&s.path);
            for &(f, p) in cells.iter().filter(|(f, _)| f.needs_db()) {
                let r = if f == Fault::DbKilled {
                    let own = Scratch::new("matrix-dbk");
                    let my = MariaDb::start(&own.path);
                    cell(f, p, Some(&my))
                } else {
                    cell(f, p, Some(&shared))
                };
                results.lock().unwrap().push(r);
            }
        });
        // Two lanes for the rest: each cell has its own loop fs and run dir.
        for _ in 0..2 {
            scope.spawn(|| loop {
                let Some((f, p)) = plain.lock().unwrap().pop() else { break };
                let r = cell(f, p, None);
                results.lock().unwrap().push(r);
            });
        }
    });
    let results = results.into_inner().unwrap();
    let names: Vec<&'static str> = FAULTS.iter().map(|f| f.name()).collect();
    println!("\n{}", table(&names, &results));
    let failed: Vec<String> =
        results.iter().filter(|r| !r.failures.is_empty()).map(|r| format!("{} @ {}", r.fault, r.phase.name())).collect();
    assert_eq!(results.len(), cells.len(), "every cell ran");
    assert!(failed.is_empty(), "{} of {} cells failed: {failed:?}", failed.len(), cells.len());
}
