//! Throwaway database servers for scenario tests and benchmarks — PostgreSQL
//! 15, MariaDB 10.11, Redis 7 — each on a data directory the test chose (a
//! loop mount it created), on its own free loopback port and private Unix
//! socket, never a system-wide service. `Drop` stops the server on every path.
//!
//! [`Writer`] is the application under test: a thread that commits numbered
//! rows as fast as it can through the `pgwire` / `mywire` / `resp` crates and
//! remembers every acknowledged number with the wall-clock time of its ack
//! (comparable with `date +%s%N` in hook scripts and snapshot commands).

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{sh, SCRATCH_BASE};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

static AUX_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Nanoseconds since the Unix epoch, as `date +%s%N` prints them.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Lets the database users traverse (not list, not write) every directory
/// from `SCRATCH_BASE` down to `path`: scratch directories are 0700.
pub fn allow_traverse(path: &Path) {
    let base = Path::new(SCRATCH_BASE);
    let mut p = Some(path);
    while let Some(dir) = p {
        if !dir.starts_with(base) || dir == base {
            break;
        }
        if let Ok(meta) = fs::metadata(dir) {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o011 != 0o011 {
                let _ = fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o011));
            }
        }
        p = dir.parent();
    }
}

/// A private directory for a server's socket, pid file, log and credentials,
/// outside its data directory (so none of it is in a snapshot). Removed on drop.
pub struct Aux {
    pub path: PathBuf,
}

impl Aux {
    pub fn new(kind: &str) -> Aux {
        fs::create_dir_all(SCRATCH_BASE).expect("scratch base");
        let n = AUX_COUNTER.fetch_add(1, Ordering::SeqCst);
        // Short: Unix socket paths are limited to 107 bytes.
        let path = PathBuf::from(format!("{SCRATCH_BASE}/{kind}{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("aux dir");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).expect("chmod aux");
        Aux { path }
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
    fn chown(&self, user: &str) {
        sh(&format!("chown -R {user}: {}", self.path.display()));
    }
}

impl Drop for Aux {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

fn wait_until<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for `child` to exit, up to `limit`; SIGKILLs it after that. A server
/// blocked on a frozen file system cannot die before the thaw: give up then
/// rather than hang the test.
fn reap(child: &mut Child, limit: Duration) {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("server pid {} did not exit", child.id());
}

/// `syncfs` of the file system holding `dir`: a freshly initialised server
/// stands in for one that has run for a while, whose setup files the kernel
/// wrote back long ago. Without it a crash-consistent snapshot taken seconds
/// after `initdb --no-sync` may hold an empty `PG_VERSION` — true, but not
/// what the tests are about.
pub fn settle(dir: &Path) {
    sh(&format!("sync -f {}", dir.display()));
}

fn tail(path: &Path) -> String {
    let s = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

// ---------------------------------------------------------------- PostgreSQL

/// A PostgreSQL 15 server run as `postgres` by `pg_ctl`, listening on
/// 127.0.0.1:`port` and in `socket_dir`, SCRAM-SHA-256 everywhere.
pub struct Postgres {
    pub data_dir: PathBuf,
    pub port: u16,
    pub socket_dir: PathBuf,
    /// The superuser `postgres`'s password, one line.
    pub password_file: PathBuf,
    pub password: String,
    pub log: PathBuf,
    /// WAL archive (`archive_mode = on`), outside the data directory's file
    /// system: what a restore through `backup_label` replays up to the
    /// backup's end. `None` when started without archiving.
    pub archive_dir: Option<PathBuf>,
    /// The postmaster's pid, for stopping it even when `pg_ctl` cannot
    /// (e.g. its data directory is already gone).
    pub pid: i32,
    stopped: bool,
    aux: Aux,
}

#[derive(Clone, Debug, Default)]
pub struct PgOptions {
    /// Archive WAL into the server's aux directory (`archive_dir`).
    pub archive: bool,
    /// Further `-c name=value` settings.
    pub settings: Vec<String>,
    /// pg_hba.conf lines put before initdb's (first match wins), e.g.
    /// `host all clear 127.0.0.1/32 password` for one role's auth method.
    pub hba: Vec<String>,
}

impl Postgres {
    /// `initdb` in `<data_dir_parent>/pg/data` and start, without WAL archiving.
    pub fn start(data_dir_parent: &Path) -> Postgres {
        Self::start_with(data_dir_parent, PgOptions::default())
    }

    pub fn start_with(data_dir_parent: &Path, opts: PgOptions) -> Postgres {
        let aux = Aux::new("pg");
        let password = format!("pw-{}", now_ns() % 1_000_000_007);
        let pwfile = aux.join("password");
        fs::write(&pwfile, format!("{password}\n")).unwrap();
        fs::create_dir_all(aux.join("sock")).unwrap();
        let archive_dir = opts.archive.then(|| aux.join("archive"));
        if let Some(a) = &archive_dir {
            fs::create_dir_all(a).unwrap();
        }
        aux.chown("postgres");
        let pgdir = data_dir_parent.join("pg");
        fs::create_dir_all(&pgdir).unwrap();
        allow_traverse(&pgdir);
        sh(&format!("chown postgres: {}", pgdir.display()));
        let data_dir = pgdir.join("data");
        sh(&format!(
            "runuser -u postgres -- {PG_BIN}/initdb -D {} -A scram-sha-256 --pwfile={} -U postgres --no-sync -E UTF8 --locale=C > {} 2>&1",
            data_dir.display(),
            pwfile.display(),
            aux.join("initdb.log").display()
        ));
        if !opts.hba.is_empty() {
            let hba = data_dir.join("pg_hba.conf");
            let rest = fs::read_to_string(&hba).expect("read pg_hba.conf");
            fs::write(&hba, format!("{}\n{rest}", opts.hba.join("\n"))).expect("write pg_hba.conf");
        }
        let mut pg = Postgres {
            data_dir,
            port: 0,
            socket_dir: aux.join("sock"),
            password_file: pwfile,
            password,
            log: aux.join("pg.log"),
            archive_dir,
            pid: 0,
            stopped: true,
            aux,
        };
        let mut settings = opts.settings.clone();
        if let Some(a) = &pg.archive_dir {
            settings.push("archive_mode=on".into());
            settings.push(format!("archive_command='test ! -f {0}/%f && cp %p {0}/%f'", a.display()));
        }
        pg.pg_ctl_start(&settings).unwrap_or_else(|e| panic!("{e}"));
        let mut c = pg.connect();
        c.simple_query("CREATE TABLE t (n bigint PRIMARY KEY)").expect("create table t");
        settle(&pg.data_dir);
        pg
    }

    /// Starts a server on an existing data directory (a restored snapshot),
    /// on a new port, with the same superuser password. Removes a stale
    /// `postmaster.pid` first: the snapshot was taken from a running server,
    /// and its postmaster may still be alive.
    pub fn start_existing(data_dir: &Path, password: &str, settings: &[String]) -> Postgres {
        Self::try_start_existing(data_dir, password, settings).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Postgres::start_existing`], or why `pg_ctl start` failed (for restores expected to fail).
    pub fn try_start_existing(data_dir: &Path, password: &str, settings: &[String]) -> Result<Postgres, String> {
        let aux = Aux::new("pgr");
        let pwfile = aux.join("password");
        fs::write(&pwfile, format!("{password}\n")).unwrap();
        fs::create_dir_all(aux.join("sock")).unwrap();
        aux.chown("postgres");
        // PostgreSQL insists its data directory itself is 0700/0750.
        if let Some(parent) = data_dir.parent() {
            allow_traverse(parent);
        }
        let _ = fs::remove_file(data_dir.join("postmaster.pid"));
        let mut pg = Postgres {
            data_dir: data_dir.to_path_buf(),
            port: 0,
            socket_dir: aux.join("sock"),
            password_file: pwfile,
            password: password.into(),
            log: aux.join("pg.log"),
            archive_dir: None,
            pid: 0,
            stopped: true,
            aux,
        };
        pg.pg_ctl_start(settings)?;
        Ok(pg)
    }

    fn pg_ctl_start(&mut self, settings: &[String]) -> Result<(), String> {
        self.port = free_port();
        let mut o = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on", self.port, self.socket_dir.display());
        for s in settings {
            o.push_str(&format!(" -c {s}"));
        }
        let status = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-o")
            .arg(&o)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "120", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run pg_ctl");
        let pidfile = fs::read_to_string(self.data_dir.join("postmaster.pid")).unwrap_or_default();
        if let Some(pid) = pidfile.lines().next().and_then(|l| l.trim().parse().ok()) {
            // Also after a failed (timed-out) start: Drop must stop what runs.
            self.pid = pid;
            self.stopped = !crate::alive(pid);
        }
        if !status.success() {
            return Err(format!("pg_ctl start failed ({status}); log:\n{}", tail(&self.log)));
        }
        if self.pid == 0 {
            return Err("no pid in postmaster.pid".into());
        }
        self.stopped = false;
        Ok(())
    }

    pub fn aux_dir(&self) -> &Path {
        &self.aux.path
    }

    pub fn config(&self) -> pgwire::Config {
        pgwire::Config::new("postgres").password(&self.password).application_name("quiesce-tests")
    }

    /// SCRAM over TCP as `postgres`.
    pub fn connect(&self) -> pgwire::Client<TcpStream> {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to postgres");
        let _ = s.set_nodelay(true);
        pgwire::Client::connect(s, &self.config()).unwrap_or_else(|e| panic!("postgres login: {e}"))
    }

    /// SCRAM over the Unix socket as `postgres`.
    pub fn connect_unix(&self) -> pgwire::Client<UnixStream> {
        let s = UnixStream::connect(self.socket_dir.join(format!(".s.PGSQL.{}", self.port))).expect("connect to postgres socket");
        pgwire::Client::connect(s, &self.config()).unwrap_or_else(|e| panic!("postgres login: {e}"))
    }

    /// Empties `t`, for a new writer (it numbers from 1).
    pub fn clear_rows(&self) {
        self.connect().simple_query("TRUNCATE t").expect("truncate t");
    }

    /// `SELECT n FROM t ORDER BY n`.
    pub fn rows(&self) -> Vec<u64> {
        let r = self.connect().query("SELECT n FROM t ORDER BY n").expect("select rows");
        r.rows.iter().map(|row| row[0].as_deref().unwrap_or("0").parse().unwrap()).collect()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `pg_ctl stop -m immediate`, waiting for the postmaster to exit.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // pg_ctl needs the data directory; the pid does not.
        use nix::sys::signal::{kill, Signal};
        let pid = nix::unistd::Pid::from_raw(self.pid);
        for (sig, secs) in [(Signal::SIGQUIT, 20), (Signal::SIGKILL, 10)] {
            if !crate::alive(self.pid) {
                return;
            }
            let _ = kill(pid, sig);
            let t = Instant::now();
            while crate::alive(self.pid) && t.elapsed() < Duration::from_secs(secs) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if crate::alive(self.pid) {
            eprintln!("postmaster {} did not exit", self.pid);
        }
    }

    pub fn psql_env(&self) -> String {
        format!("PGPASSWORD='{}' {PG_BIN}/psql -X -h {} -p {} -U postgres -d postgres", self.password, self.socket_dir.display(), self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

// ------------------------------------------------------------------- MariaDB

/// A MariaDB server run as root (so `unix_socket` authenticates root), its
/// binlog on (`binlog.*`, relative, so a restored copy uses its own), plus a
/// password user `app` for TCP clients.
pub struct MariaDb {
    pub data_dir: PathBuf,
    pub port: u16,
    pub socket: PathBuf,
    pub app_user: String,
    pub app_password: String,
    /// `app`'s password, one line.
    pub password_file: PathBuf,
    pub error_log: PathBuf,
    child: Option<Child>,
    aux: Aux,
}

impl MariaDb {
    /// `mariadb-install-db` in `<data_dir_parent>/my`, start, create `q.t` and `app`.
    pub fn start(data_dir_parent: &Path) -> MariaDb {
        Self::start_with_args(data_dir_parent, &[])
    }

    /// [`MariaDb::start`] with more `mariadbd` options (after the fixture's
    /// own, so they win: e.g. `--skip-log-bin`).
    pub fn start_with_args(data_dir_parent: &Path, extra: &[&str]) -> MariaDb {
        let data_dir = data_dir_parent.join("my");
        let aux = Aux::new("my");
        // A private tmpdir: concurrent bootstraps in the shared /tmp were seen
        // to fail on each other's temporary tables.
        let tmp = aux.join("tmp");
        fs::create_dir_all(&tmp).unwrap();
        sh(&format!(
            "mariadb-install-db --no-defaults --datadir={} --tmpdir={} --user=root --auth-root-authentication-method=socket --skip-test-db > {log} 2>&1 \
             || {{ grep -iE \"error|warn|fail\" {log} | head -n 20 >&2; exit 1; }}",
            data_dir.display(),
            tmp.display(),
            log = aux.join("install.log").display()
        ));
        let mut my = Self::spawn(&data_dir, aux, extra);
        let app_password = format!("app-{}", now_ns() % 1_000_000_007);
        let mut c = my.connect_root();
        for sql in [
            "CREATE DATABASE q".to_string(),
            "CREATE TABLE q.t (n BIGINT PRIMARY KEY) ENGINE=InnoDB".into(),
            format!("CREATE USER app@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('{app_password}')"),
            "GRANT INSERT, SELECT ON q.* TO app@'127.0.0.1'".into(),
        ] {
            c.query(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        fs::write(&my.password_file, format!("{app_password}\n")).unwrap();
        my.app_password = app_password;
        settle(&my.data_dir);
        my
    }

    /// Starts a server on an existing (restored) data directory, new port and socket.
    pub fn start_existing(data_dir: &Path, app_password: &str) -> MariaDb {
        let mut my = Self::spawn(data_dir, Aux::new("myr"), &[]);
        my.app_password = app_password.into();
        fs::write(&my.password_file, format!("{app_password}\n")).unwrap();
        my
    }

    fn spawn(data_dir: &Path, aux: Aux, extra: &[&str]) -> MariaDb {
        let port = free_port();
        let socket = aux.join("my.sock");
        let error_log = aux.join("error.log");
        let tmp = aux.join("tmp");
        let _ = fs::create_dir_all(&tmp);
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!("--datadir={}", data_dir.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--user=root")
            .arg("--log-bin=binlog")
            // Durable commits with the binlog on: crash recovery rolls back a
            // prepared transaction whose binlog event is not on disk, and the
            // default (0) leaves it in the page cache after the acknowledgement.
            .arg("--sync-binlog=1")
            .arg("--server-id=1")
            .arg(format!("--pid-file={}", aux.join("my.pid").display()))
            .arg(format!("--log-error={}", error_log.display()))
            .arg("--innodb-buffer-pool-size=64M")
            .arg("--skip-name-resolve")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn mariadbd");
        let mut my = MariaDb {
            data_dir: data_dir.to_path_buf(),
            port,
            socket,
            app_user: "app".into(),
            app_password: String::new(),
            password_file: aux.join("password"),
            error_log,
            child: Some(child),
            aux,
        };
        let t = Instant::now();
        loop {
            if let Ok(s) = UnixStream::connect(&my.socket) {
                if mywire::Client::connect(s, &mywire::Config::new("root")).is_ok() {
                    break;
                }
            }
            if let Some(Ok(Some(st))) = my.child.as_mut().map(Child::try_wait) {
                my.child = None;
                panic!("mariadbd exited ({st}) while starting; log:\n{}", tail(&my.error_log));
            }
            assert!(t.elapsed() < Duration::from_secs(120), "mariadbd not ready; log:\n{}", tail(&my.error_log));
            std::thread::sleep(Duration::from_millis(50));
        }
        my
    }

    pub fn aux_dir(&self) -> &Path {
        &self.aux.path
    }

    /// root over the Unix socket, authenticated by `unix_socket` (our uid).
    pub fn connect_root(&self) -> mywire::Client<UnixStream> {
        let s = UnixStream::connect(&self.socket).expect("connect to mariadb socket");
        mywire::Client::connect(s, &mywire::Config::new("root")).unwrap_or_else(|e| panic!("mariadb root login: {e}"))
    }

    /// `app` over TCP with `mysql_native_password`.
    pub fn connect_app(&self) -> mywire::Client<TcpStream> {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to mariadb");
        let _ = s.set_nodelay(true);
        mywire::Client::connect(s, &mywire::Config::new(&self.app_user).password(&self.app_password).database("q"))
            .unwrap_or_else(|e| panic!("mariadb app login: {e}"))
    }

    /// Empties `q.t`, for a new writer (it numbers from 1).
    pub fn clear_rows(&self) {
        self.connect_root().query("DELETE FROM q.t").expect("delete from q.t");
    }

    pub fn rows(&self) -> Vec<u64> {
        let r = self.connect_root().query("SELECT n FROM q.t ORDER BY n").expect("select rows");
        r.rows.iter().map(|row| row[0].as_deref().unwrap_or("0").parse().unwrap()).collect()
    }

    /// `mariadb` command line as root over the socket.
    pub fn cli(&self) -> String {
        format!("mariadb --no-defaults --socket={} -uroot", self.socket.display())
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGKILL);
            reap(&mut c, Duration::from_secs(20));
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.stop();
    }
}

// --------------------------------------------------------------------- Redis

/// A Redis server with `requirepass`, data in `<data_dir_parent>/redis`.
pub struct Redis {
    pub data_dir: PathBuf,
    pub port: u16,
    pub socket: PathBuf,
    pub password: String,
    pub password_file: PathBuf,
    pub appendonly: bool,
    pub log: PathBuf,
    child: Option<Child>,
    aux: Aux,
}

impl Redis {
    /// `appendonly`: AOF with `appendfsync everysec`; otherwise RDB only
    /// (automatic saves off: only explicit `BGSAVE`s write the RDB).
    pub fn start(data_dir_parent: &Path, appendonly: bool) -> Redis {
        let data_dir = data_dir_parent.join("redis");
        fs::create_dir_all(&data_dir).unwrap();
        Self::spawn(&data_dir, appendonly, &format!("rp-{}", now_ns() % 1_000_000_007))
    }

    pub fn start_existing(data_dir: &Path, appendonly: bool, password: &str) -> Redis {
        Self::spawn(data_dir, appendonly, password)
    }

    fn spawn(data_dir: &Path, appendonly: bool, password: &str) -> Redis {
        let r = Self::spawn_unsettled(data_dir, appendonly, password);
        settle(data_dir);
        r
    }

    fn spawn_unsettled(data_dir: &Path, appendonly: bool, password: &str) -> Redis {
        let aux = Aux::new("rd");
        let port = free_port();
        let socket = aux.join("redis.sock");
        let log = aux.join("redis.log");
        let password_file = aux.join("password");
        fs::write(&password_file, format!("{password}\n")).unwrap();
        let conf = aux.join("redis.conf");
        fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nunixsocket {}\nunixsocketperm 700\ndir {}\nrequirepass {password}\n\
                 appendonly {}\nappendfsync everysec\nsave \"\"\ndaemonize no\nlogfile {}\nprotected-mode yes\n",
                socket.display(),
                data_dir.display(),
                if appendonly { "yes" } else { "no" },
                log.display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn redis-server");
        let mut r = Redis {
            data_dir: data_dir.to_path_buf(),
            port,
            socket,
            password: password.into(),
            password_file,
            appendonly,
            log,
            child: Some(child),
            aux,
        };
        let t = Instant::now();
        loop {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
                let mut c = resp::Client::new(s);
                if c.auth(password).is_ok() && c.ping().is_ok() && !c.persistence().map(|p| p.loading).unwrap_or(true) {
                    break;
                }
            }
            if let Some(Ok(Some(st))) = r.child.as_mut().map(Child::try_wait) {
                r.child = None;
                panic!("redis-server exited ({st}) while starting; log:\n{}", tail(&r.log));
            }
            assert!(t.elapsed() < Duration::from_secs(60), "redis not ready; log:\n{}", tail(&r.log));
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    pub fn aux_dir(&self) -> &Path {
        &self.aux.path
    }

    pub fn connect(&self) -> resp::Client<TcpStream> {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        let _ = s.set_nodelay(true);
        let mut c = resp::Client::new(s);
        c.auth(&self.password).unwrap_or_else(|e| panic!("redis AUTH: {e}"));
        c
    }

    /// Deletes the writer's list, for a new writer (it numbers from 1).
    pub fn clear_rows(&self) {
        self.connect().cmd(&["DEL", "l"]).expect("DEL l");
    }

    /// The writer's list, `LRANGE l 0 -1`.
    pub fn rows(&self) -> Vec<u64> {
        match self.connect().cmd(&["LRANGE", "l", "0", "-1"]).expect("LRANGE") {
            resp::Value::Array(v) => v.iter().map(|x| x.as_text().unwrap_or_default().parse().unwrap()).collect(),
            other => panic!("LRANGE returned {other:?}"),
        }
    }

    pub fn cli(&self) -> String {
        format!("REDISCLI_AUTH='{}' redis-cli -s {}", self.password, self.socket.display())
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGKILL);
            reap(&mut c, Duration::from_secs(20));
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

// -------------------------------------------------------------------- Writer

/// One acknowledged write.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub n: u64,
    /// When the acknowledgement arrived, ns since the epoch (see [`now_ns`]).
    pub at_ns: u64,
    /// From sending the write to its acknowledgement.
    pub latency: Duration,
}

/// What a stopped writer saw.
#[derive(Clone, Debug, Default)]
pub struct WriterLog {
    pub acks: Vec<Ack>,
    /// Why it stopped early (a failed write), if it did.
    pub error: Option<String>,
    pub started_ns: u64,
}

impl WriterLog {
    /// The longest time between consecutive acks (or start and first ack).
    pub fn max_gap(&self) -> Duration {
        self.max_gap_between(0, u64::MAX)
    }

    /// The longest interval without an ack that overlaps `[from_ns, to_ns]`.
    pub fn max_gap_between(&self, from_ns: u64, to_ns: u64) -> Duration {
        let (a, b) = self.max_gap_span_between(from_ns, to_ns);
        Duration::from_nanos(b - a)
    }

    /// Where that interval is: the acks (or the start) before and after it, ns.
    pub fn max_gap_span_between(&self, from_ns: u64, to_ns: u64) -> (u64, u64) {
        let mut prev = self.started_ns;
        let mut best = (0u64, 0u64);
        for a in &self.acks {
            if a.at_ns >= from_ns && prev <= to_ns && a.at_ns.saturating_sub(prev) > best.1 - best.0 {
                best = (prev, a.at_ns.max(prev));
            }
            prev = a.at_ns;
        }
        best
    }

    pub fn max_latency(&self) -> Duration {
        self.acks.iter().map(|a| a.latency).max().unwrap_or_default()
    }

    /// The highest number acknowledged before `t_ns` (0 if none).
    pub fn last_acked_before(&self, t_ns: u64) -> u64 {
        self.acks.iter().filter(|a| a.at_ns < t_ns).map(|a| a.n).max().unwrap_or(0)
    }

    /// The first number acknowledged after `t_ns`.
    pub fn first_acked_after(&self, t_ns: u64) -> Option<u64> {
        self.acks.iter().find(|a| a.at_ns > t_ns).map(|a| a.n)
    }

    /// Acks that arrived in `(from_ns, to_ns)`.
    pub fn acked_between(&self, from_ns: u64, to_ns: u64) -> Vec<Ack> {
        self.acks.iter().filter(|a| a.at_ns > from_ns && a.at_ns < to_ns).copied().collect()
    }

    pub fn last(&self) -> u64 {
        self.acks.last().map(|a| a.n).unwrap_or(0)
    }
}

/// A thread committing 1, 2, 3, … one at a time, as fast as the server acknowledges.
pub struct Writer {
    stop: Arc<AtomicBool>,
    /// Set when the thread has ended (stopped, or a write failed).
    ended: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    handle: Option<JoinHandle<WriterLog>>,
}

impl Writer {
    /// `connect` runs on the writer thread and returns the write function.
    pub fn spawn<C, W>(connect: C) -> Writer
    where
        C: FnOnce() -> W + Send + 'static,
        W: FnMut(u64) -> Result<(), String>,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let ended = Arc::new(AtomicBool::new(false));
        let (s, a, e) = (stop.clone(), acked.clone(), ended.clone());
        let handle = std::thread::spawn(move || {
            let mut write = connect();
            let mut log = WriterLog { started_ns: now_ns(), ..Default::default() };
            let mut n = 1;
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                match write(n) {
                    Ok(()) => {
                        log.acks.push(Ack { n, at_ns: now_ns(), latency: t.elapsed() });
                        a.store(n, Ordering::Relaxed);
                        n += 1;
                    }
                    Err(err) => {
                        log.error = Some(format!("write {n}: {err}"));
                        break;
                    }
                }
            }
            e.store(true, Ordering::Relaxed);
            log
        });
        Writer { stop, ended, acked, handle: Some(handle) }
    }

    /// `INSERT INTO t VALUES (n)`, autocommit, over TCP with SCRAM.
    pub fn postgres(pg: &Postgres) -> Writer {
        let (port, cfg) = (pg.port, pg.config());
        Self::spawn(move || {
            let s = TcpStream::connect(("127.0.0.1", port)).expect("writer connect");
            let _ = s.set_nodelay(true);
            let mut c = pgwire::Client::connect(s, &cfg).expect("writer login");
            move |n| c.simple_query(&format!("INSERT INTO t VALUES ({n})")).map(|_| ()).map_err(|e| e.to_string())
        })
    }

    /// `INSERT INTO q.t VALUES (n)`, autocommit, as `app` over TCP.
    pub fn mariadb(my: &MariaDb) -> Writer {
        let port = my.port;
        let cfg = mywire::Config::new(&my.app_user).password(&my.app_password).database("q");
        Self::spawn(move || {
            let s = TcpStream::connect(("127.0.0.1", port)).expect("writer connect");
            let _ = s.set_nodelay(true);
            let mut c = mywire::Client::connect(s, &cfg).expect("writer login");
            move |n| c.query(&format!("INSERT INTO t VALUES ({n})")).map(|_| ()).map_err(|e| e.to_string())
        })
    }

    /// `RPUSH l n` over TCP.
    pub fn redis(r: &Redis) -> Writer {
        let (port, pw) = (r.port, r.password.clone());
        Self::spawn(move || {
            let s = TcpStream::connect(("127.0.0.1", port)).expect("writer connect");
            let _ = s.set_nodelay(true);
            let mut c = resp::Client::new(s);
            c.auth(&pw).expect("writer AUTH");
            move |n| c.cmd(&["RPUSH", "l", &n.to_string()]).map(|_| ()).map_err(|e| e.to_string())
        })
    }

    /// The highest number acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` writes were acknowledged.
    /// Waits until at least `n` writes were acknowledged (the writer numbers from 1:
    /// start it on an empty table/list).
    pub fn wait_for(&mut self, n: u64, limit: Duration) {
        wait_until(limit, "writer progress", || {
            if self.ended.load(Ordering::Relaxed) && self.acked() < n {
                let log = self.handle.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
                panic!("the writer ended after {} acks: {:?}", log.acks.len(), log.error);
            }
            (self.acked() >= n).then_some(())
        });
    }

    /// Stops after the write in flight and returns the log.
    pub fn stop(mut self) -> WriterLog {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().map(|h| h.join().expect("writer thread panicked")).unwrap_or_default()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Not joined here: a writer blocked on a frozen server would hang the
        // drop; the server's own Drop ends the connection.
    }
}
