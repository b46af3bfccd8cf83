//! [`TopoOrder`]: the cycle guard of the blob DAG (SPEC S5.1), deciding edge by edge,
//! in log order, whether a new edge would close a cycle.
//!
//! It keeps a topological order of every blob named by an accepted edge and updates it
//! incrementally (Pearce & Kelly, "A dynamic topological sort algorithm for directed
//! acyclic graphs", JEA 2006). An edge `x -> y` with `ord(x) < ord(y)` is accepted in
//! O(1). Otherwise only the *affected region* is searched: the nodes reachable from
//! `y` with order up to `ord(x)` and the nodes reaching `x` with order from `ord(y)`.
//! If the forward search meets `x`, the edge closes a cycle; if not, the two regions
//! are reordered among the order slots they already hold. No search ever walks the
//! whole graph unless the whole graph is the affected region.

use rustc_hash::FxHashMap;
use uuid::Uuid;

/// Why an edge was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeRefusal {
    /// The edge joins a blob to itself.
    SelfLoop,
    /// The child already reaches the parent.
    Cycle,
}

/// What [`TopoOrder::insert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeOutcome {
    /// A new edge.
    Added,
    /// The edge was already there.
    Present,
    /// The edge would close a cycle and was not added.
    Refused(EdgeRefusal),
}

/// A directed acyclic graph with an incrementally maintained topological order.
#[derive(Debug, Default)]
pub struct TopoOrder {
    index: FxHashMap<Uuid, u32>,
    /// `ord[n]`: the position of node `n` in the topological order (a permutation).
    ord: Vec<u32>,
    out: Vec<Vec<u32>>,
    inn: Vec<Vec<u32>>,
    // Scratch space reused across insertions.
    mark: Vec<bool>,
    forward: Vec<u32>,
    backward: Vec<u32>,
    stack: Vec<u32>,
}

impl TopoOrder {
    /// Number of nodes named by accepted edges.
    pub fn nodes(&self) -> usize {
        self.ord.len()
    }

    /// Number of accepted edges.
    pub fn edges(&self) -> usize {
        self.out.iter().map(Vec::len).sum()
    }

    /// The dense number of `id` (`0..nodes()`, in the order nodes were first named),
    /// adding it as an isolated node if it is new.
    pub fn node_index(&mut self, id: Uuid) -> u32 {
        self.node(id)
    }

    /// The position of node number `n` in the topological order: every edge goes from a
    /// lower position to a higher one. Positions change as edges are inserted.
    pub fn position(&self, n: u32) -> u32 {
        self.ord[n as usize]
    }

    /// The children of node number `n`, in the order their edges were added.
    pub fn children(&self, n: u32) -> &[u32] {
        &self.out[n as usize]
    }

    /// Adds the edge between node numbers `x -> y` unless it would close a cycle.
    pub fn insert_indices(&mut self, x: u32, y: u32) -> EdgeOutcome {
        if x == y {
            return EdgeOutcome::Refused(EdgeRefusal::SelfLoop);
        }
        if self.out[x as usize].contains(&y) {
            return EdgeOutcome::Present;
        }
        let (lower, upper) = (self.ord[y as usize], self.ord[x as usize]);
        if lower < upper {
            // y comes before x: the edge may close a cycle; search the affected region.
            if self.search_forward(y, upper, x) {
                self.clear_marks();
                return EdgeOutcome::Refused(EdgeRefusal::Cycle);
            }
            self.search_backward(x, lower);
            self.reorder();
        }
        self.out[x as usize].push(y);
        self.inn[y as usize].push(x);
        EdgeOutcome::Added
    }

    fn node(&mut self, id: Uuid) -> u32 {
        let next = self.ord.len() as u32;
        let n = *self.index.entry(id).or_insert(next);
        if n == next {
            self.ord.push(next);
            self.out.push(Vec::new());
            self.inn.push(Vec::new());
            self.mark.push(false);
        }
        n
    }

    /// Adds `parent -> child` unless it would close a cycle.
    pub fn insert(&mut self, parent: Uuid, child: Uuid) -> EdgeOutcome {
        if parent == child {
            return EdgeOutcome::Refused(EdgeRefusal::SelfLoop);
        }
        let (x, y) = (self.node(parent), self.node(child));
        self.insert_indices(x, y)
    }

    /// Marks the nodes reachable from `start` whose order is at most `upper`; true if
    /// `target` is among them (a cycle).
    fn search_forward(&mut self, start: u32, upper: u32, target: u32) -> bool {
        self.forward.clear();
        self.stack.clear();
        self.stack.push(start);
        self.mark[start as usize] = true;
        while let Some(n) = self.stack.pop() {
            self.forward.push(n);
            for &m in &self.out[n as usize] {
                if m == target {
                    return true;
                }
                if !self.mark[m as usize] && self.ord[m as usize] < upper {
                    self.mark[m as usize] = true;
                    self.stack.push(m);
                }
            }
        }
        false
    }

    /// Marks the nodes that reach `start` whose order is at least `lower`.
    fn search_backward(&mut self, start: u32, lower: u32) {
        self.backward.clear();
        self.stack.clear();
        self.stack.push(start);
        self.mark[start as usize] = true;
        while let Some(n) = self.stack.pop() {
            self.backward.push(n);
            for &m in &self.inn[n as usize] {
                if !self.mark[m as usize] && self.ord[m as usize] > lower {
                    self.mark[m as usize] = true;
                    self.stack.push(m);
                }
            }
        }
    }

    /// Gives the backward region, then the forward region, the order slots both held,
    /// each region keeping its internal order.
    fn reorder(&mut self) {
        let ord = &self.ord;
        self.backward.sort_unstable_by_key(|&n| ord[n as usize]);
        self.forward.sort_unstable_by_key(|&n| ord[n as usize]);
        let mut slots: Vec<u32> = self
            .backward
            .iter()
            .chain(&self.forward)
            .map(|&n| ord[n as usize])
            .collect();
        slots.sort_unstable();
        for (&n, slot) in self.backward.iter().chain(&self.forward).zip(slots) {
            self.ord[n as usize] = slot;
        }
        self.clear_marks();
    }

    fn clear_marks(&mut self) {
        for &n in self.forward.iter().chain(&self.backward).chain(&self.stack) {
            self.mark[n as usize] = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use std::collections::{HashMap, HashSet};

    fn id(n: u32) -> Uuid {
        Uuid::from_u128(n as u128 + 1)
    }

    /// The naive baseline: accept unless the child reaches the parent (BFS).
    fn naive_reaches(graph: &HashMap<u32, Vec<u32>>, from: u32, to: u32) -> bool {
        let mut seen = HashSet::new();
        let mut stack = vec![from];
        while let Some(n) = stack.pop() {
            if n == to {
                return true;
            }
            if seen.insert(n) {
                stack.extend(graph.get(&n).into_iter().flatten().copied());
            }
        }
        false
    }

    #[test]
    fn refuses_self_loops_and_cycles_and_ignores_repeats() {
        let mut t = TopoOrder::default();
        assert_eq!(
            t.insert(id(1), id(1)),
            EdgeOutcome::Refused(EdgeRefusal::SelfLoop)
        );
        assert_eq!(t.insert(id(1), id(2)), EdgeOutcome::Added);
        assert_eq!(t.insert(id(2), id(3)), EdgeOutcome::Added);
        assert_eq!(t.insert(id(1), id(2)), EdgeOutcome::Present);
        assert_eq!(
            t.insert(id(3), id(1)),
            EdgeOutcome::Refused(EdgeRefusal::Cycle)
        );
        assert_eq!(
            t.insert(id(2), id(1)),
            EdgeOutcome::Refused(EdgeRefusal::Cycle)
        );
        assert_eq!(
            t.insert(id(1), id(3)),
            EdgeOutcome::Added,
            "a shortcut is not a cycle"
        );
        assert_eq!(t.edges(), 3);
    }

    #[test]
    fn agrees_with_a_bfs_on_random_graphs_and_keeps_a_topological_order() {
        for seed in 0..40 {
            let mut rng = StdRng::seed_from_u64(seed);
            let nodes = rng.random_range(2..60);
            let mut t = TopoOrder::default();
            let mut graph: HashMap<u32, Vec<u32>> = HashMap::new();
            for _ in 0..nodes * 3 {
                let (p, c) = (rng.random_range(0..nodes), rng.random_range(0..nodes));
                let expected = if p == c {
                    EdgeOutcome::Refused(EdgeRefusal::SelfLoop)
                } else if graph.get(&p).is_some_and(|cs| cs.contains(&c)) {
                    EdgeOutcome::Present
                } else if naive_reaches(&graph, c, p) {
                    EdgeOutcome::Refused(EdgeRefusal::Cycle)
                } else {
                    graph.entry(p).or_default().push(c);
                    EdgeOutcome::Added
                };
                assert_eq!(t.insert(id(p), id(c)), expected, "seed {seed}: {p} -> {c}");
                for (x, cs) in &t.out.iter().enumerate().collect::<Vec<_>>() {
                    for y in cs.iter() {
                        assert!(t.ord[*x] < t.ord[*y as usize], "seed {seed}: order broken");
                    }
                }
            }
            let mut slots = t.ord.clone();
            slots.sort_unstable();
            assert_eq!(
                slots,
                (0..t.nodes() as u32).collect::<Vec<_>>(),
                "a permutation"
            );
        }
    }
}
