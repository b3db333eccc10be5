//! The authentication half of startup: which `AuthenticationXxx` requests
//! this client answers, in which order, and what it refuses.
//!
//! The threat is a local user who binds PostgreSQL's port (or socket) while
//! the server is down and waits for the hook to log in. So by default:
//! - the password never leaves in a form that logs in elsewhere or is cheap
//!   to guess: cleartext (`password` in pg_hba.conf) and MD5 are refused
//!   unless the caller opts in ([`Config::allow_cleartext`], [`Config::allow_md5`]);
//! - SCRAM-SHA-256 must finish with the server's signature checked: an
//!   `AuthenticationOk` before that is refused, and so is one that arrives
//!   without any exchange although a password is configured — a server that
//!   says "trust" proved nothing, and the hook would "quiesce" an impostor;
//! - each request is answered at most once, in protocol order.

use std::fmt;

use md5::{Digest, Md5};

use crate::scram::{Scram, ScramError};
use crate::{cstr, frame, Config, Error, Result};

/// An authentication request the client declined to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `AuthenticationCleartextPassword` (`password` in pg_hba.conf).
    Cleartext,
    /// `AuthenticationMD5Password` (`md5` in pg_hba.conf with an MD5-stored password).
    Md5,
    /// The server wants a password and none is configured.
    NoPassword,
    /// A password is configured but the server let us in without asking
    /// (`trust`/`peer`): it did not prove it is the real server.
    Unauthenticated,
    /// Only `SCRAM-SHA-256-PLUS` (channel binding, needs TLS) is offered.
    ChannelBindingOnly,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Cleartext => {
                "the server asks for the password in cleartext (pg_hba.conf method `password`); refused: \
                 whoever listens on that port would read it"
            }
            Refusal::Md5 => {
                "the server asks for an MD5 password hash (pg_hba.conf method `md5` with an MD5-stored password); \
                 refused: MD5 proves nothing about the server and the hash is cheap to crack"
            }
            Refusal::NoPassword => "the server wants a password and none was given",
            Refusal::Unauthenticated => {
                "the server let us in without asking for the password (pg_hba.conf method trust or peer) although one is configured; \
                 refused: it did not prove it is the real server"
            }
            Refusal::ChannelBindingOnly => {
                "the server offers only SCRAM-SHA-256-PLUS (channel binding over TLS); this client connects without TLS \
                 and speaks SCRAM-SHA-256"
            }
        })
    }
}

/// Where the exchange is.
enum State {
    Start,
    /// Cleartext or MD5 answer sent (opted in): the server decides.
    PasswordSent,
    ScramFirstSent(Scram),
    ScramFinalSent(Scram),
    ScramVerified,
    Done,
}

/// The client side of one authentication exchange.
pub(crate) struct Exchange<'a> {
    cfg: &'a Config,
    nonce: &'a str,
    state: State,
}

impl<'a> Exchange<'a> {
    pub(crate) fn new(cfg: &'a Config, nonce: &'a str) -> Exchange<'a> {
        Exchange { cfg, nonce, state: State::Start }
    }

    fn password(&self) -> Result<&'a str> {
        self.cfg.password.as_deref().ok_or(Error::Refused(Refusal::NoPassword))
    }

    /// Handles one `R` message (`code`, rest of the body `b`); returns the
    /// message to send, if any. `Ok(None)` after `AuthenticationOk`.
    pub(crate) fn on_request(&mut self, code: i32, mut b: &[u8]) -> Result<Option<Vec<u8>>> {
        let out_of_order = || Error::Protocol(format!("authentication request {code} out of order"));
        let state = std::mem::replace(&mut self.state, State::Done);
        let (next, reply) = match (code, state) {
            (0, State::Start) if self.cfg.password.is_some() => return Err(Error::Refused(Refusal::Unauthenticated)),
            (0, State::Start | State::PasswordSent | State::ScramVerified) => (State::Done, None),
            (0, State::ScramFirstSent(_) | State::ScramFinalSent(_)) => return Err(Error::Scram(ScramError::Incomplete)),
            (3, State::Start) => {
                if !self.cfg.allow_cleartext {
                    return Err(Error::Refused(Refusal::Cleartext));
                }
                let mut body = self.password()?.as_bytes().to_vec();
                body.push(0);
                (State::PasswordSent, Some(frame(b'p', &body)))
            }
            (5, State::Start) => {
                if !self.cfg.allow_md5 {
                    return Err(Error::Refused(Refusal::Md5));
                }
                let salt: [u8; 4] = b.try_into().map_err(|_| Error::Protocol("MD5 request without a 4-byte salt".into()))?;
                let mut body = md5_response(self.password()?, &self.cfg.user, salt).into_bytes();
                body.push(0);
                (State::PasswordSent, Some(frame(b'p', &body)))
            }
            (10, State::Start) => {
                let mut mechs = Vec::new();
                while b.first().is_some_and(|&c| c != 0) {
                    mechs.push(cstr(&mut b)?);
                }
                if !mechs.contains(&"SCRAM-SHA-256") {
                    if mechs.contains(&"SCRAM-SHA-256-PLUS") {
                        return Err(Error::Refused(Refusal::ChannelBindingOnly));
                    }
                    return Err(Error::UnsupportedAuth(format!("SASL {}", mechs.join(","))));
                }
                let s = Scram::new(self.password()?, self.nonce, self.cfg.max_scram_iterations);
                let reply = sasl_initial_response("SCRAM-SHA-256", s.client_first().as_bytes());
                (State::ScramFirstSent(s), Some(reply))
            }
            (11, State::ScramFirstSent(mut s)) => {
                let fin = s.client_final(utf8(b)?).map_err(Error::Scram)?;
                (State::ScramFinalSent(s), Some(frame(b'p', fin.as_bytes())))
            }
            (12, State::ScramFinalSent(mut s)) => {
                s.verify_server_final(utf8(b)?).map_err(Error::Scram)?;
                (State::ScramVerified, None)
            }
            (0 | 3 | 5 | 10 | 11 | 12, _) => return Err(out_of_order()),
            (2, _) => return Err(Error::UnsupportedAuth("Kerberos V5".into())),
            (7 | 8, _) => return Err(Error::UnsupportedAuth("GSSAPI".into())),
            (9, _) => return Err(Error::UnsupportedAuth("SSPI".into())),
            (other, _) => return Err(Error::UnsupportedAuth(format!("code {other}"))),
        };
        self.state = next;
        Ok(reply)
    }

    /// True once `AuthenticationOk` was accepted.
    pub(crate) fn done(&self) -> bool {
        matches!(self.state, State::Done)
    }
}

fn utf8(b: &[u8]) -> Result<&str> {
    std::str::from_utf8(b).map_err(|_| Error::Protocol("SCRAM message is not UTF-8".into()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// PostgreSQL's MD5 answer: `"md5" || md5_hex(md5_hex(password || user) || salt)`.
pub fn md5_response(password: &str, user: &str, salt: [u8; 4]) -> String {
    let inner = hex(&Md5::new().chain_update(password).chain_update(user).finalize());
    format!("md5{}", hex(&Md5::new().chain_update(inner).chain_update(salt).finalize()))
}

pub(crate) fn sasl_initial_response(mech: &str, data: &[u8]) -> Vec<u8> {
    let mut body = mech.as_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(&(data.len() as i32).to_be_bytes());
    body.extend_from_slice(data);
    frame(b'p', &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Password "postgres", user "postgres": the stored hash is PostgreSQL's
    /// well-known `md53175bce1d3201d16594cebf9d7eb3f9d`; the wire answer for
    /// salt 01 02 03 04 was computed independently (Python's hashlib).
    #[test]
    fn md5_response_is_postgres_double_hash() {
        assert_eq!(hex(&Md5::digest(b"postgrespostgres")), "3175bce1d3201d16594cebf9d7eb3f9d");
        assert_eq!(md5_response("postgres", "postgres", [1, 2, 3, 4]), "md568be9ed08db75f318087ab337aaea044");
    }
}
