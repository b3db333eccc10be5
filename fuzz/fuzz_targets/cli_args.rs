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
use std::path::PathBuf;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use quiesce::duration::{self, parse_secs, DurationError};
use quiesce::freeze::{mountinfo, plan_from, FreezeError, Selection};
use quiesce_fuzz::DevEnv;

/// The synthetic mount table seed of the mountinfo target.
const TABLE: &str = include_str!("../corpus/mountinfo/synthetic");

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
    match plan_from(&table, &sel, &DevEnv) {
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
