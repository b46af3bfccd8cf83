//! Reading the views back (`studio query`): named questions over the view tables,
//! answered as rows of JSON values, opened read-only.

use std::path::Path;

use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{Column, Connection, Row, TypeInfo, ValueRef};

use super::{connect_options, db_error, sqlx_runtime};
use crate::SinkError;

/// Rows as (column, value) pairs in column order.
pub type Rows = Vec<Vec<(String, serde_json::Value)>>;

/// A read-only connection to a view database.
pub struct SqliteReader {
    runtime: tokio::runtime::Runtime,
    conn: SqliteConnection,
}

impl SqliteReader {
    /// Opens an existing database; fails when it does not exist.
    pub fn open(path: &Path) -> Result<Self, SinkError> {
        let runtime = sqlx_runtime()?;
        let display = path.display().to_string();
        let conn = runtime.block_on(async {
            let options = connect_options(path)?
                .read_only(true)
                .create_if_missing(false);
            SqliteConnection::connect_with(&options)
                .await
                .map_err(db_error(format!(
                    "cannot open view database {display} (run `studio replay` first)"
                )))
        })?;
        Ok(SqliteReader { runtime, conn })
    }

    /// Blobs, most recently updated first.
    pub fn blobs(&mut self, limit: u32) -> Result<Rows, SinkError> {
        self.rows(
            "SELECT blob_id, user_id, version, content_type, deleted_at IS NOT NULL AS deleted, \
             updated_at, length(doc) AS doc_bytes FROM blobs ORDER BY updated_at DESC, blob_id LIMIT ?",
            &[limit.to_string()],
        )
    }

    /// One blob with its document.
    pub fn blob(&mut self, blob_id: &str) -> Result<Rows, SinkError> {
        self.rows(
            "SELECT blob_id, user_id, version, content_type, parent_id, created_at, updated_at, \
             deleted_at, doc FROM blobs WHERE blob_id = ?",
            &[blob_id.to_owned()],
        )
    }

    /// Every blob derived from `blob_id`, at any depth, nearest first (S5.2).
    pub fn descendants(&mut self, blob_id: &str) -> Result<Rows, SinkError> {
        self.rows(
            "SELECT r.descendant_id AS blob_id, r.distance, b.deleted_at IS NOT NULL AS deleted \
             FROM blob_reach r JOIN blobs b ON b.blob_id = r.descendant_id \
             WHERE r.ancestor_id = ? ORDER BY r.distance, r.descendant_id",
            &[blob_id.to_owned()],
        )
    }

    /// Every blob `blob_id` is derived from, at any depth, nearest first (S5.2).
    pub fn ancestors(&mut self, blob_id: &str) -> Result<Rows, SinkError> {
        self.rows(
            "SELECT r.ancestor_id AS blob_id, r.distance, b.deleted_at IS NOT NULL AS deleted \
             FROM blob_reach r JOIN blobs b ON b.blob_id = r.ancestor_id \
             WHERE r.descendant_id = ? ORDER BY r.distance, r.ancestor_id",
            &[blob_id.to_owned()],
        )
    }

    /// A user's maximum DAG depth and how many blobs they own (S5.2).
    pub fn user_depth(&mut self, user_id: &str) -> Result<Rows, SinkError> {
        self.rows(
            "SELECT u.user_id, u.max_depth, (SELECT count(*) FROM blobs b WHERE b.user_id = u.user_id) AS blobs \
             FROM user_depth u WHERE u.user_id = ?",
            &[user_id.to_owned()],
        )
    }

    /// One blob's depth: its longest path from a root (S5.2).
    pub fn blob_depth(&mut self, blob_id: &str) -> Result<Rows, SinkError> {
        self.rows(
            "SELECT blob_id, depth FROM blob_depth WHERE blob_id = ?",
            &[blob_id.to_owned()],
        )
    }

    /// Dead letters in log order.
    pub fn dead_letters(&mut self, limit: u32) -> Result<Rows, SinkError> {
        self.rows(
            "SELECT seq, delta_id, blob_id, reason, substr(raw, 1, 80) AS raw FROM dead_letters ORDER BY seq LIMIT ?",
            &[limit.to_string()],
        )
    }

    fn rows(&mut self, sql: &'static str, params: &[String]) -> Result<Rows, SinkError> {
        let conn = &mut self.conn;
        self.runtime.block_on(async {
            let mut query = sqlx::query(sql);
            for p in params {
                query = query.bind(p.clone());
            }
            let rows = query
                .fetch_all(&mut *conn)
                .await
                .map_err(db_error("querying the views"))?;
            Ok(rows.iter().map(to_json).collect())
        })
    }
}

fn to_json(row: &SqliteRow) -> Vec<(String, serde_json::Value)> {
    row.columns()
        .iter()
        .map(|c| {
            let i = c.ordinal();
            let raw = row.try_get_raw(i).expect("column exists");
            let value = if raw.is_null() {
                serde_json::Value::Null
            } else {
                match raw.type_info().name() {
                    "INTEGER" | "BOOLEAN" => {
                        row.try_get::<i64, _>(i).map(Into::into).unwrap_or_default()
                    }
                    "REAL" => row.try_get::<f64, _>(i).map(Into::into).unwrap_or_default(),
                    _ => row
                        .try_get::<String, _>(i)
                        .map(Into::into)
                        .unwrap_or_default(),
                }
            };
            (c.name().to_owned(), value)
        })
        .collect()
}
