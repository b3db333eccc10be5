//! `files`: read-only access to files named by `file:` grants or below
//! `dir:` grants.
//!
//! The request is checked lexically against the grants, then opened
//! beneath the grant's directory as pinned when the instance was set up
//! ([`PinnedGrants::open_file`](crate::hooks::wasm::pinned::PinnedGrants)):
//! no symlink, no `..`, no other mount, regular files only — a device node
//! or FIFO under a grant is refused before anything opens it for real.

use std::io::Read;
use std::path::Path;

use crate::hooks::wasm::caps::{error, io_error, Error, ErrorKind};
use crate::hooks::wasm::grants::normal_path;
use crate::hooks::wasm::pinned::Refused;
use crate::hooks::wasm::state::HostState;

/// Largest file a plugin may read (credentials, configs — not data).
pub(crate) const MAX_FILE_BYTES: u64 = 16 << 20;

impl HostState {
    pub(crate) async fn files_read_file(&mut self, path: String) -> wasmtime::Result<Result<Vec<u8>, Error>> {
        let Some(p) = normal_path(Path::new(&path)) else {
            return Ok(Err(error(ErrorKind::Invalid, format!("read-file {path:?}: the path must be absolute, without `..`"))));
        };
        let file = match self.pinned.open_file(&p) {
            Ok(f) => f,
            Err(refused) => return Ok(Err(self.refuse("read-file", &path, &format!("file:{}", p.display()), refused))),
        };
        // Read at most one byte past the cap: the size `fstat` reported
        // may have grown since.
        let mut data = Vec::new();
        match file.take(MAX_FILE_BYTES + 1).read_to_end(&mut data) {
            Ok(_) if data.len() as u64 > MAX_FILE_BYTES => {
                Ok(Err(error(ErrorKind::TooLarge, format!("read-file {path}: larger than the limit of {MAX_FILE_BYTES} bytes"))))
            }
            Ok(_) => Ok(Ok(data)),
            Err(e) => Ok(Err(io_error(&format!("read-file {path}"), &e))),
        }
    }
}

impl HostState {
    /// What the guest sees for a path the pinned grants refused; refusals
    /// of the grants' reach (not granted, a symlink, another mount, an
    /// unpinnable grant) are recorded as grant denials for the report.
    pub(crate) fn refuse(&mut self, capability: &'static str, requested: &str, grant: &str, refused: Refused) -> Error {
        let needed = match &refused {
            Refused::NotGranted => format!("grant {grant}{}", if capability == "read-file" { " or dir: of a parent" } else { "" }),
            Refused::Symlink(_) | Refused::OtherMount | Refused::Unpinned(_) => format!("{refused}"),
            Refused::WrongType(..) => return error(ErrorKind::Invalid, format!("{capability} {requested}: {refused}")),
            Refused::NotFound => return error(ErrorKind::NotFound, format!("{capability} {requested}: {refused}")),
            Refused::Io(e) => return io_error(&format!("{capability} {requested}"), e),
        };
        error(ErrorKind::Denied, self.deny(capability, requested, needed))
    }
}
