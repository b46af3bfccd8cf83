//! [`Depth`]: each blob's depth in the DAG, the longest path from a root, roots at 0
//! (SPEC S5.2), maintained incrementally with differential's `iterate`.
//!
//! ```text
//!  depth(n) = 0                                  for every node
//!  depth(c) = max(depth(c), depth(p) + 1)        for every edge (p, c), to a fixpoint
//! ```
//!
//! The graph is acyclic (the cycle guard sees to it), so the iteration ends after as
//! many rounds as the longest path.

use differential_dataflow::VecCollection;
use differential_dataflow::lattice::Lattice;
use differential_dataflow::operators::Iterate;
use studio_model::Uuid;
use timely::progress::Timestamp;

/// Longest-path depth.
pub trait Depth<'scope, T: Timestamp> {
    /// `(node, depth)` for every node of `self`, given the `(parent, child)` edges.
    fn depth(
        self,
        edges: VecCollection<'scope, T, (Uuid, Uuid)>,
    ) -> VecCollection<'scope, T, (Uuid, u32)>;
}

impl<'scope, T: Timestamp + Lattice + Ord> Depth<'scope, T> for VecCollection<'scope, T, Uuid> {
    fn depth(
        self,
        edges: VecCollection<'scope, T, (Uuid, Uuid)>,
    ) -> VecCollection<'scope, T, (Uuid, u32)> {
        let roots = self.map(|node| (node, 0u32));
        roots.clone().iterate(|scope, depth| {
            let edges = edges.enter(scope);
            let roots = roots.enter(scope);
            depth
                .join_map(edges, |_parent, &d, &child| (child, d + 1))
                .concat(roots)
                // Values arrive sorted: the last is the longest path.
                .reduce(|_node, depths, deepest| deepest.push((*depths[depths.len() - 1].0, 1)))
        })
    }
}
