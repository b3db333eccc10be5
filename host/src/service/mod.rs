//! `quiesce serve`: a local service that lets any backup agent drive a
//! session in two calls, `begin` and `end`, with its own snapshot between.
//!
//! Agents (qemu-ga's fsfreeze hook, the Azure extension's pre/post scripts,
//! Velero's exec hooks) call two separate commands, so what a pre hook set
//! up — a plugin instance and the database session and lock it holds — must
//! outlive the first call. The service holds it. It runs the very same
//! session as `quiesce snapshot` ([`crate::session::Session::begin`] and
//! [`crate::session::Begun::end`]); nothing here re-implements a step.
//!
//! Pieces: [`protocol`] (the wire format, v1, one JSON object per line),
//! [`listen`] (the socket: bound 0600, or handed over by systemd), [`peer`]
//! (SO_PEERCRED authorisation), `slot` (the worker thread that owns the one
//! session, its hold deadline and the config), `server` (the accept loop and
//! a task per connection), [`client`] (a blocking client for the commands
//! and for embedders).
//!
//! Nothing is left behind when the service dies mid-session: the freeze
//! guardian thaws when its host goes (however it dies), plugin connections
//! close with the process so the databases release their locks, and the
//! run-dir lock is an flock that dies with its holders. A Redis
//! `CLIENT PAUSE` is the exception: it is not tied to a connection and ends
//! only at its own expiry (the redis plugin's `pause_ms`, by default the
//! hook's `timeout_secs`). For a two-phase session set `pause_ms` just
//! above the session's hold time: the pause then lasts until `end`, and
//! ends by itself soon after a service that died.

pub mod client;
pub mod commands;
pub mod listen;
pub mod peer;
pub mod protocol;
mod server;
mod slot;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

pub use client::{socket_from_env, Client, ClientError, DEFAULT_SOCKET, SOCKET_ENV};

use crate::config::Config;
use crate::interrupt::Interrupt;
use slot::{lock, Job, Shared, Worker};

/// `quiesce serve` arguments.
#[derive(Debug, Default, Clone)]
pub struct ServeOptions {
    /// `--config FILE`, else the default config (native, then legacy).
    pub config: Option<PathBuf>,
    /// `--socket PATH`, else `$QUIESCE_SOCKET`, `[service] socket`, `/run/quiesce/quiesce.sock`.
    pub socket: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Listen(#[from] listen::ListenError),
    #[error("cannot start the service: {0}")]
    Start(String),
}

/// Runs the service until SIGTERM or SIGINT; a begun session is then
/// aborted (thaw, post hooks, report). SIGHUP reloads the config.
pub fn serve(opts: ServeOptions) -> Result<(), ServiceError> {
    // Before any thread exists: it clears LISTEN_* from the environment.
    let activated = listen::from_systemd()?;
    let config_path = opts.config.or_else(Config::default_path).map(|p| std::path::absolute(&p).unwrap_or(p));
    let shared = Arc::new(Mutex::new(Shared::default()));
    let (trigger, interrupt) = Interrupt::new();
    let trigger = Arc::new(trigger);
    crate::freeze::reap_in_background();
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();

    // The worker thread loads the config (and warms its plugins) first.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let worker = {
        let shared = shared.clone();
        let interrupt = interrupt.clone();
        let stop = StopWhenGone(trigger.clone());
        std::thread::Builder::new()
            .name("quiesce-session".into())
            .spawn(move || {
                let _stop = stop;
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("cannot start the session runtime: {e}");
                        return;
                    }
                };
                let worker = rt.block_on(async { Worker::new(shared, config_path, interrupt) });
                let _ = ready_tx.send(());
                rt.block_on(worker.run(jobs_rx));
            })
            .map_err(|e| ServiceError::Start(format!("cannot start the session thread: {e}")))?
    };
    if ready_rx.recv().is_err() {
        return Err(ServiceError::Start("the session thread ended at start (see the log)".into()));
    }

    let (gid, config_socket) = {
        let s = lock(&shared);
        (s.gid, s.socket.clone())
    };
    let listening = match activated {
        Some(l) => l,
        None => {
            let path = opts
                .socket
                .or_else(|| std::env::var_os(SOCKET_ENV).filter(|s| !s.is_empty()).map(PathBuf::from))
                .or(config_socket)
                .unwrap_or_else(|| DEFAULT_SOCKET.into());
            match listen::bind(&path, gid.map(nix::unistd::Gid::from_raw)) {
                Ok(l) => l,
                Err(e) => {
                    trigger.fire("start-up failure");
                    drop(jobs_tx);
                    let _ = worker.join();
                    return Err(e.into());
                }
            }
        }
    };
    tracing::info!(
        "quiesce service listening on {}{} (pid {})",
        listening.path.display(),
        if listening.activated() { " (socket activation)" } else { "" },
        std::process::id()
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ServiceError::Start(format!("cannot start the async runtime: {e}")))?;
    let result = rt.block_on(async {
        let std_listener = listening.listener.try_clone().map_err(|e| ServiceError::Start(format!("listener: {e}")))?;
        let listener = tokio::net::UnixListener::from_std(std_listener).map_err(|e| ServiceError::Start(format!("listener: {e}")))?;
        signals(trigger, jobs_tx.clone(), shared.clone(), &listening)?;
        let ctx = Arc::new(server::Ctx { shared: shared.clone(), jobs: jobs_tx });
        server::accept_loop(listener, ctx, interrupt).await;
        Ok(())
    });
    // Stop taking connections, then let the worker end what it holds.
    listening.remove();
    drop(rt);
    let worker_ended = worker.join();
    // A hold an aborted external session left: written out now, unless the
    // log's file system is still frozen (then it cannot be, and is lost).
    let _ = crate::logging::gate().release_unless_frozen();
    if worker_ended.is_err() {
        // Its `Begun` was dropped while unwinding: the guardian thawed, the
        // plugins' connections closed, the lock went. Exiting non-zero lets
        // systemd (`Restart=on-failure`) start a fresh service.
        return Err(ServiceError::Start("the session thread panicked (see the log); the service stopped".into()));
    }
    tracing::info!("quiesce service stopped");
    result
}

/// Stops the service when the session thread ends, however it ends. The
/// thread owns the one session and the config: a service that outlived it
/// would accept connections and answer every `begin` with "stopping" for
/// good — alive to systemd, useless to every agent.
struct StopWhenGone(Arc<crate::interrupt::Trigger>);

impl Drop for StopWhenGone {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the session thread panicked: the service stops");
            self.0.fire("the session thread panicked");
        } else {
            self.0.fire("the session thread ended");
        }
    }
}

/// SIGTERM/SIGINT stop the service; SIGHUP reloads the config (and applies
/// a changed `[service] group` to the socket it bound).
fn signals(
    trigger: Arc<crate::interrupt::Trigger>,
    jobs: mpsc::UnboundedSender<Job>,
    shared: slot::SharedRef,
    listening: &listen::Listening,
) -> Result<(), ServiceError> {
    use tokio::signal::unix::{signal, SignalKind};
    let sig = |k| signal(k).map_err(|e| ServiceError::Start(format!("cannot handle signals: {e}")));
    for (kind, name) in [(SignalKind::terminate(), "SIGTERM"), (SignalKind::interrupt(), "SIGINT")] {
        let mut stream = sig(kind)?;
        let trigger = trigger.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                tracing::warn!("{name} received: ending the begun session (if any) and stopping");
                trigger.fire(name);
            }
        });
    }
    let mut hup = sig(SignalKind::hangup())?;
    let bound = listening.bound_clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the config");
            let (done, wait) = oneshot::channel();
            if jobs.send(Job::Reload { done }).is_err() {
                break;
            }
            let _ = wait.await;
            if let Some(b) = &bound {
                let gid = lock(&shared).gid;
                if let Err(e) = b.set_group(gid.map(nix::unistd::Gid::from_raw)) {
                    tracing::error!("cannot apply the socket's group: {e}");
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_thread_that_panics_stops_the_service() {
        let (trigger, interrupt) = Interrupt::new();
        let stop = StopWhenGone(Arc::new(trigger));
        let thread = std::thread::spawn(move || {
            let _stop = stop;
            panic!("a bug in a session");
        });
        assert!(thread.join().is_err());
        assert_eq!(interrupt.fired().as_deref(), Some("the session thread panicked"));
    }

    #[test]
    fn a_session_thread_that_returns_stops_the_service_too() {
        let (trigger, interrupt) = Interrupt::new();
        let stop = StopWhenGone(Arc::new(trigger));
        std::thread::spawn(move || drop(stop)).join().unwrap();
        assert_eq!(interrupt.fired().as_deref(), Some("the session thread ended"));
    }
}
