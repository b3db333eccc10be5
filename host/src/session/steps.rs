//! Where a session's time goes: a lap clock over its steps, reported as
//! `report.steps` so that an admin (or a bench) sees which step made a
//! session slow — the lock, the catalog, the probe, the pre hooks, the
//! freeze — without a profiler. The report's `duration_ms` is the same
//! clock's total, so the steps add up to it.

use std::time::{Duration, Instant};

use crate::duration::ms;
use crate::report::{Report, StepTime};

/// Most steps a report lists: a session has about a dozen; the cap only
/// keeps a future loop from growing the report.
const MAX_STEPS: usize = 32;

pub(super) struct Steps {
    started: Instant,
    /// Measured before the clock started: planning, in `prepare`.
    planned: Duration,
    last: Instant,
    done: Vec<StepTime>,
}

impl Steps {
    /// Starts the clock now, after a `prepare` that took `planned` (the first step).
    pub fn start(planned: Duration) -> Steps {
        let now = Instant::now();
        let mut steps = Steps { started: now, planned, last: now, done: Vec::new() };
        steps.push("plan", planned);
        steps
    }

    /// The step `name` ended now (it began where the last one ended).
    pub fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        self.push(name, now.saturating_duration_since(self.last));
        self.last = now;
    }

    fn push(&mut self, name: &'static str, took: Duration) {
        if self.done.len() < MAX_STEPS {
            self.done.push(StepTime { step: name, ms: ms(took) });
        }
    }

    /// Writes the steps so far into `report`, and as its `duration_ms` their
    /// whole: planning to the last lap.
    pub fn fill(&self, report: &mut Report) {
        report.steps = self.done.clone();
        report.duration_ms = ms(self.planned + self.last.saturating_duration_since(self.started));
    }
}
