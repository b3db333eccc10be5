//! quiesce's own imports, one capability per file. Each call that touches
//! the outside world is checked against the instance's grants first; a
//! refusal is an `error` value of kind `denied` for the guest (never a trap)
//! and a `GrantDenial` for the report.
//!
//! Every WIT version imports the same capabilities with the same shapes, so
//! each is written once here, on the host's own types ([`Error`],
//! [`ErrorKind`]); `versions` glues them to each version's generated traits.

pub(crate) mod artifacts;
pub(crate) mod clock;
pub(crate) mod connections;
pub(crate) mod exec;
pub(crate) mod files;
pub(crate) mod log;
mod versions;

/// Why a capability call failed (the WIT's `error-kind`, in every version).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    Denied,
    NotFound,
    Refused,
    Invalid,
    TooLarge,
    Io,
}

/// What a capability returns instead of a result (the WIT's `error`).
#[derive(Clone, Debug)]
pub(crate) struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

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
