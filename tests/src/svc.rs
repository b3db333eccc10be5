//! `quiesce serve` as a test peer: started on a private socket with its run,
//! cache, state and log directories in the test's scratch dir, and a
//! line-JSON client for its protocol (PROTOCOL v1: one object per line,
//! replies carry the request's id).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{quiesce, Scratch};

/// A running `quiesce serve`; SIGKILLed on drop (the guardian thaws what it froze).
pub struct Service {
    child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Service {
    /// `quiesce serve --config CONFIG --socket <scratch>/quiesce.sock`, waits
    /// until the socket accepts.
    pub fn start(scratch: &Scratch, config: &Path) -> Service {
        let socket = scratch.join("quiesce.sock");
        let log = scratch.join("quiesce.log");
        let _ = std::fs::remove_file(&socket);
        let mut child = quiesce(scratch)
            .env("QUIESCE_CACHE_DIR", scratch.join("cache"))
            .env("QUIESCE_STATE_DIR", scratch.join("state"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--socket")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn quiesce serve");
        let until = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&socket).is_err() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("quiesce serve exited with {st} before listening; log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            assert!(Instant::now() < until, "quiesce serve never listened on {}", socket.display());
            std::thread::sleep(Duration::from_millis(10));
        }
        Service { child, socket, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One connection to the service.
pub struct Client {
    conn: BufReader<UnixStream>,
    next_id: u64,
}

impl Client {
    pub fn connect(socket: &Path) -> Client {
        let s = UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
        s.set_read_timeout(Some(Duration::from_secs(120))).expect("read timeout");
        Client { conn: BufReader::new(s), next_id: 1 }
    }

    /// Sends `{"v":1,"id":N,"op":op,...args}` and returns the reply object
    /// (`ok` true or false).
    pub fn request(&mut self, op: &str, args: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = json!({ "v": 1, "id": id, "op": op });
        if let (Some(r), Some(a)) = (req.as_object_mut(), args.as_object()) {
            r.extend(a.clone());
        }
        writeln!(self.conn.get_mut(), "{req}").expect("write to the service");
        let mut line = String::new();
        let n = self.conn.read_line(&mut line).unwrap_or_else(|e| panic!("no reply to {op}: {e}"));
        assert!(n > 0, "the service closed the connection during {op}");
        let reply: Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("reply to {op} is not JSON ({e}): {line:?}"));
        assert_eq!(reply["id"], json!(id), "reply to {op} carries another id: {reply}");
        reply
    }

    /// `request`, panicking unless `ok` is true.
    pub fn ok(&mut self, op: &str, args: Value) -> Value {
        let reply = self.request(op, args);
        assert_eq!(reply["ok"], true, "{op} failed: {reply}");
        reply
    }
}
