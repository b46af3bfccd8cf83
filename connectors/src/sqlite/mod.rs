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
//! so that B-tree inserts walk the index instead of jumping across it. The schema and
//! the statements are generated from the tables declared in `studio_model::tables`
//! ([`sql`]). Documents are stored by the shared content rule
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
pub mod sql;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, Transaction, params};
use sqlx::ConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use studio_model::{AppliedRow, Checkpoint, Row, SourcePos, Timestamp, Uuid, ViewBatch, tables};

use crate::content::{ContentCodec, ContentSpec, LargeStoreSpec, inflate_legacy_lz4};
use crate::retry::RetryPolicy;
use crate::stored::{RECOVERY_QUERY, StoredCheckpoint, recovered};
use crate::{RecoveredAs, SinkError, ViewSink};

pub use crate::VIEW_TABLES;
pub use crate::query::Rows;
pub use reader::SqliteReader;

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
        let schema = match options.mode {
            OpenMode::Rebuild => sql::bulk_load_schema(),
            OpenMode::Maintain => sql::schema(),
        };
        conn.execute_batch(&schema).map_err(sql_error(format!(
            "cannot create the view tables in {path}"
        )))?;
        if options.mode == OpenMode::Maintain {
            add_missing_keys(&conn)?;
        }
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

/// A rebuild that stopped before its end left the delta store without its key:
/// build it (and, through the schema, the other indexes) before the service writes.
fn add_missing_keys(conn: &Connection) -> Result<(), SinkError> {
    for (table, key_sql) in sql::bulk_load_keys() {
        let unique: i64 = conn
            .query_row(
                "SELECT count(*) FROM pragma_index_list(?1) WHERE \"unique\" = 1",
                [table],
                |row| row.get(0),
            )
            .map_err(sql_error(format!("reading the indexes of {table}")))?;
        if unique == 0 {
            conn.execute_batch(&key_sql)
                .map_err(sql_error(format!("building the key of {table}")))?;
        }
    }
    Ok(())
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

impl ViewSink for SqliteViews {
    fn finish(&mut self) -> Result<(), SinkError> {
        if self.mode == OpenMode::Rebuild {
            let started = std::time::Instant::now();
            // Two sorter threads: the dataflow has finished, its cores are free.
            self.conn
                .execute_batch(&format!("PRAGMA threads = 2; {}", sql::bulk_load_indexes()))
                .map_err(sql_error("building the delta store's indexes"))?;
            tracing::info!(
                seconds = started.elapsed().as_secs_f64(),
                "built the delta store's key and indexes after the bulk load"
            );
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
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                };
                recovered(
                    read(row).map_err(sql_error("reading the delta store"))?,
                    each,
                )?;
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
    /// One attempt at a batch: its large documents, then one transaction: `blobs`, the
    /// views written by declaration, the delta store, the checkpoint, the dead letters
    /// and the provider tables.
    fn try_write(&mut self, batch: &ViewBatch) -> Result<(), SinkError> {
        let blobs = self
            .runtime
            .block_on(self.content.encode_rows(&batch.blobs.upserts))?;
        let tx = self.conn.transaction().map_err(sql_error("BEGIN"))?;
        sql::insert_rows(&tx, &tables::BLOBS, blobs.iter().map(|e| e as &dyn Row))?;
        sql::delete_keys(
            &tx,
            &tables::BLOBS,
            batch.blobs.deletes.iter().map(|k| k as &dyn Row),
        )?;
        for changes in batch.declared_changes() {
            sql::write_changes(&tx, changes)?;
        }
        let mut applied: Vec<&AppliedRow> = batch.applied.iter().collect();
        applied.sort_unstable_by_key(|r| r.delta_id);
        sql::insert_rows(
            &tx,
            &tables::DELTAS,
            applied.into_iter().map(|r| r as &dyn Row),
        )?;
        if let Some(checkpoint) = &batch.checkpoint {
            sql::insert_rows(
                &tx,
                &tables::CHECKPOINTS,
                [&StoredCheckpoint(checkpoint) as &dyn Row],
            )?;
        }
        sql::insert_rows(
            &tx,
            &tables::DEAD_LETTERS,
            batch.dead_letters.iter().map(|r| r as &dyn Row),
        )?;
        write_provider_tables(&tx, batch)?;
        tx.commit().map_err(sql_error("COMMIT"))
    }
}

/// `transform_requests`, `processing` and `events`. A request is inserted `pending`
/// when it first appears; a retraction marks it `superseded` unless a result already
/// settled it; a result sets `completed` or `failed`.
fn write_provider_tables(tx: &Transaction<'_>, batch: &ViewBatch) -> Result<(), SinkError> {
    let changes = batch.request_changes();
    let requests = &tables::TRANSFORM_REQUESTS;
    sql::run_rows(
        tx,
        requests,
        &format!(
            "{} ON CONFLICT (request_id) DO UPDATE SET status = excluded.status \
             WHERE transform_requests.status IN ('pending', 'superseded')",
            sql::plain_insert_sql(requests)
        ),
        changes.upserts.iter().map(|r| r as &dyn Row),
    )?;
    sql::run_rows(
        tx,
        requests,
        "UPDATE transform_requests SET status = 'superseded' WHERE status = 'pending' AND request_id = ?",
        changes.superseded.iter().map(|r| r as &dyn Row),
    )?;
    if !batch.processing.is_empty() {
        let upsert_sql = format!(
            "{} ON CONFLICT (request_id) DO UPDATE SET status = excluded.status, \
             attempts = processing.attempts + excluded.attempts, \
             error = excluded.error, finished_at = excluded.finished_at",
            sql::plain_insert_sql(&tables::PROCESSING)
        );
        let mut status = tx
            .prepare_cached("UPDATE transform_requests SET status = ? WHERE request_id = ?")
            .map_err(sql_error("writing transform_requests"))?;
        for r in &batch.processing {
            sql::run_rows(tx, &tables::PROCESSING, &upsert_sql, [r as &dyn Row])?;
            status
                .execute(params![r.status.as_str(), id(r.request_id)])
                .map_err(sql_error("writing transform_requests"))?;
        }
    }
    sql::insert_rows(
        tx,
        &tables::EVENTS,
        batch.events.iter().map(|e| e as &dyn Row),
    )
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
