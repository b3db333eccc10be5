//! The PostgreSQL client against a lying server: the fuzz input is every
//! byte the "server" sends (see `LyingServer`). The PostgreSQL plugin's
//! session (`wire_sessions::postgres`) must end in an error or a result —
//! never a panic, a hang, or an allocation the bytes do not pay for.
#![no_main]
use libfuzzer_sys::fuzz_target;
use quiesce_fuzz::{set_alloc_limit, LyingServer};

fuzz_target!(init: set_alloc_limit(1 << 20), |data: &[u8]| {
    wire_sessions::postgres(LyingServer::new(data), &wire_sessions::pg_config("postgres"));
});
