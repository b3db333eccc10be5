//! Did a freeze guardian outlive its host?
//!
//! A guardian thaws and exits when its host's end of the command pipe closes,
//! so one still alive after its host died is stuck: stopped (SIGSTOP), or
//! retrying a FITHAW that keeps failing — and it holds the session lock, so
//! every new session is refused. Guardians are found by their process name
//! ([`GUARDIAN_NAME`]). A guardian never execs, so its `/proc/PID/exe` is its
//! host's program: while the host lives, the guardian's parent is a process
//! of that same program (the one-shot `quiesce`, the service, or an agent
//! embedding the library). Reparented to init or a subreaper, it is not.
//! The state file, when it names the guardian, says which host pid it served.
//!
//! Only the guardians of this run directory are judged: each keeps its
//! session's lock file open (that is how the lock outlives a killed host),
//! so `/proc/PID/fd` ties it to `<run>/session.lock`. Another installation's
//! (or a test's) guardians are theirs to diagnose.

use std::os::unix::fs::MetadataExt;

use crate::freeze::GUARDIAN_NAME;
use crate::rundir::RunDir;

use super::{alive, proc_stat, Code, Finding, Group, Severity};

pub const NAME: &str = "guardians";

pub fn check(run_dir: &RunDir) -> Group {
    let name = GUARDIAN_NAME.to_string_lossy();
    let state = run_dir.read_state();
    let mut findings = Vec::new();
    let mut count = 0;
    // The kernel shows the resolved path (`/var/run` is often a link to `/run`).
    let lock = std::fs::canonicalize(&run_dir.path).unwrap_or_else(|_| run_dir.path.clone()).join("session.lock");
    for pid in guardian_pids(&name).into_iter().filter(|&pid| holds(pid, &lock)) {
        let Some(st) = proc_stat(pid) else { continue };
        count += 1;
        let recorded_host = state.as_ref().filter(|s| s.guardian_pid == Some(pid as i32)).map(|s| s.pid);
        let host_alive = match recorded_host {
            Some(host) => alive(host),
            None => st.ppid > 1 && same_program(pid, st.ppid),
        };
        if host_alive {
            continue;
        }
        let host = recorded_host.map(|h| format!("host pid {h}")).unwrap_or_else(|| "its host".into());
        let stopped = st.state == 'T' || st.state == 't';
        let how = if stopped {
            "it is stopped (SIGSTOP), so it neither thaws nor exits".to_string()
        } else {
            "it is still running, which it does only while a FITHAW keeps failing".to_string()
        };
        findings.push(Finding {
            check: NAME,
            code: Code::GuardianOrphaned,
            severity: Severity::Error,
            cause: format!(
                "freeze guardian pid {pid} outlived {host} (now a child of pid {}); {how}. It holds the session lock, so new sessions are refused, \
                 and what it froze stays frozen",
                st.ppid
            ),
            fix: format!(
                "kill -TERM {pid}; kill -CONT {pid}   (it thaws what it froze, then exits; if a file system stays frozen: quiesce thaw --all)"
            ),
        });
    }
    let summary = match (count, findings.len()) {
        (0, _) => "no freeze guardian of this run directory".into(),
        (n, 0) => format!("{n} freeze guardian(s), each with its host alive"),
        (n, k) => format!("{n} freeze guardian(s), {k} without their host"),
    };
    Group { summary, findings }
}

/// Processes named `name`, found in `/proc`.
fn guardian_pids(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == name))
        .collect()
}

/// Whether process `pid` has `file` open.
fn holds(pid: u32, file: &std::path::Path) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok()).any(|target| target == file)
}

/// Whether both processes run the same program file.
fn same_program(a: u32, b: u32) -> bool {
    let exe = |pid: u32| std::fs::metadata(format!("/proc/{pid}/exe")).ok().map(|m| (m.dev(), m.ino()));
    matches!((exe(a), exe(b)), (Some(x), Some(y)) if x == y)
}
