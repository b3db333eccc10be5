//! # Writing a quiesce plugin
//!
//! A quiesce plugin makes one application consistent on disk around a
//! snapshot: [`Plugin::pre`] runs before the file systems are frozen (flush,
//! lock, enter backup mode), [`Plugin::post`] after they are thawed (unlock,
//! leave backup mode). The host keeps **one instance per session**, so
//! whatever `pre` stores in `self` — an open [`Connection`] holding a lock —
//! is still there in `post`. [`Plugin::check`] runs on its own, any time
//! (`quiesce check`, `quiesce doctor`): it connects and verifies what `pre`
//! will need, changing nothing, and returns [`Finding`]s.
//!
//! This SDK speaks `quiesce:plugin@0.2.0` (the WIT is in the crate, `wit/`).
//! New against 0.1.0: [`Plugin::check`] (defaulted: nothing to verify), the
//! label in [`Snapshot`] is a [`Consistency`], and `post` can say the
//! application's quiesce did not hold through the snapshot
//! ([`HookResult::NotHeld`]), which lowers the session's label.
//!
//! ```ignore
//! use std::io::{BufRead, BufReader, Write};
//! use quiesce_plugin_sdk::{Connection, Context, Finding, HookResult, Info, Plugin, Snapshot};
//!
//! #[derive(Default)]
//! struct MyDb { conn: Option<Connection> }
//!
//! impl Plugin for MyDb {
//!     fn describe() -> Info {
//!         Info::new("mydb", env!("CARGO_PKG_VERSION"))
//!             .quiesces("MyDB: flush and hold the global write lock")
//!             .grant("tcp:127.0.0.1:7000")
//!             .param("target", "where MyDB listens", Some("tcp:127.0.0.1:7000"))
//!     }
//!     fn pre(&mut self, ctx: &Context) -> HookResult {
//!         let mut conn = match Connection::open(ctx.param_or("target", "tcp:127.0.0.1:7000")) {
//!             Ok(c) => c,
//!             Err(e) => return e.into(),           // refused → Retryable, denied → Fatal
//!         };
//!         if let Err(e) = conn.write_all(b"FLUSH WITH LOCK\n") { return HookResult::retryable(e.to_string()) }
//!         self.conn = Some(conn);                   // held until post
//!         HookResult::ok("locked")
//!     }
//!     fn check(&mut self, ctx: &Context) -> Vec<Finding> {
//!         match Connection::open(ctx.param_or("target", "tcp:127.0.0.1:7000")) {
//!             Ok(_) => vec![Finding::passed("MyDbReachable", "MyDB answers")],
//!             Err(e) => vec![Finding::error("MyDbUnreachable", format!("{e}: start MyDB or fix `target`"))],
//!         }
//!     }
//!     fn post(&mut self, _ctx: &Context, snapshot: &Snapshot) -> HookResult {
//!         quiesce_plugin_sdk::info!("snapshot taken: {} ({})", snapshot.taken, snapshot.label);
//!         drop(self.conn.take());                   // closing the session releases the lock
//!         HookResult::ok("unlocked")
//!     }
//! }
//!
//! quiesce_plugin_sdk::register!(MyDb);
//! ```
//!
//! ## Building
//! ```sh
//! rustup target add wasm32-wasip2
//! cargo build --release --target wasm32-wasip2   # crate-type = ["cdylib"]
//! quiesce plugin inspect target/wasm32-wasip2/release/mydb.wasm
//! ```
//! `quiesce plugin new mydb` creates such a crate, ready to build.
//!
//! ## What a plugin may do
//! Nothing, by default: no files, no network, no environment, no real wall
//! clock, no processes. The administrator grants, per plugin:
//!
//! | grant | allows |
//! |---|---|
//! | `tcp:HOST:PORT` | [`Connection::open`] of exactly that target |
//! | `unix:/path` | [`Connection::open`] of that Unix socket |
//! | `file:/path` | [`files::read`] of that file |
//! | `dir:/path` | [`files::read`] of any file below that directory |
//! | `exec:/path` | [`exec::run`] of that executable |
//!
//! [`Info::grant`] lists what the plugin asks for (shown by `quiesce plugin
//! inspect`). A call that is not granted returns an [`Error`] of kind
//! [`ErrorKind::Denied`] and the host reports `GrantDenied`; it does not kill
//! the plugin.
//!
//! ## Limits
//! Each call has a deadline ([`Context::deadline`]); past it the host kills
//! the instance, which closes its connections. Memory is capped; a plugin that
//! needs more dies with "memory limit exceeded". A panic kills the instance
//! too (the host reports `PluginTrapped`). Log output per call is capped.
//! [`log`] records (and anything printed to stdout/stderr) go to the host's
//! log and report.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::thread::LocalKey;
use std::time::Duration;

#[doc(hidden)]
pub mod __bindings {
    wit_bindgen::generate!({
        // Inside the crate (a copy of the repository's frozen
        // `wit/v0.2.0/plugin.wit`; a host test keeps them identical), so the
        // SDK builds wherever it is copied to.
        path: "wit",
        world: "quiesce-plugin",
        pub_export_macro: true,
        export_macro_name: "__quiesce_export",
        default_bindings_module: "quiesce_plugin_sdk::__bindings",
    });
}

use __bindings::quiesce::plugin as wit;

/// The one trait a plugin implements. `Default` builds the instance's state
/// before the first call; the same value serves `pre` and `post`.
pub trait Plugin: Default + 'static {
    /// Name, version, what it quiesces, the grants and params it wants.
    fn describe() -> Info;
    /// Before the freeze: make the application's on-disk state consistent.
    fn pre(&mut self, ctx: &Context) -> HookResult;
    /// After the thaw (also after a failed or skipped snapshot): undo `pre`.
    /// Return [`HookResult::NotHeld`] when what `pre` did ended before the
    /// snapshot was taken (a pause that expired): the session's label comes down.
    fn post(&mut self, ctx: &Context, snapshot: &Snapshot) -> HookResult;
    /// Verifies, changing nothing, that `pre` and `post` will work with
    /// these params and grants: connect, authenticate, check privileges
    /// and settings. Runs in an instance of its own, with the same limits.
    /// The default has nothing to verify.
    fn check(&mut self, ctx: &Context) -> Vec<Finding> {
        let _ = ctx;
        Vec::new()
    }
}

/// Registers `$plugin` (a type implementing [`Plugin`]) as this component's
/// hooks. Use it once, at the crate root.
#[macro_export]
macro_rules! register {
    ($plugin:ty) => {
        ::std::thread_local! {
            static __QUIESCE_PLUGIN_STATE: ::core::cell::RefCell<::core::option::Option<$plugin>> =
                const { ::core::cell::RefCell::new(::core::option::Option::None) };
        }
        #[doc(hidden)]
        pub struct __QuiescePluginExport;
        impl $crate::__private::Guest for __QuiescePluginExport {
            fn describe() -> $crate::__private::WitInfo {
                $crate::__private::describe::<$plugin>()
            }
            fn pre(ctx: $crate::__private::WitContext) -> $crate::__private::WitResult {
                $crate::__private::pre::<$plugin>(&__QUIESCE_PLUGIN_STATE, ctx)
            }
            fn post(
                ctx: $crate::__private::WitContext,
                snapshot: $crate::__private::WitSnapshot,
            ) -> $crate::__private::WitPostResult {
                $crate::__private::post::<$plugin>(&__QUIESCE_PLUGIN_STATE, ctx, snapshot)
            }
            fn check(ctx: $crate::__private::WitContext) -> ::std::vec::Vec<$crate::__private::WitFinding> {
                $crate::__private::check::<$plugin>(&__QUIESCE_PLUGIN_STATE, ctx)
            }
        }
        $crate::__bindings::__quiesce_export!(__QuiescePluginExport with_types_in $crate::__bindings);
    };
}

#[doc(hidden)]
pub mod __private {
    use super::*;
    pub use crate::__bindings::exports::quiesce::plugin::hooks::Guest;
    pub use wit::types::{
        Finding as WitFinding, HookContext as WitContext, HookResult as WitResult, PluginInfo as WitInfo, PostResult as WitPostResult,
        SnapshotOutcome as WitSnapshot,
    };

    pub type State<P> = LocalKey<RefCell<Option<P>>>;

    pub fn describe<P: Plugin>() -> WitInfo {
        P::describe().into_wit()
    }

    pub fn pre<P: Plugin>(state: &'static State<P>, ctx: WitContext) -> WitResult {
        let ctx = Context::from_wit(ctx);
        state.with(|s| s.borrow_mut().get_or_insert_with(P::default).pre(&ctx).into_wit())
    }

    pub fn post<P: Plugin>(state: &'static State<P>, ctx: WitContext, snapshot: WitSnapshot) -> WitPostResult {
        let ctx = Context::from_wit(ctx);
        let snapshot = Snapshot { taken: snapshot.taken, label: Consistency::from_wit(snapshot.label) };
        state.with(|s| s.borrow_mut().get_or_insert_with(P::default).post(&ctx, &snapshot).into_post())
    }

    pub fn check<P: Plugin>(state: &'static State<P>, ctx: WitContext) -> Vec<WitFinding> {
        let ctx = Context::from_wit(ctx);
        state.with(|s| s.borrow_mut().get_or_insert_with(P::default).check(&ctx).into_iter().map(Finding::into_wit).collect())
    }
}

/// What a plugin says about itself ([`Plugin::describe`]).
#[derive(Clone, Debug, Default)]
pub struct Info {
    pub name: String,
    pub version: String,
    pub quiesces: String,
    pub grants: Vec<String>,
    pub params: Vec<ParamDoc>,
}

/// One parameter the plugin reads with [`Context::param`].
#[derive(Clone, Debug)]
pub struct ParamDoc {
    pub name: String,
    pub description: String,
    pub required: bool,
    pub default: Option<String>,
}

impl Info {
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Info {
        Info { name: name.into(), version: version.into(), ..Info::default() }
    }
    /// What the plugin quiesces, for humans.
    pub fn quiesces(mut self, what: impl Into<String>) -> Info {
        self.quiesces = what.into();
        self
    }
    /// A grant the plugin asks for (`tcp:127.0.0.1:5432`, `file:/etc/mydb.cnf`, …).
    pub fn grant(mut self, grant: impl Into<String>) -> Info {
        self.grants.push(grant.into());
        self
    }
    /// A parameter; `default: None` makes it required.
    pub fn param(mut self, name: impl Into<String>, description: impl Into<String>, default: Option<&str>) -> Info {
        self.params.push(ParamDoc {
            name: name.into(),
            description: description.into(),
            required: default.is_none(),
            default: default.map(str::to_owned),
        });
        self
    }

    fn into_wit(self) -> wit::types::PluginInfo {
        wit::types::PluginInfo {
            name: self.name,
            version: self.version,
            quiesces: self.quiesces,
            grants: self.grants,
            params: self
                .params
                .into_iter()
                .map(|p| wit::types::ParamDoc { name: p.name, description: p.description, required: p.required, default: p.default })
                .collect(),
        }
    }
}

/// What a hook call knows about its session.
#[derive(Clone, Debug)]
pub struct Context {
    pub session_id: String,
    /// 1 on the first attempt; higher when the host retries after [`HookResult::Retryable`].
    pub attempt: u32,
    /// Time left for this call; past it the host kills the instance.
    pub deadline: Duration,
    pub params: Vec<(String, String)>,
}

impl Context {
    fn from_wit(c: wit::types::HookContext) -> Context {
        Context { session_id: c.session_id, attempt: c.attempt, deadline: Duration::from_millis(c.deadline_ms), params: c.params }
    }
    /// The admin's value for `name`, if set.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    pub fn param_or<'a>(&'a self, name: &str, default: &'a str) -> &'a str {
        self.param(name).unwrap_or(default)
    }
    /// The value for `name`, or an [`ErrorKind::Invalid`] error naming it.
    pub fn required(&self, name: &str) -> Result<&str, Error> {
        self.param(name).ok_or_else(|| Error::new(ErrorKind::Invalid, format!("parameter {name:?} is required")))
    }
}

/// What `post` learns about the snapshot.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub taken: bool,
    /// The session's label so far.
    pub label: Consistency,
}

/// The consistency a session claims for its snapshot, strongest first.
/// Displays as the report spells it (`AppConsistent`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    AppConsistent,
    FileSystemConsistent,
    CrashConsistent,
    /// No snapshot was taken.
    None,
}

impl Consistency {
    fn from_wit(c: wit::types::Consistency) -> Consistency {
        use wit::types::Consistency as C;
        match c {
            C::AppConsistent => Consistency::AppConsistent,
            C::FileSystemConsistent => Consistency::FileSystemConsistent,
            C::CrashConsistent => Consistency::CrashConsistent,
            C::None => Consistency::None,
        }
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Consistency::AppConsistent => "AppConsistent",
            Consistency::FileSystemConsistent => "FileSystemConsistent",
            Consistency::CrashConsistent => "CrashConsistent",
            Consistency::None => "None",
        })
    }
}

/// How much a [`Finding`] matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Verified and fine.
    Passed,
    /// Worth knowing; the hook will work.
    Info,
    /// The hook will work, but worse than it could.
    Warning,
    /// The hook will fail.
    Error,
}

/// One thing [`Plugin::check`] verified or found wrong: a stable code
/// (UpperCamelCase, searchable, never reused) and a message that says what
/// was found and, unless it passed, the exact fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub code: String,
    pub message: String,
}

impl Finding {
    pub fn new(severity: Severity, code: impl Into<String>, message: impl Into<String>) -> Finding {
        Finding { severity, code: code.into(), message: message.into() }
    }
    pub fn passed(code: impl Into<String>, message: impl Into<String>) -> Finding {
        Finding::new(Severity::Passed, code, message)
    }
    pub fn info(code: impl Into<String>, message: impl Into<String>) -> Finding {
        Finding::new(Severity::Info, code, message)
    }
    pub fn warning(code: impl Into<String>, message: impl Into<String>) -> Finding {
        Finding::new(Severity::Warning, code, message)
    }
    pub fn error(code: impl Into<String>, message: impl Into<String>) -> Finding {
        Finding::new(Severity::Error, code, message)
    }
    fn into_wit(self) -> wit::types::Finding {
        use wit::types::Severity as S;
        let severity = match self.severity {
            Severity::Passed => S::Passed,
            Severity::Info => S::Info,
            Severity::Warning => S::Warning,
            Severity::Error => S::Error,
        };
        wit::types::Finding { severity, code: self.code, message: self.message }
    }
}

/// The result of a hook call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookResult {
    Ok(String),
    /// Worth another attempt (the host retries as the admin configured).
    Retryable(String),
    Fatal(String),
    /// From `post` only: undone fine, but the application's quiesce did not
    /// hold through the snapshot (the message says why and the fix); the
    /// session's label drops to `FileSystemConsistent` (`QuiesceNotHeld`).
    /// From `pre` it is a failure: nothing can have failed to hold yet.
    NotHeld(String),
}

impl HookResult {
    pub fn ok(msg: impl Into<String>) -> HookResult {
        HookResult::Ok(msg.into())
    }
    pub fn retryable(msg: impl Into<String>) -> HookResult {
        HookResult::Retryable(msg.into())
    }
    pub fn fatal(msg: impl Into<String>) -> HookResult {
        HookResult::Fatal(msg.into())
    }
    pub fn not_held(why: impl Into<String>) -> HookResult {
        HookResult::NotHeld(why.into())
    }
    fn into_wit(self) -> wit::types::HookResult {
        match self {
            HookResult::Ok(m) => wit::types::HookResult::Ok(m),
            HookResult::Retryable(m) => wit::types::HookResult::Retryable(m),
            HookResult::Fatal(m) => wit::types::HookResult::Fatal(m),
            HookResult::NotHeld(m) => wit::types::HookResult::Fatal(format!("pre returned NotHeld (only post can): {m}")),
        }
    }
    fn into_post(self) -> wit::types::PostResult {
        match self {
            HookResult::NotHeld(why) => wit::types::PostResult {
                outcome: wit::types::HookResult::Ok(format!("quiesce did not hold: {why}")),
                held: false,
                why_not_held: why,
            },
            r => wit::types::PostResult { outcome: r.into_wit(), held: true, why_not_held: String::new() },
        }
    }
}

/// Why a hook failed, for plugins that classify their errors as they go:
/// worth another attempt (the service is starting, a long query is running)
/// or not (bad credentials, a replica). `Ok(msg)` / `Err(Failure)` converts
/// into a [`HookResult`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    Retry(String),
    Fatal(String),
}

impl Failure {
    /// The message, whichever kind it is (for a [`Finding`] in `check`).
    pub fn into_message(self) -> String {
        match self {
            Failure::Retry(m) | Failure::Fatal(m) => m,
        }
    }
}

impl From<Failure> for HookResult {
    fn from(f: Failure) -> HookResult {
        match f {
            Failure::Retry(m) => HookResult::Retryable(m),
            Failure::Fatal(m) => HookResult::Fatal(m),
        }
    }
}

impl From<Result<String, Failure>> for HookResult {
    fn from(r: Result<String, Failure>) -> HookResult {
        match r {
            Ok(m) => HookResult::Ok(m),
            Err(f) => f.into(),
        }
    }
}

/// A failed capability call: `Refused`, `Io` and `NotFound` become
/// `Retryable` (the service may be starting), anything else `Fatal`.
impl From<Error> for HookResult {
    fn from(e: Error) -> HookResult {
        match e.kind {
            ErrorKind::Refused | ErrorKind::Io | ErrorKind::NotFound => HookResult::Retryable(e.to_string()),
            ErrorKind::Denied | ErrorKind::Invalid | ErrorKind::TooLarge => HookResult::Fatal(e.to_string()),
        }
    }
}

/// `Ok(msg)` → `Ok`, `Err(e)` → as `From<Error>`; lets a hook be written
/// with `?` in a helper returning `Result<String, Error>`.
impl<E: Into<Error>> From<Result<String, E>> for HookResult {
    fn from(r: Result<String, E>) -> HookResult {
        match r {
            Ok(m) => HookResult::Ok(m),
            Err(e) => e.into().into(),
        }
    }
}

/// Why a capability call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The administrator did not grant it.
    Denied,
    NotFound,
    Refused,
    Invalid,
    TooLarge,
    Io,
}

#[derive(Clone, Debug)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into() }
    }
    fn from_wit(e: wit::types::Error) -> Error {
        use wit::types::ErrorKind as K;
        let kind = match e.kind {
            K::Denied => ErrorKind::Denied,
            K::NotFound => ErrorKind::NotFound,
            K::Refused => ErrorKind::Refused,
            K::Invalid => ErrorKind::Invalid,
            K::TooLarge => ErrorKind::TooLarge,
            K::Io => ErrorKind::Io,
        };
        Error { kind, message: e.message }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        // Errors that came from the host travel inside the io::Error intact.
        if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            if let Some(inner) = e.into_inner().and_then(|b| b.downcast::<Error>().ok()) {
                return *inner;
            }
            return Error::new(ErrorKind::Io, "i/o error");
        }
        let kind = match e.kind() {
            io::ErrorKind::PermissionDenied => ErrorKind::Denied,
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => ErrorKind::Refused,
            io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => ErrorKind::Invalid,
            _ => ErrorKind::Io,
        };
        Error::new(kind, e.to_string())
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match e.kind {
            ErrorKind::Denied => io::ErrorKind::PermissionDenied,
            ErrorKind::NotFound => io::ErrorKind::NotFound,
            ErrorKind::Refused => io::ErrorKind::ConnectionRefused,
            ErrorKind::Invalid => io::ErrorKind::InvalidInput,
            ErrorKind::TooLarge | ErrorKind::Io => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// A byte stream to a granted `tcp:HOST:PORT` or `unix:/path` target, with
/// blocking [`io::Read`] and [`io::Write`]. Dropping it closes it; so does the
/// host when the instance dies.
pub struct Connection {
    inner: wit::connections::Connection,
    target: String,
}

impl Connection {
    /// Connects to `target`, which must be granted exactly as written.
    pub fn open(target: &str) -> Result<Connection, Error> {
        let inner = wit::connections::connect(target).map_err(Error::from_wit)?;
        Ok(Connection { inner, target: target.to_owned() })
    }
    pub fn target(&self) -> &str {
        &self.target
    }
    /// Ends the write direction: the peer reads end of stream.
    pub fn shutdown(&mut self) -> Result<(), Error> {
        self.inner.shutdown().map_err(Error::from_wit)
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Connection({})", self.target)
    }
}

/// The most one read asks the host for.
const READ_CHUNK: usize = 64 * 1024;

impl io::Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let max = buf.len().min(READ_CHUNK) as u32;
        let data = self.inner.read(max).map_err(|e| io::Error::from(Error::from_wit(e)))?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Ok(n)
    }
}

impl io::Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.write(buf).map_err(|e| io::Error::from(Error::from_wit(e)))?;
        Ok(n as usize)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Structured records into the host's log. The macros take `format!` arguments.
pub mod log {
    use super::wit::log as wit_log;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Level {
        Trace,
        Debug,
        Info,
        Warn,
        Error,
    }

    /// A record with key/value fields.
    pub fn record(level: Level, message: &str, fields: &[(&str, &str)]) {
        let level = match level {
            Level::Trace => wit_log::Level::Trace,
            Level::Debug => wit_log::Level::Debug,
            Level::Info => wit_log::Level::Info,
            Level::Warn => wit_log::Level::Warn,
            Level::Error => wit_log::Level::Error,
        };
        let fields: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        wit_log::log(level, message, &fields);
    }
}

#[macro_export]
macro_rules! debug { ($($t:tt)*) => { $crate::log::record($crate::log::Level::Debug, &::std::format!($($t)*), &[]) } }
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::log::record($crate::log::Level::Info, &::std::format!($($t)*), &[]) } }
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::log::record($crate::log::Level::Warn, &::std::format!($($t)*), &[]) } }
#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::log::record($crate::log::Level::Error, &::std::format!($($t)*), &[]) } }

/// The host's monotonic clock (there is no wall clock).
pub mod clock {
    use std::time::Duration;

    /// Nanoseconds since an arbitrary fixed point.
    pub fn now_ns() -> u64 {
        super::wit::clock::monotonic_now_ns()
    }
    /// Sleeps; the time counts against the call's deadline.
    pub fn sleep(d: Duration) {
        super::wit::clock::sleep_ms(d.as_millis().min(u64::MAX as u128) as u64)
    }
}

/// Read-only files named by `file:` or `dir:` grants.
pub mod files {
    use super::Error;

    pub fn read(path: &str) -> Result<Vec<u8>, Error> {
        super::wit::files::read_file(path).map_err(Error::from_wit)
    }
    pub fn read_to_string(path: &str) -> Result<String, Error> {
        String::from_utf8(read(path)?).map_err(|_| Error::new(super::ErrorKind::Invalid, format!("{path}: not UTF-8")))
    }
}

/// Blobs the host keeps for this session outside the snapshot (a backup label).
pub mod artifacts {
    use super::{Error, Failure};

    /// The artifact that places a session on the database's own clock.
    pub const TIMES: &str = "quiesce_times";

    pub fn store(name: &str, data: &[u8]) -> Result<(), Error> {
        super::wit::artifacts::store(name, data).map_err(Error::from_wit)
    }

    /// [`store`] for a hook that must hand the artifact over (a restore
    /// needs it): a refusal fails the hook, naming the artifact.
    pub fn keep(name: &str, data: &[u8]) -> Result<(), Failure> {
        store(name, data).map_err(|e| Failure::Fatal(format!("cannot hand artifact {name} to the host: {e}")))
    }

    /// Stores [`TIMES`]: one `name=value` line per entry — instants as ns
    /// since the Unix epoch on the database server's clock (to match a
    /// restore against its logs; the `db_stall` bench reads them) and
    /// durations as `*_ns`.
    pub fn keep_times(times: &[(&str, u64)]) -> Result<(), Failure> {
        let text: String = times.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        keep(TIMES, text.as_bytes())
    }
}

/// Run an executable named by an `exec:` grant.
pub mod exec {
    use super::Error;

    #[derive(Clone, Debug)]
    pub struct Output {
        /// Exit status, -1 when killed by a signal or at the deadline.
        pub status: i32,
        /// stdout and stderr interleaved line by line, up to the host's cap.
        pub output: Vec<u8>,
        /// Output beyond the cap was dropped.
        pub truncated: bool,
    }

    pub fn run(path: &str, args: &[&str]) -> Result<Output, Error> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let o = super::wit::exec::run(path, &args).map_err(Error::from_wit)?;
        Ok(Output { status: o.status, output: o.output, truncated: o.truncated })
    }
}
