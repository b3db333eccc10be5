//! quiesce: make disk snapshots of a running Linux machine
//! application-consistent.
//!
//! A [`session`] runs validate → pre hooks → freeze → snapshot → thaw → post
//! hooks → report. Each step lives in its own module; the session is the only
//! place that knows their order. Agents embed a session with
//! [`session::Session`]; the `quiesce` binary is a thin shell over it.

pub mod atomic;
pub mod check;
pub mod config;
pub mod contain;
pub mod doctor;
pub mod duration;
pub mod freeze;
pub mod hooks;
pub mod interrupt;
pub mod logging;
pub mod metrics;
pub mod points;
mod rawsys;
pub mod report;
pub mod rundir;
pub mod serde_path;
pub mod service;
pub mod session;
pub mod snapshot;
pub mod status;
pub mod trust;
