//! The view sink operator: gathers the view collections on worker 0 and, when all of
//! them have completed a timestamp, hands that timestamp's net changes to a callback
//! as one [`ViewBatch`] (which the replay sends to its writer thread).

use std::collections::BTreeMap;

use differential_dataflow::consolidation::consolidate_updates;
use studio_model::{Keyed, KeyedChanges, ViewBatch};
use studio_operators::stash::Stash;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::progress::frontier::MutableAntichain;

use crate::render::{Time, ViewStreams};

type Updates<R> = Stash<Time, (R, Time, isize)>;
type Pending = BTreeMap<Time, ViewBatch>;

/// Moves the completed times of a keyed view into `pending`, as net upserts and deletes.
fn take_keyed<R: Keyed + Ord>(
    stash: &mut Updates<R>,
    frontier: &MutableAntichain<Time>,
    pending: &mut Pending,
    field: fn(&mut ViewBatch) -> &mut KeyedChanges<R>,
) {
    for (_, mut updates) in stash.take_complete(frontier) {
        consolidate_updates(&mut updates);
        let Some(time) = updates.first().map(|u| u.1) else {
            continue;
        };
        *field(pending.entry(time).or_default()) =
            KeyedChanges::from_updates(updates.into_iter().map(|(row, _, diff)| (row, diff)));
    }
}

/// Moves the completed times of an insert-only view into `pending`.
fn take_inserts<R>(
    stash: &mut Updates<R>,
    frontier: &MutableAntichain<Time>,
    pending: &mut Pending,
    field: fn(&mut ViewBatch) -> &mut Vec<R>,
) {
    for (_, updates) in stash.take_complete(frontier) {
        for (row, time, diff) in updates {
            debug_assert_eq!(diff, 1, "insert-only views only grow");
            field(pending.entry(time).or_default()).push(row);
        }
    }
}

/// Sends every completed timestamp's changes to `on_batch`, in time order, on worker 0.
/// Times with no change produce no batch.
pub fn sink_views(views: ViewStreams<'_>, mut on_batch: impl FnMut(Time, ViewBatch) + 'static) {
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

    builder.build(move |_| {
        let (mut blobs, mut processed, mut applied, mut dead) =
            (Stash::new(0), Stash::new(0), Stash::new(0), Stash::new(0));
        let (mut edges, mut rejected, mut reach, mut depth, mut user_depth) = (
            Stash::new(0),
            Stash::new(0),
            Stash::new(0),
            Stash::new(0),
            Stash::new(0),
        );
        let mut pending = Pending::new();
        move |frontiers| {
            blobs.absorb(&mut blobs_in);
            processed.absorb(&mut processed_in);
            applied.absorb(&mut applied_in);
            dead.absorb(&mut dead_in);
            edges.absorb(&mut edges_in);
            rejected.absorb(&mut rejected_in);
            reach.absorb(&mut reach_in);
            depth.absorb(&mut depth_in);
            user_depth.absorb(&mut user_depth_in);

            take_keyed(&mut blobs, &frontiers[0], &mut pending, |b| &mut b.blobs);
            take_keyed(&mut processed, &frontiers[1], &mut pending, |b| {
                &mut b.processed
            });
            take_inserts(&mut applied, &frontiers[2], &mut pending, |b| {
                &mut b.applied
            });
            take_inserts(&mut dead, &frontiers[3], &mut pending, |b| {
                &mut b.dead_letters
            });
            take_keyed(&mut edges, &frontiers[4], &mut pending, |b| &mut b.edges);
            take_inserts(&mut rejected, &frontiers[5], &mut pending, |b| {
                &mut b.rejected_edges
            });
            take_keyed(&mut reach, &frontiers[6], &mut pending, |b| &mut b.reach);
            take_keyed(&mut depth, &frontiers[7], &mut pending, |b| &mut b.depth);
            take_keyed(&mut user_depth, &frontiers[8], &mut pending, |b| {
                &mut b.user_depth
            });

            while let Some(entry) = pending.first_entry() {
                let time = *entry.key();
                if frontiers.iter().any(|f| f.less_equal(&time)) {
                    break;
                }
                let mut batch = entry.remove();
                batch.dead_letters.sort_by_key(|dl| dl.pos);
                batch.rejected_edges.sort();
                on_batch(time, batch);
            }
        }
    });
}
