//! The Postgres view store and delta store, written with `sqlx` (plain queries, no
//! macros, so building needs no database).
//!
//! - **Schema:** the same tables and columns as SQLite, with native types (`uuid`,
//!   `timestamptz`, `jsonb`), created by the ordered `.sql` files in `migrations/`
//!   ([`MIGRATIONS`]), which the sink applies on start and records in
//!   `_studio_migrations`.
//! - **Writes:** one transaction per [`ViewBatch`]. Each table is written with one
//!   statement per chunk of rows: `INSERT ... SELECT * FROM UNNEST($1::uuid[], ...)`,
//!   with `ON CONFLICT (key) DO UPDATE` for the keyed views and
//!   `DELETE ... WHERE (key) IN (SELECT * FROM UNNEST(...))` for their deletes. A table
//!   is described once ([`PgTable`]) and its SQL is generated from that; adding a view
//!   is a migration, a `PgTable` and a bind function.
//! - **The delta store:** `deltas`, partitioned by month of `created_at`; the sink
//!   creates a month's partition in the transaction of the first delta that needs it.
//!   Each row keeps the delta's record exactly as read (`text`) and its log position;
//!   `deltas_waiting` holds the deltas waiting for a gap, `checkpoints` each live
//!   source's positions, both written in the batch's transaction.
//!   [`ViewSink::recover`] reads them back, as SQLite's sink does.
//! - **Providers:** `transform_requests`, `processing` and `events`, with SQLite's
//!   rules (`write_provider_tables`), one `UNNEST` statement per table and chunk.
//! - **Rebuild** (`studio replay`): drops Studio's own tables ([`crate::VIEW_TABLES`],
//!   the partitions of `deltas`, `_studio_migrations`) in the connection's current
//!   schema and migrates anew. It refuses when that schema holds any other table, so
//!   `--db` pointing at someone else's schema destroys nothing. **Maintain** keeps the
//!   tables and applies only new migrations.
//! - **Failures:** a lost or refused connection, a timeout, or a server shutting down
//!   is [`SinkError::Unavailable`]: the sink drops the connection, waits
//!   ([`RetryPolicy`]), reconnects and retries the whole transaction, so a batch is
//!   either committed once or not reported at all.

mod reader;

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use futures_util::TryStreamExt;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Postgres};
use studio_model::{
    AppliedRow, Checkpoint, DeadLetter, DepthRow, EdgeRow, EventRow, KeyedChanges, ProcessedRow,
    ProcessingResult, ReachRow, RejectedEdgeRow, SourcePos, TransformRequest, UserDepthRow, Uuid,
    ViewBatch, WaitingRow,
};

use crate::content::{ContentCodec, ContentSpec, EncodedBlob, inflate_legacy_lz4};
use crate::retry::RetryPolicy;
use crate::{RecoveredAs, SinkError, ViewSink, positions_json};

pub use reader::PgReader;

/// The migrations, in order: (version, name, SQL). Never edit one that was released;
/// add the next.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "views", include_str!("migrations/0001_views.sql")),
    (2, "deltas", include_str!("migrations/0002_deltas.sql")),
    (
        3,
        "providers",
        include_str!("migrations/0003_providers.sql"),
    ),
    (
        4,
        "delta_store",
        include_str!("migrations/0004_delta_store.sql"),
    ),
    (
        5,
        "documents_as_json",
        include_str!("migrations/0005_documents_as_json.sql"),
    ),
];

/// The migration before which `doc_lz4` is turned back into JSON in `doc`.
const DOCUMENTS_AS_JSON: i64 = 5;

pub use crate::OpenMode;

/// How to reach the database and write to it.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// `postgres://user@host:port/db`.
    pub url: String,
    /// Rebuild (a replay) or maintain.
    pub mode: OpenMode,
    /// Rows per `UNNEST` statement.
    pub rows_per_statement: usize,
    /// A connection attempt, or one batch's transaction, taking longer than this
    /// counts as a lost connection.
    pub timeout: Duration,
    /// How documents are stored.
    pub content: ContentSpec,
    /// Retries while the database or the large store is unavailable.
    pub retry: RetryPolicy,
}

/// True when a `--db` value names a Postgres database.
pub fn is_postgres_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// Maps a driver error: connection-level failures may pass ([`SinkError::Unavailable`]).
pub(crate) fn pg_error(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> SinkError {
    let context = context.into();
    move |e| {
        let passing = match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // 08: connection exception; 57P0x: shutting down / cannot connect now;
                // 53: insufficient resources; 40001/40P01: serialization or deadlock.
                code.starts_with("08")
                    || code.starts_with("57P0")
                    || code.starts_with("53")
                    || code == "40001"
                    || code == "40P01"
            }),
            _ => false,
        };
        if passing {
            SinkError::Unavailable {
                context,
                source: Box::new(e),
            }
        } else {
            SinkError::Database {
                context,
                source: Box::new(e),
            }
        }
    }
}

fn timed_out(context: &str, after: Duration) -> SinkError {
    SinkError::Unavailable {
        context: context.to_owned(),
        source: Box::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {after:?}"),
        )),
    }
}

/// sqlx is async; the sink and reader run on plain threads, each with a small runtime.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, SinkError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SinkError::Database {
            context: "starting the Postgres runtime".into(),
            source: Box::new(e),
        })
}

/// Opens one connection, bounded by `timeout`.
pub(crate) async fn connect(url: &str, timeout: Duration) -> Result<PgConnection, SinkError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(pg_error("bad Postgres URL"))?
        .application_name("studio")
        // Large statements are the point here, not a symptom.
        .disable_statement_logging();
    let context = format!("connecting to {}", redact(url));
    tokio::time::timeout(timeout, PgConnection::connect_with(&options))
        .await
        .map_err(|_| timed_out(&context, timeout))?
        .map_err(pg_error(context))
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// A statement with its bound values.
type PgQuery<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// One table as written: its name, its columns with their Postgres types (for the
/// `UNNEST` casts), and its key (empty for an insert-only table).
pub struct PgTable {
    /// Table name.
    pub name: &'static str,
    /// `(column, type)` in bind order.
    pub columns: &'static [(&'static str, &'static str)],
    /// Primary key columns: upserted on, deleted by.
    pub key: &'static [&'static str],
    /// For an insert-only table with a primary key: `ON CONFLICT DO NOTHING`, so that
    /// a batch retried after a commit whose acknowledgement was lost writes nothing twice.
    pub ignore_duplicates: bool,
}

impl PgTable {
    fn unnest(columns: &[(&str, &str)]) -> String {
        let arrays: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, (_, ty))| format!("${}::{ty}[]", i + 1))
            .collect();
        format!("SELECT * FROM UNNEST({})", arrays.join(", "))
    }

    /// `INSERT ... SELECT * FROM UNNEST(...)`, without a conflict clause.
    fn plain_insert_sql(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|(c, _)| *c).collect();
        format!(
            "INSERT INTO {} ({}) {}",
            self.name,
            names.join(", "),
            Self::unnest(self.columns)
        )
    }

    /// `INSERT ... SELECT * FROM UNNEST(...) [ON CONFLICT (key) DO UPDATE SET ...]`.
    pub fn insert_sql(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|(c, _)| *c).collect();
        let mut sql = self.plain_insert_sql();
        if self.ignore_duplicates {
            sql.push_str(" ON CONFLICT DO NOTHING");
        } else if !self.key.is_empty() {
            let updates: Vec<String> = names
                .iter()
                .filter(|c| !self.key.contains(c))
                .map(|c| format!("{c} = EXCLUDED.{c}"))
                .collect();
            sql.push_str(&format!(
                " ON CONFLICT ({}) DO UPDATE SET {}",
                self.key.join(", "),
                updates.join(", ")
            ));
        }
        sql
    }

    /// `DELETE ... WHERE (key) IN (SELECT * FROM UNNEST(...))`.
    pub fn delete_sql(&self) -> String {
        let key_columns: Vec<(&str, &str)> = self
            .key
            .iter()
            .map(|k| {
                *self
                    .columns
                    .iter()
                    .find(|(c, _)| c == k)
                    .expect("key columns are columns")
            })
            .collect();
        format!(
            "DELETE FROM {} WHERE ({}) IN ({})",
            self.name,
            self.key.join(", "),
            Self::unnest(&key_columns)
        )
    }

    /// Inserts (or upserts) `rows` in chunks; `bind` binds one array per column.
    async fn insert<R>(
        &self,
        conn: &mut PgConnection,
        rows: &[R],
        chunk: usize,
        bind: for<'q> fn(PgQuery<'q>, &[R]) -> PgQuery<'q>,
    ) -> Result<(), SinkError> {
        self.run(conn, &self.insert_sql(), rows, chunk, bind).await
    }

    /// Inserts `rows` in chunks with `on_conflict` after the `UNNEST` (a conflict rule
    /// that [`PgTable::insert_sql`] does not generate).
    async fn insert_with<R>(
        &self,
        conn: &mut PgConnection,
        on_conflict: &str,
        rows: &[R],
        chunk: usize,
        bind: for<'q> fn(PgQuery<'q>, &[R]) -> PgQuery<'q>,
    ) -> Result<(), SinkError> {
        let sql = format!("{} {on_conflict}", self.plain_insert_sql());
        self.run(conn, &sql, rows, chunk, bind).await
    }

    /// Runs `sql` over `rows` in chunks.
    async fn run<R>(
        &self,
        conn: &mut PgConnection,
        sql: &str,
        rows: &[R],
        chunk: usize,
        bind: for<'q> fn(PgQuery<'q>, &[R]) -> PgQuery<'q>,
    ) -> Result<(), SinkError> {
        if rows.is_empty() {
            return Ok(());
        }
        for part in rows.chunks(chunk.max(1)) {
            bind(sqlx::query(sqlx::AssertSqlSafe(sql)), part)
                .execute(&mut *conn)
                .await
                .map_err(pg_error(format!("writing {}", self.name)))?;
        }
        Ok(())
    }

    /// Deletes rows by key in chunks; `bind` binds one array per key column.
    async fn delete<K>(
        &self,
        conn: &mut PgConnection,
        keys: &[K],
        chunk: usize,
        bind: for<'q> fn(PgQuery<'q>, &[K]) -> PgQuery<'q>,
    ) -> Result<(), SinkError> {
        if keys.is_empty() {
            return Ok(());
        }
        let sql = self.delete_sql();
        for part in keys.chunks(chunk.max(1)) {
            bind(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())), part)
                .execute(&mut *conn)
                .await
                .map_err(pg_error(format!("deleting from {}", self.name)))?;
        }
        Ok(())
    }
}

/// One column's values, as the array bound for `UNNEST`.
fn col<R, T>(rows: &[R], f: impl Fn(&R) -> T) -> Vec<T> {
    rows.iter().map(f).collect()
}

fn int(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

// The tables: a description and a bind function each. Column order = bind order.

const BLOBS: PgTable = PgTable {
    name: "blobs",
    columns: &[
        ("blob_id", "uuid"),
        ("user_id", "uuid"),
        ("version", "int8"),
        ("content_type", "text"),
        ("doc", "jsonb"),
        ("doc_ref", "text"),
        ("doc_bytes", "int8"),
        ("parent_id", "uuid"),
        ("created_at", "timestamptz"),
        ("updated_at", "timestamptz"),
        ("deleted_at", "timestamptz"),
    ],
    key: &["blob_id"],
    ignore_duplicates: false,
};

fn bind_blobs<'q>(q: PgQuery<'q>, rows: &[EncodedBlob<'_>]) -> PgQuery<'q> {
    q.bind(col(rows, |e| e.row.blob_id))
        .bind(col(rows, |e| e.row.user_id))
        .bind(col(rows, |e| int(e.row.version)))
        .bind(col(rows, |e| e.row.content_type.clone()))
        .bind(col(rows, |e| e.stored.doc.clone())) // text[], cast to jsonb[] by the SQL
        .bind(col(rows, |e| e.stored.doc_ref.clone()))
        .bind(col(rows, |e| e.stored.doc_bytes))
        .bind(col(rows, |e| e.row.parent_id))
        .bind(col(rows, |e| e.row.created_at.0))
        .bind(col(rows, |e| e.row.updated_at.0))
        .bind(col(rows, |e| e.row.deleted_at.map(|t| t.0)))
}

/// Large documents kept in Postgres ([`crate::content::LargeStore::Postgres`]), keyed
/// by their versioned reference: a retried batch writes nothing twice.
const LARGE_DOCS: PgTable = PgTable {
    name: "large_docs",
    columns: &[("doc_ref", "text"), ("doc", "text")],
    key: &[],
    ignore_duplicates: true,
};

fn bind_large_docs<'q>(q: PgQuery<'q>, rows: &[(&str, &str)]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.0.to_owned()))
        .bind(col(rows, |r| r.1.to_owned()))
}

fn bind_uuid_keys<'q>(q: PgQuery<'q>, keys: &[Uuid]) -> PgQuery<'q> {
    q.bind(keys.to_vec())
}

fn bind_pair_keys<'q>(q: PgQuery<'q>, keys: &[(Uuid, Uuid)]) -> PgQuery<'q> {
    q.bind(col(keys, |k| k.0)).bind(col(keys, |k| k.1))
}

const PROCESSED: PgTable = PgTable {
    name: "processed_by",
    columns: &[
        ("blob_id", "uuid"),
        ("provider_id", "text"),
        ("version", "int8"),
        ("delta_id", "uuid"),
    ],
    key: &["blob_id", "provider_id"],
    ignore_duplicates: false,
};

fn bind_processed<'q>(q: PgQuery<'q>, rows: &[&ProcessedRow]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.blob_id))
        .bind(col(rows, |r| r.provider_id.clone()))
        .bind(col(rows, |r| int(r.version)))
        .bind(col(rows, |r| r.delta_id))
}

fn bind_processed_keys<'q>(q: PgQuery<'q>, keys: &[(Uuid, String)]) -> PgQuery<'q> {
    q.bind(col(keys, |k| k.0)).bind(col(keys, |k| k.1.clone()))
}

const EDGES: PgTable = PgTable {
    name: "blob_edges",
    columns: &[
        ("parent_id", "uuid"),
        ("child_id", "uuid"),
        ("delta_id", "uuid"),
    ],
    key: &["parent_id", "child_id"],
    ignore_duplicates: false,
};

fn bind_edges<'q>(q: PgQuery<'q>, rows: &[&EdgeRow]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.parent_id))
        .bind(col(rows, |r| r.child_id))
        .bind(col(rows, |r| r.delta_id))
}

const REACH: PgTable = PgTable {
    name: "blob_reach",
    columns: &[
        ("ancestor_id", "uuid"),
        ("descendant_id", "uuid"),
        ("distance", "int8"),
    ],
    key: &["ancestor_id", "descendant_id"],
    ignore_duplicates: false,
};

fn bind_reach<'q>(q: PgQuery<'q>, rows: &[&ReachRow]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.ancestor_id))
        .bind(col(rows, |r| r.descendant_id))
        .bind(col(rows, |r| i64::from(r.distance)))
}

const DEPTH: PgTable = PgTable {
    name: "blob_depth",
    columns: &[("blob_id", "uuid"), ("depth", "int8")],
    key: &["blob_id"],
    ignore_duplicates: false,
};

fn bind_depth<'q>(q: PgQuery<'q>, rows: &[&DepthRow]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.blob_id))
        .bind(col(rows, |r| i64::from(r.depth)))
}

const USER_DEPTH: PgTable = PgTable {
    name: "user_depth",
    columns: &[("user_id", "uuid"), ("max_depth", "int8")],
    key: &["user_id"],
    ignore_duplicates: false,
};

fn bind_user_depth<'q>(q: PgQuery<'q>, rows: &[&UserDepthRow]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.user_id))
        .bind(col(rows, |r| i64::from(r.max_depth)))
}

const APPLIED_COLUMNS: &[(&str, &str)] = &[
    ("delta_id", "uuid"),
    ("blob_id", "uuid"),
    ("version", "int8"),
    ("operation", "text"),
    ("user_id", "uuid"),
    ("provider_id", "text"),
    ("caused_by", "uuid"),
    ("created_at", "timestamptz"),
];

const APPLIED: PgTable = PgTable {
    name: "deltas_applied",
    columns: APPLIED_COLUMNS,
    key: &[],
    ignore_duplicates: true,
};

/// The delta store: the columns of `deltas_applied`, the record as read and its log
/// position.
const DELTAS: PgTable = PgTable {
    name: "deltas",
    columns: &[
        ("delta_id", "uuid"),
        ("blob_id", "uuid"),
        ("version", "int8"),
        ("operation", "text"),
        ("user_id", "uuid"),
        ("provider_id", "text"),
        ("caused_by", "uuid"),
        ("created_at", "timestamptz"),
        ("record", "text"),
        ("pos_part", "int8"),
        ("pos_offset", "int8"),
    ],
    key: &[],
    ignore_duplicates: true,
};

fn bind_deltas<'q>(q: PgQuery<'q>, rows: &[&AppliedRow]) -> PgQuery<'q> {
    bind_applied(q, rows)
        .bind(col(rows, |r| r.record.as_deref().map(str::to_owned)))
        .bind(col(rows, |r| i64::from(r.pos.part)))
        .bind(col(rows, |r| int(r.pos.offset)))
}

/// Deltas waiting for a gap: inserted when they start waiting, deleted when they are
/// applied or dead-lettered.
const WAITING: PgTable = PgTable {
    name: "deltas_waiting",
    columns: &[
        ("delta_id", "uuid"),
        ("blob_id", "uuid"),
        ("version", "int8"),
        ("pos_part", "int8"),
        ("pos_offset", "int8"),
        ("record", "text"),
    ],
    key: &["delta_id"],
    ignore_duplicates: true,
};

fn bind_waiting<'q>(q: PgQuery<'q>, rows: &[&WaitingRow]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.delta_id))
        .bind(col(rows, |r| r.blob_id))
        .bind(col(rows, |r| int(r.version)))
        .bind(col(rows, |r| i64::from(r.pos.part)))
        .bind(col(rows, |r| int(r.pos.offset)))
        .bind(col(rows, |r| r.record.to_string()))
}

const REQUESTS: PgTable = PgTable {
    name: "transform_requests",
    columns: &[
        ("request_id", "uuid"),
        ("provider_id", "text"),
        ("blob_id", "uuid"),
        ("version", "int8"),
        ("fingerprint", "text"),
        ("created_at", "timestamptz"),
        ("status", "text"),
    ],
    key: &["request_id"],
    ignore_duplicates: false,
};

/// A request that appeared keeps a settled status (`completed`, `failed`) already
/// written; otherwise it takes the batch's (`pending`, or `superseded`).
const REQUESTS_ON_CONFLICT: &str = "ON CONFLICT (request_id) DO UPDATE SET status = EXCLUDED.status \
    WHERE transform_requests.status IN ('pending', 'superseded')";

fn bind_requests<'q>(q: PgQuery<'q>, rows: &[(&TransformRequest, bool)]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.0.request_id))
        .bind(col(rows, |r| r.0.provider_id.clone()))
        .bind(col(rows, |r| r.0.blob_id))
        .bind(col(rows, |r| int(r.0.version)))
        .bind(col(rows, |r| r.0.fingerprint.to_string()))
        .bind(col(rows, |r| r.0.created_at.0))
        .bind(col(rows, |r| {
            if r.1 { "pending" } else { "superseded" }.to_owned()
        }))
}

const PROCESSING: PgTable = PgTable {
    name: "processing",
    columns: &[
        ("request_id", "uuid"),
        ("provider_id", "text"),
        ("blob_id", "uuid"),
        ("version", "int8"),
        ("status", "text"),
        ("attempts", "int8"),
        ("error", "text"),
        ("started_at", "timestamptz"),
        ("finished_at", "timestamptz"),
    ],
    key: &["request_id"],
    ignore_duplicates: false,
};

/// A request answered again (a later round) adds its attempts to the earlier ones. The
/// same result written again (a batch retried after a commit whose acknowledgement was
/// lost) has the same `finished_at` and adds nothing: the statement stays idempotent.
const PROCESSING_ON_CONFLICT: &str = "ON CONFLICT (request_id) DO UPDATE SET status = EXCLUDED.status, \
    attempts = CASE WHEN processing.finished_at = EXCLUDED.finished_at THEN processing.attempts \
    ELSE processing.attempts + EXCLUDED.attempts END, \
    error = EXCLUDED.error, finished_at = EXCLUDED.finished_at";

fn bind_processing<'q>(q: PgQuery<'q>, rows: &[ProcessingResult]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.request_id))
        .bind(col(rows, |r| r.provider_id.clone()))
        .bind(col(rows, |r| r.blob_id))
        .bind(col(rows, |r| int(r.version)))
        .bind(col(rows, |r| r.status.as_str().to_owned()))
        .bind(col(rows, |r| i64::from(r.attempts)))
        .bind(col(rows, |r| {
            r.error.as_ref().map(|e| e.replace('\0', "\u{FFFD}"))
        }))
        .bind(col(rows, |r| r.started_at.0))
        .bind(col(rows, |r| r.finished_at.0))
}

/// `events.seq` is numbered by the sink, like `dead_letters.seq`.
const EVENTS: PgTable = PgTable {
    name: "events",
    columns: &[
        ("seq", "int8"),
        ("type", "text"),
        ("blob_id", "uuid"),
        ("delta_id", "uuid"),
        ("provider_id", "text"),
        ("at", "timestamptz"),
        ("payload", "jsonb"),
    ],
    key: &[],
    ignore_duplicates: true,
};

fn bind_events<'q>(q: PgQuery<'q>, rows: &[(i64, &EventRow)]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.0))
        .bind(col(rows, |r| r.1.event_type.to_owned()))
        .bind(col(rows, |r| r.1.blob_id))
        .bind(col(rows, |r| r.1.delta_id))
        .bind(col(rows, |r| r.1.provider_id.clone()))
        .bind(col(rows, |r| r.1.at.0))
        .bind(col(rows, |r| jsonb_text(&r.1.payload))) // text[], cast to jsonb[] by the SQL
}

/// JSON text that `jsonb` accepts: a string holding NUL (`\u0000`, which `jsonb`
/// refuses) has it replaced by U+FFFD, as in `dead_letters.reason`.
fn jsonb_text(json: &str) -> String {
    fn scrub(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) => *s = s.replace('\0', "\u{FFFD}"),
            serde_json::Value::Array(items) => items.iter_mut().for_each(scrub),
            serde_json::Value::Object(map) => map.values_mut().for_each(scrub),
            _ => {}
        }
    }
    if !json.contains("\\u0000") {
        return json.to_owned();
    }
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(mut value) => {
            scrub(&mut value);
            value.to_string()
        }
        Err(_) => json.to_owned(),
    }
}

fn bind_applied<'q>(q: PgQuery<'q>, rows: &[&AppliedRow]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.delta_id))
        .bind(col(rows, |r| r.blob_id))
        .bind(col(rows, |r| int(r.version)))
        .bind(col(rows, |r| r.operation.as_str().to_owned()))
        .bind(col(rows, |r| r.user_id))
        .bind(col(rows, |r| r.provider_id.clone()))
        .bind(col(rows, |r| r.caused_by))
        .bind(col(rows, |r| r.created_at.0))
}

const REJECTED: PgTable = PgTable {
    name: "rejected_edges",
    columns: &[
        ("delta_id", "uuid"),
        ("parent_id", "uuid"),
        ("child_id", "uuid"),
        ("reason", "text"),
    ],
    key: &[],
    ignore_duplicates: false,
};

fn bind_rejected<'q>(q: PgQuery<'q>, rows: &[&RejectedEdgeRow]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.delta_id))
        .bind(col(rows, |r| r.parent_id))
        .bind(col(rows, |r| r.child_id))
        .bind(col(rows, |r| r.reason.clone()))
}

const DEAD: PgTable = PgTable {
    name: "dead_letters",
    columns: &[
        ("seq", "int8"),
        ("delta_id", "uuid"),
        ("blob_id", "uuid"),
        ("reason", "text"),
        ("raw", "text"),
        ("pos_part", "int8"),
        ("pos_offset", "int8"),
    ],
    key: &[],
    ignore_duplicates: true,
};

/// The `raw` column in Postgres: as in SQLite, except that text holding a NUL character
/// (which Postgres text cannot hold) is written in its `base64:` form.
fn pg_raw(letter: &DeadLetter) -> String {
    let raw = letter.raw_text();
    if raw.contains('\0') {
        use base64::Engine as _;
        format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(&letter.raw)
        )
    } else {
        raw.into_owned()
    }
}

fn bind_dead<'q>(q: PgQuery<'q>, rows: &[(i64, &DeadLetter)]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.0))
        .bind(col(rows, |r| r.1.delta_id))
        .bind(col(rows, |r| r.1.blob_id))
        .bind(col(rows, |r| {
            r.1.reason.to_string().replace('\0', "\u{FFFD}")
        }))
        .bind(col(rows, |r| pg_raw(r.1)))
        .bind(col(rows, |r| i64::from(r.1.pos.part)))
        .bind(col(rows, |r| int(r.1.pos.offset)))
}

/// Writes one keyed view's net changes: upserts sorted by key, then deletes.
async fn write_keyed<R: studio_model::Keyed>(
    conn: &mut PgConnection,
    table: &PgTable,
    changes: &KeyedChanges<R>,
    chunk: usize,
    bind_rows: for<'q> fn(PgQuery<'q>, &[&R]) -> PgQuery<'q>,
    bind_keys: for<'q> fn(PgQuery<'q>, &[R::Key]) -> PgQuery<'q>,
) -> Result<(), SinkError> {
    let mut rows: Vec<&R> = changes.upserts.iter().collect();
    rows.sort_unstable_by_key(|r| r.key());
    table.insert(conn, &rows, chunk, bind_rows).await?;
    table.delete(conn, &changes.deletes, chunk, bind_keys).await
}

/// The first day of `t`'s month (UTC).
fn month_of(t: DateTime<Utc>) -> NaiveDate {
    NaiveDate::from_ymd_opt(t.year(), t.month(), 1).expect("the first of a month exists")
}

/// The partition of `deltas` for the month starting at `month`: `deltas_y2026m01`.
pub fn partition_name(month: NaiveDate) -> String {
    format!("deltas_y{:04}m{:02}", month.year(), month.month())
}

async fn ensure_partition(conn: &mut PgConnection, month: NaiveDate) -> Result<(), SinkError> {
    let next = month + Months::new(1);
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF deltas FOR VALUES FROM ('{month} 00:00:00+00') TO ('{next} 00:00:00+00')",
        partition_name(month)
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *conn)
        .await
        .map_err(pg_error(format!(
            "creating the partition {}",
            partition_name(month)
        )))?;
    Ok(())
}

/// Applies the migrations not yet recorded in `_studio_migrations`, each in its own
/// transaction, under an advisory lock so that two processes do not race.
pub async fn migrate(conn: &mut PgConnection) -> Result<(), SinkError> {
    const LOCK: i64 = 0x5354_5544_494f; // "STUDIO"
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS _studio_migrations (version bigint PRIMARY KEY, \
         name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&mut *conn)
    .await
    .map_err(pg_error("creating _studio_migrations"))?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(LOCK)
        .execute(&mut *conn)
        .await
        .map_err(pg_error("locking the migrations"))?;
    let result = async {
        let done: Vec<i64> = sqlx::query_scalar("SELECT version FROM _studio_migrations")
            .fetch_all(&mut *conn)
            .await
            .map_err(pg_error("reading _studio_migrations"))?;
        for (version, name, sql) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            let mut tx = conn.begin().await.map_err(pg_error("BEGIN"))?;
            if *version == DOCUMENTS_AS_JSON {
                inflate_legacy_documents(&mut tx).await?;
            }
            sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                .execute(&mut *tx)
                .await
                .map_err(pg_error(format!("applying migration {version} ({name})")))?;
            sqlx::query("INSERT INTO _studio_migrations (version, name) VALUES ($1, $2)")
                .bind(version)
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(pg_error("recording a migration"))?;
            tx.commit().await.map_err(pg_error("COMMIT"))?;
            tracing::info!(version, name, "applied a Postgres migration");
            if *version == DOCUMENTS_AS_JSON {
                log_toast_compression(&mut *conn).await?;
            }
        }
        Ok(())
    }
    .await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK)
        .execute(&mut *conn)
        .await
        .map_err(pg_error("unlocking the migrations"))?;
    result
}

/// Before migration 5: turns the LZ4-compressed documents of `blobs.doc_lz4` (written
/// by earlier versions) back into JSON in `doc`, so that the migration can drop the
/// column. JSONB cannot hold `\u0000`; such a document (which earlier versions
/// compressed for that reason) keeps U+FFFD in its place, with a warning.
async fn inflate_legacy_documents(conn: &mut PgConnection) -> Result<(), SinkError> {
    let packed: Vec<(Uuid, Vec<u8>)> =
        sqlx::query_as("SELECT blob_id, doc_lz4 FROM blobs WHERE doc_lz4 IS NOT NULL")
            .fetch_all(&mut *conn)
            .await
            .map_err(pg_error("reading blobs.doc_lz4"))?;
    for (blob_id, lz4) in &packed {
        let mut json = inflate_legacy_lz4(lz4)?;
        if json.contains("\\u0000") {
            tracing::warn!(%blob_id, "a document held \\u0000, which JSONB cannot hold: stored with U+FFFD instead");
            json = jsonb_text(&json);
        }
        sqlx::query("UPDATE blobs SET doc = $2::jsonb, doc_lz4 = NULL WHERE blob_id = $1")
            .bind(blob_id)
            .bind(json)
            .execute(&mut *conn)
            .await
            .map_err(pg_error("storing a decompressed document"))?;
    }
    if !packed.is_empty() {
        tracing::info!(
            documents = packed.len(),
            "stored the LZ4-compressed documents of blobs.doc_lz4 as JSONB in blobs.doc"
        );
    }
    Ok(())
}

/// Says how Postgres compresses documents: LZ4 when the server has it, else pglz.
async fn log_toast_compression(conn: &mut PgConnection) -> Result<(), SinkError> {
    let lz4: Option<bool> = sqlx::query_scalar(
        "SELECT 'lz4' = ANY (enumvals) FROM pg_settings WHERE name = 'default_toast_compression'",
    )
    .fetch_optional(&mut *conn)
    .await
    .map_err(pg_error("reading default_toast_compression"))?;
    match lz4 {
        Some(true) => tracing::info!("Postgres compresses blobs.doc and large_docs.doc with LZ4"),
        Some(false) => tracing::warn!(
            "this Postgres server was built without LZ4: it compresses blobs.doc and large_docs.doc with pglz"
        ),
        None => tracing::warn!(
            "this Postgres server (before 14) has no per-column compression: documents are compressed with pglz"
        ),
    }
    Ok(())
}

/// Drops Studio's tables in the current schema, refusing when it holds others.
async fn drop_views(conn: &mut PgConnection, url: &str) -> Result<(), SinkError> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'f', 'v', 'm')",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(pg_error("listing the tables"))?;
    let foreign = crate::foreign_tables(tables.iter().map(String::as_str));
    if !foreign.is_empty() {
        return Err(SinkError::Refused(format!(
            "the current schema of {} holds tables Studio did not create ({foreign:?}); a replay \
             drops and rebuilds Studio's tables there, so give Studio a database or schema of its own",
            redact(url)
        )));
    }
    let mut drops: Vec<String> = crate::VIEW_TABLES.iter().map(|t| (*t).to_owned()).collect();
    drops.push(crate::LARGE_DOCS_TABLE.into());
    drops.push("_studio_migrations".into());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {} CASCADE",
        drops.join(", ")
    )))
    .execute(&mut *conn)
    .await
    .map_err(pg_error("dropping the old view tables"))?;
    Ok(())
}

/// The Postgres view sink.
pub struct PgViews {
    runtime: tokio::runtime::Runtime,
    options: PgOptions,
    /// `None` after a connection was lost; the next attempt reconnects.
    conn: Option<PgConnection>,
    /// The content codec, connected on open.
    content: Option<ContentCodec>,
    /// The next `dead_letters.seq`.
    next_seq: i64,
    /// The next `events.seq`.
    next_event_seq: i64,
    /// Partitions of `deltas` known to exist.
    partitions: HashSet<NaiveDate>,
}

impl PgViews {
    /// Connects, rebuilds or migrates the tables (retrying while the database is
    /// unavailable), and reads where `dead_letters.seq` and the partitions stand.
    pub fn open(options: PgOptions) -> Result<Self, SinkError> {
        let mut sink = PgViews {
            runtime: runtime()?,
            options,
            conn: None,
            content: None,
            next_seq: 1,
            next_event_seq: 1,
            partitions: HashSet::new(),
        };
        let retry = sink.options.retry;
        // Rebuild: drop once, even when a later step of the preparation is retried.
        let mut dropped = sink.options.mode != OpenMode::Rebuild;
        retry.run("preparing the Postgres views", || {
            sink.prepare(&mut dropped)
        })?;
        Ok(sink)
    }

    fn prepare(&mut self, dropped: &mut bool) -> Result<(), SinkError> {
        let options = &self.options;
        if self.content.is_none() {
            self.content = Some(self.runtime.block_on(options.content.connect())?);
        }
        let (next_seq, next_event_seq, partitions) = self
            .runtime
            .block_on(async {
                let mut conn = connect(&options.url, options.timeout).await?;
                if !*dropped {
                    drop_views(&mut conn, &options.url).await?;
                    *dropped = true;
                }
                migrate(&mut conn).await?;
                let next_seq: i64 =
                    sqlx::query_scalar("SELECT coalesce(max(seq), 0) + 1 FROM dead_letters")
                        .fetch_one(&mut conn)
                        .await
                        .map_err(pg_error("reading dead_letters"))?;
                let next_event_seq: i64 =
                    sqlx::query_scalar("SELECT coalesce(max(seq), 0) + 1 FROM events")
                        .fetch_one(&mut conn)
                        .await
                        .map_err(pg_error("reading events"))?;
                let partitions: Vec<String> = sqlx::query_scalar(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent = 'deltas'::regclass",
            )
            .fetch_all(&mut conn)
            .await
            .map_err(pg_error("listing the partitions of deltas"))?;
                Ok::<_, SinkError>((next_seq, next_event_seq, partitions, conn))
            })
            .map(|(seq, event_seq, parts, conn)| {
                self.conn = Some(conn);
                (seq, event_seq, parts)
            })?;
        self.next_seq = next_seq;
        self.next_event_seq = next_event_seq;
        self.partitions = partitions
            .iter()
            .filter_map(|name| {
                let rest = name.strip_prefix("deltas_y")?;
                let (year, month) = rest.split_once('m')?;
                NaiveDate::from_ymd_opt(year.parse().ok()?, month.parse().ok()?, 1)
            })
            .collect();
        Ok(())
    }

    /// One attempt at a batch: its large documents, then one transaction (bounded by
    /// the timeout). On an error that may pass, the connection is dropped.
    fn try_write(&mut self, batch: &ViewBatch) -> Result<(), SinkError> {
        let result = self.runtime.block_on(async {
            let options = &self.options;
            if self.conn.is_none() {
                self.conn = Some(connect(&options.url, options.timeout).await?);
            }
            let conn = self.conn.as_mut().expect("connected");
            let content = self.content.as_ref().expect("connected on open");
            let blobs = content.encode_rows(&batch.blobs.upserts).await?;
            let months: Vec<NaiveDate> = {
                let mut m: Vec<NaiveDate> = batch
                    .applied
                    .iter()
                    .map(|r| month_of(r.created_at.0))
                    .filter(|m| !self.partitions.contains(m))
                    .collect();
                m.sort_unstable();
                m.dedup();
                m
            };
            let transaction = write_batch(
                conn,
                batch,
                &blobs,
                &months,
                Seqs {
                    dead_letter: self.next_seq,
                    event: self.next_event_seq,
                },
                options.rows_per_statement,
                options.mode,
            );
            tokio::time::timeout(options.timeout, transaction)
                .await
                .map_err(|_| timed_out("writing a view batch to Postgres", options.timeout))??;
            Ok::<_, SinkError>(months)
        });
        match result {
            Ok(months) => {
                self.next_seq += batch.dead_letters.len() as i64;
                self.next_event_seq += batch.events.len() as i64;
                self.partitions.extend(months);
                Ok(())
            }
            Err(e) => {
                if matches!(e, SinkError::Unavailable { .. }) {
                    // Whatever state the connection is in, start over on a new one.
                    self.conn = None;
                }
                Err(e)
            }
        }
    }
}

/// The first `seq` of a batch's dead letters and of its events.
#[derive(Clone, Copy)]
struct Seqs {
    dead_letter: i64,
    event: i64,
}

async fn write_batch(
    conn: &mut PgConnection,
    batch: &ViewBatch,
    blobs: &[EncodedBlob<'_>],
    new_months: &[NaiveDate],
    seqs: Seqs,
    chunk: usize,
    mode: OpenMode,
) -> Result<(), SinkError> {
    let mut tx = conn.begin().await.map_err(pg_error("BEGIN"))?;
    if mode == OpenMode::Rebuild {
        // A rebuild is replayed from the log again if the machine dies.
        sqlx::raw_sql("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await
            .map_err(pg_error("SET synchronous_commit"))?;
    }
    for month in new_months {
        ensure_partition(&mut tx, *month).await?;
    }
    let large: Vec<(&str, &str)> = blobs
        .iter()
        .filter_map(|e| Some((e.stored.doc_ref.as_deref()?, e.stored.large_doc.as_deref()?)))
        .collect();
    // Large documents in their own chunks: a chunk of rows each ≥ 1 MiB is large.
    LARGE_DOCS
        .insert(&mut tx, &large, 16, bind_large_docs)
        .await?;
    BLOBS.insert(&mut tx, blobs, chunk, bind_blobs).await?;
    BLOBS
        .delete(&mut tx, &batch.blobs.deletes, chunk, bind_uuid_keys)
        .await?;
    write_keyed(
        &mut tx,
        &PROCESSED,
        &batch.processed,
        chunk,
        bind_processed,
        bind_processed_keys,
    )
    .await?;
    write_keyed(
        &mut tx,
        &EDGES,
        &batch.edges,
        chunk,
        bind_edges,
        bind_pair_keys,
    )
    .await?;
    write_keyed(
        &mut tx,
        &REACH,
        &batch.reach,
        chunk,
        bind_reach,
        bind_pair_keys,
    )
    .await?;
    write_keyed(
        &mut tx,
        &DEPTH,
        &batch.depth,
        chunk,
        bind_depth,
        bind_uuid_keys,
    )
    .await?;
    write_keyed(
        &mut tx,
        &USER_DEPTH,
        &batch.user_depth,
        chunk,
        bind_user_depth,
        bind_uuid_keys,
    )
    .await?;
    let mut applied: Vec<&AppliedRow> = batch.applied.iter().collect();
    applied.sort_unstable_by_key(|r| r.delta_id);
    APPLIED
        .insert(&mut tx, &applied, chunk, bind_applied)
        .await?;
    DELTAS.insert(&mut tx, &applied, chunk, bind_deltas).await?;
    write_keyed(
        &mut tx,
        &WAITING,
        &batch.waiting,
        chunk,
        bind_waiting,
        bind_uuid_keys,
    )
    .await?;
    if let Some(checkpoint) = &batch.checkpoint {
        write_checkpoint(&mut tx, checkpoint).await?;
    }
    let rejected: Vec<&RejectedEdgeRow> = batch.rejected_edges.iter().collect();
    REJECTED
        .insert(&mut tx, &rejected, chunk, bind_rejected)
        .await?;
    let dead: Vec<(i64, &DeadLetter)> = batch
        .dead_letters
        .iter()
        .enumerate()
        .map(|(i, d)| (seqs.dead_letter + i as i64, d))
        .collect();
    DEAD.insert(&mut tx, &dead, chunk, bind_dead).await?;
    write_provider_tables(&mut tx, batch, seqs.event, chunk).await?;
    tx.commit().await.map_err(pg_error("COMMIT"))
}

async fn write_checkpoint(
    conn: &mut PgConnection,
    checkpoint: &Checkpoint,
) -> Result<(), SinkError> {
    sqlx::query(
        "INSERT INTO checkpoints (source, positions, next_seq) VALUES ($1, $2::jsonb, $3) \
         ON CONFLICT (source) DO UPDATE SET positions = EXCLUDED.positions, next_seq = EXCLUDED.next_seq",
    )
    .bind(&checkpoint.source)
    .bind(positions_json(&checkpoint.positions))
    .bind(int(checkpoint.next_seq))
    .execute(&mut *conn)
    .await
    .map_err(pg_error("writing the source checkpoint"))?;
    Ok(())
}

/// `transform_requests`, `processing` and `events`, as SQLite writes them (one
/// `UNNEST` statement per table and chunk): a request is inserted `pending` when it
/// first appears; a retraction marks it `superseded` unless a result already settled
/// it; a result sets `completed` or `failed`.
async fn write_provider_tables(
    conn: &mut PgConnection,
    batch: &ViewBatch,
    first_event_seq: i64,
    chunk: usize,
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
    let appeared: HashSet<Uuid> = batch
        .requests
        .iter()
        .filter(|(_, diff)| *diff > 0)
        .map(|(r, _)| r.request_id)
        .collect();
    let inserts: Vec<(&TransformRequest, bool)> = last
        .iter()
        .filter(|(id, _)| appeared.contains(id))
        .map(|(_, e)| *e)
        .collect();
    REQUESTS
        .insert_with(conn, REQUESTS_ON_CONFLICT, &inserts, chunk, bind_requests)
        .await?;
    let superseded: Vec<Uuid> = last
        .iter()
        .filter(|(id, (_, pending))| !pending && !appeared.contains(id))
        .map(|(id, _)| *id)
        .collect();
    for part in superseded.chunks(chunk.max(1)) {
        sqlx::query(
            "UPDATE transform_requests SET status = 'superseded' \
             WHERE status = 'pending' AND request_id = ANY($1::uuid[])",
        )
        .bind(part)
        .execute(&mut *conn)
        .await
        .map_err(pg_error("superseding transform_requests"))?;
    }
    // Results in order, one row per request (an upsert cannot touch a row twice in one
    // statement): the attempts add up, the last result's status, error and end stand.
    let mut results: Vec<ProcessingResult> = Vec::with_capacity(batch.processing.len());
    let mut at: BTreeMap<Uuid, usize> = BTreeMap::new();
    for r in &batch.processing {
        match at.get(&r.request_id) {
            Some(&i) => {
                let merged = &mut results[i];
                merged.status = r.status;
                merged.attempts += r.attempts;
                merged.error = r.error.clone();
                merged.finished_at = r.finished_at;
            }
            None => {
                at.insert(r.request_id, results.len());
                results.push(r.clone());
            }
        }
    }
    PROCESSING
        .insert_with(
            conn,
            PROCESSING_ON_CONFLICT,
            &results,
            chunk,
            bind_processing,
        )
        .await?;
    for part in results.chunks(chunk.max(1)) {
        sqlx::query(
            "UPDATE transform_requests t SET status = u.status \
             FROM UNNEST($1::uuid[], $2::text[]) AS u(request_id, status) \
             WHERE t.request_id = u.request_id",
        )
        .bind(col(part, |r| r.request_id))
        .bind(col(part, |r| r.status.as_str().to_owned()))
        .execute(&mut *conn)
        .await
        .map_err(pg_error("writing transform_requests"))?;
    }
    let events: Vec<(i64, &EventRow)> = batch
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| (first_event_seq + i as i64, e))
        .collect();
    EVENTS.insert(conn, &events, chunk, bind_events).await
}

impl ViewSink for PgViews {
    fn write(&mut self, batch: &ViewBatch) -> Result<(), SinkError> {
        let retry = self.options.retry;
        retry.run("writing a view batch to Postgres", || self.try_write(batch))
    }

    fn recover(
        &mut self,
        source: &str,
        each: &mut dyn FnMut(SourcePos, &str, RecoveredAs),
    ) -> Result<Option<Checkpoint>, SinkError> {
        let result = self.runtime.block_on(async {
            if self.conn.is_none() {
                self.conn = Some(connect(&self.options.url, self.options.timeout).await?);
            }
            let conn = self.conn.as_mut().expect("connected");
            recover(conn, source, each).await
        });
        if matches!(result, Err(SinkError::Unavailable { .. })) {
            self.conn = None;
        }
        result
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        if self.options.mode == OpenMode::Rebuild {
            let retry = self.options.retry;
            retry.run("analyzing the rebuilt views", || {
                let result = self.runtime.block_on(async {
                    if self.conn.is_none() {
                        self.conn = Some(connect(&self.options.url, self.options.timeout).await?);
                    }
                    let conn = self.conn.as_mut().expect("connected");
                    sqlx::raw_sql("ANALYZE")
                        .execute(conn)
                        .await
                        .map_err(pg_error("ANALYZE"))
                });
                if result.is_err() {
                    self.conn = None;
                }
                result.map(|_| ())
            })?;
        }
        Ok(())
    }
}

/// Streams the delta store in log order to `each`, then reads `source`'s checkpoint.
async fn recover(
    conn: &mut PgConnection,
    source: &str,
    each: &mut dyn FnMut(SourcePos, &str, RecoveredAs),
) -> Result<Option<Checkpoint>, SinkError> {
    let mut rows = sqlx::query_as::<_, (Option<i64>, Option<i64>, Option<String>, bool)>(
        "SELECT pos_part, pos_offset, record, false FROM deltas \
         UNION ALL SELECT pos_part, pos_offset, record, false FROM deltas_waiting \
         UNION ALL SELECT pos_part, pos_offset, raw, reason LIKE 'S4.4%' FROM dead_letters \
             WHERE delta_id IS NOT NULL \
         ORDER BY 1, 2",
    )
    .fetch(&mut *conn);
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(pg_error("reading the delta store"))?
    {
        let (Some(part), Some(offset), Some(record), expired) = row else {
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
        sqlx::query_as("SELECT positions::text, next_seq FROM checkpoints WHERE source = $1")
            .bind(source)
            .fetch_optional(&mut *conn)
            .await
            .map_err(pg_error("reading the source checkpoint"))?;
    crate::checkpoint_of(source, stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_sql() {
        assert_eq!(
            DEPTH.insert_sql(),
            "INSERT INTO blob_depth (blob_id, depth) SELECT * FROM UNNEST($1::uuid[], $2::int8[]) \
             ON CONFLICT (blob_id) DO UPDATE SET depth = EXCLUDED.depth"
        );
        assert_eq!(
            PROCESSED.delete_sql(),
            "DELETE FROM processed_by WHERE (blob_id, provider_id) IN (SELECT * FROM UNNEST($1::uuid[], $2::text[]))"
        );
        assert_eq!(
            REJECTED.insert_sql(),
            "INSERT INTO rejected_edges (delta_id, parent_id, child_id, reason) SELECT * FROM \
             UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[])"
        );
    }

    #[test]
    fn partitions_and_redaction() {
        let t = DateTime::parse_from_rfc3339("2025-12-31T23:59:59.5Z")
            .unwrap()
            .to_utc();
        assert_eq!(partition_name(month_of(t)), "deltas_y2025m12");
        assert!(crate::is_delta_partition("deltas_y2025m12"));
        assert!(!crate::is_delta_partition("deltas_y2025m1x"));
        assert_eq!(
            redact("postgres://me:secret@h:5432/db"),
            "postgres://me@h:5432/db"
        );
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
