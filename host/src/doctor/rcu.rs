//! Did a freeze leave RCU grace periods expedited?
//!
//! A freeze sets `/sys/kernel/rcu_expedited` from its first FIFREEZE to its
//! last ([`crate::freeze::rcu`]) and puts it back: the guardian does, or the
//! host if the guardian dies mid-freeze. Both killed in that millisecond
//! leave it 1, and every later grace period interrupts every CPU — what a
//! latency-sensitive machine notices. An admin may have set it on purpose,
//! so this is a note, not a warning, and only while no session runs (a
//! session's freeze sets it for a moment).

use crate::freeze::rcu;

use super::{Code, Finding, Group, Severity};

pub const NAME: &str = "rcu";

pub fn check(session_running: bool) -> Group {
    judge(rcu::expedited_now(), session_running)
}

fn judge(expedited: Option<bool>, session_running: bool) -> Group {
    let knob = rcu::knob_path();
    let summary = match expedited {
        None => format!("{knob} cannot be read: freezes wait for normal RCU grace periods (cold freezes take longer)"),
        Some(false) => format!("{knob} is 0 (normal); a freeze expedites grace periods only for its FIFREEZEs"),
        Some(true) if session_running => format!("{knob} is 1 while a session runs (its freeze may have set it for a moment)"),
        Some(true) => format!("{knob} is 1 with no session running"),
    };
    let findings = match expedited {
        Some(true) if !session_running => vec![Finding {
            check: NAME,
            code: Code::RcuExpedited,
            severity: Severity::Info,
            cause: format!(
                "{knob} is 1 and no session is running: an admin set it, or a quiesce host and its freeze guardian were both killed in \
                 the millisecond of a freeze. Expedited grace periods interrupt every CPU each time"
            ),
            fix: format!("if nobody set it on purpose: echo 0 > {knob}"),
        }],
        _ => Vec::new(),
    };
    Group { summary, findings }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expedited_knob_is_a_note_only_while_no_session_runs() {
        let note = judge(Some(true), false);
        assert_eq!(note.findings.len(), 1);
        assert_eq!(note.findings[0].code, Code::RcuExpedited);
        assert_eq!(note.findings[0].severity, Severity::Info, "an admin may want it: never a warning");
        assert!(note.findings[0].fix.contains("echo 0 > /sys/kernel/rcu_expedited"), "{}", note.findings[0].fix);
        assert!(judge(Some(true), true).findings.is_empty(), "a running session's freeze sets it for a moment");
        assert!(judge(Some(false), false).findings.is_empty());
        let unreadable = judge(None, false);
        assert!(unreadable.findings.is_empty() && unreadable.summary.contains("cannot be read"), "{}", unreadable.summary);
    }
}
