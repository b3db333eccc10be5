//! Hooks: the application-specific work done before the freeze (quiesce)
//! and after the thaw (resume).
//!
//! Each kind of hook lives in its own module and reports what happened in
//! its own terms; the session maps those outcomes to report codes.
//! [`script`] runs legacy shell-script hooks; [`wasm`] runs sandboxed
//! WebAssembly plugins.

pub mod script;
pub mod wasm;
