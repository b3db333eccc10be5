//! `/proc/self/mountinfo`, parsed. It is the only mount table that carries
//! the mount's root within its file system (to tell bind mounts apart), the
//! superblock's major:minor (to de-duplicate), and per-mount vs. superblock
//! options (a read-only bind of a writable fs). `/proc/mounts` has none of
//! these reliably.
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
    /// Mount source (`/dev/loop3`, `tmpfs`, `server:/export`).
    pub source: String,
    /// Superblock options.
    pub super_options: Vec<String>,
}

impl MountInfoEntry {
    /// Read-only either for this mount or for the whole superblock.
    pub fn read_only(&self) -> bool {
        self.mount_options.iter().any(|o| o == "ro") || self.super_options.iter().any(|o| o == "ro")
    }
}

/// Reads and parses the calling process's mount table.
pub fn read() -> Result<Vec<MountInfoEntry>, FreezeError> {
    let path = "/proc/self/mountinfo";
    let text = std::fs::read(path).map_err(|source| FreezeError::Read { what: path.into(), source })?;
    // Mount points may hold any bytes; the kernel escapes only space, tab,
    // newline and backslash, so a lossy decode would corrupt paths.
    parse_bytes(&text)
}

/// Parses mountinfo text.
pub fn parse(text: &str) -> Result<Vec<MountInfoEntry>, FreezeError> {
    parse_bytes(text.as_bytes())
}

/// Parses mountinfo bytes (paths need not be UTF-8).
pub fn parse_bytes(text: &[u8]) -> Result<Vec<MountInfoEntry>, FreezeError> {
    text.split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
        .map(|(i, l)| parse_line(l).map_err(|reason| FreezeError::Parse { line: i + 1, reason }))
        .collect()
}

fn parse_line(line: &[u8]) -> Result<MountInfoEntry, String> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').filter(|f| !f.is_empty()).collect();
    let sep = fields.iter().position(|f| *f == b"-").ok_or("no ' - ' separator")?;
    if sep < 6 || fields.len() < sep + 4 {
        return Err(format!("expected at least 6 fields before ' - ' and 3 after, got {} and {}", sep, fields.len() - sep - 1));
    }
    let text = |f: &[u8]| String::from_utf8_lossy(&unescape(f)).into_owned();
    let num = |f: &[u8], what: &str| -> Result<u64, String> {
        std::str::from_utf8(f).ok().and_then(|s| s.parse().ok()).ok_or_else(|| format!("bad {what} {:?}", String::from_utf8_lossy(f)))
    };
    let dev = std::str::from_utf8(fields[2])
        .ok()
        .and_then(|s| s.split_once(':'))
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| format!("bad major:minor {:?}", String::from_utf8_lossy(fields[2])))?;
    let list = |f: &[u8]| text(f).split(',').map(String::from).collect::<Vec<_>>();
    Ok(MountInfoEntry {
        mount_id: num(fields[0], "mount id")?,
        parent_id: num(fields[1], "parent id")?,
        dev,
        root: PathBuf::from(OsString::from_vec(unescape(fields[3]))),
        mount_point: PathBuf::from(OsString::from_vec(unescape(fields[4]))),
        mount_options: list(fields[5]),
        optional: fields[6..sep].iter().map(|f| text(f)).collect(),
        fs_type: text(fields[sep + 1]),
        source: text(fields[sep + 2]),
        super_options: list(fields[sep + 3]),
    })
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

    const SAMPLE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
60 27 7:3 / /mnt/my\\040disk rw,noatime shared:40 master:2 - xfs /dev/loop3 rw,attr2
61 27 0:55 /sub /srv/b\\134s\\011t ro,relatime - btrfs /dev/loop4 rw,space_cache=v2,subvol=/sub
62 27 0:56 / /net rw - nfs4 server:/export\\040x rw,vers=4.2
";

    #[test]
    fn parses_fields_and_decodes_octal_escapes() {
        let m = parse(SAMPLE).unwrap();
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

    #[test]
    fn leaves_non_escapes_alone() {
        assert_eq!(unescape(b"a\\b\\0"), b"a\\b\\0".to_vec());
        assert_eq!(unescape(b"x\\012"), b"x\n".to_vec());
        assert_eq!(unescape(b"\\777"), b"\\777".to_vec());
    }

    #[test]
    fn rejects_a_line_without_separator() {
        let err = parse("1 2 3:4 / /x rw ext4 /dev/x rw\n").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn reads_the_real_table() {
        let m = read().unwrap();
        assert!(m.iter().any(|e| e.mount_point == std::path::Path::new("/")));
    }
}
