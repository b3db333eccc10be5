//! What a session costs on top of the work it orchestrates.
//!
//! One run, same machine, same no-op pre/post script pair:
//! - floor: fork/exec + wait of the two scripts, nothing else;
//! - quiesce session (library, in-process): validate, run both hooks, report;
//! - quiesce session with freeze: also a guardian, FIFREEZE/FITHAW of one
//!   ext4 loop mount and a no-op snapshot step;
//! - `quiesce snapshot` (the binary, end to end, incl. process start).
//!
//! Prints medians and ratios to the floor. Needs root (loop mount).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use quiesce::interrupt::Interrupt;
use quiesce::rundir::RunDir;
use quiesce::session::{load_config, Session, SessionOptions};
use quiesce_tests::bench::InstantSnapshot;
use quiesce_tests::*;

const ROUNDS: usize = 40;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn measure(mut f: impl FnMut()) -> Duration {
    for _ in 0..3 {
        f();
    }
    median(
        (0..ROUNDS)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let s = Scratch::new("bench-session");
    let mnt = LoopMount::new(&s.path, "mnt", Fs::Ext4);
    let pre = s.script("pre", "#!/bin/sh\nexit 0\n");
    let post = s.script("post", "#!/bin/sh\nexit 0\n");
    let frozen_config = legacy_config_at(&s, "frozen.json", &pre, &post);
    let config = legacy_config(&s, &pre, &post, serde_json::json!({"fsFreezeEnabled": false}));
    quiesce::logging::gate().set_stderr(false);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    let floor = measure(|| {
        for p in [&pre, &post] {
            assert!(Command::new(p).status().unwrap().success());
        }
    });
    let run_session = |config: &PathBuf, mounts: Vec<PathBuf>| {
        let opts = SessionOptions {
            run_dir: Some(RunDir::new(s.join("run"))),
            mounts,
            max_freeze: None,
            provider: Some(Box::new(InstantSnapshot)),
            ..Default::default()
        };
        let session = Session::prepare(load_config(Some(config)), opts).unwrap();
        let report = rt.block_on(session.run(Interrupt::never()));
        assert_eq!(report.exit_code(), 0, "{:?}", report.errors);
        report
    };
    let lib = measure(|| {
        run_session(&config, vec![]);
    });
    let mut overheads = Vec::new();
    let lib_frozen = measure(|| {
        let r = run_session(&frozen_config, vec![mnt.path().to_path_buf()]);
        overheads.push(r.freeze.host_ms.unwrap_or(f64::NAN));
    });
    let bin = measure(|| {
        let out = quiesce(&s).args(["snapshot", "--snapshot-cmd", "true", "--config"]).arg(&config).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    });
    overheads.sort_by(f64::total_cmp);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let ratio = |d: Duration| d.as_secs_f64() / floor.as_secs_f64();
    println!("no-op pre/post pair, median of {ROUNDS} rounds");
    println!("{:<58} {:>10} {:>8}", "method", "median ms", "x floor");
    println!("{:<58} {:>10.3} {:>8.2}", "floor: fork/exec+wait of the two scripts", ms(floor), 1.0);
    println!("{:<58} {:>10.3} {:>8.2}", "quiesce session (library), freeze disabled", ms(lib), ratio(lib));
    println!("{:<58} {:>10.3} {:>8.2}", "quiesce session (library), 1 ext4 mount frozen+thawed", ms(lib_frozen), ratio(lib_frozen));
    println!("{:<58} {:>10.3} {:>8.2}", "`quiesce snapshot` binary, freeze disabled", ms(bin), ratio(bin));
    println!(
        "session overhead over the floor (library, no freeze): {:.3} ms; host time inside the freeze window: median {:.3} ms",
        ms(lib.saturating_sub(floor)),
        overheads[overheads.len() / 2]
    );
    drop(mnt);
}

fn legacy_config_at(s: &Scratch, name: &str, pre: &std::path::Path, post: &std::path::Path) -> PathBuf {
    let path = legacy_config(s, pre, post, serde_json::json!({}));
    let dest = s.join(name);
    std::fs::rename(&path, &dest).unwrap();
    dest
}
