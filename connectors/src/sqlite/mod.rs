//! The SQLite view store (the embedded default), written with `sqlx`.
//!
//! Each [`ViewBatch`] is one transaction of multi-row statements: upserts for `blobs` and
//! `processed_by`, inserts for `deltas_applied` and `dead_letters` (whose `seq` follows
//! log order). The schema is `schema.sql` beside this file. The connection runs in WAL
//! mode with `synchronous=NORMAL` and a large page cache: a process crash never corrupts
//! the views, and a batch is either wholly visible to readers or not at all.

mod reader;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, QueryBuilder, Sqlite};
use studio_model::{Timestamp, Uuid, ViewBatch};

use crate::{SinkError, ViewSink};

pub use reader::{Rows, SqliteReader};

/// The view tables, created if missing.
pub const SCHEMA: &str = include_str!("schema.sql");

/// Drops the tables a replay owns and recreates.
const DROP_VIEWS: &str = "DROP TABLE IF EXISTS blobs; DROP TABLE IF EXISTS deltas_applied; \
     DROP TABLE IF EXISTS processed_by; DROP TABLE IF EXISTS dead_letters;";

/// SQLite allows 32766 bound values per statement.
const MAX_BINDS: usize = 32_000;

/// How the database file is opened.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// The database file; created if missing.
    pub path: PathBuf,
    /// Page cache size in KiB.
    pub cache_size_kib: u64,
    /// Drop and recreate the view tables first (a replay starts from nothing).
    pub recreate: bool,
}

/// The SQLite view sink.
pub struct SqliteViews {
    runtime: tokio::runtime::Runtime,
    conn: SqliteConnection,
}

fn db_error(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> SinkError {
    let context = context.into();
    move |e| SinkError::Database {
        context,
        source: Box::new(e),
    }
}

impl SqliteViews {
    /// Opens (or creates) the database and its tables.
    pub fn open(options: &SqliteOptions) -> Result<Self, SinkError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| SinkError::Database {
                context: "starting the SQLite runtime".into(),
                source: Box::new(e),
            })?;
        let path = options.path.display().to_string();
        let conn = runtime.block_on(async {
            let connect = SqliteConnectOptions::from_str("sqlite:")
                .map_err(db_error("bad SQLite options"))?
                .filename(&options.path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .pragma("cache_size", format!("-{}", options.cache_size_kib))
                .pragma("temp_store", "memory");
            let mut conn = SqliteConnection::connect_with(&connect)
                .await
                .map_err(db_error(format!(
                    "cannot open SQLite database {path} (is its directory writable?)"
                )))?;
            let mut tx = conn.begin().await.map_err(db_error("BEGIN"))?;
            if options.recreate {
                sqlx::raw_sql(DROP_VIEWS)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error(format!("cannot write to {path}")))?;
            }
            sqlx::raw_sql(SCHEMA)
                .execute(&mut *tx)
                .await
                .map_err(db_error(format!("cannot create the view tables in {path}")))?;
            tx.commit()
                .await
                .map_err(db_error(format!("cannot write to {path}")))?;
            Ok::<_, SinkError>(conn)
        })?;
        Ok(SqliteViews { runtime, conn })
    }

    /// The path a `--db` value names, when it names a SQLite file.
    pub fn path_of(db: &str) -> Option<&Path> {
        let path = db
            .strip_prefix("sqlite://")
            .or_else(|| db.strip_prefix("sqlite:"))
            .unwrap_or(db);
        (!db.contains("://") || db.starts_with("sqlite://")).then(|| Path::new(path))
    }
}

fn text(id: Uuid) -> String {
    id.hyphenated().to_string()
}

fn opt_text(id: Option<Uuid>) -> Option<String> {
    id.map(text)
}

fn time(t: Timestamp) -> String {
    t.to_rfc3339()
}

/// Runs `INSERT ... VALUES (..), (..)` over `rows` in statements of at most
/// [`MAX_BINDS`] values, with `tail` after the values (an `ON CONFLICT` clause).
async fn insert_rows<R>(
    conn: &mut SqliteConnection,
    head: &str,
    columns: usize,
    tail: &str,
    rows: &[R],
    mut bind: impl FnMut(&mut sqlx::query_builder::Separated<'_, Sqlite, &'static str>, &R),
) -> Result<(), SinkError> {
    for chunk in rows.chunks(MAX_BINDS / columns) {
        let mut query = QueryBuilder::<Sqlite>::new(head);
        query.push_values(chunk, |mut b, row| bind(&mut b, row));
        query.push(tail);
        query
            .build()
            .execute(&mut *conn)
            .await
            .map_err(db_error(format!("writing {head}")))?;
    }
    Ok(())
}

impl ViewSink for SqliteViews {
    fn write(&mut self, batch: &ViewBatch) -> Result<(), SinkError> {
        let conn = &mut self.conn;
        self.runtime.block_on(async {
            let mut tx = conn.begin().await.map_err(db_error("BEGIN"))?;
            insert_rows(
                &mut tx,
                "INSERT INTO blobs (blob_id, user_id, version, content_type, doc, parent_id, created_at, updated_at, deleted_at) ",
                9,
                " ON CONFLICT (blob_id) DO UPDATE SET user_id = excluded.user_id, version = excluded.version, \
                 content_type = excluded.content_type, doc = excluded.doc, parent_id = excluded.parent_id, \
                 created_at = excluded.created_at, updated_at = excluded.updated_at, deleted_at = excluded.deleted_at",
                &batch.blob_upserts,
                |b, r| {
                    b.push_bind(text(r.blob_id))
                        .push_bind(text(r.user_id))
                        .push_bind(r.version as i64)
                        .push_bind(r.content_type.clone())
                        .push_bind(r.doc.to_json())
                        .push_bind(opt_text(r.parent_id))
                        .push_bind(time(r.created_at))
                        .push_bind(time(r.updated_at))
                        .push_bind(r.deleted_at.map(time));
                },
            )
            .await?;
            for id in &batch.blob_deletes {
                sqlx::query("DELETE FROM blobs WHERE blob_id = ?")
                    .bind(text(*id))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error("deleting from blobs"))?;
            }
            insert_rows(
                &mut tx,
                "INSERT INTO deltas_applied (delta_id, blob_id, version, operation, user_id, provider_id, caused_by, created_at) ",
                8,
                "",
                &batch.applied,
                |b, r| {
                    b.push_bind(text(r.delta_id))
                        .push_bind(text(r.blob_id))
                        .push_bind(r.version as i64)
                        .push_bind(r.operation.as_str())
                        .push_bind(text(r.user_id))
                        .push_bind(r.provider_id.clone())
                        .push_bind(opt_text(r.caused_by))
                        .push_bind(time(r.created_at));
                },
            )
            .await?;
            insert_rows(
                &mut tx,
                "INSERT INTO processed_by (blob_id, provider_id, version, delta_id) ",
                4,
                " ON CONFLICT (blob_id, provider_id) DO UPDATE SET version = excluded.version, delta_id = excluded.delta_id",
                &batch.processed_upserts,
                |b, r| {
                    b.push_bind(text(r.blob_id))
                        .push_bind(r.provider_id.clone())
                        .push_bind(r.version as i64)
                        .push_bind(text(r.delta_id));
                },
            )
            .await?;
            for (blob, provider) in &batch.processed_deletes {
                sqlx::query("DELETE FROM processed_by WHERE blob_id = ? AND provider_id = ?")
                    .bind(text(*blob))
                    .bind(provider.clone())
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error("deleting from processed_by"))?;
            }
            insert_rows(
                &mut tx,
                "INSERT INTO dead_letters (delta_id, blob_id, reason, raw) ",
                4,
                "",
                &batch.dead_letters,
                |b, r| {
                    b.push_bind(opt_text(r.delta_id))
                        .push_bind(opt_text(r.blob_id))
                        .push_bind(r.reason.to_string())
                        .push_bind(r.raw_text().into_owned());
                },
            )
            .await?;
            tx.commit().await.map_err(db_error("COMMIT"))
        })
    }
}
