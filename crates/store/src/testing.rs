//! Throw-away stores for tests, on both backends.
//!
//! PostgreSQL tests use the server at `127.0.0.1:5432` (user `postgres`,
//! trust authentication), or `MAILROOM_TEST_POSTGRES_URL`. Each test gets a
//! database of its own, named uniquely and dropped when the [`TestDb`] is
//! dropped, even when the test panics. When the server cannot be reached
//! the test fails with a message saying so; the only way to skip is to set
//! `MAILROOM_TEST_SKIP_POSTGRES=1`, which CI never does.

use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::PgConnection;

use crate::{Store, StoreOptions};

/// The server the PostgreSQL tests use, as an administrative URL.
pub fn postgres_admin_url() -> String {
    std::env::var("MAILROOM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// Ends the LISTEN connections of every process using the PostgreSQL
/// database at `url` (as a server restart or an operator would); returns
/// how many were ended.
pub async fn end_listen_connections(url: &str) -> i64 {
    let mut admin = PgConnection::connect(url)
        .await
        .expect("connect to the test database");
    let ended = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
          WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_one(&mut admin)
    .await
    .expect("end the LISTEN connections");
    let _ = admin.close().await;
    ended
}

/// Whether the PostgreSQL tests were explicitly opted out of.
pub fn postgres_skipped() -> bool {
    std::env::var("MAILROOM_TEST_SKIP_POSTGRES").is_ok_and(|v| v == "1")
}

/// A test database; removed on drop.
#[derive(Debug)]
pub struct TestDb {
    /// URL to connect to it (give it to services under test).
    pub url: String,
    cleanup: Cleanup,
}

#[derive(Debug)]
enum Cleanup {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

impl TestDb {
    /// A fresh SQLite database in a temporary directory.
    pub async fn sqlite() -> (Store, TestDb) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        let store = Store::connect(&url, &StoreOptions::default())
            .await
            .expect("open SQLite test store");
        (
            store,
            TestDb {
                url,
                cleanup: Cleanup::Sqlite(dir),
            },
        )
    }

    /// A fresh PostgreSQL database, or `None` when the PostgreSQL tests were
    /// opted out of. Panics with a clear message when the server is unreachable.
    pub async fn postgres() -> Option<(Store, TestDb)> {
        if postgres_skipped() {
            eprintln!("MAILROOM_TEST_SKIP_POSTGRES=1: skipping a PostgreSQL test");
            return None;
        }
        let admin_url = postgres_admin_url();
        let name = format!(
            "mailroom_test_{}_{}",
            std::process::id(),
            rand::random::<u32>()
        );
        let mut admin =
            tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(&admin_url))
                .await
                .map_err(|_| "timed out".to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL is not reachable at {admin_url}: {e}.\n\
                     The store tests need it (start it, or set MAILROOM_TEST_POSTGRES_URL); \
                     set MAILROOM_TEST_SKIP_POSTGRES=1 to skip them deliberately."
                    )
                });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        let _ = admin.close().await;
        let url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("MAILROOM_TEST_POSTGRES_URL must end with /<database>"),
        };
        let db = TestDb {
            url: url.clone(),
            cleanup: Cleanup::Postgres { admin_url, name },
        };
        let store = Store::connect(&url, &StoreOptions::default())
            .await
            .expect("connect to the PostgreSQL test database");
        Some((store, db))
    }
}

impl TestDb {
    /// Runs `sql` (one or more statements) on the test database, as an
    /// operator or a fault would: tests use it to inject faults (triggers
    /// that fail a step, a table out of the way) and take them back.
    pub async fn execute(&self, sql: &str) {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match &self.cleanup {
            Cleanup::Sqlite(_) => {
                let mut c = sqlx::sqlite::SqliteConnection::connect(&self.url)
                    .await
                    .expect("connect to the test database");
                sqlx::raw_sql(sql).execute(&mut c).await.expect("test SQL");
                let _ = c.close().await;
            }
            Cleanup::Postgres { .. } => {
                let mut c = PgConnection::connect(&self.url)
                    .await
                    .expect("connect to the test database");
                sqlx::raw_sql(sql).execute(&mut c).await.expect("test SQL");
                let _ = c.close().await;
            }
        }
    }

    /// PostgreSQL only: makes the database unavailable as a server outage
    /// does (every connection to it ended, new ones refused) when `down`,
    /// and available again when not.
    pub async fn set_outage(&self, down: bool) {
        let Cleanup::Postgres { admin_url, name } = &self.cleanup else {
            panic!("an outage is a PostgreSQL test");
        };
        let mut admin = PgConnection::connect(admin_url)
            .await
            .expect("connect to the PostgreSQL server");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS {}",
            !down
        )))
        .execute(&mut admin)
        .await
        .expect("change ALLOW_CONNECTIONS");
        if down {
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE datname = $1 AND pid <> pg_backend_pid()",
            )
            .bind(name)
            .execute(&mut admin)
            .await
            .expect("end the connections");
        }
        let _ = admin.close().await;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Cleanup::Postgres { admin_url, name } = &self.cleanup else {
            return;
        };
        let (admin_url, name) = (admin_url.clone(), name.clone());
        // Drop may run inside a runtime (or while panicking): do the async
        // work on a thread of its own with a runtime of its own.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime for cleanup");
            rt.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    // A test that failed during an outage left it closed.
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "ALTER DATABASE {name} ALLOW_CONNECTIONS true"
                    )))
                    .execute(&mut admin)
                    .await;
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await;
                    let _ = admin.close().await;
                }
            });
        });
        let _ = done.join();
    }
}
