//! A small, blocking Redis client (RESP2) over any `std::io::Read + Write`
//! — a `TcpStream`, a `UnixStream`, or a quiesce plugin's host connection on
//! `wasm32-wasip2`. No async runtime, no OS calls.
//!
//! What a snapshot hook needs:
//! - [`Client::auth`]: `AUTH` with a password read from a granted file
//!   ([`secret_from_file_contents`] trims the trailing newline).
//! - [`Client::role`]: refuse replicas — their data follows another server.
//! - [`Client::persistence`]: `INFO persistence`, parsed ([`Persistence`]).
//! - [`Client::client_pause`] / [`Client::client_unpause`]: `CLIENT PAUSE ms
//!   WRITE` stops write commands for at most `ms` — it expires by itself, so a
//!   hook that dies cannot block the application for longer.
//! - [`Client::pipeline`]: several commands in one write, one round trip —
//!   for what runs while writers wait.
//! - Making the files on disk hold a known point in time, per persistence mode:
//!   - RDB: [`Client::bgsave`] starts a save of our own (waiting out a save or
//!     AOF rewrite already running: its fork is older) and brackets its fork
//!     between two `TIME`s ([`Fork`]); [`Client::wait_bgsave`] waits until
//!     that save is on disk. The RDB is the data set at the fork — Redis
//!     forks inside the `BGSAVE` command, before it replies — so writers need
//!     not be paused for it ([`Client::bgsave_and_wait`] does both);
//!   - AOF (`appendonly yes`): [`Client::wait_aof_written`] after pausing.
//!     With `appendfsync everysec` Redis `write(2)`s its AOF buffer before
//!     replying to clients, *except* when a background fsync is slow, when it
//!     may postpone the write for up to 2 s while already acknowledging
//!     commands. `aof_buffer_length == 0` (and no pending background fsync)
//!     under the pause proves every acknowledged write is in the file — in the
//!     page cache. Redis 7.0 has no command to fsync the AOF on demand
//!     (`WAITAOF` is 7.2+); the page cache reaches the disk through the file
//!     system freeze (FIFREEZE syncs the file system before it returns), which
//!     is what the snapshot captures. Without a freeze, use `bgsave_and_wait`
//!     or `BGREWRITEAOF`, which fsync their files.
//! - [`Client::config_get`]: e.g. `appendfsync`, `appendonly`, `dir`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

/// A RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Value>),
}

impl Value {
    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::Simple(s) => Some(s.clone()),
            Value::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub enum Error {
    Io(io::Error),
    /// An error reply, e.g. `WRONGPASS invalid username-password pair`.
    Server(String),
    Protocol(String),
    /// The server is a replica; snapshot its primary instead.
    Replica,
    /// A background save or AOF write did not complete in time, or failed.
    Persistence(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "connection: {e}"),
            Error::Server(m) => write!(f, "server: {m}"),
            Error::Protocol(m) => write!(f, "protocol: {m}"),
            Error::Replica => write!(f, "the server is a replica; run the hook on the primary"),
            Error::Persistence(m) => write!(f, "persistence: {m}"),
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
    /// The error reply's first word: `NOAUTH`, `WRONGPASS`, `ERR`, `LOADING`, ...
    pub fn kind(&self) -> Option<&str> {
        match self {
            Error::Server(m) => m.split_whitespace().next(),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Encodes a command as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Longest status, error or length line accepted (Redis's own replies of
/// these kinds are a few hundred bytes; data comes as bulk strings).
const MAX_LINE: u64 = 64 << 10;

/// Largest bulk string accepted (Redis's `proto-max-bulk-len` default).
const MAX_BULK: i64 = 512 << 20;

fn read_line<R: BufRead>(r: &mut R) -> Result<String> {
    let mut line = Vec::new();
    // Bounded: a server that never sends a newline must not grow this forever.
    Read::take(&mut *r, MAX_LINE).read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(Error::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    if line.len() as u64 == MAX_LINE && !line.ends_with(b"\n") {
        return Err(Error::Protocol(format!("reply line longer than {MAX_LINE} bytes")));
    }
    if !line.ends_with(b"\r\n") {
        return Err(Error::Protocol("reply line without CRLF".into()));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| Error::Protocol("reply line is not UTF-8".into()))
}

/// Reads one reply. Error replies are returned as `Value::Error`.
pub fn read_value<R: BufRead>(r: &mut R) -> Result<Value> {
    read_value_depth(r, 0)
}

fn read_value_depth<R: BufRead>(r: &mut R, depth: u32) -> Result<Value> {
    if depth > 64 {
        return Err(Error::Protocol("reply nested too deeply".into()));
    }
    let line = read_line(r)?;
    let (kind, rest) = line.split_at_checked(1).ok_or_else(|| Error::Protocol("empty reply line".into()))?;
    let int = |s: &str| s.parse::<i64>().map_err(|_| Error::Protocol(format!("bad integer {s:?}")));
    match kind {
        "+" => Ok(Value::Simple(rest.into())),
        "-" => Ok(Value::Error(rest.into())),
        ":" => Ok(Value::Int(int(rest)?)),
        "$" => {
            let n = int(rest)?;
            if n < 0 {
                return Ok(Value::Nil);
            }
            if n > MAX_BULK {
                return Err(Error::Protocol(format!("bulk string of {n} bytes")));
            }
            // Grows with the bytes that arrive, not with the announced length:
            // `$536870912` followed by nothing must not allocate 512 MiB
            // (fuzz/corpus/resp_server/bulk-length-512m is that input).
            let want = n as u64 + 2;
            let mut b = Vec::new();
            if Read::take(&mut *r, want).read_to_end(&mut b)? as u64 != want {
                return Err(Error::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            if !b.ends_with(b"\r\n") {
                return Err(Error::Protocol("bulk string without CRLF".into()));
            }
            b.truncate(n as usize);
            Ok(Value::Bulk(b))
        }
        "*" => {
            let n = int(rest)?;
            if n < 0 {
                return Ok(Value::Nil);
            }
            let mut v = Vec::with_capacity(n.min(1024) as usize);
            for _ in 0..n {
                v.push(read_value_depth(r, depth + 1)?);
            }
            Ok(Value::Array(v))
        }
        k => Err(Error::Protocol(format!("unknown reply type {k:?}"))),
    }
}

/// A secret file's contents without the trailing newline.
pub fn secret_from_file_contents(s: &str) -> &str {
    s.trim_end_matches(['\n', '\r'])
}

/// `ROLE`, first element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Master { offset: i64 },
    Replica { master_host: String, master_port: i64, state: String },
    Sentinel,
}

/// The `INFO persistence` fields a hook decides on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Persistence {
    pub loading: bool,
    pub aof_enabled: bool,
    pub aof_rewrite_in_progress: bool,
    /// Bytes acknowledged but not yet written to the AOF file.
    pub aof_buffer_length: u64,
    /// Background fsyncs queued.
    pub aof_pending_bio_fsync: u64,
    pub aof_last_write_ok: bool,
    pub rdb_bgsave_in_progress: bool,
    pub rdb_last_bgsave_ok: bool,
    /// Unix time of the last successful save.
    pub rdb_last_save_time: i64,
    /// Saves since start (Redis ≥ 7.0), the exact way to see a new save.
    pub rdb_saves: Option<u64>,
    /// Every field, for what is not modelled here.
    pub fields: BTreeMap<String, String>,
}

/// Parses `INFO` text (`# Section` headers, `key:value` lines).
pub fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

impl Persistence {
    pub fn from_info(text: &str) -> Persistence {
        let f = parse_info(text);
        let flag = |k: &str| f.get(k).map(|v| v == "1").unwrap_or(false);
        let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let ok = |k: &str| f.get(k).map(|v| v == "ok").unwrap_or(true);
        Persistence {
            loading: flag("loading"),
            aof_enabled: flag("aof_enabled"),
            aof_rewrite_in_progress: flag("aof_rewrite_in_progress"),
            aof_buffer_length: num("aof_buffer_length"),
            aof_pending_bio_fsync: num("aof_pending_bio_fsync"),
            aof_last_write_ok: ok("aof_last_write_status"),
            rdb_bgsave_in_progress: flag("rdb_bgsave_in_progress"),
            rdb_last_bgsave_ok: ok("rdb_last_bgsave_status"),
            rdb_last_save_time: f.get("rdb_last_save_time").and_then(|v| v.parse().ok()).unwrap_or(0),
            rdb_saves: f.get("rdb_saves").and_then(|v| v.parse().ok()),
            fields: f,
        }
    }
}

/// A `TIME` reply (`[seconds, microseconds]`) as ns since the Unix epoch.
pub fn time_ns_of(v: Value) -> Result<u64> {
    if let Value::Array(v) = &v {
        let n = |x: &Value| x.as_text().and_then(|s| s.parse::<u64>().ok());
        if let [s, us] = v.as_slice() {
            if let Some(ns) = n(s).zip(n(us)).and_then(|(s, us)| s.checked_mul(1_000_000_000)?.checked_add(us.checked_mul(1000)?)) {
                return Ok(ns);
            }
        }
    }
    Err(Error::Protocol(format!("TIME returned {v:?}")))
}

/// `+OK`, or the error: `reply` to the command `name` (for [`Client::pipeline`]'s replies).
pub fn ok_reply(name: &str, reply: Result<Value>) -> Result<()> {
    match reply? {
        Value::Simple(s) if s == "OK" => Ok(()),
        v => Err(Error::Protocol(format!("{name} returned {v:?}"))),
    }
}

/// Where a background save's fork lies on the server's clock: the RDB it
/// writes holds every write Redis ran before `after_ns` and none it ran
/// after `before_ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fork {
    pub after_ns: u64,
    pub before_ns: u64,
    /// `rdb_saves` right after the fork, counting it (Redis ≥ 7.0, which
    /// counts a save when it starts): a higher count later means a newer
    /// save replaced ours.
    pub saves: Option<u64>,
}

/// Whether `p`, read with writes paused, shows every acknowledged write in
/// the AOF file: the buffer empty, no background fsync queued (whose failure
/// would show in the status only after it ran), the last write fine.
pub fn aof_written(p: &Persistence) -> Result<bool> {
    if !p.aof_enabled {
        return Err(Error::Persistence("AOF is not enabled".into()));
    }
    if !p.aof_last_write_ok {
        return Err(Error::Persistence("the last AOF write failed (aof_last_write_status:err)".into()));
    }
    Ok(p.aof_buffer_length == 0 && p.aof_pending_bio_fsync == 0)
}

pub struct Client<S: Read + Write> {
    io: BufReader<S>,
}

impl<S: Read + Write> Client<S> {
    pub fn new(stream: S) -> Client<S> {
        Client { io: BufReader::new(stream) }
    }

    /// Sends a command and reads its reply; an error reply is [`Error::Server`].
    pub fn cmd(&mut self, args: &[&str]) -> Result<Value> {
        let raw: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.cmd_bytes(&raw)
    }

    pub fn cmd_bytes(&mut self, args: &[&[u8]]) -> Result<Value> {
        let s = self.io.get_mut();
        s.write_all(&encode(args))?;
        s.flush()?;
        match read_value(&mut self.io)? {
            Value::Error(e) => Err(Error::Server(e)),
            v => Ok(v),
        }
    }

    /// Sends `cmds` in one write and reads one reply each, in order: one
    /// round trip. Redis runs the commands of one read back to back, so
    /// (when they arrive together, as a few short commands do) no other
    /// client's command runs between them. An error reply is that command's
    /// `Err(Error::Server)`; an I/O or protocol error fails the whole call.
    pub fn pipeline(&mut self, cmds: &[&[&str]]) -> Result<Vec<Result<Value>>> {
        let mut out = Vec::new();
        for c in cmds {
            let raw: Vec<&[u8]> = c.iter().map(|a| a.as_bytes()).collect();
            out.extend(encode(&raw));
        }
        let s = self.io.get_mut();
        s.write_all(&out)?;
        s.flush()?;
        cmds.iter()
            .map(|_| {
                read_value(&mut self.io).map(|v| match v {
                    Value::Error(e) => Err(Error::Server(e)),
                    v => Ok(v),
                })
            })
            .collect()
    }

    /// `TIME`: the server's clock, ns since the Unix epoch.
    pub fn time_ns(&mut self) -> Result<u64> {
        time_ns_of(self.cmd(&["TIME"])?)
    }

    fn cmd_text(&mut self, args: &[&str]) -> Result<String> {
        self.cmd(args)?.as_text().ok_or_else(|| Error::Protocol(format!("{} returned no text", args[0])))
    }

    fn cmd_ok(&mut self, args: &[&str]) -> Result<()> {
        ok_reply(args[0], self.cmd(args))
    }

    /// `AUTH password` (the `default` user).
    pub fn auth(&mut self, password: &str) -> Result<()> {
        self.cmd_ok(&["AUTH", password])
    }

    /// `AUTH user password` (ACL users, Redis ≥ 6).
    pub fn auth_user(&mut self, user: &str, password: &str) -> Result<()> {
        self.cmd_ok(&["AUTH", user, password])
    }

    pub fn ping(&mut self) -> Result<()> {
        match self.cmd(&["PING"])? {
            Value::Simple(s) if s == "PONG" => Ok(()),
            v => Err(Error::Protocol(format!("PING returned {v:?}"))),
        }
    }

    /// `INFO section`, raw text.
    pub fn info(&mut self, section: &str) -> Result<String> {
        self.cmd_text(&["INFO", section])
    }

    pub fn persistence(&mut self) -> Result<Persistence> {
        Ok(Persistence::from_info(&self.info("persistence")?))
    }

    /// `redis_version` from `INFO server`.
    pub fn version(&mut self) -> Result<String> {
        parse_info(&self.info("server")?).remove("redis_version").ok_or_else(|| Error::Protocol("INFO server has no redis_version".into()))
    }

    pub fn role(&mut self) -> Result<Role> {
        let Value::Array(v) = self.cmd(&["ROLE"])? else { return Err(Error::Protocol("ROLE is not an array".into())) };
        let text = |i: usize| v.get(i).and_then(Value::as_text).unwrap_or_default();
        let int = |i: usize| match v.get(i) {
            Some(Value::Int(n)) => *n,
            _ => 0,
        };
        match text(0).as_str() {
            "master" => Ok(Role::Master { offset: int(1) }),
            "slave" | "replica" => Ok(Role::Replica { master_host: text(1), master_port: int(2), state: text(3) }),
            "sentinel" => Ok(Role::Sentinel),
            r => Err(Error::Protocol(format!("unknown role {r:?}"))),
        }
    }

    /// Fails with [`Error::Replica`] unless the server is a master.
    pub fn ensure_master(&mut self) -> Result<()> {
        match self.role()? {
            Role::Master { .. } => Ok(()),
            _ => Err(Error::Replica),
        }
    }

    /// `CONFIG GET name` → the value, `None` if there is no such parameter.
    pub fn config_get(&mut self, name: &str) -> Result<Option<String>> {
        let Value::Array(v) = self.cmd(&["CONFIG", "GET", name])? else { return Err(Error::Protocol("CONFIG GET is not an array".into())) };
        Ok(v.get(1).and_then(Value::as_text))
    }

    /// `LASTSAVE`: Unix time of the last successful save.
    pub fn lastsave(&mut self) -> Result<i64> {
        match self.cmd(&["LASTSAVE"])? {
            Value::Int(n) => Ok(n),
            v => Err(Error::Protocol(format!("LASTSAVE returned {v:?}"))),
        }
    }

    /// `CLIENT PAUSE ms WRITE` (`write_only`) or `CLIENT PAUSE ms` (all commands).
    /// Ends by itself after `ms`, or at [`Client::client_unpause`].
    pub fn client_pause(&mut self, ms: u64, write_only: bool) -> Result<()> {
        let ms = ms.to_string();
        if write_only {
            self.cmd_ok(&["CLIENT", "PAUSE", &ms, "WRITE"])
        } else {
            self.cmd_ok(&["CLIENT", "PAUSE", &ms])
        }
    }

    pub fn client_unpause(&mut self) -> Result<()> {
        self.cmd_ok(&["CLIENT", "UNPAUSE"])
    }

    /// Starts a background save of our own and returns where its fork lies
    /// ([`Fork`]): `TIME`, `BGSAVE`, `TIME`, `INFO persistence` in one
    /// round trip. A save or AOF rewrite already running is waited out (a
    /// running save forked before we asked: its RDB misses what came since)
    /// and `BGSAVE` asked again, until `timeout`.
    pub fn bgsave(&mut self, timeout: Duration, poll: Duration) -> Result<Fork> {
        let t0 = Instant::now();
        loop {
            let replies = self.pipeline(&[&["TIME"], &["BGSAVE"], &["TIME"], &["INFO", "persistence"]])?;
            let [t1, started, t2, info]: [Result<Value>; 4] =
                replies.try_into().map_err(|_| Error::Protocol("pipeline lost a reply".into()))?;
            match started {
                // Redis forks inside the command, before it replies.
                Ok(Value::Simple(s)) if s.contains("started") => {
                    let saves = Persistence::from_info(&info?.as_text().unwrap_or_default()).rdb_saves;
                    return Ok(Fork { after_ns: time_ns_of(t1?)?, before_ns: time_ns_of(t2?)?, saves });
                }
                Ok(v) => return Err(Error::Protocol(format!("BGSAVE returned {v:?}, not \"Background saving started\""))),
                // "Background save already in progress", "Another child
                // process is active (AOF?)": ours must fork after it.
                Err(Error::Server(m)) if m.contains("in progress") || m.contains("child process is active") => {
                    if t0.elapsed() > timeout {
                        return Err(Error::Persistence(format!(
                            "another save or AOF rewrite was still running after {timeout:?}, so ours could not start ({m})"
                        )));
                    }
                }
                Err(e) => return Err(e),
            }
            std::thread::sleep(poll);
        }
    }

    /// Waits until the save `fork` started has finished successfully: no save
    /// running, `rdb_last_bgsave_status:ok`, and (Redis ≥ 7.0) no newer save
    /// counted since. Redis notices its child's exit at its next `serverCron`
    /// tick (`hz`, 100 ms by default), so this takes at least that long.
    pub fn wait_bgsave(&mut self, fork: &Fork, timeout: Duration, poll: Duration) -> Result<Persistence> {
        let t0 = Instant::now();
        loop {
            let p = self.persistence()?;
            if !p.rdb_bgsave_in_progress {
                if !p.rdb_last_bgsave_ok {
                    return Err(Error::Persistence(
                        "the background save failed (rdb_last_bgsave_status:err; the server's log says why)".into(),
                    ));
                }
                return match (fork.saves, p.rdb_saves) {
                    (Some(ours), Some(now)) if now != ours => Err(Error::Persistence(format!(
                        "another save started after ours (rdb_saves {now}, ours {ours}), so dump.rdb may not be ours; try again"
                    ))),
                    _ => Ok(p),
                };
            }
            if t0.elapsed() > timeout {
                return Err(Error::Persistence(format!("BGSAVE did not finish within {timeout:?}")));
            }
            std::thread::sleep(poll);
        }
    }

    /// [`Client::bgsave`] then [`Client::wait_bgsave`], both within `timeout`.
    pub fn bgsave_and_wait(&mut self, timeout: Duration, poll: Duration) -> Result<Persistence> {
        let t0 = Instant::now();
        let fork = self.bgsave(timeout, poll)?;
        self.wait_bgsave(&fork, timeout.saturating_sub(t0.elapsed()), poll)
    }

    /// With writes paused: waits until every acknowledged write is in the
    /// AOF file ([`aof_written`]). See the module doc for why this, not fsync.
    pub fn wait_aof_written(&mut self, timeout: Duration, poll: Duration) -> Result<Persistence> {
        let t0 = Instant::now();
        loop {
            let p = self.persistence()?;
            if aof_written(&p)? {
                return Ok(p);
            }
            if t0.elapsed() > timeout {
                return Err(Error::Persistence(format!(
                    "AOF buffer not written within {timeout:?} ({} bytes, {} fsyncs pending)",
                    p.aof_buffer_length, p.aof_pending_bio_fsync
                )));
            }
            std::thread::sleep(poll);
        }
    }

    pub fn into_inner(self) -> S {
        self.io.into_inner()
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
    fn client(server: &[u8]) -> Client<Duplex> {
        Client::new(Duplex { input: Cursor::new(server.to_vec()), output: vec![] })
    }

    #[test]
    fn a_bulk_length_the_server_does_not_send_is_an_eof_not_an_allocation() {
        let mut r = BufReader::new(&b"$536870912\r\nabc"[..]);
        let e = read_value(&mut r).unwrap_err();
        assert!(matches!(&e, Error::Io(x) if x.kind() == io::ErrorKind::UnexpectedEof), "{e:?}");
        let mut r = BufReader::new(&b"$3\r\nabc\r\n"[..]);
        assert_eq!(read_value(&mut r).unwrap(), Value::Bulk(b"abc".to_vec()));
    }

    #[test]
    fn a_reply_line_without_end_is_refused_at_the_cap() {
        let mut long = b"+".to_vec();
        long.resize(MAX_LINE as usize * 2, b'x');
        let e = read_value(&mut BufReader::new(&long[..])).unwrap_err();
        assert!(e.to_string().contains("longer than 65536 bytes"), "{e}");
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        assert_eq!(encode(&[b"CLIENT", b"PAUSE", b"500", b"WRITE"]), b"*4\r\n$6\r\nCLIENT\r\n$5\r\nPAUSE\r\n$3\r\n500\r\n$5\r\nWRITE\r\n");
        assert_eq!(encode(&[b"SET", b"k", b""]), b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }

    #[test]
    fn replies_of_every_type() {
        let mut r = Cursor::new(b"+OK\r\n-ERR no\r\n:42\r\n$5\r\na\r\nbc\r\n$-1\r\n*2\r\n:1\r\n*1\r\n$0\r\n\r\n*-1\r\n".to_vec());
        assert_eq!(read_value(&mut r).unwrap(), Value::Simple("OK".into()));
        assert_eq!(read_value(&mut r).unwrap(), Value::Error("ERR no".into()));
        assert_eq!(read_value(&mut r).unwrap(), Value::Int(42));
        assert_eq!(read_value(&mut r).unwrap(), Value::Bulk(b"a\r\nbc".to_vec()), "binary-safe bulk");
        assert_eq!(read_value(&mut r).unwrap(), Value::Nil);
        assert_eq!(read_value(&mut r).unwrap(), Value::Array(vec![Value::Int(1), Value::Array(vec![Value::Bulk(vec![])])]));
        assert_eq!(read_value(&mut r).unwrap(), Value::Nil);
        assert!(matches!(read_value(&mut r), Err(Error::Io(_))), "EOF");
    }

    #[test]
    fn malformed_replies_are_protocol_errors() {
        for bad in [&b"?x\r\n"[..], b":abc\r\n", b"$3\r\nabcd\r\n", b"+OK\n"] {
            assert!(matches!(read_value(&mut Cursor::new(bad.to_vec())), Err(Error::Protocol(_))), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn wrong_password_is_a_server_error_with_its_kind() {
        let mut c = client(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n");
        let e = c.auth("nope").err().unwrap();
        assert_eq!(e.kind(), Some("WRONGPASS"));
        assert_eq!(c.io.get_ref().output, encode(&[b"AUTH", b"nope"]));
        assert_eq!(secret_from_file_contents("s3cret\n"), "s3cret");
    }

    #[test]
    fn role_master_and_replica() {
        let mut c = client(b"*3\r\n$6\r\nmaster\r\n:3129659\r\n*0\r\n");
        assert_eq!(c.role().unwrap(), Role::Master { offset: 3129659 });
        let mut c = client(b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:9753\r\n$9\r\nconnected\r\n:3167038\r\n");
        assert!(matches!(c.ensure_master(), Err(Error::Replica)));
    }

    const INFO: &str = "# Persistence\r\nloading:0\r\nasync_loading:0\r\nrdb_changes_since_last_save:12\r\nrdb_bgsave_in_progress:0\r\nrdb_last_save_time:1700000000\r\nrdb_last_bgsave_status:ok\r\nrdb_saves:3\r\naof_enabled:1\r\naof_rewrite_in_progress:0\r\naof_last_write_status:ok\r\naof_buffer_length:0\r\naof_pending_bio_fsync:0\r\n";

    #[test]
    fn info_persistence_is_parsed() {
        let p = Persistence::from_info(INFO);
        assert!(p.aof_enabled && !p.loading && !p.rdb_bgsave_in_progress && p.rdb_last_bgsave_ok && p.aof_last_write_ok);
        assert_eq!(p.rdb_last_save_time, 1700000000);
        assert_eq!(p.rdb_saves, Some(3));
        assert_eq!(p.fields["rdb_changes_since_last_save"], "12");
        let p = Persistence::from_info("rdb_last_bgsave_status:err\r\naof_last_write_status:err\r\n");
        assert!(!p.rdb_last_bgsave_ok && !p.aof_last_write_ok && p.rdb_saves.is_none());
    }

    fn bulk(s: &str) -> Vec<u8> {
        format!("${}\r\n{s}\r\n", s.len()).into_bytes()
    }

    fn time(s: u64, us: u64) -> Vec<u8> {
        [b"*2\r\n".to_vec(), bulk(&s.to_string()), bulk(&us.to_string())].concat()
    }

    /// The replies to one `bgsave` round: TIME, BGSAVE's, TIME, INFO.
    fn bgsave_round(t: u64, bgsave: &[u8], info: &str) -> Vec<u8> {
        [time(t, 10), bgsave.to_vec(), time(t, 250), bulk(info)].concat()
    }

    #[test]
    fn bgsave_brackets_its_fork_and_waits_for_that_save() {
        let running = INFO.replace("rdb_bgsave_in_progress:0", "rdb_bgsave_in_progress:1").replace("rdb_saves:3", "rdb_saves:4");
        let server = [
            bgsave_round(1_700_000_001, b"+Background saving started\r\n", &running),
            bulk(&running),
            bulk(&INFO.replace("rdb_saves:3", "rdb_saves:4")),
        ]
        .concat();
        let mut c = client(&server);
        let fork = c.bgsave(Duration::from_secs(5), Duration::from_millis(1)).unwrap();
        assert_eq!(fork, Fork { after_ns: 1_700_000_001_000_010_000, before_ns: 1_700_000_001_000_250_000, saves: Some(4) });
        let p = c.wait_bgsave(&fork, Duration::from_secs(5), Duration::from_millis(1)).unwrap();
        assert_eq!(p.rdb_saves, Some(4));
        // One write for the four commands of the round.
        let out = &c.io.get_ref().output;
        assert!(
            out.starts_with(&[encode(&[b"TIME"]), encode(&[b"BGSAVE"]), encode(&[b"TIME"]), encode(&[b"INFO", b"persistence"])].concat())
        );
    }

    #[test]
    fn a_save_already_running_is_waited_out_and_ours_started_after_it() {
        let running = INFO.replace("rdb_bgsave_in_progress:0", "rdb_bgsave_in_progress:1");
        let ours = running.replace("rdb_saves:3", "rdb_saves:4");
        let server = [
            bgsave_round(1_700_000_001, b"-ERR Background save already in progress\r\n", &running),
            bgsave_round(1_700_000_002, b"-ERR Another child process is active (AOF?): can't BGSAVE right now.\r\n", &running),
            bgsave_round(1_700_000_003, b"+Background saving started\r\n", &ours),
            bulk(&INFO.replace("rdb_saves:3", "rdb_saves:4")),
        ]
        .concat();
        let mut c = client(&server);
        let p = c.bgsave_and_wait(Duration::from_secs(5), Duration::from_millis(1)).unwrap();
        assert_eq!(p.rdb_saves, Some(4));
        let bgsaves = c.io.get_ref().output.windows(6).filter(|w| w == b"BGSAVE").count();
        assert_eq!(bgsaves, 3);

        // Still running at the deadline: an error, not somebody else's save.
        let mut c = client(&bgsave_round(1_700_000_001, b"-ERR Background save already in progress\r\n", &running));
        assert!(matches!(c.bgsave(Duration::ZERO, Duration::from_millis(1)), Err(Error::Persistence(m)) if m.contains("could not start")));
    }

    #[test]
    fn a_failed_bgsave_or_a_newer_save_is_an_error() {
        let started = b"+Background saving started\r\n";
        let server =
            [bgsave_round(1, started, INFO), bulk(&INFO.replace("rdb_last_bgsave_status:ok", "rdb_last_bgsave_status:err"))].concat();
        let mut c = client(&server);
        assert!(
            matches!(c.bgsave_and_wait(Duration::from_secs(5), Duration::from_millis(1)), Err(Error::Persistence(m)) if m.contains("failed"))
        );
        let server = [bgsave_round(1, started, INFO), bulk(&INFO.replace("rdb_saves:3", "rdb_saves:4"))].concat();
        let mut c = client(&server);
        assert!(
            matches!(c.bgsave_and_wait(Duration::from_secs(5), Duration::from_millis(1)), Err(Error::Persistence(m)) if m.contains("another save"))
        );
        let mut c = client(&bgsave_round(1, b"+Background saving scheduled\r\n", INFO));
        assert!(matches!(c.bgsave(Duration::from_secs(5), Duration::from_millis(1)), Err(Error::Protocol(_))));
    }

    #[test]
    fn a_pipeline_reads_one_reply_per_command_and_keeps_error_replies_apart() {
        let mut c = client(&[b"+OK\r\n".to_vec(), time(12, 5), b"-NOPERM no\r\n".to_vec(), b":1\r\n".to_vec()].concat());
        let r = c.pipeline(&[&["CLIENT", "PAUSE", "10", "WRITE"], &["TIME"], &["INFO", "persistence"]]).unwrap();
        assert_eq!(r[0].as_ref().unwrap(), &Value::Simple("OK".into()));
        assert_eq!(time_ns_of(r[1].as_ref().unwrap().clone()).unwrap(), 12_000_005_000);
        assert!(matches!(&r[2], Err(e) if e.kind() == Some("NOPERM")));
        // The next reply is the next command's.
        assert_eq!(c.cmd(&["PING"]).unwrap(), Value::Int(1));
        assert!(time_ns_of(Value::Array(vec![Value::Bulk(b"x".to_vec())])).is_err());
        let mut c = client(b"+OK\r\n");
        assert!(matches!(c.pipeline(&[&["A"], &["B"]]), Err(Error::Io(_))));
    }

    #[test]
    fn aof_wait_needs_an_empty_buffer() {
        let mut server = bulk(&INFO.replace("aof_buffer_length:0", "aof_buffer_length:120"));
        server.extend(bulk(INFO));
        let mut c = client(&server);
        c.wait_aof_written(Duration::from_secs(5), Duration::from_millis(1)).unwrap();
        let mut c = client(&bulk(&INFO.replace("aof_enabled:1", "aof_enabled:0")));
        assert!(matches!(c.wait_aof_written(Duration::from_secs(1), Duration::from_millis(1)), Err(Error::Persistence(_))));
    }

    #[test]
    fn config_get_and_pause() {
        let mut c = client(b"*2\r\n$11\r\nappendfsync\r\n$8\r\neverysec\r\n*0\r\n+OK\r\n+OK\r\n");
        assert_eq!(c.config_get("appendfsync").unwrap().as_deref(), Some("everysec"));
        assert_eq!(c.config_get("nosuch").unwrap(), None);
        c.client_pause(500, true).unwrap();
        c.client_unpause().unwrap();
        let out = &c.io.get_ref().output;
        assert!(out.ends_with(&[encode(&[b"CLIENT", b"PAUSE", b"500", b"WRITE"]), encode(&[b"CLIENT", b"UNPAUSE"])].concat()));
    }
}
