//! The view sink operator: gathers the view collections on worker 0 and, when all of
//! them have completed a timestamp, hands that timestamp's net changes to a callback
//! as one [`ViewBatch`] (which the replay sends to its writer thread).
//!
//! Updates are grouped by their own timestamps, not by the timestamp of the message
//! that carried them: differential operators (`join`, `reduce`, `iterate`) may send
//! updates for later times under an earlier capability. A time is handed on only when
//! every input's frontier has passed it, so a batch is always one complete timestamp.

use std::collections::BTreeMap;

use differential_dataflow::consolidation::consolidate;
use studio_model::{Keyed, KeyedChanges, ViewBatch};
use timely::communication::Pull;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::Message;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::InputHandleCore;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::render::{Time, ViewStreams};

/// One view's updates, by their timestamps, until those are complete.
struct ByTime<R> {
    updates: BTreeMap<Time, Vec<(R, isize)>>,
}

impl<R: Ord> ByTime<R> {
    fn new() -> Self {
        ByTime {
            updates: BTreeMap::new(),
        }
    }

    /// Takes the waiting updates, and holds a capability for each time they carry
    /// until that time is handed on.
    fn absorb<P: Pull<Message<Time, Vec<(R, Time, isize)>>>>(
        &mut self,
        input: &mut InputHandleCore<Time, Vec<(R, Time, isize)>, P>,
        held: &mut Held,
    ) {
        input.for_each(|cap, data| {
            for (row, time, diff) in data.drain(..) {
                held.entry(time).or_insert_with(|| cap.delayed(&time, 0));
                self.updates.entry(time).or_default().push((row, diff));
            }
        });
    }

    fn first_time(&self) -> Option<Time> {
        self.updates.keys().next().copied()
    }

    /// The net changes of a keyed view at `time`.
    fn keyed(&mut self, time: Time) -> KeyedChanges<R>
    where
        R: Keyed,
    {
        let mut updates = self.updates.remove(&time).unwrap_or_default();
        consolidate(&mut updates);
        KeyedChanges::from_updates(updates)
    }

    /// The net changes at `time`, retractions first.
    fn changes(&mut self, time: Time) -> Vec<(R, isize)> {
        let mut updates = self.updates.remove(&time).unwrap_or_default();
        consolidate(&mut updates);
        updates.sort_by_key(|(_, diff)| *diff);
        updates
    }

    /// The rows an insert-only view gained at `time`.
    fn inserts(&mut self, time: Time) -> Vec<R> {
        let updates = self.updates.remove(&time).unwrap_or_default();
        debug_assert!(
            updates.iter().all(|(_, d)| *d == 1),
            "insert-only views only grow"
        );
        updates.into_iter().map(|(row, _)| row).collect()
    }
}

/// Capabilities held per time, so that the sink's (empty) output frontier passes a
/// time only once that time's batch was handed on.
type Held = BTreeMap<Time, Capability<Time>>;

/// Sends every completed timestamp's changes to `on_batch`, in time order, on worker 0.
/// Times with no change produce no batch. The returned stream carries nothing; its
/// frontier passes a time once `on_batch` has seen it (probe it to wait for that).
pub fn sink_views<'scope>(
    views: ViewStreams<'scope>,
    mut on_batch: impl FnMut(Time, ViewBatch) + 'static,
) -> StreamVec<'scope, Time, ()> {
    let scope = views.blobs.inner.scope();
    let mut builder = OperatorBuilder::new("ViewSink".to_owned(), scope);
    // One writer: every change goes to worker 0.
    let mut blobs_in = builder.new_input(views.blobs.inner, Exchange::new(|_: &_| 0));
    let mut processed_in = builder.new_input(views.processed.inner, Exchange::new(|_: &_| 0));
    let mut applied_in = builder.new_input(views.applied.inner, Exchange::new(|_: &_| 0));
    let mut dead_in = builder.new_input(views.dead_letters.inner, Exchange::new(|_: &_| 0));
    let mut edges_in = builder.new_input(views.edges.inner, Exchange::new(|_: &_| 0));
    let mut rejected_in = builder.new_input(views.rejected_edges.inner, Exchange::new(|_: &_| 0));
    let mut reach_in = builder.new_input(views.reach.inner, Exchange::new(|_: &_| 0));
    let mut depth_in = builder.new_input(views.depth.inner, Exchange::new(|_: &_| 0));
    let mut user_depth_in = builder.new_input(views.user_depth.inner, Exchange::new(|_: &_| 0));
    let mut requests_in = builder.new_input(views.requests.inner, Exchange::new(|_: &_| 0));
    let mut processing_in = builder.new_input(views.processing.inner, Exchange::new(|_: &_| 0));
    let mut waiting_in = builder.new_input(views.waiting.inner, Exchange::new(|_: &_| 0));

    let (_output, done) = builder.new_output::<Vec<()>>();

    builder.build(move |_| {
        let mut held = Held::new();
        let (mut blobs, mut processed, mut applied, mut dead) =
            (ByTime::new(), ByTime::new(), ByTime::new(), ByTime::new());
        let (mut edges, mut rejected, mut reach, mut depth, mut user_depth) = (
            ByTime::new(),
            ByTime::new(),
            ByTime::new(),
            ByTime::new(),
            ByTime::new(),
        );
        let (mut requests, mut processing, mut waiting) =
            (ByTime::new(), ByTime::new(), ByTime::new());
        move |frontiers| {
            blobs.absorb(&mut blobs_in, &mut held);
            processed.absorb(&mut processed_in, &mut held);
            applied.absorb(&mut applied_in, &mut held);
            dead.absorb(&mut dead_in, &mut held);
            edges.absorb(&mut edges_in, &mut held);
            rejected.absorb(&mut rejected_in, &mut held);
            reach.absorb(&mut reach_in, &mut held);
            depth.absorb(&mut depth_in, &mut held);
            user_depth.absorb(&mut user_depth_in, &mut held);
            requests.absorb(&mut requests_in, &mut held);
            processing.absorb(&mut processing_in, &mut held);
            waiting.absorb(&mut waiting_in, &mut held);

            loop {
                let next = [
                    blobs.first_time(),
                    processed.first_time(),
                    applied.first_time(),
                    dead.first_time(),
                    edges.first_time(),
                    rejected.first_time(),
                    reach.first_time(),
                    depth.first_time(),
                    user_depth.first_time(),
                    requests.first_time(),
                    processing.first_time(),
                    waiting.first_time(),
                ]
                .into_iter()
                .flatten()
                .min();
                let Some(time) = next else { break };
                if frontiers.iter().any(|f| f.less_equal(&time)) {
                    break;
                }
                let mut batch = ViewBatch {
                    blobs: blobs.keyed(time),
                    processed: processed.keyed(time),
                    edges: edges.keyed(time),
                    reach: reach.keyed(time),
                    depth: depth.keyed(time),
                    user_depth: user_depth.keyed(time),
                    applied: applied.inserts(time),
                    rejected_edges: rejected.inserts(time),
                    dead_letters: dead.inserts(time),
                    requests: requests.changes(time),
                    processing: processing.inserts(time),
                    events: Vec::new(),
                    waiting: waiting.keyed(time),
                    checkpoint: None,
                };
                batch.dead_letters.sort_by_key(|dl| dl.pos);
                batch.rejected_edges.sort();
                batch
                    .processing
                    .sort_by_key(|r| (r.finished_at, r.request_id));
                if !batch.is_empty() {
                    on_batch(time, batch);
                }
                held.remove(&time);
            }
        }
    });
    done
}
