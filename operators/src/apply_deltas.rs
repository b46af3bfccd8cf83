//! [`ApplyDeltas`]: the keyed, ordered fold of deltas into blob state (SPEC S3, S4).
//!
//! ```text
//!  deltas (deduplicated) --exchange by blob_id--> [ ApplyDeltas ] --> blobs         (collection, -old +new)
//!                                                  ledger per blob --> processed_by  (collection, -old +new)
//!                                                                  --> applied       (insert-only)
//!                                                                  --> dead letters  (insert-only)
//! ```
//!
//! Like Materialize's UPSERT, the state lives in the operator (a [`BlobLedger`] per
//! blob: current document, what `revert` needs, deltas waiting for a gap) rather than
//! being re-folded from history per change. When a timestamp completes, its deltas are
//! offered in log order; then each touched blob emits one retraction and one insertion,
//! so a batch costs one row per touched blob however many deltas it held.
//!
//! Deltas still waiting when the input ends are dead-lettered as `S4.4 version gap` at
//! the last timestamp the input reached: a bounded replay advances its input to one
//! final timestamp before closing it, so that time is the same on every worker count.
//! With a gap timeout (the service), a blob whose gap stays open that long (in
//! timestamp units: the service's timestamps are milliseconds) has its waiting deltas
//! dead-lettered at the first timestamp the input reaches past the deadline. The
//! `waiting` output lists the deltas waiting at each time, for the delta store.

use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::FxHashMap;
use studio_model::{
    AppliedRow, BlobFacts, BlobLedger, BlobRow, DeadLetter, Delta, EdgeProposal, Effects, History,
    ProcessedRow, Settled, SourcePos, Uuid, WaitingRow,
};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::order::TotalOrder;
use timely::progress::{PathSummary, Timestamp};

use crate::ports::{Records, Updates, give, give_updates, ports};
use crate::stash::Stash;

/// The outputs of [`ApplyDeltas`].
pub struct AppliedStreams<'scope, T: Timestamp> {
    /// The `blobs` view: one row per created blob.
    pub blobs: VecCollection<'scope, T, BlobRow>,
    /// The `processed_by` view.
    pub processed: VecCollection<'scope, T, ProcessedRow>,
    /// Accepted deltas (`deltas_applied`), each once.
    pub applied: VecCollection<'scope, T, AppliedRow>,
    /// Rejected deltas, each once.
    pub dead_letters: VecCollection<'scope, T, DeadLetter>,
    /// Edges proposed by accepted deltas, for the cycle guard, each with its place in
    /// the acceptance order (the same on every worker count).
    pub edges: StreamVec<'scope, T, OrderedEdge>,
    /// `(blob_id, owner)` of every created blob, once (insert-only: blobs are never
    /// removed). Cheaper to join against than `blobs`, which changes with every edit.
    pub created: VecCollection<'scope, T, (Uuid, Uuid)>,
    /// With `track_facts`: each touched blob's [`BlobFacts`] once per timestamp.
    pub facts: StreamVec<'scope, T, BlobFacts>,
    /// With `track_facts`: what accepted provider outputs settle.
    pub settled: StreamVec<'scope, T, Settled>,
    /// The deltas waiting for a gap (S4.1), `+1` when one starts waiting and `-1` when
    /// it applies or becomes a dead letter.
    pub waiting: VecCollection<'scope, T, WaitingRow>,
}

/// How [`ApplyDeltas`] runs.
#[derive(Clone, Debug)]
pub struct ApplyOptions<T: Timestamp> {
    /// Also emit what provider triggers need (`facts`, `settled`); else those stay
    /// empty.
    pub track_facts: bool,
    /// Dead-letter a blob's waiting deltas once its gap has stayed open this long
    /// (S4.4); `None` waits until the input ends.
    pub gap_timeout: Option<T::Summary>,
    /// Keep each accepted delta's full record in its `applied` row (for the delta
    /// store); without it the record is dropped as soon as the delta applies.
    pub store_records: bool,
}

/// The target of the `delta.apply` span [`ApplyDeltas`] opens around each delta it
/// offers (at `debug` level: a subscriber enables it on purpose, e.g. for traces).
pub const DELTA_SPAN_TARGET: &str = "studio_operators::delta";

/// An edge proposal and its place in acceptance order: the log position of the delta
/// whose arrival made it apply (a delta that waited for a gap applies when the delta
/// filling the gap arrives), then its rank among the edges that arrival accepted.
pub type OrderedEdge = ((SourcePos, u32), EdgeProposal);

/// Applies deltas to blob state.
pub trait ApplyDeltas<'scope, T: Timestamp> {
    /// Folds the (deduplicated) deltas into per-blob state.
    fn apply_deltas(self, options: ApplyOptions<T>) -> AppliedStreams<'scope, T>;
}

ports! {
    AppliedStreams;
    /// `blobs`.
    blobs: Updates<BlobRow, T> => AsCollection::as_collection,
    /// `processed_by`.
    processed: Updates<ProcessedRow, T> => AsCollection::as_collection,
    /// `deltas_applied`.
    applied: Updates<AppliedRow, T> => AsCollection::as_collection,
    /// Rejected deltas.
    dead_letters: Updates<DeadLetter, T> => AsCollection::as_collection,
    /// Proposed edges in acceptance order.
    edges: Records<OrderedEdge> => std::convert::identity,
    /// Created blobs and their owners.
    created: Updates<(Uuid, Uuid), T> => AsCollection::as_collection,
    /// Touched blobs' facts.
    facts: Records<BlobFacts> => std::convert::identity,
    /// Settled provider outputs.
    settled: Records<Settled> => std::convert::identity,
    /// Deltas waiting for a gap.
    waiting: Updates<WaitingRow, T> => AsCollection::as_collection,
}

impl<'scope, T: Timestamp + TotalOrder> ApplyDeltas<'scope, T> for StreamVec<'scope, T, Delta> {
    fn apply_deltas(self, options: ApplyOptions<T>) -> AppliedStreams<'scope, T> {
        let mut builder = OperatorBuilder::new("ApplyDeltas".to_owned(), self.scope());
        let mut input = builder.new_input(self, Exchange::new(|d: &Delta| d.blob_route()));
        let (mut ports, streams) = Ports::declare(&mut builder);
        let mut stash = Stash::new(builder.shape().outputs());
        builder.build(move |initial_caps| {
            let mut fold = Fold::new(options, initial_caps);
            move |frontiers| {
                stash.absorb(&mut input);
                let mut out = ports.activate();
                for (caps, deltas) in stash.take_complete(&frontiers[0]) {
                    fold.apply_time(&caps, deltas, &mut out);
                }
                match frontiers[0].frontier().first() {
                    Some(now) => fold.advance_to(now, &mut out),
                    None if stash.is_empty() => fold.finish(&mut out),
                    None => {}
                }
            }
        });
        streams
    }
}

impl<T: Timestamp> Default for ApplyOptions<T> {
    fn default() -> Self {
        ApplyOptions {
            track_facts: false,
            gap_timeout: None,
            store_records: false,
        }
    }
}

/// The state of one worker's [`ApplyDeltas`]: a ledger per blob routed to it.
struct Fold<T: Timestamp> {
    options: ApplyOptions<T>,
    /// Held at the input frontier, to dead-letter unfilled gaps when the input ends.
    end_caps: Option<Vec<Capability<T>>>,
    ledgers: FxHashMap<Uuid, BlobLedger>,
    /// The ledgers' revert history, in a spill file: the patches of a long log need not
    /// stay in memory.
    history: History,
    /// Blobs with deltas waiting: since when their gap is open, at which version.
    waiting: FxHashMap<Uuid, (T, u64)>,
    /// Blobs the current time's deltas went to, in arrival order (repeats allowed).
    touched: Vec<Uuid>,
    /// Rows flushed at the current time, emitted at its end.
    blob_changes: Vec<(BlobRow, isize)>,
    processed_changes: Vec<(ProcessedRow, isize)>,
    facts: Vec<BlobFacts>,
}

impl<T: Timestamp + TotalOrder> Fold<T> {
    fn new(options: ApplyOptions<T>, initial_caps: Vec<Capability<T>>) -> Self {
        Fold {
            options,
            end_caps: Some(initial_caps),
            ledgers: FxHashMap::default(),
            history: History::spilled(),
            waiting: FxHashMap::default(),
            touched: Vec::new(),
            blob_changes: Vec::new(),
            processed_changes: Vec::new(),
            facts: Vec::new(),
        }
    }

    /// Applies the deltas of one completed time and emits what they changed.
    fn apply_time(&mut self, caps: &[Capability<T>], deltas: Vec<Delta>, out: &mut Sessions<T>) {
        let time = caps[0].time().clone();
        let mut fx = Effects::default();
        let edges = self.offer_in_log_order(deltas, &mut fx);
        self.flush_touched(&time);
        self.emit(caps, &time, fx, edges, out);
    }

    /// Offers `deltas` to their blobs' ledgers in log order; returns the edges they
    /// proposed, ranked.
    fn offer_in_log_order(&mut self, mut deltas: Vec<Delta>, fx: &mut Effects) -> Vec<OrderedEdge> {
        deltas.sort_by_key(|d| d.pos);
        let track_facts = self.options.track_facts;
        let mut edges = Vec::new();
        for delta in deltas {
            let (blob, pos) = (delta.blob_id, delta.pos);
            let ledger = self
                .ledgers
                .entry(blob)
                .or_insert_with(|| BlobLedger::new(self.history.clone(), track_facts));
            let span = tracing::debug_span!(
                target: DELTA_SPAN_TARGET,
                "delta.apply",
                delta.id = %delta.id,
                blob.id = %blob,
                operation = delta.operation.as_str(),
            );
            span.in_scope(|| ledger.offer(delta, fx));
            edges.extend(
                fx.edges
                    .drain(..)
                    .enumerate()
                    .map(|(rank, e)| ((pos, rank as u32), e)),
            );
            self.touched.push(blob);
        }
        edges
    }

    /// Starts or stops the gap clocks of the touched blobs (at `time`) and collects
    /// their row changes (and facts) once each.
    fn flush_touched(&mut self, time: &T) {
        for blob in self.touched.drain(..) {
            let ledger = self
                .ledgers
                .get_mut(&blob)
                .expect("touched blobs have ledgers");
            if ledger.pending_len() == 0 {
                self.waiting.remove(&blob);
            } else if self
                .waiting
                .get(&blob)
                .is_none_or(|(_, v)| *v != ledger.version())
            {
                // A new gap (or a gap that moved up): its clock starts now.
                self.waiting.insert(blob, (time.clone(), ledger.version()));
            }
            let before = self.blob_changes.len();
            ledger.flush(&mut self.blob_changes, &mut self.processed_changes);
            if self.options.track_facts && self.blob_changes.len() > before {
                self.facts.extend(ledger.facts());
            }
        }
    }

    /// Emits one time's effects and flushed rows on every port.
    fn emit(
        &mut self,
        caps: &[Capability<T>],
        time: &T,
        mut fx: Effects,
        edges: Vec<OrderedEdge>,
        out: &mut Sessions<T>,
    ) {
        give(&mut out.facts, caps, self.facts.drain(..));
        give(&mut out.settled, caps, fx.settled);
        give_updates(&mut out.waiting, caps, time, fx.waiting);
        give_updates(&mut out.blobs, caps, time, self.blob_changes.drain(..));
        let processed = self.processed_changes.drain(..);
        give_updates(&mut out.processed, caps, time, processed);
        if !self.options.store_records {
            for row in &mut fx.applied {
                row.record = None;
            }
        }
        give_updates(
            &mut out.applied,
            caps,
            time,
            fx.applied.into_iter().map(|r| (r, 1)),
        );
        let dead = fx.dead_letters.into_iter().map(|dl| (dl, 1));
        give_updates(&mut out.dead_letters, caps, time, dead);
        give(&mut out.edges, caps, edges);
        give_updates(
            &mut out.created,
            caps,
            time,
            fx.created.into_iter().map(|b| (b, 1)),
        );
    }

    /// The input reached `now`: holds the end capabilities there and dead-letters the
    /// gaps open for longer than the timeout (S4.4).
    fn advance_to(&mut self, now: &T, out: &mut Sessions<T>) {
        let Some(mut caps) = self.end_caps.take() else {
            return;
        };
        for cap in caps.iter_mut() {
            cap.downgrade(now);
        }
        let expired = self.expired_gaps(now);
        if !expired.is_empty() {
            self.expire(expired, &caps, out);
        }
        self.end_caps = Some(caps);
    }

    /// The blobs whose gap has been open for the timeout at `now`.
    fn expired_gaps(&self, now: &T) -> Vec<Uuid> {
        let Some(timeout) = &self.options.gap_timeout else {
            return Vec::new();
        };
        self.waiting
            .iter()
            .filter(|(_, (since, _))| timeout.results_in(since).is_some_and(|d| d.less_equal(now)))
            .map(|(blob, _)| *blob)
            .collect()
    }

    /// The input ended: every gap still open stays unfilled (S4.4).
    fn finish(&mut self, out: &mut Sessions<T>) {
        if let Some(caps) = self.end_caps.take() {
            let blobs: Vec<Uuid> = self.waiting.keys().copied().collect();
            self.expire(blobs, &caps, out);
        }
    }

    /// Dead-letters the waiting deltas of `blobs` as gaps never filled (S4.4), in log
    /// order, at the time of `caps`.
    fn expire(&mut self, mut blobs: Vec<Uuid>, caps: &[Capability<T>], out: &mut Sessions<T>) {
        let mut fx = Effects::default();
        blobs.sort_unstable();
        for blob in blobs {
            self.waiting.remove(&blob);
            if let Some(ledger) = self.ledgers.get_mut(&blob) {
                ledger.expire_pending(&mut fx);
            }
        }
        let time = caps[0].time().clone();
        fx.dead_letters.sort_by_key(|dl| dl.pos);
        let dead = fx.dead_letters.into_iter().map(|dl| (dl, 1));
        give_updates(&mut out.dead_letters, caps, &time, dead);
        give_updates(&mut out.waiting, caps, &time, fx.waiting);
    }
}
