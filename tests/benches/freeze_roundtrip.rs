//! Freeze+thaw round trips of three idle loop mounts (ext4, xfs, btrfs) by
//! every way this machine offers, in one run so they share conditions:
//!
//! - floor: bare FIFREEZE/FITHAW ioctls in this process;
//! - quiesce: the guardian (cold: start+freeze+thaw; warm: freeze+thaw on a
//!   started guardian), plus the start alone;
//! - util-linux `fsfreeze -f/-u` processes;
//! - the QEMU guest agent over its Unix socket.
//!
//! It also reports the host's own time inside the freeze window when the
//! snapshot is instant (window − snapshot), i.e. what quiesce adds to the
//! time applications stay blocked.
//!
//! Run: `cargo bench -p quiesce-tests --bench freeze_roundtrip` (root).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use quiesce::freeze::{monotonic_ns, plan, Guardian, Selection};
use quiesce_tests::bench::{ioctl_one, open_dir, pct, FIFREEZE, FITHAW};
use quiesce_tests::qga::{self, Mountpoints, QemuGa};
use quiesce_tests::{Fs, LoopMount, Scratch};

const WARMUP: usize = 5;
const ROUNDS: usize = 50;

struct Row {
    name: String,
    samples: Vec<Duration>,
    note: String,
}

fn fsfreeze(flag: &str, p: &Path) -> Result<(), String> {
    let st = Command::new("fsfreeze").arg(flag).arg(p).status().map_err(|e| e.to_string())?;
    st.success().then_some(()).ok_or(format!("fsfreeze {flag} {}: {st}", p.display()))
}

fn main() {
    let s = Scratch::new("bench-freeze");
    let mounts = [LoopMount::new(&s.path, "e", Fs::Ext4), LoopMount::new(&s.path, "x", Fs::Xfs), LoopMount::new(&s.path, "b", Fs::Btrfs)];
    let sel = Selection { mounts: mounts.iter().map(|m| m.path().to_path_buf()).collect(), exclude: vec![] };
    let plan = plan(&sel).expect("plan");
    assert_eq!(plan.targets.len(), 3, "{plan:?}");
    let order: Vec<PathBuf> = plan.targets.iter().map(|t| t.path.clone()).collect();
    let max = Duration::from_secs(60);
    let mut unavailable: Vec<(String, String)> = Vec::new();

    // Freeze cost depends on what the file systems (and the disk under the
    // images) are doing, which drifts during a run; so the methods take
    // turns round by round instead of running one after another.
    let fds: Vec<OwnedFd> = order.iter().map(|p| open_dir(p)).collect();
    let rev: Vec<OwnedFd> = fds.iter().rev().map(|f| f.try_clone().unwrap()).collect();
    let mut warm = Guardian::start(&plan, max, &[]).expect("guardian");
    let mut ga = if qga::available() {
        Some(QemuGa::start(&s.path, None, &[]))
    } else {
        unavailable.push(("qemu-ga".into(), "not installed (Debian package qemu-guest-agent)".into()));
        None
    };
    let ga_mounts = Mountpoints::new(&order.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    let mut ga_count = 0;

    let names = [
        "bare ioctls (floor)",
        "quiesce guardian: start+freeze+thaw",
        "quiesce guardian: start alone",
        "quiesce guardian: freeze+thaw (started)",
        "fsfreeze -f/-u processes",
        "qemu-ga freeze-list+thaw (socket)",
    ];
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    // Time outside the kernel's freeze/thaw calls, per round.
    let mut floor_rest = Vec::new();
    let mut warm_rest = Vec::new();
    let mut overhead = Vec::new();
    let mut windows = Vec::new();
    let mut window_rest = Vec::new();
    for round in 0..WARMUP + ROUNDS {
        let keep = round >= WARMUP;
        let mut put = |i: usize, d: Duration| {
            if keep {
                samples[i].push(d)
            }
        };

        // Rotate which method goes first: the first freeze after another
        // method's thaw can pay for that thaw's background work.
        for turn in 0..5 {
            match (turn + round) % 5 {
                0 => {
                    // (a) the floor: each ioctl timed too, so the rest is what the loop costs.
                    let t = Instant::now();
                    let mut in_kernel = Duration::ZERO;
                    for (set, req) in [(&fds, FIFREEZE), (&rev, FITHAW)] {
                        for fd in set {
                            let k = Instant::now();
                            ioctl_one(fd, req).expect("floor ioctl");
                            in_kernel += k.elapsed();
                        }
                    }
                    let d = t.elapsed();
                    put(0, d);
                    if keep {
                        floor_rest.push(d - in_kernel);
                    }
                }
                1 => {
                    // (b) quiesce, cold.
                    let t = Instant::now();
                    let mut g = Guardian::start(&plan, max, &[]).expect("guardian start");
                    let started = t.elapsed();
                    g.freeze().expect("freeze");
                    g.thaw().expect("thaw");
                    put(1, t.elapsed());
                    put(2, started);
                    drop(g); // reaping is after the window and not timed
                }
                2 => {
                    // (b) quiesce, started: the freeze as a session sees it, with an
                    // instant snapshot in the middle.
                    let t = Instant::now();
                    let frozen = warm.freeze().expect("freeze");
                    let snap_start = monotonic_ns();
                    std::hint::black_box(()); // the instant snapshot
                    let snap_end = monotonic_ns();
                    let thawed = warm.thaw().expect("thaw");
                    let d = t.elapsed();
                    put(3, d);
                    if keep {
                        let ioctl_ns: u64 = frozen.mounts.iter().map(|m| m.end_ns - m.start_ns).sum::<u64>()
                            + thawed.mounts.iter().map(|m| m.end_ns - m.start_ns).sum::<u64>();
                        let window = thawed.last_thaw_ns - frozen.first_freeze_ns;
                        windows.push(window);
                        overhead.push(window - (snap_end - snap_start));
                        window_rest.push(window.saturating_sub(snap_end - snap_start).saturating_sub(ioctl_ns));
                        warm_rest.push(d.saturating_sub(Duration::from_nanos(ioctl_ns)));
                    }
                }
                3 => {
                    // (c) util-linux.
                    let t = Instant::now();
                    for p in &order {
                        fsfreeze("-f", p).expect("fsfreeze -f");
                    }
                    for p in order.iter().rev() {
                        fsfreeze("-u", p).expect("fsfreeze -u");
                    }
                    put(4, t.elapsed());
                }
                4 => {
                    // (d) the QEMU guest agent.
                    if let Some(agent) = ga.as_mut() {
                        let t = Instant::now();
                        let r = agent.freeze_list(&ga_mounts).and_then(|c| {
                            ga_count = c;
                            agent.thaw()
                        });
                        match r {
                            Ok(_) => put(5, t.elapsed()),
                            Err(e) => {
                                unavailable.push(("qemu-ga".into(), e.to_string()));
                                ga = None;
                            }
                        }
                    }
                }
                _ => unreachable!(),
            }
        }
    }
    let cold = cold_freezes(&fds, &rev, &mut warm, ga.as_mut(), &ga_mounts);
    drop((fds, rev, warm, ga));

    let mut rows: Vec<Row> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut v = std::mem::take(&mut samples[i]);
        if v.is_empty() || (i == 5 && !unavailable.is_empty()) {
            continue;
        }
        v.sort();
        let mut note = String::new();
        if i == 5 && ga_count != 3 {
            note = format!("froze only {ga_count} of 3");
        }
        rows.push(Row { name: name.to_string(), samples: v, note });
    }

    let floor = rows[0].samples[ROUNDS / 2].as_secs_f64();
    println!("\nfreeze+thaw of 3 idle loop mounts (ext4, xfs, btrfs), {ROUNDS} rounds after {WARMUP} warm-up");
    println!("| method | median ms | p90 ms | median / floor | note |");
    println!("|---|---:|---:|---:|---|");
    for r in &rows {
        let med = pct(&r.samples, 0.5);
        let ratio = if r.name.contains("start alone") { "-".to_string() } else { format!("{:.2}x", med.as_secs_f64() / floor) };
        println!(
            "| {} | {:.3} | {:.3} | {} | {} |",
            r.name,
            med.as_secs_f64() * 1e3,
            pct(&r.samples, 0.9).as_secs_f64() * 1e3,
            ratio,
            r.note
        );
    }
    for (name, why) in &unavailable {
        println!("| {name} | unavailable | | | {why} |");
    }
    for v in [&mut overhead, &mut windows, &mut window_rest] {
        v.sort();
    }
    floor_rest.sort();
    warm_rest.sort();
    println!(
        "\ntime outside FIFREEZE/FITHAW per round: floor median {:.0} µs; quiesce (started) median {:.0} µs, p90 {:.0} µs",
        pct(&floor_rest, 0.5).as_secs_f64() * 1e6,
        pct(&warm_rest, 0.5).as_secs_f64() * 1e6,
        pct(&warm_rest, 0.9).as_secs_f64() * 1e6,
    );
    println!(
        "\nfreeze window with an instant snapshot (guardian, started): median {:.0} µs, p90 {:.0} µs; \
         host time inside the window (window − snapshot): median {:.0} µs, p90 {:.0} µs",
        windows[ROUNDS / 2] as f64 / 1e3,
        windows[ROUNDS * 9 / 10] as f64 / 1e3,
        overhead[ROUNDS / 2] as f64 / 1e3,
        overhead[ROUNDS * 9 / 10] as f64 / 1e3,
    );
    println!(
        "of which outside the kernel's freeze/thaw calls (guardian→host→guardian round trip): median {:.0} µs, p90 {:.0} µs",
        window_rest[ROUNDS / 2] as f64 / 1e3,
        window_rest[ROUNDS * 9 / 10] as f64 / 1e3,
    );
    cold.print();
}

/// Cold freezes: each round waits until the file systems' writer semaphores
/// have gone back to their fast mode (a few RCU grace periods after a thaw),
/// so every FIFREEZE pays the grace-period wait — what an hourly snapshot
/// pays — unless it is expedited, as quiesce's guardian does.
const COLD_ROUNDS: usize = 8;
const COLD_GAP: Duration = Duration::from_millis(300);

struct Cold {
    /// Sum of the three FIFREEZE calls, per round.
    bare: Vec<Duration>,
    guardian: Vec<Duration>,
    /// qemu-ga's whole freeze-list call (it reports no per-mount time).
    qga: Vec<Duration>,
    /// Why a qemu-ga round gave no figure (printed, not dropped).
    qga_failed: Vec<String>,
    expedited: usize,
}

fn cold_freezes(fds: &[OwnedFd], rev: &[OwnedFd], guardian: &mut Guardian, mut ga: Option<&mut QemuGa>, ga_mounts: &Mountpoints) -> Cold {
    let mut c = Cold { bare: Vec::new(), guardian: Vec::new(), qga: Vec::new(), qga_failed: Vec::new(), expedited: 0 };
    for _ in 0..COLD_ROUNDS {
        std::thread::sleep(COLD_GAP);
        let mut in_freeze = Duration::ZERO;
        for fd in fds {
            let t = Instant::now();
            ioctl_one(fd, FIFREEZE).expect("cold FIFREEZE");
            in_freeze += t.elapsed();
        }
        for fd in rev {
            ioctl_one(fd, FITHAW).expect("FITHAW");
        }
        c.bare.push(in_freeze);

        std::thread::sleep(COLD_GAP);
        let frozen = guardian.freeze().expect("cold guardian freeze");
        guardian.thaw().expect("thaw");
        c.guardian.push(Duration::from_nanos(frozen.mounts.iter().map(|m| m.end_ns - m.start_ns).sum()));
        c.expedited += usize::from(frozen.rcu_expedited);

        if let Some(agent) = ga.as_deref_mut() {
            std::thread::sleep(COLD_GAP);
            let t = Instant::now();
            match agent.freeze_list(ga_mounts) {
                Ok(_) => c.qga.push(t.elapsed()),
                Err(e) => c.qga_failed.push(format!("freeze-list: {e}")),
            }
            if let Err(e) = agent.thaw() {
                c.qga_failed.push(format!("thaw: {e}"));
            }
        }
    }
    c
}

impl Cold {
    fn print(mut self) {
        println!("\ncold freezes ({COLD_ROUNDS} rounds, {} ms after the last thaw), FIFREEZE of the 3 mounts:", COLD_GAP.as_millis());
        println!("| method | median ms | max ms |");
        println!("|---|---:|---:|");
        for (name, v) in [
            ("bare FIFREEZE×3 (what fsfreeze and the agents do)", &mut self.bare),
            ("quiesce guardian (grace periods expedited)", &mut self.guardian),
            ("qemu-ga freeze-list, whole call", &mut self.qga),
        ] {
            if v.is_empty() {
                continue;
            }
            v.sort();
            println!("| {name} | {:.3} | {:.3} |", pct(v, 0.5).as_secs_f64() * 1e3, v[v.len() - 1].as_secs_f64() * 1e3);
        }
        for why in &self.qga_failed {
            println!("qemu-ga round without a figure: {why}");
        }
        println!(
            "the guardian expedited {} of {COLD_ROUNDS} freezes (/sys/kernel/rcu_expedited was not a writable 0 for the rest)",
            self.expedited
        );
    }
}
