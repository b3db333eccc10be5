//! The MariaDB/MySQL client against a lying server: the fuzz input is every
//! byte the "server" sends. Handshake, authentication (native password,
//! auth switch), then the MariaDB plugin's queries (`wire_sessions::mariadb`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use quiesce_fuzz::{set_alloc_limit, LyingServer};

fuzz_target!(init: set_alloc_limit(1 << 20), |data: &[u8]| {
    wire_sessions::mariadb(LyingServer::new(data), &wire_sessions::mariadb_config("root"));
});
