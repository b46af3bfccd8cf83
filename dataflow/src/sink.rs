//! The view sink operator: gathers the view collections on worker 0 and, when all of
//! them have completed a timestamp, hands that timestamp's net changes to a callback
//! as one [`ViewBatch`] (which the replay sends to its writer thread).

use std::collections::BTreeMap;

use differential_dataflow::consolidation::consolidate_updates;
use rustc_hash::FxHashSet;
use studio_model::{Uuid, ViewBatch};
use studio_operators::stash::Stash;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::render::{Time, ViewStreams};

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

    builder.build(move |_| {
        let (mut blobs, mut processed, mut applied, mut dead) =
            (Stash::new(0), Stash::new(0), Stash::new(0), Stash::new(0));
        let mut pending: BTreeMap<Time, ViewBatch> = BTreeMap::new();
        move |frontiers| {
            blobs.absorb(&mut blobs_in);
            processed.absorb(&mut processed_in);
            applied.absorb(&mut applied_in);
            dead.absorb(&mut dead_in);

            for (_, mut updates) in blobs.take_complete(&frontiers[0]) {
                consolidate_updates(&mut updates);
                let Some(time) = updates.first().map(|u| u.1) else {
                    continue;
                };
                let batch = pending.entry(time).or_default();
                let mut kept = FxHashSet::default();
                let mut gone = Vec::new();
                for (row, _, diff) in updates {
                    if diff > 0 {
                        kept.insert(row.blob_id);
                        batch.blob_upserts.push(row);
                    } else {
                        gone.push(row.blob_id);
                    }
                }
                batch
                    .blob_deletes
                    .extend(gone.into_iter().filter(|id| !kept.contains(id)));
            }
            for (_, mut updates) in processed.take_complete(&frontiers[1]) {
                consolidate_updates(&mut updates);
                let Some(time) = updates.first().map(|u| u.1) else {
                    continue;
                };
                let batch = pending.entry(time).or_default();
                let mut kept: FxHashSet<(Uuid, String)> = FxHashSet::default();
                let mut gone = Vec::new();
                for (row, _, diff) in updates {
                    if diff > 0 {
                        kept.insert((row.blob_id, row.provider_id.clone()));
                        batch.processed_upserts.push(row);
                    } else {
                        gone.push((row.blob_id, row.provider_id));
                    }
                }
                batch
                    .processed_deletes
                    .extend(gone.into_iter().filter(|key| !kept.contains(key)));
            }
            for (_, updates) in applied.take_complete(&frontiers[2]) {
                for (row, time, diff) in updates {
                    debug_assert_eq!(diff, 1, "deltas_applied is insert-only");
                    pending.entry(time).or_default().applied.push(row);
                }
            }
            for (_, updates) in dead.take_complete(&frontiers[3]) {
                for (letter, time, _) in updates {
                    pending.entry(time).or_default().dead_letters.push(letter);
                }
            }

            while let Some(entry) = pending.first_entry() {
                let time = *entry.key();
                if frontiers.iter().any(|f| f.less_equal(&time)) {
                    break;
                }
                let mut batch = entry.remove();
                batch.dead_letters.sort_by_key(|dl| dl.pos);
                on_batch(time, batch);
            }
        }
    });
}
