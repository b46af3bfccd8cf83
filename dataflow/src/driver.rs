//! What the two drivers, the bounded [`replay`](crate::replay) and the service
//! ([`run`](crate::run)), share: worker 0's clock that the other workers follow, the
//! tally of committed batches, and the latency percentiles of their reports.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use studio_connectors::SourceError;
use studio_model::ViewBatch;

use crate::render::{Inputs, Time};

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

/// Why a dataflow worker (or a thread beside the workers) failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A worker could not read its share of the log.
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

impl From<SourceError> for WorkerError {
    fn from(error: SourceError) -> Self {
        WorkerError::Source(error)
    }
}

/// Joins the timely workers; the first failure (a worker's error or panic), if any.
pub(crate) fn join_workers(
    guards: timely::communication::initialize::WorkerGuards<Result<(), WorkerError>>,
) -> Option<WorkerError> {
    guards.join().into_iter().find_map(|joined| match joined {
        Ok(returned) => returned.err(),
        Err(panic) => Some(WorkerError::Panicked(panic)),
    })
}

/// The timestamps worker 0 chooses, published for the other workers, which feed
/// nothing themselves and only advance their inputs to follow.
#[derive(Debug, Default)]
pub(crate) struct LeadClock {
    time: AtomicU64,
    done: AtomicBool,
}

impl LeadClock {
    /// Worker 0 moved its inputs to `time`.
    pub(crate) fn publish(&self, time: Time) {
        self.time.store(time, Ordering::Release);
    }

    /// Worker 0 will move no further.
    pub(crate) fn finish(&self) {
        self.done.store(true, Ordering::Release);
    }

    /// Another worker: advances `inputs` after worker 0, from `from`, stepping the
    /// dataflow meanwhile, until worker 0 is done; returns the last timestamp.
    pub(crate) fn follow(
        &self,
        worker: &mut timely::worker::Worker,
        inputs: &mut Inputs,
        from: Time,
    ) -> Time {
        let mut mine = from;
        loop {
            let done = self.done.load(Ordering::Acquire);
            let t = self.time.load(Ordering::Acquire);
            if t > mine {
                inputs.advance_to(t);
                mine = t;
            }
            if done {
                return mine;
            }
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
    }
}

/// What a view writer counted over the transactions it committed.
#[derive(Debug)]
pub(crate) struct CommitTally {
    /// Deltas accepted.
    pub accepted: u64,
    /// Dead letters by reason kind.
    pub dead_letters: BTreeMap<String, u64>,
    /// Batches (timestamps) committed.
    pub batches: u64,
    /// Transactions (a transaction may hold several batches).
    pub transactions: u64,
    /// Per batch, microseconds from its first record read to its commit.
    pub latency_us: Histogram<u64>,
}

impl Default for CommitTally {
    fn default() -> Self {
        CommitTally {
            accepted: 0,
            dead_letters: BTreeMap::new(),
            batches: 0,
            transactions: 0,
            // Up to an hour in microseconds, 3 significant digits; longer saturates.
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("valid histogram bounds"),
        }
    }
}

impl CommitTally {
    /// Counts one committed transaction: `merged`, made of batches first read at
    /// `read_at`, committed at `now`.
    pub(crate) fn count(&mut self, merged: &ViewBatch, read_at: &[Instant], now: Instant) {
        for at in read_at {
            let micros = now.saturating_duration_since(*at).as_micros().max(1);
            self.latency_us.saturating_record(micros as u64);
        }
        self.accepted += merged.applied.len() as u64;
        for letter in &merged.dead_letters {
            *self
                .dead_letters
                .entry(letter.reason.kind().to_owned())
                .or_default() += 1;
        }
        self.batches += read_at.len() as u64;
        self.transactions += 1;
    }
}
