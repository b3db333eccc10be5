//! The service runs for months: what one session costs it must come back.
//! Open file descriptors after a few hundred begin+end sessions (native
//! freeze of a loop mount, one WASM plugin) are exactly what they were after
//! the warm-up, and the resident set grows by less than a leak of a few KiB
//! per session would make it. `cargo bench --bench agents` prints the same
//! figures for 1 000 sessions on a release build.

use quiesce_tests::plugins::install_plugin;
use quiesce_tests::service::Service;
use quiesce_tests::svc::{ok, rss_fds};
use quiesce_tests::*;
use serde_json::json;

const WARMUP: usize = 50;
const SESSIONS: usize = 300;
/// 2 MiB over 300 sessions: a leak of about 7 KiB or more per session fails.
const RSS_SLACK_KB: u64 = 2048;

#[test]
fn service_open_fds_and_rss_stay_flat_across_hundreds_of_sessions() {
    quiesce_tests::require!(Root, Plugins);
    let ms = MountedScratch::new("svc-soak");
    let noop = install_plugin(&ms.s, "noop");
    // A plugin file changed in the last moments is read again per session,
    // not kept loaded (its compiled module's memory image then joins the fds
    // for good): let it settle so the warm-up ends in the steady state.
    std::thread::sleep(quiesce::hooks::wasm::PLUGIN_FILE_SETTLED + std::time::Duration::from_millis(200));
    let config = ms.s.config(
        "service.toml",
        &format!("[freeze]\nenabled = true\nmax_freeze_secs = 30\n\n[[hook]]\nname = \"noop\"\nplugin = \"{}\"\n", noop.display()),
    );
    let svc = Service::start(&ms.s, &config);
    let mut c = svc.connect();
    let mounts = json!([ms.mnt.path()]);
    let mut session = || {
        let b = ok(&mut c, "begin", json!({"freeze": "native", "mounts": mounts}));
        assert_eq!(b["proceed"], true, "{b}");
        let e = ok(&mut c, "end", json!({"session_id": b["session_id"]}));
        assert_eq!(e["exit_code"], 0, "{e}");
    };
    for _ in 0..WARMUP {
        session();
    }
    let (rss0, fds0) = rss_fds(svc.pid());
    for _ in 0..SESSIONS {
        session();
    }
    let (rss1, fds1) = rss_fds(svc.pid());
    println!("[soak] service after {WARMUP} sessions: {rss0} kB RSS, {fds0} fds; after {} more: {rss1} kB, {fds1} fds", SESSIONS);
    assert_eq!(fds1, fds0, "open fds grew across {SESSIONS} sessions");
    // Guardians done with their session are reaped on the service's reaper
    // thread, not by the reply: none may be left as a zombie.
    let t = std::time::Instant::now();
    while quiesce_tests::faults::zombie_children(svc.pid()) > 0 && t.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(quiesce_tests::faults::zombie_children(svc.pid()), 0, "guardians left unreaped");
    assert!(rss1 <= rss0 + RSS_SLACK_KB, "RSS grew from {rss0} kB to {rss1} kB across {SESSIONS} sessions");
}
