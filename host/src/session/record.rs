//! What a session has learnt so far, turned into the report at the end.

use crate::report::{
    ArtifactReport, ConfigReport, Consistency, ErrorCode, Facts, FreezeReport, HookKind, HookReport, Outcome, Phase, Report, ReportError,
    SkippedMount, SnapshotReport,
};
use crate::rundir::unix_ms;

use super::Session;

/// What the session has learnt so far; turned into the report at the end.
pub(super) struct Run {
    pub started_unix_ms: u128,
    pub errors: Vec<ReportError>,
    pub warnings: Vec<String>,
    pub hooks: Vec<HookReport>,
    pub freeze: FreezeReport,
    pub snapshot: SnapshotReport,
    pub snapshot_ns: u64,
    /// Guardian clock (CLOCK_MONOTONIC) at the first FIFREEZE.
    pub first_freeze_ns: u64,
    /// Guardian clock when the freeze must end (first FIFREEZE + max_freeze).
    pub freeze_deadline_ns: u64,
    pub snapshot_taken: bool,
    pub apps_quiesced: bool,
    /// Pre hooks that ran and succeeded: with none, no application was
    /// quiesced, whatever else went well.
    pub pre_succeeded: u32,
    pub frozen_throughout: bool,
    /// A two-phase session whose file systems someone else froze: that
    /// freeze is trusted for the label (quiesce cannot see it).
    pub external_freeze: bool,
    pub interrupted_by: Option<String>,
    pub artifacts: Vec<ArtifactReport>,
}

impl Run {
    pub fn new(s: &Session, external_freeze: bool) -> Run {
        let mut freeze = FreezeReport { enabled: s.plan.is_some(), max_freeze_s: s.max_freeze.as_secs_f64(), ..Default::default() };
        if let Some(plan) = &s.plan {
            freeze.skipped = plan
                .skipped
                .iter()
                .map(|k| SkippedMount { path: k.path.clone(), fs_type: k.fs_type.clone(), reason: k.reason.clone() })
                .collect();
        }
        Run {
            started_unix_ms: unix_ms(),
            errors: Vec::new(),
            warnings: Vec::new(),
            hooks: Vec::new(),
            freeze,
            snapshot: SnapshotReport::default(),
            snapshot_ns: 0,
            first_freeze_ns: 0,
            freeze_deadline_ns: 0,
            snapshot_taken: false,
            apps_quiesced: true,
            pre_succeeded: 0,
            frozen_throughout: false,
            external_freeze,
            interrupted_by: None,
            artifacts: Vec::new(),
        }
    }

    pub fn push_hook(&mut self, h: HookReport) {
        self.hooks.push(h);
    }

    pub fn error(&mut self, code: ErrorCode, message: String) {
        self.errors.push(ReportError { code, message });
    }

    pub fn label(&self, s: &Session) -> Consistency {
        Consistency::judge(Facts {
            snapshot_taken: self.snapshot_taken,
            apps_quiesced: self.apps_quiesced
                && self.pre_succeeded > 0
                && !self.hooks.iter().any(|h| h.phase == Phase::Pre && h.outcome == Outcome::Skipped),
            freeze_enabled: s.plan.is_some() || self.external_freeze,
            frozen_throughout: self.frozen_throughout,
        })
    }

    pub fn refused(&mut self, name: &str, kind: HookKind, phase: Phase, e: ReportError) {
        if phase == Phase::Pre {
            self.errors.push(e.clone());
        }
        self.hooks.push(HookReport {
            name: name.to_string(),
            kind,
            phase,
            attempts: 0,
            outcome: Outcome::Refused,
            duration_ms: 0.0,
            exit_code: None,
            message: Some(e.message),
        });
    }

    pub fn skipped(&mut self, name: &str, kind: HookKind, why: &str) {
        for phase in [Phase::Pre, Phase::Post] {
            self.hooks.push(HookReport {
                name: name.to_string(),
                kind,
                phase,
                attempts: 0,
                outcome: Outcome::Skipped,
                duration_ms: 0.0,
                exit_code: None,
                message: Some(why.into()),
            });
        }
    }

    /// The report; its `steps` and `duration_ms` are the flow's (see `steps`).
    pub fn finish(self, s: &Session) -> Report {
        let consistency = self.label(s);
        let report = Report {
            session_id: s.id.clone(),
            consistency,
            snapshot_taken: self.snapshot_taken,
            errors: self.errors,
            warnings: self.warnings,
            hooks: self.hooks,
            freeze: self.freeze,
            snapshot: self.snapshot,
            config: Some(ConfigReport { path: s.config_path.clone(), format: s.config.format }),
            artifacts: self.artifacts,
            interrupted_by: self.interrupted_by,
            mode: None,
            duration_ms: 0.0,
            point: None,
            steps: Vec::new(),
        };
        tracing::info!("{}", report.summary());
        report
    }
}
