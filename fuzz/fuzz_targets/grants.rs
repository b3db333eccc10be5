//! The grant parser (`Grants::parse`, one grant per input line) and the
//! checks built on it: whatever parses prints back to itself and allows
//! exactly what it names.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use quiesce::hooks::wasm::grants::Target;
use quiesce::hooks::wasm::{Grant, Grants};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let Ok(grants) = Grants::parse(&lines) else {
        // One bad grant refuses the set; each alone must still parse or fail
        // without panicking, and a refused one is always "missing".
        for l in &lines {
            if l.parse::<Grant>().is_err() {
                assert_eq!(Grants::none().missing(std::slice::from_ref(l)), vec![l.as_str()]);
            }
        }
        return;
    };
    assert!(grants.missing(&lines).is_empty(), "a granted grant reported missing: {lines:?}");
    for g in grants.iter() {
        let shown = g.to_string();
        let again: Grant = shown.parse().unwrap_or_else(|e| panic!("{g:?} prints as {shown:?}, which does not parse: {e}"));
        assert_eq!(&again, g, "round trip through {shown:?}");
        match g {
            Grant::Tcp { port, .. } => {
                assert_ne!(*port, 0);
                let t: Target = shown.parse().expect("a tcp grant is a target");
                assert!(grants.allows_connect(&t));
            }
            Grant::Unix(p) => {
                assert!(p.is_absolute());
                let t: Target = shown.parse().expect("a unix grant is a target");
                assert!(grants.allows_connect(&t));
            }
            Grant::File(p) => {
                assert!(is_normal(p), "{p:?}");
                // File reads are checked beneath the pinned grant at run time;
                // here: the admin's grant is what a plugin asking for it needs.
                assert!(grants.missing(std::slice::from_ref(&shown)).is_empty());
            }
            Grant::Dir(d) => {
                assert!(is_normal(d), "{d:?}");
                assert!(grants.missing(std::slice::from_ref(&shown)).is_empty());
            }
            Grant::Exec(p) => {
                assert!(is_normal(p), "{p:?}");
                assert!(grants.allows_exec(p));
            }
        }
    }
});

/// Absolute, no `.`/`..` components.
fn is_normal(p: &Path) -> bool {
    use std::path::Component;
    p.is_absolute() && p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}
