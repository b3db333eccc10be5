//! A plugin that misbehaves on purpose, for the host's tests. The `mode`
//! param picks the misbehaviour; `target`, `path`, `exec` and `args` feed it.

use std::io::{Read, Write};

use quiesce_plugin_sdk::{artifacts, clock, exec, files, info, log, Connection, Context, Error, HookResult, Info, Plugin, Snapshot};

#[derive(Default)]
struct Misbehave {
    conn: Option<Connection>,
}

fn fail(e: Error) -> HookResult {
    HookResult::fatal(format!("{:?}: {}", e.kind, e.message))
}

/// Connects to `target` if given and keeps the connection in `self`.
fn hold(this: &mut Misbehave, ctx: &Context) -> Result<(), Error> {
    if let Some(t) = ctx.param("target") {
        let mut c = Connection::open(t)?;
        c.write_all(b"HELLO\n")?;
        this.conn = Some(c);
    }
    Ok(())
}

impl Plugin for Misbehave {
    fn describe() -> Info {
        Info::new("misbehave", env!("CARGO_PKG_VERSION")).quiesces("nothing: misbehaves for tests").param(
            "mode",
            "which misbehaviour",
            None,
        )
    }

    fn pre(&mut self, ctx: &Context) -> HookResult {
        match ctx.param_or("mode", "ok") {
            "ok" | "loop-post" => HookResult::ok(format!("attempt {}", ctx.attempt)),
            "retry" => HookResult::retryable(format!("attempt {}", ctx.attempt)),
            "loop" => {
                if let Err(e) = hold(self, ctx) {
                    return fail(e);
                }
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "block-read" => {
                if let Err(e) = hold(self, ctx) {
                    return fail(e);
                }
                let Some(c) = self.conn.as_mut() else { return HookResult::fatal("block-read needs a target") };
                let mut buf = [0u8; 16];
                match c.read(&mut buf) {
                    Ok(n) => HookResult::fatal(format!("read returned {n} bytes")),
                    Err(e) => HookResult::fatal(format!("read failed: {e}")),
                }
            }
            "sleep" => {
                clock::sleep(std::time::Duration::from_secs(3600));
                HookResult::fatal("woke up")
            }
            "memory-bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![0xa5; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "trap-pre" => panic!("misbehave: deliberate panic in pre"),
            "trap-post" | "hold" => match hold(self, ctx) {
                Ok(()) => HookResult::ok("holding the connection"),
                Err(e) => fail(e),
            },
            "connect" => match Connection::open(ctx.param_or("target", "")) {
                Ok(c) => {
                    self.conn = Some(c);
                    HookResult::ok("connected")
                }
                Err(e) => fail(e),
            },
            "read-file" => match files::read_to_string(ctx.param_or("path", "")) {
                Ok(s) => HookResult::ok(s),
                Err(e) => fail(e),
            },
            "exec" => {
                let args: Vec<&str> = ctx.param("args").map(|a| a.split(' ').collect()).unwrap_or_default();
                match exec::run(ctx.param_or("exec", ""), &args) {
                    Ok(o) => HookResult::ok(format!("status {} output {:?}", o.status, String::from_utf8_lossy(&o.output))),
                    Err(e) => fail(e),
                }
            }
            "artifact" => match artifacts::store("backup_label", b"START WAL LOCATION: 0/2000028") {
                Ok(()) => HookResult::ok("stored"),
                Err(e) => fail(e),
            },
            "flood" => {
                for i in 0..10_000 {
                    info!("flood line {i} ................................................................");
                    println!("stdout flood line {i} ..........................................................");
                }
                HookResult::ok("flooded")
            }
            "log" => {
                log::record(log::Level::Warn, "structured", &[("key", "value")]);
                println!("to stdout");
                eprintln!("to stderr");
                HookResult::ok("logged")
            }
            "ambient" => {
                // What std sees of the outside world: it should be nothing.
                let env = std::env::vars().count();
                let args = std::env::args().count();
                let fs = std::fs::read("/etc/hostname").is_ok();
                let net = std::net::TcpStream::connect(ctx.param_or("wasi-target", "127.0.0.1:1")).is_ok();
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                HookResult::ok(format!("env={env} args={args} fs={fs} net={net} wall={now}"))
            }
            other => HookResult::fatal(format!("unknown mode {other:?}")),
        }
    }

    fn post(&mut self, ctx: &Context, snapshot: &Snapshot) -> HookResult {
        match ctx.param_or("mode", "ok") {
            "trap-post" => panic!("misbehave: deliberate panic in post"),
            "loop-post" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "hold" => match self.conn.as_mut() {
                Some(c) => match c.write_all(b"STILL HERE\n") {
                    Ok(()) => HookResult::ok(format!("same connection, snapshot {} {}", snapshot.taken, snapshot.label)),
                    Err(e) => HookResult::fatal(e.to_string()),
                },
                None => HookResult::fatal("no connection from pre"),
            },
            _ => HookResult::ok(format!("post after {}", snapshot.label)),
        }
    }
}

quiesce_plugin_sdk::register!(Misbehave);
