//! Decide whether a configured file may be trusted, and hand back the open
//! file that was checked.
//!
//! A hook script runs as root, so anyone who can change the script — or any
//! directory on its path — owns the machine. The legacy contract ("owned by
//! root, mode 700/600") is enforced here the way sshd's `StrictModes` does
//! it: every directory from `/` down must be root-owned and writable only by
//! root, and the file itself must be root-owned with the right mode.
//!
//! Checking a *name* and later using the *name* again is a race (the name can
//! be swapped in between), so the walk holds directory fds (`openat` with
//! `O_NOFOLLOW`), every check is an `fstat` on an fd, and the caller gets the
//! [`TrustedFile`] whose fd is the very file that passed. The script runner
//! executes that fd, never the path.
//!
//! Symlinks to directories are followed only where they live in an already
//! verified directory, because then only root could have placed them
//! (Debian's `/bin -> usr/bin` must work). A symlink as the final component
//! is refused: the configuration should name the real file.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{self, AtFlags, FcntlArg, OFlag};
use nix::sys::stat::{self, FileStat, Mode, SFlag};

/// Which permission rule a file must meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// A configuration file: root-owned, no access for group or others
    /// (the legacy contract's mode 600; 400 is fine too).
    Config,
    /// A hook script named by quiesce's native config: root-owned,
    /// executable by its owner, writable only by its owner (700; 755 passes,
    /// with a warning: [`TrustedFile::group_or_other_access`]).
    Script,
    /// A script named by the legacy JSON: the Azure framework's rule, mode
    /// 700 — no access at all for group or others, because such scripts
    /// routinely hold database passwords.
    LegacyScript,
    /// A WebAssembly plugin: root-owned, writable only by its owner; no exec
    /// bit needed (the host compiles it, the kernel never executes it).
    Plugin,
}

impl Rule {
    /// The `chmod` that makes a file meet this rule, for error messages.
    fn chmod(self) -> &'static str {
        match self {
            Rule::Config => "chmod 600",
            Rule::Script | Rule::LegacyScript => "chmod 700",
            Rule::Plugin => "chmod 644",
        }
    }
}

/// Linux's own limit on symlinks followed in one lookup (`MAXSYMLINKS`).
const MAX_SYMLINK_HOPS: u32 = 40;

/// Why a file is not trusted. Every message names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{}: no such file (check the configured location)", .path.display())]
    NotFound { path: PathBuf },
    #[error("{}: the location must be an absolute path", .path.display())]
    NotAbsolute { path: PathBuf },
    #[error(
        "{}: is a symbolic link; configure the path of the real file \
         (a final symlink is refused so that the file checked is the file used)",
        .path.display()
    )]
    SymlinkFinal { path: PathBuf },
    #[error("{}: too many levels of symbolic links (more than {MAX_SYMLINK_HOPS})", .path.display())]
    SymlinkLoop { path: PathBuf },
    #[error("{}: not a regular file", .path.display())]
    NotRegular { path: PathBuf },
    #[error("{}: owned by uid {uid}, must be owned by root: chown root:root {}", .path.display(), .path.display())]
    BadOwner { path: PathBuf, uid: u32 },
    #[error(
        "{}: writable by group or others (mode {mode:04o}): {} {}",
        .path.display(), .rule.chmod(), .path.display()
    )]
    GroupOrOtherWritable { path: PathBuf, mode: u32, rule: Rule },
    #[error(
        "{}: readable by group or others (mode {mode:04o}); configs may hold secrets: chmod 600 {}",
        .path.display(), .path.display()
    )]
    GroupOrOtherReadable { path: PathBuf, mode: u32 },
    #[error("{}: not executable by its owner (mode {mode:04o}): chmod 700 {}", .path.display(), .path.display())]
    NotExecutable { path: PathBuf, mode: u32 },
    #[error(
        "{}: group or others may read or execute it (mode {mode:04o}); a script named by the legacy JSON config must be \
         mode 700, as the Azure framework requires (such scripts often hold passwords): chmod 700 {}",
        .path.display(), .path.display()
    )]
    GroupOrOtherAccess { path: PathBuf, mode: u32 },
    #[error("{}: not a directory", .path.display())]
    NotDirectory { path: PathBuf },
    #[error(
        "{}: directory {} {reason}; every directory on the path must be owned by root \
         and writable only by root (chown root {}; chmod go-w {})",
        .path.display(), .dir.display(), .dir.display(), .dir.display()
    )]
    UntrustedDirectory { path: PathBuf, dir: PathBuf, reason: String },
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

impl TrustError {
    /// True when there is simply no file at the configured location (the
    /// session reports `Pre-ScriptNotFound`; anything else is a permission
    /// problem: `InsufficientPermissionforPre-Script`).
    pub fn is_not_found(&self) -> bool {
        matches!(self, TrustError::NotFound { .. })
    }

    /// The command that fixes it, where one command does (the same one the
    /// message ends with), for `quiesce doctor`'s fix column.
    pub fn fix(&self) -> Option<String> {
        match self {
            TrustError::BadOwner { path, .. } => Some(format!("chown root:root {}", path.display())),
            TrustError::GroupOrOtherWritable { path, rule, .. } => Some(format!("{} {}", rule.chmod(), path.display())),
            TrustError::GroupOrOtherReadable { path, .. } => Some(format!("chmod 600 {}", path.display())),
            TrustError::NotExecutable { path, .. } | TrustError::GroupOrOtherAccess { path, .. } => {
                Some(format!("chmod 700 {}", path.display()))
            }
            TrustError::UntrustedDirectory { dir, .. } => Some(format!("chown root {}; chmod go-w {}", dir.display(), dir.display())),
            TrustError::NotFound { .. }
            | TrustError::NotAbsolute { .. }
            | TrustError::SymlinkFinal { .. }
            | TrustError::SymlinkLoop { .. }
            | TrustError::NotRegular { .. }
            | TrustError::NotDirectory { .. }
            | TrustError::Io { .. } => None,
        }
    }
}

/// A file that passed the checks, held open. Use [`TrustedFile::file`]; the
/// path is only for messages and for what the script sees as its name.
#[derive(Debug)]
pub struct TrustedFile {
    path: PathBuf,
    file: File,
    dev: u64,
    ino: u64,
    mode: u32,
}

impl TrustedFile {
    /// The path as configured (not the resolved one).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open, checked file (`O_RDONLY|O_CLOEXEC`).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Device and inode of the checked file, for logs and for tests that
    /// prove which file was used.
    pub fn dev_ino(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    /// Permission bits as checked (`st_mode & 0o7777`).
    pub fn mode(&self) -> u32 {
        self.mode
    }

    /// For a script that passed [`Rule::Script`] with read or execute bits
    /// for group or others (0755): what to tell the admin. The native rule
    /// allows it, the legacy one does not.
    pub fn group_or_other_access(&self) -> Option<String> {
        (self.mode & 0o077 != 0).then(|| {
            format!(
                "{}: group or others may read or execute it (mode {:04o}); scripts often hold passwords: chmod 700 {}",
                self.path.display(),
                self.mode,
                self.path.display()
            )
        })
    }

    /// Reads the whole file from the checked fd (not by name), from the
    /// current offset — call once, for configs.
    pub fn read_to_string(&self) -> Result<String, TrustError> {
        let mut s = String::new();
        (&self.file).read_to_string(&mut s).map_err(|source| TrustError::Io { path: self.path.clone(), source })?;
        Ok(s)
    }
}

/// Who may own the directories on a path (and a checked directory itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owners {
    /// Configs, scripts, plugins: run as root, so only root may control them.
    Root,
    /// The run directory: root, or the user quiesce runs as (an embedder or
    /// a test that is not root owns its own run directory).
    RootOrSelf,
}

impl Owners {
    fn allow(self, uid: u32) -> bool {
        uid == 0 || (self == Owners::RootOrSelf && uid == nix::unistd::geteuid().as_raw())
    }
}

/// Opens `path` and checks it and every directory leading to it under `rule`.
pub fn open_trusted(path: &Path, rule: Rule) -> Result<TrustedFile, TrustError> {
    let (dir, name) = walk(path, Owners::Root)?;
    open_final(path, rule, &dir, &name)
}

/// Opens directory `path` (`O_PATH`, for `*at` calls) after checking it and
/// every directory leading to it: each owned by root or by the calling user,
/// none writable by group or others, the last one not a symlink. For
/// directories quiesce writes into as root, such as the run directory.
pub fn open_trusted_dir(path: &Path) -> Result<OwnedFd, TrustError> {
    let (parent, name) = walk(path, Owners::RootOrSelf)?;
    let fd = open_subdir(path, &parent, &name)?;
    check_dir(path, path, &fd, Owners::RootOrSelf)?;
    Ok(fd)
}

/// `name` beneath `dir` as an `O_PATH` directory fd, not following a
/// symlink; `path` is its full path, for messages.
fn open_subdir(path: &Path, dir: &OwnedFd, name: &OsStr) -> Result<OwnedFd, TrustError> {
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    match fcntl::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::ENOENT) => Err(TrustError::NotFound { path: path.to_path_buf() }),
        Err(Errno::ENOTDIR | Errno::ELOOP) => {
            let st = stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| TrustError::Io { path: path.to_path_buf(), source: e.into() })?;
            Err(if file_type(&st) == SFlag::S_IFLNK {
                TrustError::SymlinkFinal { path: path.to_path_buf() }
            } else {
                TrustError::NotDirectory { path: path.to_path_buf() }
            })
        }
        Err(e) => Err(TrustError::Io { path: path.to_path_buf(), source: e.into() }),
    }
}

/// [`open_trusted_dir`], creating what is missing of `path` first: each
/// missing directory is made with `mkdirat` beneath one already checked
/// (0755 on the way, `mode` for `path` itself), never by name through
/// directories nobody checked. For the plugin cache and the state directory.
pub fn create_trusted_dir(path: &Path, mode: u32) -> Result<OwnedFd, TrustError> {
    let mut missing: Vec<OsString> = Vec::new();
    let mut at = path;
    let mut fd = loop {
        match open_trusted_dir(at) {
            Ok(fd) => break fd,
            Err(TrustError::NotFound { .. }) => match (at.parent(), at.file_name()) {
                (Some(parent), Some(name)) => {
                    missing.push(name.to_os_string());
                    at = parent;
                }
                _ => return Err(TrustError::NotFound { path: path.to_path_buf() }),
            },
            Err(e) => return Err(e),
        }
    };
    let mut here = at.to_path_buf();
    while let Some(name) = missing.pop() {
        here.push(&name);
        fd = trusted_subdir(&fd, &name, &here, if missing.is_empty() { mode } else { 0o755 })?;
    }
    Ok(fd)
}

/// The directory `name` beneath the checked directory `parent` (made with
/// `mode` if missing), checked like every directory of the walk and not
/// followed if it is a symlink. `path` is its full path, for messages.
pub fn trusted_subdir(parent: &OwnedFd, name: &OsStr, path: &Path, mode: u32) -> Result<OwnedFd, TrustError> {
    match stat::mkdirat(parent, name, Mode::from_bits_truncate(mode)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(TrustError::Io { path: path.to_path_buf(), source: e.into() }),
    }
    let fd = open_subdir(path, parent, name)?;
    check_dir(path, path, &fd, Owners::RootOrSelf)?;
    Ok(fd)
}

/// Walks `path` from `/` down to its parent, checking every directory, and
/// returns the parent's fd and the last component (not opened yet).
fn walk(path: &Path, owners: Owners) -> Result<(OwnedFd, OsString), TrustError> {
    if !path.is_absolute() {
        return Err(TrustError::NotAbsolute { path: path.to_path_buf() });
    }
    let io = |e: Errno| TrustError::Io { path: path.to_path_buf(), source: e.into() };

    let root = fcntl::open("/", OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).map_err(io)?;
    check_dir(path, Path::new("/"), &root, owners)?;

    // The directories we stand in, root first; `..` pops. Holding the fds
    // (not names) is what makes the walk race-free.
    let mut stack: Vec<(OwnedFd, PathBuf)> = vec![(root, PathBuf::from("/"))];
    let mut rest: VecDeque<OsString> = components(path.as_os_str());
    let mut hops = 0;

    while let Some(comp) = rest.pop_front() {
        if comp == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        if rest.is_empty() {
            let Some((dir, _)) = stack.pop() else { break };
            return Ok((dir, comp));
        }
        let Some((dir, dir_name)) = stack.last() else {
            // Unreachable: `..` never pops the root.
            return Err(TrustError::NotFound { path: path.to_path_buf() });
        };
        let here = dir_name.join(&comp);
        match fcntl::openat(dir, comp.as_os_str(), OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        {
            Ok(fd) => {
                check_dir(path, &here, &fd, owners)?;
                stack.push((fd, here));
            }
            Err(Errno::ENOENT) => return Err(TrustError::NotFound { path: path.to_path_buf() }),
            // O_NOFOLLOW|O_DIRECTORY on a symlink gives ENOTDIR (or ELOOP on
            // some kernels); a plain file in the middle gives ENOTDIR too.
            Err(Errno::ENOTDIR | Errno::ELOOP) => {
                let st = stat::fstatat(dir, comp.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW).map_err(io)?;
                if file_type(&st) != SFlag::S_IFLNK {
                    // Something that is not a directory where one is needed:
                    // there is no file at the configured location.
                    return Err(TrustError::NotFound { path: path.to_path_buf() });
                }
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(TrustError::SymlinkLoop { path: path.to_path_buf() });
                }
                // Safe to follow: `dir` was verified, so only root could
                // have put this link here. Its target is walked and checked
                // like any other path.
                let target = fcntl::readlinkat(dir, comp.as_os_str()).map_err(io)?;
                let mut spliced = components(&target);
                spliced.extend(rest.drain(..));
                rest = spliced;
                if target.as_bytes().first() == Some(&b'/') {
                    stack.truncate(1);
                }
            }
            Err(e) => return Err(io(e)),
        }
    }
    // The path named a directory (`/`, `/etc/..`): not a file we can use.
    Err(TrustError::NotRegular { path: path.to_path_buf() })
}

/// Path components without the empty and `.` ones (`a//b/./c` → a, b, c).
fn components(p: &OsStr) -> VecDeque<OsString> {
    p.as_bytes().split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".").map(|c| OsStr::from_bytes(c).to_os_string()).collect()
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn check_dir(path: &Path, dir: &Path, fd: &OwnedFd, owners: Owners) -> Result<(), TrustError> {
    let st = stat::fstat(fd).map_err(|e| TrustError::Io { path: path.to_path_buf(), source: e.into() })?;
    let untrusted = |reason: String| TrustError::UntrustedDirectory { path: path.to_path_buf(), dir: dir.to_path_buf(), reason };
    if !owners.allow(st.st_uid) {
        return Err(untrusted(format!("is owned by uid {}", st.st_uid)));
    }
    // Sticky bit does not help: in a 1777 directory anyone may create the
    // name before root does.
    if st.st_mode & 0o022 != 0 {
        return Err(untrusted(format!("is writable by group or others (mode {:04o})", st.st_mode & 0o7777)));
    }
    Ok(())
}

fn open_final(path: &Path, rule: Rule, dir: &OwnedFd, name: &OsStr) -> Result<TrustedFile, TrustError> {
    let err_path = || path.to_path_buf();
    let io = |e: Errno| TrustError::Io { path: path.to_path_buf(), source: e.into() };
    // O_NONBLOCK: opening a FIFO planted at the path must not hang the host;
    // O_NOCTTY: nor may a tty become our controlling terminal.
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
    let fd = match fcntl::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ENOTDIR) => return Err(TrustError::NotFound { path: err_path() }),
        Err(Errno::ELOOP) => return Err(TrustError::SymlinkFinal { path: err_path() }),
        // A socket cannot be opened at all.
        Err(Errno::ENXIO | Errno::EOPNOTSUPP) => return Err(TrustError::NotRegular { path: err_path() }),
        Err(e) => return Err(io(e)),
    };
    let st = stat::fstat(&fd).map_err(io)?;
    if file_type(&st) != SFlag::S_IFREG {
        return Err(TrustError::NotRegular { path: err_path() });
    }
    let fl = fcntl::fcntl(fd.as_fd(), FcntlArg::F_GETFL).map_err(io)?;
    let fl = OFlag::from_bits_truncate(fl) & !OFlag::O_NONBLOCK;
    fcntl::fcntl(fd.as_fd(), FcntlArg::F_SETFL(fl)).map_err(io)?;

    let mode = st.st_mode & 0o7777;
    if st.st_uid != 0 {
        return Err(TrustError::BadOwner { path: err_path(), uid: st.st_uid });
    }
    if mode & 0o022 != 0 {
        return Err(TrustError::GroupOrOtherWritable { path: err_path(), mode, rule });
    }
    match rule {
        Rule::Script | Rule::LegacyScript if mode & 0o100 == 0 => return Err(TrustError::NotExecutable { path: err_path(), mode }),
        Rule::LegacyScript if mode & 0o077 != 0 => return Err(TrustError::GroupOrOtherAccess { path: err_path(), mode }),
        Rule::Config if mode & 0o044 != 0 => return Err(TrustError::GroupOrOtherReadable { path: err_path(), mode }),
        Rule::Config | Rule::Script | Rule::LegacyScript | Rule::Plugin => {}
    }
    Ok(TrustedFile { path: path.to_path_buf(), file: File::from(fd), dev: st.st_dev, ino: st.st_ino, mode })
}

/// `/proc/self/fd/N`: names exactly the inode `fd` holds (opening it reopens
/// that inode, listing it lists that directory), whatever its path now is.
pub fn proc_fd(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comps(s: &str) -> Vec<String> {
        components(OsStr::new(s)).into_iter().map(|c| c.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn components_drop_empty_and_dot() {
        assert_eq!(comps("/a//b/./c/"), ["a", "b", "c"]);
        assert_eq!(comps("usr/bin"), ["usr", "bin"]);
        assert_eq!(comps("../x"), ["..", "x"]);
        assert!(comps("/").is_empty());
    }

    #[test]
    fn relative_path_is_refused() {
        let e = open_trusted(Path::new("etc/passwd"), Rule::Config).unwrap_err();
        assert!(matches!(e, TrustError::NotAbsolute { .. }), "{e}");
    }

    #[test]
    fn root_is_not_a_regular_file() {
        let e = open_trusted(Path::new("/"), Rule::Config).unwrap_err();
        assert!(matches!(e, TrustError::NotRegular { .. }), "{e}");
    }

    #[test]
    fn missing_file_is_not_found() {
        let e = open_trusted(Path::new("/nonexistent-quiesce-dir/x.sh"), Rule::Script).unwrap_err();
        assert!(e.is_not_found(), "{e}");
        let e = open_trusted(Path::new("/etc/nonexistent-quiesce.json"), Rule::Config).unwrap_err();
        assert!(e.is_not_found(), "{e}");
    }

    #[test]
    fn messages_name_the_file_and_the_fix() {
        let e = TrustError::NotExecutable { path: PathBuf::from("/etc/x.sh"), mode: 0o600 };
        assert_eq!(e.to_string(), "/etc/x.sh: not executable by its owner (mode 0600): chmod 700 /etc/x.sh");
        let e = TrustError::GroupOrOtherWritable { path: PathBuf::from("/etc/c.json"), mode: 0o620, rule: Rule::Config };
        assert!(e.to_string().ends_with("chmod 600 /etc/c.json"), "{e}");
        assert_eq!(e.fix().as_deref(), Some("chmod 600 /etc/c.json"));
        let e = TrustError::UntrustedDirectory { path: "/srv/a/x.sh".into(), dir: "/srv/a".into(), reason: "is owned by uid 5".into() };
        assert!(e.to_string().contains(&e.fix().unwrap_or_default()), "{e}");
    }
}
