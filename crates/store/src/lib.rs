//! The data layer of Mailroom: one interface, two backends.
//!
//! * **PostgreSQL** is the store when services run as separate processes or
//!   scale out; every replica shares it.
//! * **SQLite** (one file in the data directory) is the embedded default, so
//!   a fresh machine runs the whole stack with no server to install.
//!
//! Both run the same migrations (one SQL text with the few dialect words
//! substituted) and pass the same test suite. Queries are written once and
//! compiled against each backend by [`on_backend!`] and [`write_tx!`]; SQL that
//! must differ (leases, notifications) is written per backend where it lives.
//!
//! Invariants:
//! * every write that spans several rows happens in one transaction, so a
//!   failure leaves nothing half-written;
//! * on SQLite, write transactions start with `BEGIN IMMEDIATE`, so two
//!   writers queue on the lock instead of failing on a lock upgrade;
//! * SQLite runs in WAL mode with `synchronous = FULL`: a commit that
//!   returned is on disk, which the SMTP "250 after commit" rule relies on;
//! * on SQLite, write transactions share commits (`group.rs`): each runs as
//!   a savepoint of one writer connection's transaction, and returns only
//!   once that transaction is committed.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

mod blobs;
mod delivery;
mod directory;
mod dkim;
mod group;
mod known;
#[macro_use]
mod lane;
mod maildrop;
mod mailstore;
mod metadata;
mod migrate;
mod presence;
mod queue;
mod reader;
mod recent;
pub mod testing;

pub use blobs::BlobHash;
pub use delivery::{
    AcceptedCopy, Folder, LocalTarget, MailboxEvent, NewMessage, Resolved, Stored, Unroutable,
};
pub use directory::{
    Account, Alias, AliasSource, DomainEntry, Mailbox, Postmaster, SPECIAL_MAILBOXES,
};
pub use dkim::{DkimKeyInfo, DkimSigningKey};
pub use maildrop::*;
pub use mailstore::*;
pub use metadata::MetadataEntry;
pub use presence::Presence;
pub use queue::*;
pub use reader::TextReader;

/// What went wrong, in terms a caller can act on. Each variant carries a
/// message fit to show the person who made the request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The thing to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request itself is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request is well-formed but the current state forbids it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The database cannot be reached or is overloaded: try again later.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The database is out of disk space (SQLite `SQLITE_FULL`, PostgreSQL
    /// SQLSTATE 53100 `disk_full`): nothing was written; try again when
    /// space returns. SMTP says `452 4.3.1` (RFC 3463 §3.4, RFC 5321 §4.2.2).
    #[error("the store is out of space: {0}")]
    Full(String),
    /// Anything else: a bug or a corrupted database. Logged, not shown in detail.
    #[error("internal store error: {0}")]
    Internal(String),
}

/// Results of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let error = Self::from_sqlx(e);
        // Counted: the database failing or unreachable (not a statement's
        // expected outcome such as a duplicate or a missing row).
        let kind = match &error {
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Full(_) => "full",
            StoreError::Internal(_) => "internal",
            _ => return error,
        };
        metrics::counter!("mailroom_store_errors_total", "kind" => kind).increment(1);
        error
    }
}

impl StoreError {
    fn from_sqlx(e: sqlx::Error) -> Self {
        match &e {
            // The SQLSTATEs raised by the PostgreSQL functions of migration
            // 0003 (mailroom_store_flags, mailroom_append, mailroom_expunge).
            sqlx::Error::Database(db) if db.code().as_deref() == Some("MRNMB") => {
                StoreError::NotFound(db.message().to_string())
            }
            sqlx::Error::Database(db)
                if matches!(db.code().as_deref(), Some("MRQTA") | Some("MRUID")) =>
            {
                StoreError::FailedPrecondition(db.message().to_string())
            }
            // The server going away (57P01–03: shut down, restarted, or the
            // session terminated by an operator; class 08: connection
            // failures) is unavailability, not a fault of the statement.
            sqlx::Error::Database(db)
                if db
                    .code()
                    .is_some_and(|c| c.starts_with("57P") || c.starts_with("08")) =>
            {
                StoreError::Unavailable(db.message().to_string())
            }
            // SQLITE_FULL (13), or PostgreSQL's disk_full.
            sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("13" | "53100")) => {
                StoreError::Full(db.message().to_string())
            }
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::AlreadyExists(db.message().to_string())
            }
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                StoreError::FailedPrecondition(db.message().to_string())
            }
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Internal(e.to_string()),
        }
    }
}

/// The connection pool of the backend in use.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A PostgreSQL server.
    Postgres(PgPool),
    /// An SQLite file.
    Sqlite(SqlitePool),
}

/// Runs `$body` with `$pool` bound to the backend's pool. The body is
/// compiled once per backend, so one text of SQL serves both.
#[macro_export]
macro_rules! on_backend {
    ($store:expr, |$pool:ident| $body:expr) => {
        match $store.backend() {
            $crate::Backend::Postgres($pool) => $body,
            $crate::Backend::Sqlite($pool) => $body,
        }
    };
}

/// Runs `$body` inside a write transaction bound to `$tx` and commits it if
/// the body did not return early; an early return (`?`) rolls back.
#[macro_export]
macro_rules! write_tx {
    ($store:expr, |$tx:ident| $body:expr) => {
        match $store.backend() {
            $crate::Backend::Postgres(pool) => {
                #[allow(unused_mut)]
                let mut $tx = pool.begin().await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
            // Group commit (see `group.rs`): a savepoint in the writer's
            // shared transaction; returns once that is committed.
            $crate::Backend::Sqlite(_) => {
                let mut group_tx = $store.sqlite_group()?.begin().await?;
                #[allow(unused_mut)]
                let mut $tx = group_tx.conn();
                let out = $body;
                group_tx.commit().await?;
                out
            }
        }
    };
}

/// Runs `$body`, an expression of type `Result<T>` that uses `&mut *$conn`
/// as its executor, for statements that write but need no transaction of
/// their own: on PostgreSQL in autocommit on a pooled connection, on SQLite
/// inside the group-commit writer (see `group.rs`), so that they share its
/// fsync and do not queue on its lock. Nothing is committed when the body
/// fails.
#[macro_export]
macro_rules! write_conn {
    ($store:expr, |$conn:ident| $body:expr) => {
        match $store.backend() {
            $crate::Backend::Postgres(pool) => {
                let mut pooled = pool.acquire().await?;
                let $conn = &mut *pooled;
                async { $body }.await
            }
            $crate::Backend::Sqlite(_) => {
                let mut group_tx = $store.sqlite_group()?.begin().await?;
                let out = {
                    let $conn = group_tx.conn();
                    async { $body }.await
                };
                match out {
                    Ok(value) => group_tx.commit().await.map(|()| value),
                    Err(e) => Err(e),
                }
            }
        }
    };
}

/// Events a slow subscriber may fall behind by before it is told it lagged
/// (an IMAP session then re-reads its mailbox state).
const EVENT_BUFFER: usize = 1024;

/// How to reach the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Pool size.
    pub max_connections: u32,
    /// How long a request waits for a connection before failing.
    pub acquire_timeout: Duration,
    /// PostgreSQL: how long news of a mailbox (this process's own changes,
    /// and the change notifications of every process) is trusted before a
    /// session asks the database again whether the mailbox changed (see
    /// `known.rs`). Zero: ask at every command.
    pub fresh_for: Duration,
    /// Bytes of message texts and parse caches kept in memory for FETCH
    /// (see `known.rs`). Zero: none.
    pub message_cache_bytes: usize,
    /// How long an unused entry of the message cache is kept. Zero: until
    /// the budget pushes it out.
    pub message_cache_idle: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            fresh_for: Duration::from_secs(1),
            message_cache_bytes: 64 << 20,
            message_cache_idle: Duration::from_secs(60),
        }
    }
}

/// The store: a handle that is cheap to clone and share between tasks.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
    shared: Arc<Shared>,
}

/// State shared by every clone of a [`Store`].
#[derive(Debug)]
struct Shared {
    /// Mailbox events (fed by commits on SQLite, by LISTEN on PostgreSQL).
    events: broadcast::Sender<delivery::MailboxEvent>,
    /// Whether the PostgreSQL LISTEN task runs.
    listener_started: tokio::sync::Mutex<bool>,
    /// Domains recently found to be served here, and when (see
    /// [`Store::serves_domain`]).
    served_domains: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// The queue of PostgreSQL notifications to send (see
    /// [`Store::notify`](crate::Store)); started with the first one.
    notifier: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<String>>,
    /// PostgreSQL: the connections of IMAP's per-command statements (see
    /// `lane.rs`).
    lane: Option<lane::Lane>,
    /// PostgreSQL: the mailboxes' latest known HIGHESTMODSEQ (see
    /// `known.rs`).
    freshness: Arc<known::Freshness>,
    /// Message texts and parse caches (see `known.rs`).
    message_cache: known::MessageCache,
    /// SQLite: the group-commit writer (see `group.rs`).
    group: Option<group::Group>,
}

/// PostgreSQL connection options from `url`. Without an explicit `sslmode`
/// in the URL, a server on loopback or a Unix socket is reached without TLS
/// (encryption there protects nothing and costs both sides CPU on every
/// statement); any other host keeps libpq's default, `prefer`. An explicit
/// `sslmode` always wins.
fn pg_options(url: &str) -> Result<PgConnectOptions> {
    let opts = PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::InvalidArgument(format!("bad PostgreSQL URL: {e}")))?;
    let explicit = url.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|kv| kv.starts_with("sslmode=") || kv.starts_with("ssl-mode="))
    });
    let host = opts.get_host();
    let local = opts.get_socket().is_some()
        || host.starts_with('/')
        || host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    Ok(if local && !explicit {
        opts.ssl_mode(PgSslMode::Disable)
    } else {
        opts
    })
}

impl Store {
    /// Connects to `url` (`postgres://…` or `sqlite:…`) and brings the schema
    /// up to date. An SQLite file is created when missing.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Store> {
        let mut group = None;
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // No ping before each checkout: it doubled the round trips of
            // short transactions; a broken connection fails its query instead
            // (the caller answers 4xx and retries) and is then discarded.
            let pool = PgPoolOptions::new()
                .test_before_acquire(false)
                .max_connections(options.max_connections)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(pg_options(url)?)
                .await
                .map_err(|e| {
                    StoreError::Unavailable(format!("cannot connect to PostgreSQL: {e}"))
                })?;
            Backend::Postgres(pool)
        } else if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|e| StoreError::InvalidArgument(format!("bad SQLite URL {url:?}: {e}")))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(options.acquire_timeout);
            let pool = SqlitePoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.acquire_timeout)
                // A connection whose transaction could not be ended (its
                // COMMIT or ROLLBACK failed, as on a full disk) is closed,
                // not handed out again: every later `BEGIN` on it would
                // fail ("non-zero transaction depth") long after the disk
                // has room again (tests/tests/resilience.rs, disk full).
                .before_acquire(|conn, _| {
                    Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) })
                })
                .connect_with(opts.clone())
                .await
                .map_err(|e| {
                    StoreError::Unavailable(format!("cannot open SQLite database: {e}"))
                })?;
            group = Some(group::Group::new(opts));
            Backend::Sqlite(pool)
        } else {
            return Err(StoreError::InvalidArgument(format!(
                "unsupported store URL {url:?}: use postgres:// or sqlite:"
            )));
        };
        let lane = match &backend {
            Backend::Postgres(pool) => Some(lane::Lane::new(
                pool.connect_options(),
                options.max_connections,
                options.acquire_timeout,
            )),
            Backend::Sqlite(_) => None,
        };
        let store = Store {
            backend,
            shared: Arc::new(Shared {
                events: broadcast::channel(EVENT_BUFFER).0,
                listener_started: tokio::sync::Mutex::new(false),
                served_domains: std::sync::Mutex::new(std::collections::HashMap::new()),
                notifier: std::sync::OnceLock::new(),
                lane,
                freshness: Arc::new(known::Freshness::new(options.fresh_for)),
                message_cache: known::MessageCache::new(
                    options.message_cache_bytes,
                    options.message_cache_idle,
                ),
                group,
            }),
        };
        store.sweep_message_cache();
        migrate::run(&store).await?;
        Ok(store)
    }

    /// The backend's pool, for code that needs dialect-specific SQL.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub(crate) fn events(&self) -> &broadcast::Sender<delivery::MailboxEvent> {
        &self.shared.events
    }

    pub(crate) fn notifier(
        &self,
    ) -> &std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<String>> {
        &self.shared.notifier
    }

    pub(crate) fn listener_started(&self) -> &tokio::sync::Mutex<bool> {
        &self.shared.listener_started
    }

    pub(crate) fn freshness(&self) -> &Arc<known::Freshness> {
        &self.shared.freshness
    }

    pub(crate) fn message_cache(&self) -> &known::MessageCache {
        &self.shared.message_cache
    }

    /// Starts the task that drops the message cache's idle entries; it ends
    /// with the last clone of the store.
    fn sweep_message_cache(&self) {
        let Some(every) = self.shared.message_cache.sweep_every() else {
            return;
        };
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let dropped = shared.message_cache.expire();
                if dropped > 0 {
                    tracing::debug!(dropped, "message cache: idle entries dropped");
                }
            }
        });
    }

    /// Whether this process knows the mailbox to be at HIGHESTMODSEQ
    /// `modseq` now, without asking the database (PostgreSQL, see
    /// `known.rs`; always `false` on SQLite, where asking is cheap). A
    /// session whose view is at `modseq` may then skip reading the changes.
    pub fn is_current(&self, mailbox_id: i64, modseq: u64) -> bool {
        matches!(self.backend, Backend::Postgres(_))
            && self.shared.freshness.is_current(mailbox_id, modseq)
    }

    pub(crate) fn served_domains(
        &self,
    ) -> &std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>> {
        &self.shared.served_domains
    }

    /// The group-commit writer of an SQLite store (see `group.rs`).
    pub(crate) fn sqlite_group(&self) -> Result<&group::Group> {
        self.shared
            .group
            .as_ref()
            .ok_or_else(|| StoreError::Internal("the group writer is SQLite's".into()))
    }

    /// A connection of the PostgreSQL lane (see `lane.rs`).
    pub(crate) async fn lane_conn(&self) -> Result<lane::LaneConn<'_>> {
        match &self.shared.lane {
            Some(lane) => lane.acquire().await,
            None => Err(StoreError::Internal(
                "the connection lane is PostgreSQL's".into(),
            )),
        }
    }

    /// `"postgres"` or `"sqlite"`, for logs.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Postgres(_) => "postgres",
            Backend::Sqlite(_) => "sqlite",
        }
    }

    /// Closes every connection (waits for those in use to come back).
    /// The pool's connections: (open, idle), for the pool gauges.
    pub fn pool_connections(&self) -> (u32, u32) {
        match &self.backend {
            Backend::Postgres(p) => (p.size(), p.num_idle() as u32),
            Backend::Sqlite(p) => (p.size(), p.num_idle() as u32),
        }
    }

    /// Whether the database answers: one `SELECT 1` through the pool (a
    /// readiness probe; the caller bounds how long it waits).
    pub async fn ping(&self) -> Result<()> {
        on_backend!(self, |pool| {
            sqlx::query("SELECT 1").execute(pool).await?;
            Ok(())
        })
    }

    pub async fn close(&self) {
        if let Some(lane) = &self.shared.lane {
            lane.close().await;
        }
        if let Some(group) = &self.shared.group {
            group.close().await;
        }
        match &self.backend {
            Backend::Postgres(p) => p.close().await,
            Backend::Sqlite(p) => p.close().await,
        }
    }
}

/// Seconds since the Unix epoch, the unit of every time column.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(url: &str) -> PgSslMode {
        pg_options(url).unwrap().get_ssl_mode()
    }

    #[test]
    fn tls_to_postgres_is_skipped_only_on_loopback_unless_asked_for() {
        for url in [
            "postgres://u@127.0.0.1:5432/db",
            "postgres://u@localhost/db",
            "postgres://u@[::1]:5432/db",
            "postgres:///db?host=/run/postgresql",
        ] {
            assert!(matches!(mode(url), PgSslMode::Disable), "{url}");
        }
        assert!(matches!(
            mode("postgres://u@db.internal/db"),
            PgSslMode::Prefer
        ));
        assert!(matches!(
            mode("postgres://u@10.0.0.5/db"),
            PgSslMode::Prefer
        ));
        assert!(matches!(
            mode("postgres://u@127.0.0.1/db?sslmode=require"),
            PgSslMode::Require
        ));
        assert!(matches!(
            mode("postgres://u@db.internal/db?sslmode=verify-full"),
            PgSslMode::VerifyFull
        ));
    }
}
