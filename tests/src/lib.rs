//! Fixtures for scenario tests and benchmarks: real loop-mounted file systems,
//! root-owned scratch directories, a frozen-ness probe that cannot hang the
//! test, and a runner for the `quiesce` binary.
//!
//! Every fixture cleans up in `Drop`, so a failing assertion still thaws,
//! unmounts and detaches what the test created.

pub mod bench;
pub mod blocks;
pub mod db;
pub mod faults;
pub mod legacy;
pub mod restore;
pub mod service;
pub mod soak;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Where scratch directories live. Not under /tmp: a world-writable
/// directory on a script's path makes quiesce (rightly) refuse the script.
pub const SCRATCH_BASE: &str = "/var/lib/quiesce-tests";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a command and panics with its output if it fails: fixture setup
/// errors should be loud, not swallowed.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("/bin/sh").arg("-c").arg(cmd).output().expect("spawn /bin/sh");
    assert!(out.status.success(), "`{cmd}` failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A root-owned, mode-0700 directory removed (with everything mounted in it
/// unmounted first, by the `LoopMount`s dropped before it) at the end.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        fs::create_dir_all(SCRATCH_BASE).expect("create scratch base");
        fs::set_permissions(SCRATCH_BASE, fs::Permissions::from_mode(0o755)).unwrap();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = PathBuf::from(format!("{SCRATCH_BASE}/{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create scratch dir");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
        Scratch { path }
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }

    /// Writes an executable root-owned script (mode 0700) and returns its path.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.join(name);
        write_mode(&path, body, 0o700);
        path
    }

    /// Writes a config file with mode 0600, as the legacy contract requires.
    pub fn config(&self, name: &str, body: &str) -> PathBuf {
        let path = self.join(name);
        write_mode(&path, body, 0o600);
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Only remove if nothing is still mounted below: never recurse into a mount.
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let prefix = format!("{} ", self.path.display());
        let inside = format!("{}/", self.path.display());
        if mounts.lines().any(|l| {
            let mp = l.split(' ').nth(1).unwrap_or("");
            mp.starts_with(&inside) || l.contains(&prefix)
        }) {
            eprintln!("scratch {} still has mounts; leaving it", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A scratch dir with one ext4 loop mount at `<scratch>/mnt`: what most
/// session scenarios need. Field order = drop order: the mount goes before
/// the directory it lives in.
pub struct MountedScratch {
    pub mnt: LoopMount,
    pub s: Scratch,
}

impl MountedScratch {
    pub fn new(name: &str) -> MountedScratch {
        let s = Scratch::new(name);
        let mnt = LoopMount::new(&s.path, "mnt", Fs::Ext4);
        MountedScratch { mnt, s }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.s.join(name)
    }

    /// A file's text, or "" when it does not exist.
    pub fn read(&self, name: &str) -> String {
        fs::read_to_string(self.file(name)).unwrap_or_default()
    }
}

pub fn write_mode(path: &Path, body: &str, mode: u32) {
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(body.as_bytes()).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fs {
    Ext4,
    Xfs,
    Btrfs,
}

impl Fs {
    pub fn name(self) -> &'static str {
        match self {
            Fs::Ext4 => "ext4",
            Fs::Xfs => "xfs",
            Fs::Btrfs => "btrfs",
        }
    }
    fn mkfs(self, image: &Path) -> String {
        let img = image.display();
        match self {
            Fs::Ext4 => format!("mkfs.ext4 -q -F {img}"),
            Fs::Xfs => format!("mkfs.xfs -q -f {img}"),
            Fs::Btrfs => format!("mkfs.btrfs -q -f {img}"),
        }
    }
    /// Smallest image size the mkfs accepts comfortably.
    pub fn min_mib(self) -> u32 {
        match self {
            Fs::Ext4 => 64,
            Fs::Xfs => 320,
            Fs::Btrfs => 128,
        }
    }
}

/// A file system on a loop device, mounted at `mountpoint`. Drop thaws it
/// (if a test left it frozen), unmounts it and detaches the loop device.
pub struct LoopMount {
    pub image: PathBuf,
    pub mountpoint: PathBuf,
    pub fs: Fs,
}

impl LoopMount {
    /// Creates `<dir>/<name>.img` and mounts it at `<dir>/<name>`.
    pub fn new(dir: &Path, name: &str, fs: Fs) -> LoopMount {
        Self::with_size(dir, name, fs, fs.min_mib())
    }

    pub fn with_size(dir: &Path, name: &str, fs: Fs, mib: u32) -> LoopMount {
        let image = dir.join(format!("{name}.img"));
        let mountpoint = dir.join(name);
        fs::create_dir_all(&mountpoint).unwrap();
        sh(&format!("truncate -s {mib}M {}", image.display()));
        sh(&fs.mkfs(&image));
        sh(&format!("mount -o loop {} {}", image.display(), mountpoint.display()));
        LoopMount { image, mountpoint, fs }
    }

    /// Creates `<image_dir>/<name>.img` and mounts it at `<mount_dir>/<name>`:
    /// for a mount nested in another whose image lives elsewhere, or an
    /// image on one mount mounted outside it.
    pub fn split(image_dir: &Path, mount_dir: &Path, name: &str, fs: Fs) -> LoopMount {
        let image = image_dir.join(format!("{name}.img"));
        let mountpoint = mount_dir.join(name);
        fs::create_dir_all(&mountpoint).unwrap();
        sh(&format!("truncate -s {}M {}", fs.min_mib(), image.display()));
        sh(&fs.mkfs(&image));
        sh(&format!("mount -o loop {} {}", image.display(), mountpoint.display()));
        LoopMount { image, mountpoint, fs }
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    pub fn loop_device(&self) -> String {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        let mp = self.mountpoint.display().to_string();
        mounts.lines().find(|l| l.split(' ').nth(1) == Some(mp.as_str())).and_then(|l| l.split(' ').next()).unwrap_or_default().to_string()
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let mp = self.mountpoint.display();
        // A thaw of a file system that is not frozen fails harmlessly.
        let _ = Command::new("fsfreeze").args(["-u"]).arg(&self.mountpoint).stderr(Stdio::null()).status();
        for _ in 0..50 {
            let ok = Command::new("umount").arg(&self.mountpoint).stderr(Stdio::null()).status();
            if matches!(ok, Ok(s) if s.success()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if is_mountpoint(&self.mountpoint) {
            eprintln!("{mp} still busy; detaching lazily");
            let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).status();
        }
        // `mount -o loop` sets autoclear, but be explicit for images whose
        // device outlived the mount.
        let img = self.image.display().to_string();
        if let Ok(out) = Command::new("losetup").args(["-j", &img]).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(dev) = line.split(':').next() {
                    let _ = Command::new("losetup").args(["-d", dev]).status();
                }
            }
        }
    }
}

pub fn is_mountpoint(path: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let p = path.display().to_string();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(p.as_str()))
}

/// A freeze made by "someone else" (`fsfreeze -f`, as qemu-ga or another
/// tool would), thawed on drop: also when the test fails, and before any
/// process blocked on it is waited for, if it is declared after that process.
pub struct ForeignFreeze(pub PathBuf);

impl ForeignFreeze {
    pub fn new(p: &Path) -> ForeignFreeze {
        sh(&format!("fsfreeze -f {}", p.display()));
        ForeignFreeze(p.to_path_buf())
    }
}

impl Drop for ForeignFreeze {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.0).stderr(Stdio::null()).status();
    }
}

/// Bind-mounts `src` at `dst`; unmounted on drop.
pub struct BindMount {
    pub mountpoint: PathBuf,
}

impl BindMount {
    pub fn new(src: &Path, dst: &Path) -> BindMount {
        fs::create_dir_all(dst).unwrap();
        sh(&format!("mount --bind {} {}", src.display(), dst.display()));
        BindMount { mountpoint: dst.to_path_buf() }
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mountpoint).status();
    }
}

/// Starts a background write to `dir` and reports whether it is still
/// blocked after `wait`. A write to a frozen file system blocks
/// uninterruptibly, so the probe runs in its own process and is never waited
/// for while it could hang.
pub struct WriteProbe {
    child: Child,
    started: Instant,
}

impl WriteProbe {
    pub fn start(dir: &Path) -> WriteProbe {
        let target = dir.join(format!(".probe-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst)));
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("echo ready; echo x > '{}' && rm -f '{}'", target.display(), target.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn write probe");
        // The clock starts when the shell is about to write, not at the
        // spawn: on a loaded machine starting a shell alone can take longer
        // than a probe waits, and would read as "frozen".
        if let Some(out) = child.stdout.take() {
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
        }
        WriteProbe { child, started: Instant::now() }
    }

    /// True once the write has completed.
    pub fn done(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits up to `limit` for the write; returns how long it took, or None.
    pub fn wait_done(&mut self, limit: Duration) -> Option<Duration> {
        while self.started.elapsed() < limit {
            if self.done() {
                return Some(self.started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.done() {
            Some(self.started.elapsed())
        } else {
            None
        }
    }
}

impl Drop for WriteProbe {
    fn drop(&mut self) {
        // Not waited for: it may still be blocked on a frozen file system
        // that the mount fixture is about to thaw. The kernel reaps it via init
        // once this process exits.
        let _ = self.child.try_wait();
    }
}

/// Is `dir` frozen? A write that does not finish within 300 ms counts as blocked.
pub fn is_frozen(dir: &Path) -> bool {
    WriteProbe::start(dir).wait_done(Duration::from_millis(300)).is_none()
}

/// Polls until a write to `dir` succeeds; returns how long that took.
pub fn writable_within(dir: &Path, limit: Duration) -> Option<Duration> {
    WriteProbe::start(dir).wait_done(limit)
}

/// Path of the `quiesce` binary built from this workspace.
pub fn quiesce_bin() -> PathBuf {
    built_bin("quiesce")
}

/// Path of the `quiesce-client` binary (the client commands alone, for hooks).
pub fn quiesce_client_bin() -> PathBuf {
    built_bin("quiesce-client")
}

fn built_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test-binary> -> target/<profile>/<name>
    let bin = exe.parent().and_then(Path::parent).map(|d| d.join(name)).expect("target dir");
    assert!(bin.exists(), "{} not built: run `cargo build --workspace --bins` first", bin.display());
    bin
}

/// A `quiesce` invocation isolated from the machine's own state: its run
/// directory (session lock, state), state directory and log file live in the scratch dir.
pub fn quiesce(scratch: &Scratch) -> Command {
    let mut cmd = Command::new(quiesce_bin());
    // The state (recovery points, artifacts) too: never the machine's /var/lib/quiesce.
    cmd.env("QUIESCE_RUN_DIR", scratch.join("run"))
        .env("QUIESCE_STATE_DIR", scratch.join("state"))
        .env("QUIESCE_LOG_FILE", scratch.join("quiesce.log"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

/// `quiesce check --json --config CONFIG --mount MOUNT` with its plugin cache
/// at `cache`: the parsed report.
pub fn check_json(scratch: &Scratch, cache: &Path, config: &Path, mount: &Path) -> serde_json::Value {
    let out = quiesce(scratch)
        .env("QUIESCE_CACHE_DIR", cache)
        .args(["check", "--json", "--config"])
        .arg(config)
        .arg("--mount")
        .arg(mount)
        .output()
        .expect("run quiesce check");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("check --json: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// `quiesce snapshot --config CONFIG --mount MOUNT --snapshot-cmd CMD`, its
/// plugin cache and artifact store (`cache/`, `state/`) in the scratch directory.
pub fn quiesce_snapshot(scratch: &Scratch, config: &Path, mount: &Path, snapshot_cmd: &str) -> Command {
    let mut cmd = quiesce(scratch);
    cmd.env("QUIESCE_CACHE_DIR", scratch.join("cache")).env("QUIESCE_STATE_DIR", scratch.join("state"));
    cmd.arg("snapshot").arg("--config").arg(config).arg("--mount").arg(mount).arg("--snapshot-cmd").arg(snapshot_cmd);
    cmd
}

/// A report's `steps`, in order: (step, ms). Asserts what holds for every
/// report: each step took a finite, non-negative time and together they
/// add up to `duration_ms` (each figure is rounded to 0.001 ms).
pub fn report_steps(report: &serde_json::Value) -> Vec<(String, f64)> {
    let steps: Vec<(String, f64)> = report["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps in the report: {report}"))
        .iter()
        .map(|s| (s["step"].as_str().unwrap_or("?").to_string(), s["ms"].as_f64().unwrap_or(f64::NAN)))
        .collect();
    assert!(steps.iter().all(|(_, ms)| ms.is_finite() && *ms >= 0.0), "{steps:?}");
    let sum: f64 = steps.iter().map(|(_, ms)| ms).sum();
    let total = report["duration_ms"].as_f64().unwrap_or(f64::NAN);
    assert!((sum - total).abs() <= 0.001 * (steps.len() as f64 + 1.0), "steps add up to {sum} ms, duration_ms is {total}: {steps:?}");
    steps
}

/// The result of one `quiesce` run, with the `--json` report parsed.
pub struct Run {
    pub output: Output,
    pub report: serde_json::Value,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    pub fn consistency(&self) -> &str {
        self.report["consistency"].as_str().unwrap_or("<missing>")
    }
    pub fn error_codes(&self) -> Vec<String> {
        self.report["errors"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["code"].as_str().map(String::from)).collect())
            .unwrap_or_default()
    }
    pub fn has_error(&self, code: &str) -> bool {
        self.error_codes().iter().any(|c| c == code)
    }
    /// Where the report says hook `hook`'s artifact `name` was stored.
    pub fn artifact(&self, hook: &str, name: &str) -> Option<PathBuf> {
        self.report["artifacts"]
            .as_array()?
            .iter()
            .find(|a| a["hook"] == hook && a["name"] == name)
            .and_then(|a| a["path"].as_str())
            .map(PathBuf::from)
    }
    /// Hook `hook`'s `quiesce_times` artifact (the plugin SDK's
    /// `artifacts::keep_times`), if it stored one.
    pub fn times(&self, hook: &str) -> Option<BTreeMap<String, u64>> {
        Some(parse_times(&fs::read_to_string(self.artifact(hook, "quiesce_times")?).ok()?))
    }
    /// The text of a stored artifact; panics if the report lists none such.
    pub fn artifact_text(&self, hook: &str, name: &str) -> String {
        let p =
            self.artifact(hook, name).unwrap_or_else(|| panic!("no artifact {hook}/{name} in the report: {}", self.report["artifacts"]));
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }
    /// The report entry for `name`'s `phase` hook.
    pub fn hook(&self, name: &str, phase: &str) -> &serde_json::Value {
        self.report["hooks"]
            .as_array()
            .and_then(|a| a.iter().find(|h| h["name"] == name && h["phase"] == phase))
            .unwrap_or_else(|| panic!("no {phase} hook {name} in report: {}", self.report))
    }
}

/// Runs `cmd` with `--json` appended and parses the report it prints.
pub fn run_json(mut cmd: Command) -> Run {
    cmd.arg("--json");
    let output = cmd.output().expect("run quiesce");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("no JSON report ({e}); status {}\nstdout:\n{stdout}\nstderr:\n{}", output.status, String::from_utf8_lossy(&output.stderr))
    });
    Run { output, report }
}

/// Writes a legacy Azure-style config naming the given scripts; `overrides`
/// (a JSON object) replaces or adds fields.
pub fn legacy_config(scratch: &Scratch, pre: &Path, post: &Path, overrides: serde_json::Value) -> PathBuf {
    let mut config = serde_json::json!({
        "pluginName": "ScriptRunner",
        "preScriptLocation": pre,
        "postScriptLocation": post,
        "preScriptParams": ["a1", "a 2"],
        "postScriptParams": ["p1"],
        "preScriptNoOfRetries": 0,
        "postScriptNoOfRetries": 0,
        "timeoutInSeconds": 10,
        "continueBackupOnFailure": true,
        "fsFreezeEnabled": true
    });
    if let (Some(base), Some(extra)) = (config.as_object_mut(), overrides.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    scratch.config("VMSnapshotScriptPluginConfig.json", &serde_json::to_string_pretty(&config).unwrap())
}

/// Is a process with this pid alive (and not a zombie)?
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// Waits (up to 20 s) for a pid file a test's process writes; returns the pid.
pub fn read_pid(path: &Path) -> i32 {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(pid) = fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()) {
            return pid;
        }
        assert!(Instant::now() < until, "{} never written", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True once `pid` is gone (or a zombie); false if it still runs after `limit`.
/// (A killed process may take a moment to disappear from /proc.)
pub fn gone_within(pid: i32, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    while alive(pid) {
        if Instant::now() > until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Shell lines that start a child which writes its pid to `pidfile`, calls
/// `setsid` (leaving the process group) and sleeps; the shell waits until
/// the pid is written.
pub fn setsid_sleeper(pidfile: &Path) -> String {
    format!("setsid sh -c 'echo $$ > {p}; exec sleep 1000' &\nwhile [ ! -s {p} ]; do sleep 0.01; done\n", p = pidfile.display())
}

pub mod judge;
pub mod plugins;
pub mod qga;
pub mod svc;

/// What a test needs from the machine beyond `cargo test` itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Loop devices, mount, FIFREEZE, root-owned scratch directories.
    Root,
    /// PostgreSQL 15's server binaries (`initdb`, `pg_ctl`).
    Postgres,
    /// `mariadbd` and `mariadb-install-db`.
    Mariadb,
    /// `redis-server`.
    Redis,
    /// The wasm32-wasip2 plugins built under `plugins/target`.
    Plugins,
}

/// Set by `scripts/test`: a test whose needs are not met fails instead of
/// skipping (on the CI machine everything must be there).
pub const REQUIRE_ALL_ENV: &str = "QUIESCE_TESTS_REQUIRE_ALL";

impl Need {
    /// Why the test cannot run here, or None when the need is met.
    pub fn unmet(self) -> Option<&'static str> {
        let on_path = |tool: &str| {
            std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file())).unwrap_or(false)
                || ["/usr/sbin", "/sbin"].iter().any(|d| Path::new(d).join(tool).is_file())
        };
        let met = match self {
            Need::Root => nix::unistd::geteuid().is_root(),
            Need::Postgres => Path::new(&format!("{}/initdb", db::PG_BIN)).is_file(),
            Need::Mariadb => on_path("mariadbd") && on_path("mariadb-install-db"),
            Need::Redis => on_path("redis-server"),
            Need::Plugins => plugins::plugin_build_dir().join("noop.wasm").is_file(),
        };
        (!met).then_some(match self {
            Need::Root => "needs root (loop devices, mount, FIFREEZE)",
            Need::Postgres => "needs PostgreSQL 15 (apt-get install postgresql-15)",
            Need::Mariadb => "needs MariaDB (apt-get install mariadb-server)",
            Need::Redis => "needs Redis (apt-get install redis-server)",
            Need::Plugins => "needs the plugins built (cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml)",
        })
    }
}

/// True if the test may run. Otherwise prints `skipped TEST: why` and returns
/// false — or panics when `QUIESCE_TESTS_REQUIRE_ALL` is set. Use [`require!`].
pub fn requirements_met(needs: &[Need], module: &str) -> bool {
    let why: Vec<&str> = needs.iter().filter_map(|n| n.unmet()).collect();
    if why.is_empty() {
        return true;
    }
    // libtest names each test's thread after the test (except with one test thread).
    let thread = std::thread::current();
    let test = thread.name().filter(|n| *n != "main").unwrap_or(module);
    let why = why.join("; ");
    if std::env::var_os(REQUIRE_ALL_ENV).is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("{test} {why}, and {REQUIRE_ALL_ENV} is set: nothing may be skipped here");
    }
    // Straight to stderr: libtest captures eprintln! of a passing test.
    let _ = writeln!(std::io::stderr(), "skipped {test}: {why}");
    false
}

/// First line of a test that needs more than `cargo test`: `require!(Root, Mariadb);`
/// returns from the test (printing what was skipped and why) unless every need is met.
#[macro_export]
macro_rules! require {
    ($($need:ident),+ $(,)?) => {
        if !$crate::requirements_met(&[$($crate::Need::$need),+], module_path!()) {
            return;
        }
    };
}

/// A `quiesce_times` artifact: one `name=value` line per instant (ns since
/// the Unix epoch, database server clock) or duration (`*_ns`).
pub fn parse_times(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().parse().unwrap_or_else(|_| panic!("quiesce_times: {k}={v} is not a number"))))
        .collect()
}
