//! Reading a large message in pieces (IMAP FETCH of a whole message), so
//! that sending it never holds all of it in memory.
//!
//! A message's content is a blob named by its SHA-256 and never changes, so
//! each piece is read on its own, and no database connection is held while
//! the client takes its time: a slow download cannot starve the pool.
//!
//! A piece is cheap to cut only from content PostgreSQL stores
//! uncompressed (attachments, which do not compress, are): from compressed
//! content every piece decompresses everything before it, so such content
//! is read in four pieces; SQLite reads a whole value to cut any part of
//! it, so there the content is read in one piece (what sending it costs is
//! then its size in memory, as before pieces). The
//! only thing that can happen between two pieces is the content's removal
//! (the message expunged, and the last other reference to the content gone
//! at the same moment): the reader then fails with `NotFound`, and never
//! returns bytes of anything else.

use crate::{Backend, Result, Store, StoreError};

/// A message's text (its per-recipient prefix, then its content), piece by
/// piece ([`Store::open_text`]).
#[derive(Debug)]
pub struct TextReader {
    store: Store,
    hash: String,
    prefix: Option<Vec<u8>>,
    /// Bytes of content after the prefix.
    content_len: u64,
    /// Bytes of content already read.
    read: u64,
    piece: u64,
    len: u64,
}

impl Store {
    /// A reader of the text of message `uid` of the mailbox, in pieces of
    /// `piece` bytes (at least 1); `None` when there is no such message.
    pub async fn open_text(
        &self,
        mailbox_id: i64,
        uid: u32,
        piece: usize,
    ) -> Result<Option<TextReader>> {
        // How many pieces at most (0: as many as `piece` makes).
        let most = match self.backend() {
            Backend::Postgres(_) => {
                "CAST(CASE WHEN pg_column_compression(b.data) IS NULL THEN 0 ELSE 4 END AS BIGINT)"
            }
            Backend::Sqlite(_) => "1",
        };
        let sql = format!(
            "SELECT m.prefix, m.blob_hash, CAST(length(b.data) AS BIGINT), {most}
               FROM messages m JOIN blobs b ON b.hash = m.blob_hash
              WHERE m.mailbox_id = $1 AND m.uid = $2"
        );
        let head: Option<(Vec<u8>, String, i64, i64)> = on_conn!(self, |conn| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(mailbox_id)
                .bind(i64::from(uid))
                .fetch_optional(&mut *conn)
                .await
                .map_err(StoreError::from)
        })?;
        let Some((prefix, hash, content_len, most)) = head else {
            return Ok(None);
        };
        let content_len = content_len.max(0) as u64;
        let mut piece = piece.max(1) as u64;
        if most > 0 {
            piece = piece.max(content_len.div_ceil(most as u64));
        }
        Ok(Some(TextReader {
            store: self.clone(),
            hash,
            len: prefix.len() as u64 + content_len,
            prefix: Some(prefix),
            content_len,
            read: 0,
            piece,
        }))
    }
}

impl TextReader {
    /// The text's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next piece; `None` at the end.
    pub async fn next_piece(&mut self) -> Result<Option<Vec<u8>>> {
        if let Some(prefix) = self.prefix.take()
            && !prefix.is_empty()
        {
            return Ok(Some(prefix));
        }
        if self.read >= self.content_len {
            return Ok(None);
        }
        let want = self.piece.min(self.content_len - self.read);
        // SQL positions start at 1.
        let (from, count) = (self.read as i64 + 1, want as i64);
        let (store, hash) = (&self.store, self.hash.as_str());
        let piece: Option<Vec<u8>> = on_conn!(store, |conn| {
            sqlx::query_scalar(
                "SELECT substr(data, CAST($2 AS INTEGER), CAST($3 AS INTEGER))
                   FROM blobs WHERE hash = $1",
            )
            .bind(hash)
            .bind(from)
            .bind(count)
            .fetch_optional(&mut *conn)
            .await
            .map_err(StoreError::from)
        })?;
        let piece = piece.ok_or_else(|| {
            StoreError::NotFound(format!(
                "the content {} went away while it was being read",
                self.hash
            ))
        })?;
        if piece.len() as u64 != want {
            return Err(StoreError::Internal(format!(
                "the content {} gave {} bytes at {} where {want} were due",
                self.hash,
                piece.len(),
                self.read
            )));
        }
        self.read += want;
        Ok(Some(piece))
    }
}
