//! [`CycleGuard`]: decides, in acceptance order, which proposed edges join the blob DAG
//! (SPEC S5.1).
//!
//! ```text
//!  edge proposals --exchange to worker 0--> [ CycleGuard: TopoOrder ] --> accepted edges (insert-only)
//!                                                                   --> rejected edges (S5.1 cycle)
//! ```
//!
//! Whether an edge closes a cycle depends on every edge before it, so the decision is
//! made in one place, per completed timestamp, in acceptance order
//! ([`OrderedEdge`](crate::apply_deltas::OrderedEdge)): the same answers on every worker
//! count. The cost per edge is that of Pearce-Kelly's affected region, not of the
//! whole graph ([`studio_model::dag`]). The guard sees every accepted edge, including
//! edges to blobs not created yet, so a cycle cannot appear later when they are.

use differential_dataflow::{AsCollection, VecCollection};
use studio_model::dag::{EdgeOutcome, TopoOrder};
use studio_model::{EdgeRow, RejectedEdgeRow};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::order::TotalOrder;
use timely::progress::Timestamp;

use crate::apply_deltas::OrderedEdge;
use crate::stash::Stash;

/// The reason recorded for an edge that would close a cycle.
pub const CYCLE_REASON: &str = "S5.1 cycle";

/// Decides which proposed edges are added to the DAG.
pub trait CycleGuard<'scope, T: Timestamp> {
    /// Returns the accepted edges (each once, with the delta that added it first) and
    /// the rejected ones.
    fn cycle_guard(
        self,
    ) -> (
        VecCollection<'scope, T, EdgeRow>,
        VecCollection<'scope, T, RejectedEdgeRow>,
    );
}

type Out<D, T> = CapacityContainerBuilder<Vec<(D, T, isize)>>;

impl<'scope, T: Timestamp + TotalOrder> CycleGuard<'scope, T>
    for StreamVec<'scope, T, OrderedEdge>
{
    fn cycle_guard(
        self,
    ) -> (
        VecCollection<'scope, T, EdgeRow>,
        VecCollection<'scope, T, RejectedEdgeRow>,
    ) {
        let mut builder = OperatorBuilder::new("CycleGuard".to_owned(), self.scope());
        let mut input = builder.new_input(self, Exchange::new(|_: &OrderedEdge| 0));
        let (accepted_out, accepted) = builder.new_output();
        let (rejected_out, rejected) = builder.new_output();
        let mut accepted_out = OutputBuilder::<_, Out<EdgeRow, T>>::from(accepted_out);
        let mut rejected_out = OutputBuilder::<_, Out<RejectedEdgeRow, T>>::from(rejected_out);

        builder.build(move |_| {
            let mut stash = Stash::new(2);
            let mut dag = TopoOrder::default();
            move |frontiers| {
                stash.absorb(&mut input);
                let mut accepted_session = accepted_out.activate();
                let mut rejected_session = rejected_out.activate();
                for (caps, mut proposals) in stash.take_complete(&frontiers[0]) {
                    let time = caps[0].time().clone();
                    proposals.sort_by_key(|(order, _)| *order);
                    let mut accept = accepted_session.session(&caps[0]);
                    let mut reject = rejected_session.session(&caps[1]);
                    for (_, edge) in proposals {
                        match dag.insert(edge.parent, edge.child) {
                            EdgeOutcome::Added => accept.give((
                                EdgeRow {
                                    parent_id: edge.parent,
                                    child_id: edge.child,
                                    delta_id: edge.delta_id,
                                },
                                time.clone(),
                                1,
                            )),
                            EdgeOutcome::Present => {}
                            EdgeOutcome::Refused(_) => reject.give((
                                RejectedEdgeRow {
                                    delta_id: edge.delta_id,
                                    parent_id: edge.parent,
                                    child_id: edge.child,
                                    reason: CYCLE_REASON.to_owned(),
                                },
                                time.clone(),
                                1,
                            )),
                        }
                    }
                }
            }
        });
        (accepted.as_collection(), rejected.as_collection())
    }
}
