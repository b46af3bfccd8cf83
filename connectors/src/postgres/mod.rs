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
//!   `DELETE ... WHERE (key) IN (SELECT * FROM UNNEST(...))` for their deletes. The SQL
//!   and the bound arrays are generated from the tables declared in
//!   `studio_model::tables` ([`table`]); adding a view is a declaration there and a
//!   migration here.
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

mod connection;
mod migrate;
mod partitions;
mod reader;
mod recover;
pub mod table;
mod write;

use std::collections::HashSet;
use std::time::Duration;

use chrono::NaiveDate;
use studio_model::{Checkpoint, SourcePos, ViewBatch};

use crate::content::{ContentCodec, ContentSpec};
use crate::retry::RetryPolicy;
use crate::{RecoveredAs, SinkError, ViewSink};

use connection::{PgLink, connect, pg_error, runtime, timed_out};
use migrate::drop_views;
use partitions::{existing_partitions, month_of};
use recover::recover;
use write::{Seqs, write_batch};

pub use crate::open::{is_postgres_url, redact};
pub use migrate::{MIGRATIONS, migrate};
pub use partitions::partition_name;
pub use reader::PgReader;

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

/// The Postgres view sink.
pub struct PgViews {
    runtime: tokio::runtime::Runtime,
    options: PgOptions,
    /// The connection, reconnected on the next use after it was lost.
    link: PgLink,
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
            link: PgLink::new(&options.url, options.timeout),
            options,
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
        let (next_seq, next_event_seq, partitions, conn) = self.runtime.block_on(async {
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
            let partitions = existing_partitions(&mut conn).await?;
            Ok::<_, SinkError>((next_seq, next_event_seq, partitions, conn))
        })?;
        self.link.set(conn);
        self.next_seq = next_seq;
        self.next_event_seq = next_event_seq;
        self.partitions = partitions;
        Ok(())
    }

    /// One attempt at a batch: its large documents, then one transaction (bounded by
    /// the timeout). On an error that may pass, the connection is dropped.
    fn try_write(&mut self, batch: &ViewBatch) -> Result<(), SinkError> {
        let result = self.runtime.block_on(async {
            let options = &self.options;
            let conn = self.link.get().await?;
            let content = self.content.as_ref().expect("connected on open");
            let blobs = content.encode_rows(&batch.blobs.upserts).await?;
            let months = new_months(batch, &self.partitions);
            let seqs = Seqs {
                dead_letter: self.next_seq,
                event: self.next_event_seq,
            };
            let transaction = write_batch(
                conn,
                batch,
                &blobs,
                &months,
                seqs,
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
                    self.link.drop_connection();
                }
                Err(e)
            }
        }
    }
}

/// The months of a batch's deltas whose partitions are not known to exist, in order.
fn new_months(batch: &ViewBatch, known: &HashSet<NaiveDate>) -> Vec<NaiveDate> {
    let mut months: Vec<NaiveDate> = batch
        .applied
        .iter()
        .map(|r| month_of(r.created_at.0))
        .filter(|m| !known.contains(m))
        .collect();
    months.sort_unstable();
    months.dedup();
    months
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
            let conn = self.link.get().await?;
            recover(conn, source, each).await
        });
        if matches!(result, Err(SinkError::Unavailable { .. })) {
            self.link.drop_connection();
        }
        result
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        if self.options.mode == OpenMode::Rebuild {
            let retry = self.options.retry;
            retry.run("analyzing the rebuilt views", || {
                let result = self.runtime.block_on(async {
                    let conn = self.link.get().await?;
                    sqlx::raw_sql("ANALYZE")
                        .execute(conn)
                        .await
                        .map_err(pg_error("ANALYZE"))
                });
                if result.is_err() {
                    self.link.drop_connection();
                }
                result.map(|_| ())
            })?;
        }
        Ok(())
    }
}
