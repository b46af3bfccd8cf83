//! Reading the Postgres views back (`studio query`): the [`ViewReader`] of a Postgres
//! database. The questions are [`ViewReader`]'s, shared with SQLite; this file only
//! numbers the placeholders and turns Postgres values into the same JSON as SQLite's
//! (ids as hyphenated text, times as RFC 3339 UTC, documents as compact JSON with
//! sorted keys).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{Column, Row, TypeInfo, ValueRef};
use studio_model::{Timestamp, Uuid};

use super::connection::{connect, pg_error, runtime};
use crate::SinkError;
use crate::content::{Content, ContentReader, POSTGRES_REF_PREFIX};
use crate::query::{Param, Rows, ViewReader, hex};

/// A connection to a Postgres view database, for reading.
pub struct PgReader {
    runtime: tokio::runtime::Runtime,
    conn: PgConnection,
    content: ContentReader,
}

impl PgReader {
    /// Connects; `content` follows references to large documents.
    pub fn open(url: &str, timeout: Duration, content: ContentReader) -> Result<Self, SinkError> {
        let runtime = runtime()?;
        let conn = runtime.block_on(connect(url, timeout))?;
        Ok(PgReader {
            runtime,
            conn,
            content,
        })
    }
}

/// `?` placeholders numbered for Postgres (`$1`, `$2`, ...). The questions' SQL holds no
/// `?` inside string literals.
pub fn number_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// A JSON document as SQLite holds it: compact, keys sorted.
fn canonical_json(text: &str) -> Result<String, SinkError> {
    serde_json::from_str::<serde_json::Value>(text)
        .map(|v| v.to_string())
        .map_err(|e| SinkError::Database {
            context: "a stored document is not JSON".into(),
            source: Box::new(e),
        })
}

impl ViewReader for PgReader {
    fn rows(&mut self, sql: &str, params: &[Param]) -> Result<Rows, SinkError> {
        let sql = number_placeholders(sql);
        let conn = &mut self.conn;
        self.runtime.block_on(async {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for p in params {
                query = match *p {
                    Param::Id(id) => query.bind(id),
                    Param::Int(n) => query.bind(n),
                };
            }
            let rows = query
                .fetch_all(&mut *conn)
                .await
                .map_err(pg_error("querying the views"))?;
            Ok(rows.iter().map(to_json).collect())
        })
    }

    fn resolve(&mut self, content: Content) -> Result<String, SinkError> {
        match content {
            // JSONB prints its own way (`{"a": 1}`); give the canonical form.
            Content::Json(text) => canonical_json(&text),
            // Kept in this database: the JSON as the sink wrote it.
            Content::Ref(reference) if reference.starts_with(POSTGRES_REF_PREFIX) => {
                let conn = &mut self.conn;
                let doc: Option<String> = self.runtime.block_on(async {
                    sqlx::query_scalar("SELECT doc FROM large_docs WHERE doc_ref = $1")
                        .bind(&reference)
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(pg_error("reading a large document"))
                })?;
                doc.ok_or_else(|| {
                    SinkError::Refused(format!("{reference}: no such row in large_docs"))
                })
            }
            other => self.runtime.block_on(other.resolve(&mut self.content)),
        }
    }

    fn presigned_url(&mut self, reference: &str, expiry: Duration) -> Result<String, SinkError> {
        self.runtime
            .block_on(self.content.presigned_url(reference, expiry))
    }
}

/// One row as (column, JSON value) pairs.
pub fn to_json(row: &PgRow) -> Vec<(String, serde_json::Value)> {
    use serde_json::Value;
    row.columns()
        .iter()
        .map(|c| {
            let i = c.ordinal();
            let raw = row.try_get_raw(i).expect("column exists");
            let value = if raw.is_null() {
                Value::Null
            } else {
                match raw.type_info().name() {
                    "INT8" => row.try_get::<i64, _>(i).map(Into::into).unwrap_or_default(),
                    "INT4" => row.try_get::<i32, _>(i).map(Into::into).unwrap_or_default(),
                    "INT2" => row.try_get::<i16, _>(i).map(Into::into).unwrap_or_default(),
                    "BOOL" => row
                        .try_get::<bool, _>(i)
                        .map(|b| Value::from(i64::from(b)))
                        .unwrap_or_default(),
                    "FLOAT8" => row.try_get::<f64, _>(i).map(Into::into).unwrap_or_default(),
                    "UUID" => row
                        .try_get::<Uuid, _>(i)
                        .map(|u| u.hyphenated().to_string().into())
                        .unwrap_or_default(),
                    "TIMESTAMPTZ" => row
                        .try_get::<DateTime<Utc>, _>(i)
                        .map(|t| Timestamp(t).to_rfc3339().into())
                        .unwrap_or_default(),
                    "JSONB" | "JSON" => row
                        .try_get::<serde_json::Value, _>(i)
                        .map(|v| v.to_string().into())
                        .unwrap_or_default(),
                    "BYTEA" => row
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

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_are_numbered() {
        assert_eq!(
            super::number_placeholders("a = ? AND b = ? LIMIT ?"),
            "a = $1 AND b = $2 LIMIT $3"
        );
    }
}
