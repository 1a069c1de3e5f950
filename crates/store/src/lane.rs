//! A second, small set of PostgreSQL connections for the statements IMAP
//! runs at every command, handed back without sqlx's release check.
//!
//! sqlx's pool checks every connection that comes back to it with a `Sync`
//! round trip (`PgConnection::ping`, in `PoolConnection::return_to_pool`,
//! unconditionally in sqlx 0.9). For a one-statement command that doubles
//! the round trips to the server: two wake-ups of the backend and of our
//! task instead of one, which on the IMAP benchmark cost more CPU than most
//! statements themselves. The lane keeps its own connections and takes one
//! back as it is when its user finished cleanly:
//!
//! * a statement that succeeded, or that PostgreSQL refused (its error
//!   response came; the server reaches ReadyForQuery, which the next
//!   statement on the connection reads before it starts, as sqlx does for
//!   any connection), leaves the connection usable;
//! * a connection dropped midway (the future was cancelled) or after an
//!   I/O or protocol error is closed instead: closing it ends whatever it
//!   was doing on the server, a transaction included, at once. After an
//!   I/O error the idle connections are closed too (a server restart ends
//!   them all), so that one failed command, not one per idle connection,
//!   finds out.
//!
//! The lane holds at most as many connections as the pool
//! (`store.max_connections`), opened when first needed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::{Result, StoreError};

/// The lane of a PostgreSQL store.
#[derive(Debug)]
pub(crate) struct Lane {
    options: Arc<PgConnectOptions>,
    idle: Mutex<Vec<PgConnection>>,
    permits: Semaphore,
    acquire_timeout: Duration,
}

/// A connection of the lane, in use.
pub(crate) struct LaneConn<'a> {
    lane: &'a Lane,
    conn: Option<PgConnection>,
    _permit: SemaphorePermit<'a>,
    keep: bool,
    /// The server was unreachable: the idle connections are likely dead too
    /// (a restart ends them all), so they go with this one.
    server_lost: bool,
}

impl Lane {
    /// A lane of up to `size` connections made with `options`.
    pub(crate) fn new(
        options: Arc<PgConnectOptions>,
        size: u32,
        acquire_timeout: Duration,
    ) -> Lane {
        Lane {
            options,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size.max(1) as usize),
            acquire_timeout,
        }
    }

    /// An idle connection, or a new one when none is idle; waits at most the
    /// store's acquire timeout while all are in use, and as long again for a
    /// new connection.
    pub(crate) async fn acquire(&self) -> Result<LaneConn<'_>> {
        let permit = tokio::time::timeout(self.acquire_timeout, self.permits.acquire())
            .await
            .map_err(|_| {
                StoreError::Unavailable("timed out waiting for a database connection".into())
            })?
            .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => tokio::time::timeout(self.acquire_timeout, self.options.connect())
                .await
                .map_err(|_| StoreError::Unavailable("timed out connecting to PostgreSQL".into()))?
                .map_err(|e| {
                    StoreError::Unavailable(format!("cannot connect to PostgreSQL: {e}"))
                })?,
        };
        Ok(LaneConn {
            lane: self,
            conn: Some(conn),
            _permit: permit,
            keep: false,
            server_lost: false,
        })
    }

    /// Closes the idle connections; those in use are closed when they come
    /// back, and no more are handed out.
    pub(crate) async fn close(&self) {
        self.permits.close();
        let idle: Vec<PgConnection> =
            std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        for conn in idle {
            let _ = conn.close().await;
        }
    }
}

impl LaneConn<'_> {
    /// The connection.
    pub(crate) fn conn(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("a lane connection is present until dropped")
    }

    /// Records how the work on the connection ended: it goes back to the
    /// lane unless it failed for want of the server (I/O) or in a way that
    /// may have left the protocol out of step (anything not reported by the
    /// server as a refusal of the statement).
    pub(crate) fn settle<T>(&mut self, result: &Result<T>) {
        self.keep = match result {
            Ok(_) => true,
            Err(StoreError::Unavailable(_) | StoreError::Internal(_)) => false,
            Err(_) => true,
        };
        self.server_lost = matches!(result, Err(StoreError::Unavailable(_)));
    }
}

impl Drop for LaneConn<'_> {
    fn drop(&mut self) {
        if self.server_lost {
            self.lane
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
        if let Some(conn) = self.conn.take()
            && self.keep
            && !self.lane.permits.is_closed()
        {
            self.lane
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
        }
        // Otherwise the connection is dropped here, which closes its socket.
    }
}

/// Runs `$body`, an expression of type `Result<T>` that uses `&mut *$conn`
/// as its executor, on a connection: on PostgreSQL one of the store's lane
/// (see [`crate::lane`]), on SQLite one from the pool.
macro_rules! on_conn {
    ($store:expr, |$conn:ident| $body:expr) => {
        match $store.backend() {
            $crate::Backend::Postgres(_) => on_lane!($store, |$conn| $body),
            $crate::Backend::Sqlite(pool) => {
                let mut pooled = pool.acquire().await?;
                let $conn = &mut *pooled;
                async move { $body }.await
            }
        }
    };
}

/// [`on_conn!`] for PostgreSQL-only code: `$body` runs on a connection of
/// the lane of `$store`, which must be a PostgreSQL store.
macro_rules! on_lane {
    ($store:expr, |$conn:ident| $body:expr) => {{
        let mut lane_conn = $store.lane_conn().await?;
        let out = {
            let $conn = lane_conn.conn();
            async move { $body }.await
        };
        lane_conn.settle(&out);
        out
    }};
}
