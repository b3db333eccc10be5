//! Where a session's time goes: a lap clock over its steps, reported as
//! `report.steps` so that an admin (or a bench) sees which step made a
//! session slow — the lock, the catalog, the probe, the pre hooks, the
//! freeze — without a profiler.

use std::time::{Duration, Instant};

use crate::duration::ms;
use crate::report::StepTime;

/// Most steps a report lists: a session has about a dozen; the cap only
/// keeps a future loop from growing the report.
const MAX_STEPS: usize = 32;

pub(super) struct Steps {
    last: Instant,
    done: Vec<StepTime>,
}

impl Steps {
    pub fn start(at: Instant) -> Steps {
        Steps { last: at, done: Vec::new() }
    }

    /// A step measured elsewhere (before the clock started).
    pub fn add(&mut self, name: &'static str, took: Duration) {
        if self.done.len() < MAX_STEPS {
            self.done.push(StepTime { step: name, ms: ms(took) });
        }
    }

    /// The step `name` ended now (it began where the last one ended).
    pub fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        if self.done.len() < MAX_STEPS {
            self.done.push(StepTime { step: name, ms: ms(now.saturating_duration_since(self.last)) });
        }
        self.last = now;
    }

    pub fn into_vec(self) -> Vec<StepTime> {
        self.done
    }
}
