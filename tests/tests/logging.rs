//! What the host writes to stderr and the support log: under systemd,
//! journald lines (`<N>` priority, no timestamp of their own); a plugin's log
//! record once, not twice (issue 12).

use std::fs;
use std::io::Read;
use std::path::Path;

use quiesce_tests::plugins::{install_plugin, Lockd};
use quiesce_tests::*;

/// A native config with freezing off: one hook whose pre script prints a
/// line and fails (an error record), and whose post succeeds (info records).
fn failing_hook_config(s: &Scratch) -> std::path::PathBuf {
    let pre = s.script("pre", "#!/bin/sh\necho pre-ran\nexit 3\n");
    let post = s.script("post", "#!/bin/sh\necho post-ran\n");
    s.config(
        "quiesce.toml",
        &format!("[freeze]\nenabled = false\n\n[[hook]]\nname = \"app\"\npre = \"{}\"\npost = \"{}\"\n", pre.display(), post.display()),
    )
}

/// Runs `quiesce snapshot` with stderr on a pipe and `JOURNAL_STREAM` set to
/// `journal_stream(dev, ino of that pipe)`; returns what stderr got.
fn snapshot_stderr(s: &Scratch, config: &Path, journal_stream: impl Fn(u64, u64) -> String) -> String {
    let (read, write) = nix::unistd::pipe().expect("pipe");
    let st = nix::sys::stat::fstat(&write).expect("fstat pipe");
    let mut cmd = quiesce(s);
    cmd.env("JOURNAL_STREAM", journal_stream(st.st_dev, st.st_ino)).arg("snapshot").arg("--config").arg(config);
    cmd.stdout(std::process::Stdio::null()).stderr(write);
    let mut child = cmd.spawn().expect("run quiesce");
    drop(cmd); // our copy of the pipe's write end: EOF once quiesce exits
    let mut out = String::new();
    fs::File::from(read).read_to_string(&mut out).expect("read stderr");
    child.wait().expect("wait quiesce");
    out
}

/// An RFC 3339 timestamp as tracing's formatter writes it (`2026-11-30T05:38:21.123456Z`).
fn has_timestamp(line: &str) -> bool {
    let b = line.as_bytes();
    b.windows(11).any(|w| w[0..4].iter().all(u8::is_ascii_digit) && w[4] == b'-' && w[7] == b'-' && w[10] == b'T')
}

#[test]
fn under_journald_stderr_lines_carry_priorities_and_no_timestamp_and_the_log_file_keeps_both() {
    require!(Root);
    let s = Scratch::new("journald");
    let config = failing_hook_config(&s);
    let stderr = snapshot_stderr(&s, &config, |dev, ino| format!("{dev}:{ino}"));
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "nothing on stderr");
    for l in &lines {
        let p = l.strip_prefix('<').and_then(|r| r.split_once('>')).map(|(n, _)| n);
        assert!(matches!(p, Some("3" | "4" | "6" | "7")), "no journald priority: {l:?}\n{stderr}");
        assert!(!has_timestamp(l), "journald stamps lines itself: {l:?}");
        assert!(!l.contains(" INFO ") && !l.contains("ERROR "), "the level is in the prefix, not the text: {l:?}");
    }
    // The failed pre hook is an error record, the post hook's success an info one.
    assert!(lines.iter().any(|l| l.starts_with("<3>") && l.contains("pre hook")), "{stderr}");
    assert!(lines.iter().any(|l| l.starts_with("<6>") && l.contains("post")), "{stderr}");
    // The support log file: full lines as always, no journald prefix.
    let log = fs::read_to_string(s.join("quiesce.log")).expect("log file");
    assert!(log.lines().count() >= lines.len(), "log:\n{log}\nstderr:\n{stderr}");
    for l in log.lines() {
        assert!(has_timestamp(l) && !l.starts_with('<'), "log file line: {l:?}");
    }
    assert!(log.contains("ERROR") && log.contains("INFO"), "{log}");
}

#[test]
fn journal_stream_naming_another_file_leaves_stderr_as_it_was() {
    require!(Root);
    // A child whose stderr was redirected away from journald inherits the
    // variable but not the stream: its lines keep their timestamps.
    let s = Scratch::new("journald-other");
    let config = failing_hook_config(&s);
    let stderr = snapshot_stderr(&s, &config, |dev, ino| format!("{dev}:{}", ino.wrapping_add(1)));
    assert!(!stderr.is_empty());
    for l in stderr.lines() {
        assert!(!l.starts_with('<'), "{l:?}");
        assert!(has_timestamp(l), "{l:?}");
    }
}

#[test]
fn a_plugin_log_record_appears_once_in_the_log() {
    require!(Root, Plugins);
    let f = MountedScratch::new("plugin-log-once");
    let lockd = Lockd::start("tcp:127.0.0.1:0");
    let target = lockd.target.clone();
    let plugin = install_plugin(&f.s, "lockd");
    let config = f.s.config(
        "quiesce.toml",
        &format!(
            "[[hook]]\nname = \"lockd\"\nplugin = \"{}\"\nparams = {{ target = {target:?} }}\ngrants = [{target:?}]\ntimeout_secs = 5\n",
            plugin.display()
        ),
    );
    let run = run_json(quiesce_snapshot(&f.s, &config, f.mnt.path(), "true"));
    assert_eq!(run.code(), 0, "{}", run.stderr());
    // lockd's pre logs `locked TARGET for session ID` through the log import.
    let needle = format!("locked {target} for session");
    let log = fs::read_to_string(f.file("quiesce.log")).expect("log file");
    assert_eq!(log.matches(&needle).count(), 1, "log:\n{log}");
    assert_eq!(run.stderr().matches(&needle).count(), 1, "stderr:\n{}", run.stderr());
}
