//! What a `.wasm` file is, and whether it is a quiesce plugin this host can
//! run — with a message that says what it is and what was expected.

use wasmtime::component::Component;
use wasmtime::Engine;

use super::bindings::WitVersion;
use super::HOOKS_INTERFACE;

const WASM_MAGIC: &[u8; 4] = b"\0asm";

/// From the 8-byte preamble alone, before anything is compiled.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Component,
    /// Why it is not a component.
    Other(String),
}

pub(crate) fn expected() -> String {
    format!(
        "expected a WebAssembly component exporting {HOOKS_INTERFACE}@{} (built for wasm32-wasip2 with quiesce-plugin-sdk)",
        WitVersion::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(" or @")
    )
}

pub(crate) fn classify(bytes: &[u8]) -> Kind {
    if bytes.len() < 8 || &bytes[..4] != WASM_MAGIC {
        let start: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
        let what = if bytes.is_empty() { "an empty file".to_owned() } else { format!("not a WebAssembly file (starts with {start})") };
        return Kind::Other(format!("{what}; {}", expected()));
    }
    // Preamble: magic, then version (u16) and layer (u16). Layer 0 is a core
    // module, layer 1 a component.
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    let layer = u16::from_le_bytes([bytes[6], bytes[7]]);
    match layer {
        1 => Kind::Component,
        0 => Kind::Other(format!(
            "a core WebAssembly module (version {version}), not a component: build it with `cargo build --target wasm32-wasip2` \
             (or wrap it with `wasm-tools component new`); {}",
            expected()
        )),
        other => Kind::Other(format!("a WebAssembly binary of unknown layer {other}; {}", expected())),
    }
}

/// The version part of `quiesce:plugin/NAME@VERSION`, if `name` is one.
fn quiesce_version(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("quiesce:plugin/")?;
    Some(rest.split_once('@').map_or("", |(_, v)| v))
}

/// Which version of the world a compiled component targets, if this host
/// implements it; otherwise what it is and the fix.
pub(crate) fn check_world(engine: &Engine, component: &Component) -> Result<WitVersion, String> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_owned()).collect();

    let hooks: Vec<&String> = exports.iter().filter(|n| n.starts_with(&format!("{HOOKS_INTERFACE}@")) || **n == HOOKS_INTERFACE).collect();
    let supported = WitVersion::supported_list();
    if let Some(version) = hooks.iter().find_map(|n| quiesce_version(n).and_then(WitVersion::parse)) {
        // Imports of another quiesce version would fail to link anyway;
        // say so in our words.
        if let Some(bad) = imports.iter().find(|n| quiesce_version(n).is_some_and(|v| v != version.as_str())) {
            return Err(format!("exports {HOOKS_INTERFACE}@{version} but imports {bad}; a plugin speaks one version of quiesce:plugin"));
        }
        return Ok(version);
    }
    if let Some(other) = hooks.first() {
        let v = quiesce_version(other).unwrap_or("");
        return Err(format!(
            "targets quiesce:plugin@{} (exports {other}); this host implements quiesce:plugin@{supported} only: \
             rebuild the plugin against a quiesce-plugin-sdk for one of those or upgrade quiesce",
            if v.is_empty() { "(unversioned)" } else { v }
        ));
    }
    let listed = if exports.is_empty() { "nothing".to_owned() } else { exports.join(", ") };
    Err(format!("a component of another world: it exports {listed}, not a quiesce plugin; {}", expected()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_tells_modules_components_and_junk_apart() {
        assert_eq!(classify(b"\0asm\x0d\0\x01\0rest"), Kind::Component);
        let Kind::Other(m) = classify(b"\0asm\x01\0\0\0") else { panic!() };
        assert!(m.contains("core WebAssembly module") && m.contains("quiesce:plugin/hooks@0.1.0 or @0.2.0"), "{m}");
        let Kind::Other(m) = classify(b"#!/bin/sh\nexit 0\n") else { panic!() };
        assert!(m.contains("not a WebAssembly file (starts with 23 21 2f 62"), "{m}");
        let Kind::Other(m) = classify(b"") else { panic!() };
        assert!(m.contains("empty file"), "{m}");
    }

    #[test]
    fn quiesce_versions_are_read_from_interface_names() {
        assert_eq!(quiesce_version("quiesce:plugin/hooks@0.9.0"), Some("0.9.0"));
        assert_eq!(quiesce_version("quiesce:plugin/log"), Some(""));
        assert_eq!(quiesce_version("wasi:cli/run@0.2.0"), None);
    }
}
