//! The timely workers' loop. Worker 0, the lead, feeds the dataflow: the recovered
//! delta store first (a durable source), then each batch the reader polled, at the
//! clock's next timestamp, numbering records in the order read (their log position,
//! S4.3), with provider rounds between batches or after the end. The other workers
//! feed nothing and follow the lead's clock. The view sink's callback, on the lead,
//! hands each completed timestamp to the writer with the source's checkpoint.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use studio_connectors::{OwnedRecord, RecoveredAs};
use studio_model::{Checkpoint, SourcePos, ViewBatch, parse_record};
use timely::dataflow::operators::Probe;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::worker::Worker;

use super::PipelineOptions;
use super::clock::{Clock, LeadClock};
use super::control::{Control, Phase};
use super::reader::Polled;
use super::report::WorkerError;
use super::writer::{Completed, Recovered};
use crate::providers::{Dispatcher, Feed, ProviderReport};
use crate::render::{Inputs, RenderOptions, Time, render};
use crate::sink::sink_views;

/// An idle lead advances time this often (for the gap timeout, S4.4).
const IDLE_TICK: Duration = Duration::from_millis(100);
/// A wait for completed timestamps that makes no progress this long nudges the inputs.
const NUDGE_AFTER: Duration = Duration::from_millis(20);

/// What every worker shares (the workers' closure holds it).
pub(super) struct Shared {
    pub options: PipelineOptions,
    pub control: Arc<Control>,
    pub clock: LeadClock,
    pub duplicates: Arc<AtomicU64>,
    /// Batches from the reader.
    pub polled: Receiver<Polled>,
    /// The delta store, from the writer.
    pub recovered: Receiver<Recovered>,
    /// Where the reader resumes.
    pub resume_reader: Sender<Vec<SourcePos>>,
    /// Completed timestamps, to the writer.
    pub completed: Sender<Completed>,
    /// What the lead counted, for the report.
    pub tally: Arc<Mutex<LeadTally>>,
}

/// What the lead counted.
#[derive(Default)]
pub(super) struct LeadTally {
    pub recovered: u64,
    pub records_read: u64,
    pub providers: Option<ProviderReport>,
}

/// The lead's bookkeeping, shared with its view sink's callback (same thread).
#[derive(Default)]
struct Bookkeeping {
    /// When each fed timestamp's records were read, until its batch is handed on.
    read_at: RefCell<BTreeMap<Time, Instant>>,
    /// The source's checkpoint after each fed timestamp (a durable source).
    checkpoints: RefCell<BTreeMap<Time, Checkpoint>>,
    /// Up to this timestamp the views are already stored (the recovered delta store).
    stored_upto: Cell<Option<Time>>,
    /// Set once a stopped pipeline committed its last batch: nothing more is written.
    closing: Cell<bool>,
}

impl Bookkeeping {
    /// Takes what was fed up to `time`: when its first record was read, and the
    /// checkpoint after it.
    fn take_upto(&self, time: Time) -> (Option<Instant>, Option<Checkpoint>) {
        let mut read_at = self.read_at.borrow_mut();
        let later = read_at.split_off(&(time + 1));
        let first_read = std::mem::replace(&mut *read_at, later).into_values().next();
        let mut checkpoints = self.checkpoints.borrow_mut();
        let later = checkpoints.split_off(&(time + 1));
        let checkpoint = std::mem::replace(&mut *checkpoints, later)
            .into_values()
            .next_back();
        (first_read, checkpoint)
    }

    /// True when the views of `time` are to be written.
    fn writes(&self, time: Time) -> bool {
        !self.closing.get() && self.stored_upto.get().is_none_or(|upto| time > upto)
    }
}

/// One worker's body: builds the dataflow, then leads (worker 0) or follows.
pub(super) fn run_worker(worker: &mut Worker, shared: &Shared) -> Result<(), WorkerError> {
    let lead = worker.index() == 0;
    let options = &shared.options;
    let dispatcher = match (&options.provider_workers, lead) {
        (Some(setup), true) => match Dispatcher::start(setup) {
            Ok(dispatcher) => Some(Rc::new(RefCell::new(dispatcher))),
            Err(e) => {
                shared.clock.finish();
                return Err(WorkerError::ProviderRuntime(e));
            }
        },
        _ => None,
    };
    let book = Rc::new(Bookkeeping::default());
    if options.durable.is_some() {
        book.stored_upto.set(Some(Time::MAX)); // until the delta store is replayed
    }
    let probe = ProbeHandle::new();
    let render_options = RenderOptions {
        providers: !options.providers.is_empty() || options.provider_workers.is_some(),
        gap_timeout: options.gap_timeout.map(|t| t.as_millis() as Time),
        store_records: options.store_records,
    };
    let mut inputs = worker.dataflow::<Time, _, _>(|scope| {
        let (inputs, views) = render(scope, Arc::clone(&shared.duplicates), render_options);
        let on_batch = hand_on(shared, Rc::clone(&book), dispatcher.clone());
        let written = {
            let book = Rc::clone(&book);
            move |time| book.writes(time)
        };
        sink_views(views, written, on_batch).probe_with(&probe);
        inputs
    });
    if !lead {
        shared.clock.follow(worker, &mut inputs);
        return Ok(());
    }
    Lead {
        shared,
        inputs,
        probe,
        book,
        dispatcher,
        in_flight: VecDeque::new(),
        time: 0,
        batches: 0,
        next_seq: 0,
        positions: BTreeMap::new(),
        records_read: 0,
    }
    .run(worker)
}

/// The view sink's callback: hands each completed timestamp's batch to the writer,
/// with the checkpoint of what was fed up to it.
fn hand_on(
    shared: &Shared,
    book: Rc<Bookkeeping>,
    dispatcher: Option<Rc<RefCell<Dispatcher>>>,
) -> impl FnMut(Time, ViewBatch) + 'static {
    let (completed, events) = (shared.completed.clone(), shared.options.events);
    move |time, mut batch| {
        if let Some(dispatcher) = &dispatcher {
            dispatcher.borrow_mut().observe(&batch);
        }
        let (read_at, checkpoint) = book.take_upto(time);
        if !book.writes(time) {
            if !book.closing.get() && !batch.requests.is_empty() {
                // The recovered delta store: its pending requests are watched again.
                let requests = ViewBatch {
                    requests: std::mem::take(&mut batch.requests),
                    ..ViewBatch::default()
                };
                let _ = completed.send(Completed {
                    batch: Box::new(requests),
                    read_at: Instant::now(),
                    stored: true,
                });
            }
            return;
        }
        batch.checkpoint = checkpoint;
        if events {
            batch.record_events();
        }
        let read_at = read_at.unwrap_or_else(Instant::now);
        let _ = completed.send(Completed {
            batch: Box::new(batch),
            read_at,
            stored: false,
        });
    }
}

/// Worker 0's state.
struct Lead<'a> {
    shared: &'a Shared,
    inputs: Inputs,
    probe: ProbeHandle<Time>,
    book: Rc<Bookkeeping>,
    dispatcher: Option<Rc<RefCell<Dispatcher>>>,
    /// Timestamps fed whose views are not complete yet.
    in_flight: VecDeque<Time>,
    /// The current timestamp.
    time: Time,
    /// Batches fed (the delta store counts as one).
    batches: u64,
    /// The next record's log position.
    next_seq: u64,
    /// The last position read in each partition of the source.
    positions: BTreeMap<u32, u64>,
    records_read: u64,
}

impl Lead<'_> {
    fn clock(&self) -> Clock {
        self.shared.options.clock
    }

    fn control(&self) -> &Control {
        &self.shared.control
    }

    /// Recovery, then the source until it ends or a stop; then the last timestamps.
    fn run(mut self, worker: &mut Worker) -> Result<(), WorkerError> {
        for provider in &self.shared.options.providers {
            let change = (provider.id.clone(), Some(provider.clone()));
            self.inputs.providers.send(change);
        }
        let mut resume_from = Vec::new();
        if self.shared.options.durable.is_some() {
            self.control().set_phase(Phase::Recovering);
            match self.recover(worker) {
                Ok(positions) => resume_from = positions,
                Err(e) => {
                    self.stop(worker);
                    return Err(e);
                }
            }
        }
        let _ = self.shared.resume_reader.send(resume_from);
        if let Some(stored) = self.book.stored_upto.get() {
            self.wait_for(worker, stored);
        }
        self.control().set_phase(Phase::Running);
        let ended = self.read(worker);
        self.control().set_phase(Phase::Stopping);
        if ended {
            self.drain(worker);
        } else {
            self.stop(worker);
        }
        let mut tally = self.shared.tally.lock().expect("tally lock");
        tally.records_read = self.records_read;
        if let Some(dispatcher) = &self.dispatcher {
            tally.providers = Some(dispatcher.borrow_mut().report());
        }
        Ok(())
    }

    /// Moves to timestamp `time` (not before the current one).
    fn advance(&mut self, time: Time) -> Time {
        if time > self.time {
            self.time = time;
            self.inputs.advance_to(time);
            self.shared.clock.publish(time);
        }
        self.time
    }

    /// Steps until the views of `time` are complete.
    fn wait_for(&mut self, worker: &mut Worker, time: Time) {
        let next = self.advance(self.clock().batch(self.time, self.batches).max(time + 1));
        self.complete_before(worker, next);
    }

    /// Replays the delta store at one timestamp, whose views are not written again;
    /// returns the positions to resume the source from.
    fn recover(&mut self, worker: &mut Worker) -> Result<Vec<SourcePos>, WorkerError> {
        let time = self.advance(self.clock().batch(self.time, self.batches));
        self.batches += 1;
        self.book.stored_upto.set(Some(time));
        let mut recovered = 0u64;
        let checkpoint = loop {
            match self.shared.recovered.recv() {
                Ok(Recovered::Records(records)) => {
                    recovered += records.len() as u64;
                    for (pos, record, kind) in records {
                        self.feed_recovered(pos, record, kind);
                    }
                    worker.step();
                }
                Ok(Recovered::Done(checkpoint)) => break checkpoint,
                Err(_) => return Err(WorkerError::RecoveryIncomplete), // the writer says why
            }
        };
        if let Some(checkpoint) = checkpoint {
            self.next_seq = self.next_seq.max(checkpoint.next_seq);
            let stored = checkpoint.positions.iter().map(|p| (p.part, p.offset));
            self.positions.extend(stored);
        }
        tracing::info!(recovered, next_seq = self.next_seq, positions = ?self.positions, "recovered the delta store");
        self.shared.tally.lock().expect("tally lock").recovered = recovered;
        Ok(position_list(&self.positions))
    }

    fn feed_recovered(&mut self, pos: SourcePos, record: Vec<u8>, kind: RecoveredAs) {
        self.next_seq = self.next_seq.max(pos.offset + 1);
        match kind {
            RecoveredAs::Replay => self.inputs.records.send((pos, record)),
            // Stored as a dead letter of a well-formed delta, so it parses; should it
            // not, there is no id to keep.
            RecoveredAs::KnownId => {
                if let Ok(delta) = parse_record(&record, pos) {
                    self.inputs.known_ids.send(delta.id);
                }
            }
        }
    }

    /// Feeds the reader's batches; true when a bounded source ended, false on a stop.
    fn read(&mut self, worker: &mut Worker) -> bool {
        let shared = self.shared;
        let options = &shared.options;
        let each_batch = options
            .provider_workers
            .as_ref()
            .is_some_and(|setup| setup.each_batch);
        let mut last_record = Instant::now();
        let mut last_tick = Instant::now();
        loop {
            self.throttle(worker);
            match shared.polled.recv_timeout(Duration::from_millis(1)) {
                Ok(Polled::Records(records)) => {
                    self.feed(records);
                    if each_batch {
                        self.provider_rounds(worker, true);
                    }
                    last_record = Instant::now();
                    last_tick = last_record;
                }
                Ok(Polled::End) => return true,
                Err(RecvTimeoutError::Timeout) => {
                    if last_tick.elapsed() >= IDLE_TICK
                        && let Some(tick) = self.clock().idle_tick(self.time)
                    {
                        self.advance(tick);
                        last_tick = Instant::now();
                    }
                    if options
                        .exit_when_idle
                        .is_some_and(|idle| last_record.elapsed() >= idle)
                    {
                        self.control().stop();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return false, // the reader stopped
            }
            worker.step();
            self.flush_checkpoints();
            let duplicates = self.shared.duplicates.load(Ordering::Relaxed);
            metrics::counter!("studio_duplicates_total").absolute(duplicates);
        }
    }

    /// Feeds one batch at the clock's next timestamp.
    fn feed(&mut self, records: Vec<OwnedRecord>) {
        let time = self.advance(self.clock().batch(self.time, self.batches));
        self.batches += 1;
        self.records_read += records.len() as u64;
        metrics::counter!("studio_records_read_total").increment(records.len() as u64);
        for record in records {
            self.positions.insert(record.pos.part, record.pos.offset);
            let pos = SourcePos::at(self.next_seq);
            self.inputs.records.send((pos, record.bytes));
            self.next_seq += 1;
        }
        if let Some(source) = &self.shared.options.durable {
            let checkpoint = Checkpoint {
                source: source.clone(),
                positions: position_list(&self.positions),
                next_seq: self.next_seq,
            };
            self.book.checkpoints.borrow_mut().insert(time, checkpoint);
        }
        self.book.read_at.borrow_mut().insert(time, Instant::now());
        self.in_flight.push_back(time);
    }

    /// Steps while more than `max_batches_in_flight` batches before the current
    /// timestamp are incomplete (back-pressure on the reader).
    fn throttle(&mut self, worker: &mut Worker) {
        let max = self.shared.options.max_batches_in_flight;
        let mut stuck = Stuck::new();
        loop {
            while self
                .in_flight
                .front()
                .is_some_and(|t| !self.probe.less_equal(t))
            {
                self.in_flight.pop_front();
                stuck = Stuck::new();
            }
            let behind = self.in_flight.iter().filter(|t| **t < self.time).count();
            if behind < max {
                return;
            }
            worker.step_or_park(Some(Duration::from_millis(1)));
            self.flush_checkpoints();
            self.nudge_if(&mut stuck);
        }
    }

    /// Steps until every timestamp before `time` is complete.
    fn complete_before(&mut self, worker: &mut Worker, time: Time) {
        let mut stuck = Stuck::new();
        while self.probe.less_than(&time) {
            worker.step_or_park(Some(Duration::from_millis(1)));
            self.nudge_if(&mut stuck);
        }
    }

    /// A completed timestamp's frontier was seen to stay put until the inputs moved
    /// again (two workers, one batch in flight: a replay stalled; the service's idle
    /// tick hid it). Until the cause is found, a wait that makes no progress for
    /// [`NUDGE_AFTER`] moves the inputs to an empty timestamp.
    fn nudge_if(&mut self, stuck: &mut Stuck) {
        if stuck.since.elapsed() < NUDGE_AFTER {
            return;
        }
        if let Some(nudge) = self.clock().nudge(self.time, self.batches) {
            tracing::debug!(
                time = self.time,
                nudge,
                "frontier stuck: nudging the inputs"
            );
            self.advance(nudge);
        }
        *stuck = Stuck::new();
    }

    /// Hands the writer the checkpoint of complete timestamps that changed no view
    /// (all duplicates, say), so that their positions commit too.
    fn flush_checkpoints(&mut self) {
        let complete = self
            .book
            .checkpoints
            .borrow()
            .keys()
            .take_while(|time| !self.probe.less_equal(time))
            .last()
            .copied();
        let Some(time) = complete else { return };
        let (read_at, checkpoint) = self.book.take_upto(time);
        let batch = ViewBatch {
            checkpoint,
            ..ViewBatch::default()
        };
        let _ = self.shared.completed.send(Completed {
            batch: Box::new(batch),
            read_at: read_at.unwrap_or_else(Instant::now),
            stored: false,
        });
    }

    /// Runs provider rounds until quiescence: dispatch the pending requests, feed the
    /// answers at the next timestamp, repeat; with `before_next_batch`, only in the
    /// timestamps left before the next batch's.
    fn provider_rounds(&mut self, worker: &mut Worker, before_next_batch: bool) {
        let Some(dispatcher) = self.dispatcher.clone() else {
            return;
        };
        while let Some(t) = self
            .clock()
            .round(self.time, self.batches, before_next_batch)
        {
            self.advance(t);
            self.complete_before(worker, t);
            let t = self.time; // later, if the wait nudged the inputs
            if self.control().stopping() {
                return;
            }
            let feed = collect_answers(&dispatcher, worker);
            if feed.is_empty() {
                return; // quiescent: nothing dispatchable, nothing in flight
            }
            self.records_read += feed.records.len() as u64;
            for (pos, record) in feed.records {
                self.inputs.records.send((pos, record.into_bytes()));
            }
            for result in feed.results {
                self.inputs.results.send((result, t, 1));
            }
        }
    }

    /// A bounded source ended: the provider rounds after it, then one last timestamp,
    /// the same on every worker; the inputs close when the workers return, and the
    /// deltas still waiting for a gap become dead letters (S4.4) and are written.
    fn drain(&mut self, worker: &mut Worker) {
        self.provider_rounds(worker, false);
        let end = self.clock().round(self.time, self.batches, false);
        let end = self.advance(end.unwrap_or(self.time + 1));
        self.complete_before(worker, end);
        self.shared.clock.finish();
    }

    /// A stop: completes every timestamp fed, commits it, and closes. The waiting
    /// deltas stay in the delta store for the next start (closing the inputs would
    /// dead-letter them, so nothing after this point is written).
    fn stop(&mut self, worker: &mut Worker) {
        let end = self.advance(self.clock().batch(self.time, self.batches));
        self.complete_before(worker, end);
        self.flush_checkpoints();
        self.book.closing.set(true);
        self.shared.clock.finish();
    }
}

/// How long a wait has made no progress.
struct Stuck {
    since: Instant,
}

impl Stuck {
    fn new() -> Self {
        Stuck {
            since: Instant::now(),
        }
    }
}

/// Dispatches the pending requests and waits for answers while any are in flight.
fn collect_answers(dispatcher: &RefCell<Dispatcher>, worker: &mut Worker) -> Feed {
    let mut feed = Feed {
        results: dispatcher.borrow_mut().dispatch(),
        ..Feed::default()
    };
    while feed.is_empty() && !dispatcher.borrow().is_idle() {
        let more = dispatcher.borrow_mut().collect(Duration::from_millis(20));
        feed.records.extend(more.records);
        feed.results.extend(more.results);
        worker.step();
    }
    feed
}

/// The last position read in each partition, as a checkpoint lists them.
fn position_list(positions: &BTreeMap<u32, u64>) -> Vec<SourcePos> {
    positions
        .iter()
        .map(|(&part, &offset)| SourcePos { part, offset })
        .collect()
}
