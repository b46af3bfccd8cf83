//! What a pipeline reports when it ends, and how it fails.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;
use studio_connectors::{SinkError, SourceError};
use studio_model::SourcePos;

use crate::providers::ProviderReport;

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

impl Latency {
    /// The percentiles of a histogram of microseconds.
    pub fn from_micros(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50: ms(histogram.value_at_quantile(0.5)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        }
    }
}

/// What a pipeline did, from its start to its end (`studio replay --json`, `studio run
/// --json`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Deltas replayed from the delta store at start (a durable source only).
    pub recovered: u64,
    /// Records read: from the source, plus provider outputs fed back.
    pub records_read: u64,
    /// Deltas accepted (rows of `deltas_applied` committed by this run).
    pub accepted: u64,
    /// Repeated delta ids ignored (S4.2).
    pub duplicates: u64,
    /// Dead letters in all.
    pub dead_letters: u64,
    /// Dead letters by reason kind (`S4.3 version conflict`, ...).
    pub dead_letters_by_reason: BTreeMap<String, u64>,
    /// Edges this run added to `blob_edges` (accepted, both ends created), net.
    pub edges_accepted: u64,
    /// Edges this run refused (S5.1 cycle, S5.2 reach limit).
    pub edges_rejected: u64,
    /// Timely workers.
    pub workers: usize,
    /// Timestamps (batches) committed.
    pub batches: u64,
    /// View transactions (a transaction may hold several batches).
    pub transactions: u64,
    /// Records published to the output streams.
    pub published: u64,
    /// The source positions committed last (a durable source only).
    pub positions: Vec<SourcePos>,
    /// Seconds the writer spent writing (on its own thread, beside the dataflow).
    pub sink_seconds: f64,
    /// Wall time, seconds.
    pub wall_seconds: f64,
    /// Records read per second of wall time.
    pub records_per_second: f64,
    /// Per batch: from the moment its first record was read to its commit.
    pub batch_latency_ms: Latency,
    /// With providers run here: what the provider loop did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub providers: Option<ProviderReport>,
}

impl Report {
    /// True when accepted + duplicates + dead letters = records read (provider outputs
    /// fed back count as records read; deltas recovered at start do not).
    pub fn counts_add_up(&self) -> bool {
        self.accepted + self.duplicates + self.dead_letters == self.records_read
    }
}

/// Why a dataflow worker (or a thread beside the workers) failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The source could not be read.
    #[error("{0}")]
    Source(SourceError), // not a `#[source]` (nor are the others): the message holds it
    /// The provider runtime did not start.
    #[error("cannot start the provider runtime: {0}")]
    ProviderRuntime(std::io::Error),
    /// The writer failed while the delta store was replayed (it reports why).
    #[error("recovery did not complete")]
    RecoveryIncomplete,
    /// Timely could not start the workers (its own message).
    #[error("{0}")]
    Start(String),
    /// A thread panicked: timely's report of a worker's panic, or which thread.
    #[error("{0}")]
    Panicked(String),
}

/// A pipeline that could not complete.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The source failed (a file could not be read, the bus refused).
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The view store (or a publisher) failed.
    #[error("writing the views failed: {0}")]
    Sink(#[from] SinkError),
    /// A worker failed.
    #[error("dataflow worker failed: {0}")]
    Worker(WorkerError), // not a `#[source]`: the message holds it
}

impl From<WorkerError> for PipelineError {
    fn from(error: WorkerError) -> Self {
        PipelineError::Worker(error)
    }
}
