//! The accept loop and one task per connection.
//!
//! A connection is authorised by its peer credentials first. Then it reads
//! one request line at a time (capped at [`MAX_LINE`]), answers it, and
//! reads the next: replies come in request order. Nothing a client does can
//! stall another client or the session: each connection is its own task,
//! the session runs on the worker thread, a reply that cannot be written
//! within [`WRITE_TIMEOUT`] (a client that never reads) closes that
//! connection, so does `[service] idle_timeout_secs` without a request, and the shared state is only locked for plain reads and writes.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::peer::Peer;
use super::protocol::{self, Code, Failure, Op, MAX_LINE, OPS, PROTOCOL_VERSION};
use super::slot::{lock, Job, SharedRef};
use crate::interrupt::Interrupt;
use crate::report::ErrorCode;

/// A reply not taken by the client within this is dropped with its connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a refused peer's first request is waited for.
const REFUSAL_READ: Duration = Duration::from_millis(500);

/// Refused peers answered at once (each waits up to [`REFUSAL_READ`] for its
/// request); past these, one is closed without an answer — an unauthorised
/// local user looping on `connect()` must not use up the service's fds.
const REFUSALS_AT_ONCE: usize = 8;

/// At most one "refused" log line per this; the rest are counted into it.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

/// Connections served at once: root's own, and those anyone allowed may use.
/// A group member's idle connections can fill only the shared ones: root's
/// agents (qemu-ga's hook, the Azure scripts, the timer) always get in.
pub const ROOT_CONNECTIONS: usize = 16;
pub const SHARED_CONNECTIONS: usize = 48;

pub(super) struct Ctx {
    pub shared: SharedRef,
    pub jobs: mpsc::UnboundedSender<Job>,
}

/// The connection slots; a connection holds one for its life.
struct Slots {
    root: Arc<Semaphore>,
    shared: Arc<Semaphore>,
    /// Refused peers being answered (see [`REFUSALS_AT_ONCE`]).
    refusing: Arc<Semaphore>,
    refusal_log: std::sync::Mutex<RefusalLog>,
}

/// Logs refused connections at most once per [`REFUSAL_LOG_EVERY`]: a
/// client looping on `connect()` must not fill the log file.
#[derive(Default)]
struct RefusalLog {
    last: Option<std::time::Instant>,
    unlogged: u64,
}

impl RefusalLog {
    /// Some(n): log this refusal now, with the `n` left unlogged since the last.
    fn next(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_EVERY) {
            self.unlogged += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

impl Slots {
    /// Root takes its own slots first, then shared ones; anyone else only
    /// shared ones. None: all taken — the client is told so at once rather
    /// than left waiting in the backlog (a hook would hang its agent).
    fn take(&self, root: bool) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let own = root.then(|| self.root.clone().try_acquire_owned().ok()).flatten();
        own.or_else(|| self.shared.clone().try_acquire_owned().ok())
    }

    /// Logs a refusal (`why`), unless one was logged within the last second.
    fn log_refusal(&self, why: impl FnOnce() -> String) {
        let next = self.refusal_log.lock().unwrap_or_else(|p| p.into_inner()).next();
        if let Some(unlogged) = next {
            let more = if unlogged > 0 { format!(" ({unlogged} more refused since the last such line)") } else { String::new() };
            tracing::warn!("{}{more}", why());
        }
    }
}

pub(super) async fn accept_loop(listener: tokio::net::UnixListener, ctx: Arc<Ctx>, mut stop: Interrupt) {
    let slots = Arc::new(Slots {
        root: Arc::new(Semaphore::new(ROOT_CONNECTIONS)),
        shared: Arc::new(Semaphore::new(SHARED_CONNECTIONS)),
        refusing: Arc::new(Semaphore::new(REFUSALS_AT_ONCE)),
        refusal_log: Default::default(),
    });
    let mut next_conn: u64 = 0;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait() => break,
        };
        match accepted {
            Ok((stream, _)) => {
                next_conn = next_conn.wrapping_add(1);
                let ctx = ctx.clone();
                let conn = next_conn;
                let slots = slots.clone();
                tokio::spawn(async move { serve_conn(stream, ctx, conn, &slots).await });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_conn(stream: UnixStream, ctx: Arc<Ctx>, conn: u64, slots: &Slots) {
    let gid = lock(&ctx.shared).gid;
    let (mut rd, mut wr) = stream.into_split();
    let (peer, _slot) = match Peer::of(wr.as_ref().as_fd()) {
        Ok(p) if p.authorized(gid) => {
            let Some(slot) = slots.take(p.uid == 0) else {
                slots.log_refusal(|| {
                    format!("connection {conn} from pid {} uid {} refused: every connection slot it may use is taken", p.pid, p.uid)
                });
                let f = Failure::new(
                    Code::TooManyConnections,
                    format!(
                        "the service serves {SHARED_CONNECTIONS} connections at once (and {ROOT_CONNECTIONS} more for root); \
                         close idle ones or try again"
                    ),
                );
                let _ = tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&protocol::error_line(&Value::Null, &f))).await;
                return;
            };
            tracing::debug!("connection {conn} from pid {} uid {}", p.pid, p.uid);
            (p, slot)
        }
        Ok(p) => {
            let Ok(_refusing) = slots.refusing.clone().try_acquire_owned() else { return };
            slots.log_refusal(|| format!("refused connection from pid {} uid {}: not root and not in the allowed group", p.pid, p.uid));
            let f =
                Failure::new(Code::NotAuthorized, format!("uid {} may not use this service: root, or a member of [service] group", p.uid));
            // Its first request is read (briefly) so that a client that
            // writes before it reads gets this answer, not a broken pipe.
            let id = match tokio::time::timeout(REFUSAL_READ, LineReader::new().next(&mut rd)).await {
                Ok(Ok(Some(line))) => protocol::parse(&line).map(|r| r.id).unwrap_or_else(|(id, _)| id),
                _ => Value::Null,
            };
            let _ = tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&protocol::error_line(&id, &f))).await;
            return;
        }
        Err(e) => {
            tracing::warn!("connection {conn}: cannot read the peer's credentials ({e}); closed");
            return;
        }
    };
    let mut lines = LineReader::new();
    // The session bound to this connection (`bind: true`), once begun.
    let mut bound: Option<String> = None;
    loop {
        let idle = lock(&ctx.shared).idle_timeout;
        let next = match tokio::time::timeout(idle, lines.next(&mut rd)).await {
            Ok(next) => next,
            // Its bound session lives as long as the connection: never cut.
            Err(_) if bound.as_deref().is_some_and(|id| lock(&ctx.shared).is_current(id)) => continue,
            Err(_) => {
                tracing::info!("connection {conn} from pid {} closed: no request for {} s", peer.pid, idle.as_secs());
                let f = Failure::new(
                    Code::IdleTimeout,
                    format!(
                        "no request for {} s ([service] idle_timeout_secs): closing the connection; reconnect to go on",
                        idle.as_secs()
                    ),
                );
                let _ = tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&protocol::error_line(&Value::Null, &f))).await;
                break;
            }
        };
        let mut began = None;
        let out = match next {
            Ok(Some(line)) if line.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(Some(line)) => handle(&ctx, &peer, conn, &line, &mut bound, &mut began).await,
            Ok(None) | Err(LineError::Io) => break,
            Err(LineError::TooLarge) => {
                let f = Failure::new(Code::RequestTooLarge, format!("a request line is at most {MAX_LINE} bytes; closing the connection"));
                let _ = tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&protocol::error_line(&Value::Null, &f))).await;
                break;
            }
        };
        match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&out)).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) => {}
            Err(_) => tracing::warn!("connection {conn}: the client did not read its reply within {} s; closed", WRITE_TIMEOUT.as_secs()),
        }
        // Not delivered. A client gone while its `begin` ran the pre hooks
        // (killed by its agent's timeout) never learned the session began:
        // nobody would end it, and the locks its hooks took would be held
        // until the hold deadline. A bound session ends through `Disconnected`.
        if let (Some(session_id), None) = (began, &bound) {
            tracing::warn!("connection {conn}: the `begin` reply for session {session_id} could not be delivered: aborting it");
            let _ = ctx.jobs.send(Job::Undelivered { session_id, uid: peer.uid });
        }
        break;
    }
    if bound.is_some() {
        let _ = ctx.jobs.send(Job::Disconnected { conn });
    }
}

/// One request line in, one reply line out. A `begin` that began a session
/// puts its id in `began`.
async fn handle(ctx: &Ctx, peer: &Peer, conn: u64, line: &[u8], bound: &mut Option<String>, began: &mut Option<String>) -> Vec<u8> {
    let req = match protocol::parse(line) {
        Ok(r) => r,
        Err((id, f)) => return protocol::error_line(&id, &f),
    };
    // Checked per request, against the config in use: a reload that drops
    // or changes `[service] group` also ends what open connections may do.
    let gid = lock(&ctx.shared).gid;
    if !peer.authorized(gid) {
        let f = Failure::new(Code::NotAuthorized, format!("uid {} may no longer use this service ([service] group changed)", peer.uid));
        return protocol::error_line(&req.id, &f);
    }
    let result = match req.op {
        Op::Version => {
            let mut m = Map::new();
            m.insert("protocol".into(), json!(PROTOCOL_VERSION));
            m.insert("quiesce".into(), json!(env!("CARGO_PKG_VERSION")));
            m.insert("ops".into(), json!(OPS));
            m.insert("config_generation".into(), json!(lock(&ctx.shared).config_generation));
            Ok(m)
        }
        Op::Status => Ok(lock(&ctx.shared).status()),
        Op::LastReport => lock(&ctx.shared).last_report().ok_or_else(|| Failure::new(Code::NoReport, "no session has ended yet")),
        Op::Begin(args) => {
            let bind = args.bind;
            // Own statement: the guard must be gone before the await below.
            let claimed = {
                let mut shared = lock(&ctx.shared);
                shared.may_begin(&args, peer.uid).and_then(|()| shared.claim())
            };
            match claimed {
                Err(f) => Err(f),
                Ok(()) => {
                    let uid = peer.uid;
                    let r = ask(ctx, |reply| Job::Begin { args, conn, uid, reply }).await;
                    if let Ok(m) = &r {
                        if m.get("proceed") == Some(&json!(true)) {
                            *began = m.get("session_id").and_then(Value::as_str).map(str::to_string);
                            if bind {
                                bound.clone_from(began);
                            }
                        }
                    }
                    r
                }
            }
        }
        Op::End(mut args) => {
            // Own statement: the guard must be gone before the await below.
            let pinned = lock(&ctx.shared).pin(&mut args.target, peer.uid);
            match pinned {
                Ok(()) => ask(ctx, |reply| Job::End { args, uid: peer.uid, reply }).await,
                Err(f) => Err(f),
            }
        }
        Op::Abort(mut target) => {
            let pinned = lock(&ctx.shared).pin(&mut target, peer.uid);
            match pinned {
                Ok(()) => ask(ctx, |reply| Job::Abort { target, uid: peer.uid, reply }).await,
                Err(f) => Err(f),
            }
        }
    };
    match result {
        Ok(m) => protocol::ok_line(&req.id, m),
        Err(f) => protocol::error_line(&req.id, &f),
    }
}

/// Sends a job to the worker and waits for its answer.
async fn ask(ctx: &Ctx, job: impl FnOnce(super::slot::Reply) -> Job) -> Result<Map<String, Value>, Failure> {
    let (tx, rx) = oneshot::channel();
    let stopping = || Failure::new(Code::Report(ErrorCode::Interrupted), "the service is stopping");
    if ctx.jobs.send(job(tx)).is_err() {
        lock(&ctx.shared).release();
        return Err(stopping());
    }
    rx.await.unwrap_or_else(|_| Err(stopping()))
}

enum LineError {
    TooLarge,
    Io,
}

/// Reads `\n`-terminated lines of at most [`MAX_LINE`] bytes.
struct LineReader {
    buf: Vec<u8>,
    /// Where the next line starts in `buf`: lines are taken by moving this,
    /// and the consumed front is dropped only before a read — shifting the
    /// rest after every line made a stream of empty lines quadratic.
    start: usize,
}

impl LineReader {
    fn new() -> LineReader {
        LineReader { buf: Vec::new(), start: 0 }
    }

    /// The next line without its newline; None at end of input (a partial
    /// last line is dropped: a request is only complete with its newline).
    async fn next<R: AsyncRead + Unpin>(&mut self, rd: &mut R) -> Result<Option<Vec<u8>>, LineError> {
        let mut chunk = [0u8; 8192];
        let mut scanned = self.start;
        loop {
            if let Some(pos) = self.buf[scanned..].iter().position(|&b| b == b'\n').map(|p| p + scanned) {
                if pos - self.start >= MAX_LINE {
                    return Err(LineError::TooLarge);
                }
                let line = self.buf[self.start..pos].to_vec();
                self.start = pos + 1;
                return Ok(Some(line));
            }
            if self.buf.len() - self.start >= MAX_LINE {
                return Err(LineError::TooLarge);
            }
            self.buf.drain(..self.start);
            self.start = 0;
            scanned = self.buf.len();
            let n = rd.read(&mut chunk).await.map_err(|_| LineError::Io)?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its input a few bytes at a time, as a socket may.
    struct Trickle<'a>(&'a [u8], usize);

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self.1.min(self.0.len()).min(buf.remaining());
            buf.put_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn lines(input: &[u8], step: usize) -> Vec<Result<Vec<u8>, &'static str>> {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut rd = Trickle(input, step);
            let mut lines = LineReader::new();
            let mut out = Vec::new();
            loop {
                match lines.next(&mut rd).await {
                    Ok(Some(l)) => out.push(Ok(l)),
                    Ok(None) => return out,
                    Err(LineError::TooLarge) => return [out, vec![Err("too large")]].concat(),
                    Err(LineError::Io) => return [out, vec![Err("io")]].concat(),
                }
            }
        })
    }

    #[test]
    fn refusals_are_logged_once_a_second_with_the_count_left_out() {
        let mut log = RefusalLog::default();
        assert_eq!(log.next(), Some(0), "the first is logged");
        assert_eq!((log.next(), log.next()), (None, None), "the next ones within the second are counted");
        log.last = log.last.map(|t| t - REFUSAL_LOG_EVERY);
        assert_eq!(log.next(), Some(2), "a second later: logged, with the two left out");
        assert_eq!(log.next(), None);
    }

    #[test]
    fn lines_come_whole_in_order_whatever_the_reads() {
        let input = b"{\"op\":\"status\"}\n\n\nsecond\nthird\npartial";
        for step in [1, 2, 5, 8192] {
            let got = lines(input, step);
            let want: Vec<Result<Vec<u8>, &str>> =
                [&b"{\"op\":\"status\"}"[..], b"", b"", b"second", b"third"].iter().map(|l| Ok(l.to_vec())).collect();
            assert_eq!(got, want, "reads of {step} bytes");
        }
    }

    #[test]
    fn a_line_longer_than_the_cap_is_refused_with_or_without_its_newline() {
        let mut long = vec![b'x'; MAX_LINE];
        assert_eq!(lines(&long, 8192), vec![Err("too large")]);
        long.push(b'\n');
        assert_eq!(lines(&[b"ok\n".as_slice(), &long].concat(), 8192), vec![Ok(b"ok".to_vec()), Err("too large")]);
        let fits = [vec![b'y'; MAX_LINE - 1], vec![b'\n']].concat();
        assert_eq!(lines(&fits, 8192), vec![Ok(vec![b'y'; MAX_LINE - 1])]);
    }
}
