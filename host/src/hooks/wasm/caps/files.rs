//! `files`: read-only access to files named by `file:` grants or below
//! `dir:` grants.
//!
//! The request is checked lexically before anything is opened (the host is
//! root: opening a device node can have effects), then the real path of the
//! opened file is checked again, so a symlink inside a granted directory
//! cannot lead outside it.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::hooks::wasm::bindings::v0_1_0::quiesce::plugin::files;
use crate::hooks::wasm::bindings::v0_1_0::quiesce::plugin::types::{Error, ErrorKind};
use crate::hooks::wasm::caps::{error, io_error};
use crate::hooks::wasm::grants::normal_path;
use crate::hooks::wasm::state::HostState;

/// Largest file a plugin may read (credentials, configs — not data).
pub(crate) const MAX_FILE_BYTES: u64 = 16 << 20;

impl files::Host for HostState {
    async fn read_file(&mut self, path: String) -> wasmtime::Result<Result<Vec<u8>, Error>> {
        let Some(p) = normal_path(Path::new(&path)) else {
            return Ok(Err(error(ErrorKind::Invalid, format!("read-file {path:?}: the path must be absolute, without `..`"))));
        };
        if !self.grants.allows_file(&p) {
            let msg = self.deny("read-file", &path, format!("grant file:{} or dir: of a parent", p.display()));
            return Ok(Err(error(ErrorKind::Denied, msg)));
        }
        // O_NONBLOCK: a FIFO at a granted path must not hang the call;
        // O_NOCTTY: nor may a tty become the host's terminal.
        let file = match OpenOptions::new().read(true).custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK).open(&p) {
            Ok(f) => f,
            Err(e) => return Ok(Err(io_error(&format!("read-file {path}"), &e))),
        };
        let real = match std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
            Ok(r) => r,
            Err(e) => return Ok(Err(io_error(&format!("read-file {path}"), &e))),
        };
        if !self.grants.allows_real_file(&real) {
            let msg = self.deny("read-file", &path, format!("a grant covering {} (where the path leads)", real.display()));
            return Ok(Err(error(ErrorKind::Denied, msg)));
        }
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => return Ok(Err(io_error(&format!("read-file {path}"), &e))),
        };
        if !meta.is_file() {
            return Ok(Err(error(ErrorKind::Invalid, format!("read-file {path}: not a regular file"))));
        }
        if meta.len() > MAX_FILE_BYTES {
            return Ok(Err(error(ErrorKind::TooLarge, format!("read-file {path}: {} bytes, the limit is {MAX_FILE_BYTES}", meta.len()))));
        }
        let mut data = Vec::with_capacity(meta.len() as usize);
        match file.take(MAX_FILE_BYTES + 1).read_to_end(&mut data) {
            Ok(_) if data.len() as u64 > MAX_FILE_BYTES => {
                Ok(Err(error(ErrorKind::TooLarge, format!("read-file {path}: grew past the limit of {MAX_FILE_BYTES} bytes"))))
            }
            Ok(_) => Ok(Ok(data)),
            Err(e) => Ok(Err(io_error(&format!("read-file {path}"), &e))),
        }
    }
}
