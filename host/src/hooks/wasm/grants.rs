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
//! Path grants (`file:`, `dir:`, `unix:`) are matched here lexically, then
//! used only through their directories as pinned when the instance is set
//! up ([`super::pinned`]): no symlink in a granted path or below it is
//! followed. `quiesce check` warns about a granted path whose directories
//! someone other than root can write ([`Grants::untrusted_ancestors`]).

use std::fmt;
use std::os::unix::fs::MetadataExt;
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
    // A bracketed host is an IPv6 address (it has a `:`); no host holds
    // brackets, spaces, slashes or control characters — so that every grant
    // prints back as the grant it is (found by the `grants` fuzz target).
    let bracketed = s.starts_with('[');
    if host.is_empty() || host.contains(['/', ' ', '[', ']']) || host.chars().any(char::is_control) || bracketed != host.contains(':') {
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

impl Grant {
    /// The directory a path grant is used through: a `dir:` grant's own,
    /// the parent of a `file:` or `unix:` grant. `None` for `tcp:`, and for
    /// `exec:` (which passes the script trust walk instead).
    pub(crate) fn pinned_dir(&self) -> Option<&Path> {
        match self {
            Grant::Dir(d) => Some(d),
            Grant::File(p) | Grant::Unix(p) => Some(p.parent().unwrap_or(Path::new("/"))),
            Grant::Tcp { .. } | Grant::Exec(_) => None,
        }
    }

    /// Whether this grant lets `read-file` reach the normalized path `p`:
    /// `(rank, p beneath the grant's pinned directory)`. The lowest rank
    /// wins: an exact `file:` grant, then the longest covering `dir:`.
    pub(crate) fn covers_file(&self, p: &Path) -> Option<(usize, PathBuf)> {
        match self {
            Grant::File(f) if f == p => f.file_name().map(|n| (0, PathBuf::from(n))),
            Grant::Dir(d) => {
                p.strip_prefix(d).ok().filter(|r| !r.as_os_str().is_empty()).map(|r| (usize::MAX - d.as_os_str().len(), r.to_path_buf()))
            }
            _ => None,
        }
    }

    /// The same for `connect("unix:…")`: only the exact `unix:` grant.
    pub(crate) fn covers_socket(&self, p: &Path) -> Option<(usize, PathBuf)> {
        match self {
            Grant::Unix(u) if u == p => u.file_name().map(|n| (0, PathBuf::from(n))),
            _ => None,
        }
    }
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

    /// For each `file:`, `dir:` and `unix:` grant, the directories from `/`
    /// down to the granted directory (a `dir:` grant's own, the parent of
    /// the others) that are not root's alone or are symlinks, as warnings
    /// for `quiesce check`. Whoever can write such a directory decides what
    /// the plugin finds there (never where a read leads: see `pinned`).
    pub fn untrusted_ancestors(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for g in &self.0 {
            let Some(dir) = g.pinned_dir() else { continue };
            let mut at = PathBuf::from("/");
            for c in std::iter::once(Component::RootDir).chain(dir.components().skip(1)) {
                if let Component::Normal(n) = c {
                    at.push(n);
                }
                let why = match std::fs::symlink_metadata(&at) {
                    Err(e) => Some(format!("{}: {e}", at.display())),
                    Ok(m) if m.file_type().is_symlink() => {
                        Some(format!("{} is a symbolic link; grants must name real paths and this one will be refused", at.display()))
                    }
                    Ok(m) if m.uid() != 0 => Some(format!("directory {} is owned by uid {}", at.display(), m.uid())),
                    Ok(m) if m.mode() & 0o022 != 0 => {
                        Some(format!("directory {} is writable by group or others (mode {:04o})", at.display(), m.mode() & 0o7777))
                    }
                    Ok(_) => None,
                };
                if let Some(why) = why {
                    warnings.push(format!(
                        "grant {g}: {why}: whoever can write it decides which files the plugin finds there \
                         (make it root's alone: chown root; chmod go-w — or accept that)"
                    ));
                    break;
                }
            }
        }
        warnings
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
            ("tcp:[[a\u{1}mple1]:5432", "bad host"),
            ("tcp:[x]:80", "bad host"),
            ("tcp:a]b:80", "bad host"),
            ("tcp:a\tb:80", "bad host"),
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
        let covers = |g: &str, p: &str| g.parse::<Grant>().unwrap().covers_file(Path::new(p)).map(|(_, rel)| rel);
        assert_eq!(covers("file:/etc/a.cnf", "/etc/a.cnf"), Some(PathBuf::from("a.cnf")));
        assert_eq!(covers("file:/etc/a.cnf", "/etc/b.cnf"), None);
        assert_eq!(covers("dir:/etc/app", "/etc/app/x/y"), Some(PathBuf::from("x/y")));
        assert_eq!(covers("dir:/etc/app", "/etc/app"), None);
        assert_eq!(covers("dir:/etc/app", "/etc/application"), None);
        assert_eq!(covers("unix:/run/a.sock", "/run/a.sock"), None);
        let rank = |g: &str| g.parse::<Grant>().unwrap().covers_file(Path::new("/etc/app/x/y")).map(|(r, _)| r).unwrap();
        assert!(rank("dir:/etc/app/x") < rank("dir:/etc/app"), "the longest directory wins");
        assert_eq!(normal_path(Path::new("/etc/app/../shadow")), None);
        assert_eq!(normal_path(Path::new("/etc//app/./x")), Some(PathBuf::from("/etc/app/x")));
        assert_eq!(normal_path(Path::new("etc")), None);
    }
}
