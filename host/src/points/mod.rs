//! Recovery points: what each session that took a snapshot leaves behind.

pub mod diff;
