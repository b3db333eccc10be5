//! Native file-system freeze that can never leave a machine frozen.
//!
//! [`plan`] decides which file systems to freeze and in which order (children
//! and loop-mounted file systems before what holds them). [`Guardian`] holds
//! the freeze in a separate, signal-proof process that thaws on request, at
//! the `max_freeze` deadline, when the host dies, or on SIGTERM. [`is_frozen`]
//! asks the kernel without risking a hang, and [`thaw_mounts`]/[`thaw_all`]
//! are the guardian-less emergency exits.

mod error;
mod guardian;
pub mod mountinfo;
mod plan;
mod presync;
mod probe;
pub mod rcu;
mod thaw;

pub use error::{errno_name, FreezeError};
pub use guardian::{
    monotonic_ns, reap_in_background, AutoThaw, FreezeFailure, Frozen, Guardian, MountTiming, Spare, ThawReason, ThawTiming, Thawed,
    GUARDIAN_NAME, SPARE_CAPACITY,
};
pub use mountinfo::MountInfoEntry;
pub use plan::{plan, plan_from, FreezePlan, PlanEnv, Selection, Skipped, SystemEnv, Target};
pub use presync::{presync, SyncTiming};
/// Async-signal-safe; the containment watchdog detaches with it too.
pub(crate) use probe::detach;
pub use probe::{first_maybe_frozen, is_frozen};
pub use thaw::{thaw_all, thaw_mounts, thaw_one, ThawOutcome, ThawResult};
