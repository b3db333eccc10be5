//! `log`: structured records into the host's log and the call's events,
//! within the per-call output budget (a record over it is counted, not
//! kept, nor logged).

use crate::hooks::wasm::state::{HostState, LogLevel, LogRecord, LogSource};

impl HostState {
    pub(crate) async fn log_log(&mut self, level: LogLevel, message: String, fields: Vec<(String, String)>) -> wasmtime::Result<()> {
        let kv = fields.iter().map(|(k, v)| format!(" {k}={v:?}")).collect::<String>();
        let record = LogRecord { level, source: LogSource::Log, message, fields };
        let mut out = self.output.lock();
        if !out.push_log(record) {
            return Ok(());
        }
        let Some(LogRecord { message, .. }) = out.records.last() else { return Ok(()) };
        let plugin = &self.plugin;
        match level {
            LogLevel::Trace => tracing::trace!(plugin = %plugin, "{message}{kv}"),
            LogLevel::Debug => tracing::debug!(plugin = %plugin, "{message}{kv}"),
            LogLevel::Info => tracing::info!(plugin = %plugin, "{message}{kv}"),
            LogLevel::Warn => tracing::warn!(plugin = %plugin, "{message}{kv}"),
            LogLevel::Error => tracing::error!(plugin = %plugin, "{message}{kv}"),
        }
        Ok(())
    }
}
