//! Signals that end a session early. SIGINT/SIGTERM/SIGHUP must not kill the
//! host while file systems are frozen: the session thaws first, runs the post
//! hooks, and reports. The session sees them as an [`Interrupt`].

use tokio::sync::watch;

/// Fires (once) with the name of what interrupted the session.
#[derive(Clone)]
pub struct Interrupt {
    rx: watch::Receiver<Option<String>>,
    /// For [`Interrupt::never`]: a sender nobody fires, kept alive so that
    /// `wait` pends instead of seeing a closed channel.
    _unfired: Option<std::sync::Arc<watch::Sender<Option<String>>>>,
}

/// The sending half, for embedders that cancel a session themselves.
pub struct Trigger {
    tx: watch::Sender<Option<String>>,
}

impl Trigger {
    pub fn fire(&self, why: impl Into<String>) {
        let why = why.into();
        self.tx.send_if_modified(|cur| {
            if cur.is_none() {
                *cur = Some(why);
                true
            } else {
                false
            }
        });
    }
}

impl Interrupt {
    pub fn new() -> (Trigger, Interrupt) {
        let (tx, rx) = watch::channel(None);
        (Trigger { tx }, Interrupt { rx, _unfired: None })
    }

    /// Never fires.
    pub fn never() -> Interrupt {
        let (tx, rx) = watch::channel(None);
        Interrupt { rx, _unfired: Some(std::sync::Arc::new(tx)) }
    }

    /// Installs handlers for SIGINT, SIGTERM and SIGHUP (replacing the default
    /// "die now") and returns an interrupt that fires on the first of them.
    /// Must be called inside a tokio runtime.
    pub fn on_signals() -> std::io::Result<Interrupt> {
        use tokio::signal::unix::{signal, SignalKind};
        let (trigger, interrupt) = Interrupt::new();
        let mut streams = Vec::new();
        for (kind, name) in [(SignalKind::interrupt(), "SIGINT"), (SignalKind::terminate(), "SIGTERM"), (SignalKind::hangup(), "SIGHUP")] {
            streams.push((signal(kind)?, name));
        }
        let trigger = std::sync::Arc::new(trigger);
        for (mut stream, name) in streams {
            let trigger = trigger.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    tracing::warn!("{name} received: finishing the session safely (thaw, post hooks, report)");
                    trigger.fire(name);
                }
            });
        }
        Ok(interrupt)
    }

    /// What fired, if anything has.
    pub fn fired(&self) -> Option<String> {
        self.rx.borrow().clone()
    }

    /// Waits until it fires.
    pub async fn wait(&mut self) -> String {
        loop {
            if let Some(why) = self.rx.borrow_and_update().clone() {
                return why;
            }
            if self.rx.changed().await.is_err() {
                // Every trigger is gone: nothing can fire any more.
                std::future::pending::<()>().await;
            }
        }
    }
}
