//! Scenarios for `quiesce::trust` and `quiesce::hooks::script`: real scripts,
//! real processes, real permission bits — one scenario per defect of the
//! reference runner that we claim to fix, and one per trust rule.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quiesce::hooks::script::{run_script, ScriptOutcome, ScriptRun, ScriptSpec};
use quiesce::trust::{open_trusted, Rule, TrustError, TrustedFile};
use quiesce_tests::{alive, gone_within, read_pid, setsid_sleeper, write_mode, Scratch};

fn spec() -> ScriptSpec {
    let mut spec = ScriptSpec::new("test-hook");
    spec.timeout = Duration::from_secs(20);
    spec.retry_delay = Duration::ZERO;
    spec.kill_grace = Duration::from_secs(1);
    spec
}

fn trusted(path: &Path) -> TrustedFile {
    open_trusted(path, Rule::Script).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs the script. What it leaves running dies with the returned run
/// (its `leftovers`), also when an assertion fails halfway.
async fn exec(path: &Path, spec: &ScriptSpec) -> ScriptRun {
    run_script(&trusted(path), spec).await
}

fn outcome_of(run: &ScriptRun) -> String {
    format!("{:?}; output of attempts: {:?}", run.outcome, run.attempts.iter().map(|a| &a.output).collect::<Vec<_>>())
}

// ---------------------------------------------------------------- runner

#[tokio::test(flavor = "current_thread")]
async fn retries_rerun_the_script_with_attempt_number() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("retries");
    let log = s.join("attempts.log");
    let script = s.script(
        "pre.sh",
        &format!("#!/bin/sh\necho \"$QUIESCE_ATTEMPT/$QUIESCE_MAX_ATTEMPTS\" >> {}\n[ \"$QUIESCE_ATTEMPT\" -ge 3 ]\n", log.display()),
    );
    let mut spec = spec();
    spec.retries = 4;
    let run = exec(&script, &spec).await;
    assert_eq!(run.outcome, ScriptOutcome::Succeeded, "{}", outcome_of(&run));
    assert_eq!(fs::read_to_string(&log).unwrap(), "1/5\n2/5\n3/5\n");
    let numbers: Vec<u32> = run.attempts.iter().map(|a| a.number).collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert_eq!(run.attempts[0].outcome, ScriptOutcome::Failed { exit_code: Some(1), signal: None });
    // Three distinct processes, not one logged three times.
    assert_ne!(run.attempts[0].pid, run.attempts[1].pid);
}

#[tokio::test(flavor = "current_thread")]
async fn retries_stop_after_retries_plus_one_attempts() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("retries-exhausted");
    let log = s.join("attempts.log");
    let script = s.script("pre.sh", &format!("#!/bin/sh\necho $QUIESCE_ATTEMPT >> {}\nexit 7\n", log.display()));
    let mut spec = spec();
    spec.retries = 2;
    let run = exec(&script, &spec).await;
    assert_eq!(run.outcome, ScriptOutcome::Failed { exit_code: Some(7), signal: None });
    assert_eq!(run.attempts.len(), 3);
    assert_eq!(fs::read_to_string(&log).unwrap(), "1\n2\n3\n");
}

#[tokio::test(flavor = "current_thread")]
async fn timeout_kills_script_and_grandchild() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("timeout");
    let pidfile = s.join("grandchild.pid");
    let script = s.script("pre.sh", &format!("#!/bin/sh\nsleep 1000 &\necho $! > {}\nsleep 1000\n", pidfile.display()));
    let mut spec = spec();
    spec.timeout = Duration::from_secs(1);
    let run = exec(&script, &spec).await;
    assert_eq!(run.outcome, ScriptOutcome::TimedOut, "{}", outcome_of(&run));
    assert_eq!(run.attempts.len(), 1);
    let grandchild = read_pid(&pidfile);
    let script_pid = run.attempts[0].pid as i32;
    // The runner promises the group is gone when it reports the timeout;
    // the short allowance is only for /proc bookkeeping.
    assert!(gone_within(script_pid, Duration::from_millis(500)), "script {script_pid} survived the timeout");
    assert!(gone_within(grandchild, Duration::from_millis(500)), "grandchild {grandchild} survived the timeout");
}

#[tokio::test(flavor = "current_thread")]
async fn timeout_applies_to_each_attempt() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("timeout-each");
    let script = s.script("pre.sh", "#!/bin/sh\nsleep 1000\n");
    let mut spec = spec();
    spec.timeout = Duration::from_secs(1);
    spec.retries = 1;
    let run = exec(&script, &spec).await;
    assert_eq!(run.outcome, ScriptOutcome::TimedOut);
    assert_eq!(run.attempts.len(), 2);
    for a in &run.attempts {
        assert_eq!(a.outcome, ScriptOutcome::TimedOut);
        assert!(a.duration >= Duration::from_millis(900), "{:?}", a.duration);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn timeout_sends_sigterm_first_so_the_script_can_clean_up() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("sigterm");
    let marker = s.join("cleaned-up");
    let script =
        s.script("pre.sh", &format!("#!/bin/sh\ntrap 'echo yes > {}; exit 0' TERM\nwhile :; do sleep 0.1; done\n", marker.display()));
    let mut spec = spec();
    spec.timeout = Duration::from_secs(1);
    spec.kill_grace = Duration::from_secs(5);
    let run = exec(&script, &spec).await;
    assert_eq!(run.outcome, ScriptOutcome::TimedOut);
    assert_eq!(fs::read_to_string(&marker).unwrap_or_default(), "yes\n", "the TERM trap did not run");
    // It exited on SIGTERM, so the runner did not sit out the whole grace period.
    assert!(run.duration < Duration::from_secs(5), "{:?}", run.duration);
}

#[tokio::test(flavor = "current_thread")]
async fn timeout_escalates_to_sigkill_when_sigterm_is_trapped() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("sigkill");
    let pidfile = s.join("grandchild.pid");
    let script = s.script(
        "pre.sh",
        &format!(
            "#!/bin/sh\ntrap '' TERM\nsh -c 'trap \"\" TERM; echo $$ > {}; while :; do sleep 0.1; done' &\nwhile :; do sleep 0.1; done\n",
            pidfile.display()
        ),
    );
    let mut spec = spec();
    spec.timeout = Duration::from_secs(1);
    spec.kill_grace = Duration::from_secs(1);
    let run = exec(&script, &spec).await;
    assert_eq!(run.outcome, ScriptOutcome::TimedOut);
    // The grace period was granted before SIGKILL.
    assert!(run.duration >= Duration::from_millis(1900), "{:?}", run.duration);
    let grandchild = read_pid(&pidfile);
    assert!(gone_within(run.attempts[0].pid as i32, Duration::from_millis(500)), "script ignored SIGTERM and survived");
    assert!(gone_within(grandchild, Duration::from_millis(500)), "grandchild ignored SIGTERM and survived");
}

#[tokio::test(flavor = "current_thread")]
async fn ten_megabytes_of_output_do_not_block() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("chatty");
    let script = s.script("pre.sh", "#!/bin/sh\nyes 0123456789abcdef | head -c 10485760\necho on-stderr >&2\n");
    let mut spec = spec();
    spec.output_cap = 4096;
    let run = exec(&script, &spec).await;
    assert_eq!(run.outcome, ScriptOutcome::Succeeded, "{}", outcome_of(&run));
    let a = &run.attempts[0];
    assert_eq!(a.output_bytes, 10_485_760 + "on-stderr\n".len() as u64);
    assert_eq!(a.output.len(), 4096);
    assert!(a.output.starts_with("0123456789abcdef\n0123456789abcdef\n"));
}

#[tokio::test(flavor = "current_thread")]
async fn last_output_before_exit_is_kept() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("last-output");
    // No trailing newline, and on both streams: drained after exit, not lost.
    let script = s.script("pre.sh", "#!/bin/sh\necho out\necho err >&2\nprintf 'no-newline'\n");
    let run = exec(&script, &spec()).await;
    let out = &run.attempts[0].output;
    for want in ["out\n", "err\n", "no-newline\n"] {
        assert!(out.contains(want), "{want:?} missing from {out:?}");
    }
    assert_eq!(run.attempts[0].output_bytes, 18);
}

#[tokio::test(flavor = "current_thread")]
async fn shebang_is_honoured() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("shebang");
    let args = vec!["a b".to_string(), String::new()];
    let mut spec = spec();
    spec.args = args;

    let bash = s.script("bash.sh", "#!/bin/bash\necho \"bash:${BASH_VERSION:+yes}:$#:[$1]:[$2]\"\n");
    let run = exec(&bash, &spec).await;
    assert_eq!(run.outcome, ScriptOutcome::Succeeded, "{}", outcome_of(&run));
    assert_eq!(run.attempts[0].output, "bash:yes:2:[a b]:[]\n");

    let py = s.script("py.sh", "#!/usr/bin/env python3\nimport os, sys\nprint('python', sys.argv[1:], os.environ['QUIESCE_SCRIPT'])\n");
    let run = exec(&py, &spec).await;
    assert_eq!(run.outcome, ScriptOutcome::Succeeded, "{}", outcome_of(&run));
    assert_eq!(run.attempts[0].output, format!("python ['a b', ''] {}\n", py.display()));
}

#[tokio::test(flavor = "current_thread")]
async fn no_shebang_falls_back_to_sh() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("no-shebang");
    // Executed directly this would fail with ENOEXEC; /bin/sh runs it.
    let script = s.script("pre.sh", "echo \"sh:$#:[$1]:[$2]\"\n");
    let mut spec = spec();
    spec.args = vec!["x y".into(), String::new()];
    let run = exec(&script, &spec).await;
    assert_eq!(run.outcome, ScriptOutcome::Succeeded, "{}", outcome_of(&run));
    assert_eq!(run.attempts[0].output, "sh:2:[x y]:[]\n");
}

#[tokio::test(flavor = "current_thread")]
async fn elf_binary_runs_directly() {
    let mut spec = spec();
    spec.args = vec!["--".into(), "a b".into()];
    // /bin/echo through Debian's /bin -> usr/bin symlink.
    let run = exec(Path::new("/bin/echo"), &spec).await;
    assert_eq!(run.outcome, ScriptOutcome::Succeeded, "{}", outcome_of(&run));
    assert_eq!(run.attempts[0].output, "-- a b\n");
}

#[tokio::test(flavor = "current_thread")]
async fn params_are_passed_as_argv() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("argv");
    let script = s.script("pre.sh", "#!/bin/sh\nfor a in \"$@\"; do printf '<%s>\\n' \"$a\"; done\necho \"n=$#\"\n");
    let mut spec = spec();
    spec.args = ["", "a b", "  lead", "*", "$HOME", "x\ny"].map(String::from).to_vec();
    let run = exec(&script, &spec).await;
    assert_eq!(run.outcome, ScriptOutcome::Succeeded, "{}", outcome_of(&run));
    assert_eq!(run.attempts[0].output, "<>\n<a b>\n<  lead>\n<*>\n<$HOME>\n<x\ny>\nn=6\n");
}

#[tokio::test(flavor = "current_thread")]
async fn environment_is_clean() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("env");
    // Set in this (the host's) process; must not reach the script.
    std::env::set_var("QUIESCE_TEST_LEAK", "leaked");
    let script = s.script("pre.sh", "#!/bin/sh\nenv\necho \"stdin=$(readlink /proc/self/fd/0)\"\necho \"cwd=$(pwd)\"\n");
    let mut spec = spec();
    spec.env = vec![("QUIESCE_SESSION_ID".into(), "s-123".into()), ("QUIESCE_PHASE".into(), "pre".into())];
    let run = exec(&script, &spec).await;
    assert_eq!(run.outcome, ScriptOutcome::Succeeded, "{}", outcome_of(&run));
    let out = &run.attempts[0].output;
    let lines: Vec<&str> = out.lines().collect();
    let expected = [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        "LANG=C.UTF-8".into(),
        "HOME=/root".into(),
        format!("QUIESCE_SCRIPT={}", script.display()),
        "QUIESCE_ATTEMPT=1".into(),
        "QUIESCE_MAX_ATTEMPTS=1".into(),
        "QUIESCE_SESSION_ID=s-123".into(),
        "QUIESCE_PHASE=pre".into(),
        "stdin=/dev/null".into(),
        "cwd=/".into(),
    ];
    for want in &expected {
        assert!(lines.contains(&want.as_str()), "{want:?} missing from:\n{out}");
    }
    assert!(!out.contains("QUIESCE_TEST_LEAK"), "host environment leaked:\n{out}");
    let allowed = ["PATH", "LANG", "HOME", "PWD", "SHLVL", "OLDPWD", "_"];
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if !allowed.contains(&name.as_ref()) {
            assert!(!lines.iter().any(|l| l.starts_with(&format!("{name}="))), "host variable {name} leaked:\n{out}");
        }
    }
    // Nothing else, except what the shell itself exports.
    for line in lines.iter().filter(|l| !l.starts_with("stdin=") && !l.starts_with("cwd=")) {
        let name = line.split('=').next().unwrap_or("");
        let ok = expected.iter().any(|e| e.starts_with(&format!("{name}="))) || ["PWD", "SHLVL", "OLDPWD", "_"].contains(&name);
        assert!(ok, "unexpected variable {line:?} in:\n{out}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn background_child_holding_stdout_does_not_delay_completion() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("background");
    let pidfile = s.join("bg.pid");
    let script =
        s.script("pre.sh", &format!("#!/bin/sh\n(sleep 30; echo late) &\necho $! > {}\necho started\nexit 0\n", pidfile.display()));
    let started = Instant::now();
    let run = exec(&script, &spec()).await;
    let took = started.elapsed();
    assert_eq!(run.outcome, ScriptOutcome::Succeeded, "{}", outcome_of(&run));
    assert!(took < Duration::from_secs(10), "run waited for the background child: {took:?}");
    assert_eq!(run.attempts[0].output, "started\n");
    let bg = read_pid(&pidfile);
    assert!(alive(bg), "the runner killed the background child (it must neither wait for nor kill it)");
    // Dropping `run` kills it.
}

#[tokio::test(flavor = "current_thread")]
async fn background_child_output_is_drained_after_completion() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("background-drain");
    let marker = s.join("survived");
    // If the runner closed the pipes when the script exited, `echo late`
    // would die of SIGPIPE and the marker would never appear.
    let script =
        s.script("pre.sh", &format!("#!/bin/sh\n(sleep 1; echo late; echo late >&2; echo yes > {}) &\nexit 0\n", marker.display()));
    let run = exec(&script, &spec()).await;
    assert_eq!(run.outcome, ScriptOutcome::Succeeded);
    // Keep this runtime turning so the detached drain task can run.
    let until = Instant::now() + Duration::from_secs(10);
    while !marker.exists() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fs::read_to_string(&marker).unwrap_or_default(), "yes\n", "background child did not survive its late output");
}

#[tokio::test(flavor = "current_thread")]
async fn exit_code_2_is_a_warning_not_a_failure() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("warning");
    let log = s.join("runs");
    let script = s.script("pre.sh", &format!("#!/bin/sh\necho x >> {}\nexit 2\n", log.display()));
    let mut spec = spec();
    spec.retries = 2;
    spec.warning_exit_codes = vec![2];
    let run = exec(&script, &spec).await;
    assert_eq!(run.outcome, ScriptOutcome::SucceededWithWarning { exit_code: 2 });
    assert!(run.outcome.is_success());
    assert_eq!(run.attempts.len(), 1, "a warning is not retried");
    assert_eq!(fs::read_to_string(&log).unwrap(), "x\n");

    // Without the warning list, 2 is an ordinary failure.
    spec.warning_exit_codes.clear();
    spec.retries = 0;
    let run2 = exec(&script, &spec).await;
    assert_eq!(run2.outcome, ScriptOutcome::Failed { exit_code: Some(2), signal: None });
}

#[tokio::test(flavor = "current_thread")]
async fn killed_by_signal_is_a_failure_with_the_signal() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("signal");
    let script = s.script("pre.sh", "#!/bin/sh\nkill -KILL $$\n");
    let run = exec(&script, &spec()).await;
    assert_eq!(run.outcome, ScriptOutcome::Failed { exit_code: None, signal: Some(9) });
}

#[tokio::test(flavor = "current_thread")]
async fn missing_interpreter_is_a_spawn_failure_not_retried() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("bad-interp");
    let script = s.script("pre.sh", "#!/nonexistent/interpreter\n");
    let mut spec = spec();
    spec.retries = 3;
    let run = exec(&script, &spec).await;
    assert!(matches!(&run.outcome, ScriptOutcome::SpawnFailed { message } if message.contains("pre.sh")), "{:?}", run.outcome);
    assert_eq!(run.attempts.len(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn swapped_symlink_is_not_executed() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("swap");
    let marker = s.join("evil-ran");
    let evil_body = format!("#!/bin/sh\ntouch {}\necho evil\n", marker.display());
    let evil_sh = s.script("evil-sh.sh", &format!("touch {}\necho evil\n", marker.display()));
    let evil = s.script("evil.sh", &evil_body);
    for (name, body, evil) in [("hook.sh", "#!/bin/sh\necho original\n", &evil), ("plain.sh", "echo original\n", &evil_sh)] {
        let path = s.script(name, body);
        let checked = trusted(&path);
        // Swap the name for a symlink to another script, atomically.
        let tmp = s.join("swap-tmp");
        symlink(evil, &tmp).unwrap();
        fs::rename(&tmp, &path).unwrap();
        let run = run_script(&checked, &spec()).await;
        assert_eq!(run.outcome, ScriptOutcome::Succeeded, "{}", outcome_of(&run));
        assert_eq!(run.attempts[0].output, "original\n", "{name}");
        assert!(!marker.exists(), "{name}: the swapped-in script ran");
        // And a fresh check now refuses the name.
        assert!(matches!(open_trusted(&path, Rule::Script), Err(TrustError::SymlinkFinal { .. })));
    }
}

// ---------------------------------------------------------------- trust

#[test]
fn trust_refuses_group_writable_script() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("trust-gw");
    for mode in [0o720, 0o702, 0o777] {
        let p = s.join("pre.sh");
        write_mode(&p, "#!/bin/sh\n", mode);
        let e = open_trusted(&p, Rule::Script).unwrap_err();
        assert!(matches!(e, TrustError::GroupOrOtherWritable { mode: m, .. } if m == mode), "{mode:o}: {e}");
        assert!(e.to_string().contains(&format!("chmod 700 {}", p.display())), "{e}");
        assert!(!e.is_not_found());
    }
    // The native rule: 0700 passes, and so does 0755 (the session warns;
    // Rule::LegacyScript refuses it, see config_safety.rs).
    for mode in [0o700, 0o755, 0o500] {
        let p = s.join("pre.sh");
        write_mode(&p, "#!/bin/sh\n", mode);
        open_trusted(&p, Rule::Script).unwrap_or_else(|e| panic!("{mode:o}: {e}"));
    }
}

#[test]
fn trust_refuses_non_executable_script() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("trust-noexec");
    let p = s.join("pre.sh");
    write_mode(&p, "#!/bin/sh\n", 0o600);
    let e = open_trusted(&p, Rule::Script).unwrap_err();
    assert!(matches!(e, TrustError::NotExecutable { .. }), "{e}");
    assert!(e.to_string().contains("chmod 700"), "{e}");
}

#[test]
fn trust_refuses_script_in_world_writable_dir() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("trust-dir");
    for (name, mode) in [("sticky", 0o1777), ("open", 0o777), ("group", 0o775)] {
        let dir = s.join(name);
        fs::create_dir(&dir).unwrap();
        let script = dir.join("pre.sh");
        write_mode(&script, "#!/bin/sh\n", 0o700);
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
        match open_trusted(&script, Rule::Script) {
            Err(TrustError::UntrustedDirectory { dir: d, .. }) => assert_eq!(d, dir),
            other => panic!("{mode:o}: {other:?}"),
        }
    }
    // A directory owned by someone else is just as bad.
    let dir = s.join("nobodys");
    fs::create_dir(&dir).unwrap();
    write_mode(&dir.join("pre.sh"), "#!/bin/sh\n", 0o700);
    nix::unistd::chown(&dir, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let e = open_trusted(&dir.join("pre.sh"), Rule::Script).unwrap_err();
    assert!(matches!(&e, TrustError::UntrustedDirectory { reason, .. } if reason.contains("65534")), "{e}");
}

#[test]
fn trust_refuses_non_root_owner() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("trust-owner");
    let p = s.script("pre.sh", "#!/bin/sh\n");
    nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let e = open_trusted(&p, Rule::Script).unwrap_err();
    assert!(matches!(e, TrustError::BadOwner { uid: 65534, .. }), "{e}");
    assert!(e.to_string().contains("chown root"), "{e}");
}

#[test]
fn trust_refuses_final_symlink() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("trust-link");
    let real = s.script("real.sh", "#!/bin/sh\n");
    let link = s.join("pre.sh");
    symlink(&real, &link).unwrap();
    let e = open_trusted(&link, Rule::Script).unwrap_err();
    assert!(matches!(e, TrustError::SymlinkFinal { .. }), "{e}");
    assert!(!e.is_not_found());
}

#[test]
fn trust_refuses_non_regular_files() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("trust-nonreg");
    let fifo = s.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o700)).unwrap();
    // Must not hang on the FIFO.
    assert!(matches!(open_trusted(&fifo, Rule::Script), Err(TrustError::NotRegular { .. })));
    fs::create_dir(s.join("dir")).unwrap();
    assert!(matches!(open_trusted(&s.join("dir"), Rule::Script), Err(TrustError::NotRegular { .. })));
}

#[test]
fn trust_follows_root_owned_dir_symlinks() {
    quiesce_tests::require!(Root);
    // Debian: /bin -> usr/bin (relative target).
    let t = open_trusted(Path::new("/bin/true"), Rule::Script).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.path(), Path::new("/bin/true"));
    let usr = fs::metadata("/usr/bin/true").unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(t.dev_ino(), (usr.dev(), usr.ino()));

    let s = Scratch::new("trust-dirlink");
    let real = s.join("real");
    fs::create_dir_all(real.join("dir")).unwrap();
    let script = real.join("dir/pre.sh");
    write_mode(&script, "#!/bin/sh\n", 0o700);
    let ino = fs::metadata(&script).unwrap().ino();
    symlink("real/dir", s.join("rel")).unwrap();
    symlink(real.join("dir"), s.join("abs")).unwrap();
    symlink("rel", s.join("chain")).unwrap();
    for p in ["rel/pre.sh", "abs/pre.sh", "chain/pre.sh", "rel/../dir/pre.sh", "./abs//pre.sh"] {
        let t = open_trusted(&s.join(p), Rule::Script).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(t.dev_ino().1, ino, "{p}");
    }

    // A link is followed, but its target is checked like any directory.
    let open = s.join("open");
    fs::create_dir(&open).unwrap();
    write_mode(&open.join("pre.sh"), "#!/bin/sh\n", 0o700);
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    symlink("open", s.join("to-open")).unwrap();
    let e = open_trusted(&s.join("to-open/pre.sh"), Rule::Script).unwrap_err();
    assert!(matches!(e, TrustError::UntrustedDirectory { .. }), "{e}");

    // Loops end.
    symlink("loop-b", s.join("loop-a")).unwrap();
    symlink("loop-a", s.join("loop-b")).unwrap();
    let e = open_trusted(&s.join("loop-a/pre.sh"), Rule::Script).unwrap_err();
    assert!(matches!(e, TrustError::SymlinkLoop { .. }), "{e}");
}

#[test]
fn trust_refuses_world_readable_config() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("trust-config");
    let body = "{\"pluginName\": \"ScriptRunner\"}\n";
    let p = s.config("config.json", body);
    let t = open_trusted(&p, Rule::Config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.read_to_string().unwrap(), body);

    write_mode(&p, body, 0o644);
    let e = open_trusted(&p, Rule::Config).unwrap_err();
    assert!(matches!(e, TrustError::GroupOrOtherReadable { mode: 0o644, .. }), "{e}");
    assert!(e.to_string().contains("chmod 600"), "{e}");
    write_mode(&p, body, 0o604);
    assert!(matches!(open_trusted(&p, Rule::Config), Err(TrustError::GroupOrOtherReadable { .. })));
    write_mode(&p, body, 0o620);
    assert!(matches!(open_trusted(&p, Rule::Config), Err(TrustError::GroupOrOtherWritable { .. })));
}

#[test]
fn not_found_is_reported_as_not_found() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("trust-missing");
    for p in [s.join("absent.sh"), s.join("no-dir/absent.sh"), PathBuf::from("/etc/passwd/absent.sh")] {
        let e = open_trusted(&p, Rule::Script).unwrap_err();
        assert!(e.is_not_found(), "{}: {e}", p.display());
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
    }
    let e = open_trusted(Path::new("relative/pre.sh"), Rule::Script).unwrap_err();
    assert!(!e.is_not_found() && matches!(e, TrustError::NotAbsolute { .. }), "{e}");
}

/// A grandchild started with `setsid` leaves the process group; the runner
/// must still kill it at the timeout, before reporting.
#[tokio::test(flavor = "current_thread")]
async fn timeout_kills_a_grandchild_that_called_setsid() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("timeout-setsid");
    let pidfile = s.join("gc.pid");
    let script = s.script("pre.sh", &format!("#!/bin/sh\n{}sleep 1000\n", setsid_sleeper(&pidfile)));
    let mut spec = spec();
    spec.timeout = Duration::from_secs(1);
    let run = exec(&script, &spec).await;
    assert_eq!(run.outcome, ScriptOutcome::TimedOut, "{}", outcome_of(&run));
    let gc = read_pid(&pidfile);
    assert!(!alive(gc), "setsid grandchild {gc} survived the timeout ({:?})", run.leftovers);
    assert!(run.leftovers.is_empty(), "{:?} still has members {:?}", run.leftovers, run.leftovers.members());
}

/// The classic daemon escape: a subshell double-forks, the grandchild
/// closes every fd (so no pipe ties it to us), calls setsid, and would do
/// something later. It must be dead when the timeout is reported, and never
/// get to do it.
#[tokio::test(flavor = "current_thread")]
async fn timeout_kills_a_double_forked_grandchild_with_closed_fds() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("timeout-daemon");
    let pidfile = s.join("gc.pid");
    let late = s.join("late");
    let script = s.script(
        "pre.sh",
        &format!(
            "#!/bin/sh\n( exec </dev/null >/dev/null 2>&1; setsid sh -c 'echo $$ > {p}; sleep 2; echo late > {late}' & )\n\
             while [ ! -s {p} ]; do sleep 0.01; done\nsleep 1000\n",
            p = pidfile.display(),
            late = late.display()
        ),
    );
    let mut spec = spec();
    spec.timeout = Duration::from_secs(1);
    let run = exec(&script, &spec).await;
    assert_eq!(run.outcome, ScriptOutcome::TimedOut, "{}", outcome_of(&run));
    let gc = read_pid(&pidfile);
    assert!(!alive(gc), "double-forked grandchild {gc} survived the timeout");
    // Give a survivor the time to show itself.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!late.exists(), "the grandchild ran on after the timeout and wrote {}", late.display());
}

/// A pre script may leave a lock holder behind on purpose: it survives the
/// script's exit (and a setsid), and dies when the run's leftovers are closed.
#[tokio::test(flavor = "current_thread")]
async fn lock_holder_outlives_the_script_until_its_leftovers_are_closed() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("lock-holder");
    let pidfile = s.join("holder.pid");
    let script = s.script("pre.sh", &format!("#!/bin/sh\n{}exit 0\n", setsid_sleeper(&pidfile)));
    let run = exec(&script, &spec()).await;
    assert_eq!(run.outcome, ScriptOutcome::Succeeded, "{}", outcome_of(&run));
    let holder = read_pid(&pidfile);
    assert!(alive(holder), "the lock holder was killed when the script exited");
    assert!(run.leftovers.members().contains(&nix::unistd::Pid::from_raw(holder)), "holder not in {:?}", run.leftovers);
    assert!(run.leftovers.close(Duration::from_secs(5)).await, "leftovers did not die");
    assert!(!alive(holder), "lock holder {holder} survived closing the leftovers");
}

/// A run abandoned halfway (its future dropped: the session gave up) kills
/// everything it started, setsid'd descendants included.
#[tokio::test(flavor = "current_thread")]
async fn abandoned_run_kills_everything_it_started() {
    quiesce_tests::require!(Root);
    let s = Scratch::new("abandoned");
    let pidfile = s.join("gc.pid");
    let script =
        s.script("pre.sh", &format!("#!/bin/sh\nsetsid sh -c 'echo $$ > {p}; exec sleep 1000' &\nsleep 1000\n", p = pidfile.display()));
    let file = trusted(&script);
    let spec = spec();
    let mut run = Box::pin(run_script(&file, &spec));
    let gc = loop {
        tokio::select! {
            r = &mut run => panic!("the script finished: {:?}", r.outcome),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {
                if let Some(pid) = fs::read_to_string(&pidfile).ok().and_then(|p| p.trim().parse::<i32>().ok()) {
                    break pid;
                }
            }
        }
    };
    assert!(alive(gc));
    drop(run);
    assert!(gone_within(gc, Duration::from_secs(5)), "setsid grandchild {gc} survived the abandoned run");
}
