//! A blocking client for the service, for the `begin`/`end`/`fsfreeze-hook`
//! commands and for agents that embed quiesce (no async runtime needed).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::protocol::PROTOCOL_VERSION;

/// Overrides the socket for `serve` and every client command.
pub const SOCKET_ENV: &str = "QUIESCE_SOCKET";
pub const DEFAULT_SOCKET: &str = "/run/quiesce/quiesce.sock";

/// The largest reply read (a report with every hook's capped output fits many times).
const MAX_REPLY: u64 = 16 << 20;

/// `$QUIESCE_SOCKET`, else `/run/quiesce/quiesce.sock`.
pub fn socket_from_env() -> PathBuf {
    std::env::var_os(SOCKET_ENV).filter(|s| !s.is_empty()).map(PathBuf::from).unwrap_or_else(|| DEFAULT_SOCKET.into())
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the quiesce service at {}: {source} (is it running? systemctl start quiesce.socket)", .path.display())]
    Unreachable { path: PathBuf, source: std::io::Error },
    /// The socket or its directory is not open to this user.
    #[error(
        "not allowed to use the quiesce service at {}: {source} (only root may, and members of the group `[service] group` names)",
        .path.display()
    )]
    NotAllowed { path: PathBuf, source: std::io::Error },
    #[error("the quiesce service at {} closed the connection or sent no valid reply: {why}", .path.display())]
    BadReply { path: PathBuf, why: String },
    /// No reply within the timeout set by [`Client::set_timeout`].
    #[error("the quiesce service at {} did not answer within {secs:.1} s", .path.display())]
    Timeout { path: PathBuf, secs: f64 },
    /// The service answered `ok: false`.
    #[error("{code}: {message}")]
    Refused { code: String, message: String },
}

impl ClientError {
    /// The error code of a refusal (`BackupOperationInProgress`, `UnknownSession`, ...).
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

pub struct Client {
    path: PathBuf,
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let unreachable = |source| ClientError::Unreachable { path: path.to_path_buf(), source };
        let stream = UnixStream::connect(path).map_err(|source: std::io::Error| match source.kind() {
            std::io::ErrorKind::PermissionDenied => ClientError::NotAllowed { path: path.to_path_buf(), source },
            _ => unreachable(source),
        })?;
        let reader = BufReader::new(stream.try_clone().map_err(unreachable)?);
        Ok(Client { path: path.to_path_buf(), stream, reader, next_id: 1 })
    }

    /// Bounds every later send and reply wait (None: wait as long as the
    /// service takes; a session's pre hooks may take minutes).
    pub fn set_timeout(&self, t: Option<std::time::Duration>) -> Result<(), ClientError> {
        self.stream
            .set_read_timeout(t)
            .and_then(|()| self.stream.set_write_timeout(t))
            .map_err(|source| ClientError::Unreachable { path: self.path.clone(), source })
    }

    /// Sends `op` with `args` and returns the reply's result fields (those
    /// besides `v`, `id`, `ok`), or the refusal.
    pub fn call(&mut self, op: &str, args: Map<String, Value>) -> Result<Map<String, Value>, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = args;
        req.insert("v".into(), json!(PROTOCOL_VERSION));
        req.insert("id".into(), json!(id));
        req.insert("op".into(), json!(op));
        let bad = |why: String| ClientError::BadReply { path: self.path.clone(), why };
        let mut line = serde_json::to_vec(&req).map_err(|e| bad(e.to_string()))?;
        line.push(b'\n');
        self.stream.write_all(&line).map_err(|e| bad(format!("sending: {e}")))?;
        let mut reply = String::new();
        (&mut self.reader).take(MAX_REPLY).read_line(&mut reply).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ClientError::Timeout {
                path: self.path.clone(),
                secs: self.stream.read_timeout().ok().flatten().map(|t| t.as_secs_f64()).unwrap_or(0.0),
            },
            _ => bad(format!("reading: {e}")),
        })?;
        let v: Value = serde_json::from_str(&reply).map_err(|e| bad(format!("{e}")))?;
        let Value::Object(mut m) = v else { return Err(bad("not an object".into())) };
        if m.get("id") != Some(&json!(id)) && m.get("id") != Some(&Value::Null) {
            return Err(bad(format!("reply for another request: {:?}", m.get("id"))));
        }
        if m.get("ok") == Some(&Value::Bool(true)) {
            for k in ["v", "id", "ok"] {
                m.remove(k);
            }
            return Ok(m);
        }
        let err = m.get("error").cloned().unwrap_or(Value::Null);
        Err(ClientError::Refused {
            code: err.get("code").and_then(Value::as_str).unwrap_or("Unknown").to_string(),
            message: err.get("message").and_then(Value::as_str).unwrap_or("").to_string(),
        })
    }
}
