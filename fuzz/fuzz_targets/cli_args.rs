//! The command line's value parsing. The `quiesce` binary's clap definition
//! lives in `main.rs` (not reachable from the library), and clap hands path
//! arguments through as raw `OsString`s; what interprets user input is
//! `quiesce::duration::parse_secs` (`--max-freeze`, clap's `value_parser`)
//! and, for `--mount DIR` and `exclude` globs, the freeze planner's
//! selection. Input: line 1 is a duration, the other lines are `--mount`
//! paths (any bytes) and, after a line `--exclude`, exclude patterns.
#![no_main]
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use quiesce::duration::{self, parse_secs, DurationError};
use quiesce::freeze::{mountinfo, plan_from, FreezeError, PlanEnv, Selection};

const TABLE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
60 27 7:3 / /mnt/my\\040disk rw,noatime shared:40 master:2 - xfs /dev/loop3 rw,attr2
61 27 0:55 /sub /srv/b\\134s\\011t ro,relatime - btrfs /dev/loop4 rw,space_cache=v2,subvol=/sub
62 27 0:56 / /net rw - nfs4 server:/export\\040x rw,vers=4.2
63 27 7:5 / /srv/data rw - ext4 /dev/loop5 rw
64 63 7:6 / /srv/data/inner rw - ext4 /dev/loop6 rw
";

struct Env;
impl PlanEnv for Env {
    fn is_block_device(&self, path: &Path) -> bool {
        path.starts_with("/dev")
    }
    fn loop_backing_dev(&self, _device: &Path) -> Option<(u32, u32)> {
        None
    }
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    if let Ok(s) = std::str::from_utf8(first) {
        check_duration(s);
    }

    let (mut mounts, mut exclude, mut in_exclude) = (Vec::new(), Vec::new(), false);
    for l in lines {
        if l == b"--exclude" {
            in_exclude = true;
        } else if in_exclude {
            exclude.push(String::from_utf8_lossy(l).into_owned());
        } else {
            mounts.push(PathBuf::from(OsStr::from_bytes(l)));
        }
    }
    let table = mountinfo::parse(TABLE);
    assert!(table.unparsed.is_empty());
    let sel = Selection { mounts: mounts.clone(), exclude };
    match plan_from(&table, &sel, &Env) {
        Ok(plan) => {
            for t in &plan.targets {
                assert!(mounts.is_empty() || mounts.contains(&t.path), "{:?} frozen but not asked for", t.path);
            }
            for p in &mounts {
                assert!(table.entries.iter().any(|m| &m.mount_point == p), "{p:?} accepted but not a mount point");
            }
        }
        Err(FreezeError::NotAMountPoint { path }) => {
            assert!(mounts.contains(&path), "refused {path:?}, which was not asked for");
            assert!(!table.entries.iter().any(|m| m.mount_point == path), "refused a real mount point {path:?}");
        }
        Err(e) => panic!("unexpected planning error {e}"),
    }
});

fn check_duration(s: &str) {
    match parse_secs(s) {
        Ok(d) => {
            assert!((duration::MIN..=duration::MAX).contains(&d), "{s:?} gave {d:?}");
            let now = Instant::now();
            assert!(duration::deadline(now, d) > now);
            assert!(duration::poll_timeout_ms(d) >= 1);
            // What the report prints reads back as (about) the same duration.
            let again = parse_secs(&d.as_secs_f64().to_string()).expect("a parsed duration prints as a valid one");
            assert!(again.abs_diff(d) <= std::time::Duration::from_micros(1), "{d:?} vs {again:?}");
        }
        Err(e @ DurationError::NotANumber { .. }) | Err(e @ DurationError::OutOfRange { .. }) => {
            // The message names the value and the range.
            let msg = e.to_string();
            assert!(msg.contains(&duration::MAX_SECS.to_string()), "{msg}");
        }
    }
}
