//! The named questions of `studio query`, asked the same way of every view store.
//!
//! A store implements [`ViewReader`]: running a query written with `?` placeholders
//! (the Postgres reader numbers them), reading a blob's stored content, and making a
//! URL for content kept in S3. The questions themselves are provided methods here, so
//! the SQL is written once for SQLite and Postgres. It sticks to what both dialects
//! share; ids are bound as [`Param::Id`] (text in SQLite, `uuid` in Postgres).

use std::time::Duration;

use studio_model::Uuid;

use crate::SinkError;
use crate::content::Content;

/// Rows as (column, value) pairs in column order.
pub type Rows = Vec<Vec<(String, serde_json::Value)>>;

/// A bound parameter.
#[derive(Clone, Copy, Debug)]
pub enum Param {
    /// A blob, delta or user id.
    Id(Uuid),
    /// An integer (a limit).
    Int(i64),
}

/// A view store that answers `studio query`.
pub trait ViewReader {
    /// Runs `sql` (with `?` placeholders) and returns its rows as JSON values: integers
    /// as numbers, ids and times as strings (times in RFC 3339 UTC, as SQLite stores
    /// them), binary columns as `\x`-prefixed hex.
    fn rows(&mut self, sql: &str, params: &[Param]) -> Result<Rows, SinkError>;

    /// The stored content of a blob's document (`None`: no such blob).
    fn content(&mut self, blob_id: Uuid) -> Result<Option<Content>, SinkError> {
        let rows = self.rows(
            "SELECT doc, doc_ref FROM blobs WHERE blob_id = ?",
            &[Param::Id(blob_id)],
        )?;
        let text = |value: &serde_json::Value| value.as_str().map(str::to_owned);
        Ok(rows.first().and_then(|row| match row.as_slice() {
            [(_, doc), (_, reference)] => Content::from_columns(text(doc), text(reference)),
            _ => None,
        }))
    }

    /// The document's JSON, wherever it is stored.
    fn resolve(&mut self, content: Content) -> Result<String, SinkError>;

    /// A presigned GET URL for content kept in S3, valid for `expiry`.
    fn presigned_url(&mut self, reference: &str, expiry: Duration) -> Result<String, SinkError>;

    /// Blobs, most recently updated first.
    fn blobs(&mut self, limit: u32) -> Result<Rows, SinkError> {
        self.rows(
            "SELECT blob_id, user_id, version, content_type, \
             CASE WHEN deleted_at IS NULL THEN 0 ELSE 1 END AS deleted, \
             updated_at, doc_bytes FROM blobs ORDER BY updated_at DESC, blob_id LIMIT ?",
            &[Param::Int(limit.into())],
        )
    }

    /// One blob with its document (read from wherever it is stored).
    fn blob(&mut self, blob_id: Uuid) -> Result<Rows, SinkError> {
        let mut rows = self.rows(
            "SELECT blob_id, user_id, version, content_type, parent_id, created_at, updated_at, \
             deleted_at FROM blobs WHERE blob_id = ?",
            &[Param::Id(blob_id)],
        )?;
        if let Some(row) = rows.first_mut()
            && let Some(content) = self.content(blob_id)?
        {
            let doc = self.resolve(content)?;
            row.push(("doc".into(), doc.into()));
        }
        Ok(rows)
    }

    /// A presigned URL for a blob's document, when it is kept in S3. `Ok(None)`: no
    /// such blob.
    fn blob_url(&mut self, blob_id: Uuid, expiry: Duration) -> Result<Option<String>, SinkError> {
        match self.content(blob_id)? {
            None => Ok(None),
            Some(Content::Ref(reference)) => self.presigned_url(&reference, expiry).map(Some),
            Some(_) => Err(SinkError::Refused(format!(
                "blob {blob_id} is stored in the database, not in S3, so it has no URL; \
                 `studio query blob {blob_id}` prints it"
            ))),
        }
    }

    /// Every blob derived from `blob_id`, at any depth, nearest first (S5.2).
    fn descendants(&mut self, blob_id: Uuid) -> Result<Rows, SinkError> {
        self.rows(
            "SELECT r.descendant_id AS blob_id, r.distance, \
             CASE WHEN b.deleted_at IS NULL THEN 0 ELSE 1 END AS deleted \
             FROM blob_reach r JOIN blobs b ON b.blob_id = r.descendant_id \
             WHERE r.ancestor_id = ? ORDER BY r.distance, r.descendant_id",
            &[Param::Id(blob_id)],
        )
    }

    /// Every blob `blob_id` is derived from, at any depth, nearest first (S5.2).
    fn ancestors(&mut self, blob_id: Uuid) -> Result<Rows, SinkError> {
        self.rows(
            "SELECT r.ancestor_id AS blob_id, r.distance, \
             CASE WHEN b.deleted_at IS NULL THEN 0 ELSE 1 END AS deleted \
             FROM blob_reach r JOIN blobs b ON b.blob_id = r.ancestor_id \
             WHERE r.descendant_id = ? ORDER BY r.distance, r.ancestor_id",
            &[Param::Id(blob_id)],
        )
    }

    /// A user's maximum DAG depth and how many blobs they own (S5.2).
    fn user_depth(&mut self, user_id: Uuid) -> Result<Rows, SinkError> {
        self.rows(
            "SELECT u.user_id, u.max_depth, \
             (SELECT count(*) FROM blobs b WHERE b.user_id = u.user_id) AS blobs \
             FROM user_depth u WHERE u.user_id = ?",
            &[Param::Id(user_id)],
        )
    }

    /// One blob's depth: its longest path from a root (S5.2).
    fn blob_depth(&mut self, blob_id: Uuid) -> Result<Rows, SinkError> {
        self.rows(
            "SELECT blob_id, depth FROM blob_depth WHERE blob_id = ?",
            &[Param::Id(blob_id)],
        )
    }

    /// Dead letters in log order.
    fn dead_letters(&mut self, limit: u32) -> Result<Rows, SinkError> {
        self.rows(
            "SELECT seq, delta_id, blob_id, reason, substr(raw, 1, 80) AS raw \
             FROM dead_letters ORDER BY seq LIMIT ?",
            &[Param::Int(limit.into())],
        )
    }

    /// The deltas of a blob in version order, from the delta store.
    fn deltas_of(&mut self, blob_id: Uuid) -> Result<Rows, SinkError> {
        self.rows(
            "SELECT delta_id, version, operation, user_id, provider_id, caused_by, created_at \
             FROM deltas WHERE blob_id = ? ORDER BY version",
            &[Param::Id(blob_id)],
        )
    }
}

/// Hex text of a binary column, `\x` first (as Postgres prints `bytea`).
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 + bytes.len() * 2);
    out.push_str("\\x");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}
