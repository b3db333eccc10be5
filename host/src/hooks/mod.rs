//! Hooks: the application-specific work done before the freeze (quiesce)
//! and after the thaw (resume).
//!
//! Each kind of hook lives in its own module and reports what happened in
//! its own terms; the session maps those outcomes to report codes.
//! [`script`] runs legacy shell-script hooks; [`wasm`] runs sandboxed
//! WebAssembly plugins.

pub mod script;
pub mod wasm;

/// Bytes of output the host keeps per hook call — a script attempt's
/// stdout+stderr, a plugin call's log records, printed lines and grant
/// denials, an `exec`'s output — and the most any single message a hook
/// returns may put into the report. Everything beyond is counted, not kept.
///
/// Why 64 KiB: hooks that work say a few lines; a failing one's last
/// screenful is what an admin needs to see at 2 a.m. The cap bounds what a
/// hostile or broken hook can make the host hold in memory while the file
/// systems are frozen (logs wait in memory then) and write to the log and
/// the report afterwards: a handful of hooks × 64 KiB stays a readable
/// report, where an uncapped one produced 100 MB.
pub const OUTPUT_CAP: usize = 64 * 1024;

/// Cuts `s` to at most `cap` bytes (on a character boundary) and says how
/// much was cut: `"<kept>… (N bytes dropped)"`. The suffix is on top of `cap`.
pub fn truncate_message(mut s: String, cap: usize) -> String {
    if s.len() <= cap {
        return s;
    }
    let mut end = cap;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let dropped = s.len() - end;
    s.truncate(end);
    s.push_str(&format!("… ({dropped} bytes dropped)"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_short_messages_and_cuts_long_ones_on_a_char_boundary() {
        assert_eq!(truncate_message("short".into(), 10), "short");
        assert_eq!(truncate_message("abcdef".into(), 3), "abc… (3 bytes dropped)");
        // 'é' is two bytes: a cut inside it backs off to before it.
        assert_eq!(truncate_message("aéb".into(), 2), "a… (3 bytes dropped)");
        assert_eq!(truncate_message("é".into(), 0), "… (2 bytes dropped)");
    }
}
