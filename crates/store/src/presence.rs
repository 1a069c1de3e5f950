//! Worker presence on PostgreSQL, so that a dead worker's queue leases come
//! back within seconds instead of after `mta.lease_secs` (issue 18).
//!
//! A queue worker leases recipients for `mta.lease_secs` and renews the
//! leases while it works on them. A worker that dies (SIGKILL, a lost host)
//! stops renewing, and its recipients used to wait out the lease. On the
//! embedded store a restarted process can tell dead from alive by pid
//! (`Store::reclaim_leases_at_start`); on PostgreSQL the workers may run on
//! other hosts, so the database tells instead: each worker holds, for its
//! life, a session-level advisory lock keyed by its id on a connection of
//! its own ([`Store::hold_presence`]). PostgreSQL drops the lock when that
//! connection ends, which is when the process dies or its host goes away
//! (TCP keepalive or the server's `idle_session_timeout` bound how soon on
//! a lost host). A lease whose owner holds no such lock, taken more than
//! [`PRESENCE_GRACE_SECS`] ago, is due again (see `lease_recipients`).
//!
//! Invariants:
//! * key: `(PRESENCE_CLASS, hashtext(worker id))`, the two-int4 advisory
//!   lock form (pg_locks shows it with `objsubid = 2`); a hash collision
//!   only makes a dead worker look alive, so its leases lapse as before;
//! * the lock is taken before the worker leases anything, and re-taken
//!   after its connection is lost (meanwhile another worker may take over
//!   its leases: the entry is then attempted twice, never lost; the loser's
//!   result no longer matches the lease and is not recorded);
//! * on SQLite this is a no-op: one host, and pids tell.

use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::PgConnection;

use crate::{Backend, Result, Store};

/// The first key of the advisory lock ("MRMT").
pub(crate) const PRESENCE_CLASS: i32 = 0x4d52_4d54;

/// How old a lease must be before its owner's missing presence frees it:
/// covers a worker that leased just before its presence lock was visible.
pub(crate) const PRESENCE_GRACE_SECS: i64 = 5;

/// How often the presence connection is checked (and re-made when lost).
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Keeps a worker's presence while it lives; dropping it ends the presence.
#[derive(Debug)]
pub struct Presence {
    _stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Store {
    /// Announces that `worker` is alive, until the returned value is
    /// dropped (see the module documentation). On SQLite nothing happens.
    pub async fn hold_presence(&self, worker: &str) -> Result<Presence> {
        let Backend::Postgres(pool) = self.backend() else {
            return Ok(Presence { _stop: None });
        };
        let pool = pool.clone();
        let worker = worker.to_string();
        let mut conn = Some(lock(&pool, &worker).await?);
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep(CHECK_EVERY) => {}
                }
                let alive = match conn.as_mut() {
                    Some(c) => sqlx::query("SELECT 1").execute(c).await.is_ok(),
                    None => false,
                };
                if !alive {
                    conn = match lock(&pool, &worker).await {
                        Ok(c) => {
                            tracing::info!(worker, "queue worker presence taken again");
                            Some(c)
                        }
                        Err(e) => {
                            tracing::warn!(worker, error = %e,
                                "queue worker presence lost; its leases may be taken over");
                            None
                        }
                    };
                }
            }
            if let Some(c) = conn.take() {
                let _ = c.close().await;
            }
        });
        Ok(Presence { _stop: Some(stop) })
    }
}

/// A connection of its own, holding the worker's advisory lock.
async fn lock(pool: &sqlx::PgPool, worker: &str) -> Result<PgConnection> {
    let mut conn = pool.acquire().await?.detach();
    sqlx::query("SELECT pg_advisory_lock($1, hashtext($2))")
        .bind(PRESENCE_CLASS)
        .bind(worker)
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

/// The SQL condition (PostgreSQL) that the owner of a row's lease has no
/// presence and the lease is older than the grace; `$3` is now.
pub(crate) fn owner_gone_sql() -> String {
    format!(
        "(updated_at < $3 - {PRESENCE_GRACE_SECS}
          AND hashtext(lease_owner)::oid NOT IN (
              SELECT objid FROM pg_locks
              WHERE locktype = 'advisory' AND granted AND objsubid = 2
                AND classid = {PRESENCE_CLASS}::oid
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())))"
    )
}
