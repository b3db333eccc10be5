//! Every way an agent can get three idle loop mounts frozen and thawed around
//! a snapshot, side by side in one run (issue 10's figures):
//!
//! - floor: bare FIFREEZE×3 / FITHAW×3 from this process;
//! - the QEMU guest agent over its socket: `guest-fsfreeze-freeze-list` +
//!   `guest-fsfreeze-thaw`, no hook, a no-op shell hook, and the shipped
//!   quiesce hook (`integrations/qemu-ga/fsfreeze-hook` → `quiesce-client
//!   fsfreeze-hook` → the service with one no-op WASM plugin);
//! - the quiesce service: `begin` (native freeze) + `end` over its socket
//!   with one no-op WASM plugin (`plugins/examples/noop`), the plugin's own
//!   pre+post time from the report (a warm call), and the report's freeze
//!   window; and a second service with no hooks, so what the plugin adds to
//!   a two-phase session is its own row;
//! - one-shot `quiesce snapshot` (process start to exit, `--snapshot-cmd
//!   true`) with no hooks and with the no-op plugin (cached);
//! - the report's freeze window of an in-process session with an instant
//!   snapshot, against the floor.
//!
//! Methods take turns round by round so they share the machine's drift.
//! Every run directory (session lock, state file) is on a tmpfs, as
//! `/run/quiesce` is on any systemd machine (on this VM `/run` is on the
//! root disk, where each state-file rename costs 0.1–0.4 ms); the state
//! directories (the recovery point catalog, fsynced) are on the disk.
//! Then the service's RSS and open fds across 1 000 begin+end sessions.
//!
//! Run: `cargo bench -p quiesce-tests --bench agents` (root). Not a test: it
//! asserts nothing about time.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quiesce::interrupt::Interrupt;
use quiesce::rundir::RunDir;
use quiesce::session::{load_config, Session, SessionOptions};
use quiesce_tests::bench::{median, ms, Floor, InstantSnapshot};
use quiesce_tests::plugins::install_plugin;
use quiesce_tests::qga::{self, Mountpoints, QemuGa};
use quiesce_tests::service::Service;
use quiesce_tests::svc::{ok, rss_fds};
use quiesce_tests::*;
use serde_json::json;

const WARMUP: usize = 5;
const ROUNDS: usize = 100;
const SOAK_SESSIONS: usize = 1000;
/// Cold rounds: each freeze this long after the mounts' last thaw.
const COLD_ROUNDS: usize = 10;
const COLD_GAP: Duration = Duration::from_millis(300);

/// A tmpfs mounted at `dir` for the bench's life.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn at(dir: PathBuf) -> Tmpfs {
        std::fs::create_dir_all(&dir).unwrap();
        let st = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "mode=0700,size=16m", "tmpfs"]).arg(&dir).status();
        assert!(st.is_ok_and(|s| s.success()), "mount tmpfs at {}", dir.display());
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[derive(Default)]
struct Col {
    name: &'static str,
    v: Vec<Duration>,
}

fn service_available() -> bool {
    quiesce_bin_help().contains("serve")
}

fn quiesce_bin_help() -> String {
    std::process::Command::new(quiesce_bin())
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn native_config(s: &Scratch, name: &str, plugin: Option<&Path>) -> PathBuf {
    let hook = plugin.map(|p| format!("\n[[hook]]\nname = \"noop\"\nplugin = \"{}\"\n", p.display())).unwrap_or_default();
    s.config(name, &format!("[freeze]\nenabled = true\nmax_freeze_secs = 30\n{hook}"))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    quiesce::logging::gate().set_stderr(false);
    let s = Scratch::new("bench-agents");
    let _run = Tmpfs::at(s.join("run"));
    let mounts = [LoopMount::new(&s.path, "e", Fs::Ext4), LoopMount::new(&s.path, "x", Fs::Xfs), LoopMount::new(&s.path, "b", Fs::Btrfs)];
    let paths: Vec<&Path> = mounts.iter().map(|m| m.path()).collect();
    let plan =
        quiesce::freeze::plan(&quiesce::freeze::Selection { mounts: paths.iter().map(|p| p.to_path_buf()).collect(), exclude: vec![] })
            .expect("plan");
    let order: Vec<&Path> = plan.targets.iter().map(|t| t.path.as_path()).collect();
    let floor = Floor::new(&order);
    let qga_mounts = Mountpoints::new(&order);

    let noop = install_plugin(&s, "noop");
    let bare = native_config(&s, "bare.toml", None);
    let with_plugin = native_config(&s, "noop.toml", Some(&noop));
    let noop_hook = s.script("noop-hook", "#!/bin/sh\nexit 0\n");

    let service = service_available().then(|| Service::start(&s, &with_plugin));
    let mut client = service.as_ref().map(Service::connect);
    // Its own scratch: its own socket, run directory and state.
    let s_bare = Scratch::new("bench-agents-bare");
    let _run_bare = Tmpfs::at(s_bare.join("run"));
    let service_bare = service_available().then(|| Service::start(&s_bare, &bare));
    let mut client_bare = service_bare.as_ref().map(Service::connect);
    let have_qga = qga::available();
    let qga_dir = |name: &str| {
        let d = s.join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let mut ga_plain = have_qga.then(|| QemuGa::start(&qga_dir("qga-plain"), None, &[]));
    let mut ga_shell = have_qga.then(|| QemuGa::start(&qga_dir("qga-shell"), Some(&noop_hook), &[]));
    let mut ga_quiesce = match (&service, have_qga) {
        (Some(svc), true) => Some(QemuGa::with_quiesce_hook(&qga_dir("qga-quiesce"), &svc.socket)),
        _ => None,
    };

    let one_shot = |config: &Path| {
        let mut cmd = quiesce(&s);
        cmd.env("QUIESCE_CACHE_DIR", s.join("cache-oneshot"))
            .env("QUIESCE_STATE_DIR", s.join("state"))
            .args(["snapshot", "--snapshot-cmd", "true", "--config"])
            .arg(config);
        for p in &paths {
            cmd.arg("--mount").arg(p);
        }
        let out = cmd.output().expect("quiesce snapshot");
        // 3 without hooks: file-system consistent is all a bare freeze can claim.
        assert!(matches!(out.status.code(), Some(0 | 3)), "{:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let in_process = |config: &Path| {
        let opts = SessionOptions {
            run_dir: Some(RunDir::new(s.join("run/lib"))),
            mounts: paths.iter().map(|p| p.to_path_buf()).collect(),
            provider: Some(Box::new(InstantSnapshot)),
            cache_dir: Some(s.join("cache-lib")),
            state_dir: Some(s.join("state-lib")),
            ..Default::default()
        };
        let session = Session::prepare(load_config(Some(config)), opts).expect("prepare");
        let report = rt.block_on(session.run(Interrupt::never()));
        assert!(report.snapshot_taken && report.errors.is_empty(), "{:?}", report.errors);
        report
    };
    let mounts_json: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();

    let mut cols: Vec<Col> = [
        "floor: FIFREEZE×3 + FITHAW×3",
        "qemu-ga freeze-list+thaw, no hook",
        "qemu-ga freeze-list+thaw, no-op shell hook",
        "qemu-ga freeze-list+thaw, quiesce hook (service, no-op plugin)",
        "quiesce begin+end (socket, native freeze, no-op plugin)",
        "quiesce begin+end (socket, native freeze, no hooks)",
        "one-shot `quiesce snapshot`, no hooks",
        "one-shot `quiesce snapshot`, no-op plugin (cached)",
    ]
    .into_iter()
    .map(|name| Col { name, v: Vec::new() })
    .collect();
    let mut plugin_calls = Vec::new();
    // The reports' `steps` of each service's sessions (where begin+end
    // goes), by step name in the order the sessions take them.
    let mut svc_steps: Vec<(String, [Vec<f64>; 2])> = Vec::new();
    let mut keep_steps = |i: usize, report: &serde_json::Value| {
        for (name, ms) in report_steps(report) {
            let at = match svc_steps.iter().position(|(n, _)| *n == name) {
                Some(at) => at,
                None => {
                    svc_steps.push((name, Default::default()));
                    svc_steps.len() - 1
                }
            };
            svc_steps[at].1[i].push(ms);
        }
    };
    let mut svc_windows = Vec::new();
    let mut lib_windows = Vec::new();
    let mut lib_windows_plugin = Vec::new();
    let mut floor_samples = Vec::new();

    for round in 0..WARMUP + ROUNDS {
        let keep = round >= WARMUP;
        for turn in 0..10 {
            let t = Instant::now();
            let col = match (turn + round) % 10 {
                0 => {
                    let (d, _) = floor.round();
                    if keep {
                        floor_samples.push(d);
                    }
                    0
                }
                i @ 1..=3 => {
                    let ga = [&mut ga_plain, &mut ga_shell, &mut ga_quiesce][i - 1].as_mut();
                    let Some(ga) = ga else { continue };
                    let n = ga.freeze_list(&qga_mounts).unwrap_or_else(|e| panic!("qemu-ga freeze: {e}"));
                    assert_eq!(n, 3, "qemu-ga froze {n} of 3");
                    ga.thaw().unwrap_or_else(|e| panic!("qemu-ga thaw: {e}"));
                    i
                }
                4 => {
                    let Some(c) = client.as_mut() else { continue };
                    let b = ok(c, "begin", json!({"freeze": "native", "mounts": mounts_json}));
                    assert_eq!(b["proceed"], true, "{b}");
                    let e = ok(c, "end", json!({"session_id": b["session_id"]}));
                    let d = t.elapsed();
                    if keep {
                        let report = &e["report"];
                        svc_windows.push(report["freeze"]["window_ms"].as_f64().unwrap_or(f64::NAN));
                        let hook_ms: f64 = report["hooks"]
                            .as_array()
                            .map(|h| h.iter().filter_map(|h| h["duration_ms"].as_f64()).sum())
                            .unwrap_or(f64::NAN);
                        plugin_calls.push(hook_ms);
                        keep_steps(0, report);
                        cols[4].v.push(d);
                    }
                    continue;
                }
                5 => {
                    let Some(c) = client_bare.as_mut() else { continue };
                    let b = ok(c, "begin", json!({"freeze": "native", "mounts": mounts_json}));
                    assert_eq!(b["proceed"], true, "{b}");
                    let e = ok(c, "end", json!({"session_id": b["session_id"]}));
                    if keep {
                        keep_steps(1, &e["report"]);
                    }
                    5
                }
                6 => {
                    one_shot(&bare);
                    6
                }
                7 => {
                    one_shot(&with_plugin);
                    7
                }
                8 => {
                    let r = in_process(&bare);
                    if keep {
                        lib_windows.push(r.freeze.window_ms.unwrap_or(f64::NAN));
                    }
                    continue;
                }
                9 => {
                    let r = in_process(&with_plugin);
                    if keep {
                        lib_windows_plugin.push(r.freeze.window_ms.unwrap_or(f64::NAN));
                    }
                    continue;
                }
                _ => unreachable!(),
            };
            if keep {
                cols[col].v.push(if col == 0 { floor_samples[floor_samples.len() - 1] } else { t.elapsed() });
            }
        }
    }
    // Cold: the back-to-back rounds above keep the file systems' writer
    // locks warm; an agent's hourly snapshot finds them cold, and FIFREEZE
    // then waits for RCU grace periods (the README's "Cold freezes").
    let mut cold: [Vec<Duration>; 3] = Default::default();
    for round in 0..COLD_ROUNDS {
        for turn in 0..3 {
            let i = (turn + round) % 3;
            std::thread::sleep(COLD_GAP);
            let t = Instant::now();
            match i {
                0 => drop(floor.round()),
                1 => {
                    let Some(ga) = ga_plain.as_mut() else { continue };
                    ga.freeze_list(&qga_mounts).unwrap_or_else(|e| panic!("qemu-ga freeze: {e}"));
                    ga.thaw().unwrap_or_else(|e| panic!("qemu-ga thaw: {e}"));
                }
                _ => {
                    let Some(c) = client.as_mut() else { continue };
                    let b = ok(c, "begin", json!({"freeze": "native", "mounts": mounts_json}));
                    assert_eq!(b["proceed"], true, "{b}");
                    ok(c, "end", json!({"session_id": b["session_id"]}));
                }
            }
            cold[i].push(t.elapsed());
        }
    }
    drop((ga_plain, ga_shell, ga_quiesce));

    let med = |c: &Col| (!c.v.is_empty()).then(|| median(c.v.clone()));
    let floor_ms = ms(median(floor_samples.clone()));
    let ga_plain_ms = med(&cols[1]).map(ms);
    println!("\nthree idle loop mounts (ext4, xfs, btrfs), median of {ROUNDS} rounds after {WARMUP} warm-up");
    println!("| method | median ms | × floor | × qemu-ga (no hook) |");
    println!("|---|---:|---:|---:|");
    for c in &cols {
        match med(c) {
            Some(d) => println!(
                "| {} | {:.3} | {:.2} | {} |",
                c.name,
                ms(d),
                ms(d) / floor_ms,
                ga_plain_ms.map(|g| format!("{:.2}", ms(d) / g)).unwrap_or_else(|| "-".into())
            ),
            None => println!("| {} | unavailable | | |", c.name),
        }
    }
    let fmed = |mut v: Vec<f64>| {
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // Within a round the two runs are neighbours and share the machine's
    // state of the moment: the median of the per-round differences is far
    // steadier than the difference of two medians.
    let adds = |with: usize, without: usize| fmed(cols[with].v.iter().zip(&cols[without].v).map(|(w, b)| ms(*w) - ms(*b)).collect());
    println!("| service: what the warm no-op plugin adds to begin+end (median of per-round differences) | {:.3} | | |", adds(4, 5));
    println!("| one-shot: what the cached no-op plugin adds (median of per-round differences) | {:.3} | | |", adds(7, 6));
    println!("| warm no-op plugin pre+post inside the service (report's hook durations) | {:.3} | | |", fmed(plugin_calls.clone()));
    println!(
        "| freeze window, in-process session, instant snapshot, no hooks | {:.3} | {:.2} | |",
        fmed(lib_windows.clone()),
        fmed(lib_windows.clone()) / floor_ms
    );
    println!(
        "| freeze window, in-process session, instant snapshot, no-op plugin | {:.3} | {:.2} | |",
        fmed(lib_windows_plugin.clone()),
        fmed(lib_windows_plugin.clone()) / floor_ms
    );
    println!(
        "| freeze window, service begin+end (includes the client's round trip between them) | {:.3} | {:.2} | |",
        fmed(svc_windows.clone()),
        fmed(svc_windows.clone()) / floor_ms
    );

    if !svc_steps.is_empty() {
        println!("\nservice begin+end, the reports' steps (median ms; `held` is the client's round trip between the calls)");
        println!("| step | no-op plugin | no hooks |");
        println!("|---|---:|---:|");
        for (name, v) in &svc_steps {
            let m = |i: usize| if v[i].is_empty() { "-".to_string() } else { format!("{:.3}", fmed(v[i].clone())) };
            println!("| {name} | {} | {} |", m(0), m(1));
        }
    }

    println!("\ncold: each freeze {} ms after the mounts' last thaw, median of {COLD_ROUNDS} rounds", COLD_GAP.as_millis());
    println!("| method | median ms | max ms | × qemu-ga (no hook) |");
    println!("|---|---:|---:|---:|");
    let cold_ga = (!cold[1].is_empty()).then(|| ms(median(cold[1].clone())));
    for (name, v) in
        ["floor: FIFREEZE×3 + FITHAW×3", "qemu-ga freeze-list+thaw, no hook", "quiesce begin+end (socket, native freeze, no-op plugin)"]
            .iter()
            .zip(&cold)
    {
        if v.is_empty() {
            println!("| {name} | unavailable | | |");
            continue;
        }
        let m = ms(median(v.clone()));
        let max = v.iter().map(|d| ms(*d)).fold(0.0, f64::max);
        println!("| {name} | {m:.3} | {max:.3} | {} |", cold_ga.map(|g| format!("{:.2}", m / g)).unwrap_or_else(|| "-".into()));
    }

    // RSS and open fds of the service across many sessions.
    if let (Some(svc), Some(c)) = (&service, client.as_mut()) {
        let mut marks = Vec::new();
        let t = Instant::now();
        for i in 0..=SOAK_SESSIONS {
            if i % 250 == 0 {
                marks.push((i, rss_fds(svc.pid())));
            }
            if i == SOAK_SESSIONS {
                break;
            }
            let b = ok(c, "begin", json!({"freeze": "native", "mounts": mounts_json}));
            ok(c, "end", json!({"session_id": b["session_id"]}));
        }
        println!("\nservice across {SOAK_SESSIONS} begin+end sessions ({:.1} s): sessions → RSS kB, open fds", t.elapsed().as_secs_f64());
        for (i, (rss, fds)) in &marks {
            println!("  {i:>5} → {rss} kB, {fds} fds");
        }
    } else {
        println!("\n(quiesce serve not available in this build: service rows skipped)");
    }
    drop((client, client_bare));
    drop((service, service_bare));
}
