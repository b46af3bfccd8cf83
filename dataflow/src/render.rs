//! The dataflow of one worker: inputs -> parse -> dedup -> apply -> view streams.
//! Only wiring: every rule lives in `studio-model` and `studio-operators`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use differential_dataflow::{AsCollection, VecCollection};
use studio_model::access::{InputRecord, parse_input};
use studio_model::{DeadLetter, ProcessingResult, SourcePos, Uuid};
use studio_operators::{
    ApplyDeltas, ApplyOptions, Authorize, CycleGuard, DagLimits, DagViews, DedupById,
    PendingTriggers, ProviderChange,
};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Concat;
use timely::dataflow::operators::Inspect;
use timely::dataflow::operators::OkErr;
use timely::dataflow::operators::Operator;
use timely::dataflow::operators::generic::operator::empty;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::vec::input::Handle;
use timely::dataflow::operators::vec::input::Input;
use timely::dataflow::{Scope, StreamVec};

/// A timestamp: a totally ordered point in the source's progress, whose meaning is the
/// pipeline's [`Clock`](crate::pipeline::Clock): batch numbers times 2^16 in a replay,
/// wall-clock milliseconds in the service. The operators only rely on the order, and
/// order records within one timestamp by their [`SourcePos`].
pub type Time = u64;

/// Where a worker feeds records.
pub struct Inputs {
    /// Raw records, from any source and from the providers, parsed in the dataflow on
    /// every worker (exchanged by position): a single reader still parses in parallel.
    pub records: Handle<Time, (SourcePos, Vec<u8>)>,
    /// Delta ids known to have been read, without their deltas: at a restart, the
    /// deltas that expired in a gap (S4.4), whose copies stay duplicates (S4.2).
    pub known_ids: Handle<Time, Uuid>,
    /// Provider registrations and removals (S5.3).
    pub providers: Handle<Time, ProviderChange>,
    /// Provider workers' answers (S5.7).
    pub results: Handle<Time, (ProcessingResult, Time, isize)>,
}

impl Inputs {
    /// Advances every input to `time`.
    pub fn advance_to(&mut self, time: Time) {
        self.records.advance_to(time);
        self.known_ids.advance_to(time);
        self.providers.advance_to(time);
        self.results.advance_to(time);
    }
}

/// What to maintain besides the delta views.
#[derive(Clone, Copy, Debug, Default)]
pub struct RenderOptions {
    /// Keep the facts that provider triggers need, and compute the pending requests.
    /// Without it the requests view stays empty (plain replays skip that work).
    pub providers: bool,
    /// Dead-letter deltas whose gap stays open this many timestamp units (S4.4);
    /// `None` waits until the input ends (a bounded replay).
    pub gap_timeout: Option<Time>,
    /// Keep accepted deltas' full records for the delta store.
    pub store_records: bool,
}

macro_rules! view_streams {
    (
        by_hand { $($(#[$hdoc:meta])* $hand:ident: $hrow:ty,)* }
        by_declaration { $($(#[$ddoc:meta])* $decl:ident: $drow:ty,)* }
    ) => {
        /// The maintained views, as collections (one per [`studio_model::for_each_view`]).
        pub struct ViewStreams<'scope> {
            $($(#[$hdoc])* pub $hand: VecCollection<'scope, Time, $hrow>,)*
            $($(#[$ddoc])* pub $decl: VecCollection<'scope, Time, $drow>,)*
        }
    };
}
studio_model::for_each_view!(view_streams);

/// A malformed record's dead letter, as a collection update.
type Malformed = (DeadLetter, Time, isize);

/// Parses raw records (S1) where they land after an exchange by position: deltas and
/// grant records (S6.4), and dead letters for the records that are neither.
// A pair of streams; `ok_err` splits them by a `Result` whose error is the large one.
#[allow(clippy::type_complexity, clippy::result_large_err)]
fn parse<'scope>(
    records: StreamVec<'scope, Time, (SourcePos, Vec<u8>)>,
) -> (
    StreamVec<'scope, Time, InputRecord>,
    StreamVec<'scope, Time, Malformed>,
) {
    // Boxed: a dead letter is large and rare, a delta small and common.
    type Parsed = Result<InputRecord, Box<Malformed>>;
    records
        .unary::<CapacityContainerBuilder<Vec<Parsed>>, _, _, _>(
            Exchange::new(|(pos, _): &(SourcePos, Vec<u8>)| pos.offset / 64),
            "Parse",
            |_, _| {
                move |input, output| {
                    input.for_each(|cap, data| {
                        let Some(&time) = cap.least() else { return };
                        let mut session = output.session(&cap);
                        for (pos, bytes) in data.drain(..) {
                            session.give(
                                parse_input(&bytes, pos).map_err(|dl| Box::new((*dl, time, 1))),
                            );
                        }
                    });
                }
            },
        )
        .ok_err(|parsed: Parsed| parsed.map_err(|malformed| *malformed))
}

/// Builds the delta-to-views dataflow in `scope`; `duplicates` counts S4.2 repeats.
pub fn render<'scope>(
    scope: Scope<'scope, Time>,
    duplicates: Arc<AtomicU64>,
    options: RenderOptions,
) -> (Inputs, ViewStreams<'scope>) {
    let (records_in, records) = scope.new_input::<(SourcePos, Vec<u8>)>();
    let (records, malformed) = parse(records);
    // `ok_err` splits by a `Result`; a result record is the larger side, and rare.
    #[allow(clippy::result_large_err)]
    let (records, bus_results): (StreamVec<'_, Time, InputRecord>, _) =
        records.ok_err(|record| match record {
            InputRecord::Result(result) => Err(result),
            other => Ok(other),
        });
    let (deltas, grants) = records.ok_err(|record| match record {
        InputRecord::Delta(delta) => Ok(delta),
        InputRecord::Grant(grant) => Err(grant),
        InputRecord::Result(_) => unreachable!("split off above"),
    });
    let (providers_in, providers) = scope.new_input::<ProviderChange>();
    let (results_in, results) = scope.new_input::<(ProcessingResult, Time, isize)>();

    let (known_ids_in, known_ids) = scope.new_input::<Uuid>();
    let (unique, repeats) = deltas.dedup_by_id(known_ids);
    count_into(repeats, Arc::clone(&duplicates));
    // Results read from the bus (the service, S5.7): the first of each request counts,
    // later ones are duplicates; they join the results fed in process (a replay).
    let (bus_results, repeated_results) = bus_results.dedup_by_id(empty(scope));
    count_into(repeated_results, Arc::clone(&duplicates));
    let result_log = as_inserts(bus_results);
    let results = results.concat(result_log.clone().map(|(row, t, d)| (row.result, t, d)));
    // Access control (S6): grants and deltas in log order, on one worker.
    let access = unique
        .map(InputRecord::Delta)
        .concat(grants.map(InputRecord::Grant))
        .authorize(options.gap_timeout);
    count_into(access.repeats, duplicates);
    let applied = access.deltas.apply_deltas(ApplyOptions {
        track_facts: options.providers,
        gap_timeout: options.gap_timeout,
        store_records: options.store_records,
    });
    let malformed = malformed.as_collection();

    // Providers (S5.3-S5.7): requests settle by accepted outputs or by results.
    let settled = applied
        .settled
        .concat(results.clone().flat_map(|(r, _, _)| r.settles()));
    let requests = applied.facts.pending_triggers(settled, providers);
    let processing = results.as_collection();

    // The DAG (S5.1, S5.2). An edge counts in the views once both its ends exist.
    let (accepted_edges, rejected_edges) = applied.edges.cycle_guard();
    let existing = applied.created.clone().map(|(blob, _owner)| blob);
    let edges = accepted_edges
        .map(|e| (e.parent_id, e))
        .semijoin(existing.clone())
        .map(|(_, e)| (e.child_id, e))
        .semijoin(existing.clone())
        .map(|(_, e)| e);
    // One operator keeps the closure, the depths and the owners' deepest blobs: a new
    // edge costs the pairs it may change, not one `iterate` round per level.
    let dag = edges
        .clone()
        .dag_views(applied.created, DagLimits::default());
    let rejected_edges = rejected_edges.concat(dag.limited);

    (
        Inputs {
            records: records_in,
            known_ids: known_ids_in,
            providers: providers_in,
            results: results_in,
        },
        ViewStreams {
            blobs: applied.blobs,
            processed: applied.processed,
            applied: applied.applied,
            dead_letters: applied
                .dead_letters
                .concat(malformed)
                .concat(access.dead_letters),
            edges,
            rejected_edges,
            reach: dag.reach,
            depth: dag.depth,
            user_depth: dag.user_depth,
            requests,
            processing,
            waiting: applied.waiting.concat(access.waiting),
            grants: access.grants,
            grant_log: access.grant_log,
            result_log: result_log.as_collection(),
        },
    )
}

/// Each record as an insertion at its own timestamp (a collection update).
fn as_inserts<'scope, D: Clone + 'static>(
    stream: StreamVec<'scope, Time, D>,
) -> StreamVec<'scope, Time, (D, Time, isize)> {
    stream.unary::<CapacityContainerBuilder<Vec<(D, Time, isize)>>, _, _, _>(
        timely::dataflow::channels::pact::Pipeline,
        "AsInserts",
        |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    let Some(&time) = cap.least() else { return };
                    let mut session = output.session(&cap);
                    session.give_iterator(data.drain(..).map(|d| (d, time, 1)));
                });
            }
        },
    )
}

/// Adds the number of records that pass on `stream` to `counter`.
fn count_into<D: 'static>(stream: StreamVec<'_, Time, D>, counter: Arc<AtomicU64>) {
    stream.inspect_core(move |event| {
        if let Ok((_, batch)) = event {
            counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
    });
}
