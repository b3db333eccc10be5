//! The Redis client against a lying server: the fuzz input is every byte
//! the "server" sends. The Redis plugin's calls (`wire_sessions::redis`);
//! the polling loops run with zero timeouts (one round each).
#![no_main]
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use quiesce_fuzz::{set_alloc_limit, LyingServer};

fuzz_target!(init: set_alloc_limit(1 << 20), |data: &[u8]| {
    wire_sessions::redis(LyingServer::new(data), Some(wire_sessions::PASSWORD), Duration::ZERO);
});
