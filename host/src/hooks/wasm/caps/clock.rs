//! `clock`: a monotonic clock and a sleep that counts against the call's
//! deadline. The call's timeout ends a sleep that outlasts it; the sleep
//! itself is also bounded to just past the deadline, so a plugin's
//! `sleep-ms(u64::MAX)` never becomes a host timer for the ages.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::hooks::wasm::state::HostState;

const PAST_DEADLINE: Duration = Duration::from_secs(1);

/// The fixed point plugins' monotonic time counts from (process start-ish):
/// reveals nothing about the machine's uptime.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl HostState {
    pub(crate) async fn clock_monotonic_now_ns(&mut self) -> wasmtime::Result<u64> {
        Ok(origin().elapsed().as_nanos().min(u64::MAX as u128) as u64)
    }

    pub(crate) async fn clock_sleep_ms(&mut self, ms: u64) -> wasmtime::Result<()> {
        let wanted = Duration::from_millis(ms);
        // Past the deadline, not at it: the call's timeout must fire first,
        // so the outcome is "timed out", never a sleep that returned in time.
        let bound = self.deadline.map_or(wanted, |d| d.saturating_duration_since(Instant::now()).saturating_add(PAST_DEADLINE));
        tokio::time::sleep(wanted.min(bound)).await;
        Ok(())
    }
}
