//! `log`: structured records into the host's log and the call's events,
//! within the per-call output budget (a record over it is counted, not
//! kept, nor logged).

use crate::hooks::wasm::bindings::v0_1_0::quiesce::plugin::log::{self, Level};
use crate::hooks::wasm::state::{HostState, LogLevel, LogRecord, LogSource};

impl log::Host for HostState {
    async fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) -> wasmtime::Result<()> {
        let level = match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
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
