//! `studio run`: the [pipeline](crate::pipeline) over a bus, as a long-running
//! service: views kept durably, positions committed with them, recovery on start.
//!
//! **Time.** Timestamps are wall-clock milliseconds ([`Clock::WallClock`]): one per
//! batch read, plus an idle tick so that the gap timeout (S4.4) fires. The delta
//! store is replayed at one timestamp before the first live one, and that
//! timestamp's views are not written (the database already holds them).
//!
//! **Log order.** Records are numbered in the order the service read them (continued
//! across restarts from the checkpoint), and that number is their position in the
//! dataflow: S4.3's "first in log order" is the order the service read them, which
//! keeps each partition's order; recovery replays the stored deltas in the same order,
//! so every decision comes out the same.
//!
//! **Nothing lost, nothing doubled.** A batch's views, its accepted deltas (with the
//! full record), the deltas still waiting for a gap and the source positions it
//! consumed are one transaction (a `Checkpoint`); only then are the positions
//! acknowledged to the bus. A crash before the commit re-reads the batch from the
//! stored positions; a crash after it finds the batch in the delta store. The output
//! streams (requests, events, applied deltas, dead letters) are published and
//! flushed *before* the commit: they are at least once, with stable ids for
//! consumers to deduplicate. A stop leaves the deltas waiting for a gap waiting.
//!
//! **Provider results.** With providers registered, the source is the deltas and,
//! beside them, the workers' processing results (`MergedSource`): both are read by
//! the one reader, numbered in the order read, and their positions are one checkpoint,
//! so a result enters the dataflow exactly like a delta (deterministic, replayed from
//! `result_log` on restart). Requests whose worker went silent are published again,
//! then failed (`pipeline::reissue`).

use std::sync::Arc;
use std::time::Duration;

use studio_config::RunConfig;
use studio_connectors::OutputStream;
use studio_model::Provider;

use crate::pipeline::{
    Clock, Control, Endpoints, PipelineError, PipelineOptions, Report, run_pipeline,
};

/// What a run did, from its start to its stop.
pub type RunReport = Report;

/// A run that failed.
pub type RunError = PipelineError;

/// What the service is given besides its `[run]` settings.
#[derive(Clone, Debug)]
pub struct Service {
    /// The source's name in the checkpoints (`kafka:TOPIC`, `nats:STREAM`).
    pub source: String,
    /// Providers registered at start (S5.3): their pending requests are maintained.
    pub providers: Vec<Provider>,
    /// The output streams to publish (with a publisher).
    pub publish: Vec<OutputStream>,
    /// Stop (gracefully) after this long without a record.
    pub exit_when_idle: Option<Duration>,
}

/// Runs the service until `control.stop()` (or `exit_when_idle`), or until a part
/// fails.
pub fn run(
    config: &RunConfig,
    service: Service,
    endpoints: Endpoints,
    control: Arc<Control>,
) -> Result<Report, PipelineError> {
    let pipeline = PipelineOptions {
        workers: config.workers,
        clock: Clock::WallClock,
        max_batch_records: config.max_batch_records,
        poll_timeout: Duration::from_millis(config.poll_timeout_ms),
        max_batches_in_flight: config.max_batches_in_flight,
        writer_queue_batches: config.writer_queue_batches,
        gap_timeout: Some(Duration::from_millis(config.gap_timeout_ms)),
        store_records: true, // recovery replays them
        providers: service.providers,
        provider_workers: None,
        events: config.events,
        durable: Some(service.source),
        publish: service.publish,
        exit_when_idle: service.exit_when_idle,
        worker_grace: Some(Duration::from_millis(config.worker_grace_ms)),
    };
    run_pipeline(pipeline, endpoints, control)
}
