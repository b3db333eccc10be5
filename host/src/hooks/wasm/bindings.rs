//! Host bindings for each WIT version this host implements, and the one
//! name the rest of the host knows them by ([`WitVersion`]). A new version
//! gets its own module here (generated from its frozen folder), so plugins
//! built against an older version keep loading; the imports are the same
//! capabilities in every version, implemented once (`caps`) and glued to
//! each version's traits by `caps::versions`.

use serde::Serialize;

pub(crate) mod v0_1_0 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1.0",
        world: "quiesce-plugin",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "quiesce:plugin/connections.connection": crate::hooks::wasm::caps::connections::Connection,
        },
    });
}

pub(crate) mod v0_2_0 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.2.0",
        world: "quiesce-plugin",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "quiesce:plugin/connections.connection": crate::hooks::wasm::caps::connections::Connection,
        },
    });
}

/// The WIT versions of `quiesce:plugin` this host runs, oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum WitVersion {
    /// `describe`, `pre`, `post`; the label is a string.
    #[serde(rename = "0.1.0")]
    V0_1_0,
    /// Adds `check`, a typed label, and `post` saying whether the quiesce held.
    #[serde(rename = "0.2.0")]
    V0_2_0,
}

impl WitVersion {
    /// Every version this host runs, oldest first.
    pub const ALL: [WitVersion; 2] = [WitVersion::V0_1_0, WitVersion::V0_2_0];
    /// The newest: what the SDK and `quiesce plugin new` build against.
    pub const NEWEST: WitVersion = WitVersion::V0_2_0;

    pub fn as_str(self) -> &'static str {
        match self {
            WitVersion::V0_1_0 => "0.1.0",
            WitVersion::V0_2_0 => "0.2.0",
        }
    }

    pub fn parse(v: &str) -> Option<WitVersion> {
        WitVersion::ALL.into_iter().find(|w| w.as_str() == v)
    }

    /// Whether plugins of this version export `check`.
    pub fn has_check(self) -> bool {
        self >= WitVersion::V0_2_0
    }

    /// "0.1.0 and 0.2.0", for messages.
    pub fn supported_list() -> String {
        let all: Vec<&str> = WitVersion::ALL.iter().map(|v| v.as_str()).collect();
        match all.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
            _ => all.join(""),
        }
    }
}

impl std::fmt::Display for WitVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    fn sha256(bytes: &[u8]) -> String {
        Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Released WIT versions are frozen: plugins in the field were built
    /// against these exact bytes. A change belongs in a new version folder.
    #[test]
    fn released_wit_versions_are_frozen() {
        assert_eq!(
            sha256(include_bytes!("../../../../wit/v0.1.0/plugin.wit")),
            "b6b618b6b5092f99e4820dce2a927ff842626df2ace4f7a4fde191d570df6a4c",
            "wit/v0.1.0/plugin.wit changed after release; put changes in a new version folder"
        );
        assert_eq!(
            sha256(include_bytes!("../../../../wit/v0.2.0/plugin.wit")),
            "5a6d8f7e29dd266ea05ef1b86dca21ba220d84ed671b97344678333ab73dcf0b",
            "wit/v0.2.0/plugin.wit changed after release; put changes in a new version folder"
        );
    }

    /// The SDK builds against its own copy of the newest WIT (so it builds
    /// outside this tree); the copy must be the released file, byte for byte.
    #[test]
    fn the_sdk_carries_the_newest_wit_unchanged() {
        assert_eq!(
            include_bytes!("../../../../plugins/sdk/wit/plugin.wit").as_slice(),
            include_bytes!("../../../../wit/v0.2.0/plugin.wit").as_slice(),
            "plugins/sdk/wit/plugin.wit differs from wit/v0.2.0/plugin.wit: copy the released file into the SDK"
        );
    }

    #[test]
    fn versions_are_named_and_listed_in_order() {
        use super::WitVersion;
        assert_eq!(WitVersion::parse("0.2.0"), Some(WitVersion::V0_2_0));
        assert_eq!(WitVersion::parse("0.9.0"), None);
        assert_eq!(WitVersion::supported_list(), "0.1.0 and 0.2.0");
        assert!(WitVersion::V0_2_0.has_check() && !WitVersion::V0_1_0.has_check());
    }
}
