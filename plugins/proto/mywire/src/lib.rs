//! A small, blocking MariaDB/MySQL client over any `std::io::Read + Write`
//! — a `TcpStream`, a `UnixStream`, or a quiesce plugin's host connection on
//! `wasm32-wasip2`. No async runtime, no OS calls.
//!
//! What a snapshot hook needs, and nothing more:
//! - [`Client::connect`]: handshake v10 and `mysql_native_password`; an
//!   auth-switch request to `unix_socket` (MariaDB's root, authenticated by
//!   the peer's uid over a Unix socket) or back to `mysql_native_password`
//!   with a new scramble is followed; `mysql_clear_password` only when the
//!   caller says the transport is private ([`Config::allow_cleartext`]).
//! - [`Client::query`]: `COM_QUERY` with text result sets; `ERR` packets are
//!   [`Error::Server`] with the error number and SQLSTATE.
//! - The calls a consistent snapshot is made of:
//!   - [`Client::version`] / [`Client::is_mariadb`]: refuse what the hook was not written for;
//!   - [`Client::read_only`] and [`Client::replica_status`]: refuse a replica
//!     (its data is someone else's, and locking it stalls replication);
//!   - [`Client::set_lock_wait_timeout`]: bound how long `FLUSH TABLES WITH READ
//!     LOCK` may wait, so a lock queued behind a long query fails instead of
//!     stalling every writer behind it;
//!   - [`Client::long_running_queries`]: check for such queries *before* locking;
//!   - [`Client::flush_tables_with_read_lock`] / [`Client::unlock_tables`];
//!   - [`Client::master_status`] and [`Client::gtid_binlog_pos`]: the binlog
//!     position under the lock, to be stored outside the snapshot;
//!   - [`Client::backup_stage`]: MariaDB's `BACKUP STAGE START/FLUSH/BLOCK_DDL/BLOCK_COMMIT/END`.
//!
//! Locks belong to the connection: dropping the client (or the hook dying)
//! closes it and the server releases them.

use std::fmt;
use std::io::{self, BufReader, Read, Write};

use sha1::{Digest, Sha1};

pub const CLIENT_LONG_PASSWORD: u32 = 1;
pub const CLIENT_LONG_FLAG: u32 = 4;
pub const CLIENT_CONNECT_WITH_DB: u32 = 8;
pub const CLIENT_PROTOCOL_41: u32 = 0x200;
pub const CLIENT_TRANSACTIONS: u32 = 0x2000;
pub const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
pub const CLIENT_MULTI_STATEMENTS: u32 = 0x1_0000;
pub const CLIENT_MULTI_RESULTS: u32 = 0x2_0000;
pub const CLIENT_PLUGIN_AUTH: u32 = 0x8_0000;
pub const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 0x20_0000;
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
const MAX_PACKET: usize = 0xff_ffff;

#[derive(Clone, Debug, Default)]
pub struct Config {
    pub user: String,
    /// Empty for `unix_socket` authentication.
    pub password: String,
    pub database: Option<String>,
    /// Send the password in clear if the server asks (`mysql_clear_password`,
    /// PAM). Only for a Unix socket or another private transport.
    pub allow_cleartext: bool,
}

impl Config {
    pub fn new(user: &str) -> Config {
        Config { user: user.into(), ..Default::default() }
    }
    pub fn password(mut self, pw: &str) -> Config {
        self.password = pw.into();
        self
    }
    pub fn database(mut self, db: &str) -> Config {
        self.database = Some(db.into());
        self
    }
}

/// An `ERR` packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    /// e.g. 1045 access denied, 1205 lock wait timeout, 1064 syntax error.
    pub code: u16,
    pub sqlstate: String,
    pub message: String,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ERROR {} ({}): {}", self.code, self.sqlstate, self.message)
    }
}

#[derive(Debug)]
pub enum Error {
    Io(io::Error),
    Server(ServerError),
    UnsupportedAuth(String),
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "connection: {e}"),
            Error::Server(e) => write!(f, "server: {e}"),
            Error::UnsupportedAuth(p) => write!(f, "unsupported authentication plugin {p}"),
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
    pub fn code(&self) -> Option<u16> {
        match self {
            Error::Server(e) => Some(e.code),
            _ => None,
        }
    }
    /// `ER_LOCK_WAIT_TIMEOUT` (1205): the lock could not be had within `lock_wait_timeout`.
    pub fn is_lock_wait_timeout(&self) -> bool {
        self.code() == Some(1205)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// One text result set (or the OK of a statement without one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResultSet {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    pub affected_rows: u64,
}

impl ResultSet {
    /// `column` of the first row.
    pub fn first(&self, column: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c.eq_ignore_ascii_case(column))?;
        self.rows.first()?.get(i)?.as_deref()
    }
}

/// `SHOW MASTER STATUS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinlogPos {
    pub file: String,
    pub position: u64,
}

/// A row of `information_schema.processlist`.
#[derive(Clone, Debug, PartialEq)]
pub struct Process {
    pub id: u64,
    pub user: String,
    pub command: String,
    pub time_secs: f64,
    pub state: String,
    pub info: String,
}

/// MariaDB's `BACKUP STAGE`s, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupStage {
    Start,
    Flush,
    BlockDdl,
    BlockCommit,
    End,
}

impl BackupStage {
    pub fn sql(self) -> &'static str {
        match self {
            BackupStage::Start => "BACKUP STAGE START",
            BackupStage::Flush => "BACKUP STAGE FLUSH",
            BackupStage::BlockDdl => "BACKUP STAGE BLOCK_DDL",
            BackupStage::BlockCommit => "BACKUP STAGE BLOCK_COMMIT",
            BackupStage::End => "BACKUP STAGE END",
        }
    }
}

/// The server's greeting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub server_version: String,
    pub connection_id: u32,
    pub capabilities: u32,
    pub scramble: Vec<u8>,
    pub auth_plugin: String,
}

/// The largest logical packet accepted: the protocol's own ceiling
/// (`max_allowed_packet` cannot be set higher).
const MAX_LOGICAL_PACKET: usize = 1 << 30;

/// Reads one logical packet (joining 16 MiB continuation packets); returns
/// the sequence id of the last one.
///
/// The buffer grows with the bytes that actually arrive, not with the
/// length a header claims: a lying or broken server that announces 16 MiB
/// (or a chain of continuation packets) and sends 10 bytes must not make a
/// plugin with a 64 MiB memory limit allocate it (fuzz/corpus/mywire_server/
/// greeting-claims-16m is that input).
pub fn read_packet<R: Read>(r: &mut R) -> Result<(u8, Vec<u8>)> {
    let mut payload = Vec::new();
    loop {
        let mut head = [0u8; 4];
        r.read_exact(&mut head)?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], 0]) as usize;
        if payload.len() + len > MAX_LOGICAL_PACKET {
            return Err(Error::Protocol(format!("packet longer than {MAX_LOGICAL_PACKET} bytes")));
        }
        let got = r.by_ref().take(len as u64).read_to_end(&mut payload)?;
        if got < len {
            return Err(Error::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        if len < MAX_PACKET {
            return Ok((head[3], payload));
        }
    }
}

/// Frames `payload` as packets starting at sequence `seq`; returns the next sequence id.
pub fn write_packet<W: Write>(w: &mut W, mut seq: u8, payload: &[u8]) -> Result<u8> {
    let mut chunks = payload.chunks(MAX_PACKET).peekable();
    let mut buf = Vec::with_capacity(payload.len() + 8);
    if payload.is_empty() {
        buf.extend_from_slice(&[0, 0, 0, seq]);
        seq = seq.wrapping_add(1);
    }
    while let Some(c) = chunks.next() {
        buf.extend_from_slice(&(c.len() as u32).to_le_bytes()[..3]);
        buf.push(seq);
        buf.extend_from_slice(c);
        seq = seq.wrapping_add(1);
        if chunks.peek().is_none() && c.len() == MAX_PACKET {
            buf.extend_from_slice(&[0, 0, 0, seq]);
            seq = seq.wrapping_add(1);
        }
    }
    w.write_all(&buf)?;
    w.flush()?;
    Ok(seq)
}

/// A cursor over a packet's payload.
struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn need(&self, n: usize) -> Result<()> {
        if self.0.len() < n {
            return Err(Error::Protocol("short packet".into()));
        }
        Ok(())
    }
    fn u8(&mut self) -> Result<u8> {
        self.need(1)?;
        let v = self.0[0];
        self.0 = &self.0[1..];
        Ok(v)
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        self.need(n)?;
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn cstr(&mut self) -> Result<&'a [u8]> {
        let end = self.0.iter().position(|&c| c == 0).ok_or_else(|| Error::Protocol("unterminated string".into()))?;
        let s = &self.0[..end];
        self.0 = &self.0[end + 1..];
        Ok(s)
    }
    /// Length-encoded integer; `None` for the NULL marker 0xfb.
    fn lenenc(&mut self) -> Result<Option<u64>> {
        Ok(match self.u8()? {
            0xfb => None,
            0xfc => Some(u64::from(self.u16()?)),
            0xfd => {
                let b = self.bytes(3)?;
                Some(u64::from(u32::from_le_bytes([b[0], b[1], b[2], 0])))
            }
            0xfe => {
                let b = self.bytes(8)?;
                Some(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            }
            n => Some(u64::from(n)),
        })
    }
    fn lenenc_str(&mut self) -> Result<Option<&'a [u8]>> {
        match self.lenenc()? {
            None => Ok(None),
            // On wasm32 `as usize` would cut a 64-bit length to another, valid-looking one.
            Some(n) => Ok(Some(self.bytes(usize::try_from(n).map_err(|_| Error::Protocol("short packet".into()))?)?)),
        }
    }
}

pub fn put_lenenc(out: &mut Vec<u8>, n: u64) {
    match n {
        0..=250 => out.push(n as u8),
        251..=0xffff => {
            out.push(0xfc);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xff_ffff => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

pub fn parse_handshake(p: &[u8]) -> Result<Handshake> {
    let mut c = Cur(p);
    match c.u8()? {
        10 => {}
        0xff => return Err(Error::Server(parse_err(p)?)),
        v => return Err(Error::Protocol(format!("handshake protocol version {v}, expected 10"))),
    }
    let server_version = String::from_utf8_lossy(c.cstr()?).into_owned();
    let connection_id = c.u32()?;
    let mut scramble = c.bytes(8)?.to_vec();
    c.u8()?;
    let mut capabilities = u32::from(c.u16()?);
    let mut auth_plugin = String::from("mysql_native_password");
    if !c.0.is_empty() {
        c.u8()?; // charset
        c.u16()?; // status
        capabilities |= u32::from(c.u16()?) << 16;
        let auth_len = c.u8()?;
        c.bytes(10)?;
        if capabilities & CLIENT_SECURE_CONNECTION != 0 {
            let n = (auth_len as usize).saturating_sub(8).max(13);
            let part2 = c.bytes(n.min(c.0.len()))?;
            // The scramble is 20 bytes; part 2 carries a trailing NUL.
            scramble.extend_from_slice(part2.strip_suffix(&[0]).unwrap_or(part2));
        }
        if capabilities & CLIENT_PLUGIN_AUTH != 0 && !c.0.is_empty() {
            let name = c.0.strip_suffix(&[0]).unwrap_or(c.0);
            let name = name.split(|&b| b == 0).next().unwrap_or_default();
            auth_plugin = String::from_utf8_lossy(name).into_owned();
        }
    }
    Ok(Handshake { server_version, connection_id, capabilities, scramble, auth_plugin })
}

/// `mysql_native_password`: SHA1(pw) XOR SHA1(scramble + SHA1(SHA1(pw))); empty for an empty password.
pub fn native_password_scramble(password: &str, scramble: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let h1 = Sha1::digest(password.as_bytes());
    let h2 = Sha1::digest(h1);
    let mut h = Sha1::new();
    h.update(&scramble[..scramble.len().min(20)]);
    h.update(h2);
    let h3 = h.finalize();
    h1.iter().zip(h3.iter()).map(|(a, b)| a ^ b).collect()
}

fn parse_err(p: &[u8]) -> Result<ServerError> {
    let mut c = Cur(p);
    c.u8()?;
    let code = c.u16()?;
    let mut sqlstate = String::from("HY000");
    if c.0.first() == Some(&b'#') {
        c.u8()?;
        sqlstate = String::from_utf8_lossy(c.bytes(5)?).into_owned();
    }
    Ok(ServerError { code, sqlstate, message: String::from_utf8_lossy(c.0).into_owned() })
}

/// (affected rows, status flags) of an OK packet.
fn parse_ok(p: &[u8]) -> Result<(u64, u16)> {
    let mut c = Cur(p);
    c.u8()?;
    let affected = c.lenenc()?.unwrap_or(0);
    c.lenenc()?;
    let status = c.u16()?;
    Ok((affected, status))
}

fn is_eof(p: &[u8]) -> bool {
    p.first() == Some(&0xfe) && p.len() < 9
}

/// The handshake response for `cfg` with the given auth data and plugin.
pub fn handshake_response(cfg: &Config, server_caps: u32, auth: &[u8], plugin: &str) -> Vec<u8> {
    let mut caps = CLIENT_LONG_PASSWORD
        | CLIENT_LONG_FLAG
        | CLIENT_PROTOCOL_41
        | CLIENT_TRANSACTIONS
        | CLIENT_SECURE_CONNECTION
        | CLIENT_MULTI_RESULTS
        | CLIENT_PLUGIN_AUTH
        | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA;
    if cfg.database.is_some() {
        caps |= CLIENT_CONNECT_WITH_DB;
    }
    caps &= server_caps | CLIENT_LONG_PASSWORD;
    let mut p = Vec::with_capacity(64 + auth.len());
    p.extend_from_slice(&caps.to_le_bytes());
    p.extend_from_slice(&(16u32 << 20).to_le_bytes());
    p.push(45); // utf8mb4_general_ci
    p.extend_from_slice(&[0u8; 23]);
    p.extend_from_slice(cfg.user.as_bytes());
    p.push(0);
    if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
        put_lenenc(&mut p, auth.len() as u64);
    } else {
        p.push(auth.len() as u8);
    }
    p.extend_from_slice(auth);
    if let Some(db) = &cfg.database {
        if caps & CLIENT_CONNECT_WITH_DB != 0 {
            p.extend_from_slice(db.as_bytes());
            p.push(0);
        }
    }
    if caps & CLIENT_PLUGIN_AUTH != 0 {
        p.extend_from_slice(plugin.as_bytes());
        p.push(0);
    }
    p
}

/// An open, authenticated connection.
pub struct Client<S: Read + Write> {
    io: BufReader<S>,
    handshake: Handshake,
}

impl<S: Read + Write> Client<S> {
    pub fn connect(stream: S, cfg: &Config) -> Result<Client<S>> {
        let mut io = BufReader::new(stream);
        let (seq, greeting) = read_packet(&mut io)?;
        let handshake = parse_handshake(&greeting)?;
        let mut plugin = handshake.auth_plugin.clone();
        let auth = Self::auth_data(cfg, &plugin, &handshake.scramble)?;
        let resp = handshake_response(cfg, handshake.capabilities, &auth, &plugin);
        write_packet(io.get_mut(), seq.wrapping_add(1), &resp)?;
        loop {
            let (s, p) = read_packet(&mut io)?;
            let seq = s.wrapping_add(1);
            match p.first() {
                Some(0x00) => break,
                Some(0xff) => return Err(Error::Server(parse_err(&p)?)),
                Some(0xfe) => {
                    // AuthSwitchRequest: plugin name, then that plugin's data.
                    let mut c = Cur(&p[1..]);
                    plugin = String::from_utf8_lossy(c.cstr()?).into_owned();
                    let data = c.0.strip_suffix(&[0]).unwrap_or(c.0);
                    let auth = Self::auth_data(cfg, &plugin, data)?;
                    write_packet(io.get_mut(), seq, &auth)?;
                }
                Some(0x01) => {
                    // AuthMoreData: caching_sha2_password's fast-auth result is
                    // followed by OK; anything that wants more is unsupported.
                    if p.get(1) != Some(&3) {
                        return Err(Error::UnsupportedAuth(format!("{plugin} (full authentication needs TLS)")));
                    }
                }
                _ => return Err(Error::Protocol(format!("unexpected packet during authentication: {p:02x?}"))),
            }
        }
        Ok(Client { io, handshake })
    }

    fn auth_data(cfg: &Config, plugin: &str, scramble: &[u8]) -> Result<Vec<u8>> {
        match plugin {
            "mysql_native_password" => Ok(native_password_scramble(&cfg.password, scramble)),
            // The server checks the peer's uid on the socket; the data is ignored.
            "unix_socket" | "auth_socket" => Ok(Vec::new()),
            "mysql_clear_password" if cfg.allow_cleartext => {
                let mut v = cfg.password.as_bytes().to_vec();
                v.push(0);
                Ok(v)
            }
            other => Err(Error::UnsupportedAuth(other.into())),
        }
    }

    pub fn handshake(&self) -> &Handshake {
        &self.handshake
    }

    /// The version string from the greeting (MariaDB's may start with `5.5.5-`).
    pub fn server_version(&self) -> &str {
        let v = &self.handshake.server_version;
        v.strip_prefix("5.5.5-").unwrap_or(v)
    }

    pub fn is_mariadb(&self) -> bool {
        self.handshake.server_version.contains("MariaDB")
    }

    /// `COM_QUERY`; every result set the statement(s) produce.
    pub fn query_all(&mut self, sql: &str) -> Result<Vec<ResultSet>> {
        let mut p = Vec::with_capacity(sql.len() + 1);
        p.push(0x03);
        p.extend_from_slice(sql.as_bytes());
        write_packet(self.io.get_mut(), 0, &p)?;
        let mut out = Vec::new();
        loop {
            let (rs, more) = self.read_result()?;
            out.push(rs);
            if !more {
                return Ok(out);
            }
        }
    }

    /// `COM_QUERY` of one statement; its (last) result set.
    pub fn query(&mut self, sql: &str) -> Result<ResultSet> {
        self.query_all(sql)?.pop().ok_or_else(|| Error::Protocol("no result".into()))
    }

    /// The first column of the first row.
    pub fn query_value(&mut self, sql: &str) -> Result<Option<String>> {
        let r = self.query(sql)?;
        Ok(r.rows.into_iter().next().and_then(|r| r.into_iter().next()).flatten())
    }

    fn read_result(&mut self) -> Result<(ResultSet, bool)> {
        let (_, p) = read_packet(&mut self.io)?;
        match p.first() {
            Some(0x00) => {
                let (affected, status) = parse_ok(&p)?;
                return Ok((ResultSet { affected_rows: affected, ..Default::default() }, status & SERVER_MORE_RESULTS_EXISTS != 0));
            }
            Some(0xff) => return Err(Error::Server(parse_err(&p)?)),
            Some(0xfb) => return Err(Error::Protocol("LOCAL INFILE requests are refused".into())),
            None => return Err(Error::Protocol("empty packet".into())),
            _ => {}
        }
        let n = Cur(&p).lenenc()?.unwrap_or(0);
        let mut rs = ResultSet::default();
        for _ in 0..n {
            let (_, col) = read_packet(&mut self.io)?;
            let mut c = Cur(&col);
            for _ in 0..4 {
                c.lenenc_str()?; // catalog, schema, table, org_table
            }
            rs.columns.push(String::from_utf8_lossy(c.lenenc_str()?.unwrap_or_default()).into_owned());
        }
        let (_, eof) = read_packet(&mut self.io)?;
        if !is_eof(&eof) {
            return Err(Error::Protocol("missing EOF after column definitions".into()));
        }
        loop {
            let (_, row) = read_packet(&mut self.io)?;
            if is_eof(&row) {
                let mut c = Cur(&row[1..]);
                let status = if c.0.len() >= 4 {
                    c.u16()?;
                    c.u16()?
                } else {
                    0
                };
                return Ok((rs, status & SERVER_MORE_RESULTS_EXISTS != 0));
            }
            if row.first() == Some(&0xff) {
                return Err(Error::Server(parse_err(&row)?));
            }
            let mut c = Cur(&row);
            let mut vals = Vec::with_capacity(n as usize);
            for _ in 0..n {
                vals.push(c.lenenc_str()?.map(|b| String::from_utf8_lossy(b).into_owned()));
            }
            rs.rows.push(vals);
        }
    }

    /// `SELECT VERSION()`.
    pub fn version(&mut self) -> Result<String> {
        self.query_value("SELECT VERSION()")?.ok_or_else(|| Error::Protocol("no version".into()))
    }

    /// `@@global.read_only` (a replica is usually read-only).
    pub fn read_only(&mut self) -> Result<bool> {
        Ok(self.query_value("SELECT @@global.read_only")?.as_deref() == Some("1"))
    }

    /// The replica status rows, if this server replicates from another:
    /// `SHOW REPLICA STATUS` (MariaDB ≥ 10.5.1, MySQL ≥ 8.0.22), else `SHOW SLAVE STATUS`.
    /// `None` for a server that is not a replica.
    pub fn replica_status(&mut self) -> Result<Option<ResultSet>> {
        let rs = match self.query("SHOW REPLICA STATUS") {
            Ok(rs) => rs,
            Err(e) if e.code() == Some(1064) => self.query("SHOW SLAVE STATUS")?,
            Err(e) => return Err(e),
        };
        Ok((!rs.rows.is_empty()).then_some(rs))
    }

    /// `SET SESSION lock_wait_timeout = secs`: how long `FLUSH TABLES WITH
    /// READ LOCK` (and DDL/backup locks) may wait before failing with 1205.
    pub fn set_lock_wait_timeout(&mut self, secs: u32) -> Result<()> {
        self.query(&format!("SET SESSION lock_wait_timeout = {secs}")).map(|_| ())
    }

    /// Queries (not idle connections, not this one, not replication threads)
    /// running for at least `min_secs`. A `FLUSH TABLES WITH READ LOCK` must
    /// wait for them, and every writer waits behind the flush.
    pub fn long_running_queries(&mut self, min_secs: f64) -> Result<Vec<Process>> {
        let rs = self.query(&format!(
            "SELECT ID, USER, COMMAND, TIME_MS / 1000, STATE, INFO FROM information_schema.PROCESSLIST \
             WHERE ID <> CONNECTION_ID() AND COMMAND NOT IN ('Sleep', 'Daemon', 'Binlog Dump', 'Binlog Dump GTID', 'Slave_IO', 'Slave_SQL', 'Slave_worker') \
             AND TIME_MS >= {}",
            (min_secs * 1000.0).max(0.0) as u64
        ))?;
        Ok(rs
            .rows
            .into_iter()
            .map(|r| {
                let s = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
                Process {
                    id: s(0).parse().unwrap_or(0),
                    user: s(1),
                    command: s(2),
                    time_secs: s(3).parse().unwrap_or(0.0),
                    state: s(4),
                    info: s(5),
                }
            })
            .collect())
    }

    pub fn flush_tables_with_read_lock(&mut self) -> Result<()> {
        self.query("FLUSH TABLES WITH READ LOCK").map(|_| ())
    }

    pub fn unlock_tables(&mut self) -> Result<()> {
        self.query("UNLOCK TABLES").map(|_| ())
    }

    /// `SHOW MASTER STATUS` (MySQL 8.4 renamed it `SHOW BINARY LOG STATUS`);
    /// `None` when binary logging is off.
    pub fn master_status(&mut self) -> Result<Option<BinlogPos>> {
        let rs = match self.query("SHOW MASTER STATUS") {
            Ok(rs) => rs,
            Err(e) if e.code() == Some(1064) => self.query("SHOW BINARY LOG STATUS")?,
            Err(e) => return Err(e),
        };
        let (Some(file), Some(pos)) = (rs.first("File"), rs.first("Position")) else { return Ok(None) };
        let position = pos.parse().map_err(|_| Error::Protocol(format!("binlog position {pos:?}")))?;
        Ok(Some(BinlogPos { file: file.into(), position }))
    }

    /// MariaDB's `@@gtid_binlog_pos` (the GTID of the last event in the binlog); `None` on MySQL.
    pub fn gtid_binlog_pos(&mut self) -> Result<Option<String>> {
        if !self.is_mariadb() {
            return Ok(None);
        }
        self.query_value("SELECT @@gtid_binlog_pos")
    }

    /// One `BACKUP STAGE` step (MariaDB ≥ 10.4.1).
    pub fn backup_stage(&mut self, stage: BackupStage) -> Result<()> {
        self.query(stage.sql()).map(|_| ())
    }

    /// `COM_QUIT`, then the stream.
    pub fn close(mut self) -> Result<S> {
        write_packet(self.io.get_mut(), 0, &[0x01])?;
        Ok(self.io.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

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

    fn pkt(seq: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_packet(&mut v, seq, payload).unwrap();
        v
    }

    const SCRAMBLE: &[u8; 20] = b"abcdefghijklmnopqrst";

    fn greeting(plugin: &str) -> Vec<u8> {
        let mut g = vec![10];
        g.extend_from_slice(b"5.5.5-10.11.6-MariaDB-0+deb12u1\0");
        g.extend_from_slice(&7u32.to_le_bytes());
        g.extend_from_slice(&SCRAMBLE[..8]);
        g.push(0);
        let caps: u32 = 0xf7fe | (0x81bf << 16);
        g.extend_from_slice(&(caps as u16).to_le_bytes());
        g.push(45);
        g.extend_from_slice(&2u16.to_le_bytes());
        g.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
        g.push(21);
        g.extend_from_slice(&[0u8; 10]);
        g.extend_from_slice(&SCRAMBLE[8..]);
        g.push(0);
        g.extend_from_slice(plugin.as_bytes());
        g.push(0);
        g
    }

    fn ok() -> Vec<u8> {
        vec![0, 0, 0, 2, 0, 0, 0]
    }

    #[test]
    fn a_packet_length_the_server_does_not_send_is_an_eof_not_an_allocation() {
        // 16 MiB - 1 claimed, 3 bytes sent; then a continuation chain.
        let e = read_packet(&mut &b"\xff\xff\xfe\x00abc"[..]).unwrap_err();
        assert!(matches!(&e, Error::Io(x) if x.kind() == io::ErrorKind::UnexpectedEof), "{e:?}");
        let e = read_packet(&mut &b"\xff\xff\xff\x00abc"[..]).unwrap_err();
        assert!(matches!(&e, Error::Io(x) if x.kind() == io::ErrorKind::UnexpectedEof), "{e:?}");
        assert_eq!(read_packet(&mut &b"\x03\x00\x00\x07abc"[..]).unwrap(), (7, b"abc".to_vec()));
    }

    #[test]
    fn packets_round_trip_including_the_16mib_boundary() {
        let mut buf = Vec::new();
        let next = write_packet(&mut buf, 3, b"hello").unwrap();
        assert_eq!(next, 4);
        assert_eq!(buf, [5, 0, 0, 3, b'h', b'e', b'l', b'l', b'o']);
        let big = vec![7u8; MAX_PACKET];
        let mut buf = Vec::new();
        assert_eq!(write_packet(&mut buf, 0, &big).unwrap(), 2, "a full packet is followed by an empty one");
        assert_eq!(buf.len(), MAX_PACKET + 8);
        let (seq, p) = read_packet(&mut Cursor::new(buf)).unwrap();
        assert_eq!((seq, p.len()), (1, MAX_PACKET));
    }

    #[test]
    fn lenenc_round_trips() {
        for n in [0u64, 250, 251, 0xffff, 0x1_0000, 0xff_ffff, 0x100_0000, u64::MAX] {
            let mut v = Vec::new();
            put_lenenc(&mut v, n);
            assert_eq!(Cur(&v).lenenc().unwrap(), Some(n));
        }
        assert_eq!(Cur(&[0xfb]).lenenc().unwrap(), None);
    }

    #[test]
    fn handshake_is_parsed() {
        let h = parse_handshake(&greeting("mysql_native_password")).unwrap();
        assert_eq!(h.server_version, "5.5.5-10.11.6-MariaDB-0+deb12u1");
        assert_eq!(h.connection_id, 7);
        assert_eq!(h.scramble, SCRAMBLE);
        assert_eq!(h.auth_plugin, "mysql_native_password");
        assert!(h.capabilities & CLIENT_PLUGIN_AUTH != 0);
    }

    #[test]
    fn native_password_matches_known_vector() {
        // Independently computed: SHA1("secret") ^ SHA1(scramble + SHA1(SHA1("secret"))).
        let s = native_password_scramble("secret", SCRAMBLE);
        assert_eq!(s.len(), 20);
        let h1 = Sha1::digest(b"secret");
        let h2 = Sha1::digest(h1);
        let mut x = SCRAMBLE.to_vec();
        x.extend_from_slice(&h2);
        let h3 = Sha1::digest(&x);
        // XOR back: s ^ h3 == h1, and SHA1(h1) == h2 is what the server checks.
        let back: Vec<u8> = s.iter().zip(h3.iter()).map(|(a, b)| a ^ b).collect();
        assert_eq!(Sha1::digest(&back)[..], h2[..]);
        assert!(native_password_scramble("", SCRAMBLE).is_empty());
    }

    #[test]
    fn login_with_native_password() {
        let mut server = pkt(0, &greeting("mysql_native_password"));
        server.extend(pkt(2, &ok()));
        let cfg = Config::new("app").password("secret").database("db");
        let c = Client::connect(Duplex { input: Cursor::new(server), output: vec![] }, &cfg).unwrap();
        assert!(c.is_mariadb());
        assert_eq!(c.server_version(), "10.11.6-MariaDB-0+deb12u1");
        let out = &c.io.get_ref().output;
        let (seq, resp) = read_packet(&mut Cursor::new(out.clone())).unwrap();
        assert_eq!(seq, 1);
        let expect =
            handshake_response(&cfg, c.handshake.capabilities, &native_password_scramble("secret", SCRAMBLE), "mysql_native_password");
        assert_eq!(resp, expect);
        // user, 20-byte auth (lenenc), database, plugin.
        let tail = &resp[32..];
        assert!(tail.starts_with(b"app\0\x14"));
        assert!(tail.ends_with(b"db\0mysql_native_password\0"));
    }

    #[test]
    fn auth_switch_to_unix_socket_sends_empty_data() {
        let mut server = pkt(0, &greeting("mysql_native_password"));
        let mut switch = vec![0xfe];
        switch.extend_from_slice(b"unix_socket\0");
        server.extend(pkt(2, &switch));
        server.extend(pkt(4, &ok()));
        let c = Client::connect(Duplex { input: Cursor::new(server), output: vec![] }, &Config::new("root")).unwrap();
        let mut out = Cursor::new(c.io.get_ref().output.clone());
        let (s1, _) = read_packet(&mut out).unwrap();
        let (s2, p2) = read_packet(&mut out).unwrap();
        assert_eq!((s1, s2), (1, 3), "the switch response continues the sequence");
        assert!(p2.is_empty());
    }

    #[test]
    fn auth_switch_to_native_uses_the_new_scramble() {
        let mut server = pkt(0, &greeting("caching_sha2_password"));
        let mut switch = vec![0xfe];
        switch.extend_from_slice(b"mysql_native_password\0");
        switch.extend_from_slice(b"ZYXWVUTSRQPONMLKJIHG\0");
        server.extend(pkt(2, &switch));
        server.extend(pkt(4, &ok()));
        let cfg = Config::new("u").password("pw");
        // The initial plugin is unknown to us: connect must not even get that far.
        assert!(matches!(
            Client::connect(Duplex { input: Cursor::new(server.clone()), output: vec![] }, &cfg),
            Err(Error::UnsupportedAuth(_))
        ));
        let mut server = pkt(0, &greeting("mysql_native_password"));
        server.extend(pkt(2, &switch));
        server.extend(pkt(4, &ok()));
        let c = Client::connect(Duplex { input: Cursor::new(server), output: vec![] }, &cfg).unwrap();
        let mut out = Cursor::new(c.io.get_ref().output.clone());
        read_packet(&mut out).unwrap();
        let (_, p2) = read_packet(&mut out).unwrap();
        assert_eq!(p2, native_password_scramble("pw", b"ZYXWVUTSRQPONMLKJIHG"));
    }

    #[test]
    fn access_denied_is_a_typed_error() {
        let mut server = pkt(0, &greeting("mysql_native_password"));
        let mut err = vec![0xff];
        err.extend_from_slice(&1045u16.to_le_bytes());
        err.extend_from_slice(b"#28000Access denied for user 'x'@'localhost'");
        server.extend(pkt(2, &err));
        let e = Client::connect(Duplex { input: Cursor::new(server), output: vec![] }, &Config::new("x")).err().unwrap();
        let Error::Server(se) = e else { panic!("{e}") };
        assert_eq!((se.code, se.sqlstate.as_str()), (1045, "28000"));
        assert!(se.message.starts_with("Access denied"));
    }

    fn logged_in(rest: Vec<u8>) -> Client<Duplex> {
        let mut server = pkt(0, &greeting("mysql_native_password"));
        server.extend(pkt(2, &ok()));
        server.extend(rest);
        Client::connect(Duplex { input: Cursor::new(server), output: vec![] }, &Config::new("root")).unwrap()
    }

    fn coldef(name: &str) -> Vec<u8> {
        let mut c = Vec::new();
        for s in ["def", "", "", "", name, name] {
            put_lenenc(&mut c, s.len() as u64);
            c.extend_from_slice(s.as_bytes());
        }
        c.extend_from_slice(&[0x0c, 0x21, 0, 0, 0, 0, 0xfd, 0, 0, 0, 0, 0]);
        c
    }
    fn text_row(vals: &[Option<&str>]) -> Vec<u8> {
        let mut r = Vec::new();
        for v in vals {
            match v {
                Some(s) => {
                    put_lenenc(&mut r, s.len() as u64);
                    r.extend_from_slice(s.as_bytes());
                }
                None => r.push(0xfb),
            }
        }
        r
    }
    fn eof(status: u16) -> Vec<u8> {
        let mut e = vec![0xfe, 0, 0];
        e.extend_from_slice(&status.to_le_bytes());
        e
    }

    #[test]
    fn text_result_set_and_master_status() {
        let mut s = pkt(1, &[2]);
        s.extend(pkt(2, &coldef("File")));
        s.extend(pkt(3, &coldef("Position")));
        s.extend(pkt(4, &eof(2)));
        s.extend(pkt(5, &text_row(&[Some("binlog.000001"), Some("1234")])));
        s.extend(pkt(6, &eof(2)));
        let mut c = logged_in(s);
        let pos = c.master_status().unwrap().unwrap();
        assert_eq!(pos, BinlogPos { file: "binlog.000001".into(), position: 1234 });
        let out = c.io.get_ref().output.clone();
        assert!(out.ends_with(&pkt(0, b"\x03SHOW MASTER STATUS")));
    }

    #[test]
    fn nulls_empty_sets_and_ok_packets() {
        let mut s = pkt(1, &[1]);
        s.extend(pkt(2, &coldef("@@gtid_binlog_pos")));
        s.extend(pkt(3, &eof(2)));
        s.extend(pkt(4, &text_row(&[None])));
        s.extend(pkt(5, &eof(2)));
        // FLUSH TABLES WITH READ LOCK -> OK
        s.extend(pkt(1, &ok()));
        // SHOW MASTER STATUS with binlog off -> empty set
        s.extend(pkt(1, &[2]));
        s.extend(pkt(2, &coldef("File")));
        s.extend(pkt(3, &coldef("Position")));
        s.extend(pkt(4, &eof(2)));
        s.extend(pkt(5, &eof(2)));
        let mut c = logged_in(s);
        assert_eq!(c.gtid_binlog_pos().unwrap(), None);
        c.flush_tables_with_read_lock().unwrap();
        assert_eq!(c.master_status().unwrap(), None);
    }

    #[test]
    fn lock_wait_timeout_is_recognised() {
        let mut err = vec![0xff];
        err.extend_from_slice(&1205u16.to_le_bytes());
        err.extend_from_slice(b"#HY000Lock wait timeout exceeded; try restarting transaction");
        let mut c = logged_in(pkt(1, &err));
        let e = c.flush_tables_with_read_lock().err().unwrap();
        assert!(e.is_lock_wait_timeout(), "{e}");
    }

    #[test]
    fn replica_status_falls_back_to_show_slave_status() {
        let mut err = vec![0xff];
        err.extend_from_slice(&1064u16.to_le_bytes());
        err.extend_from_slice(b"#42000You have an error in your SQL syntax");
        let mut s = pkt(1, &err);
        s.extend(pkt(1, &[1]));
        s.extend(pkt(2, &coldef("Slave_IO_State")));
        s.extend(pkt(3, &eof(2)));
        s.extend(pkt(4, &text_row(&[Some("Waiting for master")])));
        s.extend(pkt(5, &eof(2)));
        let mut c = logged_in(s);
        let rs = c.replica_status().unwrap().expect("a replica");
        assert_eq!(rs.first("slave_io_state"), Some("Waiting for master"));
        let out = c.io.get_ref().output.clone();
        assert!(out.ends_with(&pkt(0, b"\x03SHOW SLAVE STATUS")));
    }

    #[test]
    fn multiple_results_are_all_read() {
        let mut s = pkt(1, &[0, 1, 0, 0x0a, 0, 0, 0]); // OK, affected 1, MORE_RESULTS
        s.extend(pkt(2, &[0, 2, 0, 0x02, 0, 0, 0]));
        let mut c = logged_in(s);
        let r = c.query_all("INSERT ...; INSERT ...").unwrap();
        assert_eq!(r.iter().map(|r| r.affected_rows).collect::<Vec<_>>(), vec![1, 2]);
    }
}
