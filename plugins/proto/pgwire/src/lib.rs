//! A small, blocking PostgreSQL client (protocol v3) over any
//! `std::io::Read + Write` — a `TcpStream`, a `UnixStream`, or a quiesce
//! plugin's host connection on `wasm32-wasip2`. No async runtime, no OS calls.
//!
//! It does exactly what a quiesce hook needs and nothing more:
//! - [`Client::connect`]: startup, then SCRAM-SHA-256 (the server proves it
//!   knows the password too: its signature is checked), or trust when no
//!   password is configured. Cleartext and MD5 passwords only when the caller
//!   opts in; a server that skips authentication although a password is
//!   configured is refused ([`auth`] says why). GSS/SSPI are
//!   [`Error::UnsupportedAuth`].
//! - [`Client::simple_query`]: the simple query protocol; every value comes
//!   back as text. Server errors are [`Error::Server`] with the SQLSTATE.
//! - The backup functions a snapshot needs, each one SQL call:
//!   - [`Client::server_version_num`]: refuse servers too old for `pg_backup_start` (< 15);
//!   - [`Client::is_in_recovery`] / [`Client::ensure_primary`]: a replica cannot run
//!     `pg_backup_start` on behalf of a snapshot of its primary — refuse it clearly;
//!   - [`Client::backup_start`]: `pg_backup_start(label, fast)` — the session
//!     that called it must stay open until [`Client::backup_stop`];
//!   - [`Client::backup_stop`]: `pg_backup_stop()` → stop LSN, the `backup_label`
//!     and `tablespace_map` contents, which must be stored *outside* the
//!     snapshot and written into the restored data directory before start;
//!   - [`Client::checkpoint`]: `CHECKPOINT`, so a crash-consistent restore
//!     of an atomic snapshot replays little WAL;
//!   - [`Client::current_wal_lsn`]: `pg_current_wal_lsn()`, to record where the WAL was.
//!
//! Dropping the client closes the connection, and PostgreSQL ends a
//! non-exclusive backup whose session went away — so a crashed hook never
//! leaves the server in backup mode.

pub mod auth;
pub mod scram;

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufReader, Read, Write};

pub use auth::Refusal;
pub use scram::{Scram, ScramError};

/// What to log in as.
#[derive(Clone, Debug)]
pub struct Config {
    pub user: String,
    /// Defaults to the user name (as libpq does).
    pub database: Option<String>,
    pub password: Option<String>,
    pub application_name: Option<String>,
    /// Answer `AuthenticationCleartextPassword` (off: refused).
    pub allow_cleartext: bool,
    /// Answer `AuthenticationMD5Password` (off: refused).
    pub allow_md5: bool,
    /// The most PBKDF2 iterations a server may ask for in SCRAM.
    pub max_scram_iterations: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            user: String::new(),
            database: None,
            password: None,
            application_name: None,
            allow_cleartext: false,
            allow_md5: false,
            max_scram_iterations: scram::DEFAULT_MAX_ITERATIONS,
        }
    }
}

impl Config {
    pub fn new(user: &str) -> Config {
        Config { user: user.into(), ..Default::default() }
    }
    pub fn password(mut self, password: &str) -> Config {
        self.password = Some(password.into());
        self
    }
    pub fn database(mut self, db: &str) -> Config {
        self.database = Some(db.into());
        self
    }
    pub fn application_name(mut self, name: &str) -> Config {
        self.application_name = Some(name.into());
        self
    }
    /// Opt in to sending the password in cleartext (pg_hba.conf `password`).
    pub fn allow_cleartext(mut self, allow: bool) -> Config {
        self.allow_cleartext = allow;
        self
    }
    /// Opt in to MD5 password hashes (pg_hba.conf `md5` with an MD5-stored password).
    pub fn allow_md5(mut self, allow: bool) -> Config {
        self.allow_md5 = allow;
        self
    }
    pub fn max_scram_iterations(mut self, max: u32) -> Config {
        self.max_scram_iterations = max;
        self
    }
}

/// An `ErrorResponse` from the server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    /// The SQLSTATE, e.g. `28P01` (wrong password), `55000` (object not in prerequisite state).
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " hint: {h}")?;
        }
        Ok(())
    }
}

#[derive(Debug)]
pub enum Error {
    Io(io::Error),
    /// The server answered with an error (SQLSTATE in `code`).
    Server(ServerError),
    /// The server asked for an authentication method this client does not do.
    UnsupportedAuth(String),
    /// The client declined what the server asked for (cleartext, MD5, no
    /// authentication at all although a password is configured, ...).
    Refused(Refusal),
    /// The SCRAM exchange failed on the client side (bad server signature,
    /// iteration count out of bounds, ...).
    Scram(ScramError),
    /// No random bytes for the SCRAM nonce.
    Random(String),
    /// The server is a standby; backups for snapshots must run on the primary.
    Replica,
    /// The server is older than a function needs.
    Version {
        have: u32,
        need: u32,
    },
    /// Bytes that are not what the protocol says.
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "connection: {e}"),
            Error::Server(e) => write!(f, "server: {e}"),
            Error::UnsupportedAuth(m) => write!(f, "unsupported authentication method {m}"),
            Error::Refused(r) => write!(f, "authentication: {r}"),
            Error::Scram(e) => write!(f, "authentication: {e}"),
            Error::Random(e) => write!(f, "no random source for the SCRAM nonce: {e}"),
            Error::Replica => write!(f, "the server is in recovery (a standby); run the hook on the primary"),
            Error::Version { have, need } => write!(f, "server version {have} is too old, need {need} or later"),
            Error::Protocol(m) => write!(f, "protocol: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

impl Error {
    /// The SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Server(e) => Some(&e.code),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The result of one statement of a simple query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    /// Text values; `None` is SQL NULL.
    pub rows: Vec<Vec<Option<String>>>,
    /// The command tag, e.g. `INSERT 0 1`, `SELECT 3`, `CHECKPOINT`.
    pub tag: String,
}

impl QueryResult {
    /// The value of `column` in the first row.
    pub fn first(&self, column: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.rows.first()?.get(i)?.as_deref()
    }
}

/// A WAL position (`XXXXXXXX/XXXXXXXX`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    pub fn parse(s: &str) -> Option<Lsn> {
        let (hi, lo) = s.trim().split_once('/')?;
        let hi = u64::from_str_radix(hi, 16).ok()?;
        let lo = u64::from_str_radix(lo, 16).ok()?;
        (hi <= u32::MAX as u64 && lo <= u32::MAX as u64).then_some(Lsn((hi << 32) | lo))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// What `pg_backup_stop()` returns. `labelfile` goes to `DATADIR/backup_label`
/// and a non-empty `spcmapfile` to `DATADIR/tablespace_map` of the restored copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupStop {
    pub lsn: Lsn,
    pub labelfile: String,
    pub spcmapfile: String,
}

/// Quotes a string as an SQL literal that means the same whatever
/// `standard_conforming_strings` is.
pub fn quote_literal(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// A SCRAM client nonce: 18 bytes from the system's CSPRNG (`getrandom`;
/// on wasm32-wasip2 that is `wasi:random/random`, which the quiesce host
/// serves from wasmtime-wasi's default, an OS-seeded ChaCha `StdRng`), as 24
/// base64 characters (never ',').
pub fn random_nonce() -> Result<String> {
    let mut bytes = [0u8; 18];
    getrandom::fill(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
    Ok(scram::b64_encode(&bytes))
}

/// An open, authenticated session.
pub struct Client<S: Read + Write> {
    io: BufReader<S>,
    params: BTreeMap<String, String>,
    backend_pid: Option<i32>,
    /// Messages of `NoticeResponse`s since the last query started.
    pub notices: Vec<ServerError>,
}

/// One backend message: type byte and body.
struct Msg {
    tag: u8,
    body: Vec<u8>,
}

/// Reads a backend message.
fn read_msg<R: Read>(r: &mut R) -> Result<Msg> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head)?;
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if !(4..=(1 << 30)).contains(&len) {
        return Err(Error::Protocol(format!("message {:?} with length {len}", head[0] as char)));
    }
    // Grows with the bytes that arrive, not with the claimed length: a lying
    // server's 5-byte header must not make the plugin allocate 1 GiB
    // (fuzz/corpus/pgwire_server/message-claims-1g is that input).
    let want = len as u64 - 4;
    let mut body = Vec::new();
    if r.take(want).read_to_end(&mut body)? as u64 != want {
        return Err(Error::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(Msg { tag: head[0], body })
}

/// Frames a frontend message: tag, length (including itself), body.
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(body.len() + 5);
    m.push(tag);
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// The StartupMessage (protocol 3.0) for `cfg`.
pub fn startup_message(cfg: &Config) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196608i32.to_be_bytes());
    let mut kv = |k: &str, v: &str| {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    };
    kv("user", &cfg.user);
    kv("database", cfg.database.as_deref().unwrap_or(&cfg.user));
    if let Some(a) = &cfg.application_name {
        kv("application_name", a);
    }
    kv("client_encoding", "UTF8");
    body.push(0);
    let mut m = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    m.extend_from_slice(&body);
    m
}

/// Splits a NUL-terminated string off the front of `b`.
fn cstr<'a>(b: &mut &'a [u8]) -> Result<&'a str> {
    let end = b.iter().position(|&c| c == 0).ok_or_else(|| Error::Protocol("unterminated string".into()))?;
    let s = std::str::from_utf8(&b[..end]).map_err(|_| Error::Protocol("string is not UTF-8".into()))?;
    *b = &b[end + 1..];
    Ok(s)
}

fn i16_at(b: &mut &[u8]) -> Result<i16> {
    if b.len() < 2 {
        return Err(Error::Protocol("short message".into()));
    }
    let v = i16::from_be_bytes([b[0], b[1]]);
    *b = &b[2..];
    Ok(v)
}

fn i32_at(b: &mut &[u8]) -> Result<i32> {
    if b.len() < 4 {
        return Err(Error::Protocol("short message".into()));
    }
    let v = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    *b = &b[4..];
    Ok(v)
}

/// Parses the fields of an ErrorResponse or NoticeResponse.
pub fn parse_error_fields(mut body: &[u8]) -> ServerError {
    let mut e = ServerError::default();
    while let Some((&field, rest)) = body.split_first() {
        if field == 0 {
            break;
        }
        body = rest;
        let Ok(v) = cstr(&mut body) else { break };
        match field {
            b'V' => e.severity = v.into(),
            b'S' if e.severity.is_empty() => e.severity = v.into(),
            b'C' => e.code = v.into(),
            b'M' => e.message = v.into(),
            b'D' => e.detail = Some(v.into()),
            b'H' => e.hint = Some(v.into()),
            _ => {}
        }
    }
    e
}

fn parse_row_description(mut b: &[u8]) -> Result<Vec<String>> {
    let n = i16_at(&mut b)?;
    let mut cols = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        cols.push(cstr(&mut b)?.to_string());
        if b.len() < 18 {
            return Err(Error::Protocol("short RowDescription".into()));
        }
        b = &b[18..];
    }
    Ok(cols)
}

fn parse_data_row(mut b: &[u8]) -> Result<Vec<Option<String>>> {
    let n = i16_at(&mut b)?;
    let mut row = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = i32_at(&mut b)?;
        if len < 0 {
            row.push(None);
            continue;
        }
        let len = len as usize;
        if b.len() < len {
            return Err(Error::Protocol("short DataRow".into()));
        }
        row.push(Some(String::from_utf8_lossy(&b[..len]).into_owned()));
        b = &b[len..];
    }
    Ok(row)
}

impl<S: Read + Write> Client<S> {
    /// Starts a session on `stream` and authenticates.
    pub fn connect(stream: S, cfg: &Config) -> Result<Client<S>> {
        Self::connect_with_nonce(stream, cfg, &random_nonce()?)
    }

    /// [`Client::connect`] with a fixed SCRAM nonce: replaying a recorded
    /// session (fuzzing, recording the fuzz seeds) needs the same nonce every
    /// time. Only with the `fixed-nonce` feature, never in a plugin.
    #[cfg(feature = "fixed-nonce")]
    pub fn connect_with_fixed_nonce(stream: S, cfg: &Config, nonce: &str) -> Result<Client<S>> {
        Self::connect_with_nonce(stream, cfg, nonce)
    }

    /// [`Client::connect`] with a given SCRAM nonce (for tests).
    fn connect_with_nonce(stream: S, cfg: &Config, nonce: &str) -> Result<Client<S>> {
        let mut c = Client { io: BufReader::new(stream), params: BTreeMap::new(), backend_pid: None, notices: Vec::new() };
        c.send(&startup_message(cfg))?;
        let mut auth = auth::Exchange::new(cfg, nonce);
        loop {
            let m = read_msg(&mut c.io)?;
            match m.tag {
                b'R' => {
                    let mut b = &m.body[..];
                    let code = i32_at(&mut b)?;
                    if let Some(reply) = auth.on_request(code, b)? {
                        c.send(&reply)?;
                    }
                }
                b'S' => {
                    let mut b = &m.body[..];
                    let k = cstr(&mut b)?.to_string();
                    let v = cstr(&mut b)?.to_string();
                    c.params.insert(k, v);
                }
                b'K' => {
                    let mut b = &m.body[..];
                    c.backend_pid = Some(i32_at(&mut b)?);
                }
                b'N' => c.notices.push(parse_error_fields(&m.body)),
                b'E' => return Err(Error::Server(parse_error_fields(&m.body))),
                // ReadyForQuery only after AuthenticationOk was accepted.
                b'Z' if auth.done() => return Ok(c),
                t => return Err(Error::Protocol(format!("unexpected message {:?} during startup", t as char))),
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        let s = self.io.get_mut();
        s.write_all(bytes)?;
        s.flush()?;
        Ok(())
    }

    /// A run-time parameter the server reported (`server_version`,
    /// `standard_conforming_strings`, `in_hot_standby` (14+), ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// The backend's process id.
    pub fn backend_pid(&self) -> Option<i32> {
        self.backend_pid
    }

    /// Runs `sql` (one or more `;`-separated statements) with the simple
    /// query protocol. A server error is returned after the server is ready
    /// again, so the session stays usable.
    pub fn simple_query(&mut self, sql: &str) -> Result<Vec<QueryResult>> {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        self.send(&frame(b'Q', &body))?;
        self.notices.clear();
        let mut results = Vec::new();
        let mut cur = QueryResult::default();
        let mut err = None;
        loop {
            let m = read_msg(&mut self.io)?;
            match m.tag {
                b'T' => cur.columns = parse_row_description(&m.body)?,
                b'D' => cur.rows.push(parse_data_row(&m.body)?),
                b'C' => {
                    let mut b = &m.body[..];
                    cur.tag = cstr(&mut b)?.to_string();
                    results.push(std::mem::take(&mut cur));
                }
                b'I' => results.push(std::mem::take(&mut cur)),
                b'E' => err = Some(parse_error_fields(&m.body)),
                b'N' => self.notices.push(parse_error_fields(&m.body)),
                b'S' => {
                    let mut b = &m.body[..];
                    let k = cstr(&mut b)?.to_string();
                    let v = cstr(&mut b)?.to_string();
                    self.params.insert(k, v);
                }
                b'A' => {}
                b'G' => {
                    // COPY FROM STDIN: not supported; make the server give up.
                    let mut body = b"COPY is not supported by this client".to_vec();
                    body.push(0);
                    self.send(&frame(b'f', &body))?;
                }
                b'H' | b'd' | b'c' | b'W' => {}
                b'Z' => {
                    return match err {
                        Some(e) => Err(Error::Server(e)),
                        None => Ok(results),
                    }
                }
                t => return Err(Error::Protocol(format!("unexpected message {:?}", t as char))),
            }
        }
    }

    /// Runs one statement and returns its result.
    pub fn query(&mut self, sql: &str) -> Result<QueryResult> {
        self.simple_query(sql)?.pop().ok_or_else(|| Error::Protocol("empty query result".into()))
    }

    /// Runs one statement and returns the first column of the first row.
    pub fn query_value(&mut self, sql: &str) -> Result<Option<String>> {
        let r = self.query(sql)?;
        Ok(r.rows.into_iter().next().and_then(|row| row.into_iter().next()).flatten())
    }

    fn query_required(&mut self, sql: &str) -> Result<String> {
        self.query_value(sql)?.ok_or_else(|| Error::Protocol(format!("`{sql}` returned no value")))
    }

    /// `server_version_num`, e.g. 150004.
    pub fn server_version_num(&mut self) -> Result<u32> {
        let v = self.query_required("SHOW server_version_num")?;
        v.trim().parse().map_err(|_| Error::Protocol(format!("server_version_num {v:?}")))
    }

    /// Fails with [`Error::Version`] below `min` (e.g. 150000 for `pg_backup_start`).
    pub fn require_version(&mut self, min: u32) -> Result<u32> {
        let have = self.server_version_num()?;
        if have < min {
            return Err(Error::Version { have, need: min });
        }
        Ok(have)
    }

    /// `pg_is_in_recovery()`: true on a standby (or a server still recovering).
    pub fn is_in_recovery(&mut self) -> Result<bool> {
        Ok(self.query_required("SELECT pg_is_in_recovery()")? == "t")
    }

    /// Fails with [`Error::Replica`] on a standby.
    pub fn ensure_primary(&mut self) -> Result<()> {
        if self.is_in_recovery()? {
            return Err(Error::Replica);
        }
        Ok(())
    }

    /// `pg_backup_start(label, fast)`; returns the backup's start LSN.
    /// `fast = true` asks for an immediate checkpoint instead of a spread one.
    pub fn backup_start(&mut self, label: &str, fast: bool) -> Result<Lsn> {
        let v = self.query_required(&format!("SELECT pg_backup_start({}, {fast})", quote_literal(label)))?;
        Lsn::parse(&v).ok_or_else(|| Error::Protocol(format!("pg_backup_start returned {v:?}")))
    }

    /// `pg_backup_stop(wait_for_archive)` on the session that started the backup.
    /// With `wait_for_archive`, it returns once the WAL the backup needs is archived.
    pub fn backup_stop(&mut self, wait_for_archive: bool) -> Result<BackupStop> {
        let r = self.query(&format!("SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop({wait_for_archive})"))?;
        let lsn = r.first("lsn").and_then(Lsn::parse).ok_or_else(|| Error::Protocol("pg_backup_stop returned no lsn".into()))?;
        Ok(BackupStop {
            lsn,
            labelfile: r.first("labelfile").unwrap_or_default().to_string(),
            spcmapfile: r.first("spcmapfile").unwrap_or_default().to_string(),
        })
    }

    /// `CHECKPOINT` (needs superuser or `pg_checkpoint` on 15+).
    pub fn checkpoint(&mut self) -> Result<()> {
        self.query("CHECKPOINT").map(|_| ())
    }

    /// `pg_current_wal_lsn()` (fails on a standby).
    pub fn current_wal_lsn(&mut self) -> Result<Lsn> {
        let v = self.query_required("SELECT pg_current_wal_lsn()::text")?;
        Lsn::parse(&v).ok_or_else(|| Error::Protocol(format!("pg_current_wal_lsn returned {v:?}")))
    }

    /// Sends Terminate and returns the stream.
    pub fn close(mut self) -> Result<S> {
        self.send(&frame(b'X', &[]))?;
        Ok(self.io.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A fake stream: reads a scripted server, records what the client wrote.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }
    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }
    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    fn duplex(server: Vec<u8>) -> Duplex {
        Duplex { input: Cursor::new(server), output: Vec::new() }
    }

    fn auth(code: i32, extra: &[u8]) -> Vec<u8> {
        let mut b = code.to_be_bytes().to_vec();
        b.extend_from_slice(extra);
        frame(b'R', &b)
    }
    fn ready() -> Vec<u8> {
        frame(b'Z', b"I")
    }
    fn param(k: &str, v: &str) -> Vec<u8> {
        frame(b'S', format!("{k}\0{v}\0").as_bytes())
    }

    #[test]
    fn startup_message_layout() {
        let m = startup_message(&Config::new("postgres").database("db1"));
        let len = i32::from_be_bytes([m[0], m[1], m[2], m[3]]) as usize;
        assert_eq!(len, m.len());
        assert_eq!(&m[4..8], &196608i32.to_be_bytes());
        let rest = &m[8..];
        assert!(rest.starts_with(b"user\0postgres\0database\0db1\0"));
        assert!(rest.ends_with(b"\0\0"));
    }

    #[test]
    fn trust_login_reads_parameters_and_ready() {
        let mut server = auth(0, &[]);
        server.extend(param("server_version", "15.4"));
        server.extend(frame(b'K', &[0, 0, 0, 42, 1, 2, 3, 4]));
        server.extend(ready());
        let c = Client::connect(duplex(server), &Config::new("u")).unwrap();
        assert_eq!(c.parameter("server_version"), Some("15.4"));
        assert_eq!(c.backend_pid(), Some(42));
    }

    const PW: &str = "s3cret-pw";

    /// Runs a login against the scripted `server`; returns the outcome and
    /// every byte the client wrote (also when it failed).
    fn login(server: Vec<u8>, cfg: &Config, nonce: &str) -> (Result<()>, Vec<u8>) {
        let mut d = duplex(server);
        let r = Client::connect_with_nonce(&mut d, cfg, nonce).map(|_| ());
        (r, d.output)
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    /// What a real server holding `password`'s verifier answers: computed
    /// here with the crypto crates directly, not with the client's code.
    fn server_scram(password: &str, salt: &[u8], iterations: u32, client_nonce: &str) -> (String, String) {
        use hmac::{Hmac, Mac};
        use sha2::Sha256;
        let mac = |k: &[u8], m: &[u8]| {
            let mut h = Hmac::<Sha256>::new_from_slice(k).unwrap();
            h.update(m);
            h.finalize().into_bytes()
        };
        let server_first = format!("r={client_nonce}SRVnonce,s={},i={iterations}", scram::b64_encode(salt));
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut salted);
        let auth_msg = format!("n=,r={client_nonce},{server_first},c=biws,r={client_nonce}SRVnonce");
        let v = mac(&mac(&salted, b"Server Key"), auth_msg.as_bytes());
        (server_first, format!("v={}", scram::b64_encode(&v)))
    }

    fn scram_server(first: &str, fin: &str) -> Vec<u8> {
        let mut s = auth(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        s.extend(auth(11, first.as_bytes()));
        s.extend(auth(12, fin.as_bytes()));
        s.extend(auth(0, &[]));
        s.extend(ready());
        s
    }

    #[test]
    fn scram_login_checks_the_server_signature_and_frames_both_messages() {
        let nonce = "clientnonce";
        let (first, fin) = server_scram(PW, b"salt", 4096, nonce);
        let cfg = Config::new("u").password(PW);
        let (r, out) = login(scram_server(&first, &fin), &cfg, nonce);
        r.unwrap();
        let rest = &out[startup_message(&cfg).len()..];
        let initial = auth::sasl_initial_response("SCRAM-SHA-256", format!("n,,n=,r={nonce}").as_bytes());
        assert!(rest.starts_with(&initial));
        let client_final = &rest[initial.len()..];
        assert_eq!(client_final[0], b'p');
        assert!(client_final[5..].starts_with(format!("c=biws,r={nonce}SRVnonce,p=").as_bytes()));
        assert!(!contains(&out, PW.as_bytes()), "the password itself went out");
    }

    #[test]
    fn scram_with_a_wrong_server_signature_is_refused() {
        let nonce = "clientnonce";
        // A server holding another password's verifier (or none) cannot sign for ours.
        let (first, fin) = server_scram("not-the-password", b"salt", 4096, nonce);
        let (r, _) = login(scram_server(&first, &fin), &Config::new("u").password(PW), nonce);
        assert!(matches!(r, Err(Error::Scram(ScramError::BadServerSignature))), "{r:?}");
        let (r, _) = login(scram_server(&first, "v=AAAA"), &Config::new("u").password(PW), nonce);
        assert!(matches!(r, Err(Error::Scram(ScramError::BadServerSignature))), "{r:?}");
        let (r, _) = login(scram_server(&first, "e=invalid-proof"), &Config::new("u").password(PW), nonce);
        assert!(matches!(r, Err(Error::Scram(ScramError::ServerError(ref e))) if e == "invalid-proof"), "{r:?}");
    }

    #[test]
    fn authentication_ok_before_the_server_signature_is_refused() {
        let nonce = "clientnonce";
        let (first, _) = server_scram(PW, b"salt", 4096, nonce);
        let mut s = auth(10, b"SCRAM-SHA-256\0\0");
        s.extend(auth(11, first.as_bytes()));
        s.extend(auth(0, &[]));
        s.extend(ready());
        let (r, _) = login(s, &Config::new("u").password(PW), nonce);
        assert!(matches!(r, Err(Error::Scram(ScramError::Incomplete))), "{r:?}");
    }

    #[test]
    fn a_huge_iteration_count_is_refused_before_computing_and_nothing_more_is_sent() {
        let nonce = "clientnonce";
        let cfg = Config::new("u").password(PW);
        let first = format!("r={nonce}SRV,s={},i=2147483647", scram::b64_encode(b"salt"));
        // 2^31 PBKDF2 rounds take the better part of an hour: the test finishing proves none ran.
        let (r, out) = login(scram_server(&first, "v=AAAA"), &cfg, nonce);
        assert!(matches!(r, Err(Error::Scram(ScramError::TooManyIterations { asked: 2147483647, max: 100_000 }))), "{r:?}");
        let initial = auth::sasl_initial_response("SCRAM-SHA-256", format!("n,,n=,r={nonce}").as_bytes());
        assert_eq!(out, [startup_message(&cfg), initial].concat(), "no client-final after the refusal");
        let (r, _) = login(scram_server(&first.replace("2147483647", "8192"), "v=AAAA"), &cfg.clone().max_scram_iterations(5000), nonce);
        assert!(matches!(r, Err(Error::Scram(ScramError::TooManyIterations { asked: 8192, max: 5000 }))), "the configured limit: {r:?}");
    }

    #[test]
    fn a_server_nonce_that_does_not_extend_ours_is_refused() {
        let cfg = Config::new("u").password(PW);
        let (first, fin) = server_scram(PW, b"salt", 4096, "someone-elses-nonce");
        let (r, out) = login(scram_server(&first, &fin), &cfg, "clientnonce");
        assert!(matches!(r, Err(Error::Scram(ScramError::NonceNotExtended))), "{r:?}");
        assert!(!contains(&out, b"c=biws"), "no client proof for a foreign nonce");
    }

    #[test]
    fn cleartext_request_is_refused_without_sending_the_password() {
        let cfg = Config::new("u").password(PW);
        let mut server = auth(3, &[]);
        server.extend(auth(0, &[]));
        server.extend(ready());
        let (r, out) = login(server.clone(), &cfg, "n");
        assert!(matches!(r, Err(Error::Refused(Refusal::Cleartext))), "{r:?}");
        assert_eq!(out, startup_message(&cfg), "only the startup message went out");
        assert!(!contains(&out, PW.as_bytes()));

        let (r, out) = login(server, &cfg.clone().allow_cleartext(true), "n");
        r.unwrap();
        assert!(out.ends_with(&frame(b'p', format!("{PW}\0").as_bytes())), "opted in: the password, NUL-terminated");
    }

    #[test]
    fn md5_request_is_refused_unless_opted_in_and_then_answers_the_double_hash() {
        let cfg = Config::new("alice").password(PW);
        let mut server = auth(5, &[9, 8, 7, 6]);
        server.extend(auth(0, &[]));
        server.extend(ready());
        let (r, out) = login(server.clone(), &cfg, "n");
        assert!(matches!(r, Err(Error::Refused(Refusal::Md5))), "{r:?}");
        assert_eq!(out, startup_message(&cfg), "nothing derived from the password went out");

        let (r, out) = login(server, &cfg.clone().allow_md5(true), "n");
        r.unwrap();
        let answer = auth::md5_response(PW, "alice", [9, 8, 7, 6]);
        assert!(out.ends_with(&frame(b'p', format!("{answer}\0").as_bytes())));
        assert!(!contains(&out, PW.as_bytes()));
    }

    #[test]
    fn a_server_that_skips_authentication_is_refused_when_a_password_is_configured() {
        let mut server = auth(0, &[]);
        server.extend(ready());
        let (r, _) = login(server.clone(), &Config::new("u").password(PW), "n");
        assert!(matches!(r, Err(Error::Refused(Refusal::Unauthenticated))), "{r:?}");
        let (r, _) = login(server, &Config::new("u"), "n");
        r.unwrap();
        // ReadyForQuery without any AuthenticationOk.
        let (r, _) = login(ready(), &Config::new("u"), "n");
        assert!(matches!(r, Err(Error::Protocol(_))), "{r:?}");
    }

    #[test]
    fn unsupported_or_out_of_order_requests_are_refused() {
        let cfg = Config::new("u").password(PW);
        let (r, _) = login(auth(10, b"SCRAM-SHA-256-PLUS\0\0"), &cfg, "n");
        assert!(matches!(r, Err(Error::Refused(Refusal::ChannelBindingOnly))), "{r:?}");
        let (r, _) = login(auth(10, b"SCRAM-SHA-256\0\0"), &Config::new("u"), "n");
        assert!(matches!(r, Err(Error::Refused(Refusal::NoPassword))), "{r:?}");
        let (r, _) = login(auth(7, &[]), &cfg, "n");
        assert!(matches!(r, Err(Error::UnsupportedAuth(_))), "{r:?}");
        let (r, _) = login(auth(11, b"r=n1,s=QUJD,i=4096"), &cfg, "n");
        assert!(matches!(r, Err(Error::Protocol(_))), "SASLContinue first: {r:?}");
        // A cleartext request after SCRAM began (a downgrade mid-exchange).
        let mut s = auth(10, b"SCRAM-SHA-256\0\0");
        s.extend(auth(3, &[]));
        let (r, out) = login(s, &cfg.clone().allow_cleartext(true), "n");
        assert!(matches!(r, Err(Error::Protocol(_))), "{r:?}");
        assert!(!contains(&out, PW.as_bytes()));
    }

    fn logged_in(rest: Vec<u8>) -> Client<Duplex> {
        let mut server = auth(0, &[]);
        server.extend(ready());
        server.extend(rest);
        Client::connect(duplex(server), &Config::new("u")).unwrap()
    }

    fn row_desc(cols: &[&str]) -> Vec<u8> {
        let mut b = (cols.len() as i16).to_be_bytes().to_vec();
        for c in cols {
            b.extend_from_slice(c.as_bytes());
            b.push(0);
            b.extend_from_slice(&[0u8; 18]);
        }
        frame(b'T', &b)
    }
    fn data_row(vals: &[Option<&str>]) -> Vec<u8> {
        let mut b = (vals.len() as i16).to_be_bytes().to_vec();
        for v in vals {
            match v {
                Some(s) => {
                    b.extend_from_slice(&(s.len() as i32).to_be_bytes());
                    b.extend_from_slice(s.as_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        frame(b'D', &b)
    }
    fn complete(tag: &str) -> Vec<u8> {
        frame(b'C', format!("{tag}\0").as_bytes())
    }

    #[test]
    fn simple_query_rows_nulls_and_tags() {
        let mut s = row_desc(&["a", "b"]);
        s.extend(data_row(&[Some("1"), None]));
        s.extend(data_row(&[Some("2"), Some("x y")]));
        s.extend(complete("SELECT 2"));
        s.extend(complete("CHECKPOINT"));
        s.extend(ready());
        let mut c = logged_in(s);
        let r = c.simple_query("SELECT a, b FROM t; CHECKPOINT").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].columns, vec!["a", "b"]);
        assert_eq!(r[0].rows, vec![vec![Some("1".into()), None], vec![Some("2".into()), Some("x y".into())]]);
        assert_eq!(r[0].tag, "SELECT 2");
        assert_eq!(r[1].tag, "CHECKPOINT");
        let out = &c.io.get_ref().output;
        assert!(out.ends_with(&frame(b'Q', b"SELECT a, b FROM t; CHECKPOINT\0")));
    }

    #[test]
    fn server_error_is_typed_and_session_stays_usable() {
        let mut s = frame(b'E', b"SERROR\0VERROR\0C55000\0Mbackup is not in progress\0Hdid you call pg_backup_start()?\0\0");
        s.extend(ready());
        s.extend(row_desc(&["pg_is_in_recovery"]));
        s.extend(data_row(&[Some("t")]));
        s.extend(complete("SELECT 1"));
        s.extend(ready());
        let mut c = logged_in(s);
        let e = c.backup_stop(true).err().unwrap();
        assert_eq!(e.sqlstate(), Some("55000"));
        let Error::Server(se) = &e else { panic!() };
        assert_eq!(se.message, "backup is not in progress");
        assert_eq!(se.hint.as_deref(), Some("did you call pg_backup_start()?"));
        assert!(matches!(c.ensure_primary(), Err(Error::Replica)));
    }

    #[test]
    fn backup_stop_parses_lsn_label_and_map() {
        let mut s = row_desc(&["lsn", "labelfile", "spcmapfile"]);
        s.extend(data_row(&[Some("0/3000100"), Some("START WAL LOCATION: 0/2000028\n"), Some("")]));
        s.extend(complete("SELECT 1"));
        s.extend(ready());
        let mut c = logged_in(s);
        let b = c.backup_stop(false).unwrap();
        assert_eq!(b.lsn, Lsn(0x3000100));
        assert_eq!(b.labelfile, "START WAL LOCATION: 0/2000028\n");
        assert_eq!(b.spcmapfile, "");
        assert!(c.io.get_ref().output.ends_with(&frame(b'Q', b"SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)\0")));
    }

    #[test]
    fn lsn_parse_and_display() {
        assert_eq!(Lsn::parse("16/B374D848"), Some(Lsn(0x16_B374_D848)));
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn::parse("0/0"), Some(Lsn(0)));
        assert_eq!(Lsn::parse("nope"), None);
        assert_eq!(Lsn::parse("1/100000000"), None);
    }

    #[test]
    fn literals_are_quoted_safely() {
        assert_eq!(quote_literal("quiesce q-1"), "'quiesce q-1'");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\'b"), "E'a\\\\''b'");
    }

    #[test]
    fn nonces_are_18_random_bytes_in_base64() {
        use base64::Engine as _;
        let a = random_nonce().unwrap();
        let b = random_nonce().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(&a).unwrap().len(), 18);
        assert!(!a.contains(','));
    }

    #[test]
    fn a_short_or_oversized_frame_is_a_protocol_error() {
        let mut c = logged_in(vec![b'Z', 0, 0, 0, 2]);
        assert!(matches!(c.simple_query("x"), Err(Error::Protocol(_))));
        let mut c = logged_in(vec![b'Z', 0, 0]);
        assert!(matches!(c.simple_query("x"), Err(Error::Io(_))));
    }
}
