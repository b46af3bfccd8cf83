//! # studio-connectors
//!
//! Where records come from and where views go. The traits live here
//! ([`RecordSource`], [`ViewSink`]); each system has a folder of its own behind a cargo
//! feature, with its configuration, its code and its tests:
//!
//! | folder | feature | role |
//! |---|---|---|
//! | [`file`] | `file` | JSONL delta logs, read in order (the replay source) |
//! | [`sqlite`] | `sqlite` | the embedded view store (the default sink) |
//! | [`postgres`] | `postgres` | the Postgres view store and delta store |
//! | [`content`] | (`s3` for S3) | how documents are stored: JSON, LZ4, or a large store |
//!
//! [`retry`] retries a write while a service is unavailable; [`query`] holds the
//! named questions of `studio query` that every view store answers ([`ViewReader`]).
//!
//! Sources hand out raw bytes with their [`SourcePos`]; parsing belongs to the dataflow
//! so that a malformed record becomes a dead letter, never a source error. A source
//! error is about the source itself (a file vanished, a disk failed).
#![forbid(missing_docs)]

use studio_model::{SourcePos, ViewBatch};

pub mod content;
#[cfg(feature = "file")]
pub mod file;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod query;
pub mod retry;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use query::{Param, Rows, ViewReader};

/// The view tables Studio owns, in every view store (a replay rebuilds exactly these).
pub const VIEW_TABLES: &[&str] = &[
    "blobs",
    "deltas_applied",
    "deltas",
    "processed_by",
    "dead_letters",
    "blob_edges",
    "blob_reach",
    "blob_depth",
    "user_depth",
    "rejected_edges",
];

/// The tables among `tables` that Studio did not create: a rebuild refuses to touch a
/// database that holds any. Studio's own are [`VIEW_TABLES`], the monthly partitions of
/// `deltas` (`deltas_yYYYYmMM`), its migration ledger (`_studio_*`) and SQLite's
/// internal tables.
pub fn foreign_tables<'a>(tables: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    tables
        .into_iter()
        .filter(|t| {
            !VIEW_TABLES.contains(t)
                && !t.starts_with("sqlite_")
                && !t.starts_with("_studio_")
                && !is_delta_partition(t)
        })
        .collect()
}

/// True for a monthly partition name of `deltas`: `deltas_y2026m01`.
pub fn is_delta_partition(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("deltas_y") else {
        return false;
    };
    let bytes = rest.as_bytes();
    bytes.len() == 7
        && bytes[4] == b'm'
        && bytes[..4].iter().chain(&bytes[5..]).all(u8::is_ascii_digit)
}

/// How a view store is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Rebuild the views from scratch and bulk-load them (a bounded replay).
    Rebuild,
    /// Keep the views and maintain them durably.
    Maintain,
}

/// One record as read: its bytes (without the line terminator) and its position.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// Where it was read.
    pub pos: SourcePos,
    /// Its bytes, exactly.
    pub bytes: &'a [u8],
}

/// A source of records in log order.
pub trait RecordSource {
    /// The next record, or `None` at the end of a bounded source.
    fn next_record(&mut self) -> Result<Option<Record<'_>>, SourceError>;
}

/// A source failed (not a bad record: those are dead letters).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A store for the maintained views.
pub trait ViewSink {
    /// Writes one batch of view changes atomically: all of it or none of it.
    fn write(&mut self, batch: &ViewBatch) -> Result<(), SinkError>;

    /// Called once after the last batch of a bounded run.
    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// A sink failed to make a batch durable.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The sink will not do what was asked, and says why.
    #[error("{0}")]
    Refused(String),
    /// The database refused or failed.
    #[error("{context}: {source}")]
    Database {
        /// What was being done.
        context: String,
        /// The driver's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A service could not be reached (connection refused or lost, a timeout, a server
    /// error): the write may succeed later, and [`retry`] retries it.
    #[error("{context} (unavailable): {source}")]
    Unavailable {
        /// What was being done.
        context: String,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
