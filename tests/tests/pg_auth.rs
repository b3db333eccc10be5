//! PostgreSQL authentication of the `pgwire` client and the postgres plugin
//! against a real PostgreSQL 15 (issue 9): SCRAM-SHA-256 logs in and checks
//! the server; a server asking for the password in cleartext or as MD5, or
//! letting us in without asking, is refused unless the admin opted in; a
//! server-chosen iteration count above the limit is refused.
//!
//! "The password never went out" is proven on the wire: each client talks to
//! the server through [`Tap`], a TCP relay that records every byte the client
//! sent. The opt-in runs show the same tap does see the password when it is
//! sent, so its silence in the refusals means something.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use pgwire::{Client, Config, Error, Refusal, ScramError};
use quiesce_tests::db::*;
use quiesce_tests::restore::Stage;
use quiesce_tests::*;

/// A relay on its own loopback port in front of `upstream` that records what
/// clients send (server bytes pass through unrecorded).
struct Tap {
    port: u16,
    sent: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Tap {
    fn new(upstream: u16) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind tap");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (rec, halt) = (sent.clone(), stop.clone());
        let acceptor = std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                        relay(client.try_clone().unwrap(), server.try_clone().unwrap(), Some(rec.clone()));
                        relay(server, client, None);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                    Err(e) => panic!("tap accept: {e}"),
                }
            }
        });
        Tap { port, sent, stop, acceptor: Some(acceptor) }
    }

    fn sent(&self) -> Vec<u8> {
        self.sent.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.sent.lock().unwrap().clear();
    }

    fn saw(&self, needle: &str) -> bool {
        self.sent().windows(needle.len()).any(|w| w == needle.as_bytes())
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// Copies `from` to `to` until EOF, recording into `rec`; then half-closes `to`.
fn relay(mut from: TcpStream, mut to: TcpStream, rec: Option<Arc<Mutex<Vec<u8>>>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Some(r) = &rec {
                r.lock().unwrap().extend_from_slice(&buf[..n]);
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// Login roles, each with its own password and pg_hba.conf method (the
/// superuser `postgres` keeps initdb's scram-sha-256).
struct Role {
    name: &'static str,
    password: String,
}

const CLEAR: &str = "clear_u";
const MD5: &str = "md5_u";
const TRUST: &str = "trust_u";
const SCRAM: &str = "scram_u";
const ITER: &str = "iter_u";

fn hba() -> Vec<String> {
    vec![
        format!("host all {CLEAR} 127.0.0.1/32 password"),
        format!("host all {MD5} 127.0.0.1/32 md5"),
        format!("host all {TRUST} 127.0.0.1/32 trust"),
    ]
}

/// Creates `name` as a superuser (the plugin's checkpoint needs it) with a
/// distinctive password, stored as `encryption` (`scram-sha-256` or `md5`).
fn role(pg: &Postgres, name: &'static str, encryption: &str) -> Role {
    let password = format!("{name}-secret-{}", now_ns() % 1_000_000_007);
    let mut c = pg.connect();
    c.simple_query(&format!("SET password_encryption = '{encryption}'; CREATE ROLE {name} LOGIN SUPERUSER PASSWORD '{password}'"))
        .unwrap_or_else(|e| panic!("create role {name}: {e}"));
    let stored = c.query_value(&format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{name}'")).unwrap().unwrap_or_default();
    let prefix = if encryption == "md5" { "md5" } else { "SCRAM-SHA-256$4096:" };
    assert!(stored.starts_with(prefix), "{name} stored as {stored:?}");
    Role { name, password }
}

fn connect_via(tap: &Tap, cfg: &Config) -> pgwire::Result<Client<TcpStream>> {
    let s = TcpStream::connect(("127.0.0.1", tap.port)).expect("connect to the tap");
    Client::connect(s, cfg)
}

fn login_as(tap: &Tap, r: &Role, cfg: impl FnOnce(Config) -> Config) -> pgwire::Result<String> {
    let mut c = connect_via(tap, &cfg(Config::new(r.name).database("postgres").password(&r.password)))?;
    Ok(c.query_value("SELECT current_user")?.unwrap_or_default())
}

/// Scratch directory, then the server on it (drop order: server first).
struct Server {
    pg: Postgres,
    _s: Scratch,
}

fn server(name: &str) -> Server {
    let s = Scratch::new(name);
    let pg = Postgres::start_with(&s.path, PgOptions { hba: hba(), ..Default::default() });
    Server { pg, _s: s }
}

/// A server with role `name` (password stored as `encryption`), and a tap in front of it.
fn server_with_role(name: &'static str, encryption: &str) -> (Tap, Role, Server) {
    let srv = server(&format!("pgauth-{name}"));
    let r = role(&srv.pg, name, encryption);
    (Tap::new(srv.pg.port), r, srv)
}

#[test]
fn scram_login_against_postgres_15_proves_the_server_and_never_sends_the_password() {
    require!(Root, Postgres);
    let (tap, r, _srv) = server_with_role(SCRAM, "scram-sha-256");
    assert_eq!(login_as(&tap, &r, |c| c).unwrap(), SCRAM);
    let sent = String::from_utf8_lossy(&tap.sent()).into_owned();
    assert!(sent.contains("SCRAM-SHA-256\0") && sent.contains("n,,n=,r=") && sent.contains(",p="), "a SCRAM exchange went out: {sent:?}");
    assert!(!tap.saw(&r.password), "the password itself went out");
    // The server checks us too: a wrong password is its 28P01.
    let e = login_as(&tap, &Role { name: SCRAM, password: "wrong".into() }, |c| c).unwrap_err();
    assert_eq!(e.sqlstate(), Some("28P01"), "{e}");
}

/// A verifier with 200 000 iterations, set with `ALTER ROLE … PASSWORD
/// '<verifier>'` (PostgreSQL 15 has no `scram_iterations`): the real server
/// then asks for 200 000, above the default limit.
#[test]
fn a_server_iteration_count_above_the_limit_is_refused_and_a_raised_limit_logs_in() {
    require!(Root, Postgres);
    let srv = server("pgauth-iter");
    let password = format!("iter-secret-{}", now_ns() % 1_000_000_007);
    let verifier = pgwire::scram::verifier(&password, b"sixteen byte salt", 200_000);
    srv.pg.connect().simple_query(&format!("CREATE ROLE {ITER} LOGIN PASSWORD '{verifier}'")).unwrap();
    let r = Role { name: ITER, password };
    let tap = Tap::new(srv.pg.port);
    let e = login_as(&tap, &r, |c| c).unwrap_err();
    assert!(matches!(e, Error::Scram(ScramError::TooManyIterations { asked: 200_000, max: 100_000 })), "{e}");
    assert!(!String::from_utf8_lossy(&tap.sent()).contains(",p="), "no client proof after the refusal");
    assert_eq!(login_as(&tap, &r, |c| c.max_scram_iterations(200_000)).unwrap(), ITER);
}

#[test]
fn md5_pg_hba_is_refused_without_the_opt_in_and_logs_in_with_it() {
    require!(Root, Postgres);
    let (tap, r, _srv) = server_with_role(MD5, "md5");
    let e = login_as(&tap, &r, |c| c).unwrap_err();
    assert!(matches!(e, Error::Refused(Refusal::Md5)), "{e}");
    let startup = pgwire::startup_message(&Config::new(MD5).database("postgres"));
    assert_eq!(tap.sent(), startup, "only the startup message went out");

    tap.clear();
    assert_eq!(login_as(&tap, &r, |c| c.allow_md5(true)).unwrap(), MD5);
    assert!(String::from_utf8_lossy(&tap.sent()).contains("md5"), "the MD5 answer went out");
    assert!(!tap.saw(&r.password), "MD5 sends a hash, not the password");
}

#[test]
fn a_trust_server_is_refused_when_a_password_is_configured() {
    require!(Root, Postgres);
    let (tap, r, _srv) = server_with_role(TRUST, "scram-sha-256");
    let e = login_as(&tap, &r, |c| c).unwrap_err();
    assert!(matches!(e, Error::Refused(Refusal::Unauthenticated)), "{e}");
    // Without a password, trust is what the admin asked for.
    let mut c = connect_via(&tap, &Config::new(TRUST).database("postgres")).unwrap();
    assert_eq!(c.query_value("SELECT current_user").unwrap().as_deref(), Some(TRUST));
}

/// The postgres plugin, run by `quiesce snapshot` as a WASM hook, against a
/// role whose pg_hba.conf method is `password`.
#[test]
fn plugin_refuses_cleartext_pg_hba_without_sending_the_password_and_logs_in_with_the_opt_in_or_scram() {
    require!(Root, Postgres, Plugins);
    let st = Stage::new("pgauth-plugin");
    let pg = Postgres::start_with(st.rig.inner(), PgOptions { hba: hba(), ..Default::default() });
    let r = role(&pg, CLEAR, "scram-sha-256");
    let tap = Tap::new(pg.port);
    let pwfile: PathBuf = st.file("clear.password");
    fs::write(&pwfile, format!("{}\n", r.password)).unwrap();
    let target = format!("tcp:127.0.0.1:{}", tap.port);
    let grants = vec![target.clone(), format!("file:{}", pwfile.display())];
    let params = |extra: &[(&'static str, &str)]| {
        let mut p = vec![("target", target.clone()), ("user", CLEAR.to_string()), ("password_file", pwfile.display().to_string())];
        p.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        p
    };

    // `on_failure = "abort"`: a hook that cannot log in means no snapshot at all.
    let config = st.plugin_config("quiesce_postgres", &params(&[]), &grants, "on_failure = \"abort\"");
    let run = run_json(st.session(&config, "true", 30));
    println!("[pg-auth] refused run: errors {:?}, pre: {}", run.error_codes(), run.hook("db", "pre"));
    assert_eq!(run.report["snapshot_taken"], false, "{}", run.report);
    assert!(run.has_error("Pre-ScriptExecutionFailed"), "{:?}\n{}", run.error_codes(), run.report);
    let pre = run.hook("db", "pre").to_string();
    assert!(pre.contains("cleartext") && pre.contains("allow_password_auth") && pre.contains("scram-sha-256 in pg_hba.conf"), "{pre}");
    assert!(!tap.sent().is_empty(), "the plugin did connect through the tap");
    assert!(!tap.saw(&r.password), "the password went out although cleartext was refused");

    tap.clear();
    let config = st.plugin_config("quiesce_postgres", &params(&[("allow_password_auth", "cleartext")]), &grants, "");
    let (run, _) = st.snapshot(&config);
    assert_eq!(run.consistency(), "AppConsistent", "{}", run.report);
    assert!(tap.saw(&r.password), "opted in: the tap sees the cleartext password (so it would have seen it above)");

    // The superuser keeps scram-sha-256: the plugin's SCRAM inside the guest
    // (nonce from wasi:random, server signature checked) logs in, no password on the wire.
    tap.clear();
    let su = vec![("target", target.clone()), ("password_file", pg.password_file.display().to_string())];
    let config = st.plugin_config("quiesce_postgres", &su, &[target.clone(), format!("file:{}", pg.password_file.display())], "");
    let (run, _) = st.snapshot(&config);
    assert_eq!(run.consistency(), "AppConsistent", "{}", run.report);
    assert!(String::from_utf8_lossy(&tap.sent()).contains("n,,n=,r="), "a SCRAM exchange went through the tap");
    assert!(!tap.saw(&pg.password), "SCRAM never sends the password");
}
