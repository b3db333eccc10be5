//! The native TOML loader, through `Config::parse`: an input that starts
//! with `{` (which detection reads as legacy JSON) is prefixed with a TOML
//! comment line, so every run reaches the TOML parser.
#![no_main]
use libfuzzer_sys::fuzz_target;
use quiesce::config::Format;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if text.trim_start().starts_with('{') {
        quiesce_fuzz::check_config(&format!("#\n{text}"), Format::Native);
    } else {
        quiesce_fuzz::check_config(text, Format::Native);
    }
});
