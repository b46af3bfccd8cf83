//! A bounded replay: read delta logs as fast as the machine allows, maintain the views
//! in a [`ViewSink`], and report what happened (`studio replay`).
//!
//! Each worker reads the files and takes its share of the records (chunks of
//! [`SHARE_CHUNK`] records, round robin), parses them and feeds its inputs at timestamp
//! `offset / batch_records`. After a batch it waits while more than
//! `max_batches_in_flight` batches are incomplete, so the source never runs away from
//! the dataflow. Completed batches go through a bounded channel to a writer thread that
//! owns the sink: when the sink is slower than the dataflow, the writer merges the
//! batches waiting for it into one transaction, and when the channel is full the
//! dataflow waits (back-pressure). At the end the inputs advance to one last timestamp
//! before they close, where the unfilled gaps are dead-lettered (S4.4).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use studio_config::ReplayConfig;
use studio_connectors::file::FileSource;
use studio_connectors::{RecordSource, SinkError, SourceError, ViewSink};
use studio_model::{ViewBatch, parse_record};
use timely::dataflow::operators::Probe;
use timely::dataflow::operators::probe::Handle as ProbeHandle;

pub use crate::driver::Latency;
use crate::driver::{CommitTally, LeadClock, WorkerError, join_workers};
use crate::providers::{Dispatcher, Feed, ProviderReport, ProviderSetup};
use crate::render::{Inputs, RenderOptions, Time, render};
use crate::sink::sink_views;

/// Timestamps of log batch `b` start at `b * ROUND_SPAN`; the timestamps between two
/// batches are the provider rounds that may run after a batch.
pub const ROUND_SPAN: Time = 1 << 16;

/// Records are dealt to workers in chunks of this many, round robin.
pub const SHARE_CHUNK: u64 = 16;

/// Live counters, readable while the replay runs (for progress bars and metrics).
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes of the log read by worker 0 (every worker reads all of it).
    pub bytes_read: AtomicU64,
    /// Deltas accepted and committed.
    pub accepted: AtomicU64,
}

/// What a replay did.
#[derive(Clone, Debug, Serialize)]
pub struct ReplayReport {
    /// Records (lines) read.
    pub records_read: u64,
    /// Deltas accepted (rows of `deltas_applied`).
    pub accepted: u64,
    /// Repeated delta ids ignored (S4.2).
    pub duplicates: u64,
    /// Dead letters in all.
    pub dead_letters: u64,
    /// Dead letters by reason kind (`S4.3 version conflict`, ...).
    pub dead_letters_by_reason: BTreeMap<String, u64>,
    /// Edges in `blob_edges` (accepted, both ends created) at the end.
    pub edges_accepted: u64,
    /// Edges refused because they would close a cycle (S5.1).
    pub edges_rejected: u64,
    /// Timely workers.
    pub workers: usize,
    /// Timestamps (batches) committed.
    pub batches: u64,
    /// Sink transactions (a transaction may hold several batches).
    pub transactions: u64,
    /// Seconds the sink spent writing (on its own thread, beside the dataflow).
    pub sink_seconds: f64,
    /// Wall time, seconds.
    pub wall_seconds: f64,
    /// Records read per second of wall time.
    pub records_per_second: f64,
    /// Per batch: from the moment its first record was read to its commit.
    pub batch_latency_ms: Latency,
    /// With `--providers`: what the provider loop did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub providers: Option<ProviderReport>,
}

impl ReplayReport {
    /// True when accepted + duplicates + dead letters = records read (provider outputs
    /// fed back count as records read).
    pub fn counts_add_up(&self) -> bool {
        self.accepted + self.duplicates + self.dead_letters == self.records_read
    }
}

/// A replay that could not complete.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The log could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The views could not be written.
    #[error("writing the views failed: {0}")]
    Sink(#[from] SinkError),
    /// A worker failed.
    #[error("dataflow worker failed: {0}")]
    Worker(WorkerError), // not a `#[source]`: the message holds it
}

impl From<WorkerError> for ReplayError {
    fn from(error: WorkerError) -> Self {
        ReplayError::Worker(error)
    }
}

/// What the writer thread counted.
#[derive(Default)]
struct WriterTally {
    commits: CommitTally,
    edges_accepted: u64,
    edges_rejected: u64,
    busy: Duration,
}

struct Committable {
    batch: ViewBatch,
    fed_at: Instant,
}

/// What a replay does besides the delta views.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// Run providers: compute pending requests, run the built-in workers once the log
    /// is applied, and feed their outputs back until quiescence.
    pub providers: Option<ProviderSetup>,
    /// Record events (S5.8) in the view store.
    pub events: bool,
}

/// Replays `files` into `sink`.
pub fn replay(
    files: &[PathBuf],
    config: &ReplayConfig,
    sink: Box<dyn ViewSink + Send>,
    progress: Arc<Progress>,
    options: &ReplayOptions,
) -> Result<ReplayReport, ReplayError> {
    FileSource::open(files)?; // fail before starting threads when a file is missing
    let started = Instant::now();
    let (to_writer, from_dataflow) =
        crossbeam_channel::bounded::<Committable>(config.writer_queue_batches);
    let writer = {
        let progress = Arc::clone(&progress);
        std::thread::Builder::new()
            .name("studio-view-writer".into())
            .spawn(move || write_views(sink, from_dataflow, &progress))
            .expect("spawn the view writer")
    };

    let records_read = Arc::new(AtomicU64::new(0));
    let duplicates = Arc::new(AtomicU64::new(0));
    let aborted = Arc::new(AtomicBool::new(false));
    let clock = Arc::new(LeadClock::default());
    let provider_report: Arc<Mutex<Option<ProviderReport>>> = Arc::default();
    let workers = config.workers;
    let guards = {
        let (files, config, options) = (files.to_vec(), config.clone(), options.clone());
        let (clock, provider_report) = (Arc::clone(&clock), Arc::clone(&provider_report));
        let (records_read, duplicates, aborted) = (
            Arc::clone(&records_read),
            Arc::clone(&duplicates),
            Arc::clone(&aborted),
        );
        timely::execute(timely::Config::process(workers), move |worker| {
            let index = worker.index();
            let peers = worker.peers() as u64;
            let fed_at: Rc<RefCell<BTreeMap<Time, Instant>>> = Rc::default();
            let probe = ProbeHandle::new();
            // Worker 0 runs the providers beside the view sink.
            let dispatcher = match (&options.providers, index) {
                (Some(setup), 0) => Some(Rc::new(RefCell::new(
                    Dispatcher::start(setup).map_err(WorkerError::ProviderRuntime)?,
                ))),
                _ => None,
            };
            let render_options = RenderOptions {
                providers: options.providers.is_some(),
                gap_timeout: None,
                store_records: config.store_records,
            };
            let mut inputs = worker.dataflow::<Time, _, _>(|scope| {
                let (inputs, views) = render(scope, Arc::clone(&duplicates), render_options);
                let (fed_at, to_writer, aborted) =
                    (Rc::clone(&fed_at), to_writer.clone(), Arc::clone(&aborted));
                let dispatcher = dispatcher.clone();
                let events = options.events;
                let committed = sink_views(views, move |time, mut batch| {
                    if let Some(dispatcher) = &dispatcher {
                        dispatcher.borrow_mut().observe(&batch);
                    }
                    if events {
                        batch.record_events();
                    }
                    let mut fed = fed_at.borrow_mut();
                    let fed_at = fed
                        .range(..=time)
                        .next_back()
                        .map_or_else(Instant::now, |(_, at)| *at);
                    *fed = fed.split_off(&(time + 1));
                    if to_writer.send(Committable { batch, fed_at }).is_err() {
                        aborted.store(true, Ordering::Relaxed);
                    }
                });
                committed.probe_with(&probe);
                inputs
            });

            if index == 0
                && let Some(setup) = &options.providers
            {
                for provider in &setup.providers {
                    inputs
                        .providers
                        .send((provider.id.clone(), Some(provider.clone())));
                }
            }
            let mut source = FileSource::open(&files)?;
            let lead = dispatcher.as_ref().map(|dispatcher| LeadPhase {
                clock: &clock,
                probe: &probe,
                dispatcher,
                aborted: &aborted,
                records_read: &records_read,
            });
            let each_batch = options.providers.as_ref().is_some_and(|p| p.each_batch);
            let mut current: Time = 0;
            let mut handled = 0u64;
            fed_at.borrow_mut().insert(0, Instant::now());
            loop {
                if index == 0 {
                    progress
                        .bytes_read
                        .store(source.bytes_read(), Ordering::Relaxed);
                }
                let Some(record) = source.next_record()? else {
                    break;
                };
                let time = (record.pos.offset / config.batch_records) * ROUND_SPAN;
                if time != current {
                    if let Some(lead) = lead.as_ref().filter(|_| each_batch) {
                        lead.run(worker, &mut inputs, current, Some(time));
                    }
                    current = time;
                    inputs.advance_to(time);
                    if index == 0 {
                        fed_at.borrow_mut().insert(time, Instant::now());
                    }
                    let oldest_allowed =
                        time.saturating_sub(config.max_batches_in_flight * ROUND_SPAN);
                    worker.step_while(|| probe.less_than(&oldest_allowed));
                    if aborted.load(Ordering::Relaxed) {
                        break;
                    }
                }
                if (record.pos.offset / SHARE_CHUNK) % peers != index as u64 {
                    continue;
                }
                handled += 1;
                match parse_record(record.bytes, record.pos) {
                    Ok(delta) => inputs.deltas.send(delta),
                    Err(letter) => inputs.malformed.send((*letter, time, 1)),
                }
            }
            records_read.fetch_add(handled, Ordering::Relaxed);
            let end = match (&options.providers, &lead) {
                (None, _) => current + 1,
                (Some(_), Some(lead)) => {
                    let end = lead.run(worker, &mut inputs, current, None);
                    lead.clock.publish(end);
                    lead.clock.finish();
                    *provider_report.lock().expect("report lock") =
                        Some(lead.dispatcher.borrow_mut().report());
                    end
                }
                (Some(_), None) => clock.follow(worker, &mut inputs, current),
            };
            // One last timestamp, the same on every worker, for the S4.4 gap letters.
            inputs.advance_to(end);
            worker.step_while(|| probe.less_than(&end));
            Ok::<(), WorkerError>(())
        })
        .map_err(|e| ReplayError::Worker(WorkerError::Start(e)))?
    };
    let failure = join_workers(guards);
    let tally = writer
        .join()
        .map_err(|_| WorkerError::Panicked("the view writer panicked".into()))??;
    if let Some(failure) = failure {
        return Err(ReplayError::Worker(failure));
    }
    let wall = started.elapsed();
    let records_read = records_read.load(Ordering::Relaxed);
    let providers = provider_report.lock().expect("report lock").take();
    Ok(ReplayReport {
        providers,
        records_read,
        accepted: tally.commits.accepted,
        duplicates: duplicates.load(Ordering::Relaxed),
        dead_letters: tally.commits.dead_letters.values().sum(),
        dead_letters_by_reason: tally.commits.dead_letters,
        edges_accepted: tally.edges_accepted,
        edges_rejected: tally.edges_rejected,
        workers,
        batches: tally.commits.batches,
        transactions: tally.commits.transactions,
        sink_seconds: tally.busy.as_secs_f64(),
        wall_seconds: wall.as_secs_f64(),
        records_per_second: records_read as f64 / wall.as_secs_f64().max(1e-9),
        batch_latency_ms: Latency::from_micros(&tally.commits.latency_us),
    })
}

/// Worker 0's side of the provider phase: after the log, dispatch the pending
/// requests, feed the answers at the next timestamp, and repeat until nothing is
/// pending that a worker here runs and nothing is in flight.
struct LeadPhase<'a> {
    clock: &'a LeadClock,
    probe: &'a ProbeHandle<Time>,
    dispatcher: &'a RefCell<Dispatcher>,
    aborted: &'a AtomicBool,
    records_read: &'a AtomicU64,
}

impl LeadPhase<'_> {
    /// Runs rounds at the timestamps after `after` (and before `before`, if given)
    /// until quiescence; returns the first timestamp not used.
    fn run(
        &self,
        worker: &mut timely::worker::Worker,
        inputs: &mut Inputs,
        after: Time,
        before: Option<Time>,
    ) -> Time {
        let mut t = after + 1;
        while before.is_none_or(|b| t < b) {
            inputs.advance_to(t);
            self.clock.publish(t);
            worker.step_while(|| self.probe.less_than(&t));
            if self.aborted.load(Ordering::Relaxed) {
                break;
            }
            let mut feed = Feed {
                results: self.dispatcher.borrow_mut().dispatch(),
                ..Feed::default()
            };
            while feed.is_empty() && !self.dispatcher.borrow().is_idle() {
                let more = self
                    .dispatcher
                    .borrow_mut()
                    .collect(Duration::from_millis(20));
                feed.records.extend(more.records);
                feed.results.extend(more.results);
                worker.step();
            }
            if feed.is_empty() {
                break; // quiescent: nothing dispatchable, nothing in flight
            }
            self.records_read
                .fetch_add(feed.records.len() as u64, Ordering::Relaxed);
            for (pos, record) in feed.records {
                match parse_record(record.as_bytes(), pos) {
                    Ok(delta) => inputs.deltas.send(delta),
                    Err(letter) => inputs.malformed.send((*letter, t, 1)),
                }
            }
            for result in feed.results {
                inputs.results.send((result, t, 1));
            }
            t += 1;
        }
        t
    }
}

/// The writer thread: commits batches in order, merging those that queued up.
fn write_views(
    mut sink: Box<dyn ViewSink + Send>,
    batches: crossbeam_channel::Receiver<Committable>,
    progress: &Progress,
) -> Result<WriterTally, SinkError> {
    /// At most this many queued batches go into one transaction.
    const MAX_GROUP: usize = 16;
    let mut tally = WriterTally::default();
    while let Ok(first) = batches.recv() {
        let mut fed = vec![first.fed_at];
        let mut merged = first.batch;
        while fed.len() < MAX_GROUP {
            let Ok(next) = batches.try_recv() else { break };
            fed.push(next.fed_at);
            merged.absorb(next.batch);
        }
        let writing = Instant::now();
        sink.write(&merged)?;
        let now = Instant::now();
        tally.busy += now - writing;
        tracing::debug!(
            batches = fed.len(),
            upserts = merged.blobs.upserts.len(),
            applied = merged.applied.len(),
            seconds = (now - writing).as_secs_f64(),
            "view transaction committed"
        );
        tally.commits.count(&merged, &fed, now);
        tally.edges_accepted += merged.edges.upserts.len() as u64;
        tally.edges_accepted -= merged.edges.deletes.len() as u64;
        tally.edges_rejected += merged.rejected_edges.len() as u64;
        progress
            .accepted
            .store(tally.commits.accepted, Ordering::Relaxed);
    }
    sink.finish()?;
    Ok(tally)
}
