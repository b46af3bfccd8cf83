//! The SQLite view store (the embedded default).
//!
//! The sink writes with `rusqlite` (SQLite compiled in, `bundled`): each [`ViewBatch`]
//! is one transaction of single-row statements prepared once and cached on the
//! connection, executed on the calling thread (the replay's and the service's view
//! writer thread). An earlier version wrote through `sqlx`, whose SQLite driver sends
//! every statement with boxed arguments through a channel to a worker thread; that was
//! a third of the replay's CPU (issue 15, BENCHMARKS.md). The readers
//! ([`SqliteReader`]) still use `sqlx`.
//!
//! Upserts for `blobs` and `processed_by`, inserts for `deltas` and `dead_letters`
//! (whose `seq` follows the order in which letters were decided), rows sorted by key
//! so that B-tree inserts walk the index instead of jumping across it. The schema is
//! `schema.sql` beside this file. Documents are stored by the shared content rule
//! ([`crate::content`]): JSON text in `blobs.doc` (SQLite's JSON functions read it), or
//! a reference to a large store (a local directory or S3) in `blobs.doc_ref`.
//!
//! Two modes ([`OpenMode`]):
//! - **Rebuild** (`studio replay`): the views are rebuilt from the log, so the file is
//!   created anew and loaded like a bulk load: no journal, no syncs, 16 KiB pages.
//!   When the load completes, [`ViewSink::finish`] switches the file to WAL mode. A
//!   replay that dies leaves a half-built file that the next replay replaces.
//! - **Maintain** (the long-running service): WAL with `synchronous=NORMAL`; a crash
//!   never loses a committed batch and a batch is wholly visible or not at all.

mod reader;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, Transaction, params};
use sqlx::ConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use studio_model::{
    AppliedRow, Checkpoint, Keyed, KeyedChanges, SourcePos, Timestamp, Uuid, ViewBatch,
};

use crate::content::{ContentCodec, ContentSpec, LargeStoreSpec, inflate_legacy_lz4};
use crate::retry::RetryPolicy;
use crate::{RecoveredAs, SinkError, ViewSink, positions_json};

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

/// How long a statement waits for another connection's lock (the readers').
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// Drives the large store's client (a directory or S3).
    runtime: tokio::runtime::Runtime,
    conn: Connection,
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

fn sql_error(context: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> SinkError {
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

/// sqlx is async; Studio's readers are called from plain threads, so each owns a small
/// current-thread runtime to drive its connection (and the sink, its S3 client).
pub(crate) fn sqlx_runtime() -> Result<tokio::runtime::Runtime, SinkError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_error("starting the SQLite runtime".into()))
}

/// Options for a file, with the settings every Studio reader connection shares.
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
            remove_view_database(&options.path)?;
        }
        let mut conn = Connection::open_with_flags(
            &options.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql_error(format!("cannot open SQLite database {path}")))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(sql_error("setting the busy timeout"))?;
        // The same settings, in the same order, as the sqlx connection this replaced.
        let pragmas = match options.mode {
            OpenMode::Rebuild => {
                "PRAGMA page_size = 16384; PRAGMA journal_mode = OFF; PRAGMA foreign_keys = ON; \
                 PRAGMA synchronous = OFF;"
            }
            // A new file gets the rebuild's 16 KiB pages too (fewer B-tree pages to
            // rewrite per transaction); the WAL is checkpointed every 64 MiB rather
            // than every 4 MiB, so that a page rewritten by many batches is copied back
            // once.
            OpenMode::Maintain => {
                "PRAGMA page_size = 16384; PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; \
                 PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 4096;"
            }
        };
        conn.execute_batch(pragmas).map_err(sql_error(format!(
            "cannot configure SQLite database {path}"
        )))?;
        conn.execute_batch(&format!(
            "PRAGMA cache_size = -{}; PRAGMA temp_store = memory;",
            options.cache_size_kib
        ))
        .map_err(sql_error(format!(
            "cannot configure SQLite database {path}"
        )))?;
        conn.execute_batch(SCHEMA).map_err(sql_error(format!(
            "cannot create the view tables in {path}"
        )))?;
        conn.set_prepared_statement_cache_capacity(64);
        inflate_legacy_documents(&mut conn)?;
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
fn inflate_legacy_documents(conn: &mut Connection) -> Result<(), SinkError> {
    let legacy: i64 = conn
        .query_row(
            "SELECT count(*) FROM pragma_table_info('blobs') WHERE name = 'doc_lz4'",
            [],
            |row| row.get(0),
        )
        .map_err(sql_error("reading the columns of blobs"))?;
    if legacy == 0 {
        return Ok(());
    }
    let tx = conn.transaction().map_err(sql_error("BEGIN"))?;
    let packed: Vec<(String, Vec<u8>)> = {
        let mut select = tx
            .prepare("SELECT blob_id, doc_lz4 FROM blobs WHERE doc_lz4 IS NOT NULL")
            .map_err(sql_error("reading blobs.doc_lz4"))?;
        select
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(sql_error("reading blobs.doc_lz4"))?
    };
    for (blob_id, lz4) in &packed {
        tx.execute(
            "UPDATE blobs SET doc = ?, doc_lz4 = NULL WHERE blob_id = ?",
            params![inflate_legacy_lz4(lz4)?, blob_id],
        )
        .map_err(sql_error("storing a decompressed document"))?;
    }
    tx.execute_batch("ALTER TABLE blobs DROP COLUMN doc_lz4")
        .map_err(sql_error("dropping blobs.doc_lz4"))?;
    tx.commit().map_err(sql_error("COMMIT"))?;
    tracing::info!(
        documents = packed.len(),
        "stored the LZ4-compressed documents of blobs.doc_lz4 as JSON in blobs.doc"
    );
    Ok(())
}

/// A UUID as the hyphenated lower-case text the tables hold, bound without allocating.
struct Id([u8; 36]);

impl Id {
    fn of(id: Uuid) -> Self {
        let mut text = [0u8; 36];
        id.hyphenated().encode_lower(&mut text);
        Id(text)
    }
}

impl ToSql for Id {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(&self.0)))
    }
}

fn id(id: Uuid) -> Id {
    Id::of(id)
}

fn time(t: Timestamp) -> String {
    t.to_rfc3339()
}

/// How one keyed view is written: an upsert per row, a delete by key.
struct KeyedTable<R: Keyed> {
    /// `INSERT INTO t (columns) VALUES (...) ON CONFLICT (key) DO UPDATE SET ...`.
    upsert: &'static str,
    /// Runs the prepared upsert with one row's columns.
    run_upsert: fn(&mut rusqlite::CachedStatement<'_>, &R) -> rusqlite::Result<usize>,
    /// `DELETE FROM t WHERE key = ?`.
    delete: &'static str,
    /// Runs the prepared delete with a key.
    run_delete: fn(&mut rusqlite::CachedStatement<'_>, &R::Key) -> rusqlite::Result<usize>,
}

impl<R: Keyed> KeyedTable<R> {
    fn write(&self, tx: &Transaction<'_>, changes: &KeyedChanges<R>) -> Result<(), SinkError> {
        if !changes.upserts.is_empty() {
            let mut rows: Vec<&R> = changes.upserts.iter().collect();
            // B-tree inserts in key order touch neighbouring pages, where random UUID
            // order would jump across the whole index.
            rows.sort_unstable_by_key(|r| r.key());
            let mut upsert = tx
                .prepare_cached(self.upsert)
                .map_err(sql_error(self.upsert))?;
            for row in rows {
                (self.run_upsert)(&mut upsert, row).map_err(sql_error(self.upsert))?;
            }
        }
        if !changes.deletes.is_empty() {
            let mut delete = tx
                .prepare_cached(self.delete)
                .map_err(sql_error(self.delete))?;
            for key in &changes.deletes {
                (self.run_delete)(&mut delete, key).map_err(sql_error(self.delete))?;
            }
        }
        Ok(())
    }
}

const BLOBS_UPSERT: &str = "INSERT INTO blobs (blob_id, user_id, version, content_type, doc, doc_ref, doc_bytes, parent_id, created_at, updated_at, deleted_at) \
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
    ON CONFLICT (blob_id) DO UPDATE SET user_id = excluded.user_id, version = excluded.version, \
    content_type = excluded.content_type, doc = excluded.doc, doc_ref = excluded.doc_ref, \
    doc_bytes = excluded.doc_bytes, parent_id = excluded.parent_id, \
    created_at = excluded.created_at, updated_at = excluded.updated_at, deleted_at = excluded.deleted_at";

const DELTAS_INSERT: &str = "INSERT INTO deltas (delta_id, blob_id, version, operation, user_id, provider_id, caused_by, created_at, record, pos_part, pos_offset) \
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

const PROCESSED: KeyedTable<studio_model::ProcessedRow> = KeyedTable {
    upsert: "INSERT INTO processed_by (blob_id, provider_id, version, delta_id) VALUES (?, ?, ?, ?) \
        ON CONFLICT (blob_id, provider_id) DO UPDATE SET version = excluded.version, delta_id = excluded.delta_id",
    run_upsert: |s, r| {
        s.execute(params![
            id(r.blob_id),
            r.provider_id,
            r.version as i64,
            id(r.delta_id)
        ])
    },
    delete: "DELETE FROM processed_by WHERE blob_id = ? AND provider_id = ?",
    run_delete: |s, (blob, provider)| s.execute(params![id(*blob), provider]),
};

const WAITING: KeyedTable<studio_model::WaitingRow> = KeyedTable {
    upsert: "INSERT INTO deltas_waiting (delta_id, blob_id, version, pos_part, pos_offset, record) \
        VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (delta_id) DO NOTHING",
    run_upsert: |s, r| {
        s.execute(params![
            id(r.delta_id),
            id(r.blob_id),
            r.version as i64,
            r.pos.part as i64,
            r.pos.offset as i64,
            &*r.record,
        ])
    },
    delete: "DELETE FROM deltas_waiting WHERE delta_id = ?",
    run_delete: |s, k| s.execute(params![id(*k)]),
};

const EDGES: KeyedTable<studio_model::EdgeRow> = KeyedTable {
    upsert: "INSERT INTO blob_edges (parent_id, child_id, delta_id) VALUES (?, ?, ?) \
        ON CONFLICT (parent_id, child_id) DO UPDATE SET delta_id = excluded.delta_id",
    run_upsert: |s, r| s.execute(params![id(r.parent_id), id(r.child_id), id(r.delta_id)]),
    delete: "DELETE FROM blob_edges WHERE parent_id = ? AND child_id = ?",
    run_delete: |s, (p, c)| s.execute(params![id(*p), id(*c)]),
};

const REACH: KeyedTable<studio_model::ReachRow> = KeyedTable {
    upsert: "INSERT INTO blob_reach (ancestor_id, descendant_id, distance) VALUES (?, ?, ?) \
        ON CONFLICT (ancestor_id, descendant_id) DO UPDATE SET distance = excluded.distance",
    run_upsert: |s, r| {
        s.execute(params![
            id(r.ancestor_id),
            id(r.descendant_id),
            r.distance as i64
        ])
    },
    delete: "DELETE FROM blob_reach WHERE ancestor_id = ? AND descendant_id = ?",
    run_delete: |s, (a, d)| s.execute(params![id(*a), id(*d)]),
};

const DEPTH: KeyedTable<studio_model::DepthRow> = KeyedTable {
    upsert: "INSERT INTO blob_depth (blob_id, depth) VALUES (?, ?) \
        ON CONFLICT (blob_id) DO UPDATE SET depth = excluded.depth",
    run_upsert: |s, r| s.execute(params![id(r.blob_id), r.depth as i64]),
    delete: "DELETE FROM blob_depth WHERE blob_id = ?",
    run_delete: |s, k| s.execute(params![id(*k)]),
};

const USER_DEPTH: KeyedTable<studio_model::UserDepthRow> = KeyedTable {
    upsert: "INSERT INTO user_depth (user_id, max_depth) VALUES (?, ?) \
        ON CONFLICT (user_id) DO UPDATE SET max_depth = excluded.max_depth",
    run_upsert: |s, r| s.execute(params![id(r.user_id), r.max_depth as i64]),
    delete: "DELETE FROM user_depth WHERE user_id = ?",
    run_delete: |s, k| s.execute(params![id(*k)]),
};

impl ViewSink for SqliteViews {
    fn finish(&mut self) -> Result<(), SinkError> {
        if self.mode == OpenMode::Rebuild {
            self.conn
                .execute_batch("PRAGMA journal_mode = WAL; PRAGMA optimize;")
                .map_err(sql_error("switching the rebuilt views to WAL mode"))?;
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
        {
            let mut query = self
                .conn
                .prepare(RECOVERY_QUERY)
                .map_err(sql_error("reading the delta store"))?;
            let mut rows = query
                .query([])
                .map_err(sql_error("reading the delta store"))?;
            while let Some(row) = rows.next().map_err(sql_error("reading the delta store"))? {
                let read = |row: &rusqlite::Row<'_>| -> rusqlite::Result<_> {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, Option<String>>(2)?,
                        row.get::<_, bool>(3)?,
                    ))
                };
                let (part, offset, record, expired) =
                    read(row).map_err(sql_error("reading the delta store"))?;
                let Some(record) = record else {
                    return Err(SinkError::Refused(crate::NO_RECORDS.into()));
                };
                let pos = SourcePos {
                    part: part as u32,
                    offset: offset as u64,
                };
                each(pos, &record, crate::recovered_as(expired));
            }
        }
        let stored: Option<(String, i64)> = match self.conn.query_row(
            "SELECT positions, next_seq FROM checkpoints WHERE source = ?",
            params![source],
            |row| Ok((row.get(0)?, row.get(1)?)),
        ) {
            Ok(found) => Some(found),
            Err(rusqlite::Error::QueryReturnedNoRows) => None,
            Err(e) => return Err(sql_error("reading the source checkpoint")(e)),
        };
        crate::checkpoint_of(source, stored)
    }
}

impl SqliteViews {
    /// One attempt at a batch: its large documents, then one transaction.
    fn try_write(&mut self, batch: &ViewBatch) -> Result<(), SinkError> {
        let blobs = self
            .runtime
            .block_on(self.content.encode_rows(&batch.blobs.upserts))?;
        let tx = self.conn.transaction().map_err(sql_error("BEGIN"))?;
        if !blobs.is_empty() {
            let mut upsert = tx
                .prepare_cached(BLOBS_UPSERT)
                .map_err(sql_error("writing blobs"))?;
            for e in &blobs {
                let r = e.row;
                upsert
                    .execute(params![
                        id(r.blob_id),
                        id(r.user_id),
                        r.version as i64,
                        r.content_type,
                        e.stored.doc,
                        e.stored.doc_ref,
                        e.stored.doc_bytes,
                        r.parent_id.map(id),
                        time(r.created_at),
                        time(r.updated_at),
                        r.deleted_at.map(time),
                    ])
                    .map_err(sql_error("writing blobs"))?;
            }
        }
        if !batch.blobs.deletes.is_empty() {
            let mut delete = tx
                .prepare_cached("DELETE FROM blobs WHERE blob_id = ?")
                .map_err(sql_error("DELETE FROM blobs"))?;
            for key in &batch.blobs.deletes {
                delete
                    .execute(params![id(*key)])
                    .map_err(sql_error("DELETE FROM blobs"))?;
            }
        }
        PROCESSED.write(&tx, &batch.processed)?;
        EDGES.write(&tx, &batch.edges)?;
        REACH.write(&tx, &batch.reach)?;
        DEPTH.write(&tx, &batch.depth)?;
        USER_DEPTH.write(&tx, &batch.user_depth)?;
        if !batch.applied.is_empty() {
            let mut applied: Vec<&AppliedRow> = batch.applied.iter().collect();
            applied.sort_unstable_by_key(|r| r.delta_id);
            let mut insert = tx
                .prepare_cached(DELTAS_INSERT)
                .map_err(sql_error("writing deltas"))?;
            for r in applied {
                insert
                    .execute(params![
                        id(r.delta_id),
                        id(r.blob_id),
                        r.version as i64,
                        r.operation.as_str(),
                        id(r.user_id),
                        r.provider_id,
                        r.caused_by.map(id),
                        time(r.created_at),
                        r.record.as_deref(),
                        r.pos.part as i64,
                        r.pos.offset as i64,
                    ])
                    .map_err(sql_error("writing deltas"))?;
            }
        }
        WAITING.write(&tx, &batch.waiting)?;
        if let Some(checkpoint) = &batch.checkpoint {
            tx.prepare_cached(
                "INSERT INTO checkpoints (source, positions, next_seq) VALUES (?, ?, ?) \
                 ON CONFLICT (source) DO UPDATE SET positions = excluded.positions, next_seq = excluded.next_seq",
            )
            .and_then(|mut s| {
                s.execute(params![
                    checkpoint.source,
                    positions_json(&checkpoint.positions),
                    checkpoint.next_seq as i64
                ])
            })
            .map_err(sql_error("writing the source checkpoint"))?;
        }
        if !batch.rejected_edges.is_empty() {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO rejected_edges (delta_id, parent_id, child_id, reason) VALUES (?, ?, ?, ?)",
                )
                .map_err(sql_error("writing rejected_edges"))?;
            for r in &batch.rejected_edges {
                insert
                    .execute(params![
                        id(r.delta_id),
                        id(r.parent_id),
                        id(r.child_id),
                        r.reason
                    ])
                    .map_err(sql_error("writing rejected_edges"))?;
            }
        }
        if !batch.dead_letters.is_empty() {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO dead_letters (delta_id, blob_id, reason, raw, pos_part, pos_offset) VALUES (?, ?, ?, ?, ?, ?)",
                )
                .map_err(sql_error("writing dead_letters"))?;
            for r in &batch.dead_letters {
                insert
                    .execute(params![
                        r.delta_id.map(id),
                        r.blob_id.map(id),
                        r.reason.to_string(),
                        r.raw_text(),
                        r.pos.part as i64,
                        r.pos.offset as i64,
                    ])
                    .map_err(sql_error("writing dead_letters"))?;
            }
        }
        write_provider_tables(&tx, batch)?;
        tx.commit().map_err(sql_error("COMMIT"))
    }
}

/// `transform_requests`, `processing` and `events`. A request is inserted `pending`
/// when it first appears; a retraction marks it `superseded` unless a result already
/// settled it; a result sets `completed` or `failed`.
fn write_provider_tables(tx: &Transaction<'_>, batch: &ViewBatch) -> Result<(), SinkError> {
    let changes = batch.request_changes();
    if !changes.upserts.is_empty() {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO transform_requests (request_id, provider_id, blob_id, version, fingerprint, created_at, status) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (request_id) DO UPDATE SET status = excluded.status \
                 WHERE transform_requests.status IN ('pending', 'superseded')",
            )
            .map_err(sql_error("writing transform_requests"))?;
        for (r, pending) in &changes.upserts {
            insert
                .execute(params![
                    id(r.request_id),
                    r.provider_id,
                    id(r.blob_id),
                    r.version as i64,
                    r.fingerprint.to_string(),
                    time(r.created_at),
                    if *pending { "pending" } else { "superseded" },
                ])
                .map_err(sql_error("writing transform_requests"))?;
        }
    }
    if !changes.superseded.is_empty() {
        let mut supersede = tx
            .prepare_cached(
                "UPDATE transform_requests SET status = 'superseded' WHERE status = 'pending' AND request_id = ?",
            )
            .map_err(sql_error("superseding transform_requests"))?;
        for request_id in &changes.superseded {
            supersede
                .execute(params![id(*request_id)])
                .map_err(sql_error("superseding transform_requests"))?;
        }
    }
    if !batch.processing.is_empty() {
        let mut upsert = tx
            .prepare_cached(
                "INSERT INTO processing (request_id, provider_id, blob_id, version, status, attempts, error, started_at, finished_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (request_id) DO UPDATE SET status = excluded.status, attempts = processing.attempts + excluded.attempts, \
                 error = excluded.error, finished_at = excluded.finished_at",
            )
            .map_err(sql_error("writing processing"))?;
        let mut status = tx
            .prepare_cached("UPDATE transform_requests SET status = ? WHERE request_id = ?")
            .map_err(sql_error("writing transform_requests"))?;
        for r in &batch.processing {
            upsert
                .execute(params![
                    id(r.request_id),
                    r.provider_id,
                    id(r.blob_id),
                    r.version as i64,
                    r.status.as_str(),
                    r.attempts as i64,
                    r.error,
                    time(r.started_at),
                    time(r.finished_at),
                ])
                .map_err(sql_error("writing processing"))?;
            status
                .execute(params![r.status.as_str(), id(r.request_id)])
                .map_err(sql_error("writing transform_requests"))?;
        }
    }
    if !batch.events.is_empty() {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO events (type, blob_id, delta_id, provider_id, at, payload) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .map_err(sql_error("writing events"))?;
        for e in &batch.events {
            insert
                .execute(params![
                    e.event_type,
                    id(e.blob_id),
                    e.delta_id.map(id),
                    e.provider_id,
                    time(e.at),
                    e.payload,
                ])
                .map_err(sql_error("writing events"))?;
        }
    }
    Ok(())
}

/// Deletes a view database a previous replay left, with its WAL and journal files.
/// Refuses a file that holds tables Studio did not create: `--db` pointing at someone
/// else's database must not destroy it.
fn remove_view_database(path: &Path) -> Result<(), SinkError> {
    if !path.exists() {
        return Ok(());
    }
    let display = path.display().to_string();
    let tables: Vec<String> = {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql_error(format!(
            "{display} exists and is not a SQLite database; choose another --db"
        )))?;
        conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .and_then(|mut s| s.query_map([], |row| row.get(0))?.collect())
            .map_err(sql_error(format!(
                "{display} exists and cannot be read as a SQLite database; choose another --db"
            )))?
    };
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
