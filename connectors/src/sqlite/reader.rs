//! Reading the views back (`studio query`): the [`ViewReader`] of a SQLite file,
//! opened read-only. The questions are [`ViewReader`]'s, shared with Postgres.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{Column, Connection, Row, TypeInfo, ValueRef};

use super::{connect_options, db_error, sqlx_runtime};
use crate::SinkError;
use crate::content::{Content, ContentReader};
use crate::query::{Param, Rows, ViewReader, hex};

/// A read-only connection to a view database.
pub struct SqliteReader {
    runtime: tokio::runtime::Runtime,
    conn: SqliteConnection,
    content: ContentReader,
}

impl SqliteReader {
    /// Opens an existing database; fails when it does not exist. `content` follows
    /// references to large documents.
    pub fn open(path: &Path, content: ContentReader) -> Result<Self, SinkError> {
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
        Ok(SqliteReader {
            runtime,
            conn,
            content,
        })
    }
}

impl ViewReader for SqliteReader {
    fn rows(&mut self, sql: &str, params: &[Param]) -> Result<Rows, SinkError> {
        let conn = &mut self.conn;
        self.runtime.block_on(async {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for p in params {
                query = match *p {
                    Param::Id(id) => query.bind(id.hyphenated().to_string()),
                    Param::Int(n) => query.bind(n),
                };
            }
            let rows = query
                .fetch_all(&mut *conn)
                .await
                .map_err(db_error("querying the views"))?;
            Ok(rows.iter().map(to_json).collect())
        })
    }

    fn resolve(&mut self, content: Content) -> Result<String, SinkError> {
        self.runtime.block_on(content.resolve(&mut self.content))
    }

    fn presigned_url(&mut self, reference: &str, expiry: Duration) -> Result<String, SinkError> {
        self.runtime
            .block_on(self.content.presigned_url(reference, expiry))
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
                    "BLOB" => row
                        .try_get::<Vec<u8>, _>(i)
                        .map(|b| hex(&b).into())
                        .unwrap_or_default(),
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
