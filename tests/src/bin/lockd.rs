//! A tiny line-protocol lock service, the stand-in for a database in the
//! plugin tests and the demo.
//!
//! `lockd tcp:127.0.0.1:0` or `lockd unix:/path/lockd.sock`. Prints
//! `listening on ADDR` first, then one line per event (`conn 3 LOCK s1 -> OK`,
//! `conn 3 closed`), flushed at once, so a test can follow along.
//!
//! Protocol, one request per line:
//! - `LOCK <holder>` → `OK`, or `BUSY <holder>` if another connection holds it;
//! - `UNLOCK` → `OK` if this connection holds the lock, else `ERR not held`;
//! - `STATUS` → `LOCKED <holder> conn <n>` or `UNLOCKED`;
//! - anything else → `ERR unknown command`.
//!
//! Like a database session, the lock belongs to the connection: when the
//! connection closes the lock is released (`conn 3 closed, lock released`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Lock {
    holder: Option<(u64, String)>,
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn serve<S: std::io::Read + Write>(conn: u64, stream: S, lock: Arc<Mutex<Lock>>) {
    say(&format!("conn {conn} open"));
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let req = line.trim_end();
        let reply = {
            let mut l = lock.lock().unwrap_or_else(|p| p.into_inner());
            let (cmd, arg) = req.split_once(' ').unwrap_or((req, ""));
            match cmd {
                "LOCK" => match &l.holder {
                    Some((c, h)) if *c != conn => format!("BUSY {h}"),
                    _ => {
                        l.holder = Some((conn, arg.to_owned()));
                        "OK".to_owned()
                    }
                },
                "UNLOCK" => match &l.holder {
                    Some((c, _)) if *c == conn => {
                        l.holder = None;
                        "OK".to_owned()
                    }
                    _ => "ERR not held".to_owned(),
                },
                "STATUS" => match &l.holder {
                    Some((c, h)) => format!("LOCKED {h} conn {c}"),
                    None => "UNLOCKED".to_owned(),
                },
                _ => "ERR unknown command".to_owned(),
            }
        };
        if !req.starts_with("STATUS") {
            say(&format!("conn {conn} {req} -> {reply}"));
        }
        if writeln!(reader.get_mut(), "{reply}").and_then(|_| reader.get_mut().flush()).is_err() {
            break;
        }
    }
    let mut l = lock.lock().unwrap_or_else(|p| p.into_inner());
    if matches!(&l.holder, Some((c, _)) if *c == conn) {
        l.holder = None;
        say(&format!("conn {conn} closed, lock released"));
    } else {
        say(&format!("conn {conn} closed"));
    }
}

fn main() {
    let Some(addr) = std::env::args().nth(1) else {
        eprintln!("usage: lockd tcp:HOST:PORT | unix:/path");
        std::process::exit(2);
    };
    let lock = Arc::new(Mutex::new(Lock::default()));
    let mut next = 0u64;
    if let Some(hp) = addr.strip_prefix("tcp:") {
        let listener = TcpListener::bind(hp).unwrap_or_else(|e| panic!("bind {hp}: {e}"));
        say(&format!("listening on tcp:{}", listener.local_addr().expect("local addr")));
        for s in listener.incoming().flatten() {
            next += 1;
            let (conn, lock) = (next, lock.clone());
            std::thread::spawn(move || serve(conn, s, lock));
        }
    } else if let Some(path) = addr.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap_or_else(|e| panic!("bind {path}: {e}"));
        say(&format!("listening on unix:{path}"));
        for s in listener.incoming().flatten() {
            next += 1;
            let (conn, lock) = (next, lock.clone());
            std::thread::spawn(move || serve(conn, s, lock));
        }
    } else {
        eprintln!("lockd: {addr}: expected tcp:HOST:PORT or unix:/path");
        std::process::exit(2);
    }
}
