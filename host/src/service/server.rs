//! The accept loop and one task per connection.
//!
//! A connection is authorised by its peer credentials first. Then it reads
//! one request line at a time (capped at [`MAX_LINE`]), answers it, and
//! reads the next: replies come in request order. Nothing a client does can
//! stall another client or the session: each connection is its own task,
//! the session runs on the worker thread, a reply that cannot be written
//! within [`WRITE_TIMEOUT`] (a client that never reads) closes that
//! connection, and the shared state is only locked for plain reads and writes.

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

/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 64;

pub(super) struct Ctx {
    pub shared: SharedRef,
    pub jobs: mpsc::UnboundedSender<Job>,
}

pub(super) async fn accept_loop(listener: tokio::net::UnixListener, ctx: Arc<Ctx>, mut stop: Interrupt) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut next_conn: u64 = 0;
    loop {
        // Waiting for a free slot first leaves excess clients in the backlog
        // instead of accepting connections nobody serves.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.wait() => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait() => break,
        };
        match accepted {
            Ok((stream, _)) => {
                next_conn = next_conn.wrapping_add(1);
                let ctx = ctx.clone();
                let conn = next_conn;
                tokio::spawn(async move {
                    serve_conn(stream, ctx, conn).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_conn(stream: UnixStream, ctx: Arc<Ctx>, conn: u64) {
    let gid = lock(&ctx.shared).gid;
    let (mut rd, mut wr) = stream.into_split();
    let peer = match Peer::of(wr.as_ref().as_fd()) {
        Ok(p) if p.authorized(gid) => {
            tracing::debug!("connection {conn} from pid {} uid {}", p.pid, p.uid);
            p
        }
        Ok(p) => {
            tracing::warn!("refused connection from pid {} uid {}: not root and not in the allowed group", p.pid, p.uid);
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
    let mut bound = false;
    loop {
        let out = match lines.next(&mut rd).await {
            Ok(Some(line)) if line.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(Some(line)) => handle(&ctx, &peer, conn, &line, &mut bound).await,
            Ok(None) | Err(LineError::Io) => break,
            Err(LineError::TooLarge) => {
                let f = Failure::new(Code::RequestTooLarge, format!("a request line is at most {MAX_LINE} bytes; closing the connection"));
                let _ = tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&protocol::error_line(&Value::Null, &f))).await;
                break;
            }
        };
        match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&out)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                tracing::warn!("connection {conn}: the client did not read its reply within {} s; closed", WRITE_TIMEOUT.as_secs());
                break;
            }
        }
    }
    if bound {
        let _ = ctx.jobs.send(Job::Disconnected { conn });
    }
}

/// One request line in, one reply line out.
async fn handle(ctx: &Ctx, peer: &Peer, conn: u64, line: &[u8], bound: &mut bool) -> Vec<u8> {
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
            let claimed = lock(&ctx.shared).claim();
            match claimed {
                Err(f) => Err(f),
                Ok(()) => {
                    let uid = peer.uid;
                    let r = ask(ctx, |reply| Job::Begin { args, conn, uid, reply }).await;
                    if matches!(&r, Ok(m) if bind && m.get("proceed") == Some(&json!(true))) {
                        *bound = true;
                    }
                    r
                }
            }
        }
        Op::End(mut args) => {
            // Own statement: the guard must be gone before the await below.
            let pinned = lock(&ctx.shared).pin(&mut args.target);
            match pinned {
                Ok(()) => ask(ctx, |reply| Job::End { args, uid: peer.uid, reply }).await,
                Err(f) => Err(f),
            }
        }
        Op::Abort(mut target) => {
            let pinned = lock(&ctx.shared).pin(&mut target);
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
}

impl LineReader {
    fn new() -> LineReader {
        LineReader { buf: Vec::new() }
    }

    /// The next line without its newline; None at end of input (a partial
    /// last line is dropped: a request is only complete with its newline).
    async fn next<R: AsyncRead + Unpin>(&mut self, rd: &mut R) -> Result<Option<Vec<u8>>, LineError> {
        let mut chunk = [0u8; 8192];
        let mut scanned = 0;
        loop {
            if let Some(pos) = self.buf[scanned..].iter().position(|&b| b == b'\n').map(|p| p + scanned) {
                if pos >= MAX_LINE {
                    return Err(LineError::TooLarge);
                }
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                return Ok(Some(line));
            }
            scanned = self.buf.len();
            if self.buf.len() >= MAX_LINE {
                return Err(LineError::TooLarge);
            }
            let n = rd.read(&mut chunk).await.map_err(|_| LineError::Io)?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}
