//! The capabilities glued to each WIT version's generated host traits. The
//! imports did not change between versions, so the glue is one macro: each
//! method converts the version's types to the host's and calls the one
//! implementation in `caps`.

use wasmtime::component::Resource;

use super::connections::Connection;
use super::exec::ExecOutput;
use super::{Error, ErrorKind};
use crate::hooks::wasm::state::{HostState, LogLevel};

macro_rules! glue_version {
    ($v:ident) => {
        mod $v {
            use super::*;
            use crate::hooks::wasm::bindings::$v::quiesce::plugin as w;

            fn to_wit(e: Error) -> w::types::Error {
                let kind = match e.kind {
                    ErrorKind::Denied => w::types::ErrorKind::Denied,
                    ErrorKind::NotFound => w::types::ErrorKind::NotFound,
                    ErrorKind::Refused => w::types::ErrorKind::Refused,
                    ErrorKind::Invalid => w::types::ErrorKind::Invalid,
                    ErrorKind::TooLarge => w::types::ErrorKind::TooLarge,
                    ErrorKind::Io => w::types::ErrorKind::Io,
                };
                w::types::Error { kind, message: e.message }
            }

            impl w::types::Host for HostState {}

            impl w::log::Host for HostState {
                async fn log(&mut self, level: w::log::Level, message: String, fields: Vec<(String, String)>) -> wasmtime::Result<()> {
                    let level = match level {
                        w::log::Level::Trace => LogLevel::Trace,
                        w::log::Level::Debug => LogLevel::Debug,
                        w::log::Level::Info => LogLevel::Info,
                        w::log::Level::Warn => LogLevel::Warn,
                        w::log::Level::Error => LogLevel::Error,
                    };
                    self.log_log(level, message, fields).await
                }
            }

            impl w::clock::Host for HostState {
                async fn monotonic_now_ns(&mut self) -> wasmtime::Result<u64> {
                    self.clock_monotonic_now_ns().await
                }
                async fn sleep_ms(&mut self, ms: u64) -> wasmtime::Result<()> {
                    self.clock_sleep_ms(ms).await
                }
            }

            impl w::connections::Host for HostState {
                async fn connect(&mut self, target: String) -> wasmtime::Result<Result<Resource<Connection>, w::types::Error>> {
                    Ok(self.connections_connect(target).await?.map_err(to_wit))
                }
            }

            impl w::connections::HostConnection for HostState {
                async fn read(&mut self, conn: Resource<Connection>, max: u32) -> wasmtime::Result<Result<Vec<u8>, w::types::Error>> {
                    Ok(self.connection_read(conn, max).await?.map_err(to_wit))
                }
                async fn write(&mut self, conn: Resource<Connection>, data: Vec<u8>) -> wasmtime::Result<Result<u32, w::types::Error>> {
                    Ok(self.connection_write(conn, data).await?.map_err(to_wit))
                }
                async fn shutdown(&mut self, conn: Resource<Connection>) -> wasmtime::Result<Result<(), w::types::Error>> {
                    Ok(self.connection_shutdown(conn).await?.map_err(to_wit))
                }
                async fn drop(&mut self, conn: Resource<Connection>) -> wasmtime::Result<()> {
                    self.connection_drop(conn).await
                }
            }

            impl w::files::Host for HostState {
                async fn read_file(&mut self, path: String) -> wasmtime::Result<Result<Vec<u8>, w::types::Error>> {
                    Ok(self.files_read_file(path).await?.map_err(to_wit))
                }
            }

            impl w::artifacts::Host for HostState {
                async fn store(&mut self, name: String, data: Vec<u8>) -> wasmtime::Result<Result<(), w::types::Error>> {
                    Ok(self.artifacts_store(name, data).await?.map_err(to_wit))
                }
            }

            impl w::exec::Host for HostState {
                async fn run(&mut self, path: String, args: Vec<String>) -> wasmtime::Result<Result<w::exec::ExecOutput, w::types::Error>> {
                    Ok(self
                        .exec_run(path, args)
                        .await?
                        .map(|ExecOutput { status, output, truncated }| w::exec::ExecOutput { status, output, truncated })
                        .map_err(to_wit))
                }
            }
        }
    };
}

glue_version!(v0_1_0);
glue_version!(v0_2_0);
