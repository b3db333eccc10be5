//! `connections`: byte streams to granted `tcp:HOST:PORT` and `unix:/path`
//! targets. WASI sockets stay off (and have no Unix sockets at all, which
//! is how local database admins authenticate); this resource is the only
//! way out, and the target must be granted exactly as written.
//!
//! A `unix:` target is opened beneath the grant's directory as pinned when
//! the instance was set up, and connected to through the socket's inode.
//!
//! The streams live in the instance's resource table, so dropping the
//! instance's store closes them: a database sees the session end and
//! releases what the plugin held.

use std::os::fd::AsRawFd;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use wasmtime::component::Resource;

use crate::hooks::wasm::caps::{error, io_error, Error, ErrorKind};
use crate::hooks::wasm::grants::Target;
use crate::hooks::wasm::state::HostState;
use crate::trust::proc_fd;

/// Largest single read handed to the guest.
const MAX_READ: u32 = 64 * 1024;
/// Open connections per instance.
const MAX_CONNECTIONS: usize = 16;

pub struct Connection {
    target: String,
    stream: Stream,
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Connection {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.stream {
            Stream::Tcp(s) => s.read(buf).await,
            Stream::Unix(s) => s.read(buf).await,
        }
    }
    async fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.stream {
            Stream::Tcp(s) => s.write(buf).await,
            Stream::Unix(s) => s.write(buf).await,
        }
    }
    /// Whether the other side has closed or reset the connection — asked of
    /// the kernel without reading (the plugin's data stays where it is) and
    /// without blocking.
    fn hung_up(&self) -> bool {
        let fd = match &self.stream {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        };
        let mut pfd = libc::pollfd { fd, events: libc::POLLRDHUP, revents: 0 };
        // SAFETY: one valid pollfd for an fd this connection owns; timeout 0.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match &mut self.stream {
            Stream::Tcp(s) => s.shutdown().await,
            Stream::Unix(s) => s.shutdown().await,
        }
    }
}

impl HostState {
    pub(crate) async fn connections_connect(&mut self, target: String) -> wasmtime::Result<Result<Resource<Connection>, Error>> {
        let parsed: Target = match target.parse() {
            Ok(t) => t,
            Err(e) => return Ok(Err(error(ErrorKind::Invalid, e.to_string()))),
        };
        if !self.grants.allows_connect(&parsed) {
            let msg = self.deny("connect", &target, format!("grant {parsed}"));
            return Ok(Err(error(ErrorKind::Denied, msg)));
        }
        if self.open_connections.len() >= MAX_CONNECTIONS {
            return Ok(Err(error(ErrorKind::TooLarge, format!("more than {MAX_CONNECTIONS} open connections"))));
        }
        let stream = match &parsed {
            Target::Tcp { host, port } => TcpStream::connect((host.as_str(), *port)).await.map(|s| {
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
            Target::Unix(path) => {
                // Through the pinned parent, no symlink on the way; the
                // connect names the socket's inode (`/proc/self/fd/N`), so
                // a link planted by whoever can write the socket's
                // directory redirects nothing.
                let sock = match self.pinned.open_socket(path) {
                    Ok(fd) => fd,
                    Err(refused) => return Ok(Err(self.refuse("connect", &target, &parsed.to_string(), refused))),
                };
                UnixStream::connect(proc_fd(&sock)).await.map(Stream::Unix)
            }
        };
        match stream {
            Ok(stream) => {
                tracing::debug!(plugin = %self.plugin, "connected to {target}");
                let conn = self.table.push(Connection { target, stream })?;
                self.open_connections.push(conn.rep());
                Ok(Ok(conn))
            }
            Err(e) => Ok(Err(io_error(&format!("connect {target}"), &e))),
        }
    }
}

impl HostState {
    /// The targets of the plugin's open connections that the other side has
    /// closed. A plugin holds what it quiesced (a lock, a backup session) on
    /// a connection it keeps from pre to post; once the server closed it,
    /// that hold is gone, whatever the plugin believes.
    pub(crate) fn hung_up_connections(&self) -> Vec<String> {
        self.open_connections
            .iter()
            .filter_map(|&rep| self.table.get(&Resource::<Connection>::new_borrow(rep)).ok())
            .filter(|c| c.hung_up())
            .map(|c| c.target.clone())
            .collect()
    }
}

impl HostState {
    pub(crate) async fn connection_read(&mut self, conn: Resource<Connection>, max: u32) -> wasmtime::Result<Result<Vec<u8>, Error>> {
        let c = self.table.get_mut(&conn)?;
        let mut buf = vec![0u8; max.clamp(1, MAX_READ) as usize];
        match c.read(&mut buf).await {
            Ok(n) => {
                buf.truncate(n);
                Ok(Ok(buf))
            }
            Err(e) => Ok(Err(io_error(&format!("read {}", c.target), &e))),
        }
    }

    pub(crate) async fn connection_write(&mut self, conn: Resource<Connection>, data: Vec<u8>) -> wasmtime::Result<Result<u32, Error>> {
        let c = self.table.get_mut(&conn)?;
        match c.write(&data).await {
            Ok(n) => Ok(Ok(n as u32)),
            Err(e) => Ok(Err(io_error(&format!("write {}", c.target), &e))),
        }
    }

    pub(crate) async fn connection_shutdown(&mut self, conn: Resource<Connection>) -> wasmtime::Result<Result<(), Error>> {
        let c = self.table.get_mut(&conn)?;
        match c.shutdown().await {
            Ok(()) => Ok(Ok(())),
            Err(e) => Ok(Err(io_error(&format!("shutdown {}", c.target), &e))),
        }
    }

    pub(crate) async fn connection_drop(&mut self, conn: Resource<Connection>) -> wasmtime::Result<()> {
        let rep = conn.rep();
        let c = self.table.delete(conn)?;
        self.open_connections.retain(|&r| r != rep);
        tracing::debug!(plugin = %self.plugin, "closed {}", c.target);
        Ok(())
    }
}
