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
//!
//! Sources hand out raw bytes with their [`SourcePos`]; parsing belongs to the dataflow
//! so that a malformed record becomes a dead letter, never a source error. A source
//! error is about the source itself (a file vanished, a disk failed).
#![forbid(missing_docs)]

use studio_model::{SourcePos, ViewBatch};

#[cfg(feature = "file")]
pub mod file;
#[cfg(feature = "sqlite")]
pub mod sqlite;

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
}
