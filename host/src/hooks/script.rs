//! Run a legacy shell-script hook — correctly.
//!
//! The reference framework's script runner has a list of known defects
//! (legacy-framework.md); each one has a counterpart here:
//!
//! - **Retries re-run the script**: up to `retries + 1` attempts, each told
//!   its number in `QUIESCE_ATTEMPT` (and `QUIESCE_MAX_ATTEMPTS`).
//! - **A timeout kills everything**: the script runs in a [`Containment`]
//!   (a cgroup v2, else the host as child subreaper), so on timeout every
//!   process it started gets SIGTERM, and SIGKILL after `kill_grace` —
//!   also descendants that called `setsid` or double-forked. "Timed out"
//!   is reported once all of them are gone.
//! - **Output is read continuously**, logged line by line up to
//!   `output_cap` bytes and counted beyond, so a chatty script never blocks.
//! - **The shebang is honoured**: the script is executed, not fed to `sh`
//!   (files with neither `#!` nor an ELF header fall back to `/bin/sh`).
//! - **Exit codes listed in `warning_exit_codes`** count as success with a warning.
//! - **No polling**: completion is the exit of the script process, reported
//!   by the kernel; a no-op script costs milliseconds, not seconds.
//!
//! Two further promises:
//!
//! - **The file that runs is the file that was checked.** The script is
//!   executed through the fd held by [`TrustedFile`] (`/proc/self/fd/N`),
//!   never by path, so swapping the path after the check changes nothing.
//! - **A clean environment**: argv exactly as configured, a fixed
//!   documented environment ([`BASE_ENV`] plus `QUIESCE_*`), stdin
//!   `/dev/null`, cwd `/`. Nothing leaks in from the host's environment.
//!
//! Completion means "the script process exited". A script may deliberately
//! leave a background child holding a lock (the legacy MySQL sample keeps
//! `FLUSH TABLES WITH READ LOCK` alive that way); that child is neither
//! waited for nor killed when the script exits, and its output is drained by
//! a detached task so it does not die of SIGPIPE. It is not forgotten
//! either: [`ScriptRun::leftovers`] is the run's containment, and dropping
//! it kills whatever is still in it. The session keeps a pre script's
//! leftovers until the hook's post script ran (or the session ends).
//!
//! Limits:
//! - Scripts with a shebang, and the `/bin/sh` fallback, see
//!   `/proc/self/fd/N` as `$0` (the kernel hands the interpreter the name
//!   that was exec'd); `QUIESCE_SCRIPT` holds the configured path, so
//!   `$(dirname "$0")` idioms must use it instead.
//! - The script and its children inherit that read-only fd N on the script
//!   file itself (that is how the interpreter opens it).
//! - The interpreter named by the shebang is resolved by the kernel as usual;
//!   only the script file is trust-checked.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{self, FcntlArg};
use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::unix::pipe;
use tokio::time::Instant;

use crate::contain::{ContainedChild, Containment, Spec};
use crate::trust::TrustedFile;

/// The environment every script starts with (before `ScriptSpec::env`).
pub const BASE_ENV: [(&str, &str); 3] =
    [("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"), ("LANG", "C.UTF-8"), ("HOME", "/root")];

/// Interpreter for files without `#!` — what the legacy framework used for all.
const FALLBACK_SHELL: &str = "/bin/sh";

/// Lines longer than this are logged in pieces (a script printing one
/// endless line must not grow memory).
const MAX_LINE: usize = 16 * 1024;

/// After the script exits, at most this much already-written output per
/// stream is read before the attempt is reported. A background child that
/// writes without pause must not keep the attempt from completing.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// How often, during the SIGTERM grace period, we look whether the rest of
/// the containment is gone. Only on the timeout path; normal completion
/// is event-driven.
const GROUP_POLL: Duration = Duration::from_millis(10);

/// How long we wait for SIGKILLed processes to disappear before reporting.
const KILL_SETTLE: Duration = Duration::from_secs(2);

/// How to run one script hook.
#[derive(Clone, Debug)]
pub struct ScriptSpec {
    /// Hook name for logs.
    pub name: String,
    /// argv[1..], passed exactly (empty strings and spaces preserved).
    pub args: Vec<String>,
    /// `QUIESCE_*` variables set by the session (session id, phase, ...).
    /// Applied after [`BASE_ENV`] (so they may override it) and before the
    /// runner's own `QUIESCE_SCRIPT`/`QUIESCE_ATTEMPT`/`QUIESCE_MAX_ATTEMPTS`.
    pub env: Vec<(String, String)>,
    /// Per attempt.
    pub timeout: Duration,
    /// N retries = up to N+1 attempts. Only failed or timed-out attempts are retried.
    pub retries: u32,
    /// Pause between attempts.
    pub retry_delay: Duration,
    /// Time between SIGTERM and SIGKILL when an attempt times out.
    pub kill_grace: Duration,
    /// Exit codes that count as success with a warning (e.g. `[2]`).
    pub warning_exit_codes: Vec<i32>,
    /// Bytes of output kept (and logged) per attempt; the rest is counted.
    pub output_cap: usize,
}

impl ScriptSpec {
    /// The legacy defaults: 10 s timeout, no retries, 2 s kill grace, 64 KiB of output.
    pub fn new(name: impl Into<String>) -> ScriptSpec {
        ScriptSpec {
            name: name.into(),
            args: Vec::new(),
            env: Vec::new(),
            timeout: Duration::from_secs(10),
            retries: 0,
            retry_delay: Duration::from_secs(1),
            kill_grace: Duration::from_secs(2),
            warning_exit_codes: Vec::new(),
            output_cap: crate::hooks::OUTPUT_CAP,
        }
    }
}

/// How one attempt, or the whole run, ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScriptOutcome {
    Succeeded,
    /// Exited with one of `warning_exit_codes`.
    SucceededWithWarning {
        exit_code: i32,
    },
    /// Non-zero exit (`exit_code`) or killed by a signal (`signal`).
    Failed {
        exit_code: Option<i32>,
        signal: Option<i32>,
    },
    /// Ran past the timeout; everything it started was killed.
    TimedOut,
    /// Could not be started at all (not retried: it would fail the same way).
    SpawnFailed {
        message: String,
    },
}

impl ScriptOutcome {
    pub fn is_success(&self) -> bool {
        matches!(self, ScriptOutcome::Succeeded | ScriptOutcome::SucceededWithWarning { .. })
    }

    fn retryable(&self) -> bool {
        matches!(self, ScriptOutcome::Failed { .. } | ScriptOutcome::TimedOut)
    }
}

/// One execution of the script.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// 1-based; the script saw it as `QUIESCE_ATTEMPT`.
    pub number: u32,
    pub outcome: ScriptOutcome,
    pub duration: Duration,
    /// The *first* `output_cap` bytes of stdout and stderr, interleaved line
    /// by line in the order they were read, decoded lossily as UTF-8.
    /// Output a background child writes after the script exited is logged
    /// but not included.
    pub output: String,
    /// All bytes read from stdout and stderr until the attempt ended, kept or not.
    pub output_bytes: u64,
    /// Pid of the script; 0 if it never started.
    pub pid: u32,
}

/// All attempts of one run; `outcome` is the last attempt's.
#[derive(Debug)]
pub struct ScriptRun {
    pub attempts: Vec<Attempt>,
    pub outcome: ScriptOutcome,
    pub duration: Duration,
    /// Whatever the attempts left running (a lock holder), contained.
    /// Dropping it kills all of it; keep it as long as that may live.
    pub leftovers: Containment,
}

/// Runs `script` under `spec`, retrying failed or timed-out attempts.
pub async fn run_script(script: &TrustedFile, spec: &ScriptSpec) -> ScriptRun {
    let started = Instant::now();
    let max_attempts = spec.retries.saturating_add(1);
    let mut attempts = Vec::new();
    // Dropped (killing everything) if this future is abandoned mid-run.
    let mut containment = Containment::new(&spec.name);

    match Launch::prepare(script) {
        Err(message) => attempts.push(Attempt {
            number: 1,
            outcome: ScriptOutcome::SpawnFailed { message },
            duration: started.elapsed(),
            output: String::new(),
            output_bytes: 0,
            pid: 0,
        }),
        Ok(launch) => {
            for number in 1..=max_attempts {
                if number > 1 {
                    tokio::time::sleep(spec.retry_delay).await;
                }
                let attempt = run_attempt(&launch, script, spec, number, max_attempts, &mut containment).await;
                let again = attempt.outcome.retryable() && number < max_attempts;
                attempts.push(attempt);
                if !again {
                    break;
                }
            }
        }
    }

    let outcome = match attempts.last() {
        Some(a) => a.outcome.clone(),
        None => ScriptOutcome::SpawnFailed { message: "no attempt was made".into() },
    };
    ScriptRun { attempts, outcome, duration: started.elapsed(), leftovers: containment }
}

/// How the checked file is executed; decided once per run.
struct Launch {
    /// Our own duplicate of the trusted fd: CLOEXEC, and never 0–2, which
    /// the child's stdio setup would overwrite before exec.
    fd: OwnedFd,
    /// No `#!` and no ELF header: run it with `/bin/sh`, as the legacy framework did.
    via_shell: bool,
}

impl Launch {
    fn prepare(script: &TrustedFile) -> Result<Launch, String> {
        let path = script.path().display();
        let raw = fcntl::fcntl(script.file().as_fd(), FcntlArg::F_DUPFD_CLOEXEC(3))
            .map_err(|e| format!("cannot duplicate the fd of {path}: {e}"))?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // read_at is pread(2): read the header from the checked file without moving its offset.
        let mut head = [0u8; 4];
        let n = script.file().read_at(&mut head, 0).map_err(|e| format!("cannot read {path}: {e}"))?;
        let head = &head[..n];
        let via_shell = !(head.starts_with(b"#!") || head == b"\x7fELF");
        Ok(Launch { fd, via_shell })
    }

    /// A duplicate of the fd *without* close-on-exec, so the child inherits
    /// it and the script (or its interpreter) can open /proc/self/fd/N.
    /// It lives only while one child is spawned (the spawner does no fd
    /// juggling of its own beyond stdio).
    fn inheritable(&self) -> io::Result<OwnedFd> {
        let raw = fcntl::fcntl(self.fd.as_fd(), FcntlArg::F_DUPFD(3))?;
        // SAFETY: F_DUPFD returned a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }

    /// The command: stdin /dev/null, stdout/stderr piped, cwd `/`, its own
    /// process group (not for cleanup — the containment does that — but so
    /// that signals meant for the host's terminal group miss the script).
    fn command(&self, fd: &OwnedFd, script: &TrustedFile, spec: &ScriptSpec, number: u32, max: u32) -> Spec {
        let fd_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let mut cmd = if self.via_shell {
            let mut cmd = Spec::new(FALLBACK_SHELL);
            cmd.arg(&fd_path);
            cmd
        } else {
            // With a shebang the kernel hands the interpreter the exec'd
            // name (/proc/self/fd/N), which it can open because the fd is
            // inherited; argv[0] only matters for ELF files.
            let mut cmd = Spec::new(&fd_path);
            cmd.arg0 = Some(script.path().as_os_str().to_owned());
            cmd
        };
        for a in &spec.args {
            cmd.arg(a);
        }
        for (k, v) in base_env(&spec.env) {
            cmd.env(k, v);
        }
        cmd.env("QUIESCE_SCRIPT", script.path()).env("QUIESCE_ATTEMPT", number.to_string()).env("QUIESCE_MAX_ATTEMPTS", max.to_string());
        cmd
    }
}

/// [`BASE_ENV`], then `extra` (which may override it): the whole
/// environment of every process quiesce starts.
pub fn base_env(extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = BASE_ENV.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    for (k, v) in extra {
        env.retain(|(n, _)| n != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

async fn spawn(
    launch: &Launch,
    script: &TrustedFile,
    spec: &ScriptSpec,
    n: u32,
    max: u32,
    c: &mut Containment,
) -> io::Result<ContainedChild> {
    let mut tries = 0;
    loop {
        let fd = launch.inheritable()?;
        match c.spawn(&launch.command(&fd, script, spec, n, max)) {
            // ETXTBSY: another thread of this process forked while it held
            // some file open for writing, and that fork has not exec'd yet
            // (rust-lang/rust#114554). It clears within milliseconds.
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 5 => {
                tries += 1;
                drop(fd);
                tokio::time::sleep(Duration::from_millis(10 << tries)).await;
            }
            other => return other,
        }
    }
}

async fn run_attempt(launch: &Launch, script: &TrustedFile, spec: &ScriptSpec, number: u32, max: u32, c: &mut Containment) -> Attempt {
    let started = Instant::now();
    let path = script.path().display();
    let mut child = match spawn(launch, script, spec, number, max, c).await {
        Ok(child) => child,
        Err(e) => {
            let message = format!("cannot start {path}: {e}");
            tracing::warn!(hook = %spec.name, attempt = number, "{message}");
            return Attempt {
                number,
                outcome: ScriptOutcome::SpawnFailed { message },
                duration: started.elapsed(),
                output: String::new(),
                output_bytes: 0,
                pid: 0,
            };
        }
    };
    let pid = child.id();
    tracing::info!(hook = %spec.name, attempt = number, max_attempts = max, pid, "started {path}");

    let mut out = Output {
        sink: Sink::new(&spec.name, number, spec.output_cap),
        stdout: Pipe::new("stdout", child.stdout.take()),
        stderr: Pipe::new("stderr", child.stderr.take()),
    };

    let deadline = crate::duration::deadline_tokio(started, spec.timeout);
    let outcome = match out.pump(Some(&mut child), Some(deadline)).await {
        Some(Ok(status)) => {
            // The script is done; whatever it left running is deliberate (a
            // lock holder) and lives until the caller drops the leftovers.
            classify(status, spec)
        }
        Some(Err(e)) => {
            // Cannot happen short of a kernel/runtime bug; do not leave the
            // script running unobserved.
            c.kill();
            ScriptOutcome::SpawnFailed { message: format!("lost track of {path} (pid {pid}): {e}") }
        }
        None => {
            tracing::warn!(hook = %spec.name, attempt = number, pid, "timed out after {:?}; terminating everything it started", spec.timeout);
            terminate(&mut child, c, &mut out, spec.kill_grace).await;
            ScriptOutcome::TimedOut
        }
    };

    // Everything the script wrote before exiting is in the pipes now.
    out.drain_written();
    let duration = started.elapsed();
    tracing::info!(hook = %spec.name, attempt = number, pid, ?outcome, duration_ms = duration.as_secs_f64() * 1e3, "finished {path}");
    let attempt = Attempt {
        number,
        outcome,
        duration,
        output: String::from_utf8_lossy(&out.sink.kept).into_owned(),
        output_bytes: out.sink.total,
        pid,
    };
    out.detach();
    attempt
}

fn classify(status: ExitStatus, spec: &ScriptSpec) -> ScriptOutcome {
    match (status.code(), status.signal()) {
        (Some(0), _) => ScriptOutcome::Succeeded,
        (Some(code), _) if spec.warning_exit_codes.contains(&code) => ScriptOutcome::SucceededWithWarning { exit_code: code },
        (code, signal) => ScriptOutcome::Failed { exit_code: code, signal },
    }
}

/// SIGTERM everything in the containment; after `grace`, SIGKILL whatever
/// is left of it, and wait until it is gone.
async fn terminate(child: &mut ContainedChild, c: &Containment, out: &mut Output, grace: Duration) {
    c.signal(Signal::SIGTERM);
    let grace_end = crate::duration::deadline_tokio(Instant::now(), grace);
    // Keep reading meanwhile: a script cleaning up on SIGTERM must not block
    // on a full pipe.
    if out.pump(Some(child), Some(grace_end)).await.is_some() {
        // The script is gone; its descendants get the rest of the grace period.
        while !c.is_empty() && Instant::now() < grace_end {
            out.pump(None, Some((Instant::now() + GROUP_POLL).min(grace_end))).await;
        }
    }
    if !c.is_empty() {
        c.kill();
        // Reap the script (if SIGTERM did not end it) and let the kernel
        // finish the others, so that "timed out" means "gone".
        let _ = out.pump(Some(child), Some(Instant::now() + KILL_SETTLE)).await;
        if !c.wait_empty(Instant::now() + KILL_SETTLE, true).await {
            tracing::warn!("{c:?}: still running {:?} {KILL_SETTLE:?} after SIGKILL", c.members());
        }
    }
}

/// Both output pipes of one attempt and what has been kept from them.
struct Output {
    sink: Sink,
    stdout: Pipe<pipe::Receiver>,
    stderr: Pipe<pipe::Receiver>,
}

impl Output {
    /// Reads output until `child` exits (`Some(status)`) or `deadline`
    /// passes (`None`). Without a child, reads until the deadline, or until
    /// both pipes are closed if there is no deadline.
    async fn pump(&mut self, mut child: Option<&mut ContainedChild>, deadline: Option<Instant>) -> Option<io::Result<ExitStatus>> {
        let sleep = until(deadline);
        tokio::pin!(sleep);
        loop {
            if child.is_none() && self.stdout.stream.is_none() && self.stderr.stream.is_none() {
                // Nothing left to watch: only the deadline remains.
                if deadline.is_some() {
                    sleep.await;
                }
                return None;
            }
            // Deadline and exit first: a script that writes without pause
            // must still time out, and its exit must still be noticed.
            tokio::select! {
                biased;
                _ = &mut sleep => return None,
                status = wait(child.as_deref_mut()) => return Some(status),
                r = self.stdout.read() => self.stdout.consume(r, &mut self.sink),
                r = self.stderr.read() => self.stderr.consume(r, &mut self.sink),
            }
        }
    }

    /// Reads what is already in the pipes, without waiting. Called once the
    /// script has exited: all it wrote is there, whether or not the reactor
    /// has told us yet, so no output is lost and no EOF is awaited.
    fn drain_written(&mut self) {
        self.stdout.drain_written(&mut self.sink);
        self.stderr.drain_written(&mut self.sink);
        self.stdout.flush_partial(&mut self.sink);
        self.stderr.flush_partial(&mut self.sink);
    }

    /// Keeps reading (and logging) what background children still write,
    /// until they close the pipes; nobody waits for this.
    fn detach(mut self) {
        if self.stdout.stream.is_none() && self.stderr.stream.is_none() {
            return;
        }
        tokio::spawn(async move {
            while self.stdout.stream.is_some() || self.stderr.stream.is_some() {
                self.pump(None, None).await;
            }
            self.stdout.flush_partial(&mut self.sink);
            self.stderr.flush_partial(&mut self.sink);
        });
    }
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn wait(child: Option<&mut ContainedChild>) -> io::Result<ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

/// One output stream, split into lines for the log.
struct Pipe<R> {
    name: &'static str,
    /// None once at EOF (or after a read error).
    stream: Option<R>,
    /// An incomplete last line.
    pending: Vec<u8>,
    buf: Box<[u8]>,
}

impl<R: AsyncRead + AsFd + Unpin> Pipe<R> {
    fn new(name: &'static str, stream: Option<R>) -> Self {
        Pipe { name, stream, pending: Vec::new(), buf: vec![0; 64 * 1024].into_boxed_slice() }
    }

    /// Waits for the next chunk; never resolves at EOF, so a closed stream
    /// simply drops out of the `select!`.
    async fn read(&mut self) -> io::Result<usize> {
        match self.stream.as_mut() {
            Some(s) => s.read(&mut self.buf).await,
            None => std::future::pending().await,
        }
    }

    fn consume(&mut self, r: io::Result<usize>, sink: &mut Sink) {
        match r {
            Ok(0) => self.close(sink),
            Ok(n) => self.feed(n, sink),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(hook = %sink.hook, stream = self.name, "reading script output failed: {e}");
                self.close(sink);
            }
        }
    }

    fn close(&mut self, sink: &mut Sink) {
        self.stream = None;
        self.flush_partial(sink);
    }

    /// Non-blocking reads (tokio's pipes are O_NONBLOCK) until the pipe is
    /// empty, at EOF, or `DRAIN_LIMIT` is reached.
    fn drain_written(&mut self, sink: &mut Sink) {
        let mut read = 0;
        while read < DRAIN_LIMIT {
            let Some(stream) = self.stream.as_ref() else { return };
            match nix::unistd::read(stream.as_fd(), &mut self.buf) {
                Ok(0) => return self.close(sink),
                Ok(n) => {
                    read += n;
                    self.feed(n, sink);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return,
                Err(e) => {
                    tracing::warn!(hook = %sink.hook, stream = self.name, "reading script output failed: {e}");
                    return self.close(sink);
                }
            }
        }
    }

    /// Takes `self.buf[..n]`: counts it, and hands complete lines to the sink.
    fn feed(&mut self, n: usize, sink: &mut Sink) {
        sink.total += n as u64;
        if sink.truncated {
            return;
        }
        let mut rest = &self.buf[..n];
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            if self.pending.is_empty() {
                sink.line(self.name, &rest[..i]);
            } else {
                self.pending.extend_from_slice(&rest[..i]);
                sink.line(self.name, &std::mem::take(&mut self.pending));
            }
            rest = &rest[i + 1..];
            if sink.truncated {
                self.pending.clear();
                return;
            }
        }
        self.pending.extend_from_slice(rest);
        if !self.pending.is_empty() && self.pending.len() >= MAX_LINE.min(sink.room()).max(1) {
            sink.line(self.name, &std::mem::take(&mut self.pending));
        }
    }

    fn flush_partial(&mut self, sink: &mut Sink) {
        if !self.pending.is_empty() {
            sink.line(self.name, &std::mem::take(&mut self.pending));
        }
    }
}

/// What is kept of an attempt's output, and how much there was.
struct Sink {
    hook: String,
    attempt: u32,
    cap: usize,
    kept: Vec<u8>,
    total: u64,
    truncated: bool,
}

impl Sink {
    fn new(hook: &str, attempt: u32, cap: usize) -> Sink {
        Sink { hook: hook.to_owned(), attempt, cap, kept: Vec::new(), total: 0, truncated: false }
    }

    fn room(&self) -> usize {
        self.cap.saturating_sub(self.kept.len())
    }

    /// Keeps and logs one line (without its newline) while under the cap.
    fn line(&mut self, stream: &'static str, line: &[u8]) {
        if self.truncated {
            return;
        }
        let room = self.room();
        let (keep, fits) = if line.len() < room { (line, true) } else { (&line[..room], false) };
        if fits || !keep.is_empty() {
            let text = String::from_utf8_lossy(keep);
            tracing::info!(hook = %self.hook, attempt = self.attempt, stream, "{text}");
            self.kept.extend_from_slice(keep);
            if fits {
                self.kept.push(b'\n');
            }
        }
        if !fits {
            self.truncated = true;
            tracing::info!(
                hook = %self.hook, attempt = self.attempt,
                "output truncated after {} bytes; the rest is counted, not kept", self.cap
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(cap: usize, chunks: &[&[u8]]) -> Sink {
        let mut sink = Sink::new("t", 1, cap);
        let mut pipe: Pipe<pipe::Receiver> = Pipe::new("stdout", None);
        for c in chunks {
            pipe.buf[..c.len()].copy_from_slice(c);
            pipe.feed(c.len(), &mut sink);
        }
        pipe.flush_partial(&mut sink);
        sink
    }

    #[test]
    fn lines_split_across_chunks_are_joined() {
        let s = feed_all(100, &[b"hel", b"lo\nwor", b"ld\n", b"tail"]);
        assert_eq!(s.kept, b"hello\nworld\ntail\n");
        assert_eq!(s.total, 16);
        assert!(!s.truncated);
    }

    #[test]
    fn output_beyond_the_cap_is_counted_not_kept() {
        let s = feed_all(8, &[b"12345\n67890\nabc\n"]);
        assert_eq!(s.kept, b"12345\n67");
        assert_eq!(s.total, 16);
        assert!(s.truncated);
    }

    #[test]
    fn a_line_without_newline_does_not_grow_past_the_cap() {
        let big = vec![b'x'; 40_000];
        let s = feed_all(1000, &[&big, &big]);
        assert_eq!(s.kept.len(), 1000);
        assert_eq!(s.total, 80_000);
    }

    #[test]
    fn warning_codes_are_success() {
        let mut spec = ScriptSpec::new("t");
        spec.warning_exit_codes = vec![2];
        assert_eq!(classify(ExitStatus::from_raw(2 << 8), &spec), ScriptOutcome::SucceededWithWarning { exit_code: 2 });
        assert_eq!(classify(ExitStatus::from_raw(3 << 8), &spec), ScriptOutcome::Failed { exit_code: Some(3), signal: None });
        assert_eq!(classify(ExitStatus::from_raw(9), &spec), ScriptOutcome::Failed { exit_code: None, signal: Some(9) });
        assert_eq!(classify(ExitStatus::from_raw(0), &spec), ScriptOutcome::Succeeded);
    }
}
