//! Fixtures for the service tests (and the adapters built on it): a real
//! `quiesce serve` process on a socket in a scratch directory, isolated like
//! every other `quiesce` run here (its own run dir, log, plugin cache and
//! artifact store), and a raw line client to talk protocol v1 to it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{quiesce, Scratch};

/// A running `quiesce serve`; SIGTERM (then SIGKILL) on drop.
pub struct Service {
    child: Option<Child>,
    pub socket: PathBuf,
    /// Everything the service wrote to stderr (its log records).
    pub stderr: PathBuf,
}

impl Service {
    /// `quiesce serve --config CONFIG` on `<scratch>/sock/quiesce.sock`.
    pub fn start(s: &Scratch, config: &Path) -> Service {
        Self::start_with(s, config, |_| {})
    }

    /// Like [`Service::start`], with extra arguments or environment.
    pub fn start_with(s: &Scratch, config: &Path, adjust: impl FnOnce(&mut Command)) -> Service {
        Self::start_with_stderr(s, config, &s.join("serve.stderr"), adjust)
    }

    /// Like [`Service::start_with`], its stderr (its log records) going to the file `stderr`.
    pub fn start_with_stderr(s: &Scratch, config: &Path, stderr: &Path, adjust: impl FnOnce(&mut Command)) -> Service {
        let socket = s.join("sock/quiesce.sock");
        let stderr = stderr.to_path_buf();
        let mut cmd = service_cmd(s, &socket);
        cmd.arg("serve").arg("--config").arg(config);
        adjust(&mut cmd);
        let child =
            cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&stderr).expect("serve stderr")).spawn().expect("spawn quiesce serve");
        let svc = Service { child: Some(child), socket, stderr };
        svc.wait_ready();
        svc
    }

    /// Adopts a service started some other way (socket activation) that
    /// listens on `socket`.
    pub fn adopt(child: Child, socket: PathBuf, stderr: PathBuf) -> Service {
        let svc = Service { child: Some(child), socket, stderr };
        svc.wait_ready();
        svc
    }

    fn wait_ready(&self) {
        let until = Instant::now() + Duration::from_secs(60);
        while UnixStream::connect(&self.socket).is_err() {
            assert!(Instant::now() < until, "quiesce serve never listened on {}:\n{}", self.socket.display(), self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn connect(&self) -> Conn {
        Conn::connect(&self.socket)
    }

    /// One request on a fresh connection; the whole reply.
    pub fn request(&self, req: Value) -> Value {
        self.connect().call(req)
    }

    /// A `quiesce` command (begin, end, fsfreeze-hook, snapshot ...) that
    /// talks to this service and shares its run directory.
    pub fn cmd(&self, s: &Scratch) -> Command {
        service_cmd(s, &self.socket)
    }

    /// `status` until `pred` holds (10 s at most); the last status.
    pub fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let st = self.request(json!({"v":1,"id":"st","op":"status"}));
            if pred(&st) {
                return st;
            }
            assert!(Instant::now() < until, "status never showed {what}: {st}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last report (`last-report`), once a session has ended.
    pub fn last_report(&self) -> Value {
        let r = self.request(json!({"v":1,"id":"lr","op":"last-report"}));
        assert_eq!(r["ok"], true, "{r}");
        r["report"].clone()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit status (20 s at most).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > until {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

fn service_cmd(s: &Scratch, socket: &Path) -> Command {
    let mut cmd = quiesce(s);
    cmd.env("QUIESCE_SOCKET", socket).env("QUIESCE_CACHE_DIR", s.join("cache")).env("QUIESCE_STATE_DIR", s.join("state"));
    cmd
}

/// A protocol v1 connection, line by line.
pub struct Conn {
    pub stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Conn {
    pub fn connect(path: &Path) -> Conn {
        let stream = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        stream.set_read_timeout(Some(Duration::from_secs(120))).expect("read timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        Conn { stream, reader }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next reply line, parsed; None at end of stream.
    pub fn reply(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {line}"))),
        }
    }

    pub fn call(&mut self, req: Value) -> Value {
        let mut line = serde_json::to_vec(&req).expect("request");
        line.push(b'\n');
        self.send_raw(&line).expect("send request");
        self.reply().expect("a reply")
    }
}

/// The error code of a refused reply ("" when it was ok).
pub fn error_code(reply: &Value) -> &str {
    reply["error"]["code"].as_str().unwrap_or("")
}
