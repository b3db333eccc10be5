//! A stand-in host for `guardian_thaws_when_host_dies`: it starts a guardian
//! over the mounts given, freezes them, says so, and waits to be killed.
//! Being a separate process is the point: the test SIGKILLs it and its whole
//! process group, which must not leave anything frozen.
//!
//! Usage: guardian_host MAX_FREEZE_SECS MOUNT...

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use quiesce::freeze::{plan, Guardian, Selection};

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).expect("usage: guardian_host MAX_FREEZE_SECS MOUNT...");
    let mounts: Vec<PathBuf> = args.map(PathBuf::from).collect();
    // Like the real host, be multi-threaded when the guardian is forked.
    for _ in 0..3 {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_secs(60));
        });
    }
    let plan = plan(&Selection { mounts, exclude: vec![] }).expect("plan");
    let mut g = Guardian::start(&plan, Duration::from_secs(secs), &[]).expect("start guardian");
    let frozen = g.freeze().expect("freeze");
    println!("FROZEN {} {}", g.pid(), frozen.mounts.len());
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}
