//! `/proc/self/mountinfo` parsing (`parse_bytes`) and the freeze planner
//! over whatever it accepts.
//!
//! A bad line is set aside (`unparsed`), never fatal: the table is exactly
//! its lines parsed one by one — no line makes another vanish or change —
//! and every non-empty line is either an entry or an unparsed line.
#![no_main]
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use quiesce::freeze::mountinfo::parse_bytes;
use quiesce::freeze::{plan_from, FreezeError, Selection};
use quiesce_fuzz::DevEnv;

fuzz_target!(|data: &[u8]| {
    let table = parse_bytes(data);
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let one_by_one: Vec<_> = lines.iter().flat_map(|l| parse_bytes(l).entries).collect();
    assert_eq!(table.entries, one_by_one, "the table is not the sum of its lines");
    let non_empty = lines.iter().filter(|l| !l.is_empty()).count();
    assert_eq!(table.entries.len() + table.unparsed.len(), non_empty, "a line vanished");
    for u in &table.unparsed {
        assert!(u.line >= 1 && u.line <= lines.len());
        assert!(!lines[u.line - 1].is_empty());
        assert!(u.text.chars().count() <= 200, "quoted line not capped");
    }

    let plan = plan_from(&table, &Selection::default(), &DevEnv).expect("planning every mount never fails");
    let unparsed_mounts = table.unparsed.iter().filter(|u| u.mount_point.is_some()).count();
    assert_eq!(
        plan.targets.len() + plan.skipped.len(),
        table.entries.len() + unparsed_mounts,
        "every mount, parsed or not, is frozen or skipped with a reason"
    );
    let mut devs = std::collections::HashSet::new();
    for (i, t) in plan.targets.iter().enumerate() {
        assert!(devs.insert(t.dev), "superblock {:?} frozen twice", t.dev);
        assert!(table.entries.iter().any(|m| m.mount_point == t.path && m.mount_id == t.mount_id));
        // A mount below another is frozen first.
        for later in &plan.targets[i + 1..] {
            assert!(!(t.path != later.path && later.path.starts_with(&t.path)), "{:?} frozen before {:?} below it", t.path, later.path);
        }
    }

    // Selecting one mount point: planned or refused by name, never another
    // one; refused if an unparsable line names the same path.
    if let Some(m) = table.entries.first() {
        let sel = Selection { mounts: vec![m.mount_point.clone()], exclude: Vec::new() };
        match plan_from(&table, &sel, &DevEnv) {
            Ok(plan) => {
                assert!(!table.unparsed.iter().any(|u| u.mount_point.as_ref() == Some(&m.mount_point)));
                let only: Vec<&PathBuf> = plan.targets.iter().map(|t| &t.path).collect();
                assert!(only.iter().all(|p| **p == m.mount_point), "{only:?}");
            }
            Err(FreezeError::Unparsable { path, .. }) => assert_eq!(path, m.mount_point),
            Err(e) => panic!("a listed mount point refused: {e}"),
        }
    }
});
