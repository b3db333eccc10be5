//! The real QEMU guest agent (Debian `qemu-guest-agent`) as a test peer.
//!
//! qemu-ga runs without a virtio port (`-m unix-listen -p SOCK`) and is driven
//! over its socket with the calls libvirt, Proxmox VE and KubeVirt make:
//! `guest-fsfreeze-freeze-list` (always with `mountpoints`), `guest-fsfreeze-thaw`,
//! `guest-fsfreeze-status`. It runs its `--fsfreeze-hook` with one argument
//! (`freeze` before its FIFREEZE, `thaw` after its FITHAW, and `thaw` again on
//! every thaw call even when nothing was frozen), setsid, stdio on /dev/null,
//! and passes its own environment through (execl): a hook finds
//! `$QUIESCE_SOCKET` and `$PATH` the way qemu-ga was started.
//!
//! Safety: a bare `guest-fsfreeze-freeze` freezes every file system of the
//! machine, `/` included. This fixture has no way to send it — requests are
//! built only from [`Mountpoints`], which refuses an empty list and any path
//! that is not a mount point under the tests' scratch base. qemu-ga has no auto-thaw: killed between freeze and thaw it
//! leaves its mounts frozen, so `Drop` thaws every mount it was asked to
//! freeze (`fsfreeze -u`), after killing qemu-ga by its pid.
//!
//! qemu-ga's `guest-fsfreeze-thaw` does not thaw what it froze: it issues
//! FITHAW (until it fails) on *every* mount it can see. On a machine where
//! other tests (or other people) hold their own loop mounts frozen, that
//! would thaw them behind their backs. So qemu-ga runs in a private mount
//! namespace in which every loop mount outside its test's scratch directory
//! is detached: it can only see, freeze and thaw its own test's file systems
//! (and the machine's ordinary mounts, which nobody freezes).

use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{is_mountpoint, SCRATCH_BASE};

/// How long a request may wait for its reply. qemu-ga waits for its hook with
/// no timeout, so a hook that hangs would hang the test without this.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// A running `qemu-ga`; killed (and its mounts thawed) on drop.
pub struct QemuGa {
    child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
    conn: Option<BufReader<UnixStream>>,
    /// Every mount a freeze was requested for: thawed on drop.
    asked: Vec<PathBuf>,
}

/// An `{"error": {...}}` reply: qemu-ga's error class and description.
#[derive(Debug, Clone)]
pub struct QgaError {
    pub class: String,
    pub desc: String,
}

impl std::fmt::Display for QgaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class, self.desc)
    }
}

impl QemuGa {
    /// Starts `qemu-ga -m unix-listen -p DIR/qga.sock -t DIR/qga-state -l DIR/qga.log
    /// -f DIR/qga.pid [--fsfreeze-hook=HOOK]` with `env` added to its environment (which its
    /// hook inherits), and waits until its socket accepts.
    pub fn start(dir: &Path, hook: Option<&Path>, env: &[(&str, &std::ffi::OsStr)]) -> QemuGa {
        let socket = dir.join("qga.sock");
        let state = dir.join("qga-state");
        let log = dir.join("qga.log");
        std::fs::create_dir_all(&state).expect("create qemu-ga state dir");
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new("qemu-ga");
        // `-f`: its own pid file (the default, /run/qemu-ga.pid, is locked by
        // the first instance: a second would refuse to start).
        cmd.args(["-m", "unix-listen", "-p"]).arg(&socket).arg("-t").arg(&state).arg("-l").arg(&log).arg("-f").arg(dir.join("qga.pid"));
        if let Some(h) = hook {
            // `-F PATH` (with a space) would run the default hook: only the
            // long form with `=` (or `-FPATH`) names ours.
            let mut arg = std::ffi::OsString::from("--fsfreeze-hook=");
            arg.push(h);
            cmd.arg(arg);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let foreign = foreign_loop_mounts(dir);
        // SAFETY: between fork and exec only async-signal-safe syscalls on
        // data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || own_mount_namespace(&foreign));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn qemu-ga (Debian package qemu-guest-agent; scripts/test installs it)");
        let mut ga = QemuGa { child, socket, log, conn: None, asked: Vec::new() };
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(s) = UnixStream::connect(&ga.socket) {
                s.set_read_timeout(Some(REPLY_TIMEOUT)).expect("set qemu-ga read timeout");
                ga.conn = Some(BufReader::new(s));
                break;
            }
            if let Ok(Some(status)) = ga.child.try_wait() {
                panic!("qemu-ga exited with {status} before listening; its log: {}", ga.log_text());
            }
            assert!(Instant::now() < until, "qemu-ga never listened on {}; log: {}", ga.socket.display(), ga.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
        ga
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `guest-fsfreeze-freeze-list` with exactly these mount points: the
    /// number of file systems frozen, or qemu-ga's error (e.g. the hook failed).
    pub fn freeze_list(&mut self, mounts: &Mountpoints) -> Result<u64, QgaError> {
        self.remember(mounts);
        self.call("guest-fsfreeze-freeze-list", Some(mounts.args.clone())).map(|v| v.as_u64().unwrap_or(0))
    }

    fn remember(&mut self, mounts: &Mountpoints) {
        for p in &mounts.paths {
            if !self.asked.contains(p) {
                self.asked.push(p.clone());
            }
        }
    }

    /// `guest-fsfreeze-thaw`: the number of file systems thawed.
    pub fn thaw(&mut self) -> Result<u64, QgaError> {
        self.call("guest-fsfreeze-thaw", None).map(|v| v.as_u64().unwrap_or(0))
    }

    /// `guest-fsfreeze-status`: `"frozen"` or `"thawed"`.
    pub fn status(&mut self) -> Result<String, QgaError> {
        self.call("guest-fsfreeze-status", None).map(|v| v.as_str().unwrap_or("").to_string())
    }

    /// Sends `freeze_list` on its own connection and returns at once: for a
    /// test that kills qemu-ga while the hook runs or after the freeze. The
    /// reply is never read.
    pub fn send_freeze_list(&mut self, mounts: &Mountpoints) {
        self.remember(mounts);
        let conn = self.conn.as_mut().expect("qemu-ga connection");
        let line = json!({"execute": "guest-fsfreeze-freeze-list", "arguments": mounts.args}).to_string();
        writeln!(conn.get_mut(), "{line}").expect("write to qemu-ga");
        // The reply would arrive on this connection: drop it so later calls
        // do not read it by mistake.
        self.conn = None;
    }

    /// SIGKILL by pid; waits for it to go. Its mounts stay frozen if it froze
    /// them (qemu-ga has no auto-thaw): `Drop` thaws them.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn call(&mut self, execute: &'static str, arguments: Option<Value>) -> Result<Value, QgaError> {
        if self.conn.is_none() {
            let s = UnixStream::connect(&self.socket).expect("reconnect to qemu-ga");
            s.set_read_timeout(Some(REPLY_TIMEOUT)).expect("set qemu-ga read timeout");
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().expect("qemu-ga connection");
        let mut req = json!({ "execute": execute });
        if let Some(a) = arguments {
            req["arguments"] = a;
        }
        writeln!(conn.get_mut(), "{req}").expect("write to qemu-ga");
        let mut line = String::new();
        loop {
            line.clear();
            let n =
                conn.read_line(&mut line).unwrap_or_else(|e| panic!("no reply from qemu-ga to {execute} within {REPLY_TIMEOUT:?}: {e}"));
            assert!(n > 0, "qemu-ga closed the connection during {execute}; log: {}", self.log_text());
            if !line.trim().is_empty() {
                break;
            }
        }
        let reply: Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("qemu-ga said {line:?}: {e}"));
        match (reply.get("return"), reply.get("error")) {
            (Some(v), _) => Ok(v.clone()),
            (None, Some(e)) => {
                Err(QgaError { class: e["class"].as_str().unwrap_or("").to_string(), desc: e["desc"].as_str().unwrap_or("").to_string() })
            }
            _ => panic!("qemu-ga reply without return or error: {reply}"),
        }
    }
}

impl Drop for QemuGa {
    fn drop(&mut self) {
        self.kill();
        for m in &self.asked {
            // Harmless when not frozen; the LoopMount guard does it again.
            let _ = Command::new("fsfreeze").arg("-u").arg(m).stderr(Stdio::null()).status();
        }
    }
}

/// The test's scratch directory `dir` lives in (the child of the scratch base it is under).
fn scratch_root(dir: &Path) -> &Path {
    dir.ancestors().find(|a| a.parent() == Some(Path::new(SCRATCH_BASE))).unwrap_or(dir)
}

/// Loop-device mounts not inside `dir`'s scratch directory (decoded from
/// /proc/self/mounts, which escapes blanks as `\040`).
fn foreign_loop_mounts(dir: &Path) -> Vec<CString> {
    let own = scratch_root(dir);
    let unescape = |s: &str| s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\");
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (src, mp) = (f.next()?, unescape(f.next()?));
            (src.starts_with("/dev/loop") && !Path::new(&mp).starts_with(own)).then(|| CString::new(mp).ok()).flatten()
        })
        .collect()
}

/// In the forked child before exec: a private mount namespace with the
/// foreign loop mounts detached (a failure to detach one is ignored: it was
/// under another one already detached).
fn own_mount_namespace(foreign: &[CString]) -> std::io::Result<()> {
    // SAFETY: plain syscalls with NUL-terminated strings that outlive them.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::mount(c"none".as_ptr(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        for m in foreign {
            libc::umount2(m.as_ptr(), libc::MNT_DETACH);
        }
    }
    Ok(())
}

/// Mount points checked to be a test's own loop mounts: the only thing a
/// freeze request can be built from, so an empty list (which would make
/// qemu-ga freeze `/`) cannot be sent.
pub struct Mountpoints {
    paths: Vec<PathBuf>,
    args: Value,
}

impl Mountpoints {
    /// Panics on an empty list or a path that is not a mount point under the tests' scratch base.
    pub fn new(mounts: &[&Path]) -> Mountpoints {
        assert!(!mounts.is_empty(), "refusing a freeze request without mount points (qemu-ga would freeze /)");
        for m in mounts {
            assert!(
                m.starts_with(SCRATCH_BASE) && m != &Path::new(SCRATCH_BASE) && is_mountpoint(m),
                "refusing to ask qemu-ga to freeze {}: not a test's loop mount under {SCRATCH_BASE}",
                m.display()
            );
        }
        let list: Vec<String> = mounts.iter().map(|m| m.display().to_string()).collect();
        Mountpoints { paths: mounts.iter().map(|m| m.to_path_buf()).collect(), args: json!({ "mountpoints": list }) }
    }
}

/// The fsfreeze hook shipped in the tree (`integrations/qemu-ga/fsfreeze-hook`),
/// which runs `quiesce-client fsfreeze-hook` found by `$PATH`.
pub fn shipped_hook() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../integrations/qemu-ga/fsfreeze-hook")
}

/// `PATH` with a directory holding only `quiesce-client` (a link to the one
/// built here) first, so the shipped hook's `exec quiesce-client` runs it —
/// and a hook that ran `quiesce` instead would not find it.
pub fn path_with_client() -> std::ffi::OsString {
    let bin = crate::quiesce_client_bin();
    let dir = bin.parent().expect("target dir").join("client-only");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    match std::os::unix::fs::symlink(&bin, dir.join("quiesce-client")) {
        // Made by an earlier (or a concurrent) test: it points at the same binary.
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("link quiesce-client into {}: {e}", dir.display()),
    }
    let mut path = std::ffi::OsString::from(dir);
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    path
}

/// Is `qemu-ga` installed? (Benchmarks skip its rows without it; tests need it.)
pub fn available() -> bool {
    Command::new("qemu-ga").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

impl QemuGa {
    /// qemu-ga with the shipped hook, which finds the `quiesce` under test
    /// on `$PATH` and the service at `socket` through `$QUIESCE_SOCKET`
    /// (qemu-ga passes its environment to the hook).
    pub fn with_quiesce_hook(dir: &Path, socket: &Path) -> QemuGa {
        let path = path_with_client();
        QemuGa::start(dir, Some(&shipped_hook()), &[("PATH", path.as_os_str()), ("QUIESCE_SOCKET", socket.as_os_str())])
    }
}
