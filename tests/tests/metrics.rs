//! The metrics textfile, read by the real Prometheus node exporter (Debian's
//! `prometheus-node-exporter`): real sessions on a loop mount write it, the
//! exporter serves it over HTTP, and the values it serves are the sessions'.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quiesce_tests::*;
use serde_json::Value;

/// `prometheus-node-exporter` serving one textfile directory on a free
/// local port; stopped on drop.
struct NodeExporter {
    child: Child,
    port: u16,
}

impl NodeExporter {
    fn start(dir: &Path) -> NodeExporter {
        for _ in 0..5 {
            // A port free a moment ago; if someone takes it first, try another.
            let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
            let child = Command::new("prometheus-node-exporter")
                .arg(format!("--collector.textfile.directory={}", dir.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .args(["--collector.disable-defaults", "--collector.textfile"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start prometheus-node-exporter (apt-get install prometheus-node-exporter; scripts/test does)");
            let mut ne = NodeExporter { child, port };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(20) {
                if matches!(ne.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                if ne.get().is_some() {
                    return ne;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("prometheus-node-exporter did not start");
    }

    /// The body of `GET /metrics`, if the exporter answered 200.
    fn get(&self) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).ok()?;
        let (head, body) = raw.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.0 200").then(|| body.to_string()).or_else(|| head.starts_with("HTTP/1.1 200").then(|| body.to_string()))
    }

    /// Every sample as `name{labels}` → value.
    fn scrape(&self) -> HashMap<String, f64> {
        let body = self.get().expect("scrape /metrics");
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect()
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The hook's name has a quote and a backslash: label values must be escaped.
const HOOK: &str = r#"say "hi" \ ok"#;
const HOOK_LABEL: &str = r#"say \"hi\" \\ ok"#;

struct Setup {
    ms: MountedScratch,
    textdir: PathBuf,
    config: PathBuf,
}

fn setup(name: &str) -> Setup {
    let ms = MountedScratch::new(name);
    let textdir = ms.s.join("textfile");
    fs::create_dir(&textdir).unwrap();
    fs::set_permissions(&textdir, fs::Permissions::from_mode(0o755)).unwrap();
    let pre = ms.s.script("pre.sh", "#!/bin/sh\nexit 0\n");
    let post = ms.s.script("post.sh", "#!/bin/sh\nexit 0\n");
    let config = ms.s.config(
        "quiesce.toml",
        &format!(
            "[metrics]\ntextfile = \"{}/quiesce.prom\"\n\n[[hook]]\nname = '{HOOK}'\npre = \"{}\"\npost = \"{}\"\n",
            textdir.display(),
            pre.display(),
            post.display()
        ),
    );
    Setup { ms, textdir, config }
}

fn session(s: &Setup, snapshot_cmd: &str) -> Run {
    run_json(quiesce_snapshot(&s.ms.s, &s.config, s.ms.mnt.path(), snapshot_cmd))
}

fn value(m: &HashMap<String, f64>, series: &str) -> f64 {
    *m.get(series).unwrap_or_else(|| {
        let mut known: Vec<&String> = m.keys().filter(|k| k.starts_with("quiesce_") || k.starts_with("node_textfile")).collect();
        known.sort();
        panic!("{series} not served; quiesce series: {known:#?}")
    })
}

fn secs(ms: &Value) -> f64 {
    ms.as_f64().expect("a duration in ms") / 1000.0
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn node_exporter_serves_the_last_sessions_values_and_counters_that_survive_the_process() {
    quiesce_tests::require!(Root);
    let s = setup("metrics-scrape");
    let ne = NodeExporter::start(&s.textdir);
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let run = session(&s, "true");
    assert_eq!(run.code(), 0, "{}", run.report);
    let after = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();

    let file = s.textdir.join("quiesce.prom");
    assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o644);
    let names: Vec<String> = fs::read_dir(&s.textdir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["quiesce.prom"], "no temporary file left beside it");

    let m = ne.scrape();
    assert_eq!(value(&m, "node_textfile_scrape_error"), 0.0, "node_exporter parsed the file");
    let at = value(&m, "quiesce_last_session_timestamp_seconds");
    assert!(before <= at && at <= after + 1.0, "{before} <= {at} <= {after}");
    assert_eq!(value(&m, r#"quiesce_last_session_consistency{consistency="AppConsistent"}"#), 1.0);
    assert_eq!(value(&m, r#"quiesce_last_session_consistency{consistency="None"}"#), 0.0);
    assert_eq!(value(&m, "quiesce_last_session_exit_code"), 0.0);
    assert_eq!(value(&m, "quiesce_last_session_snapshot_taken"), 1.0);
    assert_eq!(value(&m, r#"quiesce_sessions_total{consistency="AppConsistent"}"#), 1.0);
    assert_eq!(value(&m, "quiesce_last_freeze_mounts"), 1.0);
    let window = value(&m, "quiesce_last_freeze_window_seconds");
    assert!(close(window, secs(&run.report["freeze"]["window_ms"])), "{window} vs {}", run.report["freeze"]);
    let snap = value(&m, "quiesce_last_snapshot_duration_seconds");
    assert!(close(snap, secs(&run.report["snapshot"]["duration_ms"])), "{snap} vs {}", run.report["snapshot"]);
    for (step, ms) in quiesce_tests::report_steps(&run.report) {
        let d = value(&m, &format!(r#"quiesce_last_session_step_seconds{{step="{step}"}}"#));
        assert!(close(d, ms / 1000.0), "{step}: {d} vs {ms} ms");
    }
    for phase in ["pre", "post"] {
        let d = value(&m, &format!(r#"quiesce_last_hook_duration_seconds{{hook="{HOOK_LABEL}",kind="script",phase="{phase}"}}"#));
        assert!(close(d, secs(&run.hook(HOOK, phase)["duration_ms"])), "{phase}: {d}");
        assert_eq!(value(&m, &format!(r#"quiesce_last_hook_outcome{{hook="{HOOK_LABEL}",outcome="succeeded",phase="{phase}"}}"#)), 1.0);
        assert_eq!(value(&m, &format!(r#"quiesce_last_hook_outcome{{hook="{HOOK_LABEL}",outcome="failed",phase="{phase}"}}"#)), 0.0);
    }

    // A second process, whose snapshot fails: the last session's values
    // change, the counters add up across both processes.
    let run = session(&s, "false");
    assert_eq!(run.code(), 4, "{}", run.report);
    let m = ne.scrape();
    assert_eq!(value(&m, "node_textfile_scrape_error"), 0.0);
    assert_eq!(value(&m, r#"quiesce_last_session_consistency{consistency="None"}"#), 1.0);
    assert_eq!(value(&m, r#"quiesce_last_session_consistency{consistency="AppConsistent"}"#), 0.0);
    assert_eq!(value(&m, "quiesce_last_session_exit_code"), 4.0);
    assert_eq!(value(&m, r#"quiesce_last_session_errors{code="SnapshotFailed"}"#), 1.0);
    assert_eq!(value(&m, r#"quiesce_sessions_total{consistency="AppConsistent"}"#), 1.0);
    assert_eq!(value(&m, r#"quiesce_sessions_total{consistency="None"}"#), 1.0);
    assert_eq!(value(&m, r#"quiesce_errors_total{code="SnapshotFailed"}"#), 1.0);
    assert_eq!(value(&m, &format!(r#"quiesce_hook_runs_total{{hook="{HOOK_LABEL}",outcome="succeeded",phase="pre"}}"#)), 2.0);
}

#[test]
fn a_textfile_directory_others_may_write_is_refused_but_the_session_still_counts() {
    quiesce_tests::require!(Root);
    let s = setup("metrics-untrusted");
    fs::set_permissions(&s.textdir, fs::Permissions::from_mode(0o777)).unwrap();
    let run = session(&s, "true");
    assert_eq!(run.code(), 0, "metrics never change the outcome: {}", run.report);
    let warnings = run.report["warnings"].to_string();
    assert!(warnings.contains("metrics textfile") && warnings.contains("writable by group or others"), "{warnings}");
    assert!(!s.textdir.join("quiesce.prom").exists(), "nothing written into a directory others control");

    fs::set_permissions(&s.textdir, fs::Permissions::from_mode(0o755)).unwrap();
    let ne = NodeExporter::start(&s.textdir);
    let run = session(&s, "true");
    assert_eq!(run.report["warnings"], serde_json::json!([]), "{}", run.report);
    let m = ne.scrape();
    assert_eq!(value(&m, "node_textfile_scrape_error"), 0.0);
    assert_eq!(value(&m, r#"quiesce_sessions_total{consistency="AppConsistent"}"#), 2.0, "the refused session was counted");
}

#[test]
fn symlinks_planted_at_the_textfile_or_its_temporary_name_are_replaced_not_followed() {
    quiesce_tests::require!(Root);
    let s = setup("metrics-symlink");
    for name in ["quiesce.prom", "quiesce.prom.tmp"] {
        let victim = s.ms.s.join(&format!("victim-{name}"));
        fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, s.textdir.join(name)).unwrap();
    }
    let run = session(&s, "true");
    assert_eq!(run.code(), 0, "{}", run.report);
    for name in ["quiesce.prom", "quiesce.prom.tmp"] {
        assert_eq!(fs::read_to_string(s.ms.s.join(&format!("victim-{name}"))).unwrap(), "precious", "{name}'s target was written");
    }
    let meta = fs::symlink_metadata(s.textdir.join("quiesce.prom")).unwrap();
    assert!(meta.file_type().is_file(), "the textfile is a regular file now");
    assert!(!s.textdir.join("quiesce.prom.tmp").exists(), "the planted temporary name is gone");
}
