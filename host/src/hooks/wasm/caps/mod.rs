//! quiesce's own imports, one capability per file. Each call that touches
//! the outside world is checked against the instance's grants first; a
//! refusal is an `error` value of kind `denied` for the guest (never a trap)
//! and a `GrantDenial` for the report.

pub(crate) mod artifacts;
pub(crate) mod clock;
pub(crate) mod connections;
pub(crate) mod exec;
pub(crate) mod files;
pub(crate) mod log;

use super::bindings::v0_1_0::quiesce::plugin::types::{self, Error, ErrorKind};
use super::state::HostState;

impl types::Host for HostState {}

pub(crate) fn error(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error { kind, message: message.into() }
}

/// Maps an I/O error to what the guest sees, prefixed with what was attempted.
pub(crate) fn io_error(what: &str, e: &std::io::Error) -> Error {
    use std::io::ErrorKind as K;
    let kind = match e.kind() {
        K::NotFound => ErrorKind::NotFound,
        K::ConnectionRefused | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => ErrorKind::Refused,
        K::InvalidInput => ErrorKind::Invalid,
        _ => ErrorKind::Io,
    };
    error(kind, format!("{what}: {e}"))
}
