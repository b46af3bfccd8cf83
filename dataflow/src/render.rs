//! The dataflow of one worker: inputs -> parse -> dedup -> apply -> view streams.
//! Only wiring: every rule lives in `studio-model` and `studio-operators`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use differential_dataflow::{AsCollection, VecCollection};
use studio_model::{AppliedRow, BlobRow, DeadLetter, Delta, ProcessedRow};
use studio_operators::{ApplyDeltas, DedupById};
use timely::dataflow::Scope;
use timely::dataflow::operators::Inspect;
use timely::dataflow::operators::vec::input::Handle;
use timely::dataflow::operators::vec::input::Input;

/// Timestamps are batch numbers of the source (records `t * batch_records ..`).
pub type Time = u64;

/// Where a worker feeds records.
pub struct Inputs {
    /// Deltas that passed S1.
    pub deltas: Handle<Time, Delta>,
    /// Records that did not, as dead letters `(letter, time, +1)`.
    pub malformed: Handle<Time, (DeadLetter, Time, isize)>,
}

/// The maintained views, as collections.
pub struct ViewStreams<'scope> {
    /// `blobs`.
    pub blobs: VecCollection<'scope, Time, BlobRow>,
    /// `processed_by`.
    pub processed: VecCollection<'scope, Time, ProcessedRow>,
    /// `deltas_applied`.
    pub applied: VecCollection<'scope, Time, AppliedRow>,
    /// `dead_letters`: malformed records and rejected deltas.
    pub dead_letters: VecCollection<'scope, Time, DeadLetter>,
}

/// Builds the delta-to-views dataflow in `scope`; `duplicates` counts S4.2 repeats.
pub fn render<'scope>(
    scope: Scope<'scope, Time>,
    duplicates: Arc<AtomicU64>,
) -> (Inputs, ViewStreams<'scope>) {
    let (deltas_in, deltas) = scope.new_input::<Delta>();
    let (malformed_in, malformed) = scope.new_input::<(DeadLetter, Time, isize)>();

    let (unique, repeats) = deltas.dedup_by_id();
    repeats.inspect_core(move |event| {
        if let Ok((_, batch)) = event {
            duplicates.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
    });
    let applied = unique.apply_deltas();
    let malformed = malformed.as_collection();

    (
        Inputs {
            deltas: deltas_in,
            malformed: malformed_in,
        },
        ViewStreams {
            blobs: applied.blobs,
            processed: applied.processed,
            applied: applied.applied,
            dead_letters: applied.dead_letters.concat(malformed),
        },
    )
}
