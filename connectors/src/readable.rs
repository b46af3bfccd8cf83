//! The questions of the query surfaces (S6.3), answered only with blobs the asking
//! user may read: its owner, or a user holding any grant on it (`grants`, S6.1; every
//! permission implies `read`, docs/access.md). A blob the user may not read answers
//! exactly like a missing one (`None`), so existence does not leak. The SQL is written
//! once for SQLite and Postgres, like [`ViewReader`]'s own questions.

use studio_model::{BlobLedger, Effects, SourcePos, Uuid, parse_record};

use crate::SinkError;
use crate::query::{Param, Rows, ViewReader};

/// `b` (a `blobs` row) is readable by the user bound twice after it.
const READABLE: &str = "(b.user_id = ? OR EXISTS (SELECT 1 FROM grants g \
     WHERE g.blob_id = b.blob_id AND g.user_id = ?))";

/// A blob's columns, without its document.
const BLOB_COLUMNS: &str = "b.blob_id, b.user_id, b.version, b.content_type, b.parent_id, \
     b.created_at, b.updated_at, b.deleted_at";

/// One object per row.
pub type Objects = Vec<serde_json::Map<String, serde_json::Value>>;

fn objects(rows: Rows) -> Objects {
    rows.into_iter()
        .map(|row| row.into_iter().collect())
        .collect()
}

/// Why a past version cannot be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] SinkError),
    /// The delta store keeps no records (a replay without `--store-records`).
    #[error(
        "the delta store of this database keeps no records, so past versions cannot be \
         rebuilt: replay with --store-records (studio run always keeps them)"
    )]
    NoRecords,
}

/// The access-filtered questions, for every [`ViewReader`].
pub trait Readable: ViewReader {
    /// True when `user` may read `blob` (false when it does not exist).
    fn may_read(&mut self, user: Uuid, blob: Uuid) -> Result<bool, SinkError> {
        let sql = format!("SELECT b.blob_id FROM blobs b WHERE b.blob_id = ? AND {READABLE}");
        let rows = self.rows(&sql, &[Param::Id(blob), Param::Id(user), Param::Id(user)])?;
        Ok(!rows.is_empty())
    }

    /// The blob with its document as JSON, if `user` may read it.
    fn readable_blob(
        &mut self,
        user: Uuid,
        blob: Uuid,
    ) -> Result<Option<serde_json::Map<String, serde_json::Value>>, SinkError> {
        let sql = format!("SELECT {BLOB_COLUMNS} FROM blobs b WHERE b.blob_id = ? AND {READABLE}");
        let rows = self.rows(&sql, &[Param::Id(blob), Param::Id(user), Param::Id(user)])?;
        let Some(mut object) = objects(rows).pop() else {
            return Ok(None);
        };
        let doc = match self.content(blob)? {
            Some(content) => document(self.resolve(content)?),
            None => serde_json::Value::Null,
        };
        object.insert("doc".into(), doc);
        Ok(Some(object))
    }

    /// The blobs `user` may read, by id, after `after`; at most `limit`, and the
    /// cursor of the next page when there is one (the last id returned).
    fn readable_blobs(
        &mut self,
        user: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<(Objects, Option<Uuid>), SinkError> {
        let sql = format!(
            "SELECT {BLOB_COLUMNS} FROM blobs b WHERE b.blob_id > ? AND {READABLE} \
             ORDER BY b.blob_id LIMIT ?"
        );
        let params = [
            Param::Id(after.unwrap_or(Uuid::nil())),
            Param::Id(user),
            Param::Id(user),
            Param::Int(i64::from(limit) + 1),
        ];
        let mut page = objects(self.rows(&sql, &params)?);
        let next = if page.len() > limit as usize {
            page.truncate(limit as usize);
            page.last()
                .and_then(|o| o.get("blob_id"))
                .and_then(|v| v.as_str())
                .and_then(|s| Uuid::try_parse(s).ok())
        } else {
            None
        };
        Ok((page, next))
    }

    /// The accepted deltas of a blob `user` may read, in version order.
    fn readable_deltas(&mut self, user: Uuid, blob: Uuid) -> Result<Option<Objects>, SinkError> {
        if !self.may_read(user, blob)? {
            return Ok(None);
        }
        let rows = self.rows(
            "SELECT delta_id, version, operation, user_id, provider_id, caused_by, created_at \
             FROM deltas_applied WHERE blob_id = ? ORDER BY version",
            &[Param::Id(blob)],
        )?;
        Ok(Some(objects(rows)))
    }

    /// The blobs derived from `blob` (`descendants`) or that it derives from, at any
    /// depth, nearest first: only those `user` may read, and only if `user` may read
    /// `blob`.
    fn readable_relatives(
        &mut self,
        user: Uuid,
        blob: Uuid,
        descendants: bool,
    ) -> Result<Option<Objects>, SinkError> {
        if !self.may_read(user, blob)? {
            return Ok(None);
        }
        let (other, this) = if descendants {
            ("descendant_id", "ancestor_id")
        } else {
            ("ancestor_id", "descendant_id")
        };
        let sql = format!(
            "SELECT r.{other} AS blob_id, r.distance, \
             CASE WHEN b.deleted_at IS NULL THEN 0 ELSE 1 END AS deleted \
             FROM blob_reach r JOIN blobs b ON b.blob_id = r.{other} \
             WHERE r.{this} = ? AND {READABLE} ORDER BY r.distance, r.{other}"
        );
        let rows = self.rows(&sql, &[Param::Id(blob), Param::Id(user), Param::Id(user)])?;
        Ok(Some(objects(rows)))
    }

    /// The document of a blob `user` may read as it was at `version`, rebuilt from the
    /// delta store by the same rules that made it (S3); `None`: no such blob or
    /// version, or not readable.
    fn readable_version(
        &mut self,
        user: Uuid,
        blob: Uuid,
        version: u64,
    ) -> Result<Option<serde_json::Value>, HistoryError> {
        if version == 0 || !self.may_read(user, blob)? {
            return Ok(None);
        }
        let rows = self.rows(
            "SELECT record FROM deltas WHERE blob_id = ? AND version <= ? ORDER BY version",
            &[Param::Id(blob), Param::Int(version as i64)],
        )?;
        if (rows.len() as u64) < version {
            return Ok(None);
        }
        let mut ledger = BlobLedger::default();
        let mut fx = Effects::default();
        for (i, row) in rows.iter().enumerate() {
            let Some(record) = row.first().and_then(|(_, v)| v.as_str()) else {
                return Err(HistoryError::NoRecords);
            };
            let delta = parse_record(record.as_bytes(), SourcePos::at(i as u64))
                .map_err(|dl| SinkError::Refused(format!("a stored delta: {}", dl.reason)))?;
            ledger.offer(delta, &mut fx);
        }
        let (mut blobs, mut processed) = (Vec::new(), Vec::new());
        ledger.flush(&mut blobs, &mut processed);
        Ok(blobs
            .into_iter()
            .find(|(row, diff)| *diff > 0 && row.version == version)
            .map(|(row, _)| document(row.doc.to_json())))
    }
}

impl<R: ViewReader + ?Sized> Readable for R {}

/// A stored document's JSON text as a value (it was written from one).
fn document(text: String) -> serde_json::Value {
    serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
}
