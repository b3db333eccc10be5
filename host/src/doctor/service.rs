//! Does the quiesce service answer on its socket?
//!
//! Asked the way every client asks (protocol v1, the README's "Protocol v1"): one
//! `version` request, one reply line, within [`REPLY_WAIT`]. A service is
//! only *expected* when its socket exists or its systemd socket unit is
//! installed; a machine that runs one-shot sessions only has neither, and
//! that is not a problem.

use std::path::Path;
use std::time::Duration;

use super::{Code, Finding, Group, Severity};

pub const NAME: &str = "service";

pub use crate::service::client::{socket_from_env, DEFAULT_SOCKET, SOCKET_ENV};

/// Where systemd units live; `quiesce.socket` in one of them means the admin installed the service.
const UNIT_DIRS: [&str; 4] = ["/etc/systemd/system", "/run/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system"];

/// A service that answers `version` slower than this is not answering.
const REPLY_WAIT: Duration = Duration::from_secs(3);

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
                    cause: format!("{expected}, but the quiesce service does not answer: {why}; begin/end and fsfreeze-hook cannot reach it, or wait for it without end (qemu-ga waits for its hook without a timeout)"),
                    fix: "systemctl restart quiesce.socket quiesce.service; then journalctl -u quiesce.service -n 50".into(),
                }],
            }
        }
    }
}

/// The service's version, or why it did not give one.
fn ask_version(socket: &Path) -> Result<String, String> {
    use crate::service::client::{Client, ClientError};
    let reply = Client::connect(socket)
        .and_then(|c| c.set_timeout(Some(REPLY_WAIT)).map(|()| c))
        .and_then(|mut c| c.call("version", Default::default()));
    match reply {
        Ok(m) => m.get("quiesce").and_then(|v| v.as_str()).map(str::to_string).ok_or_else(|| "unexpected reply: no version".to_string()),
        Err(ClientError::Refused { code, message }) => Err(format!("it refused: {code}: {message}")),
        Err(ClientError::Timeout { .. }) => Err(format!("no reply within {} s", REPLY_WAIT.as_secs())),
        Err(ClientError::BadReply { why, .. }) => Err(why),
        Err(ClientError::Unreachable { source, .. }) => Err(format!("connect: {source}")),
        Err(ClientError::NotAllowed { source, .. }) => Err(format!("connect: {source} (this user may not use the service)")),
    }
}
