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
    AppliedRow, BlobFacts, BlobLedger, BlobRow, DeadLetter, Delta, EdgeProposal, Effects,
    ProcessedRow, Settled, SourcePos, Uuid, WaitingRow,
};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::{OutputBuilder, OutputBuilderSession};
use timely::order::TotalOrder;
use timely::progress::{PathSummary, Timestamp};

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
    pub keep_records: bool,
}

/// An edge proposal and its place in acceptance order: the log position of the delta
/// whose arrival made it apply (a delta that waited for a gap applies when the delta
/// filling the gap arrives), then its rank among the edges that arrival accepted.
pub type OrderedEdge = ((SourcePos, u32), EdgeProposal);

/// Applies deltas to blob state.
pub trait ApplyDeltas<'scope, T: Timestamp> {
    /// Folds the (deduplicated) deltas into per-blob state.
    fn apply_deltas(self, options: ApplyOptions<T>) -> AppliedStreams<'scope, T>;
}

const BLOBS: usize = 0;
const PROCESSED: usize = 1;
const APPLIED: usize = 2;
const DEAD: usize = 3;
const EDGES: usize = 4;
const CREATED: usize = 5;
const FACTS: usize = 6;
const SETTLED: usize = 7;
const WAITING: usize = 8;

type Out<D, T> = CapacityContainerBuilder<Vec<(D, T, isize)>>;

impl<'scope, T: Timestamp + TotalOrder> ApplyDeltas<'scope, T> for StreamVec<'scope, T, Delta> {
    fn apply_deltas(self, options: ApplyOptions<T>) -> AppliedStreams<'scope, T> {
        let ApplyOptions {
            track_facts,
            gap_timeout,
            keep_records,
        } = options;
        let mut builder = OperatorBuilder::new("ApplyDeltas".to_owned(), self.scope());
        let mut input = builder.new_input(self, Exchange::new(|d: &Delta| d.blob_route()));
        let (blobs_out, blobs) = builder.new_output();
        let (processed_out, processed) = builder.new_output();
        let (applied_out, applied) = builder.new_output();
        let (dead_out, dead_letters) = builder.new_output();
        let (edges_out, edges) = builder.new_output();
        let (created_out, created) = builder.new_output();
        let mut blobs_out = OutputBuilder::<_, Out<BlobRow, T>>::from(blobs_out);
        let mut processed_out = OutputBuilder::<_, Out<ProcessedRow, T>>::from(processed_out);
        let mut applied_out = OutputBuilder::<_, Out<AppliedRow, T>>::from(applied_out);
        let mut dead_out = OutputBuilder::<_, Out<DeadLetter, T>>::from(dead_out);
        let mut edges_out =
            OutputBuilder::<_, CapacityContainerBuilder<Vec<OrderedEdge>>>::from(edges_out);
        let mut created_out = OutputBuilder::<_, Out<(Uuid, Uuid), T>>::from(created_out);
        let (facts_out, facts) = builder.new_output();
        let (settled_out, settled) = builder.new_output();
        let mut facts_out =
            OutputBuilder::<_, CapacityContainerBuilder<Vec<BlobFacts>>>::from(facts_out);
        let mut settled_out =
            OutputBuilder::<_, CapacityContainerBuilder<Vec<Settled>>>::from(settled_out);
        let (waiting_out, waiting_rows) = builder.new_output();
        let mut waiting_out = OutputBuilder::<_, Out<WaitingRow, T>>::from(waiting_out);

        builder.build(move |initial_caps| {
            // Held at the input frontier, to dead-letter unfilled gaps when the input ends.
            let mut end_caps = Some(initial_caps);
            let mut stash = Stash::new(WAITING + 1);
            let mut facts = Vec::new();
            let mut ledgers: FxHashMap<Uuid, BlobLedger> = FxHashMap::default();
            // Blobs with deltas waiting: since when their gap is open, at which version.
            let mut waiting: FxHashMap<Uuid, (T, u64)> = FxHashMap::default();
            let mut touched: Vec<Uuid> = Vec::new();
            let mut blob_changes = Vec::new();
            let mut processed_changes = Vec::new();

            move |frontiers| {
                stash.absorb(&mut input);
                let mut blobs_session = blobs_out.activate();
                let mut processed_session = processed_out.activate();
                let mut applied_session = applied_out.activate();
                let mut dead_session = dead_out.activate();
                let mut edges_session = edges_out.activate();
                let mut created_session = created_out.activate();
                let mut facts_session = facts_out.activate();
                let mut settled_session = settled_out.activate();
                let mut waiting_session = waiting_out.activate();

                for (caps, mut deltas) in stash.take_complete(&frontiers[0]) {
                    let time = caps[0].time().clone();
                    deltas.sort_by_key(|d| d.pos);
                    let mut fx = Effects::default();
                    let mut edges: Vec<OrderedEdge> = Vec::new();
                    for delta in deltas {
                        let (blob, pos) = (delta.blob_id, delta.pos);
                        let ledger = ledgers.entry(blob).or_insert_with(|| {
                            if track_facts {
                                BlobLedger::tracking_facts()
                            } else {
                                BlobLedger::default()
                            }
                        });
                        ledger.offer(delta, &mut fx);
                        edges.extend(
                            fx.edges
                                .drain(..)
                                .enumerate()
                                .map(|(rank, e)| ((pos, rank as u32), e)),
                        );
                        touched.push(blob);
                    }
                    for blob in touched.drain(..) {
                        let ledger = ledgers.get_mut(&blob).expect("touched blobs have ledgers");
                        if ledger.pending_len() == 0 {
                            waiting.remove(&blob);
                        } else if waiting
                            .get(&blob)
                            .is_none_or(|(_, v)| *v != ledger.version())
                        {
                            // A new gap (or a gap that moved up): its clock starts now.
                            waiting.insert(blob, (time.clone(), ledger.version()));
                        }
                        let before = blob_changes.len();
                        ledger.flush(&mut blob_changes, &mut processed_changes);
                        if track_facts && blob_changes.len() > before {
                            facts.extend(ledger.facts());
                        }
                    }
                    facts_session
                        .session(&caps[FACTS])
                        .give_iterator(facts.drain(..));
                    settled_session
                        .session(&caps[SETTLED])
                        .give_iterator(std::mem::take(&mut fx.settled).into_iter());
                    waiting_session.session(&caps[WAITING]).give_iterator(
                        std::mem::take(&mut fx.waiting)
                            .into_iter()
                            .map(|(row, diff)| (row, time.clone(), diff)),
                    );
                    blobs_session.session(&caps[BLOBS]).give_iterator(
                        blob_changes
                            .drain(..)
                            .map(|(row, diff)| (row, time.clone(), diff)),
                    );
                    processed_session.session(&caps[PROCESSED]).give_iterator(
                        processed_changes
                            .drain(..)
                            .map(|(row, diff)| (row, time.clone(), diff)),
                    );
                    if !keep_records {
                        for row in &mut fx.applied {
                            row.record = None;
                        }
                    }
                    applied_session
                        .session(&caps[APPLIED])
                        .give_iterator(fx.applied.into_iter().map(|row| (row, time.clone(), 1)));
                    dead_session
                        .session(&caps[DEAD])
                        .give_iterator(fx.dead_letters.into_iter().map(|dl| (dl, time.clone(), 1)));
                    edges_session
                        .session(&caps[EDGES])
                        .give_iterator(edges.into_iter());
                    created_session
                        .session(&caps[CREATED])
                        .give_iterator(fx.created.into_iter().map(|blob| (blob, time.clone(), 1)));
                }

                let frontier = frontiers[0].frontier();
                match frontier.first() {
                    Some(now) => {
                        if let Some(caps) = end_caps.as_mut() {
                            for cap in caps.iter_mut() {
                                cap.downgrade(now);
                            }
                            // Gaps open for longer than the timeout (S4.4).
                            let expired: Vec<Uuid> = match &gap_timeout {
                                Some(timeout) => waiting
                                    .iter()
                                    .filter(|(_, (since, _))| {
                                        timeout.results_in(since).is_some_and(|d| d.less_equal(now))
                                    })
                                    .map(|(blob, _)| *blob)
                                    .collect(),
                                None => Vec::new(),
                            };
                            if !expired.is_empty() {
                                expire(
                                    expired,
                                    &mut waiting,
                                    &mut ledgers,
                                    caps,
                                    &mut dead_session,
                                    &mut waiting_session,
                                );
                            }
                        }
                    }
                    None if stash.is_empty() => {
                        if let Some(caps) = end_caps.take() {
                            let blobs: Vec<Uuid> = waiting.keys().copied().collect();
                            expire(
                                blobs,
                                &mut waiting,
                                &mut ledgers,
                                &caps,
                                &mut dead_session,
                                &mut waiting_session,
                            );
                        }
                    }
                    None => {}
                }
            }
        });

        AppliedStreams {
            blobs: blobs.as_collection(),
            processed: processed.as_collection(),
            applied: applied.as_collection(),
            dead_letters: dead_letters.as_collection(),
            edges,
            created: created.as_collection(),
            facts,
            settled,
            waiting: waiting_rows.as_collection(),
        }
    }
}

impl<T: Timestamp> Default for ApplyOptions<T> {
    fn default() -> Self {
        ApplyOptions {
            track_facts: false,
            gap_timeout: None,
            keep_records: false,
        }
    }
}

/// Dead-letters the waiting deltas of `blobs` as gaps never filled (S4.4), in log
/// order, at the time of `caps`.
fn expire<T: Timestamp>(
    mut blobs: Vec<Uuid>,
    waiting: &mut FxHashMap<Uuid, (T, u64)>,
    ledgers: &mut FxHashMap<Uuid, BlobLedger>,
    caps: &[Capability<T>],
    dead: &mut OutputBuilderSession<'_, T, Out<DeadLetter, T>>,
    waiting_rows: &mut OutputBuilderSession<'_, T, Out<WaitingRow, T>>,
) {
    let mut fx = Effects::default();
    blobs.sort_unstable();
    for blob in blobs {
        waiting.remove(&blob);
        if let Some(ledger) = ledgers.get_mut(&blob) {
            ledger.expire_pending(&mut fx);
        }
    }
    let time = caps[DEAD].time().clone();
    fx.dead_letters.sort_by_key(|dl| dl.pos);
    dead.session(&caps[DEAD])
        .give_iterator(fx.dead_letters.into_iter().map(|dl| (dl, time.clone(), 1)));
    waiting_rows.session(&caps[WAITING]).give_iterator(
        fx.waiting
            .into_iter()
            .map(|(row, diff)| (row, time.clone(), diff)),
    );
}
