//! The session's one flow, in two halves that every entry point shares.
//!
//! [`Session::begin`] takes the lock, validates, runs the pre hooks and (for
//! a native freeze) freezes through the guardian; the [`Begun`] it returns
//! holds all of that — the lock, the hooks with their plugin instances (and
//! the database sessions they hold), the guardian. [`Begun::end`] is the
//! second half: thaw if quiesce froze, post hooks, artifacts, report.
//!
//! The one-shot `quiesce snapshot` ([`Session::run`]) is begin → the
//! configured provider → end; the service's `begin`/`end` ops call the same
//! two halves with the snapshot taken by somebody else in between. Every
//! session, however it ends (a client's `end`, an abort, the service's hold
//! deadline, an early refusal), makes its report in one place:
//! [`Begun::finish`]. Whatever must happen "after every session" goes there.
//!
//! Dropping a `Begun` without `end`/`abort` is safe but not clean: the
//! guardian thaws (its `Drop`), plugin instances are dropped (their
//! connections close, so a database releases its lock), a pre script's
//! leftovers are killed and the lock is released — but no post hook runs
//! and no report is made. The service therefore always ends what it begun.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::hooks::PhaseContext;
use super::record::Run;
use super::steps::Steps;
use super::{check_holds, note_dropped, Fallback, ReadyHook, Session, SessionPhase};
use crate::config::OnFailure;
use crate::duration;
use crate::freeze::{self, Guardian};
use crate::interrupt::Interrupt;
use crate::logging;
use crate::report::{ErrorCode, Phase, Report, ReportError};
use crate::rundir::{LockError, SessionLock};

/// Who freezes the file systems in a two-phase session (also `quiesce
/// begin --freeze`'s values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FreezeMode {
    /// quiesce freezes (FIFREEZE through the guardian) the planned mounts.
    Native,
    /// Someone else freezes (qemu-ga, the Azure extension): quiesce freezes
    /// nothing and trusts that freeze for the label.
    External,
    /// Nobody freezes.
    None,
}

impl FreezeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FreezeMode::Native => "native",
            FreezeMode::External => "external",
            FreezeMode::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<FreezeMode> {
        match s {
            "native" => Some(FreezeMode::Native),
            "external" => Some(FreezeMode::External),
            "none" => Some(FreezeMode::None),
            _ => None,
        }
    }
}

/// How a two-phase session begins.
#[derive(Clone, Copy, Debug)]
pub struct BeginOptions {
    pub freeze: FreezeMode,
}

/// What the agent that took the snapshot says at `end`.
#[derive(Clone, Debug, Default)]
pub struct SnapshotOutcome {
    pub taken: bool,
    /// What the snapshot is known by (a cloud snapshot id); lands in `report.snapshot.ids`.
    pub ids: Vec<String>,
}

/// Why a session ends without the agent saying how the snapshot went.
#[derive(Clone, Debug)]
pub enum Abort {
    /// The client asked (`abort`, or a failed freeze on its side).
    Client(String),
    /// The client's connection closed while the session was bound to it.
    Disconnected,
    /// The client was gone before its `begin` could be answered (killed by
    /// its agent's timeout during the pre hooks): it never learned the
    /// session began, and its agent may have frozen without it.
    Undelivered,
    /// Nobody called `end` within the hold deadline.
    HoldExpired { hold_secs: f64 },
    /// The embedding process is stopping (its interrupt fired): the report
    /// says `Interrupted`, with the signal.
    Interrupted,
}

/// Most snapshot ids an `end` may name, and the longest one kept: the
/// report (kept as the service's last report) must stay small.
pub const MAX_SNAPSHOT_IDS: usize = 16;
pub const MAX_SNAPSHOT_ID_BYTES: usize = 1024;

/// The first half of a session, done: see the module doc.
pub struct Begun {
    s: Session,
    /// None for the one-shot session (its report has no `mode`).
    mode: Option<FreezeMode>,
    /// None when the lock could not be taken (someone else's session).
    lock: Option<SessionLock>,
    r: Run,
    steps: Steps,
    hooks: Vec<ReadyHook>,
    /// Hooks whose pre phase was reached: they are owed their post.
    entered: usize,
    guardian: Option<Guardian>,
    /// The freeze step was reached (the pre hooks did not abort).
    reached_freeze: bool,
    /// The snapshot may be taken now.
    proceed: bool,
    /// A native freeze was planned (it may have failed).
    freeze_required: bool,
    freeze_ok: bool,
    interrupt: Interrupt,
    interrupted: Option<String>,
    /// Guardian clock when the snapshot could start.
    ready_ns: u64,
    /// An external session may let its held log out at the end: the
    /// agent's freeze is over (see `begin_inner`).
    external_thawed: bool,
}

impl Session {
    /// The first half of a two-phase session: lock, validate, pre hooks,
    /// and with [`FreezeMode::Native`] the freeze. The snapshot is then the
    /// caller's business; [`Begun::end`] finishes. With `External`/`None`
    /// nothing is frozen and the config's freeze plan is not used.
    pub async fn begin(mut self, opts: BeginOptions, interrupt: Interrupt) -> Begun {
        if opts.freeze != FreezeMode::Native {
            self.plan = None;
        }
        self.begin_inner(Some(opts.freeze), interrupt).await
    }

    /// Runs the whole session and reports: begin, the configured provider,
    /// end. Never panics on outside input; every path thaws what it froze
    /// and runs the post hooks it owes.
    pub async fn run(self, interrupt: Interrupt) -> Report {
        let mut begun = self.begin_inner(None, interrupt).await;
        if begun.proceed {
            let mut interrupt = begun.interrupt.clone();
            begun.interrupted = begun.s.snapshot(begun.guardian.as_mut(), &mut begun.r, &mut interrupt).await;
            begun.steps.lap("snapshot");
        }
        begun.finish().await
    }

    async fn begin_inner(self, mode: Option<FreezeMode>, interrupt: Interrupt) -> Begun {
        let steps = Steps::start(self.planned_in);
        let r = Run::new(&self, mode == Some(FreezeMode::External));
        let mut b = Begun {
            s: self,
            mode,
            lock: None,
            r,
            steps,
            hooks: Vec::new(),
            entered: 0,
            guardian: None,
            reached_freeze: false,
            proceed: false,
            freeze_required: false,
            freeze_ok: false,
            interrupt,
            interrupted: None,
            ready_ns: 0,
            external_thawed: false,
        };
        let span = tracing::info_span!("session", id = %b.s.id);
        let _enter = span.enter();
        match b.s.run_dir.lock() {
            Ok(lock) => b.lock = Some(lock),
            Err(e) => {
                let code = match e {
                    LockError::Busy { .. } => ErrorCode::BackupOperationInProgress,
                    LockError::Io { .. } | LockError::Untrusted { .. } => ErrorCode::IncorrectPluginhostFile,
                };
                tracing::error!("{e}");
                b.r.error(code, e.to_string());
                b.steps.lap("lock");
                return b;
            }
        }
        tracing::info!(
            "session {} starting{} (config: {})",
            b.s.id,
            mode.map(|m| format!(" (two-phase, freeze {})", m.as_str())).unwrap_or_default(),
            b.s.config_path.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in default".into())
        );
        b.s.record_state(&b.r, SessionPhase::Validating, &[], None);
        b.steps.lap("lock");
        if let Some((e, fallback)) = &b.s.config_error {
            // The hooks it names cannot run, so no application was quiesced.
            tracing::error!("{}", e.message);
            b.r.errors.push(e.clone());
            b.r.apps_quiesced = false;
            if *fallback == Fallback::NoSnapshot {
                return b;
            }
        }

        // Room for this session's recovery point, before anything is quiesced.
        let takes_snapshot = mode.is_some() || b.s.provider.is_some();
        let room = crate::points::check_room(&b.s.state_dir, &b.s.config.points, takes_snapshot, &mut b.r.warnings);
        b.steps.lap("catalog");
        if let Err(e) = room {
            b.r.errors.push(e);
            return b;
        }

        // 1. Whether the freeze can happen, then every script and plugin
        // validated, before anything runs or freezes.
        let freeze_problems = b.s.freeze_problems();
        b.steps.lap("probe");
        b.freeze_ok = freeze_problems.is_empty();
        b.r.errors.extend(freeze_problems);
        let refuse_freeze = !b.freeze_ok && b.s.config.freeze.on_failure == OnFailure::Abort;

        // 2. Before the pre hooks take their locks, what need not be inside
        // them: the bulk of the dirty data is written out and the guardian
        // is started (it waits, holding nothing frozen, until the freeze).
        // A database paused from its pre until its post stalls its writers
        // through every step in between. Neither runs a hook, so both come
        // before the wait for the plugins, which have been loading on a
        // thread of their own since `prepare`.
        let mut standby = None;
        if b.freeze_ok {
            if let (Some(plan), Some(lock)) = (b.s.plan.as_ref(), b.lock.as_ref()) {
                freeze::presync(&plan.targets);
                b.steps.lap("presync");
                let spare = b.s.spare_guardian.take();
                standby = Some(b.s.start_guardian(spare, plan, lock, &mut b.r));
                b.steps.lap("guardian");
            }
        }

        b.hooks = b.s.validate_hooks();
        b.steps.lap("plugins");
        for h in &b.hooks {
            if let Some(e) = h.refused() {
                tracing::error!("hook {} refused: {}", h.spec.name, e.message);
            }
            for w in &h.warnings {
                tracing::warn!("hook {}: {w}", h.spec.name);
                b.r.warnings.push(format!("hook {}: {w}", h.spec.name));
            }
        }
        if refuse_freeze {
            tracing::error!("freeze is impossible and the policy is to abort: no hook runs, no snapshot");
            for h in &b.hooks {
                b.r.skipped(&h.spec.name, h.kind(), "freeze impossible; session aborted before any hook");
            }
            return b;
        }

        // 3. Pre hooks, in order.
        b.s.record_state(&b.r, SessionPhase::Pre, &[], None);
        let mut abort = false;
        let pre_ctx = PhaseContext { session_id: &b.s.id, snapshot: None };
        for h in b.hooks.iter_mut() {
            if let Some(why) = b.interrupt.fired() {
                tracing::warn!("{why}: no further pre hooks");
                break;
            }
            b.entered += 1;
            if !h.run(Phase::Pre, &pre_ctx, &mut b.r).await {
                b.r.apps_quiesced = false;
                if h.spec.on_failure == OnFailure::Abort {
                    tracing::error!("hook {} failed and its policy is abort: no snapshot", h.spec.name);
                    abort = true;
                    break;
                }
            }
        }
        for h in &b.hooks[b.entered..] {
            b.r.skipped(&h.spec.name, h.kind(), if abort { "an earlier hook aborted the session" } else { "session interrupted" });
        }
        b.steps.lap("pre");

        // 4. Freeze (the snapshot and the thaw follow in the second half).
        b.interrupted = b.interrupt.fired();
        if abort || b.interrupted.is_some() {
            return b;
        }
        b.reached_freeze = true;
        if let (Some(guardian), Some(plan)) = (standby, b.s.plan.as_ref()) {
            match guardian.and_then(|g| b.s.freeze(plan, g, &mut b.r)) {
                Some(g) => b.guardian = Some(g),
                None => b.freeze_ok = false,
            }
        }
        b.freeze_required = b.s.plan.is_some();
        if b.freeze_required {
            b.steps.lap("freeze");
        }
        if b.freeze_required && !b.freeze_ok && b.s.config.freeze.on_failure == OnFailure::Abort {
            tracing::error!("freeze failed and the policy is abort: no snapshot");
            return b;
        }
        // Frozen, the disk is pinned: what a plugin held must have lasted
        // until now. Not frozen: until the snapshot is done (checked in the
        // second half).
        if b.guardian.is_some() {
            check_holds(&b.hooks[..b.entered], &mut b.r, "the freeze");
        } else if mode.is_some() {
            b.s.record_state(&b.r, SessionPhase::Begun, &[], None);
        }
        b.proceed = true;
        b.ready_ns = freeze::monotonic_ns();
        if mode == Some(FreezeMode::External) {
            // Someone else is about to freeze file systems we cannot see —
            // maybe the one with the log file. Until the agent says it is
            // done, log records stay in memory, as during a native freeze:
            // a blocked log write would stall the whole service.
            logging::gate().hold_for_agent();
        }
        b
    }
}

impl Begun {
    pub fn session_id(&self) -> &str {
        &self.s.id
    }

    /// The snapshot may be taken now. False: the session cannot go on (a
    /// pre hook or the freeze failed under the abort policy, the lock was
    /// busy, ...); call [`Begun::end`] at once (the snapshot outcome is
    /// ignored) to run the post hooks and get the report.
    pub fn proceed(&self) -> bool {
        self.proceed
    }

    /// False when the session lock could not be taken (another session,
    /// from the service or the one-shot CLI, is running): nothing ran.
    pub fn holds_lock(&self) -> bool {
        self.lock.is_some()
    }

    /// None for a one-shot session.
    pub fn mode(&self) -> Option<FreezeMode> {
        self.mode
    }

    /// What quiesce froze and holds frozen now (empty unless native).
    pub fn frozen(&self) -> Vec<PathBuf> {
        if self.guardian.is_none() {
            return Vec::new();
        }
        self.r.freeze.mounts.iter().map(|m| m.path.clone()).collect()
    }

    /// The errors so far (pre hooks, freeze), as the report will list them.
    pub fn errors(&self) -> &[ReportError] {
        &self.r.errors
    }

    /// The session's max-freeze (the guardian thaws on its own after it).
    pub fn max_freeze(&self) -> std::time::Duration {
        self.s.max_freeze
    }

    /// When the first half started, in Unix ms.
    pub fn begun_unix_ms(&self) -> u128 {
        self.r.started_unix_ms
    }

    /// The second half: the agent says what became of the snapshot; thaw if
    /// quiesce froze, post hooks, report.
    pub async fn end(mut self, outcome: SnapshotOutcome) -> Report {
        self.steps.lap("held");
        self.external_thawed = true;
        if self.proceed {
            self.record_snapshot(outcome);
        } else if outcome.taken {
            let w = "the client said a snapshot was taken, but the session had not proceeded (see the errors): it is not counted".into();
            tracing::warn!("{w}");
            self.r.warnings.push(w);
        }
        self.finish().await
    }

    /// Ends the session without a snapshot: thaw, post hooks (told the
    /// snapshot was not taken), a report naming why.
    pub async fn abort(mut self, why: Abort) -> Report {
        self.steps.lap("held");
        // A client's abort comes from the agent, before or after its own
        // freeze; expiry, a lost connection or a stop may come while the
        // agent still holds file systems frozen.
        self.external_thawed = matches!(why, Abort::Client(_));
        let (code, message) = match why {
            Abort::Client(reason) => (Some(ErrorCode::SessionAborted), format!("the client aborted the session: {reason}")),
            Abort::Disconnected => (
                Some(ErrorCode::SessionAborted),
                "the client's connection closed before `end` and the session was bound to it: aborted".to_string(),
            ),
            Abort::Undelivered => (
                Some(ErrorCode::SessionAborted),
                "the client was gone before its `begin` was answered (its agent's timeout for the pre hooks?): nobody \
                 knew the session began, so the service aborted it"
                    .to_string(),
            ),
            Abort::HoldExpired { hold_secs } => (
                Some(ErrorCode::SessionHoldExpired),
                format!(
                    "nobody ended the session within its hold deadline ({hold_secs:.3} s): the service ended it \
                     (thawed what it froze, ran the post hooks with snapshot_taken = false)"
                ),
            ),
            // `finish` reports the interrupt itself.
            Abort::Interrupted => (None, String::new()),
        };
        if let Some(code) = code {
            tracing::error!("{message}");
            self.r.error(code, message);
        }
        if self.proceed {
            self.record_snapshot(SnapshotOutcome { taken: false, ids: Vec::new() });
        }
        self.finish().await
    }

    /// What the agent said about the snapshot it took between the halves.
    fn record_snapshot(&mut self, outcome: SnapshotOutcome) {
        let now = freeze::monotonic_ns();
        self.r.snapshot_ns = now.saturating_sub(self.ready_ns);
        self.r.snapshot.duration_ms = duration::ms_between_ns(self.ready_ns, now);
        self.r.snapshot.provider = Some("the agent that ended the two-phase session".into());
        for id in outcome.ids.into_iter().take(MAX_SNAPSHOT_IDS) {
            let mut id = id;
            if id.len() > MAX_SNAPSHOT_ID_BYTES {
                let mut cut = MAX_SNAPSHOT_ID_BYTES;
                while !id.is_char_boundary(cut) {
                    cut -= 1;
                }
                id.truncate(cut);
            }
            self.r.snapshot.ids.push(id);
        }
        if outcome.taken {
            self.r.snapshot_taken = true;
        } else if !self.r.errors.iter().any(|e| matches!(e.code, ErrorCode::SessionAborted | ErrorCode::SessionHoldExpired))
            && self.interrupt.fired().is_none()
        {
            self.r.error(ErrorCode::SnapshotFailed, "the agent that took the snapshot said it failed".into());
        }
    }

    /// The one place every session ends: thaw, post hooks, artifacts, the
    /// report, the state file and the lock. Whatever must happen after
    /// every session (one-shot or two-phase, ended, aborted, expired or
    /// refused) belongs here.
    async fn finish(self) -> Report {
        let Begun {
            s,
            mode,
            lock,
            mut r,
            mut steps,
            mut hooks,
            entered,
            mut guardian,
            reached_freeze,
            proceed,
            freeze_required,
            freeze_ok,
            interrupt,
            interrupted,
            ready_ns: _,
            external_thawed,
        } = self;
        let span = tracing::info_span!("session", id = %s.id);
        let _enter = span.enter();

        let agent_may_hold_frozen = proceed && mode == Some(FreezeMode::External) && !external_thawed;
        if proceed && mode == Some(FreezeMode::External) {
            if external_thawed {
                // The agent says its freeze is over.
                note_dropped(&mut r, logging::gate().release());
            } else {
                r.warnings.push(
                    "the agent may still hold file systems frozen: log records stay in memory (capped) until a later \
                     session finds the log's file system thawed"
                        .into(),
                );
            }
        }

        // 3b. Thaw.
        if reached_freeze {
            if proceed && guardian.is_none() {
                check_holds(&hooks[..entered], &mut r, "the snapshot");
            }
            if let Some(g) = guardian.take() {
                s.thaw(g, &mut r);
                steps.lap("thaw");
            }
            r.frozen_throughout = match mode {
                // The external freezer's freeze is trusted: it froze if the snapshot was taken.
                Some(FreezeMode::External) => r.snapshot_taken,
                _ => freeze_required && freeze_ok && r.freeze.auto_thawed.is_none(),
            };
        }

        // A hold an earlier external session left (aborted or expired, its
        // agent's freeze unknown): once this session froze nothing it has not
        // thawed, written out if the log's file system is thawed. Not before
        // the thaw: inside a native freeze the gate holds by design.
        if !agent_may_hold_frozen && r.freeze.still_frozen.is_empty() {
            if let Some(d) = logging::gate().release_unless_frozen() {
                note_dropped(&mut r, d);
            }
        }

        // 4. Post hooks, in reverse order, for every hook whose turn came in pre.
        if lock.is_some() && r.freeze.still_frozen.is_empty() {
            s.record_state(&r, SessionPhase::Post, &[], None);
        }
        let post_ctx = PhaseContext { session_id: &s.id, snapshot: Some((r.snapshot_taken, r.label(&s))) };
        for h in hooks[..entered].iter_mut().rev() {
            h.run(Phase::Post, &post_ctx, &mut r).await;
        }
        s.store_artifacts(&hooks, &mut r);
        // The label is final now: record it on what the provider made (cloud tags).
        if let Some(made) = &r.snapshot.made {
            if let Err(e) = crate::snapshot::finalize(made, r.label(&s)).await {
                r.warnings.push(format!("the snapshot keeps the label `Pending`: recording the final one failed: {e}"));
            }
        }
        // Plugin instances' connections (and a pre script's leftovers) end
        // here, before the lock is released.
        for h in hooks {
            h.close();
        }
        steps.lap("post");
        r.interrupted_by = interrupted.or_else(|| interrupt.fired());
        if let Some(sig) = &r.interrupted_by {
            r.error(ErrorCode::Interrupted, format!("session interrupted by {sig}; thawed and ran post hooks before exiting"));
        }
        let mut report = r.finish(&s);
        report.mode = mode;
        // The point keeps the report as it was before it was recorded; the
        // report returned adds the recording.
        steps.fill(&mut report);
        crate::points::record_session(&s.state_dir, &s.config.points, &mut report);
        steps.lap("record");
        steps.fill(&mut report);
        // After the point, so that a PointNotRecorded error is counted too.
        // An agent's freeze may still be on: this session's, or an earlier
        // one's that nobody has seen end.
        let unsure = agent_may_hold_frozen || logging::gate().held_for_agent();
        let metrics_warnings = crate::metrics::publish(s.config.metrics.as_ref(), &report, &s.state_dir, unsure);
        report.warnings.extend(metrics_warnings);
        if let Some(lock) = lock {
            // A mount still frozen keeps its state file: `status` shows it,
            // and the guardian holds the lock until its retries succeed.
            if report.freeze.still_frozen.is_empty() {
                s.run_dir.clear_state();
                drop(lock);
            } else {
                lock.leave_to_guardian();
            }
        }
        report
    }
}
