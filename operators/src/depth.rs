//! [`Depth`]: each blob's depth in the DAG, the longest path from a root, roots at 0
//! (SPEC S5.2), maintained incrementally with differential's `iterate`.
//!
//! ```text
//!  depth(n) = 0                                  for every node
//!  depth(c) = max(depth(c), depth(p) + 1)        for every edge (p, c), to a fixpoint
//! ```
//!
//! The graph is acyclic (the cycle guard sees to it), so the iteration ends after as
//! many rounds as the longest path. Should a cycle ever reach this operator, depths
//! around it would grow without end; they are capped at [`MAX_DEPTH`] instead, so the
//! dataflow still completes (with those blobs at the cap) rather than spinning.
//!
//! Since issue 16 `render` maintains the views with [`DagViews`](crate::DagViews)
//! (no round per level); this operator stays as a reference and for the bench.

use differential_dataflow::VecCollection;
use differential_dataflow::lattice::Lattice;
use differential_dataflow::operators::Iterate;
use studio_model::Uuid;
use timely::progress::Timestamp;

/// Depths stop growing here: a guard against cycles, far beyond any real DAG. A cycle
/// costs as many rounds as the cap, so it is not much higher.
pub const MAX_DEPTH: u32 = 1 << 16;

/// Longest-path depth.
pub trait Depth<'scope, T: Timestamp> {
    /// `(node, depth)` for every node of `self`, given the `(parent, child)` edges.
    fn depth(
        self,
        edges: VecCollection<'scope, T, (Uuid, Uuid)>,
    ) -> VecCollection<'scope, T, (Uuid, u32)>
    where
        Self: Sized,
    {
        self.depth_capped(edges, MAX_DEPTH)
    }

    /// [`Depth::depth`] with depths capped at `cap`.
    fn depth_capped(
        self,
        edges: VecCollection<'scope, T, (Uuid, Uuid)>,
        cap: u32,
    ) -> VecCollection<'scope, T, (Uuid, u32)>;
}

impl<'scope, T: Timestamp + Lattice + Ord> Depth<'scope, T> for VecCollection<'scope, T, Uuid> {
    fn depth_capped(
        self,
        edges: VecCollection<'scope, T, (Uuid, Uuid)>,
        cap: u32,
    ) -> VecCollection<'scope, T, (Uuid, u32)> {
        let roots = self.map(|node| (node, 0u32));
        roots.clone().iterate(|scope, depth| {
            let edges = edges.enter(scope);
            let roots = roots.enter(scope);
            depth
                .join_map(edges, move |_parent, &d, &child| (child, (d + 1).min(cap)))
                .concat(roots)
                // Values arrive sorted: the last is the longest path.
                .reduce(|_node, depths, deepest| deepest.push((*depths[depths.len() - 1].0, 1)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::input::Input;
    use std::sync::{Arc, Mutex};

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    /// Runs `depth_capped` over `nodes` and `edges` at one time and returns the result.
    fn depths(nodes: Vec<u128>, edges: Vec<(u128, u128)>, cap: u32) -> Vec<(Uuid, u32)> {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&out);
        timely::execute_directly(move |worker| {
            let (mut node_in, mut edge_in) = worker.dataflow::<u64, _, _>(|scope| {
                let (node_in, nodes) = scope.new_collection();
                let (edge_in, edges) = scope.new_collection();
                let sink = Arc::clone(&sink);
                nodes
                    .depth_capped(edges, cap)
                    .inspect(move |((n, d), _, diff)| {
                        sink.lock().unwrap().push(((*n, *d), *diff));
                    });
                (node_in, edge_in)
            });
            for n in &nodes {
                node_in.insert(id(*n));
            }
            for (p, c) in &edges {
                edge_in.insert((id(*p), id(*c)));
            }
        });
        let mut updates = out.lock().unwrap().clone();
        differential_dataflow::consolidation::consolidate(&mut updates);
        assert!(updates.iter().all(|(_, diff)| *diff == 1), "{updates:?}");
        updates.into_iter().map(|(row, _)| row).collect()
    }

    #[test]
    fn longest_path_from_the_roots() {
        // 1 -> 2 -> 3 and the shortcut 1 -> 3: depth of 3 is the longer path.
        let got = depths(vec![1, 2, 3, 4], vec![(1, 2), (2, 3), (1, 3)], MAX_DEPTH);
        assert_eq!(got, vec![(id(1), 0), (id(2), 1), (id(3), 2), (id(4), 0)]);
    }

    #[test]
    fn a_cycle_that_slipped_through_ends_at_the_cap_instead_of_spinning() {
        // The cap is a parameter so that the test runs 64 rounds, not MAX_DEPTH.
        let got = depths(vec![1, 2], vec![(1, 2), (2, 1)], 64);
        assert_eq!(got, vec![(id(1), 64), (id(2), 64)]);
    }
}
