//! The SQLite view store (the embedded default), written with `sqlx`.
//!
//! Each [`ViewBatch`] is one transaction of multi-row statements: upserts for `blobs` and
//! `processed_by`, inserts for `deltas_applied` and `dead_letters` (whose `seq` follows
//! the order in which letters were decided), rows sorted by key so that B-tree inserts
//! walk the index instead of jumping across it. The schema is `schema.sql` beside this
//! file. Documents are stored by the shared content rule ([`crate::content`]): JSON
//! text in `blobs.doc` (SQLite's JSON functions read it), or a reference to a large
//! store (a local directory or S3) in `blobs.doc_ref`.
//!
//! Two modes ([`OpenMode`]):
//! - **Rebuild** (`studio replay`): the views are rebuilt from the log, so the file is
//!   created anew and loaded like a bulk load: no journal, no syncs, 16 KiB pages.
//!   When the load completes, [`ViewSink::finish`] switches the file to WAL mode. A
//!   replay that dies leaves a half-built file that the next replay replaces.
//! - **Maintain** (the long-running service): WAL with `synchronous=NORMAL`; a crash
//!   never loses a committed batch and a batch is wholly visible or not at all.

mod reader;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Sqlite};
use studio_model::{
    AppliedRow, Checkpoint, DeadLetter, DepthRow, EdgeRow, EventRow, Keyed, KeyedChanges,
    ProcessedRow, ReachRow, RejectedEdgeRow, SourcePos, Timestamp, TransformRequest, UserDepthRow,
    Uuid, ViewBatch, WaitingRow,
};

use crate::content::{ContentCodec, ContentSpec, EncodedBlob, LargeStoreSpec, inflate_legacy_lz4};
use crate::retry::RetryPolicy;
use crate::{RecoveredAs, SinkError, ViewSink, positions_json};
use futures_util::TryStreamExt;

pub use crate::VIEW_TABLES;
pub use crate::query::Rows;
pub use reader::SqliteReader;

/// The view tables, created if missing.
pub const SCHEMA: &str = include_str!("schema.sql");

/// Everything a restart replays, in log order: the accepted deltas, the waiting ones,
/// and the rejected deltas except expired gaps (see [`crate::ViewSink::recover`]).
const RECOVERY_QUERY: &str = "SELECT pos_part, pos_offset, record, 0 FROM deltas \
     UNION ALL SELECT pos_part, pos_offset, record, 0 FROM deltas_waiting \
     UNION ALL SELECT pos_part, pos_offset, raw, reason LIKE 'S4.4%' FROM dead_letters \
         WHERE delta_id IS NOT NULL \
     ORDER BY 1, 2";

/// SQLite allows 32766 bound values per statement.
const MAX_BINDS: usize = 32_000;

pub use crate::OpenMode;

/// How the database file is opened.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// The database file; created if missing.
    pub path: PathBuf,
    /// Page cache size in KiB.
    pub cache_size_kib: u64,
    /// Rebuild or maintain.
    pub mode: OpenMode,
    /// How documents are stored.
    pub content: ContentSpec,
    /// Retries while the large store is unavailable.
    pub retry: RetryPolicy,
}

/// The SQLite view sink.
pub struct SqliteViews {
    runtime: tokio::runtime::Runtime,
    conn: SqliteConnection,
    mode: OpenMode,
    content: ContentCodec,
    retry: RetryPolicy,
}

pub(crate) fn db_error(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> SinkError {
    let context = context.into();
    move |e| SinkError::Database {
        context,
        source: Box::new(e),
    }
}

fn io_error(context: String) -> impl FnOnce(std::io::Error) -> SinkError {
    move |e| SinkError::Database {
        context,
        source: Box::new(e),
    }
}

/// sqlx is async; Studio's sinks and readers are called from plain threads, so each
/// owns a small current-thread runtime to drive its connection (and its S3 client).
pub(crate) fn sqlx_runtime() -> Result<tokio::runtime::Runtime, SinkError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_error("starting the SQLite runtime".into()))
}

/// Options for a file, with the settings every Studio connection shares.
pub(crate) fn connect_options(path: &Path) -> Result<SqliteConnectOptions, SinkError> {
    Ok(SqliteConnectOptions::from_str("sqlite:")
        .map_err(db_error("bad SQLite options"))?
        .filename(path)
        // Large transactions are the point here, not a symptom.
        .disable_statement_logging())
}

impl SqliteViews {
    /// Opens (or creates) the database and its tables.
    pub fn open(options: &SqliteOptions) -> Result<Self, SinkError> {
        let runtime = sqlx_runtime()?;
        let path = options.path.display().to_string();
        if options.mode == OpenMode::Rebuild {
            remove_view_database(&runtime, &options.path)?;
        }
        let conn = runtime.block_on(async {
            let connect = connect_options(&options.path)?
                .create_if_missing(true)
                .pragma("cache_size", format!("-{}", options.cache_size_kib))
                .pragma("temp_store", "memory");
            let connect = match options.mode {
                OpenMode::Rebuild => connect
                    .page_size(16_384)
                    .journal_mode(SqliteJournalMode::Off)
                    .synchronous(SqliteSynchronous::Off),
                // A new file gets the rebuild's 16 KiB pages too (fewer B-tree pages
                // to rewrite per transaction); the WAL is checkpointed every 64 MiB
                // rather than every 4 MiB, so that a page rewritten by many batches is
                // copied back once.
                OpenMode::Maintain => connect
                    .page_size(16_384)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .pragma("wal_autocheckpoint", "4096"),
            };
            let mut conn = SqliteConnection::connect_with(&connect)
                .await
                .map_err(db_error(format!("cannot open SQLite database {path}")))?;
            sqlx::raw_sql(SCHEMA)
                .execute(&mut conn)
                .await
                .map_err(db_error(format!("cannot create the view tables in {path}")))?;
            inflate_legacy_documents(&mut conn).await?;
            Ok::<_, SinkError>(conn)
        })?;
        if let LargeStoreSpec::Postgres = options.content.large {
            return Err(SinkError::Refused(
                "large documents can go to the Postgres table large_docs only with a Postgres view database".into(),
            ));
        }
        let content = options.retry.run("connecting the large store", || {
            runtime.block_on(options.content.connect())
        })?;
        Ok(SqliteViews {
            runtime,
            conn,
            mode: options.mode,
            content,
            retry: options.retry,
        })
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

/// A database written before documents were kept as JSON has a `doc_lz4` column
/// holding LZ4-compressed documents: turn them back into JSON in `doc` and drop the
/// column, in one transaction, so that every row's `doc` is readable by SQL.
async fn inflate_legacy_documents(conn: &mut SqliteConnection) -> Result<(), SinkError> {
    let legacy: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pragma_table_info('blobs') WHERE name = 'doc_lz4'",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(db_error("reading the columns of blobs"))?;
    if legacy == 0 {
        return Ok(());
    }
    let mut tx = conn.begin().await.map_err(db_error("BEGIN"))?;
    let packed: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT blob_id, doc_lz4 FROM blobs WHERE doc_lz4 IS NOT NULL")
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error("reading blobs.doc_lz4"))?;
    for (blob_id, lz4) in &packed {
        sqlx::query("UPDATE blobs SET doc = ?, doc_lz4 = NULL WHERE blob_id = ?")
            .bind(inflate_legacy_lz4(lz4)?)
            .bind(blob_id)
            .execute(&mut *tx)
            .await
            .map_err(db_error("storing a decompressed document"))?;
    }
    sqlx::raw_sql("ALTER TABLE blobs DROP COLUMN doc_lz4")
        .execute(&mut *tx)
        .await
        .map_err(db_error("dropping blobs.doc_lz4"))?;
    tx.commit().await.map_err(db_error("COMMIT"))?;
    tracing::info!(
        documents = packed.len(),
        "stored the LZ4-compressed documents of blobs.doc_lz4 as JSON in blobs.doc"
    );
    Ok(())
}

fn text(id: Uuid) -> String {
    id.hyphenated().to_string()
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
    rows: &[&R],
    bind: &impl Fn(&mut sqlx::query_builder::Separated<'_, Sqlite, &'static str>, &R),
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

/// A statement with its bound values.
type Query<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>;

/// How one keyed view is written: an upsert of its rows, a delete by key.
struct KeyedTable<R: Keyed> {
    /// `INSERT INTO t (columns) `.
    insert: &'static str,
    /// Number of columns bound per row.
    columns: usize,
    /// `ON CONFLICT (key) DO UPDATE SET ...`.
    on_conflict: &'static str,
    /// Binds one row's columns.
    bind_row: fn(&mut sqlx::query_builder::Separated<'_, Sqlite, &'static str>, &R),
    /// `DELETE FROM t WHERE key = ?`.
    delete: &'static str,
    /// Binds a key to `delete`.
    bind_key: for<'q> fn(Query<'q>, &R::Key) -> Query<'q>,
}

impl<R: Keyed> KeyedTable<R> {
    async fn write(
        &self,
        conn: &mut SqliteConnection,
        changes: &KeyedChanges<R>,
    ) -> Result<(), SinkError> {
        let mut rows: Vec<&R> = changes.upserts.iter().collect();
        // B-tree inserts in key order touch neighbouring pages, where random UUID order
        // would jump across the whole index.
        rows.sort_unstable_by_key(|r| r.key());
        insert_rows(
            conn,
            self.insert,
            self.columns,
            self.on_conflict,
            &rows,
            &self.bind_row,
        )
        .await?;
        for key in &changes.deletes {
            (self.bind_key)(sqlx::query(self.delete), key)
                .execute(&mut *conn)
                .await
                .map_err(db_error(self.delete))?;
        }
        Ok(())
    }
}

type Binder<'a> = sqlx::query_builder::Separated<'a, Sqlite, &'static str>;

const BLOBS_INSERT: &str = "INSERT INTO blobs (blob_id, user_id, version, content_type, doc, doc_ref, doc_bytes, parent_id, created_at, updated_at, deleted_at) ";
const BLOBS_ON_CONFLICT: &str = " ON CONFLICT (blob_id) DO UPDATE SET user_id = excluded.user_id, version = excluded.version, \
    content_type = excluded.content_type, doc = excluded.doc, doc_ref = excluded.doc_ref, \
    doc_bytes = excluded.doc_bytes, parent_id = excluded.parent_id, \
    created_at = excluded.created_at, updated_at = excluded.updated_at, deleted_at = excluded.deleted_at";

fn bind_blob(b: &mut Binder<'_>, e: &EncodedBlob<'_>) {
    let r = e.row;
    b.push_bind(text(r.blob_id))
        .push_bind(text(r.user_id))
        .push_bind(r.version as i64)
        .push_bind(r.content_type.clone())
        .push_bind(e.stored.doc.clone())
        .push_bind(e.stored.doc_ref.clone())
        .push_bind(e.stored.doc_bytes)
        .push_bind(r.parent_id.map(text))
        .push_bind(time(r.created_at))
        .push_bind(time(r.updated_at))
        .push_bind(r.deleted_at.map(time));
}

fn bind_applied(b: &mut Binder<'_>, r: &AppliedRow) {
    b.push_bind(text(r.delta_id))
        .push_bind(text(r.blob_id))
        .push_bind(r.version as i64)
        .push_bind(r.operation.as_str())
        .push_bind(text(r.user_id))
        .push_bind(r.provider_id.clone())
        .push_bind(r.caused_by.map(text))
        .push_bind(time(r.created_at));
}

const PROCESSED: KeyedTable<ProcessedRow> = KeyedTable {
    insert: "INSERT INTO processed_by (blob_id, provider_id, version, delta_id) ",
    columns: 4,
    on_conflict: " ON CONFLICT (blob_id, provider_id) DO UPDATE SET version = excluded.version, delta_id = excluded.delta_id",
    bind_row: |b: &mut Binder<'_>, r: &ProcessedRow| {
        b.push_bind(text(r.blob_id))
            .push_bind(r.provider_id.clone())
            .push_bind(r.version as i64)
            .push_bind(text(r.delta_id));
    },
    delete: "DELETE FROM processed_by WHERE blob_id = ? AND provider_id = ?",
    bind_key: |q, (blob, provider)| q.bind(text(*blob)).bind(provider.clone()),
};

const WAITING: KeyedTable<WaitingRow> = KeyedTable {
    insert: "INSERT INTO deltas_waiting (delta_id, blob_id, version, pos_part, pos_offset, record) ",
    columns: 6,
    on_conflict: " ON CONFLICT (delta_id) DO NOTHING",
    bind_row: |b: &mut Binder<'_>, r: &WaitingRow| {
        b.push_bind(text(r.delta_id))
            .push_bind(text(r.blob_id))
            .push_bind(r.version as i64)
            .push_bind(r.pos.part as i64)
            .push_bind(r.pos.offset as i64)
            .push_bind(r.record.to_string());
    },
    delete: "DELETE FROM deltas_waiting WHERE delta_id = ?",
    bind_key: |q, k| q.bind(text(*k)),
};

const EDGES: KeyedTable<EdgeRow> = KeyedTable {
    insert: "INSERT INTO blob_edges (parent_id, child_id, delta_id) ",
    columns: 3,
    on_conflict: " ON CONFLICT (parent_id, child_id) DO UPDATE SET delta_id = excluded.delta_id",
    bind_row: |b: &mut Binder<'_>, r: &EdgeRow| {
        b.push_bind(text(r.parent_id))
            .push_bind(text(r.child_id))
            .push_bind(text(r.delta_id));
    },
    delete: "DELETE FROM blob_edges WHERE parent_id = ? AND child_id = ?",
    bind_key: |q, (p, c)| q.bind(text(*p)).bind(text(*c)),
};

const REACH: KeyedTable<ReachRow> = KeyedTable {
    insert: "INSERT INTO blob_reach (ancestor_id, descendant_id, distance) ",
    columns: 3,
    on_conflict: " ON CONFLICT (ancestor_id, descendant_id) DO UPDATE SET distance = excluded.distance",
    bind_row: |b: &mut Binder<'_>, r: &ReachRow| {
        b.push_bind(text(r.ancestor_id))
            .push_bind(text(r.descendant_id))
            .push_bind(r.distance as i64);
    },
    delete: "DELETE FROM blob_reach WHERE ancestor_id = ? AND descendant_id = ?",
    bind_key: |q, (a, d)| q.bind(text(*a)).bind(text(*d)),
};

const DEPTH: KeyedTable<DepthRow> = KeyedTable {
    insert: "INSERT INTO blob_depth (blob_id, depth) ",
    columns: 2,
    on_conflict: " ON CONFLICT (blob_id) DO UPDATE SET depth = excluded.depth",
    bind_row: |b: &mut Binder<'_>, r: &DepthRow| {
        b.push_bind(text(r.blob_id)).push_bind(r.depth as i64);
    },
    delete: "DELETE FROM blob_depth WHERE blob_id = ?",
    bind_key: |q, k| q.bind(text(*k)),
};

const USER_DEPTH: KeyedTable<UserDepthRow> = KeyedTable {
    insert: "INSERT INTO user_depth (user_id, max_depth) ",
    columns: 2,
    on_conflict: " ON CONFLICT (user_id) DO UPDATE SET max_depth = excluded.max_depth",
    bind_row: |b: &mut Binder<'_>, r: &UserDepthRow| {
        b.push_bind(text(r.user_id)).push_bind(r.max_depth as i64);
    },
    delete: "DELETE FROM user_depth WHERE user_id = ?",
    bind_key: |q, k| q.bind(text(*k)),
};

impl ViewSink for SqliteViews {
    fn finish(&mut self) -> Result<(), SinkError> {
        if self.mode == OpenMode::Rebuild {
            let conn = &mut self.conn;
            self.runtime.block_on(async {
                sqlx::raw_sql("PRAGMA journal_mode = WAL; PRAGMA optimize;")
                    .execute(&mut *conn)
                    .await
                    .map_err(db_error("switching the rebuilt views to WAL mode"))
            })?;
        }
        Ok(())
    }

    fn write(&mut self, batch: &ViewBatch) -> Result<(), SinkError> {
        let retry = self.retry;
        retry.run("writing a view batch to SQLite", || self.try_write(batch))
    }

    fn recover(
        &mut self,
        source: &str,
        each: &mut dyn FnMut(SourcePos, &str, RecoveredAs),
    ) -> Result<Option<Checkpoint>, SinkError> {
        let conn = &mut self.conn;
        self.runtime.block_on(async {
            let mut rows = sqlx::query_as::<_, (i64, i64, Option<String>, bool)>(RECOVERY_QUERY)
                .fetch(&mut *conn);
            while let Some((part, offset, record, expired)) = rows
                .try_next()
                .await
                .map_err(db_error("reading the delta store"))?
            {
                let Some(record) = record else {
                    return Err(SinkError::Refused(crate::NO_RECORDS.into()));
                };
                let pos = SourcePos {
                    part: part as u32,
                    offset: offset as u64,
                };
                each(pos, &record, crate::recovered_as(expired));
            }
            drop(rows);
            let stored: Option<(String, i64)> =
                sqlx::query_as("SELECT positions, next_seq FROM checkpoints WHERE source = ?")
                    .bind(source)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(db_error("reading the source checkpoint"))?;
            crate::checkpoint_of(source, stored)
        })
    }
}

impl SqliteViews {
    /// One attempt at a batch: its large documents, then one transaction.
    fn try_write(&mut self, batch: &ViewBatch) -> Result<(), SinkError> {
        let (conn, content) = (&mut self.conn, &self.content);
        self.runtime.block_on(async {
            let blobs = content.encode_rows(&batch.blobs.upserts).await?;
            let mut tx = conn.begin().await.map_err(db_error("BEGIN"))?;
            insert_rows(&mut tx, BLOBS_INSERT, 11, BLOBS_ON_CONFLICT, &blobs.iter().collect::<Vec<_>>(), &bind_blob)
                .await?;
            for key in &batch.blobs.deletes {
                sqlx::query("DELETE FROM blobs WHERE blob_id = ?")
                    .bind(text(*key))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error("DELETE FROM blobs"))?;
            }
            PROCESSED.write(&mut tx, &batch.processed).await?;
            EDGES.write(&mut tx, &batch.edges).await?;
            REACH.write(&mut tx, &batch.reach).await?;
            DEPTH.write(&mut tx, &batch.depth).await?;
            USER_DEPTH.write(&mut tx, &batch.user_depth).await?;
            let mut applied: Vec<&AppliedRow> = batch.applied.iter().collect();
            applied.sort_unstable_by_key(|r| r.delta_id);
insert_rows(
                &mut tx,
                "INSERT INTO deltas (delta_id, blob_id, version, operation, user_id, provider_id, caused_by, created_at, record, pos_part, pos_offset) ",
                11,
                "",
                &applied,
                &|b: &mut Binder<'_>, r: &AppliedRow| {
                    bind_applied(b, r);
                    b.push_bind(r.record.clone())
                        .push_bind(r.pos.part as i64)
                        .push_bind(r.pos.offset as i64);
                },
            )
            .await?;
            WAITING.write(&mut tx, &batch.waiting).await?;
            if let Some(checkpoint) = &batch.checkpoint {
                sqlx::query("INSERT INTO checkpoints (source, positions, next_seq) VALUES (?, ?, ?) \
                    ON CONFLICT (source) DO UPDATE SET positions = excluded.positions, next_seq = excluded.next_seq")
                    .bind(&checkpoint.source)
                    .bind(positions_json(&checkpoint.positions))
                    .bind(checkpoint.next_seq as i64)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error("writing the source checkpoint"))?;
            }
            insert_rows(
                &mut tx,
                "INSERT INTO rejected_edges (delta_id, parent_id, child_id, reason) ",
                4,
                "",
                &batch.rejected_edges.iter().collect::<Vec<_>>(),
                &|b: &mut Binder<'_>, r: &RejectedEdgeRow| {
                    b.push_bind(text(r.delta_id))
                        .push_bind(text(r.parent_id))
                        .push_bind(text(r.child_id))
                        .push_bind(r.reason.clone());
                },
            )
            .await?;
            insert_rows(
                &mut tx,
                "INSERT INTO dead_letters (delta_id, blob_id, reason, raw, pos_part, pos_offset) ",
                6,
                "",
                &batch.dead_letters.iter().collect::<Vec<_>>(),
                &|b: &mut Binder<'_>, r: &DeadLetter| {
                    b.push_bind(r.delta_id.map(text))
                        .push_bind(r.blob_id.map(text))
                        .push_bind(r.reason.to_string())
                        .push_bind(r.raw_text().into_owned())
                        .push_bind(r.pos.part as i64)
                        .push_bind(r.pos.offset as i64);
                },
            )
            .await?;
            write_provider_tables(&mut tx, batch).await?;
            tx.commit().await.map_err(db_error("COMMIT"))
        })
    }
}

/// `transform_requests`, `processing` and `events`. A request is inserted `pending`
/// when it first appears; a retraction marks it `superseded` unless a result already
/// settled it; a result sets `completed` or `failed`.
async fn write_provider_tables(
    conn: &mut SqliteConnection,
    batch: &ViewBatch,
) -> Result<(), SinkError> {
    // The net status of each request the batch touched, in order: a `+1` (new, or its
    // payload changed) leaves it pending, a `-1` alone supersedes it.
    let mut last: BTreeMap<Uuid, (&TransformRequest, bool)> = BTreeMap::new();
    for (request, diff) in &batch.requests {
        let pending = *diff > 0;
        last.entry(request.request_id)
            .and_modify(|e| *e = (if pending { request } else { e.0 }, pending))
            .or_insert((request, pending));
    }
    let appeared: std::collections::HashSet<Uuid> = batch
        .requests
        .iter()
        .filter(|(_, diff)| *diff > 0)
        .map(|(r, _)| r.request_id)
        .collect();
    let inserts: Vec<&(&TransformRequest, bool)> = last
        .iter()
        .filter(|(id, _)| appeared.contains(id))
        .map(|(_, e)| e)
        .collect();
    insert_rows(
        conn,
        "INSERT INTO transform_requests (request_id, provider_id, blob_id, version, fingerprint, created_at, status) ",
        7,
        " ON CONFLICT (request_id) DO UPDATE SET status = excluded.status \
          WHERE transform_requests.status IN ('pending', 'superseded')",
        &inserts,
        &|b: &mut Binder<'_>, (r, pending): &(&TransformRequest, bool)| {
            b.push_bind(text(r.request_id))
                .push_bind(r.provider_id.clone())
                .push_bind(text(r.blob_id))
                .push_bind(r.version as i64)
                .push_bind(r.fingerprint.to_string())
                .push_bind(time(r.created_at))
                .push_bind(if *pending { "pending" } else { "superseded" });
        },
    )
    .await?;
    let superseded: Vec<String> = last
        .iter()
        .filter(|(id, (_, pending))| !pending && !appeared.contains(id))
        .map(|(id, _)| text(*id))
        .collect();
    for chunk in superseded.chunks(MAX_BINDS) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "UPDATE transform_requests SET status = 'superseded' WHERE status = 'pending' AND request_id IN ",
        );
        query.push_tuples(chunk, |mut b, id| {
            b.push_bind(id.clone());
        });
        query
            .build()
            .execute(&mut *conn)
            .await
            .map_err(db_error("superseding transform_requests"))?;
    }
    for r in &batch.processing {
        sqlx::query(
            "INSERT INTO processing (request_id, provider_id, blob_id, version, status, attempts, error, started_at, finished_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (request_id) DO UPDATE SET status = excluded.status, attempts = processing.attempts + excluded.attempts, \
             error = excluded.error, finished_at = excluded.finished_at",
        )
        .bind(text(r.request_id))
        .bind(r.provider_id.clone())
        .bind(text(r.blob_id))
        .bind(r.version as i64)
        .bind(r.status.as_str())
        .bind(r.attempts as i64)
        .bind(r.error.clone())
        .bind(time(r.started_at))
        .bind(time(r.finished_at))
        .execute(&mut *conn)
        .await
        .map_err(db_error("writing processing"))?;
        sqlx::query("UPDATE transform_requests SET status = ? WHERE request_id = ?")
            .bind(r.status.as_str())
            .bind(text(r.request_id))
            .execute(&mut *conn)
            .await
            .map_err(db_error("writing transform_requests"))?;
    }
    insert_rows(
        conn,
        "INSERT INTO events (type, blob_id, delta_id, provider_id, at, payload) ",
        6,
        "",
        &batch.events.iter().collect::<Vec<_>>(),
        &|b: &mut Binder<'_>, e: &EventRow| {
            b.push_bind(e.event_type)
                .push_bind(text(e.blob_id))
                .push_bind(e.delta_id.map(text))
                .push_bind(e.provider_id.clone())
                .push_bind(time(e.at))
                .push_bind(e.payload.clone());
        },
    )
    .await
}

/// Deletes a view database a previous replay left, with its WAL and journal files.
/// Refuses a file that holds tables Studio did not create: `--db` pointing at someone
/// else's database must not destroy it.
fn remove_view_database(runtime: &tokio::runtime::Runtime, path: &Path) -> Result<(), SinkError> {
    if !path.exists() {
        return Ok(());
    }
    let display = path.display().to_string();
    let tables: Vec<String> = runtime.block_on(async {
        let options = connect_options(path)?.read_only(true);
        let mut conn = SqliteConnection::connect_with(&options)
            .await
            .map_err(db_error(format!(
                "{display} exists and is not a SQLite database; choose another --db"
            )))?;
        let names = sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&mut conn)
            .await
            .map_err(db_error(format!(
                "{display} exists and cannot be read as a SQLite database; choose another --db"
            )));
        conn.close().await.ok();
        names
    })?;
    let foreign = crate::foreign_tables(tables.iter().map(String::as_str));
    if !foreign.is_empty() {
        return Err(SinkError::Refused(format!(
            "{display} holds tables Studio did not create ({foreign:?}); a replay replaces the whole file, so choose another --db"
        )));
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        if file.exists() {
            std::fs::remove_file(&file)
                .map_err(io_error(format!("cannot replace {}", file.display())))?;
        }
    }
    Ok(())
}
