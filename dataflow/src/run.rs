//! The long-running service (`studio run`): deltas from a bus, views kept durably,
//! positions committed with the views, recovery on start.
//!
//! ```text
//!  source thread            worker 0 (lead)                 other workers     writer thread
//!  LiveSource::poll ──batch──> number records (seq),         follow worker 0's  ViewSink::recover ──> worker 0
//!        ^                     feed them at time now_ms      clock               ... then per batch:
//!        |                     (parsing is exchanged         (advance_to)        publish outputs, flush
//!        |                      across workers)                                  write views + checkpoint
//!        └──────────── LiveSource::commit(positions) <────────────────────────── (one transaction)
//! ```
//!
//! **Time.** Timestamps are wall-clock milliseconds, strictly increasing: one per
//! batch read, plus an empty one when idle so that the gap timeout (S4.4) fires. The
//! delta store is replayed at one timestamp before the first live one, and that
//! timestamp's views are not written (the database already holds them).
//!
//! **Log order.** Records are numbered in the order the service read them (`seq`,
//! continued across restarts from the checkpoint), and that number is their
//! position in the dataflow: S4.3's "first in log order" is the order the service read
//! them, which keeps each partition's order; recovery replays the stored deltas in the
//! same order, so every decision comes out the same.
//!
//! **Nothing lost, nothing doubled.** A batch's views, its accepted deltas (with the
//! full record), the deltas still waiting for a gap and the source positions it
//! consumed are one transaction ([`Checkpoint`]); only then are the positions
//! acknowledged to the bus. A crash before the commit re-reads the batch from the
//! stored positions; a crash after it finds the batch in the delta store. The output
//! streams (requests, events, applied deltas, dead letters) are published and
//! flushed *before* the commit: they are at least once, with stable ids for
//! consumers to deduplicate.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::Serialize;
use studio_connectors::{
    LiveSource, OutputStream, OwnedRecord, RecordPublisher, RecoveredAs, SinkError, SourceError,
    ViewSink,
};
use studio_model::{Checkpoint, Provider, SourcePos, ViewBatch, parse_record};
use timely::dataflow::operators::Probe;
use timely::dataflow::operators::probe::Handle as ProbeHandle;

use crate::driver::{CommitTally, Latency, LeadClock, WorkerError, join_workers};
use crate::render::{Inputs, RenderOptions, Time, render};
use crate::sink::sink_views;

/// How the service runs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The source's name in the checkpoints (`kafka:TOPIC`, `nats:STREAM`).
    pub source: String,
    /// Timely worker threads.
    pub workers: usize,
    /// Records per timestamp at most.
    pub max_batch_records: usize,
    /// How long a poll waits for its first record.
    pub poll_timeout: Duration,
    /// Batches read ahead of the dataflow before reading pauses.
    pub max_batches_in_flight: usize,
    /// Completed batches queued for the writer before the dataflow pauses.
    pub writer_queue_batches: usize,
    /// Deltas waiting for a gap this long become dead letters (S4.4).
    pub gap_timeout: Duration,
    /// Providers registered at start (S5.3): their pending requests are maintained.
    pub providers: Vec<Provider>,
    /// Record events (S5.8).
    pub events: bool,
    /// The output streams to publish (with a publisher).
    pub publish: Vec<OutputStream>,
    /// Stop (gracefully) after this long without a record.
    pub exit_when_idle: Option<Duration>,
}

/// Opens the live source, resuming right after the given positions.
pub type OpenSource =
    Box<dyn FnOnce(&[SourcePos]) -> Result<Box<dyn LiveSource>, SourceError> + Send>;

/// What the service is doing, for `/healthz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Opening stores.
    Starting = 0,
    /// Replaying the delta store.
    Recovering = 1,
    /// Reading the bus.
    Running = 2,
    /// Draining after a stop was asked.
    Stopping = 3,
    /// Stopped.
    Stopped = 4,
    /// A part failed.
    Failed = 5,
}

/// Shared state of a running service: its phase, and the stop switch.
#[derive(Debug, Default)]
pub struct RunControl {
    phase: AtomicU8,
    stop: Arc<AtomicBool>,
    /// Unix ms of the last committed view transaction.
    last_commit_ms: AtomicU64,
}

impl RunControl {
    /// Asks the service to stop: it stops reading, commits what it read, and returns.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// The stop switch itself, for signal handlers (`signal_hook::flag::register`).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// True once a stop was asked.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Starting,
            1 => Phase::Recovering,
            2 => Phase::Running,
            3 => Phase::Stopping,
            4 => Phase::Stopped,
            _ => Phase::Failed,
        }
    }

    /// Unix milliseconds of the last view commit (0: none yet).
    pub fn last_commit_ms(&self) -> u64 {
        self.last_commit_ms.load(Ordering::SeqCst)
    }

    fn set_phase(&self, phase: Phase) {
        // A failure is final.
        if self.phase() != Phase::Failed {
            self.phase.store(phase as u8, Ordering::SeqCst);
        }
    }

    fn fail(&self) {
        self.phase.store(Phase::Failed as u8, Ordering::SeqCst);
        self.stop();
    }
}

/// What a run did, from its start to its stop.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunReport {
    /// Deltas replayed from the delta store at start.
    pub recovered: u64,
    /// Records read from the bus.
    pub records_read: u64,
    /// Deltas accepted.
    pub accepted: u64,
    /// Repeated delta ids ignored (S4.2).
    pub duplicates: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Dead letters by reason kind.
    pub dead_letters_by_reason: BTreeMap<String, u64>,
    /// Timestamps committed.
    pub batches: u64,
    /// View transactions.
    pub transactions: u64,
    /// Records published to the output streams.
    pub published: u64,
    /// The positions committed last.
    pub positions: Vec<SourcePos>,
    /// Wall time, seconds.
    pub wall_seconds: f64,
    /// Per batch: from its read to its commit.
    pub batch_latency_ms: Latency,
}

/// A run that failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The bus failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The view store (or a publisher) failed.
    #[error("writing the views failed: {0}")]
    Sink(#[from] SinkError),
    /// A worker failed.
    #[error("dataflow worker failed: {0}")]
    Worker(WorkerError), // not a `#[source]`: the message holds it
}

impl From<WorkerError> for RunError {
    fn from(error: WorkerError) -> Self {
        RunError::Worker(error)
    }
}

/// Records handed over during recovery, in chunks.
const RECOVERY_CHUNK: usize = 4096;
/// An idle service advances time this often (for the gap timeout).
const IDLE_TICK: Duration = Duration::from_millis(100);

enum Recovered {
    Records(Vec<(SourcePos, Vec<u8>, RecoveredAs)>),
    Done(Option<Checkpoint>),
}

enum ToWriter {
    Batch(Box<ViewBatch>, Instant),
    End,
}

/// The last position read in each partition, as a checkpoint lists them.
fn position_list(positions: &BTreeMap<u32, u64>) -> Vec<SourcePos> {
    positions
        .iter()
        .map(|(&part, &offset)| SourcePos { part, offset })
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs the service until `control.stop()` (or `exit_when_idle`), or until a part
/// fails.
pub fn run(
    options: RunOptions,
    open_source: OpenSource,
    sink: Box<dyn ViewSink + Send>,
    publisher: Option<Box<dyn RecordPublisher>>,
    control: Arc<RunControl>,
) -> Result<RunReport, RunError> {
    let started = Instant::now();
    control.set_phase(Phase::Recovering);
    let (recovered_tx, recovered_rx) = crossbeam_channel::bounded::<Recovered>(4);
    let (to_writer, from_dataflow) =
        crossbeam_channel::bounded::<ToWriter>(options.writer_queue_batches);
    let (commits_tx, commits_rx) = crossbeam_channel::unbounded::<Vec<SourcePos>>();
    let (start_tx, start_rx) = crossbeam_channel::bounded::<Vec<SourcePos>>(1);
    let (batches_tx, batches_rx) =
        crossbeam_channel::bounded::<Vec<OwnedRecord>>(options.max_batches_in_flight);

    let writer = {
        let (options, control) = (options.clone(), Arc::clone(&control));
        std::thread::Builder::new()
            .name("studio-view-writer".into())
            .spawn(move || {
                let result = write_views(
                    sink,
                    publisher,
                    &options,
                    recovered_tx,
                    from_dataflow,
                    commits_tx,
                    &control,
                );
                if result.is_err() {
                    control.fail();
                }
                result
            })
            .expect("spawn the view writer")
    };
    let reader = {
        let (options, control) = (options.clone(), Arc::clone(&control));
        std::thread::Builder::new()
            .name("studio-source".into())
            .spawn(move || {
                let result = read_source(
                    open_source,
                    &options,
                    start_rx,
                    batches_tx,
                    commits_rx,
                    &control,
                );
                if result.is_err() {
                    control.fail();
                }
                result
            })
            .expect("spawn the source reader")
    };

    let clock = Arc::new(LeadClock::default());
    let duplicates = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new((0u64, 0u64))); // (recovered, records read)
    let guards = {
        let (options, control, clock, duplicates, tally) = (
            options.clone(),
            Arc::clone(&control),
            Arc::clone(&clock),
            Arc::clone(&duplicates),
            Arc::clone(&tally),
        );
        timely::execute(timely::Config::process(options.workers), move |worker| {
            let lead = worker.index() == 0;
            let probe = ProbeHandle::new();
            // The lead's bookkeeping, shared with its view sink callback.
            let checkpoints: Rc<RefCell<BTreeMap<Time, Checkpoint>>> = Rc::default();
            let fed_at: Rc<RefCell<BTreeMap<Time, Instant>>> = Rc::default();
            let recovery_time = Rc::new(RefCell::new(Time::MAX));
            let closing = Rc::new(RefCell::new(false));
            let render_options = RenderOptions {
                providers: !options.providers.is_empty(),
                gap_timeout: Some(options.gap_timeout.as_millis() as Time),
                store_records: true, // recovery replays them
            };
            let mut inputs = worker.dataflow::<Time, _, _>(|scope| {
                let (inputs, views) = render(scope, Arc::clone(&duplicates), render_options);
                let (checkpoints, fed_at, recovery_time, closing) = (
                    Rc::clone(&checkpoints),
                    Rc::clone(&fed_at),
                    Rc::clone(&recovery_time),
                    Rc::clone(&closing),
                );
                let (to_writer, events) = (to_writer.clone(), options.events);
                sink_views(views, move |time, mut batch| {
                    let mut checkpoints = checkpoints.borrow_mut();
                    let later = checkpoints.split_off(&(time + 1));
                    let covered = std::mem::replace(&mut *checkpoints, later);
                    let mut fed = fed_at.borrow_mut();
                    let read_at = fed.range(..=time).next().map(|(_, at)| *at);
                    *fed = fed.split_off(&(time + 1));
                    // The recovered state is already in the store; after the last
                    // commit of a stop, nothing more is written.
                    if time <= *recovery_time.borrow() || *closing.borrow() {
                        return;
                    }
                    batch.checkpoint = covered.into_values().next_back();
                    if events {
                        batch.record_events();
                    }
                    let read_at = read_at.unwrap_or_else(Instant::now);
                    let _ = to_writer.send(ToWriter::Batch(Box::new(batch), read_at));
                })
                .probe_with(&probe);
                inputs
            });

            if !lead {
                clock.follow(worker, &mut inputs, 0);
                return Ok(());
            }
            for provider in &options.providers {
                inputs
                    .providers
                    .send((provider.id.clone(), Some(provider.clone())));
            }
            let mut lead = Lead {
                inputs,
                probe,
                clock: &clock,
                checkpoints,
                fed_at,
                in_flight: VecDeque::new(),
                to_writer: to_writer.clone(),
                time: 0,
            };
            // Recovery: the delta store at one timestamp, not written back.
            let now = now_ms();
            lead.advance(now);
            *recovery_time.borrow_mut() = now;
            let mut recovered = 0u64;
            let mut next_seq = 0u64;
            let checkpoint = loop {
                match recovered_rx.recv() {
                    Ok(Recovered::Records(records)) => {
                        recovered += records.len() as u64;
                        for (pos, record, kind) in records {
                            next_seq = next_seq.max(pos.offset + 1);
                            match kind {
                                RecoveredAs::Replay => lead.inputs.records.send((pos, record)),
                                // Stored as a dead letter of a well-formed delta, so it
                                // parses; should it not, there is no id to keep.
                                RecoveredAs::KnownId => {
                                    if let Ok(delta) = parse_record(&record, pos) {
                                        lead.inputs.known_ids.send(delta.id);
                                    }
                                }
                            }
                        }
                        worker.step();
                    }
                    Ok(Recovered::Done(checkpoint)) => break checkpoint,
                    Err(_) => {
                        // The writer failed; it reports why.
                        lead.finish(worker, &closing);
                        return Err(WorkerError::RecoveryIncomplete);
                    }
                }
            };
            let mut positions: BTreeMap<u32, u64> = BTreeMap::new();
            if let Some(checkpoint) = checkpoint {
                next_seq = next_seq.max(checkpoint.next_seq);
                positions.extend(checkpoint.positions.iter().map(|p| (p.part, p.offset)));
            }
            tracing::info!(
                recovered,
                next_seq,
                positions = ?positions,
                "recovered the delta store"
            );
            let _ = start_tx.send(position_list(&positions));
            lead.wait_for(worker, now);
            control.set_phase(Phase::Running);
            tally.lock().expect("tally").0 = recovered;

            // Live: one timestamp per batch read.
            let mut records_read = 0u64;
            let mut last_record = Instant::now();
            let mut last_tick = Instant::now();
            loop {
                lead.throttle(worker, options.max_batches_in_flight);
                match batches_rx.recv_timeout(Duration::from_millis(1)) {
                    Ok(batch) => {
                        let time = lead.advance(now_ms());
                        records_read += batch.len() as u64;
                        metrics::counter!("studio_records_read_total")
                            .increment(batch.len() as u64);
                        for record in batch {
                            positions.insert(record.pos.part, record.pos.offset);
                            lead.inputs
                                .records
                                .send((SourcePos::at(next_seq), record.bytes));
                            next_seq += 1;
                        }
                        lead.checkpoints.borrow_mut().insert(
                            time,
                            Checkpoint {
                                source: options.source.clone(),
                                positions: position_list(&positions),
                                next_seq,
                            },
                        );
                        lead.fed_at.borrow_mut().insert(time, Instant::now());
                        lead.in_flight.push_back(time);
                        last_record = Instant::now();
                        last_tick = last_record;
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        if last_tick.elapsed() >= IDLE_TICK {
                            lead.advance(now_ms());
                            last_tick = Instant::now();
                        }
                        if options
                            .exit_when_idle
                            .is_some_and(|idle| last_record.elapsed() >= idle)
                        {
                            control.stop();
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => break, // the reader stopped
                }
                worker.step();
                lead.flush_checkpoints();
                metrics::counter!("studio_duplicates_total")
                    .absolute(duplicates.load(Ordering::Relaxed));
            }
            control.set_phase(Phase::Stopping);
            tally.lock().expect("tally").1 = records_read;
            lead.finish(worker, &closing);
            Ok::<(), WorkerError>(())
        })
        .map_err(|e| RunError::Worker(WorkerError::Start(e)))?
    };
    let failure = join_workers(guards);
    let written = writer
        .join()
        .map_err(|_| WorkerError::Panicked("the view writer panicked".into()));
    let read = reader
        .join()
        .map_err(|_| WorkerError::Panicked("the source reader panicked".into()));
    let tally_w = written??;
    read??;
    if let Some(failure) = failure {
        return Err(RunError::Worker(failure));
    }
    control.set_phase(Phase::Stopped);
    let (recovered, records_read) = *tally.lock().expect("tally");
    Ok(RunReport {
        recovered,
        records_read,
        accepted: tally_w.commits.accepted,
        duplicates: duplicates.load(Ordering::Relaxed),
        dead_letters: tally_w.commits.dead_letters.values().sum(),
        dead_letters_by_reason: tally_w.commits.dead_letters,
        batches: tally_w.commits.batches,
        transactions: tally_w.commits.transactions,
        published: tally_w.published,
        positions: tally_w.positions,
        wall_seconds: started.elapsed().as_secs_f64(),
        batch_latency_ms: Latency::from_micros(&tally_w.commits.latency_us),
    })
}

/// Worker 0's loop state.
struct Lead<'a> {
    inputs: Inputs,
    probe: ProbeHandle<Time>,
    clock: &'a LeadClock,
    /// Checkpoints of the timestamps fed and not yet handed to the writer.
    checkpoints: Rc<RefCell<BTreeMap<Time, Checkpoint>>>,
    /// When each timestamp's first record was read.
    fed_at: Rc<RefCell<BTreeMap<Time, Instant>>>,
    /// Timestamps fed whose views are not complete yet.
    in_flight: VecDeque<Time>,
    to_writer: Sender<ToWriter>,
    time: Time,
}

impl Lead<'_> {
    /// Moves to a new timestamp, at least `wanted` and after the current one.
    fn advance(&mut self, wanted: Time) -> Time {
        self.time = wanted.max(self.time + 1);
        self.inputs.advance_to(self.time);
        self.clock.publish(self.time);
        self.time
    }

    /// Steps until the views of `time` are complete.
    fn wait_for(&mut self, worker: &mut timely::worker::Worker, time: Time) {
        let next = self.advance(now_ms()).max(time + 1);
        worker.step_while(|| self.probe.less_than(&next));
    }

    /// Steps while too many batches are incomplete (back-pressure on the reader).
    fn throttle(&mut self, worker: &mut timely::worker::Worker, max: usize) {
        loop {
            while self
                .in_flight
                .front()
                .is_some_and(|t| !self.probe.less_equal(t))
            {
                self.in_flight.pop_front();
            }
            if self.in_flight.len() < max {
                return;
            }
            worker.step_or_park(Some(Duration::from_millis(1)));
            self.flush_checkpoints();
        }
    }

    /// Hands the writer the checkpoints of complete timestamps that changed no view
    /// (all duplicates, say), so their positions commit too.
    fn flush_checkpoints(&mut self) {
        let mut checkpoints = self.checkpoints.borrow_mut();
        let mut done = None;
        while let Some((&time, _)) = checkpoints.first_key_value() {
            if self.probe.less_equal(&time) {
                break;
            }
            done = checkpoints.pop_first().map(|(_, c)| (time, c));
        }
        if let Some((time, checkpoint)) = done {
            let read_at = self
                .fed_at
                .borrow()
                .get(&time)
                .copied()
                .unwrap_or_else(Instant::now);
            self.fed_at.borrow_mut().retain(|t, _| *t > time);
            let batch = ViewBatch {
                checkpoint: Some(checkpoint),
                ..ViewBatch::default()
            };
            let _ = self
                .to_writer
                .send(ToWriter::Batch(Box::new(batch), read_at));
        }
    }

    /// Completes every timestamp fed, commits it, and closes: the waiting deltas
    /// stay in the delta store for the next start (closing the inputs would
    /// dead-letter them, so nothing after this point is written).
    fn finish(&mut self, worker: &mut timely::worker::Worker, closing: &Rc<RefCell<bool>>) {
        let end = self.advance(now_ms());
        worker.step_while(|| self.probe.less_than(&end));
        self.flush_checkpoints();
        *closing.borrow_mut() = true;
        let _ = self.to_writer.send(ToWriter::End);
        self.clock.finish();
    }
}

/// The source thread: opens the source at the recovered positions, polls batches,
/// and acknowledges positions once the writer committed them.
fn read_source(
    open_source: OpenSource,
    options: &RunOptions,
    start: Receiver<Vec<SourcePos>>,
    batches: Sender<Vec<OwnedRecord>>,
    commits: Receiver<Vec<SourcePos>>,
    control: &RunControl,
) -> Result<(), RunError> {
    let Ok(resume_from) = start.recv() else {
        return Ok(()); // recovery failed; the writer reports why
    };
    let mut source = open_source(&resume_from)?;
    tracing::info!(source = %options.source, resume_from = ?resume_from, "reading");
    let mut last_lag = Instant::now() - Duration::from_secs(60);
    let commit = |source: &mut Box<dyn LiveSource>| -> Result<(), RunError> {
        while let Ok(upto) = commits.try_recv() {
            source.commit(&upto)?;
        }
        Ok(())
    };
    'read: while !control.stopping() {
        commit(&mut source)?;
        if last_lag.elapsed() >= Duration::from_secs(1) {
            match source.lag() {
                Ok(lag) => {
                    for (part, records) in lag {
                        metrics::gauge!("studio_consumer_lag", "partition" => part.to_string())
                            .set(records as f64);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the consumer lag"),
            }
            last_lag = Instant::now();
        }
        let records = source.poll(options.max_batch_records, options.poll_timeout)?;
        if records.is_empty() {
            continue;
        }
        let mut pending = records;
        loop {
            match batches.send_timeout(pending, Duration::from_millis(20)) {
                Ok(()) => break,
                Err(crossbeam_channel::SendTimeoutError::Timeout(back)) => {
                    // Back-pressure: the dataflow is behind. Keep acknowledging.
                    commit(&mut source)?;
                    if control.stopping() {
                        break 'read; // not handed over: not committed, read again next start
                    }
                    pending = back;
                }
                Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => break 'read,
            }
        }
    }
    drop(batches);
    // Acknowledge what the last transactions commit, until the writer is done.
    while let Ok(upto) = commits.recv() {
        source.commit(&upto)?;
    }
    Ok(())
}

/// What the writer counted.
#[derive(Default)]
struct WriterTally {
    commits: CommitTally,
    published: u64,
    positions: Vec<SourcePos>,
}

/// The writer thread: recovery first, then every batch: publish, commit, acknowledge.
fn write_views(
    mut sink: Box<dyn ViewSink + Send>,
    mut publisher: Option<Box<dyn RecordPublisher>>,
    options: &RunOptions,
    recovered: Sender<Recovered>,
    batches: Receiver<ToWriter>,
    commits: Sender<Vec<SourcePos>>,
    control: &RunControl,
) -> Result<WriterTally, RunError> {
    /// At most this many queued batches go into one transaction.
    const MAX_GROUP: usize = 16;
    let mut chunk = Vec::with_capacity(RECOVERY_CHUNK);
    let checkpoint = sink.recover(&options.source, &mut |pos, record, kind| {
        chunk.push((pos, record.as_bytes().to_vec(), kind));
        if chunk.len() == RECOVERY_CHUNK {
            let _ = recovered.send(Recovered::Records(std::mem::take(&mut chunk)));
        }
    })?;
    if !chunk.is_empty() {
        let _ = recovered.send(Recovered::Records(chunk));
    }
    let _ = recovered.send(Recovered::Done(checkpoint));
    drop(recovered);

    let mut tally = WriterTally::default();
    let mut dag_depth = 0u32;
    let mut ended = false;
    while !ended {
        let Ok(first) = batches.recv() else { break };
        let ToWriter::Batch(first_batch, first_read) = first else {
            break;
        };
        let mut merged = *first_batch;
        let mut read_at = vec![first_read];
        while read_at.len() < MAX_GROUP {
            match batches.try_recv() {
                Ok(ToWriter::Batch(next, at)) => {
                    merged.absorb(*next);
                    read_at.push(at);
                }
                Ok(ToWriter::End) => {
                    ended = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if let Some(publisher) = publisher.as_mut() {
            tally.published += publish(publisher.as_mut(), &options.publish, &merged, control);
        }
        sink.write(&merged)?;
        let now = Instant::now();
        control
            .last_commit_ms
            .store(now_ms(), std::sync::atomic::Ordering::SeqCst);
        if let Some(checkpoint) = &merged.checkpoint {
            tally.positions = checkpoint.positions.clone();
            let _ = commits.send(checkpoint.positions.clone());
        }
        tally.commits.count(&merged, &read_at, now);
        record_metrics(&merged, &read_at, now, &mut dag_depth);
    }
    Ok(tally)
}

/// Updates the service's metrics for one committed transaction.
fn record_metrics(merged: &ViewBatch, read_at: &[Instant], now: Instant, dag_depth: &mut u32) {
    let batch_latency = metrics::histogram!("studio_batch_latency_seconds");
    for at in read_at {
        batch_latency.record(now.saturating_duration_since(*at).as_secs_f64());
    }
    let latency = now.saturating_duration_since(read_at[0]).as_secs_f64();
    let blob_timing = metrics::histogram!("studio_blob_processing_duration_seconds");
    for _ in &merged.blobs.upserts {
        blob_timing.record(latency);
    }
    *dag_depth = merged
        .depth
        .upserts
        .iter()
        .fold(*dag_depth, |d, r| d.max(r.depth));
    metrics::gauge!("studio_dag_depth").set(*dag_depth as f64);
    metrics::counter!("studio_deltas_applied_total").increment(merged.applied.len() as u64);
    metrics::gauge!("studio_deltas_waiting")
        .increment(merged.waiting.upserts.len() as f64 - merged.waiting.deletes.len() as f64);
    metrics::counter!("studio_batches_committed_total").increment(read_at.len() as u64);
    metrics::counter!("studio_view_transactions_total").increment(1);
    for letter in &merged.dead_letters {
        metrics::counter!("studio_dead_letters_total", "reason" => letter.reason.kind())
            .increment(1);
    }
}

/// Publishes a batch's output streams and waits for the bus to take them, retrying
/// with backoff while it does not (a broker restarting): outputs are at least once.
/// Returns the number of records published.
fn publish(
    publisher: &mut dyn RecordPublisher,
    streams: &[OutputStream],
    batch: &ViewBatch,
    control: &RunControl,
) -> u64 {
    let records = outputs(streams, batch);
    if records.is_empty() {
        return 0;
    }
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt = records
            .iter()
            .try_for_each(|(stream, key, bytes)| publisher.publish(*stream, key, bytes))
            .and_then(|()| publisher.flush(Duration::from_secs(30)));
        match attempt {
            Ok(()) => return records.len() as u64,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "publishing the outputs failed; retrying");
                if control.phase() == Phase::Failed {
                    return 0;
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// The records of a batch's output streams: `(stream, key, value)`, keyed by blob.
fn outputs(streams: &[OutputStream], batch: &ViewBatch) -> Vec<(OutputStream, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let key = |id: &studio_model::Uuid| id.hyphenated().to_string().into_bytes();
    for stream in streams {
        match stream {
            OutputStream::Requests => {
                for (request, diff) in &batch.requests {
                    if *diff > 0 {
                        let value = serde_json::to_vec(request).expect("requests serialise");
                        out.push((*stream, key(&request.blob_id), value));
                    }
                }
            }
            OutputStream::Events => {
                for event in &batch.events {
                    let value = serde_json::to_vec(event).expect("events serialise");
                    out.push((*stream, key(&event.blob_id), value));
                }
            }
            OutputStream::Applied => {
                let applied_at = chrono::Utc::now().to_rfc3339();
                for row in &batch.applied {
                    let record = row.record.as_deref().unwrap_or_default();
                    out.push((
                        *stream,
                        key(&row.blob_id),
                        with_applied_at(record, &applied_at),
                    ));
                }
            }
            OutputStream::DeadLetters => {
                for letter in &batch.dead_letters {
                    let value = serde_json::json!({
                        "reason": letter.reason.to_string(),
                        "rule": letter.reason.kind(),
                        "delta_id": letter.delta_id,
                        "blob_id": letter.blob_id,
                        "raw": letter.raw_text(),
                    });
                    let key = letter.blob_id.as_ref().map(key).unwrap_or_default();
                    out.push((*stream, key, value.to_string().into_bytes()));
                }
            }
            OutputStream::Deltas => {} // the input stream: never published by the service
        }
    }
    out
}

/// The delta as applied: its record with `applied_at` set (S1).
fn with_applied_at(record: &str, applied_at: &str) -> Vec<u8> {
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(record) {
        Ok(mut fields) => {
            fields.insert("applied_at".into(), applied_at.into());
            serde_json::to_vec(&fields).expect("a map serialises")
        }
        Err(_) => record.as_bytes().to_vec(), // accepted deltas parsed; unreachable
    }
}
