//! Versioned schema migrations, run at every start (a no-op when current).
//!
//! The SQL is embedded in the binary, so a deployed process needs no files
//! beside it. PostgreSQL takes an advisory lock while migrating, so replicas
//! starting together do not race.

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AssertSqlSafe, SqlSafeStr};

use crate::{Backend, Result, Store, StoreError};

/// `(version, description, sql, postgres_only)` in order. Never edit one
/// that has shipped: add a new one (sqlx refuses a changed checksum). A
/// PostgreSQL-only migration is recorded on SQLite too, as a no-op, so both
/// backends count the same versions.
const MIGRATIONS: &[(i64, &str, &str, bool)] = &[
    (
        1,
        "initial",
        include_str!("../migrations/0001_initial.sql"),
        false,
    ),
    (
        2,
        "postgres finish attempts",
        include_str!("../migrations/0002_postgres_finish_attempts.sql"),
        true,
    ),
    (
        3,
        "postgres imap writes",
        include_str!("../migrations/0003_postgres_imap_writes.sql"),
        true,
    ),
    (
        4,
        "postgres imap writes leaner",
        include_str!("../migrations/0004_postgres_imap_writes_leaner.sql"),
        true,
    ),
    (
        5,
        "recent",
        include_str!("../migrations/0005_recent.sql"),
        false,
    ),
    (
        6,
        "sender authentication",
        include_str!("../migrations/0006_sender_auth.sql"),
        false,
    ),
    (
        7,
        "domain postmaster",
        include_str!("../migrations/0007_domain_postmaster.sql"),
        false,
    ),
    (
        8,
        "savedate",
        include_str!("../migrations/0008_savedate.sql"),
        false,
    ),
    (
        9,
        "imap metadata",
        include_str!("../migrations/0009_metadata.sql"),
        false,
    ),
];

/// The dialect words substituted into the shared SQL.
fn dialect(sql: &str, backend: &Backend) -> String {
    let (id, bytes, saved_at) = match backend {
        Backend::Postgres(_) => (
            "BIGSERIAL PRIMARY KEY",
            "BYTEA",
            "ALTER TABLE messages ALTER COLUMN saved_at
                 SET DEFAULT (extract(epoch FROM clock_timestamp()))::BIGINT;",
        ),
        Backend::Sqlite(_) => (
            "INTEGER PRIMARY KEY AUTOINCREMENT",
            "BLOB",
            "CREATE TRIGGER messages_saved_at AFTER INSERT ON messages
                 WHEN NEW.saved_at IS NULL
             BEGIN
                 UPDATE messages SET saved_at = CAST(strftime('%s', 'now') AS INTEGER)
                  WHERE id = NEW.id;
             END;",
        ),
    };
    sql.replace("@ID@", id)
        .replace("@BYTES@", bytes)
        .replace("@SAVED_AT_DEFAULT@", saved_at)
}

fn migrator(backend: &Backend) -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|(version, description, sql, postgres_only)| {
                let sql = match backend {
                    Backend::Sqlite(_) if *postgres_only => "SELECT 1;".to_string(),
                    _ => dialect(sql, backend),
                };
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    AssertSqlSafe(sql).into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

pub(crate) async fn run(store: &Store) -> Result<()> {
    let migrator = migrator(store.backend());
    let result = match store.backend() {
        Backend::Postgres(pool) => migrator.run(pool).await,
        Backend::Sqlite(pool) => migrator.run(pool).await,
    };
    result.map_err(|e| StoreError::Internal(format!("schema migration failed: {e}")))
}
