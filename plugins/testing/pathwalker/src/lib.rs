//! A plugin that walks where its params say, for the host's path-safety
//! tests (tests/tests/sandbox_paths.rs). In `pre` it tries, in order:
//! every path in `read` (`;`-separated), every target in `connect`, every
//! `NAME:BYTES` in `store` — and reports one line per try, so one instance
//! proves that a refusal leaves it alive for the next call.

use quiesce_plugin_sdk::{artifacts, files, Connection, Context, Error, HookResult, Info, Plugin, Snapshot};

#[derive(Default)]
struct Pathwalker;

fn failed(e: &Error) -> String {
    format!("{:?}: {}", e.kind, e.message)
}

fn list<'a>(ctx: &'a Context, name: &str) -> impl Iterator<Item = &'a str> {
    ctx.param_or(name, "").split(';').filter(|s| !s.is_empty())
}

impl Plugin for Pathwalker {
    fn describe() -> Info {
        Info::new("pathwalker", env!("CARGO_PKG_VERSION"))
            .quiesces("nothing: tries paths for tests")
            .param("read", "paths to read-file, `;`-separated", Some(""))
            .param("connect", "targets to connect to, `;`-separated", Some(""))
            .param("store", "artifacts to store, `NAME:BYTES;…`", Some(""))
    }

    fn pre(&mut self, ctx: &Context) -> HookResult {
        let mut lines = Vec::new();
        for p in list(ctx, "read") {
            lines.push(match files::read(p) {
                Ok(data) => format!("read {p}: ok {} bytes: {}", data.len(), String::from_utf8_lossy(&data[..data.len().min(64)])),
                Err(e) => format!("read {p}: {}", failed(&e)),
            });
        }
        for t in list(ctx, "connect") {
            lines.push(match Connection::open(t) {
                Ok(_) => format!("connect {t}: ok"),
                Err(e) => format!("connect {t}: {}", failed(&e)),
            });
        }
        for spec in list(ctx, "store") {
            let (name, size) = spec.split_once(':').unwrap_or((spec, "0"));
            let size: usize = size.parse().unwrap_or(0);
            lines.push(match artifacts::store(name, &vec![b'x'; size]) {
                Ok(()) => format!("store {name}: ok"),
                Err(e) => format!("store {name}: {}", failed(&e)),
            });
        }
        HookResult::ok(lines.join("\n"))
    }

    fn post(&mut self, _ctx: &Context, _snapshot: &Snapshot) -> HookResult {
        HookResult::ok("post")
    }
}

quiesce_plugin_sdk::register!(Pathwalker);
