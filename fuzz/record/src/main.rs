//! `wire-record KIND ADDR USER OUT`: runs the fuzz target's session for KIND
//! (`postgres`, `mariadb`, `redis`) against a real server at ADDR
//! (`HOST:PORT` or a Unix socket path) and writes every byte the server sent
//! to OUT, in the fuzz input format (first byte: read chunk size). Used by
//! `fuzz/record-seeds.sh`; the password is `wire_sessions::PASSWORD`.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

/// Passes everything through and keeps a copy of what was read.
struct Tee<S> {
    inner: S,
    seen: Vec<u8>,
}

impl<S: Read> Read for Tee<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

impl<S: Write> Write for Tee<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn run<S: Read + Write>(kind: &str, stream: S, user: &str) -> Result<Vec<u8>, String> {
    let mut tee = Tee { inner: stream, seen: Vec::new() };
    match kind {
        "postgres" => wire_sessions::postgres(&mut tee, &wire_sessions::pg_config(user)),
        "mariadb" => wire_sessions::mariadb(&mut tee, &wire_sessions::mariadb_config(user)),
        "redis" => wire_sessions::redis(&mut tee, Some(wire_sessions::PASSWORD), Duration::from_secs(5)),
        other => return Err(format!("unknown kind {other:?} (postgres, mariadb, redis)")),
    }
    Ok(tee.seen)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, addr, user, out] = &args[..] else {
        eprintln!("usage: wire-record postgres|mariadb|redis HOST:PORT|/socket USER OUT");
        return ExitCode::from(2);
    };
    let seen = if addr.starts_with('/') {
        UnixStream::connect(addr).map_err(|e| format!("connect {addr}: {e}")).and_then(|s| run(kind, s, user))
    } else {
        TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}")).and_then(|s| run(kind, s, user))
    };
    let seen = match seen {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wire-record: {e}");
            return ExitCode::FAILURE;
        }
    };
    // 0xff: reads of up to 256 bytes (see quiesce_fuzz::LyingServer).
    let mut bytes = vec![0xffu8];
    bytes.extend_from_slice(&seen);
    if let Err(e) = std::fs::write(out, &bytes) {
        eprintln!("wire-record: write {out}: {e}");
        return ExitCode::FAILURE;
    }
    eprintln!("wire-record: {kind}: {} bytes from the server -> {out}", seen.len());
    ExitCode::SUCCESS
}
