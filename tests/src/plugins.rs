//! Fixtures for the WebAssembly plugin tests and benchmark: the built
//! plugin components, the `lockd` line-protocol server, and a server that
//! accepts and never answers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use crate::Scratch;

/// Where `cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml` puts the components.
pub fn plugin_build_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/target/wasm32-wasip2/release")
}

/// A built plugin component; panics with the build command if it is missing.
pub fn built_plugin(name: &str) -> PathBuf {
    let p = plugin_build_dir().join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: build the plugins first with `cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml` (scripts/test does)",
        p.display()
    );
    p
}

/// Copies a built plugin into `scratch` (root-owned, mode 0644: what the
/// trust checks want) and returns its path.
pub fn install_plugin(scratch: &Scratch, name: &str) -> PathBuf {
    let dst = scratch.join(&format!("{name}.wasm"));
    install_bytes(&dst, &std::fs::read(built_plugin(name)).expect("read plugin"));
    dst
}

pub fn install_bytes(dst: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(dst);
    std::fs::write(dst, bytes).expect("write plugin");
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o644)).expect("chmod plugin");
}

/// The first hook's plugin check findings in a `quiesce check --json`
/// report: (severity, code, message). Panics when the check itself failed.
pub fn plugin_findings(report: &serde_json::Value) -> Vec<(String, String, String)> {
    let run = &report["hooks"][0]["plugin"]["check"];
    assert!(run["failed"].is_null(), "the check itself failed: {report}");
    run["findings"]
        .as_array()
        .unwrap_or_else(|| panic!("no findings: {report}"))
        .iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap_or_else(|| panic!("finding without {k}: {f}")).to_owned();
            (s("severity"), s("code"), s("message"))
        })
        .collect()
}

/// The `lockd` server (tests/src/bin/lockd.rs) as a child process, its
/// event lines collected as they come.
pub struct Lockd {
    child: Child,
    /// `tcp:127.0.0.1:PORT` or `unix:/path`, as plugins are told.
    pub target: String,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl Lockd {
    /// `listen`: `tcp:127.0.0.1:0` (any free port) or `unix:/path`.
    pub fn start(listen: &str) -> Lockd {
        // target/<profile>/deps/<test> -> target/<profile>/lockd (cargo builds a
        // package's binaries for its integration tests).
        let exe = std::env::current_exe().expect("current exe");
        let bin = exe.parent().and_then(Path::parent).map(|d| d.join("lockd")).expect("target dir");
        let mut child = Command::new(&bin)
            .arg(listen)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("lockd stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = rx.recv_timeout(Duration::from_secs(10)).expect("lockd did not start");
        let target = first.strip_prefix("listening on ").unwrap_or_else(|| panic!("lockd said {first:?}")).to_owned();
        Lockd { child, target, lines: rx, seen: Vec::new() }
    }

    /// The server's process id (a test may kill it mid-session).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for an event line containing `needle`; panics with what was seen.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!("lockd never said {needle:?} within {limit:?}; it said: {:#?}", self.seen),
            }
        }
    }

    /// One request on a fresh connection (e.g. `STATUS`), the reply line.
    pub fn request(&self, line: &str) -> String {
        fn talk<S: Read + Write>(mut s: S, line: &str) -> String {
            writeln!(s, "{line}").expect("write to lockd");
            let mut reply = String::new();
            BufReader::new(s).read_line(&mut reply).expect("read from lockd");
            reply.trim_end().to_owned()
        }
        if let Some(addr) = self.target.strip_prefix("tcp:") {
            talk(TcpStream::connect(addr).expect("connect lockd"), line)
        } else {
            let path = self.target.strip_prefix("unix:").expect("lockd target");
            talk(UnixStream::connect(path).expect("connect lockd"), line)
        }
    }
}

impl Drop for Lockd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP server that accepts and never says a word; reports `accepted` and
/// `eof` (the peer closed) per connection.
pub struct SilentServer {
    pub addr: SocketAddr,
    events: Receiver<&'static str>,
}

impl SilentServer {
    pub fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind silent server");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { break };
                let tx = tx.clone();
                if tx.send("accepted").is_err() {
                    break;
                }
                std::thread::spawn(move || {
                    let mut sink = [0u8; 1024];
                    while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
                    let _ = tx.send("eof");
                });
            }
        });
        SilentServer { addr, events: rx }
    }

    pub fn target(&self) -> String {
        format!("tcp:{}", self.addr)
    }

    /// The next event within `limit`, if any.
    pub fn next_event(&self, limit: Duration) -> Option<&'static str> {
        self.events.recv_timeout(limit).ok()
    }
}
