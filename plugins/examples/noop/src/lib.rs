//! The smallest plugin: does nothing, successfully. Used by the benchmark
//! to measure what the host itself costs per hook.

use quiesce_plugin_sdk::{Context, HookResult, Info, Plugin, Snapshot};

#[derive(Default)]
struct Noop;

impl Plugin for Noop {
    fn describe() -> Info {
        Info::new("noop", env!("CARGO_PKG_VERSION")).quiesces("nothing")
    }
    fn pre(&mut self, _ctx: &Context) -> HookResult {
        HookResult::ok("")
    }
    fn post(&mut self, _ctx: &Context, _snapshot: &Snapshot) -> HookResult {
        HookResult::ok("")
    }
}

quiesce_plugin_sdk::register!(Noop);
