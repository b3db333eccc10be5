//! `clock`: a monotonic clock and a sleep that counts against the call's
//! deadline (the call's timeout ends a sleep that outlasts it).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::hooks::wasm::bindings::v0_1_0::quiesce::plugin::clock;
use crate::hooks::wasm::state::HostState;

/// The fixed point plugins' monotonic time counts from (process start-ish):
/// reveals nothing about the machine's uptime.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl clock::Host for HostState {
    async fn monotonic_now_ns(&mut self) -> wasmtime::Result<u64> {
        Ok(origin().elapsed().as_nanos().min(u64::MAX as u128) as u64)
    }

    async fn sleep_ms(&mut self, ms: u64) -> wasmtime::Result<()> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    }
}
