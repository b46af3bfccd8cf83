//! # studio-connectors
//!
//! Where records come from and where views go. The traits live here
//! ([`Source`], [`ViewSink`], [`RecordPublisher`]); each system has a folder of its own behind a cargo
//! feature, with its configuration, its code and its tests:
//!
//! | folder | feature | role |
//! |---|---|---|
//! | [`file`] | `file` | JSONL delta logs, read in order (the replay source) |
//! | [`sqlite`] | `sqlite` | the embedded view store (the default sink) |
//! | `kafka` | `kafka` | Kafka topics (any Kafka-compatible broker): [`Source`] and [`RecordPublisher`] |
//! | `nats` | `nats` | NATS JetStream streams: [`Source`] and [`RecordPublisher`] |
//!
//! Every source implements [`Source`]: a log file is a bounded, one-partition source
//! whose positions are line numbers; the bus sources are unbounded, and their positions
//! Studio stores with its views and resumes from: the view database is authoritative, the bus's own acknowledgements (consumer-group offsets, the
//! JetStream ack floor) follow it and serve lag monitoring and tools. Output streams
//! (transform requests, events, applied deltas, dead letters) go through a
//! [`RecordPublisher`].
//! | [`postgres`] | `postgres` | the Postgres view store and delta store |
//! | [`content`] | (`s3` for S3) | how documents are stored: JSON, LZ4, or a large store |
//! | `cache` | `redis` | the query API's Redis cache, invalidated by the view writers |
//!
//! [`open`] holds one factory per store and bus ([`open_view_store`], [`open_reader`],
//! [`open_source`], [`open_publisher`]): the binary calls them instead of building the
//! stores and clients itself.
//!
//! [`retry`] retries a write while a service is unavailable; [`query`] holds the
//! named questions of `studio query` that every view store answers ([`ViewReader`]).
//!
//! Sources hand out raw bytes with their [`SourcePos`]; parsing belongs to the dataflow
//! so that a malformed record becomes a dead letter, never a source error. A source
//! error is about the source itself (a file vanished, a disk failed).
#![forbid(missing_docs)]

use std::time::Duration;

use studio_model::{Checkpoint, SourcePos, ViewBatch};

#[cfg(feature = "redis")]
pub mod cache;
pub mod content;
#[cfg(feature = "file")]
pub mod file;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod load;
pub mod merged;
#[cfg(feature = "nats")]
pub mod nats;
pub mod open;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod query;
pub mod readable;
pub mod retry;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod stored;

pub use open::{
    Db, OpenError, open_group_source, open_publisher, open_reader, open_service_source,
    open_source, open_view_store,
};
pub use query::{Param, Rows, ViewReader};
pub use readable::Readable;

/// The view tables Studio owns, in every view store (a replay rebuilds exactly these).
pub const VIEW_TABLES: &[&str] = &studio_model::tables::TABLE_NAMES;

/// The Postgres table of large documents when no other large store is configured
/// (not a view: SQLite keeps large documents in a directory beside its file).
pub const LARGE_DOCS_TABLE: &str = "large_docs";

/// The tables among `tables` that Studio did not create: a rebuild refuses to touch a
/// database that holds any. Studio's own are [`VIEW_TABLES`], [`LARGE_DOCS_TABLE`], the monthly partitions of
/// `deltas` (`deltas_yYYYYmMM`), its migration ledger (`_studio_*`) and SQLite's
/// internal tables.
pub fn foreign_tables<'a>(tables: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    tables
        .into_iter()
        .filter(|t| {
            !VIEW_TABLES.contains(t)
                && *t != LARGE_DOCS_TABLE
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

/// One record as read, borrowed from the source's buffer (the file source's
/// [`next_record`](file::FileSource::next_record), for tools that read a log in place).
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// Where it was read.
    pub pos: SourcePos,
    /// Its bytes, exactly.
    pub bytes: &'a [u8],
}

/// A record as a [`Source`] hands it out, owning its bytes (batches outlive the call).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedRecord {
    /// Where it was read: the partition (Kafka; 0 for a file or NATS), and its offset
    /// (the line number, the Kafka offset, or the JetStream stream sequence).
    pub pos: SourcePos,
    /// Its bytes, exactly as read (any bytes: parsing is the dataflow's job; a record
    /// without a value is empty).
    pub bytes: Vec<u8>,
}

/// Where the pipeline reads records: a log file (bounded) or a bus (unbounded), whose
/// positions Studio stores with its views and resumes from.
///
/// Within a partition (`SourcePos::part`) records come in log order with increasing
/// offsets, each exactly once per opening: a source never hands out a position twice,
/// and after being opened with `resume_from` it starts each partition right after the
/// stored position. Offsets may skip numbers (a bus may have gaps), never go back.
/// Implementations are blocking; the dataflow's workers are plain threads.
pub trait Source: Send {
    /// Up to `max` records, waiting at most `timeout` for the first one; an empty batch
    /// means nothing arrived in time, or that a bounded source is [at its end](Source::at_end).
    /// Transient bus trouble (a broker restarting) is retried inside and shows as empty
    /// batches, not as an error.
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<OwnedRecord>, SourceError>;

    /// True once a bounded source has handed out its last record (never, for a bus).
    fn at_end(&self) -> bool {
        false
    }

    /// Acknowledges to the bus everything up to and including these positions (one per
    /// partition; called only after the views they produced are committed). Positions
    /// at or below an earlier commit are ignored.
    fn commit(&mut self, upto: &[SourcePos]) -> Result<(), SourceError>;

    /// Records not yet read (consumer lag), per partition, as far as the source can tell.
    fn lag(&mut self) -> Result<Vec<(u32, u64)>, SourceError>;
}

/// How a bus source shares its topic or subject.
#[derive(Clone, Copy, Debug)]
pub enum Membership<'a> {
    /// Alone, resuming right after these positions (Studio's view database is
    /// authoritative): the service. Kafka: every partition assigned; NATS: the durable
    /// consumer recreated to start there, ack policy *all*.
    Assigned(&'a [SourcePos]),
    /// One of a group named so, from the group's own progress: the provider workers.
    /// Kafka: a consumer group, whose members share the partitions (a member that dies
    /// leaves its partitions to the others after `kafka.session_timeout_ms`); NATS: a
    /// durable pull consumer the members pull from, with explicit acks (a record not
    /// acknowledged within `nats.ack_wait_s` goes to another member). Records may come
    /// again (at least once); commits of records another member took over are ignored.
    Group(&'a str),
}

/// The streams Studio publishes to a bus (declared in `studio-config`, whose
/// `run.publish` lists them).
pub use studio_config::OutputStream;

/// Publishes records to a bus's output streams, keyed (records of one key keep their
/// order: producers key by `blob_id`, S4.3). Bytes are sent exactly as given.
pub trait RecordPublisher: Send {
    /// Queues one record; may block while the client's queue is full. A delivery
    /// failure may show here or at the next [`RecordPublisher::flush`].
    fn publish(&mut self, stream: OutputStream, key: &[u8], bytes: &[u8]) -> Result<(), SinkError>;

    /// Waits until every record queued so far is delivered (acknowledged by the bus), or
    /// fails naming what was not.
    fn flush(&mut self, timeout: Duration) -> Result<(), SinkError>;
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
    /// The bus refused or failed, in a way that retrying in place does not fix (a topic
    /// or stream that does not exist, a bad configuration, a broker unreachable at open).
    #[error("{context}: {source}")]
    Bus {
        /// What was being done.
        context: String,
        /// The client's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl SourceError {
    /// A bus error with its context.
    pub fn bus(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        SourceError::Bus {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// How a record read back by [`ViewSink::recover`] re-enters the dataflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveredAs {
    /// Replayed: applied, rejected or left waiting again, as when it was first read.
    Replay,
    /// Only its delta id counts as seen (S4.2): a delta dead-lettered as an expired gap
    /// (S4.4) stays decided.
    KnownId,
}

/// A store for the maintained views.
pub trait ViewSink {
    /// Writes one batch of view changes atomically: all of it or none of it.
    fn write(&mut self, batch: &ViewBatch) -> Result<(), SinkError>;

    /// Called once after the last batch of a bounded run.
    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Reads back what a restart needs (`studio run`): hands `each`, in no particular
    /// order (each with its log position, by which the dataflow orders them), every
    /// record whose replay rebuilds the state: the accepted deltas, those waiting
    /// for a gap, and the rejected deltas (well-formed: replayed in the same order they
    /// are rejected again, unwritten, and their ids stay known as duplicates, S4.2).
    /// Deltas that expired in a gap (S4.4) come as [`RecoveredAs::KnownId`]: their ids
    /// stay duplicates, but they must not wait for their gap again. Returns `source`'s
    /// last committed checkpoint. Stores that are not durable refuse.
    fn recover(
        &mut self,
        source: &str,
        each: &mut dyn FnMut(SourcePos, &str, RecoveredAs),
    ) -> Result<Option<Checkpoint>, SinkError> {
        let _ = (source, each);
        Err(SinkError::Refused(
            "this view store keeps no delta store to recover from".into(),
        ))
    }
}

/// A recovered row's kind from its "expired in a gap" flag.
fn recovered_as(expired: bool) -> RecoveredAs {
    if expired {
        RecoveredAs::KnownId
    } else {
        RecoveredAs::Replay
    }
}

/// Why [`ViewSink::recover`] refuses a delta store whose deltas lack their records.
pub const NO_RECORDS: &str = "the delta store holds deltas without their full records \
    (written by `studio replay` without --store-records, or before records were kept): \
    replay the log again with --store-records, or start `studio run` on an empty database";

/// A checkpoint's positions as stored: `[[part, offset], ...]`.
pub fn positions_json(positions: &[SourcePos]) -> String {
    let pairs: Vec<(u32, u64)> = positions.iter().map(|p| (p.part, p.offset)).collect();
    serde_json::to_string(&pairs).expect("positions serialise")
}

/// A stored checkpoint of `source`: its row (`positions` text, `next_seq`), if any.
pub fn checkpoint_of(
    source: &str,
    row: Option<(String, i64)>,
) -> Result<Option<Checkpoint>, SinkError> {
    row.map(|(positions, next_seq)| {
        Ok(Checkpoint {
            source: source.to_owned(),
            positions: positions_from_json(&positions)?,
            next_seq: next_seq as u64,
        })
    })
    .transpose()
}

/// Parses [`positions_json`]'s text.
pub fn positions_from_json(text: &str) -> Result<Vec<SourcePos>, SinkError> {
    let pairs: Vec<(u32, u64)> = serde_json::from_str(text).map_err(|e| SinkError::Database {
        context: format!("the stored checkpoint positions {text:?} are not valid"),
        source: Box::new(e),
    })?;
    Ok(pairs
        .into_iter()
        .map(|(part, offset)| SourcePos { part, offset })
        .collect())
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
    /// A bus did not take or deliver records.
    #[error("{context}: {source}")]
    Bus {
        /// What was being done.
        context: String,
        /// The client's error.
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

impl SinkError {
    /// A bus error with its context.
    pub fn bus(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        SinkError::Bus {
            context: context.into(),
            source: source.into(),
        }
    }
}
