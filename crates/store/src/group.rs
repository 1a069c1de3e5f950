//! Group commit on SQLite: one fsync for the writes of many callers.
//!
//! SQLite has one writer, and with `synchronous = FULL` every commit waits
//! for its WAL to reach the disk. Committing each caller's transaction on
//! its own made the disk's flush the limit of every write path on the
//! embedded store (SMTP acceptance, delivery, IMAP STORE/COPY/APPEND).
//!
//! Here every write transaction of an SQLite store runs on one dedicated
//! connection, as a savepoint inside a shared `BEGIN IMMEDIATE`
//! transaction (a *batch*):
//!
//! 1. a writer takes the writer lock (a fair, first-come first-served
//!    mutex), opens the batch if none is open, runs its statements inside
//!    `SAVEPOINT w`, and `RELEASE`s it when they succeeded;
//! 2. it then lets go of the lock and waits for its batch's commit;
//! 3. the committer task, woken by each writer, queues for the same lock
//!    *behind the writers already waiting*, so they all join the batch,
//!    and commits it: one fsync, after which every member learns the
//!    outcome.
//!
//! Invariants:
//! * a writer returns success only after the `COMMIT` of its batch
//!   returned: the durability rule "250 only after commit" holds exactly as
//!   with one commit per caller;
//! * a writer that failed, returned early or was cancelled leaves its
//!   savepoint open; whoever takes the lock next rolls back to it first,
//!   so nothing of a failed writer is ever committed, and the writes of the
//!   batch's other members are untouched;
//! * when the batch's transaction itself is lost (a failed `COMMIT`, a
//!   rollback that could not be done), every member still waiting gets the
//!   error: none of them is told its writes are durable;
//! * a batch is never left open without a writer inside or a commit on its
//!   way (each writer wakes the committer when it lets go of the lock), so
//!   the database's write lock is not held by an idle transaction.
//!
//! Readers use the pool's other connections and see only committed batches
//! (WAL snapshots), as before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection, Executor};
use tokio::sync::{Mutex, MutexGuard, Notify, watch};

use crate::{Result, StoreError};

/// The outcome of one batch, once committed or lost.
type Outcome = Option<std::result::Result<(), StoreError>>;

/// The group-commit writer of an SQLite store.
#[derive(Debug)]
pub(crate) struct Group {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Wakes the committer: a writer let go of the lock.
    wake: Arc<Notify>,
    options: SqliteConnectOptions,
    /// Batches committed and writers they carried, for tests and metrics.
    stats: Stats,
}

#[derive(Debug, Default)]
struct Stats {
    commits: AtomicU64,
    writers: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// The writer connection, opened when first needed and again after it
    /// failed.
    conn: Option<SqliteConnection>,
    /// A writer's savepoint was left open (it failed or was cancelled).
    savepoint: bool,
    /// Where the members of the open batch learn its outcome: `Some`
    /// exactly while the batch's transaction is open on `conn`.
    batch: Option<watch::Sender<Outcome>>,
    /// Writers of the open batch that released their savepoint.
    members: u64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The committer holds only a weak reference: waking it now lets it
        // find the store gone and end.
        self.wake.notify_one();
    }
}

impl Group {
    /// The writer of the SQLite database reached with `options`; starts the
    /// committer task on the current runtime.
    pub(crate) fn new(options: SqliteConnectOptions) -> Group {
        let wake = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            wake: wake.clone(),
            options,
            stats: Stats::default(),
        });
        tokio::spawn(committer(Arc::downgrade(&inner), wake));
        Group { inner }
    }

    /// Joins the open batch (or opens one) and starts this writer's
    /// savepoint. The statements run on [`GroupTx::conn`]; nothing is
    /// committed unless [`GroupTx::commit`] is called and returns `Ok`.
    pub(crate) async fn begin(&self) -> Result<GroupTx<'_>> {
        let state = self.inner.state.lock().await;
        let mut tx = GroupTx {
            state: Some(state),
            wake: &self.inner.wake,
        };
        let state = tx.state.as_mut().expect("held");
        state.settle().await;
        if state.conn.is_none() {
            state.conn = Some(self.inner.options.connect().await?);
        }
        if state.batch.is_none() {
            state.exec("BEGIN IMMEDIATE").await?;
            state.batch = Some(watch::channel(None).0);
        }
        state.exec("SAVEPOINT w").await?;
        state.savepoint = true;
        Ok(tx)
    }

    /// Batches committed so far, and the writers they carried.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn stats(&self) -> (u64, u64) {
        (
            self.inner.stats.commits.load(Ordering::Relaxed),
            self.inner.stats.writers.load(Ordering::Relaxed),
        )
    }

    /// Commits the open batch, if any, and closes the writer connection.
    pub(crate) async fn close(&self) {
        let mut state = self.inner.state.lock().await;
        state.settle().await;
        state.commit(&self.inner.stats).await;
        if let Some(conn) = state.conn.take() {
            let _ = conn.close().await;
        }
    }
}

/// One writer's part of a batch: holds the writer lock until
/// [`GroupTx::commit`] or drop.
pub(crate) struct GroupTx<'a> {
    state: Option<MutexGuard<'a, State>>,
    wake: &'a Notify,
}

impl GroupTx<'_> {
    /// The connection to run this writer's statements on.
    pub(crate) fn conn(&mut self) -> &mut SqliteConnection {
        self.state
            .as_mut()
            .and_then(|s| s.conn.as_mut())
            .expect("a begun group transaction has its connection")
    }

    /// Ends this writer's savepoint and waits until its batch is committed.
    pub(crate) async fn commit(mut self) -> Result<()> {
        let mut outcome = {
            let state = self.state.as_mut().expect("held");
            state.exec("RELEASE w").await?;
            state.savepoint = false;
            state.members += 1;
            state
                .batch
                .as_ref()
                .expect("an open batch has its sender")
                .subscribe()
        };
        // Let go of the lock (and wake the committer) before waiting.
        drop(self.state.take());
        self.wake.notify_one();
        let result = outcome
            .wait_for(Option::is_some)
            .await
            .map_err(|_| StoreError::Unavailable("the store was closed".into()))?;
        result.clone().expect("waited for an outcome")
    }
}

impl Drop for GroupTx<'_> {
    fn drop(&mut self) {
        if self.state.take().is_some() {
            // Failed, returned early or cancelled with the savepoint open:
            // the next holder of the lock rolls it back; the committer must
            // come so that the batch does not stay open.
            self.wake.notify_one();
        }
    }
}

impl State {
    async fn exec(&mut self, sql: &'static str) -> Result<()> {
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("the SQLite writer is not open".into()))?;
        match conn.execute(sql).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let error = StoreError::from(e);
                if matches!(error, StoreError::Unavailable(_)) {
                    // The connection itself failed: its transaction is gone.
                    self.lose(error.clone()).await;
                }
                Err(error)
            }
        }
    }

    /// Rolls back a savepoint that its writer left open.
    async fn settle(&mut self) {
        if !self.savepoint {
            return;
        }
        self.savepoint = false;
        let undone = match self.conn.as_mut() {
            Some(conn) => match conn.execute("ROLLBACK TO w").await {
                Ok(_) => conn.execute("RELEASE w").await.map(|_| ()),
                Err(e) => Err(e),
            },
            None => Ok(()),
        };
        if let Err(e) = undone {
            // SQLite may already have rolled the whole transaction back
            // (an I/O error, a full disk): the batch is lost.
            self.lose(StoreError::from(e)).await;
        }
    }

    /// Commits the open batch and tells its members.
    async fn commit(&mut self, stats: &Stats) {
        if self.batch.is_none() {
            return;
        }
        let result = match self.conn.as_mut() {
            Some(conn) => conn.execute("COMMIT").await.map(|_| ()),
            None => Ok(()),
        };
        match result {
            Ok(()) => {
                if self.members > 0 {
                    stats.commits.fetch_add(1, Ordering::Relaxed);
                    stats.writers.fetch_add(self.members, Ordering::Relaxed);
                    metrics::counter!("mailroom_store_group_commits_total").increment(1);
                    metrics::counter!("mailroom_store_group_writers_total").increment(self.members);
                }
                self.members = 0;
                if let Some(batch) = self.batch.take() {
                    batch.send_replace(Some(Ok(())));
                }
            }
            Err(e) => self.lose(StoreError::from(e)).await,
        }
    }

    /// The batch's transaction failed: make sure it is ended, and tell its
    /// members it is not durable.
    async fn lose(&mut self, error: StoreError) {
        tracing::warn!(%error, "SQLite group commit: batch rolled back");
        if let Some(conn) = self.conn.as_mut() {
            // An error here means no transaction was active any more.
            let _ = conn.execute("ROLLBACK").await;
        }
        if matches!(error, StoreError::Unavailable(_)) {
            // Reopen next time rather than reuse a connection that failed.
            self.conn = None;
        }
        self.savepoint = false;
        self.members = 0;
        if let Some(batch) = self.batch.take() {
            batch.send_replace(Some(Err(error)));
        }
    }
}

/// Commits batches: each wake-up queues for the writer lock behind the
/// writers already waiting (the mutex is fair), so they join the batch
/// first, then commits whatever is open.
async fn committer(inner: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        let Some(inner) = inner.upgrade() else { return };
        let mut state = inner.state.lock().await;
        state.settle().await;
        state.commit(&inner.stats).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::testing::TestDb;
    use crate::{Result, Store, StoreError, on_backend, write_tx};

    async fn table(store: &Store) {
        let made: Result<()> = async {
            write_tx!(store, |tx| {
                sqlx::query("CREATE TABLE t (k INTEGER PRIMARY KEY)")
                    .execute(&mut *tx)
                    .await?;
            });
            Ok(())
        }
        .await;
        made.unwrap();
    }

    async fn insert(store: &Store, k: i64, fail: bool) -> Result<()> {
        write_tx!(store, |tx| {
            sqlx::query("INSERT INTO t (k) VALUES ($1)")
                .bind(k)
                .execute(&mut *tx)
                .await?;
            if fail {
                return Err(StoreError::Internal("the writer gave up".into()));
            }
        });
        Ok(())
    }

    async fn keys(store: &Store) -> Vec<i64> {
        let keys: Result<Vec<i64>> = async {
            Ok(on_backend!(store, |pool| {
                sqlx::query_scalar("SELECT k FROM t ORDER BY k")
                    .fetch_all(pool)
                    .await?
            }))
        }
        .await;
        keys.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_commits_and_a_failed_one_leaves_nothing() {
        let (store, _db) = TestDb::sqlite().await;
        table(&store).await;
        let before = store.sqlite_group().unwrap().stats();
        let mut tasks = Vec::new();
        for k in 0..200 {
            let store = store.clone();
            // Every seventh writer fails after its insert.
            tasks.push(tokio::spawn(
                async move { insert(&store, k, k % 7 == 3).await },
            ));
        }
        let mut failed = 0;
        for (k, task) in tasks.into_iter().enumerate() {
            let result = task.await.unwrap();
            assert_eq!(result.is_err(), k % 7 == 3, "writer {k}: {result:?}");
            failed += usize::from(result.is_err());
        }
        let expected: Vec<i64> = (0..200).filter(|k| k % 7 != 3).collect();
        assert_eq!(keys(&store).await, expected);
        let (commits, writers) = store.sqlite_group().unwrap().stats();
        let (commits, writers) = (commits - before.0, writers - before.1);
        assert_eq!(writers as usize, 200 - failed);
        assert!(
            commits < writers / 2,
            "{writers} writers took {commits} commits: no grouping"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_writer_is_rolled_back_and_does_not_block_the_others() {
        let (store, _db) = TestDb::sqlite().await;
        table(&store).await;
        let stuck = {
            let store = store.clone();
            tokio::spawn(async move {
                write_tx!(store, |tx| {
                    sqlx::query("INSERT INTO t (k) VALUES (1)")
                        .execute(&mut *tx)
                        .await?;
                    // Holds the writer until cancelled.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                });
                Ok::<_, StoreError>(())
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        stuck.abort();
        assert!(stuck.await.unwrap_err().is_cancelled());
        insert(&store, 2, false).await.unwrap();
        assert_eq!(keys(&store).await, vec![2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_a_writer_was_told_is_committed_is_on_disk_for_a_new_connection() {
        let (store, db) = TestDb::sqlite().await;
        table(&store).await;
        for k in 0..20 {
            insert(&store, k, false).await.unwrap();
        }
        store.close().await;
        drop(store);
        let reopened = Store::connect(&db.url, &crate::StoreOptions::default())
            .await
            .unwrap();
        assert_eq!(keys(&reopened).await, (0..20).collect::<Vec<_>>());
    }
}
