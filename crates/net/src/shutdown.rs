//! Graceful shutdown: stop accepting, let sessions finish or say goodbye,
//! and give up waiting after a bounded time.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The shutdown signal and the set of tasks that must end before exit.
/// Clones share both.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    /// A fresh, untriggered shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// The token sessions watch; cancelled when shutdown begins.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Tracks a task so that [`Shutdown::drain`] waits for it.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Begins shutdown.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when shutdown has begun.
    pub async fn triggered(&self) {
        self.token.cancelled().await
    }

    /// Triggers shutdown and waits up to `grace` for every tracked task.
    /// Returns whether they all ended in time.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.trigger();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Waits for SIGTERM or SIGINT (Ctrl-C), then triggers shutdown.
    pub async fn on_signals(&self) -> std::io::Result<()> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT received: shutting down"),
                _ = self.triggered() => {}
            }
        }
        #[cfg(not(unix))]
        {
            tokio::select! {
                r = tokio::signal::ctrl_c() => { r?; }
                _ = self.triggered() => {}
            }
        }
        self.trigger();
        Ok(())
    }
}
