//! `/proc/self/mountinfo`, parsed. It is the only mount table that carries
//! the mount's root within its file system (to tell bind mounts apart), the
//! superblock's major:minor (to de-duplicate), and per-mount vs. superblock
//! options (a read-only bind of a writable fs). `/proc/mounts` has none of
//! these reliably.
//!
//! The line format is proc(5)'s, taken literally: fields are separated by
//! exactly one space, and a field may be *empty* — `mount -t tmpfs "" /x`
//! shows as `... - tmpfs  rw` (an empty source between two spaces). Splitting
//! on runs of spaces, as most parsers do, shifts every later field and makes
//! the line look malformed. The kernel escapes space, tab, newline and
//! backslash as `\ooo`; everything else (any byte, not only UTF-8) is written
//! raw, so paths and the source stay bytes.
//!
//! One line that still cannot be parsed must not take the whole table with
//! it: `thaw --all` in an emergency, or a session freezing unrelated mounts,
//! would otherwise fail because of a mount nobody asked about. Such a line is
//! kept aside in [`MountTable::unparsed`] (with its mount point when that
//! much can be read), logged, and the planner refuses only a `--mount` that
//! names it.
//!
//! Parsing is a pure function over the text so that it is testable on
//! synthetic tables; [`read`] feeds it the real file.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use super::FreezeError;

/// One line of mountinfo (see proc(5)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfoEntry {
    /// Unique id of the mount (matches `statx`'s `stx_mnt_id`).
    pub mount_id: u64,
    /// Id of the parent mount (itself for the root of the namespace).
    pub parent_id: u64,
    /// Superblock device number; major 0 for btrfs and pseudo file systems.
    pub dev: (u32, u32),
    /// Directory of the file system that is the root of this mount ("/" unless a bind mount).
    pub root: PathBuf,
    /// Where it is mounted, escapes decoded.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`, `ro`, `nosuid`, ...).
    pub mount_options: Vec<String>,
    /// Optional fields (`shared:1`, `master:2`, ...).
    pub optional: Vec<String>,
    /// File system type (`ext4`, `fuse.sshfs`, ...).
    pub fs_type: String,
    /// Mount source (`/dev/loop3`, `tmpfs`, `server:/export`), escapes
    /// decoded; may be empty, and need not be UTF-8.
    pub source: OsString,
    /// Superblock options.
    pub super_options: Vec<String>,
}

impl MountInfoEntry {
    /// Read-only either for this mount or for the whole superblock.
    pub fn read_only(&self) -> bool {
        self.mount_options.iter().any(|o| o == "ro") || self.super_options.iter().any(|o| o == "ro")
    }
}

/// A line that does not have proc(5)'s shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnparsedLine {
    /// 1-based line number in the table.
    pub line: usize,
    /// The mount point (field 5), when the line has that many fields.
    pub mount_point: Option<PathBuf>,
    /// What is wrong with it.
    pub reason: String,
    /// The line itself (lossily decoded, shortened), for the log.
    pub text: String,
}

/// The parsed mount table: every line that parsed, in table order, and
/// those that did not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountTable {
    pub entries: Vec<MountInfoEntry>,
    pub unparsed: Vec<UnparsedLine>,
}

/// How much of a bad line the log and the errors quote.
const QUOTE_CAP: usize = 200;

/// Reads and parses the calling process's mount table. Only an unreadable
/// file is an error; a bad line is logged and kept in `unparsed`.
pub fn read() -> Result<MountTable, FreezeError> {
    let path = "/proc/self/mountinfo";
    let text = std::fs::read(path).map_err(|source| FreezeError::Read { what: path.into(), source })?;
    let table = parse_bytes(&text);
    for u in &table.unparsed {
        tracing::warn!("{path} line {} skipped, its mount is neither frozen nor thawed by quiesce: {}: {:?}", u.line, u.reason, u.text);
    }
    Ok(table)
}

/// Parses mountinfo text.
pub fn parse(text: &str) -> MountTable {
    parse_bytes(text.as_bytes())
}

/// Parses mountinfo bytes (paths need not be UTF-8).
pub fn parse_bytes(text: &[u8]) -> MountTable {
    let mut table = MountTable::default();
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match parse_line(line) {
            Ok(e) => table.entries.push(e),
            Err(reason) => table.unparsed.push(UnparsedLine {
                line: i + 1,
                mount_point: line.split(|&b| b == b' ').nth(4).filter(|f| !f.is_empty()).map(path),
                reason,
                text: String::from_utf8_lossy(line).chars().take(QUOTE_CAP).collect(),
            }),
        }
    }
    table
}

/// Fields of proc(5): (1) mount ID (2) parent ID (3) major:minor (4) root
/// (5) mount point (6) mount options (7) optional fields, zero or more,
/// (8) the separator `-`, (9) fs type (10) source (11) super options.
fn parse_line(line: &[u8]) -> Result<MountInfoEntry, String> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    if fields.len() < 10 {
        return Err(format!("{} fields, proc(5) has at least 10", fields.len()));
    }
    // The optional fields (`shared:N`, `master:N`, `propagate_from:N`,
    // `unbindable`) are never `-`; the first lone `-` after field 6 ends them.
    let sep = fields[6..].iter().position(|f| *f == b"-").map(|p| p + 6).ok_or("no ` - ` separator after the optional fields")?;
    let after = &fields[sep + 1..];
    if after.len() != 3 {
        return Err(format!("{} fields after ` - `, proc(5) has 3 (fs type, source, super options)", after.len()));
    }
    let optional = &fields[6..sep];
    if optional.iter().any(|f| f.is_empty()) {
        return Err("an empty optional field".into());
    }
    let num = |f: &[u8], what: &str| -> Result<u64, String> {
        std::str::from_utf8(f).ok().and_then(|s| s.parse().ok()).ok_or_else(|| format!("bad {what} {:?}", String::from_utf8_lossy(f)))
    };
    let dev = std::str::from_utf8(fields[2])
        .ok()
        .and_then(|s| s.split_once(':'))
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| format!("bad major:minor {:?}", String::from_utf8_lossy(fields[2])))?;
    if fields[4].is_empty() {
        return Err("empty mount point".into());
    }
    if after[0].is_empty() {
        return Err("empty fs type".into());
    }
    Ok(MountInfoEntry {
        mount_id: num(fields[0], "mount id")?,
        parent_id: num(fields[1], "parent id")?,
        dev,
        root: path(fields[3]),
        mount_point: path(fields[4]),
        mount_options: list(fields[5]),
        optional: optional.iter().map(|f| text(f)).collect(),
        fs_type: text(after[0]),
        source: OsString::from_vec(unescape(after[1])),
        super_options: list(after[2]),
    })
}

fn path(field: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape(field)))
}

/// Options and types are ASCII in practice; they are only compared, never
/// used as paths, so a lossy decode is harmless.
fn text(field: &[u8]) -> String {
    String::from_utf8_lossy(&unescape(field)).into_owned()
}

fn list(field: &[u8]) -> Vec<String> {
    if field.is_empty() {
        return Vec::new();
    }
    text(field).split(',').map(String::from).collect()
}

/// Decodes the kernel's `\ooo` octal escapes (`\040` is a space).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' {
            let oct = &field[i + 1..(i + 4).min(field.len())];
            if oct.len() == 3 && oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = oct.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    const SAMPLE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
60 27 7:3 / /mnt/my\\040disk rw,noatime shared:40 master:2 - xfs /dev/loop3 rw,attr2
61 27 0:55 /sub /srv/b\\134s\\011t ro,relatime - btrfs /dev/loop4 rw,space_cache=v2,subvol=/sub
62 27 0:56 / /net rw - nfs4 server:/export\\040x rw,vers=4.2
";

    fn parse_all(text: &str) -> Vec<MountInfoEntry> {
        let t = parse(text);
        assert!(t.unparsed.is_empty(), "{:?}", t.unparsed);
        t.entries
    }

    #[test]
    fn parses_fields_and_decodes_octal_escapes() {
        let m = parse_all(SAMPLE);
        assert_eq!(m.len(), 5);
        assert_eq!(m[1].mount_point, PathBuf::from("/"));
        assert_eq!(m[1].optional, vec!["shared:1"]);
        assert_eq!(m[2].mount_point, PathBuf::from("/mnt/my disk"));
        assert_eq!(m[2].dev, (7, 3));
        assert_eq!(m[2].optional, vec!["shared:40", "master:2"]);
        assert_eq!(m[2].fs_type, "xfs");
        assert_eq!(m[2].source, "/dev/loop3");
        assert_eq!(m[3].mount_point, PathBuf::from("/srv/b\\s\tt"));
        assert_eq!(m[3].root, PathBuf::from("/sub"));
        assert_eq!(m[3].dev, (0, 55));
        assert!(m[3].read_only());
        assert!(!m[2].read_only());
        assert_eq!(m[3].super_options, vec!["rw", "space_cache=v2", "subvol=/sub"]);
        assert_eq!(m[4].source, "server:/export x");
        assert_eq!((m[4].mount_id, m[4].parent_id), (62, 27));
    }

    /// What the kernel really prints for `mount -t tmpfs "" /x` (6.x): the
    /// empty source is an empty field between two spaces.
    #[test]
    fn empty_source_is_an_empty_field_not_a_malformed_line() {
        let m = parse_all("42 27 0:39 / /tmp/x rw,relatime - tmpfs  rw\n27 1 254:0 / / rw - ext4 /dev/vda rw\n");
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].fs_type, "tmpfs");
        assert_eq!(m[0].source, "");
        assert_eq!(m[0].super_options, vec!["rw"]);
        assert_eq!(m[1].source, "/dev/vda");
    }

    #[test]
    fn a_source_or_root_that_is_a_dash_does_not_move_the_separator() {
        let m = parse_all("5 1 0:40 / /x rw shared:3 - tmpfs - rw\n");
        assert_eq!(m[0].source, "-");
        assert_eq!(m[0].optional, vec!["shared:3"]);
        let m = parse_all("5 1 0:40 - /y rw - tmpfs t rw\n");
        assert_eq!(m[0].root, PathBuf::from("-"));
        assert_eq!(m[0].fs_type, "tmpfs");
    }

    #[test]
    fn non_utf8_mount_points_and_sources_stay_bytes() {
        let line = b"7 1 7:5 / /mnt/caf\xe9\\040x rw - ext4 /dev/disk/by-label/\xff rw\n";
        let t = parse_bytes(line);
        assert!(t.unparsed.is_empty(), "{:?}", t.unparsed);
        assert_eq!(t.entries[0].mount_point.as_os_str().as_bytes(), b"/mnt/caf\xe9 x");
        assert_eq!(t.entries[0].source.as_bytes(), b"/dev/disk/by-label/\xff");
    }

    #[test]
    fn a_bad_line_is_set_aside_with_its_mount_point_and_the_rest_parses() {
        let t = parse(
            "27 1 254:0 / / rw - ext4 /dev/vda rw\n\
             1 2 3:4 / /no/separator rw shared:1 ext4 /dev/x rw\n\
             x 2 3:4 / /bad/id rw - ext4 /dev/x rw\n\
             3 2 3:4 / /extra rw - ext4 /dev/x rw more\n\
             3 2 3:4 /\n\
             60 27 7:3 / /mnt/ok rw - xfs /dev/loop3 rw\n",
        );
        let ok: Vec<&Path> = t.entries.iter().map(|e| e.mount_point.as_path()).collect();
        assert_eq!(ok, [Path::new("/"), Path::new("/mnt/ok")]);
        let bad: Vec<(usize, Option<&Path>)> = t.unparsed.iter().map(|u| (u.line, u.mount_point.as_deref())).collect();
        assert_eq!(
            bad,
            [(2, Some(Path::new("/no/separator"))), (3, Some(Path::new("/bad/id"))), (4, Some(Path::new("/extra"))), (5, None)]
        );
        assert!(t.unparsed[0].reason.contains("separator"), "{:?}", t.unparsed[0]);
        assert!(t.unparsed[1].reason.contains("mount id"), "{:?}", t.unparsed[1]);
        assert!(t.unparsed[2].reason.contains("4 fields after"), "{:?}", t.unparsed[2]);
    }

    #[test]
    fn runs_of_spaces_are_empty_fields_not_one_separator() {
        // A parser that collapses spaces would read "tmpfs rw" here and shift
        // the source into the fs type; proc(5) says this line is malformed.
        let t = parse("5 1 0:40 /  /x rw - tmpfs t rw\n");
        assert_eq!(t.entries.len(), 0);
        assert_eq!(t.unparsed.len(), 1);
    }

    #[test]
    fn leaves_non_escapes_alone() {
        assert_eq!(unescape(b"a\\b\\0"), b"a\\b\\0".to_vec());
        assert_eq!(unescape(b"x\\012"), b"x\n".to_vec());
        assert_eq!(unescape(b"\\777"), b"\\777".to_vec());
        assert_eq!(unescape(b"end\\"), b"end\\".to_vec());
    }

    #[test]
    fn reads_the_real_table() {
        let t = read().unwrap();
        assert!(t.entries.iter().any(|e| e.mount_point == Path::new("/")));
        assert!(t.unparsed.is_empty(), "{:?}", t.unparsed);
    }
}
