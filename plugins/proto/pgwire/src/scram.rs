//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it, client side,
//! without channel binding (`n,,`: this client never runs TLS, so there is no
//! channel to bind to).
//!
//! The crypto is RustCrypto's (`hmac`, `pbkdf2`, `sha2`) and `base64`; this
//! module only does the message grammar and the checks that make SCRAM worth
//! having against a server we cannot trust yet — someone who bound the port
//! while PostgreSQL was down:
//! - the server-chosen PBKDF2 iteration count is bounded on both sides
//!   *before* any hashing: too many would stall the hook past its deadline,
//!   too few would make our proof cheap to brute-force offline;
//! - the server nonce must extend ours (no replayed exchange);
//! - the server signature `v=` is checked in constant time: a server that
//!   does not hold the verifier cannot produce it.
//!
//! Passwords are used as raw UTF-8 bytes. SASLprep is the identity for ASCII,
//! and PostgreSQL falls back to the raw bytes for passwords that are not valid
//! SASLprep input; a non-ASCII password that SASLprep would *change* (e.g. one
//! with compatibility characters) fails with the server's 28P01.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// RFC 7677 §4: the iteration count SHOULD be at least 4096 — also
/// PostgreSQL's default (`scram_iterations`, 16+).
pub const MIN_ITERATIONS: u32 = 4096;
/// Default ceiling on the server-chosen iteration count: 24× PostgreSQL's
/// default. PBKDF2 runs inside the hook's deadline; a fake server asking for
/// 2^31 would otherwise pin the plugin until the host kills it.
pub const DEFAULT_MAX_ITERATIONS: u32 = 100_000;

/// Why a SCRAM exchange was abandoned on the client side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScramError {
    /// A server message that does not follow RFC 5802's grammar.
    Malformed { message: &'static str, text: String },
    /// The server nonce does not start with ours, or adds nothing printable.
    NonceNotExtended,
    /// More PBKDF2 iterations than the configured ceiling.
    TooManyIterations { asked: u32, max: u32 },
    /// Fewer PBKDF2 iterations than RFC 7677's minimum.
    TooFewIterations { asked: u32, min: u32 },
    /// The server ended the exchange with `e=`.
    ServerError(String),
    /// `v=` is not the signature only a server holding the verifier can make.
    BadServerSignature,
    /// The server said "authenticated" before proving it knows the password.
    Incomplete,
}

impl fmt::Display for ScramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScramError::Malformed { message, text } => write!(f, "malformed SCRAM {message}: {text:?}"),
            ScramError::NonceNotExtended => {
                write!(f, "the SCRAM server nonce does not extend the client nonce (a replayed or forged exchange)")
            }
            ScramError::TooManyIterations { asked, max } => write!(
                f,
                "the server asks for {asked} PBKDF2 iterations, more than the limit of {max}: refused before hashing \
                 (PostgreSQL's default is 4096; if the role's password really was set with a higher scram_iterations, raise the limit)"
            ),
            ScramError::TooFewIterations { asked, min } => write!(
                f,
                "the server asks for only {asked} PBKDF2 iterations, fewer than RFC 7677's minimum of {min}: \
                 that would make our proof cheap to brute-force (reset the role's password with scram_iterations >= {min})"
            ),
            ScramError::ServerError(e) => write!(f, "the server ended the SCRAM exchange with error {e:?}"),
            ScramError::BadServerSignature => {
                write!(f, "the SCRAM server signature does not match: this server does not know the password (not the real server?)")
            }
            ScramError::Incomplete => {
                write!(f, "the server reported success before proving it knows the password (no SCRAM server-final-message)")
            }
        }
    }
}

impl std::error::Error for ScramError {}

pub fn b64_encode(data: &[u8]) -> String {
    B64.encode(data)
}

fn hmac(key: &[u8], msg: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    m.update(msg);
    m
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    hmac(key, msg).finalize().into_bytes().into()
}

/// RFC 5802's `printable`: %x21-2B / %x2D-7E (ASCII without ',' and space).
fn printable(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, 0x21..=0x2b | 0x2d..=0x7e))
}

/// RFC 5802's keys for one password, salt and iteration count.
struct Keys {
    client_key: [u8; 32],
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl Keys {
    fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Keys {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut salted);
        let client_key = hmac_sha256(&salted, b"Client Key");
        Keys { client_key, stored_key: Sha256::digest(client_key).into(), server_key: hmac_sha256(&salted, b"Server Key") }
    }
}

/// The verifier PostgreSQL stores for `password`
/// (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`), as libpq's
/// `PQencryptPasswordConn` makes it: `ALTER ROLE … PASSWORD '<verifier>'`
/// sets a password without the server ever seeing it.
pub fn verifier(password: &str, salt: &[u8], iterations: u32) -> String {
    let k = Keys::derive(password.as_bytes(), salt, iterations);
    format!("SCRAM-SHA-256${iterations}:{}${}:{}", b64_encode(salt), b64_encode(&k.stored_key), b64_encode(&k.server_key))
}

/// What server-first-message says.
struct ServerFirst<'a> {
    nonce: &'a str,
    salt: Vec<u8>,
    iterations: u32,
}

/// `r=NONCE,s=SALT,i=COUNT[,extensions]`, in that order (RFC 5802 §7).
fn parse_server_first(text: &str) -> Result<ServerFirst<'_>, ScramError> {
    let bad = |what: &'static str| ScramError::Malformed { message: what, text: text.to_string() };
    let mut attrs = text.split(',');
    let mut next = |key: &str| attrs.next().and_then(|a| a.strip_prefix(key));
    if text.starts_with("m=") {
        return Err(bad("server-first-message (mandatory extension)"));
    }
    let nonce = next("r=").ok_or_else(|| bad("server-first-message (no r=)"))?;
    let salt = next("s=").and_then(|s| B64.decode(s).ok()).filter(|s| !s.is_empty());
    let salt = salt.ok_or_else(|| bad("server-first-message (no base64 salt s=)"))?;
    let iterations = next("i=").and_then(|i| i.parse::<u32>().ok()).ok_or_else(|| bad("server-first-message (no iteration count i=)"))?;
    Ok(ServerFirst { nonce, salt, iterations })
}

/// One SCRAM exchange, client side.
pub struct Scram {
    nonce: String,
    password: Vec<u8>,
    client_first_bare: String,
    max_iterations: u32,
    /// After client-final: the key and message that make the server signature.
    server_proof: Option<HmacSha256>,
    verified: bool,
}

impl Scram {
    /// `nonce`: printable ASCII without ',' (see [`crate::random_nonce`]). The
    /// user name is sent in the startup message; PostgreSQL ignores SCRAM's
    /// `n=`, so it is left empty as libpq does.
    pub fn new(password: &str, nonce: &str, max_iterations: u32) -> Scram {
        Scram {
            nonce: nonce.to_string(),
            password: password.as_bytes().to_vec(),
            client_first_bare: format!("n=,r={nonce}"),
            max_iterations,
            server_proof: None,
            verified: false,
        }
    }

    /// client-first-message: GS2 header `n,,` (no channel binding) + bare.
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Takes server-first-message, returns client-final-message. The checks
    /// (nonce, iteration bounds) come before the expensive PBKDF2.
    pub fn client_final(&mut self, server_first: &str) -> Result<String, ScramError> {
        let sf = parse_server_first(server_first)?;
        let extension = sf.nonce.strip_prefix(self.nonce.as_str()).ok_or(ScramError::NonceNotExtended)?;
        if extension.is_empty() || !printable(extension) {
            return Err(ScramError::NonceNotExtended);
        }
        if sf.iterations > self.max_iterations {
            return Err(ScramError::TooManyIterations { asked: sf.iterations, max: self.max_iterations });
        }
        if sf.iterations < MIN_ITERATIONS {
            return Err(ScramError::TooFewIterations { asked: sf.iterations, min: MIN_ITERATIONS });
        }
        let Keys { client_key, stored_key, server_key } = Keys::derive(&self.password, &sf.salt, sf.iterations);
        // "biws" = base64("n,,"): the GS2 header again, as channel-binding data.
        let without_proof = format!("c=biws,r={}", sf.nonce);
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_sig = hmac_sha256(&stored_key, auth_message.as_bytes());
        let mut proof = client_key;
        for (p, s) in proof.iter_mut().zip(client_sig.iter()) {
            *p ^= s;
        }
        self.server_proof = Some(hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", b64_encode(&proof)))
    }

    /// Checks server-final-message (`v=SIGNATURE` or `e=ERROR`): the server
    /// proves it knows the password too. Constant-time comparison.
    pub fn verify_server_final(&mut self, server_final: &str) -> Result<(), ScramError> {
        let bad = || ScramError::Malformed { message: "server-final-message", text: server_final.to_string() };
        let first = server_final.split(',').next().unwrap_or("");
        if let Some(e) = first.strip_prefix("e=") {
            return Err(ScramError::ServerError(e.to_string()));
        }
        let v = first.strip_prefix("v=").and_then(|v| B64.decode(v).ok()).ok_or_else(bad)?;
        let mac = self.server_proof.take().ok_or(ScramError::Incomplete)?;
        mac.verify_slice(&v).map_err(|_| ScramError::BadServerSignature)?;
        self.verified = true;
        Ok(())
    }

    /// True once the server signature was verified.
    pub fn is_verified(&self) -> bool {
        self.verified
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            mac.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// The SCRAM-SHA-256 example of RFC 7677 section 3 (user "user",
    /// password "pencil"); PostgreSQL sends `n=` empty, so the bare message
    /// differs, but the arithmetic is the same: check it with the RFC's own.
    #[test]
    fn scram_proof_and_server_signature_match_rfc7677() {
        let mut s = Scram::new("pencil", "rOprNGfwEbeRWgbNEkqO", DEFAULT_MAX_ITERATIONS);
        s.client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO".into();
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let fin = s.client_final(server_first).unwrap();
        assert_eq!(fin, "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        assert!(!s.is_verified());
        s.verify_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").unwrap();
        assert!(s.is_verified());
    }

    /// The RFC 7677 password and salt; the expected verifier was computed
    /// independently with Python's hashlib/hmac.
    #[test]
    fn verifier_has_postgres_stored_format() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        assert_eq!(
            verifier("pencil", &salt, 4096),
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        );
    }

    #[test]
    fn a_wrong_signature_or_a_server_error_is_refused() {
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let fresh = || {
            let mut s = Scram::new("pencil", "rOprNGfwEbeRWgbNEkqO", DEFAULT_MAX_ITERATIONS);
            s.client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO".into();
            s.client_final(server_first).unwrap();
            s
        };
        assert_eq!(fresh().verify_server_final("v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="), Err(ScramError::BadServerSignature));
        assert_eq!(fresh().verify_server_final("v=6rriTRBi"), Err(ScramError::BadServerSignature));
        assert_eq!(fresh().verify_server_final("e=invalid-proof"), Err(ScramError::ServerError("invalid-proof".into())));
        assert!(matches!(fresh().verify_server_final("v=*notbase64*"), Err(ScramError::Malformed { .. })));
        let mut s = fresh();
        s.verify_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").unwrap();
        // A second server-final (replayed) has nothing left to check against.
        assert_eq!(s.verify_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="), Err(ScramError::Incomplete));
    }

    #[test]
    fn scram_rejects_a_nonce_that_does_not_extend_ours() {
        let mut s = Scram::new("pencil", "abc", DEFAULT_MAX_ITERATIONS);
        assert_eq!(s.client_final("r=xyz123,s=QUJD,i=4096"), Err(ScramError::NonceNotExtended));
        assert_eq!(s.client_final("r=abc,s=QUJD,i=4096"), Err(ScramError::NonceNotExtended));
        assert_eq!(s.client_final("r=abc x,s=QUJD,i=4096"), Err(ScramError::NonceNotExtended));
        assert!(matches!(s.client_final("r=abc1,i=4096"), Err(ScramError::Malformed { .. })));
        assert!(matches!(s.client_final("m=ext,r=abc1,s=QUJD,i=4096"), Err(ScramError::Malformed { .. })));
        assert!(matches!(s.client_final("r=abc1,s=,i=4096"), Err(ScramError::Malformed { .. })));
    }

    #[test]
    fn iteration_counts_outside_the_bounds_are_refused_before_hashing() {
        let mut s = Scram::new("pencil", "abc", 100_000);
        // u32::MAX iterations would take hours: the refusal returning at all proves no hashing happened.
        assert_eq!(s.client_final("r=abc1,s=QUJD,i=4294967295"), Err(ScramError::TooManyIterations { asked: u32::MAX, max: 100_000 }));
        assert_eq!(s.client_final("r=abc1,s=QUJD,i=100001"), Err(ScramError::TooManyIterations { asked: 100_001, max: 100_000 }));
        assert_eq!(s.client_final("r=abc1,s=QUJD,i=1"), Err(ScramError::TooFewIterations { asked: 1, min: MIN_ITERATIONS }));
        assert!(s.client_final("r=abc1,s=QUJD,i=4096").is_ok());
    }
}
