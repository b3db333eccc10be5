//! The soak (issue 8): many sessions in one process through the library,
//! then many through the CLI, with the process's open fds, RSS, threads and
//! zombie children sampled after a warm-up, half way and at the end. A host
//! that leaks one fd, one guardian zombie or one thread per session shows it
//! here long before an agent running it every hour for a year does.
//!
//! Every session is real: a no-op pre/post script pair, the no-op plugin, a
//! guardian freezing and thawing one ext4 loop mount, a snapshot command
//! (`true`). The CLI sessions add the host process's own peak RSS
//! (`VmHWM`), which must be flat as well.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use quiesce::interrupt::Interrupt;
use quiesce::rundir::RunDir;
use quiesce::session::{load_config, Session, SessionOptions};
use quiesce::snapshot::ShellCommand;

use crate::faults::zombie_children;
use crate::plugins::install_plugin;
use crate::{quiesce_bin, Fs, LoopMount, Scratch};

/// RSS may grow this much after the warm-up (allocator arenas settling,
/// the plugin cache warming), and no more.
pub const RSS_TOLERANCE_KIB: u64 = 4096;

/// A `kB` field of `/proc/<pid>/status`.
fn status_field(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok())
}

/// `$var` as a session count, else `default`.
pub fn count(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What one sample saw of this process (and, for CLI runs, of the last child).
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub sessions: usize,
    pub fds: usize,
    pub rss_kib: u64,
    pub threads: u64,
    pub zombies: usize,
    /// The last CLI run's peak RSS (`VmHWM`), 0 for library samples.
    pub child_max_rss_kib: u64,
}

impl Sample {
    fn take(sessions: usize, child_max_rss_kib: u64) -> Sample {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| status_field(&status, name).unwrap_or(0);
        Sample {
            sessions,
            fds: fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0),
            rss_kib: field("VmRSS:"),
            threads: field("Threads:"),
            zombies: zombie_children(std::process::id()),
            child_max_rss_kib,
        }
    }
}

/// Start (after warm-up), middle and end of one half of the soak.
pub struct Series {
    pub what: &'static str,
    pub samples: Vec<Sample>,
    pub failed_sessions: usize,
    pub took: Duration,
}

impl Series {
    /// What grew that must not have.
    pub fn growth(&self) -> Vec<String> {
        let (Some(first), Some(last)) = (self.samples.first(), self.samples.last()) else { return vec!["no samples".into()] };
        // Counts are judged from half way: a thread started lazily once (a
        // runtime's blocking pool, a cleanup thread) may appear after the
        // warm-up, while a leak of one per session grows by hundreds between
        // half way and the end.
        let mid = self.samples.get(self.samples.len() / 2).unwrap_or(first);
        let mut bad = Vec::new();
        if last.fds > mid.fds {
            bad.push(format!("{}: open fds grew {} -> {} -> {}", self.what, first.fds, mid.fds, last.fds));
        }
        if last.threads > mid.threads {
            bad.push(format!("{}: threads grew {} -> {} -> {}", self.what, first.threads, mid.threads, last.threads));
        }
        if self.samples.iter().any(|s| s.zombies > 0) {
            bad.push(format!("{}: zombie children {:?}", self.what, self.samples.iter().map(|s| s.zombies).collect::<Vec<_>>()));
        }
        if last.rss_kib > first.rss_kib + RSS_TOLERANCE_KIB {
            bad.push(format!("{}: RSS grew {} -> {} KiB (tolerance {RSS_TOLERANCE_KIB} KiB)", self.what, first.rss_kib, last.rss_kib));
        }
        if last.child_max_rss_kib > first.child_max_rss_kib + RSS_TOLERANCE_KIB {
            bad.push(format!("{}: the CLI's peak RSS grew {} -> {} KiB", self.what, first.child_max_rss_kib, last.child_max_rss_kib));
        }
        if self.failed_sessions > 0 {
            bad.push(format!("{}: {} sessions did not end AppConsistent", self.what, self.failed_sessions));
        }
        bad
    }
}

/// The rig every session runs on.
pub struct SoakRig {
    pub config: PathBuf,
    pub mnt: LoopMount,
    pub s: Scratch,
}

impl SoakRig {
    pub fn new() -> SoakRig {
        let s = Scratch::new("soak");
        let mnt = LoopMount::new(&s.path, "mnt", Fs::Ext4);
        let pre = s.script("pre", "#!/bin/sh\nexit 0\n");
        let post = s.script("post", "#!/bin/sh\nexit 0\n");
        let noop = install_plugin(&s, "noop");
        let config = s.config(
            "quiesce.toml",
            &format!(
                "[freeze]\nmax_freeze_secs = 10\n\n[[hook]]\nname = \"app\"\npre = \"{}\"\npost = \"{}\"\n\n[[hook]]\nname = \"noop\"\nplugin = \"{}\"\n",
                pre.display(),
                post.display(),
                noop.display()
            ),
        );
        SoakRig { config, mnt, s }
    }

    /// `n` sessions through `Session::prepare` + `run`, on one runtime.
    pub fn library(&self, n: usize) -> Series {
        quiesce::logging::gate().set_stderr(false);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let one = || -> bool {
            let opts = SessionOptions {
                run_dir: Some(RunDir::new(self.s.join("run"))),
                mounts: vec![self.mnt.path().to_path_buf()],
                max_freeze: None,
                provider: Some(Box::new(ShellCommand { command: "true".into() })),
                cache_dir: Some(self.s.join("cache")),
                state_dir: Some(self.s.join("state")),
                ..Default::default()
            };
            match Session::prepare(load_config(Some(&self.config)), opts) {
                Ok(session) => {
                    let report = rt.block_on(session.run(Interrupt::never()));
                    report.consistency == quiesce::report::Consistency::AppConsistent
                }
                Err(_) => false,
            }
        };
        self.series("library", n, || (one(), 0))
    }

    /// `n` runs of `quiesce snapshot`. Each one's peak RSS is its `VmHWM`,
    /// read until it exits (`wait4`'s `ru_maxrss` would report this
    /// process's RSS instead: the kernel carries the pre-exec peak over).
    pub fn cli(&self, n: usize) -> Series {
        let one = || -> (bool, u64) {
            let child = Command::new(quiesce_bin())
                .env("QUIESCE_RUN_DIR", self.s.join("run"))
                .env("QUIESCE_LOG_FILE", self.s.join("quiesce.log"))
                .env("QUIESCE_CACHE_DIR", self.s.join("cache"))
                .env("QUIESCE_STATE_DIR", self.s.join("state"))
                .env_remove("RUST_LOG")
                .arg("snapshot")
                .arg("--config")
                .arg(&self.config)
                .arg("--mount")
                .arg(self.mnt.path())
                .args(["--snapshot-cmd", "true"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let Ok(mut child) = child else { return (false, 0) };
            let status_file = format!("/proc/{}/status", child.id());
            let mut peak = 0;
            loop {
                if let Some(hwm) = fs::read_to_string(&status_file).ok().as_deref().and_then(|s| status_field(s, "VmHWM:")) {
                    peak = peak.max(hwm);
                }
                match child.try_wait() {
                    Ok(Some(st)) => return (st.success(), peak),
                    Ok(None) => std::thread::sleep(Duration::from_millis(1)),
                    Err(_) => return (false, peak),
                }
            }
        };
        self.series("cli", n, one)
    }

    fn series(&self, what: &'static str, n: usize, mut one: impl FnMut() -> (bool, u64)) -> Series {
        let warm = (n / 10).clamp(1, 50);
        let t = Instant::now();
        let mut failed = 0;
        let mut samples = Vec::new();
        for i in 0..n {
            let (ok, rss) = one();
            if !ok {
                failed += 1;
            }
            let done = i + 1;
            if done == warm || done == warm + (n - warm) / 2 || done == n {
                samples.push(Sample::take(done, rss));
            }
        }
        Series { what, samples, failed_sessions: failed, took: t.elapsed() }
    }
}

impl Default for SoakRig {
    fn default() -> Self {
        SoakRig::new()
    }
}

/// The samples as a Markdown table.
pub fn table(series: &[&Series]) -> String {
    let mut out = String::from(
        "| run | after sessions | open fds | RSS KiB | threads | zombies | CLI peak RSS (VmHWM) KiB |\n|---|---|---|---|---|---|---|\n",
    );
    for s in series {
        for x in &s.samples {
            let child = if x.child_max_rss_kib > 0 { x.child_max_rss_kib.to_string() } else { "—".into() };
            let _ = writeln!(out, "| {} | {} | {} | {} | {} | {} | {child} |", s.what, x.sessions, x.fds, x.rss_kib, x.threads, x.zombies);
        }
    }
    for s in series {
        let _ = writeln!(
            out,
            "{}: {} sessions in {:.1} s ({:.1} ms each), {} failed",
            s.what,
            s.samples.last().map(|x| x.sessions).unwrap_or(0),
            s.took.as_secs_f64(),
            s.took.as_secs_f64() * 1e3 / s.samples.last().map(|x| x.sessions.max(1)).unwrap_or(1) as f64,
            s.failed_sessions
        );
    }
    out
}
