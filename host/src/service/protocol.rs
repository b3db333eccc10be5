//! The wire protocol (v1): one JSON object per line each way, requests
//! carrying an id that their reply repeats. Parsing is strict about what it
//! needs (a bad field is a `BadRequest` naming it) and ignores fields it
//! does not know, so a newer client still talks to an older service.
//!
//! Everything a client sends is bounded here before the session sees it:
//! the line (by the reader), the number and length of mounts and snapshot
//! ids, the hold time.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::duration;
use crate::report::ErrorCode;
use crate::session::{FreezeMode, MAX_SNAPSHOT_ID_BYTES};

pub const PROTOCOL_VERSION: u64 = 1;

/// The longest request line, newline included.
pub const MAX_LINE: usize = 64 * 1024;

/// Most mounts one `begin` may name.
pub const MAX_MOUNTS: usize = 64;
/// Longest `tag`.
pub const MAX_TAG_BYTES: usize = 64;

pub const OPS: [&str; 6] = ["version", "begin", "end", "abort", "status", "last-report"];

/// A reply's error code: the report's, or one of the protocol's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Report(ErrorCode),
    /// Not JSON, not an object, a missing or mistyped field, an unknown op.
    BadRequest,
    /// A request line over [`MAX_LINE`]; the connection is then closed.
    RequestTooLarge,
    UnsupportedVersion,
    /// `end`/`abort` named a session that is not the begun one, or none is begun.
    UnknownSession,
    /// The peer is neither root nor in the configured group.
    NotAuthorized,
    /// `last-report` before any session ended.
    NoReport,
    /// Every connection slot this peer may use is taken; the connection is
    /// then closed (root keeps slots of its own).
    TooManyConnections,
    /// No request came for `[service] idle_timeout_secs`; the connection is
    /// then closed (never while a session bound to it is begun).
    IdleTimeout,
}

impl Code {
    pub fn as_str(self) -> String {
        match self {
            Code::Report(c) => c.as_str(),
            Code::BadRequest => "BadRequest".into(),
            Code::RequestTooLarge => "RequestTooLarge".into(),
            Code::UnsupportedVersion => "UnsupportedVersion".into(),
            Code::UnknownSession => "UnknownSession".into(),
            Code::NotAuthorized => "NotAuthorized".into(),
            Code::NoReport => "NoReport".into(),
            Code::TooManyConnections => "TooManyConnections".into(),
            Code::IdleTimeout => "IdleTimeout".into(),
        }
    }
}

/// A request that gets an error reply.
#[derive(Clone, Debug)]
pub struct Failure {
    pub code: Code,
    pub message: String,
}

impl Failure {
    pub fn new(code: Code, message: impl Into<String>) -> Failure {
        Failure { code, message: message.into() }
    }
    fn bad(message: impl Into<String>) -> Failure {
        Failure::new(Code::BadRequest, message)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct BeginArgs {
    pub freeze: FreezeMode,
    pub mounts: Vec<PathBuf>,
    pub hold: Option<Duration>,
    pub bind: bool,
    /// Who began it (`qemu-ga`, `azure`, …): an `end` or `abort` without a
    /// session id ends the begun session only when it names the same tag.
    pub tag: Option<String>,
}

/// Which session an `end` or `abort` means.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Target {
    pub session_id: Option<String>,
    pub tag: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EndArgs {
    pub target: Target,
    pub taken: bool,
    pub snapshot_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Version,
    Begin(BeginArgs),
    End(EndArgs),
    Abort(Target),
    Status,
    LastReport,
}

#[derive(Clone, Debug)]
pub struct Request {
    pub id: Value,
    pub op: Op,
}

/// Parses one request line (without its newline). The error carries the
/// request's id when it could be read, so the reply can name it.
pub fn parse(line: &[u8]) -> Result<Request, (Value, Failure)> {
    let v: Value = serde_json::from_slice(line).map_err(|e| (Value::Null, Failure::bad(format!("not JSON: {e}"))))?;
    let Value::Object(obj) = v else { return Err((Value::Null, Failure::bad("a request is a JSON object"))) };
    let id = match obj.get("id") {
        None | Some(Value::Null) => Value::Null,
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        Some(_) => return Err((Value::Null, Failure::bad("`id` must be a string or a number"))),
    };
    let fail = |f: Failure| (id.clone(), f);
    match obj.get("v") {
        None => {}
        Some(v) if v.as_u64() == Some(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(fail(Failure::new(
                Code::UnsupportedVersion,
                format!("protocol version {v} is not supported; this service speaks v{PROTOCOL_VERSION}"),
            )))
        }
    }
    let op = match obj.get("op") {
        Some(Value::String(op)) => op.as_str(),
        Some(_) => return Err(fail(Failure::bad("`op` must be a string"))),
        None => return Err(fail(Failure::bad(format!("`op` is missing (one of: {})", OPS.join(", "))))),
    };
    let op = match op {
        "version" => Op::Version,
        "status" => Op::Status,
        "last-report" => Op::LastReport,
        "begin" => Op::Begin(begin_args(&obj).map_err(fail)?),
        "end" => Op::End(end_args(&obj).map_err(fail)?),
        "abort" => Op::Abort(target(&obj).map_err(fail)?),
        other => {
            let shown: String = other.chars().take(64).collect();
            return Err(fail(Failure::bad(format!("unknown op {shown:?} (one of: {})", OPS.join(", ")))));
        }
    };
    Ok(Request { id, op })
}

fn begin_args(obj: &Map<String, Value>) -> Result<BeginArgs, Failure> {
    let freeze = match opt_string(obj, "freeze", 16)? {
        None => FreezeMode::Native,
        Some(s) => FreezeMode::parse(&s).ok_or_else(|| Failure::bad(format!("`freeze` must be native, external or none, not {s:?}")))?,
    };
    let mounts = match obj.get("mounts") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => {
            if a.len() > MAX_MOUNTS {
                return Err(Failure::bad(format!("`mounts` names {} paths; at most {MAX_MOUNTS}", a.len())));
            }
            let mut mounts = Vec::with_capacity(a.len());
            for m in a {
                let Some(s) = m.as_str() else { return Err(Failure::bad("`mounts` must be an array of path strings")) };
                let p = PathBuf::from(s);
                if !p.is_absolute() || s.len() > 4096 || s.contains('\0') {
                    return Err(Failure::bad(format!("mount {s:?} is not an absolute path")));
                }
                mounts.push(p);
            }
            mounts
        }
        Some(_) => return Err(Failure::bad("`mounts` must be an array of path strings")),
    };
    let hold = match obj.get("hold_secs") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => {
            let secs = n.as_f64().unwrap_or(f64::NAN);
            Some(duration::checked_secs_f64("hold_secs", secs).map_err(|e| Failure::bad(e.to_string()))?)
        }
        Some(_) => return Err(Failure::bad("`hold_secs` must be a number of seconds")),
    };
    let bind = opt_bool(obj, "bind")?.unwrap_or(false);
    Ok(BeginArgs { freeze, mounts, hold, bind, tag: tag(obj)? })
}

/// A tag is a short name, so that it can be shown and compared as it is.
fn tag(obj: &Map<String, Value>) -> Result<Option<String>, Failure> {
    let tag = opt_string(obj, "tag", MAX_TAG_BYTES)?;
    if let Some(t) = &tag {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            return Err(Failure::bad(format!("`tag` is 1 to {MAX_TAG_BYTES} letters, digits, '.', '_' or '-', not {t:?}")));
        }
    }
    Ok(tag)
}

fn target(obj: &Map<String, Value>) -> Result<Target, Failure> {
    Ok(Target { session_id: opt_string(obj, "session_id", 256)?, tag: tag(obj)? })
}

fn end_args(obj: &Map<String, Value>) -> Result<EndArgs, Failure> {
    let taken = match opt_string(obj, "snapshot", 16)?.as_deref() {
        None | Some("taken") => true,
        Some("failed") => false,
        Some(s) => return Err(Failure::bad(format!("`snapshot` must be \"taken\" or \"failed\", not {s:?}"))),
    };
    Ok(EndArgs { target: target(obj)?, taken, snapshot_id: opt_string(obj, "snapshot_id", MAX_SNAPSHOT_ID_BYTES)? })
}

fn opt_string(obj: &Map<String, Value>, field: &str, max: usize) -> Result<Option<String>, Failure> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= max => Ok(Some(s.clone())),
        Some(Value::String(s)) => Err(Failure::bad(format!("`{field}` is {} bytes long; at most {max}", s.len()))),
        Some(_) => Err(Failure::bad(format!("`{field}` must be a string"))),
    }
}

fn opt_bool(obj: &Map<String, Value>, field: &str) -> Result<Option<bool>, Failure> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Failure::bad(format!("`{field}` must be true or false"))),
    }
}

/// `{"v":1,"id":..,"ok":true, ...result}`, one line with its newline.
pub fn ok_line(id: &Value, result: Map<String, Value>) -> Vec<u8> {
    let mut obj = Map::new();
    obj.insert("v".into(), json!(PROTOCOL_VERSION));
    obj.insert("id".into(), id.clone());
    obj.insert("ok".into(), json!(true));
    obj.extend(result);
    line(Value::Object(obj))
}

/// `{"v":1,"id":..,"ok":false,"error":{"code","message"}}`, one line.
pub fn error_line(id: &Value, f: &Failure) -> Vec<u8> {
    line(json!({"v": PROTOCOL_VERSION, "id": id, "ok": false, "error": {"code": f.code.as_str(), "message": f.message}}))
}

fn line(v: Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(&v).unwrap_or_else(|_| br#"{"v":1,"ok":false}"#.to_vec());
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(line: &str) -> Code {
        parse(line.as_bytes()).expect_err(line).1.code
    }

    #[test]
    fn requests_parse_with_defaults_and_ids() {
        let r = parse(br#"{"v":1,"id":7,"op":"begin","mounts":["/mnt/a"],"hold_secs":2.5,"bind":true}"#).unwrap();
        assert_eq!(r.id, json!(7));
        assert_eq!(
            r.op,
            Op::Begin(BeginArgs {
                freeze: FreezeMode::Native,
                mounts: vec!["/mnt/a".into()],
                hold: Some(Duration::from_millis(2500)),
                bind: true,
                tag: None
            })
        );
        let r = parse(br#"{"id":"x","op":"end","snapshot":"failed","snapshot_id":"snap-1","extra":1}"#).unwrap();
        assert_eq!(r.op, Op::End(EndArgs { target: Target::default(), taken: false, snapshot_id: Some("snap-1".into()) }));
        let r = parse(br#"{"op":"abort","tag":"qemu-ga"}"#).unwrap();
        assert_eq!(r.op, Op::Abort(Target { session_id: None, tag: Some("qemu-ga".into()) }));
        assert_eq!(parse(br#"{"op":"status"}"#).unwrap().op, Op::Status);
    }

    #[test]
    fn bad_requests_are_named() {
        assert_eq!(code("garbage"), Code::BadRequest);
        assert_eq!(code("[1,2]"), Code::BadRequest);
        assert_eq!(code(r#"{"id":1}"#), Code::BadRequest);
        assert_eq!(code(r#"{"id":1,"op":"explode"}"#), Code::BadRequest);
        assert_eq!(code(r#"{"id":1,"op":"begin","freeze":"cold"}"#), Code::BadRequest);
        assert_eq!(code(r#"{"id":1,"op":"begin","mounts":["rel"]}"#), Code::BadRequest);
        assert_eq!(code(r#"{"id":1,"op":"begin","hold_secs":1e30}"#), Code::BadRequest);
        assert_eq!(code(r#"{"id":1,"op":"begin","hold_secs":-1}"#), Code::BadRequest);
        assert_eq!(code(r#"{"id":1,"op":"end","snapshot":"maybe"}"#), Code::BadRequest);
        assert_eq!(code(r#"{"id":1,"op":"begin","tag":"a b"}"#), Code::BadRequest);
        assert_eq!(code(r#"{"id":1,"op":"end","tag":""}"#), Code::BadRequest);
        assert_eq!(code(&format!(r#"{{"id":1,"op":"abort","tag":"{}"}}"#, "t".repeat(MAX_TAG_BYTES + 1))), Code::BadRequest);
        assert_eq!(code(r#"{"id":{},"op":"status"}"#), Code::BadRequest);
        assert_eq!(code(r#"{"v":2,"id":1,"op":"status"}"#), Code::UnsupportedVersion);
        let (id, f) = parse(br#"{"id":"a","op":"nope"}"#).unwrap_err();
        assert_eq!(id, json!("a"), "the reply names the request");
        assert!(f.message.contains("nope") && f.message.contains("last-report"), "{}", f.message);
    }
}
