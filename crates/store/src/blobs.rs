//! Content-addressed message bodies: one copy per distinct content, keyed by
//! its SHA-256, however many mailboxes or queue entries refer to it.

use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::{Result, Store, now, on_backend, write_conn};

/// The hex SHA-256 of a blob's content: its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobHash(pub String);

impl BlobHash {
    /// The key of `data`.
    pub fn of(data: &[u8]) -> BlobHash {
        BlobHash(hex::encode(Sha256::digest(data)))
    }
}

impl Store {
    /// Stores `data` unless the same content is there already; returns its key.
    pub async fn put_blob(&self, data: &[u8]) -> Result<BlobHash> {
        let hash = BlobHash::of(data);
        write_conn!(self, |conn| {
            // The NOT EXISTS spares building (and compressing) a row for
            // content that is there already: the usual case for the MDA,
            // whose message the queue stored first.
            sqlx::query(
                "INSERT INTO blobs (hash, size, data, created_at)
                 SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM blobs WHERE hash = $1)
                 ON CONFLICT (hash) DO NOTHING",
            )
            .bind(&hash.0)
            .bind(data.len() as i64)
            .bind(data)
            .bind(now())
            .execute(&mut *conn)
            .await?;
            Ok(())
        })?;
        Ok(hash)
    }

    /// The content stored under `hash`, if any.
    pub async fn get_blob(&self, hash: &BlobHash) -> Result<Option<Vec<u8>>> {
        Ok(on_backend!(self, |pool| {
            sqlx::query("SELECT data FROM blobs WHERE hash = $1")
                .bind(&hash.0)
                .fetch_optional(pool)
                .await?
                .map(|row| row.try_get::<Vec<u8>, _>("data"))
                .transpose()?
        }))
    }
}
