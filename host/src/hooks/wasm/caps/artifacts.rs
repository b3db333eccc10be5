//! `artifacts`: named blobs the host keeps for the session, outside the
//! snapshot (a database's backup label). No grant needed: the plugin can
//! only give, and the host bounds how much.

use crate::hooks::wasm::caps::{error, Error, ErrorKind};
use crate::hooks::wasm::state::{Artifact, HostState};

/// Per instance, all artifacts together.
pub(crate) const MAX_TOTAL_BYTES: usize = 16 << 20;
pub(crate) const MAX_COUNT: usize = 64;

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl HostState {
    pub(crate) async fn artifacts_store(&mut self, name: String, data: Vec<u8>) -> wasmtime::Result<Result<(), Error>> {
        if !valid_name(&name) {
            return Ok(Err(error(
                ErrorKind::Invalid,
                format!("artifact name {name:?}: use 1-128 of [A-Za-z0-9._-], not starting with '.'"),
            )));
        }
        let others: usize = self.artifacts.iter().filter(|a| a.name != name).map(|a| a.data.len()).sum();
        let count = self.artifacts.iter().filter(|a| a.name != name).count() + 1;
        if others + data.len() > MAX_TOTAL_BYTES || count > MAX_COUNT {
            return Ok(Err(error(
                ErrorKind::TooLarge,
                format!("artifact {name}: over the host's limit of {MAX_COUNT} artifacts / {} MiB per session", MAX_TOTAL_BYTES >> 20),
            )));
        }
        tracing::info!(plugin = %self.plugin, "stored artifact {name} ({} bytes)", data.len());
        self.artifacts.retain(|a| a.name != name);
        self.artifacts.push(Artifact { name, data });
        Ok(Ok(()))
    }
}
