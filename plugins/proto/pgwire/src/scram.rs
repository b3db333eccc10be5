//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it, without
//! channel binding: HMAC, PBKDF2 and base64 are written out here so the crate
//! needs nothing but `sha2` (no RNG crate either: the nonce comes from the
//! caller, see [`crate::random_nonce`]).

use sha2::{Digest, Sha256};

const BLOCK: usize = 64;

pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let ih = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(ih);
    outer.finalize().into()
}

/// PBKDF2-HMAC-SHA256 with one output block (32 bytes), all SCRAM needs.
pub fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut msg = salt.to_vec();
    msg.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac_sha256(password, &msg);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac_sha256(password, &u);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn b64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = B64.iter().position(|&x| x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Most PBKDF2 rounds a server may ask for: about 244 times PostgreSQL's
/// default of 4096 (`scram_iterations`).
pub const MAX_ITERATIONS: u32 = 1_000_000;

/// One SCRAM exchange, client side.
pub struct Scram {
    nonce: String,
    password: Vec<u8>,
    client_first_bare: String,
    server_signature: Option<[u8; 32]>,
}

impl Scram {
    /// `nonce`: printable ASCII without ','. The user name is sent in the
    /// startup message; PostgreSQL ignores the SCRAM `n=` attribute.
    pub fn new(password: &str, nonce: &str) -> Scram {
        Scram {
            nonce: nonce.to_string(),
            // SASLprep is the identity for ASCII; PostgreSQL itself falls back
            // to the raw bytes when a password is not valid SASLprep input.
            password: password.as_bytes().to_vec(),
            client_first_bare: format!("n=,r={nonce}"),
            server_signature: None,
        }
    }

    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Takes server-first-message, returns client-final-message.
    pub fn client_final(&mut self, server_first: &str) -> Result<String, String> {
        let mut r = None;
        let mut salt = None;
        let mut iters = None;
        for attr in server_first.split(',') {
            match attr.split_at_checked(2) {
                Some(("r=", v)) => r = Some(v),
                Some(("s=", v)) => salt = b64_decode(v),
                Some(("i=", v)) => iters = v.parse::<u32>().ok(),
                _ => {}
            }
        }
        let (r, salt, iters) = match (r, salt, iters) {
            (Some(r), Some(s), Some(i)) if i > 0 => (r, s, i),
            _ => return Err(format!("malformed SCRAM server-first-message: {server_first:?}")),
        };
        // The server picks the PBKDF2 work; a lying one could ask for 4e9
        // rounds (hours of CPU) before it ever has to prove anything.
        if iters > MAX_ITERATIONS {
            return Err(format!("SCRAM iteration count {iters} above {MAX_ITERATIONS} (PostgreSQL's default is 4096)"));
        }
        if !r.starts_with(&self.nonce) || r.len() <= self.nonce.len() {
            return Err("SCRAM server nonce does not extend the client nonce".into());
        }
        let salted = pbkdf2_sha256(&self.password, &salt, iters);
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={r}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_sig = hmac_sha256(&stored_key, auth_message.as_bytes());
        let mut proof = client_key;
        for (p, s) in proof.iter_mut().zip(client_sig.iter()) {
            *p ^= s;
        }
        let server_key = hmac_sha256(&salted, b"Server Key");
        self.server_signature = Some(hmac_sha256(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", b64_encode(&proof)))
    }

    /// Checks server-final-message: the server proves it knows the password too.
    pub fn verify_server_final(&self, server_final: &str) -> Result<(), String> {
        if let Some(e) = server_final.strip_prefix("e=") {
            return Err(format!("SCRAM error from server: {e}"));
        }
        let v = server_final
            .split(',')
            .find_map(|a| a.strip_prefix("v="))
            .and_then(b64_decode)
            .ok_or_else(|| format!("malformed SCRAM server-final-message: {server_final:?}"))?;
        match self.server_signature {
            Some(sig) if sig[..] == v[..] => Ok(()),
            _ => Err("SCRAM server signature does not match: the server does not know the password".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in [&b""[..], b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar"] {
            assert_eq!(b64_decode(&b64_encode(s)).unwrap(), s);
        }
        assert_eq!(b64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(b64_encode(b"fooba"), "Zm9vYmE=");
        assert_eq!(b64_decode("biws").unwrap(), b"n,,");
        assert!(b64_decode("a*b").is_none());
    }

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
    fn scram_proof_matches_rfc7677() {
        let mut s = Scram::new("pencil", "rOprNGfwEbeRWgbNEkqO");
        s.client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO".into();
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let fin = s.client_final(server_first).unwrap();
        assert_eq!(fin, "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        s.verify_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").unwrap();
        assert!(s.verify_server_final("v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").is_err());
        assert!(s.verify_server_final("e=invalid-proof").is_err());
    }

    #[test]
    fn scram_refuses_an_iteration_count_that_would_spin_for_hours() {
        let mut s = Scram::new("pw", "abc");
        let e = s.client_final("r=abcdef,s=c2FsdA==,i=4000000000").unwrap_err();
        assert!(e.contains("iteration count 4000000000 above 1000000"), "{e}");
    }

    #[test]
    fn scram_rejects_a_nonce_that_does_not_extend_ours() {
        let mut s = Scram::new("pencil", "abc");
        assert!(s.client_final("r=xyz123,s=QUJD,i=4096").is_err());
        assert!(s.client_final("r=abc,s=QUJD,i=4096").is_err());
        assert!(s.client_final("r=abc1,i=4096").is_err());
    }
}
