//! [`Reachability`]: every (ancestor, descendant, shortest distance) pair of a DAG
//! (SPEC S5.2), maintained incrementally with differential's `iterate`.
//!
//! ```text
//!  reach = edges at distance 1
//!        ∪ { (a, c, d + 1) | (a, b, d) ∈ reach, (b, c) ∈ edges }, keeping the least d per (a, c)
//! ```
//!
//! Adding an edge changes only the pairs it creates or shortens: differential
//! propagates the difference, not the closure.
//!
//! Since issue 16 `render` maintains the views with [`DagViews`](crate::DagViews)
//! (no round per level); this operator stays as a reference and for the bench.

use differential_dataflow::VecCollection;
use differential_dataflow::lattice::Lattice;
use differential_dataflow::operators::Iterate;
use studio_model::Uuid;
use timely::progress::Timestamp;

/// Transitive closure with shortest distances.
pub trait Reachability<'scope, T: Timestamp> {
    /// `((ancestor, descendant), distance)` for every path of the graph `self`
    /// (`(parent, child)` edges).
    fn reachability(self) -> VecCollection<'scope, T, ((Uuid, Uuid), u32)>;
}

impl<'scope, T: Timestamp + Lattice + Ord> Reachability<'scope, T>
    for VecCollection<'scope, T, (Uuid, Uuid)>
{
    fn reachability(self) -> VecCollection<'scope, T, ((Uuid, Uuid), u32)> {
        let edges = self;
        let direct = edges.clone().map(|pair| (pair, 1u32));
        direct.clone().iterate(|scope, reach| {
            let edges = edges.enter(scope);
            let direct = direct.enter(scope);
            reach
                .map(|((ancestor, via), distance)| (via, (ancestor, distance)))
                .join_map(edges, |_via, &(ancestor, distance), &child| {
                    ((ancestor, child), distance + 1)
                })
                .concat(direct)
                // Values arrive sorted: the first is the least distance.
                .reduce(|_pair, distances, shortest| shortest.push((*distances[0].0, 1)))
        })
    }
}
