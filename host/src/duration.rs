//! The one place durations from users are parsed, validated and converted.
//!
//! Every duration a user can write (`--max-freeze`, `freeze.max_freeze_secs`,
//! hook `timeout_secs`, `timeoutInSeconds`, `[snapshot] timeout_secs`,
//! `retry_delay_ms`) goes through here, so that nothing the session later adds
//! to an `Instant` can overflow: `Duration::from_secs_f64(1e30)` panics, and
//! `Instant::now() + Duration::from_secs(10u64.pow(19))` panics too (issue 8).
//! Values are refused with a usage error naming the value and the allowed
//! range, never clamped silently.
//!
//! The session path still does not trust that every duration came through
//! here (an embedder builds `SessionOptions` itself): [`deadline`] saturates
//! instead of panicking, whatever it is given.

use std::time::{Duration, Instant};

/// The shortest duration accepted. Below a millisecond the guardian's poll
/// timeouts and the report (both in milliseconds) would read it as zero,
/// which would mean "no time at all", not "very short".
pub const MIN: Duration = Duration::from_millis(1);

/// The longest duration accepted anywhere: one day.
///
/// Far longer than any sane freeze, hook or snapshot (the legacy framework
/// caps hook timeouts at 1800 s and admins complained that is too short,
/// Azure #706, so we must stay well above it), and far below the ~292 years
/// at which `Instant + Duration` overflows or the years at which tokio's timer
/// wheel saturates. A freeze of a day is already an outage; the point of the
/// cap is that a typo (`1e19`) is refused instead of panicking mid-session.
pub const MAX: Duration = Duration::from_secs(MAX_SECS);

/// [`MAX`] in whole seconds, for messages and config defaults.
pub const MAX_SECS: u64 = 86_400;

/// A user-supplied duration that is not a usable number of seconds.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DurationError {
    #[error("{}{value:?} is not a number of seconds (write e.g. 30 or 2.5; allowed: {} to {MAX_SECS} s)", field_prefix(field), MIN.as_secs_f64())]
    NotANumber { field: Option<String>, value: String },
    #[error("{}{value} s is out of range (allowed: {} to {MAX_SECS} s)", field_prefix(field), MIN.as_secs_f64())]
    OutOfRange { field: Option<String>, value: String },
}

fn field_prefix(field: &Option<String>) -> String {
    field.as_ref().map(|f| format!("`{f}` = ")).unwrap_or_default()
}

/// A command-line flag in seconds (`--max-freeze 2.5`): a finite number in
/// [`MIN`]..=[`MAX`]. Meant for clap's `value_parser`; clap names the flag.
pub fn parse_secs(s: &str) -> Result<Duration, DurationError> {
    let v: f64 = s.trim().parse().map_err(|_| DurationError::NotANumber { field: None, value: s.to_string() })?;
    in_range(None, v, s)
}

/// A configuration field in whole seconds (`timeout_secs = 30`): [`MIN`]..=[`MAX`].
/// `field` names it in the message (`hook "db": timeout_secs`).
pub fn checked_secs(field: &str, secs: u64) -> Result<Duration, DurationError> {
    let d = Duration::from_secs(secs);
    if (MIN..=MAX).contains(&d) {
        Ok(d)
    } else {
        Err(DurationError::OutOfRange { field: Some(field.to_string()), value: secs.to_string() })
    }
}

/// A configuration field in (possibly fractional) seconds: finite, [`MIN`]..=[`MAX`].
pub fn checked_secs_f64(field: &str, secs: f64) -> Result<Duration, DurationError> {
    in_range(Some(field), secs, &secs.to_string())
}

/// A configuration delay in milliseconds (`retry_delay_ms`): zero is allowed
/// (no delay), the maximum is [`MAX`].
pub fn checked_delay_ms(field: &str, ms: u64) -> Result<Duration, DurationError> {
    let d = Duration::from_millis(ms);
    if d <= MAX {
        Ok(d)
    } else {
        Err(DurationError::OutOfRange { field: Some(field.to_string()), value: format!("{}", ms as f64 / 1e3) })
    }
}

fn in_range(field: Option<&str>, v: f64, shown: &str) -> Result<Duration, DurationError> {
    let field = field.map(str::to_string);
    if v.is_nan() {
        return Err(DurationError::NotANumber { field, value: shown.to_string() });
    }
    // Compare as f64 before converting: `Duration::from_secs_f64` panics on
    // values it cannot represent.
    if !(MIN.as_secs_f64()..=MAX.as_secs_f64()).contains(&v) {
        return Err(DurationError::OutOfRange { field, value: shown.to_string() });
    }
    Ok(Duration::from_secs_f64(v))
}

/// How far a saturated deadline lies: 30 years, tokio's own "far future"
/// (its timer adds to a deadline internally, so the largest representable
/// instant would overflow there).
pub const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 86_400);

/// `start + d`, with `d` capped at [`FAR_FUTURE`]. Never panics; a saturated
/// deadline is one that is never reached, which is what an absurdly long
/// duration means.
pub fn deadline(start: Instant, d: Duration) -> Instant {
    start.checked_add(d.min(FAR_FUTURE)).unwrap_or_else(|| far_after(start, |s, d| s.checked_add(d)))
}

/// [`deadline`] for tokio's clock.
pub fn deadline_tokio(start: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    start.checked_add(d.min(FAR_FUTURE)).unwrap_or_else(|| far_after(start, |s, d| s.checked_add(d)))
}

/// The largest `start + 2^k s` that fits; `start` itself if nothing does.
fn far_after<I: Copy>(start: I, add: impl Fn(I, Duration) -> Option<I>) -> I {
    (0..64).rev().find_map(|k| add(start, Duration::from_secs(1u64 << k))).unwrap_or(start)
}

/// Milliseconds with microsecond resolution, as the report shows them. The
/// one conversion the report, the session and the guardian share.
pub fn ms(d: Duration) -> f64 {
    round_ms(d.as_secs_f64() * 1e3)
}

/// Milliseconds between two monotonic nanosecond stamps (zero if they are
/// out of order), rounded like [`ms`].
pub fn ms_between_ns(start_ns: u64, end_ns: u64) -> f64 {
    ms(Duration::from_nanos(end_ns.saturating_sub(start_ns)))
}

/// A millisecond figure rounded to microseconds (for differences of [`ms`] values).
pub fn round_ms(ms: f64) -> f64 {
    (ms * 1e3).round() / 1e3
}

/// A whole number of milliseconds for a poll(2) timeout: rounded up (so a
/// wait never ends before its deadline) and capped at `i32::MAX`.
pub fn poll_timeout_ms(d: Duration) -> i32 {
    let whole = d.as_millis() + u128::from(!d.subsec_nanos().is_multiple_of(1_000_000));
    i32::try_from(whole).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_values_in_range_parse() {
        assert_eq!(parse_secs("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_secs("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_secs("86400"), Ok(MAX));
        assert_eq!(parse_secs("0.001"), Ok(MIN));
    }

    #[test]
    fn cli_values_that_would_panic_or_mean_nothing_are_refused_with_the_range() {
        for bad in ["1e30", "1e19", "inf", "-inf", "86401", "0", "-1", "0.0001", "1e-300"] {
            let e = parse_secs(bad).unwrap_err();
            assert!(matches!(e, DurationError::OutOfRange { .. }), "{bad}: {e:?}");
            let msg = e.to_string();
            assert!(msg.contains(bad) && msg.contains("86400"), "{msg}");
        }
        for bad in ["NaN", "abc", "", "1s", "0x10"] {
            let e = parse_secs(bad).unwrap_err();
            assert!(matches!(e, DurationError::NotANumber { .. }), "{bad}: {e:?}");
        }
    }

    #[test]
    fn config_values_name_the_field() {
        assert_eq!(checked_secs("timeout_secs", 3600), Ok(Duration::from_secs(3600)), "no 1800 s cap (Azure #706)");
        let e = checked_secs("freeze.max_freeze_secs", 10_000_000_000_000_000_000).unwrap_err().to_string();
        assert!(e.contains("`freeze.max_freeze_secs` = 10000000000000000000 s is out of range"), "{e}");
        assert!(checked_secs("x", 0).is_err());
        assert!(checked_secs_f64("x", f64::INFINITY).is_err());
        assert!(checked_secs_f64("x", f64::NAN).is_err());
        assert_eq!(checked_delay_ms("retry_delay_ms", 0), Ok(Duration::ZERO));
        assert!(checked_delay_ms("retry_delay_ms", u64::MAX).is_err());
    }

    #[test]
    fn deadlines_saturate_instead_of_panicking() {
        let now = Instant::now();
        let far = deadline(now, Duration::MAX);
        assert_eq!(far, now + FAR_FUTURE);
        assert_eq!(deadline(now, Duration::from_secs(1)), now + Duration::from_secs(1));
        let tnow = tokio::time::Instant::now();
        assert!(deadline_tokio(tnow, Duration::MAX) > tnow);
    }

    #[test]
    fn millisecond_conversions() {
        assert_eq!(ms(Duration::from_nanos(1_234_567)), 1.235);
        assert_eq!(ms_between_ns(10, 5), 0.0);
        assert_eq!(poll_timeout_ms(Duration::from_micros(1500)), 2);
        assert_eq!(poll_timeout_ms(Duration::MAX), i32::MAX);
    }
}
