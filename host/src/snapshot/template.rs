//! Argv templates with `{placeholders}`: how the cloud providers are
//! configured. An argv is never a shell string, and a value can never become
//! an argument of its own or reshape one:
//!
//! - substitution is one pass: a value is never scanned for placeholders;
//! - every byte of a value outside `A-Z a-z 0-9 . _ : / @ + -` is
//!   percent-encoded (`,` `=` `{` `}` `[` `]` space …), so a session id or a
//!   mount path cannot add a tag to AWS's `Key=..,Value=..` shorthand, a
//!   label to gcloud's `k=v,k=v`, or a second `key=value` to az's `--tags`;
//! - an element that becomes an option (`-…`) only through a value is
//!   refused: `{to}` = `--yes` must not reach the CLI as a flag.
//!
//! `{Key=…}` and other braces that are not `{lower_case_name}` are plain
//! text (AWS's tag syntax uses them).

use crate::report::Consistency;

use super::SnapshotError;

/// Longest value after escaping: ids and names are far shorter.
const MAX_VALUE: usize = 1024;

enum Piece<'a> {
    Text(&'a str),
    Name(&'a str),
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

fn pieces(element: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = element;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) if is_name(&after[..close]) => {
                if open > 0 {
                    out.push(Piece::Text(&rest[..open]));
                }
                out.push(Piece::Name(&after[..close]));
                rest = &after[close + 1..];
            }
            _ => {
                out.push(Piece::Text(&rest[..=open]));
                rest = after;
            }
        }
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    out
}

/// The placeholder names an argv uses.
pub fn names(argv: &[String]) -> impl Iterator<Item = &str> {
    argv.iter().flat_map(|e| {
        pieces(e).into_iter().filter_map(|p| match p {
            Piece::Name(n) => Some(n),
            Piece::Text(_) => None,
        })
    })
}

/// Config-time check: a non-empty argv naming only `allowed` placeholders
/// (a typo such as `{sesion}` is an error, not literal text).
pub fn check(field: &str, argv: &[String], allowed: &[&str]) -> Result<(), String> {
    if argv.first().is_none_or(|p| p.is_empty() || !names(std::slice::from_ref(p)).eq(std::iter::empty::<&str>())) {
        return Err(format!("`{field}` must start with the program to run (a name or an absolute path, no placeholder)"));
    }
    if let Some(bad) = names(argv).find(|n| !allowed.contains(n)) {
        return Err(format!("`{field}` uses the unknown placeholder {{{bad}}}; known here: {}", allowed.join(", ")));
    }
    Ok(())
}

/// Percent-encodes every byte a value may not carry verbatim.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b".:/@+-_".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Substitutes placeholders in one pass. A name `lookup` does not know is
/// an error if `complete`, else left as it is (filled by a later step).
pub fn render(argv: &[String], lookup: &dyn Fn(&str) -> Option<String>, complete: bool) -> Result<Vec<String>, SnapshotError> {
    let mut out = Vec::with_capacity(argv.len());
    for element in argv {
        let mut rendered = String::new();
        for piece in pieces(element) {
            match piece {
                Piece::Text(t) => rendered.push_str(t),
                Piece::Name(n) => match lookup(n) {
                    Some(v) => {
                        let v = escape(&v);
                        if v.len() > MAX_VALUE {
                            return Err(SnapshotError::Unsafe(format!("the value of {{{n}}} is longer than {MAX_VALUE} bytes")));
                        }
                        rendered.push_str(&v);
                    }
                    None if complete => {
                        return Err(SnapshotError::Unsafe(format!("no value for {{{n}}} in `{element}`")));
                    }
                    None => {
                        rendered.push('{');
                        rendered.push_str(n);
                        rendered.push('}');
                    }
                },
            }
        }
        if rendered.starts_with('-') && !element.starts_with('-') {
            return Err(SnapshotError::Unsafe(format!(
                "`{element}` would become the option `{rendered}`: a placeholder value may not start with `-`"
            )));
        }
        out.push(rendered);
    }
    Ok(out)
}

/// `{consistency}`: the label as the report spells it; `Pending` until the
/// session has judged it (the snapshot is made while frozen, the label is
/// final after thaw).
pub fn consistency(label: Option<Consistency>) -> &'static str {
    match label {
        None => "Pending",
        Some(Consistency::AppConsistent) => "AppConsistent",
        Some(Consistency::FileSystemConsistent) => "FileSystemConsistent",
        Some(Consistency::CrashConsistent) => "CrashConsistent",
        Some(Consistency::None) => "None",
    }
}

/// `{consistency_label}`: the same in the lower-case form GCP labels require.
pub fn consistency_label(label: Option<Consistency>) -> &'static str {
    match label {
        None => "pending",
        Some(Consistency::AppConsistent) => "app-consistent",
        Some(Consistency::FileSystemConsistent) => "file-system-consistent",
        Some(Consistency::CrashConsistent) => "crash-consistent",
        Some(Consistency::None) => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn values_cannot_add_arguments_tags_or_options() {
        let t = argv(&["aws", "--tag-specifications", "ResourceType=snapshot,Tags=[{Key=s,Value={session}}]", "{to}"]);
        let evil = |n: &str| Some(if n == "session" { "x},{Key=owner,Value=evil".into() } else { "disk 1".into() });
        let r = render(&t, &evil, true).unwrap();
        assert_eq!(r[2], "ResourceType=snapshot,Tags=[{Key=s,Value=x%7D%2C%7BKey%3Downer%2CValue%3Devil}]");
        assert_eq!(r[3], "disk%201");
        assert_eq!(r.len(), 4);
        let e = render(&t, &|_| Some("--yes".into()), true).unwrap_err();
        assert!(e.to_string().contains("may not start with `-`"), "{e}");
        // One pass: a value that looks like a placeholder stays text.
        let r = render(&argv(&["x", "{session}"]), &|_| Some("{to}".into()), false).unwrap();
        assert_eq!(r[1], "%7Bto%7D");
    }

    #[test]
    fn open_placeholders_survive_and_unknown_ones_are_config_errors() {
        let t = argv(&["az", "--ids", "{snapshot_id}", "--tags", "c={consistency}"]);
        let r = render(&t, &|n| (n == "consistency").then(|| "Pending".into()), false).unwrap();
        assert_eq!(r, argv(&["az", "--ids", "{snapshot_id}", "--tags", "c=Pending"]));
        assert!(render(&t, &|_| None, true).is_err());
        let e = check("create", &argv(&["az", "{sesion}"]), &["session"]).unwrap_err();
        assert!(e.contains("{sesion}"), "{e}");
        assert!(check("create", &argv(&["{disk}"]), &["disk"]).is_err());
        assert!(check("create", &argv(&["aws", "Tags=[{Key=a,Value={session}}]"]), &["session"]).is_ok());
    }
}
