//! Host bindings for each WIT version this host implements. A new version
//! gets its own module here (generated from its frozen folder), so plugins
//! built against an older version keep loading.

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

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    /// Released WIT versions are frozen: plugins in the field were built
    /// against these exact bytes. A change belongs in a new version folder.
    #[test]
    fn released_wit_versions_are_frozen() {
        let v0_1_0 = include_bytes!("../../../../wit/v0.1.0/plugin.wit");
        let sum: String = Sha256::digest(v0_1_0).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            sum, "b6b618b6b5092f99e4820dce2a927ff842626df2ace4f7a4fde191d570df6a4c",
            "wit/v0.1.0/plugin.wit changed after release; put changes in wit/v0.2.0/"
        );
    }
}
