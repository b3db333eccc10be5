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
