wit_bindgen::generate!({ path: "wit", world: "quiesce-plugin" });

use exports::quiesce::plugin::hooks::Guest;
use quiesce::plugin::types::{HookContext, HookResult, PluginInfo, SnapshotOutcome};

struct Future;

impl Guest for Future {
    fn describe() -> PluginInfo {
        PluginInfo { name: "from-the-future".into(), version: "9.0.0".into(), quiesces: "nothing".into(), grants: vec![], params: vec![] }
    }
    fn pre(_ctx: HookContext) -> HookResult {
        HookResult::Ok(String::new())
    }
    fn post(_ctx: HookContext, _s: SnapshotOutcome) -> HookResult {
        HookResult::Ok(String::new())
    }
}

export!(Future);
