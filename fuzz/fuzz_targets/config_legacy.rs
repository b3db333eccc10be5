//! The legacy Azure-style JSON loader, through `Config::parse` (so format
//! detection is part of it): any input that does not already start with `{`
//! gets one, so every run reaches the JSON parser.
#![no_main]
use libfuzzer_sys::fuzz_target;
use quiesce::config::Format;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if text.trim_start().starts_with('{') {
        quiesce_fuzz::check_config(text, Format::Legacy);
    } else {
        quiesce_fuzz::check_config(&format!("{{{text}"), Format::Legacy);
    }
});
