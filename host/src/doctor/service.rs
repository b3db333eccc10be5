//! Does the quiesce service answer on its socket?
//!
//! Asked the way every client asks (protocol v1, PROTOCOL.md): one
//! `version` request, one reply line, within [`REPLY_WAIT`]. A service is
//! only *expected* when its socket exists or its systemd socket unit is
//! installed; a machine that runs one-shot sessions only has neither, and
//! that is not a problem.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Code, Finding, Group, Severity};

pub const NAME: &str = "service";

/// The service's socket unless `$QUIESCE_SOCKET` names another.
pub const DEFAULT_SOCKET: &str = "/run/quiesce/quiesce.sock";
pub const SOCKET_ENV: &str = "QUIESCE_SOCKET";

/// Where systemd units live; `quiesce.socket` in one of them means the admin installed the service.
const UNIT_DIRS: [&str; 4] = ["/etc/systemd/system", "/run/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system"];

/// A service that answers `version` slower than this is not answering.
const REPLY_WAIT: Duration = Duration::from_secs(3);
/// A reply line longer than this is not the service's.
const REPLY_CAP: u64 = 64 * 1024;

/// `$QUIESCE_SOCKET`, else [`DEFAULT_SOCKET`].
pub fn socket_from_env() -> PathBuf {
    std::env::var_os(SOCKET_ENV).map(PathBuf::from).unwrap_or_else(|| DEFAULT_SOCKET.into())
}

pub fn check(socket: &Path) -> Group {
    let exists = std::fs::symlink_metadata(socket).is_ok();
    // A unit installed on the machine concerns the default socket only, not
    // one `$QUIESCE_SOCKET` points elsewhere.
    let unit = (socket == Path::new(DEFAULT_SOCKET))
        .then(|| UNIT_DIRS.iter().map(|d| Path::new(d).join("quiesce.socket")).find(|p| p.exists()))
        .flatten();
    if !exists && unit.is_none() {
        return Group {
            summary: "no quiesce service installed (one-shot sessions only)".into(),
            findings: vec![Finding {
                check: NAME,
                code: Code::ServiceNotInstalled,
                severity: Severity::Info,
                cause: format!("no socket at {} and no quiesce.socket unit: agents cannot use begin/end", socket.display()),
                fix: "only if an agent needs the service: systemctl enable --now quiesce.socket".into(),
            }],
        };
    }
    match ask_version(socket) {
        Ok(version) => Group { summary: format!("service answers on {} (quiesce {version})", socket.display()), findings: vec![] },
        Err(why) => {
            let expected = match &unit {
                Some(u) if !exists => format!("{} is installed but its socket does not exist", u.display()),
                _ => format!("the socket {} exists", socket.display()),
            };
            Group {
                summary: "service not answering".into(),
                findings: vec![Finding {
                    check: NAME,
                    code: Code::UserErrorGuestAgentStatusUnavailable,
                    severity: Severity::Error,
                    cause: format!("{expected}, but the quiesce service does not answer: {why}; begin/end and fsfreeze-hook fail"),
                    fix: "systemctl restart quiesce.socket quiesce.service; then journalctl -u quiesce.service -n 50".into(),
                }],
            }
        }
    }
}

/// The service's version, or why it did not give one.
fn ask_version(socket: &Path) -> Result<String, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(REPLY_WAIT)).and_then(|()| s.set_write_timeout(Some(REPLY_WAIT))).map_err(|e| e.to_string())?;
    s.write_all(b"{\"v\":1,\"id\":1,\"op\":\"version\"}\n").map_err(|e| format!("send: {e}"))?;
    let mut line = String::new();
    BufReader::new((&s).take(REPLY_CAP)).read_line(&mut line).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => format!("no reply within {} s", REPLY_WAIT.as_secs()),
        _ => format!("read: {e}"),
    })?;
    if line.is_empty() {
        return Err("it closed the connection without a reply".into());
    }
    let reply: serde_json::Value = serde_json::from_str(&line).map_err(|_| "the reply is not JSON".to_string())?;
    match (reply["ok"].as_bool(), reply["quiesce"].as_str()) {
        (Some(true), Some(v)) => Ok(v.to_string()),
        (Some(false), _) => Err(format!("it refused: {}", reply["error"])),
        _ => Err(format!("unexpected reply: {}", line.trim())),
    }
}
