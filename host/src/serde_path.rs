//! Paths in JSON output. serde refuses a path that is not UTF-8 ("path
//! contains invalid UTF-8 characters"), and mount points are bytes: one such
//! mount anywhere on the machine would make a whole report, `status --json`
//! or `check --json` unprintable. These write a path the way
//! [`Path::display`] does (an invalid byte as U+FFFD), the form the messages
//! use too. For `#[serde(serialize_with = "...")]`.

use std::path::{Path, PathBuf};

use serde::Serializer;

pub fn lossy<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

pub fn lossy_opt<S: Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_some(&p.to_string_lossy()),
        None => s.serialize_none(),
    }
}

pub fn lossy_vec<S: Serializer>(ps: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ps.iter().map(|p| p.to_string_lossy()))
}

/// `[(path, text)]`, as `[[path, text]]`.
pub fn lossy_pairs<S: Serializer>(ps: &[(PathBuf, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ps.iter().map(|(p, t)| (p.to_string_lossy(), t)))
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    #[derive(serde::Serialize)]
    struct T {
        #[serde(serialize_with = "super::lossy")]
        p: std::path::PathBuf,
    }

    #[test]
    fn a_non_utf8_path_serializes_as_display_shows_it() {
        let t = T { p: OsStr::from_bytes(b"/mnt/caf\xe9").into() };
        assert_eq!(serde_json::to_string(&t).unwrap(), "{\"p\":\"/mnt/caf\u{fffd}\"}");
    }
}
