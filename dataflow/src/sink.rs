//! The view sink operator: gathers the view collections on worker 0 and, when all of
//! them have completed a timestamp, hands that timestamp's net changes to a callback
//! as one [`ViewBatch`] (which the replay sends to its writer thread).
//!
//! Updates are grouped by their own timestamps, not by the timestamp of the message
//! that carried them: differential operators (`join`, `reduce`, `iterate`) may send
//! updates for later times under an earlier capability. A time is handed on only when
//! every input's frontier has passed it, so a batch is always one complete timestamp.
//! Updates at a time the caller will not write (a restart's recovered timestamp, whose
//! views are stored already) are dropped as they arrive, unsorted and unbuffered.

use std::collections::BTreeMap;

use studio_model::{View, ViewBatch};
use timely::communication::Pull;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::Message;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::InputHandleCore;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::render::{Time, ViewStreams};

/// One view's input to the sink: its updates by their timestamps, until those are
/// complete, and where its changes go in a batch.
trait ViewInput {
    /// Takes the waiting updates at the times `written` accepts, and holds a
    /// capability for each such time until it is handed on.
    fn absorb(&mut self, held: &mut Held, written: &dyn Fn(Time) -> bool);
    /// The earliest time with updates.
    fn first_time(&self) -> Option<Time>;
    /// Moves the net changes at `time` into `batch`.
    fn take(&mut self, time: Time, batch: &mut ViewBatch);
}

/// A [`ViewInput`] of rows `R`, read through puller `P`.
struct Buffered<R: View, P: Pull<Message<Time, Vec<(R, Time, isize)>>>> {
    input: InputHandleCore<Time, Vec<(R, Time, isize)>, P>,
    updates: BTreeMap<Time, Vec<(R, isize)>>,
    slot: fn(&mut ViewBatch) -> &mut R::Changes,
}

impl<R: View, P: Pull<Message<Time, Vec<(R, Time, isize)>>>> ViewInput for Buffered<R, P> {
    fn absorb(&mut self, held: &mut Held, written: &dyn Fn(Time) -> bool) {
        let updates = &mut self.updates;
        self.input.for_each(|cap, data| {
            for (row, time, diff) in data.drain(..) {
                if !written(time) {
                    continue;
                }
                held.entry(time).or_insert_with(|| cap.delayed(&time, 0));
                updates.entry(time).or_default().push((row, diff));
            }
        });
    }

    fn first_time(&self) -> Option<Time> {
        self.updates.keys().next().copied()
    }

    fn take(&mut self, time: Time, batch: &mut ViewBatch) {
        let updates = self.updates.remove(&time).unwrap_or_default();
        *(self.slot)(batch) = R::changes(updates);
    }
}

/// Capabilities held per time, so that the sink's (empty) output frontier passes a
/// time only once that time's batch was handed on.
type Held = BTreeMap<Time, Capability<Time>>;

/// One [`ViewInput`] per view of [`ViewStreams`], every change sent to worker 0 (one
/// writer).
macro_rules! view_inputs {
    (
        by_hand { $($(#[$hdoc:meta])* $hand:ident: $hrow:ty,)* }
        by_declaration { $($(#[$ddoc:meta])* $decl:ident: $drow:ty,)* }
    ) => {
        fn view_inputs<'scope>(
            builder: &mut OperatorBuilder<'scope, Time>,
            views: ViewStreams<'scope>,
        ) -> Vec<Box<dyn ViewInput>> {
            vec![
                $(Box::new(Buffered::<$hrow, _> {
                    input: builder.new_input(views.$hand.inner, Exchange::new(|_: &_| 0)),
                    updates: BTreeMap::new(),
                    slot: |batch| &mut batch.$hand,
                }) as Box<dyn ViewInput>,)*
                $(Box::new(Buffered::<$drow, _> {
                    input: builder.new_input(views.$decl.inner, Exchange::new(|_: &_| 0)),
                    updates: BTreeMap::new(),
                    slot: |batch| &mut batch.$decl,
                }) as Box<dyn ViewInput>,)*
            ]
        }
    };
}
studio_model::for_each_view!(view_inputs);

/// Sends every completed timestamp's changes to `on_batch`, in time order, on worker 0,
/// for the times `written` accepts (asked as their updates arrive). Times with no
/// change produce no batch. The returned stream carries nothing; its
/// frontier passes a time once `on_batch` has seen it (probe it to wait for that).
pub fn sink_views<'scope>(
    views: ViewStreams<'scope>,
    written: impl Fn(Time) -> bool + 'static,
    mut on_batch: impl FnMut(Time, ViewBatch) + 'static,
) -> StreamVec<'scope, Time, ()> {
    let scope = views.blobs.inner.scope();
    let mut builder = OperatorBuilder::new("ViewSink".to_owned(), scope);
    let mut inputs = view_inputs(&mut builder, views);
    let (_output, done) = builder.new_output::<Vec<()>>();

    builder.build(move |_| {
        let mut held = Held::new();
        move |frontiers| {
            for input in &mut inputs {
                input.absorb(&mut held, &written);
            }
            loop {
                let next = inputs.iter().filter_map(|i| i.first_time()).min();
                let Some(time) = next else { break };
                if frontiers.iter().any(|f| f.less_equal(&time)) {
                    break;
                }
                let mut batch = ViewBatch::default();
                for input in &mut inputs {
                    input.take(time, &mut batch);
                }
                if !batch.is_empty() {
                    on_batch(time, batch);
                }
                held.remove(&time);
            }
        }
    });
    done
}
