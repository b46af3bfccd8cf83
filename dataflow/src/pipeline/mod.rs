//! The one pipeline every command runs: source → dataflow → writer.
//!
//! ```text
//!  reader thread              worker 0 (lead)                       writer thread
//!  Source::poll ──batch──>    numbers records in the order read,    (durable: recover ──> lead)
//!       ^                     feeds them at the clock's next        per completed timestamp:
//!       |                     timestamp; provider rounds; the       merge queued batches,
//!       |                     other workers follow its clock        publish outputs, write
//!       |                     (parsing is exchanged across them)    views + checkpoint (one
//!       └──── Source::commit(positions) <────────────────────────── transaction)
//! ```
//!
//! `studio replay` ([`crate::replay`]) and `studio run` ([`crate::run`]) are two
//! [`PipelineOptions`]: a log file, [`Clock::LogBatches`], no recovery, and the
//! inputs closed at the end; or a bus, [`Clock::WallClock`], recovery from the delta
//! store with positions committed with the views, and a stop that leaves waiting
//! deltas waiting.
//!
//! - [`clock`]: what timestamps mean; how the other workers follow the lead.
//! - [`reader`], [`lead`], [`writer`]: the three parts above; [`outputs`]: the
//!   published streams; [`control`]: phase, stop switch, progress; [`report`]: the
//!   end report and errors.

mod clock;
mod control;
mod lead;
mod outputs;
mod reader;
mod reissue;
mod report;
mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use studio_connectors::{OutputStream, RecordPublisher, Source, SourceError, ViewSink};
use studio_model::{Provider, SourcePos};

pub use clock::{Clock, ROUND_SPAN};
pub use control::{Control, Phase, Progress};
pub(crate) use outputs::{key, publish_records};
pub use report::{Latency, PipelineError, Report, WorkerError};

use crate::providers::ProviderSetup;
use lead::{LeadTally, Shared};
use reader::ReaderChannels;
use writer::WriterChannels;

/// Opens the source, resuming right after the given positions (none: from the start).
pub type OpenSource = Box<dyn FnOnce(&[SourcePos]) -> Result<Box<dyn Source>, SourceError> + Send>;

/// How the pipeline runs.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// Timely worker threads.
    pub workers: usize,
    /// What timestamps mean.
    pub clock: Clock,
    /// Records per batch (one timestamp) at most.
    pub max_batch_records: usize,
    /// How long a poll waits for its first record.
    pub poll_timeout: Duration,
    /// Batches read ahead of the completed ones before reading pauses.
    pub max_batches_in_flight: usize,
    /// Completed batches queued for the writer before the dataflow pauses.
    pub writer_queue_batches: usize,
    /// Deltas waiting for a gap this long become dead letters (S4.4); `None` waits
    /// until a bounded source ends.
    pub gap_timeout: Option<Duration>,
    /// Keep accepted deltas' full records for the delta store.
    pub store_records: bool,
    /// Providers registered at start (S5.3): their pending requests are maintained.
    pub providers: Vec<Provider>,
    /// Run the built-in provider workers here and feed their answers back.
    pub provider_workers: Option<ProviderSetup>,
    /// Record events (S5.8).
    pub events: bool,
    /// A durable source's name (`kafka:TOPIC`): the views are recovered from the
    /// delta store at start, and the source's positions commit with them.
    pub durable: Option<String>,
    /// The output streams to publish (with a publisher).
    pub publish: Vec<OutputStream>,
    /// Stop (gracefully) after this long without a record.
    pub exit_when_idle: Option<Duration>,
    /// Publish again a request whose result has not come this long after its provider
    /// could have answered (S5.7, with a publisher); `None`: never.
    pub worker_grace: Option<Duration>,
}

/// What the pipeline reads from and writes to.
pub struct Endpoints {
    /// The source, opened once recovery says where to resume.
    pub open_source: OpenSource,
    /// The view store.
    pub sink: Box<dyn ViewSink + Send>,
    /// The output streams' bus, if any.
    pub publisher: Option<Box<dyn RecordPublisher>>,
}

/// Runs the pipeline until a bounded source ends, a stop is asked, or a part fails.
pub fn run_pipeline(
    options: PipelineOptions,
    endpoints: Endpoints,
    control: Arc<Control>,
) -> Result<Report, PipelineError> {
    let started = Instant::now();
    let (recovered_tx, recovered_rx) = crossbeam_channel::bounded(4);
    let (completed_tx, completed_rx) = crossbeam_channel::bounded(options.writer_queue_batches);
    let (acknowledge_tx, acknowledge_rx) = crossbeam_channel::unbounded();
    let (resume_tx, resume_rx) = crossbeam_channel::bounded(1);
    let (polled_tx, polled_rx) = crossbeam_channel::bounded(options.max_batches_in_flight);

    let Endpoints {
        open_source,
        sink,
        publisher,
    } = endpoints;
    let writer = {
        let options = options.clone();
        let channels = WriterChannels {
            recovered: recovered_tx,
            completed: completed_rx,
            acknowledge: acknowledge_tx,
        };
        spawn_part("studio-view-writer", &control, move |control| {
            writer::write_views(sink, publisher, &options, channels, control)
        })
    };
    let reader = {
        let options = options.clone();
        let channels = ReaderChannels {
            resume_from: resume_rx,
            polled: polled_tx,
            acknowledge: acknowledge_rx,
        };
        spawn_part("studio-source", &control, move |control| {
            reader::read_source(open_source, &options, channels, control)
        })
    };

    let workers = options.workers;
    let duplicates = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(LeadTally::default()));
    // The workers' closure owns the channels' dataflow ends: they close when it ends.
    let shared = Shared {
        options,
        control: Arc::clone(&control),
        clock: Default::default(),
        duplicates: Arc::clone(&duplicates),
        polled: polled_rx,
        recovered: recovered_rx,
        resume_reader: resume_tx,
        completed: completed_tx,
        tally: Arc::clone(&tally),
    };
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        lead::run_worker(worker, &shared)
    });
    let failure = match guards {
        Ok(guards) => join_workers(guards),
        Err(e) => Some(WorkerError::Start(e)),
    };
    if failure.is_some() {
        control.fail(); // the reader and the writer stop too
    }
    let written = writer
        .join()
        .map_err(|_| WorkerError::Panicked("the view writer panicked".into()))??;
    reader
        .join()
        .map_err(|_| WorkerError::Panicked("the source reader panicked".into()))??;
    if let Some(failure) = failure {
        return Err(failure.into());
    }
    control.set_phase(Phase::Stopped);
    let lead = std::mem::take(&mut *tally.lock().expect("tally lock"));
    let duplicates = duplicates.load(Ordering::Relaxed);
    let wall = started.elapsed().as_secs_f64();
    Ok(report(lead, written, duplicates, workers, wall))
}

/// The end report, from what the lead and the writer counted.
fn report(
    lead: LeadTally,
    written: writer::WriterTally,
    duplicates: u64,
    workers: usize,
    wall: f64,
) -> Report {
    Report {
        recovered: lead.recovered,
        records_read: lead.records_read,
        accepted: written.accepted,
        duplicates,
        dead_letters: written.dead_letters.values().sum(),
        dead_letters_by_reason: written.dead_letters,
        edges_accepted: written.edges_accepted,
        edges_rejected: written.edges_rejected,
        workers,
        batches: written.batches,
        transactions: written.transactions,
        published: written.published,
        positions: written.positions,
        sink_seconds: written.busy.as_secs_f64(),
        wall_seconds: wall,
        records_per_second: lead.records_read as f64 / wall.max(1e-9),
        batch_latency_ms: Latency::from_micros(&written.latency_us),
        providers: lead.providers,
    }
}

/// Spawns a thread beside the workers, handing it the control; its failure stops the
/// pipeline.
fn spawn_part<T: Send + 'static>(
    name: &str,
    control: &Arc<Control>,
    part: impl FnOnce(&Control) -> Result<T, PipelineError> + Send + 'static,
) -> std::thread::JoinHandle<Result<T, PipelineError>> {
    let control = Arc::clone(control);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let result = part(&control);
            if result.is_err() {
                control.fail();
            }
            result
        })
        .unwrap_or_else(|e| panic!("cannot spawn the thread {name}: {e}"))
}

/// Joins the timely workers; the first failure (a worker's error or panic), if any.
fn join_workers(
    guards: timely::communication::initialize::WorkerGuards<Result<(), WorkerError>>,
) -> Option<WorkerError> {
    guards.join().into_iter().find_map(|joined| match joined {
        Ok(returned) => returned.err(),
        Err(panic) => Some(WorkerError::Panicked(panic)),
    })
}
