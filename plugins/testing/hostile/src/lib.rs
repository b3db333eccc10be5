//! A plugin that attacks its host, for `tests/tests/wasm_hostile.rs`: what
//! an attacker with the WIT in hand would try to escape the sandbox or
//! exhaust the host. The `mode` param picks the attack; `n` and `size` scale
//! it. Every attack ends (when the host lets it) by saying what it saw, so
//! a test can tell "refused" from "silently allowed".
//!
//! `describe` itself is hostile too (huge strings, thousands of grants):
//! it takes no params, so it always is.

use std::hint::black_box;
use std::time::Duration;

use quiesce_plugin_sdk::{artifacts, clock, files, log, Connection, Context, HookResult, Info, Plugin, Snapshot};

#[derive(Default)]
struct Hostile;

fn n(ctx: &Context, default: u64) -> u64 {
    ctx.param("n").and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn size(ctx: &Context, default: usize) -> usize {
    ctx.param("size").and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Unbounded recursion the optimiser cannot turn into a loop (never returns: that is the attack).
#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64, pad: &mut [u8; 256]) -> u64 {
    pad[(depth % 256) as usize] = depth as u8;
    let mut next = *pad;
    black_box(&mut next);
    recurse(depth + 1, &mut next) + u64::from(next[0])
}

/// What std's WASI shows of the outside world; every line should say "denied".
fn ambient() -> String {
    let mut seen = Vec::new();
    let mut probe = |what: &str, ok: bool| seen.push(format!("{what}={}", if ok { "ALLOWED" } else { "denied" }));
    probe("read /etc/passwd", std::fs::read("/etc/passwd").is_ok());
    probe("read .", std::fs::read_dir(".").is_ok());
    probe("read /", std::fs::read_dir("/").is_ok());
    probe("write /tmp/quiesce-hostile", std::fs::write("/tmp/quiesce-hostile", b"escaped").is_ok());
    probe("tcp connect 127.0.0.1:22", std::net::TcpStream::connect("127.0.0.1:22").is_ok());
    probe("tcp listen", std::net::TcpListener::bind("127.0.0.1:0").is_ok());
    probe("udp bind", std::net::UdpSocket::bind("127.0.0.1:0").is_ok());
    probe("dns", std::net::ToSocketAddrs::to_socket_addrs("localhost:80").is_ok());
    probe("env", std::env::vars().next().is_some());
    probe("args", std::env::args().nth(1).is_some());
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    probe("wall clock", wall > 0);
    seen.join(", ")
}

impl Plugin for Hostile {
    fn describe() -> Info {
        let mut info = Info::new("x".repeat(1 << 20), "9".repeat(100_000)).quiesces("q".repeat(1 << 20));
        for i in 0..2_000 {
            info = info.grant(format!("tcp:10.0.0.1:{i}{}", "g".repeat(1000)));
        }
        for i in 0..1_000 {
            info = info.param(format!("p{i}{}", "n".repeat(1000)), "d".repeat(1000), Some("v"));
        }
        info.param("mode", "which attack", Some("ok"))
    }

    fn pre(&mut self, ctx: &Context) -> HookResult {
        match ctx.param_or("mode", "ok") {
            "ok" => HookResult::ok("harmless"),
            // Output floods: every record costs, empty ones too.
            "log-empty-flood" => {
                for _ in 0..n(ctx, 5_000_000) {
                    log::record(log::Level::Info, "", &[]);
                }
                HookResult::ok("flooded")
            }
            "log-huge" => {
                let big = "L".repeat(size(ctx, 8 << 20));
                for _ in 0..n(ctx, 4) {
                    log::record(log::Level::Error, &big, &[(&big, &big)]);
                }
                HookResult::ok("flooded")
            }
            "print-empty-flood" => {
                for _ in 0..n(ctx, 2_000_000) {
                    println!();
                    eprintln!();
                }
                HookResult::ok("flooded")
            }
            "print-endless-line" => {
                use std::io::Write;
                let chunk = vec![b'z'; 1 << 20];
                for _ in 0..n(ctx, 64) {
                    let _ = std::io::stdout().write_all(&chunk);
                }
                HookResult::ok("flooded")
            }
            // Strings the host copies out of the guest.
            "huge-ok" => HookResult::ok("o".repeat(size(ctx, 32 << 20))),
            "huge-retryable" => HookResult::retryable("r".repeat(size(ctx, 32 << 20))),
            "huge-fatal" => HookResult::fatal("é".repeat(size(ctx, 32 << 20) / 2)),
            // Denials: thousands of ungranted requests, some with huge names.
            "denial-flood" => {
                let long = "h".repeat(size(ctx, 1 << 20));
                let mut refused = 0u64;
                for i in 0..n(ctx, 10_000) {
                    let target = if i % 2 == 0 { format!("tcp:10.0.0.1:{}", 1 + i % 65535) } else { format!("unix:/{long}{i}") };
                    refused += u64::from(Connection::open(&target).is_err());
                    refused += u64::from(files::read(&format!("/etc/{long}{i}")).is_err());
                }
                HookResult::fatal(format!("{refused} requests refused"))
            }
            "huge-names" => {
                let long = "a".repeat(size(ctx, 16 << 20));
                let artifact = artifacts::store(&long, long.as_bytes()).is_err();
                let connect = Connection::open(&long).is_err();
                let file = files::read(&format!("/{long}")).is_err();
                HookResult::fatal(format!("artifact refused={artifact} connect refused={connect} file refused={file}"))
            }
            "many-artifacts" => {
                let data = vec![7u8; size(ctx, 1 << 20)];
                let mut stored = 0;
                for i in 0..n(ctx, 10_000) {
                    stored += u32::from(artifacts::store(&format!("a{i}"), &data).is_ok());
                }
                HookResult::ok(format!("{stored} artifacts stored"))
            }
            // Time: spinning in host calls, sleeping forever.
            "spin-host-calls" => {
                let mut sum = 0u64;
                loop {
                    sum = sum.wrapping_add(clock::now_ns());
                    log::record(log::Level::Trace, "", &[]);
                    black_box(sum);
                }
            }
            "sleep-forever" => {
                clock::sleep(Duration::MAX);
                HookResult::ok("woke up")
            }
            "sleep-in-steps" => {
                // Many short sleeps, each within the deadline on its own.
                for _ in 0..n(ctx, 1_000_000) {
                    clock::sleep(Duration::from_millis(50));
                }
                HookResult::ok("slept")
            }
            // Stack and memory.
            "recursion" => {
                let mut pad = [0u8; 256];
                HookResult::ok(format!("{}", recurse(0, &mut pad)))
            }
            "one-huge-allocation" => {
                let v: Vec<u8> = Vec::with_capacity(size(ctx, 1 << 30));
                HookResult::ok(format!("got {} bytes", black_box(v).capacity()))
            }
            "memory-creep" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![0x5a; 64 << 10]);
                    black_box(&hoard);
                }
            }
            // WASI the plugin was not granted: files, sockets, DNS, env, wall clock.
            "ambient" => HookResult::ok(ambient()),
            other => HookResult::fatal(format!("unknown mode {other:?}")),
        }
    }

    fn post(&mut self, _ctx: &Context, snapshot: &Snapshot) -> HookResult {
        HookResult::ok(format!("post after {}", snapshot.label))
    }
}

quiesce_plugin_sdk::register!(Hostile);
