//! Grants: the capabilities an administrator gives one plugin, and the
//! checks every capability call goes through.
//!
//! | grant | allows |
//! |---|---|
//! | `tcp:HOST:PORT` | `connect("tcp:HOST:PORT")`, written exactly so (no wildcards) |
//! | `unix:/path` | `connect("unix:/path")` |
//! | `file:/path` | `read-file` of that file |
//! | `dir:/path` | `read-file` of any file below that directory |
//! | `exec:/path` | `run` of that executable |
//!
//! File grants are checked twice: lexically before anything is opened (so a
//! plugin cannot make root open `/dev/watchdog` by asking), and on the real
//! path of the opened file (so a symlink cannot lead outside the grant).

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
#[error("grant {grant:?}: {reason}")]
pub struct GrantError {
    pub grant: String,
    pub reason: String,
}

/// One capability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
    File(PathBuf),
    Dir(PathBuf),
    Exec(PathBuf),
}

/// Where a connection goes; the same syntax as the `tcp:`/`unix:` grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::Tcp { host, port } => write!(f, "tcp:{}:{port}", bracket(host)),
            Grant::Unix(p) => write!(f, "unix:{}", p.display()),
            Grant::File(p) => write!(f, "file:{}", p.display()),
            Grant::Dir(p) => write!(f, "dir:{}", p.display()),
            Grant::Exec(p) => write!(f, "exec:{}", p.display()),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp { host, port } => write!(f, "tcp:{}:{port}", bracket(host)),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

fn err(grant: &str, reason: impl Into<String>) -> GrantError {
    GrantError { grant: grant.to_owned(), reason: reason.into() }
}

/// `HOST:PORT`, `[v6]:PORT`; host lower-cased for comparison.
fn parse_host_port(s: &str, whole: &str) -> Result<(String, u16), GrantError> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(|| err(whole, "expected [IPv6]:PORT"))?;
        (h, p)
    } else {
        s.rsplit_once(':').ok_or_else(|| err(whole, "expected tcp:HOST:PORT"))?
    };
    if host.is_empty() || host.contains(['/', ' ']) || (!s.starts_with('[') && host.contains(':')) {
        return Err(err(whole, "bad host (IPv6 addresses go in brackets: tcp:[::1]:5432)"));
    }
    let port: u16 = port.parse().map_err(|_| err(whole, format!("bad port {port:?}")))?;
    if port == 0 {
        return Err(err(whole, "port 0"));
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// An absolute path without `.`/`..` components and without a trailing slash.
fn parse_path(s: &str, whole: &str) -> Result<PathBuf, GrantError> {
    normal_path(Path::new(s)).ok_or_else(|| err(whole, "the path must be absolute, without `.` or `..`"))
}

/// `Some(path)` if `p` is absolute and free of `..` (`.` and `//` are
/// dropped); a plugin's request and an admin's grant both pass through it.
pub(crate) fn normal_path(p: &Path) -> Option<PathBuf> {
    if !p.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

impl FromStr for Grant {
    type Err = GrantError;
    fn from_str(s: &str) -> Result<Grant, GrantError> {
        let (kind, rest) = s.split_once(':').ok_or_else(|| err(s, "expected KIND:VALUE (tcp:, unix:, file:, dir:, exec:)"))?;
        Ok(match kind {
            "tcp" => {
                let (host, port) = parse_host_port(rest, s)?;
                Grant::Tcp { host, port }
            }
            "unix" => Grant::Unix(parse_path(rest, s)?),
            "file" => Grant::File(parse_path(rest, s)?),
            "dir" => Grant::Dir(parse_path(rest, s)?),
            "exec" => Grant::Exec(parse_path(rest, s)?),
            other => return Err(err(s, format!("unknown kind {other:?} (tcp, unix, file, dir, exec)"))),
        })
    }
}

impl FromStr for Target {
    type Err = GrantError;
    fn from_str(s: &str) -> Result<Target, GrantError> {
        match s.parse::<Grant>()? {
            Grant::Tcp { host, port } => Ok(Target::Tcp { host, port }),
            Grant::Unix(p) => Ok(Target::Unix(p)),
            _ => Err(err(s, "a connection target is tcp:HOST:PORT or unix:/path")),
        }
    }
}

/// The grants of one plugin instance. Empty = nothing allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants(Vec<Grant>);

impl Grants {
    pub fn none() -> Grants {
        Grants(Vec::new())
    }

    /// Parses every grant; the first malformed one is the error.
    pub fn parse<I, S>(grants: I) -> Result<Grants, GrantError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        grants.into_iter().map(|g| g.as_ref().parse()).collect::<Result<Vec<_>, _>>().map(Grants)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Grant> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn allows_connect(&self, t: &Target) -> bool {
        self.0.iter().any(|g| match (g, t) {
            (Grant::Tcp { host, port }, Target::Tcp { host: h, port: p }) => host == h && port == p,
            (Grant::Unix(a), Target::Unix(b)) => a == b,
            _ => false,
        })
    }

    /// Lexical check of a normalized path: an exact `file:` grant or below a `dir:` grant.
    pub fn allows_file(&self, p: &Path) -> bool {
        self.0.iter().any(|g| match g {
            Grant::File(f) => f == p,
            Grant::Dir(d) => p.starts_with(d) && p != d,
            _ => false,
        })
    }

    /// The same check against the grants' real paths (symlinks resolved),
    /// for the real path of a file that was opened.
    pub fn allows_real_file(&self, real: &Path) -> bool {
        let canon = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        self.0.iter().any(|g| match g {
            Grant::File(f) => canon(f) == real || f == real,
            Grant::Dir(d) => {
                let d2 = canon(d);
                (real.starts_with(&d2) && real != d2) || (real.starts_with(d) && real != d)
            }
            _ => false,
        })
    }

    /// Of the grants a plugin asks for (its `describe`), those these grants
    /// do not give, as written — for `quiesce check` to show the admin.
    /// Malformed requests are listed too (they can never be granted).
    pub fn missing<'a>(&self, requested: &'a [String]) -> Vec<&'a str> {
        requested
            .iter()
            .filter(|r| match r.parse::<Grant>() {
                Ok(g) => !self.0.contains(&g),
                Err(_) => true,
            })
            .map(String::as_str)
            .collect()
    }

    pub fn allows_exec(&self, p: &Path) -> bool {
        self.0.iter().any(|g| matches!(g, Grant::Exec(e) if e == p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_and_print_back() {
        for s in [
            "tcp:127.0.0.1:5432",
            "tcp:[::1]:5432",
            "tcp:db.example:3306",
            "unix:/run/pg/.s.PGSQL.5432",
            "file:/etc/x.cnf",
            "dir:/etc/x",
            "exec:/usr/bin/pg_ctl",
        ] {
            let g: Grant = s.parse().unwrap();
            assert_eq!(g.to_string(), s);
        }
    }

    #[test]
    fn malformed_grants_are_refused_with_the_reason() {
        for (s, why) in [
            ("tcp:127.0.0.1", "HOST:PORT"),
            ("tcp:127.0.0.1:0", "port 0"),
            ("tcp:127.0.0.1:99999", "bad port"),
            ("tcp:::1:5432", "brackets"),
            ("file:etc/x", "absolute"),
            ("dir:/etc/../root", "absolute"),
            ("net:anything", "unknown kind"),
            ("nothing", "KIND:VALUE"),
        ] {
            let e = s.parse::<Grant>().unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn connect_needs_the_exact_target() {
        let g = Grants::parse(["tcp:127.0.0.1:5432", "unix:/run/a.sock"]).unwrap();
        assert!(g.allows_connect(&"tcp:127.0.0.1:5432".parse().unwrap()));
        assert!(!g.allows_connect(&"tcp:127.0.0.1:5433".parse().unwrap()));
        assert!(!g.allows_connect(&"tcp:localhost:5432".parse().unwrap()));
        assert!(g.allows_connect(&"unix:/run/a.sock".parse().unwrap()));
        assert!(!g.allows_connect(&"unix:/run/b.sock".parse().unwrap()));
        assert!(Grants::none().iter().next().is_none());
    }

    #[test]
    fn missing_lists_requested_grants_not_given() {
        let g = Grants::parse(["tcp:127.0.0.1:5432", "file:/etc/a.cnf"]).unwrap();
        let asked: Vec<String> = ["tcp:127.0.0.1:5432", "unix:/run/pg.sock", "file:/etc/a.cnf", "bogus"].map(String::from).to_vec();
        assert_eq!(g.missing(&asked), ["unix:/run/pg.sock", "bogus"]);
    }

    #[test]
    fn file_grants_cover_exact_files_and_directory_contents() {
        let g = Grants::parse(["file:/etc/a.cnf", "dir:/etc/app"]).unwrap();
        assert!(g.allows_file(Path::new("/etc/a.cnf")));
        assert!(!g.allows_file(Path::new("/etc/b.cnf")));
        assert!(g.allows_file(Path::new("/etc/app/x/y")));
        assert!(!g.allows_file(Path::new("/etc/app")));
        assert!(!g.allows_file(Path::new("/etc/application")));
        assert_eq!(normal_path(Path::new("/etc/app/../shadow")), None);
        assert_eq!(normal_path(Path::new("/etc//app/./x")), Some(PathBuf::from("/etc/app/x")));
        assert_eq!(normal_path(Path::new("etc")), None);
    }
}
