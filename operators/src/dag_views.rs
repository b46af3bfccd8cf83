//! [`DagViews`]: the three DAG views of SPEC S5.2 (`blob_reach`, `blob_depth`,
//! `user_depth`) maintained by one specialised operator instead of two differential
//! `iterate`s.
//!
//! ```text
//!  edges whose two ends exist --exchange to worker 0--> [ DagViews: Closure ] --> reach  (a, d, shortest distance)
//!  created (blob, owner)      --exchange to worker 0-->                       --> depth  (blob, longest path from a root)
//!                                                                             --> user_depth (owner, deepest blob)
//!                                                                             --> edges left out at the pair limit
//! ```
//!
//! Differential's `iterate` pays one round per level of the graph (a 1,000-long chain
//! is 1,000 rounds, each with its own progress tracking and arrangement merges), however
//! few pairs change. This operator keeps the closure itself ([`Closure`]): for each
//! blob its ancestors with shortest distances (one hash entry per pair), and its depth.
//! A new edge `p -> c` joins `ancestors(p) ∪ {p}` with `descendants(c) ∪ {c}` (every new
//! shortest path through the edge is a shortest path to `p`, the edge, and a shortest
//! path from `c`: the graph is acyclic); the descendants of `c` with their distances are
//! found by a breadth-first search from `c` over the edges in the views, which costs
//! what iterating a stored set would. Depth grows forward from `c` in topological order
//! only where it increases. Its cost is that of the pairs the edge may change, not of a
//! pass over the graph, and there are no rounds. Within one timestamp the new edges are
//! applied in topological order of their child, so a cold load costs what a single pass
//! in topological order does; the output is the consolidated difference per timestamp
//! (`-old +new` for a shortened distance or a deeper blob), so sinks see ordinary
//! collection updates.
//!
//! The inputs are insert-only (blobs are never un-created and accepted edges never
//! removed, S5.1), and the result depends only on the set of edges at each timestamp,
//! not on their order or on the number of workers.
//!
//! **The pair limit.** The closure of a chain of n blobs has n(n-1)/2 pairs: 50M for a
//! chain of 10,000. An edge whose new pairs would take the reach view past
//! [`DagLimits::max_reach_pairs`] is left out of the three views (it stays in
//! `blob_edges` and in the cycle guard's graph) and is reported as a rejected edge with
//! reason [`REACH_LIMIT_REASON`]. The views are then exactly those of the graph without
//! the edges left out. Within one timestamp, edges are decided in topological order of
//! their child, then by (parent, child) id.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::FxHashMap;
use studio_model::dag::{EdgeOutcome, TopoOrder};
use studio_model::{DepthRow, EdgeRow, ReachRow, RejectedEdgeRow, UserDepthRow, Uuid};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::order::TotalOrder;
use timely::progress::Timestamp;

/// The reason recorded for an edge left out of the views at the pair limit.
pub const REACH_LIMIT_REASON: &str = "S5.2 reach limit";

/// The default [`DagLimits::max_reach_pairs`]: 10M pairs of closure state (one hash
/// entry of 8 bytes per pair, with the table's slack) on top of the views' own rows.
pub const MAX_REACH_PAIRS: u64 = 10_000_000;

/// Bounds on the DAG views.
#[derive(Clone, Copy, Debug)]
pub struct DagLimits {
    /// The most (ancestor, descendant) pairs `blob_reach` holds.
    pub max_reach_pairs: u64,
}

impl Default for DagLimits {
    fn default() -> Self {
        DagLimits {
            max_reach_pairs: MAX_REACH_PAIRS,
        }
    }
}

/// The changes one batch made, by dense node number: `(key, old, new)`.
#[derive(Debug, Default)]
pub struct Changes {
    /// `((ancestor, descendant), old distance, new distance)`.
    pub reach: Vec<((u32, u32), Option<u32>, u32)>,
    /// `(blob, old depth, new depth)`.
    pub depth: Vec<(u32, Option<u32>, u32)>,
    /// `(owner, old max depth, new max depth)`.
    pub user_depth: Vec<(Uuid, Option<u32>, u32)>,
    /// Edges left out at the pair limit, as `(parent, child)` node numbers.
    pub limited: Vec<(u32, u32)>,
}

/// Marks, in `ancestors`, a distance set during the current batch (distances are far
/// below 2^31).
const TOUCHED: u32 = 1 << 31;

/// The pairs one batch touched, each once: so no map of old values is needed.
#[derive(Default)]
struct Batch {
    /// Pairs new in this batch.
    created: Vec<(u32, u32)>,
    /// Pairs that existed before the batch and were shortened, with their old distance.
    shortened: Vec<((u32, u32), u32)>,
}

/// The closure of a DAG with shortest distances, the longest-path depths, and each
/// owner's deepest blob, maintained under insertions of blobs and edges.
#[derive(Debug, Default)]
pub struct Closure {
    limits: DagLimits,
    /// Dense numbering and a topological order of the edges in the views.
    topo: TopoOrder,
    ids: Vec<Uuid>,
    /// The owner of each created blob (`None`: named only by an edge so far).
    owner: Vec<Option<Uuid>>,
    /// `ancestors[n]`: ancestor -> shortest distance ([`TOUCHED`] marks the pairs
    /// changed by the batch being applied).
    ancestors: Vec<FxHashMap<u32, u32>>,
    /// Scratch for the breadth-first search of descendants: all false between searches.
    seen: Vec<bool>,
    depth: Vec<u32>,
    /// The children of each node through edges in the views.
    view_children: Vec<Vec<u32>>,
    /// Per owner, how many of their blobs are at each depth.
    user_depths: FxHashMap<Uuid, BTreeMap<u32, u32>>,
    pairs: u64,
    // Scratch space reused across edges.
    left: Vec<(u32, u32)>,
    right: Vec<(u32, u32)>,
}

impl Closure {
    /// An empty closure with `limits`.
    pub fn new(limits: DagLimits) -> Self {
        Closure {
            limits,
            ..Closure::default()
        }
    }

    /// The number of (ancestor, descendant) pairs.
    pub fn pairs(&self) -> u64 {
        self.pairs
    }

    /// The blob id of node number `n`.
    pub fn id(&self, n: u32) -> Uuid {
        self.ids[n as usize]
    }

    /// The dense number of `id`, adding it if new.
    fn node(&mut self, id: Uuid) -> u32 {
        let n = self.topo.node_index(id);
        if n as usize == self.ids.len() {
            self.ids.push(id);
            self.owner.push(None);
            self.ancestors.push(FxHashMap::default());
            self.seen.push(false);
            self.depth.push(0);
            self.view_children.push(Vec::new());
        }
        n
    }

    /// Adds the created blobs `(blob, owner)` and then the edges `(parent, child)` (both
    /// of whose ends are created blobs, now or before), and returns what changed.
    pub fn apply(&mut self, created: &[(Uuid, Uuid)], edges: &[(Uuid, Uuid)]) -> Changes {
        let mut batch = Batch::default();
        let mut depth_before: FxHashMap<u32, Option<u32>> = FxHashMap::default();
        let mut changes = Changes::default();

        for &(blob, owner) in created {
            let n = self.node(blob);
            if self.owner[n as usize].is_none() {
                self.owner[n as usize] = Some(owner);
                depth_before.entry(n).or_insert(None);
            }
        }

        // Deterministic whatever the arrival order: sorted by id, then applied in
        // topological order of the child.
        let mut sorted: Vec<(Uuid, Uuid)> = edges.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut added: Vec<(u32, u32)> = Vec::with_capacity(sorted.len());
        for (parent, child) in sorted {
            let (p, c) = (self.node(parent), self.node(child));
            if self.topo.insert_indices(p, c) == EdgeOutcome::Added {
                added.push((p, c));
            }
        }
        let topo = &self.topo;
        added.sort_by_key(|&(p, c)| (topo.position(c), topo.position(p)));

        let mut heap: BinaryHeap<Reverse<(u32, u32)>> = BinaryHeap::new();
        // Edges in the views (those left out stay in `topo` only, whose order is then
        // an order of a larger graph: still topological for this one).
        for (p, c) in added {
            if !self.add_reach(p, c, &mut batch) {
                changes.limited.push((p, c));
                continue;
            }
            self.view_children[p as usize].push(c);
            self.raise_depth(p, c, &mut depth_before, &mut heap);
        }

        // Clear the batch's marks; every touched pair changed (distances only shrink).
        changes
            .reach
            .reserve(batch.created.len() + batch.shortened.len());
        for (a, d) in batch.created {
            let slot = self.ancestors[d as usize].get_mut(&a).expect("created");
            *slot &= !TOUCHED;
            changes.reach.push(((a, d), None, *slot));
        }
        for ((a, d), old) in batch.shortened {
            let slot = self.ancestors[d as usize].get_mut(&a).expect("present");
            *slot &= !TOUCHED;
            changes.reach.push(((a, d), Some(old), *slot));
        }

        self.depth_changes(depth_before, &mut changes);
        changes
    }

    /// The depth and user-depth changes of a batch, from the depth each changed blob
    /// had before it (`None`: created in it), into `changes`.
    fn depth_changes(&mut self, depth_before: FxHashMap<u32, Option<u32>>, changes: &mut Changes) {
        let mut users: FxHashMap<Uuid, Option<u32>> = FxHashMap::default();
        for (n, old) in depth_before {
            let Some(owner) = self.owner[n as usize] else {
                continue; // not created: not in the views
            };
            let new = self.depth[n as usize];
            if old == Some(new) {
                continue;
            }
            changes.depth.push((n, old, new));
            let counts = self.user_depths.entry(owner).or_default();
            users
                .entry(owner)
                .or_insert_with(|| counts.last_key_value().map(|(d, _)| *d));
            if let Some(old) = old {
                let count = counts.get_mut(&old).expect("counted before");
                *count -= 1;
                if *count == 0 {
                    counts.remove(&old);
                }
            }
            *counts.entry(new).or_insert(0) += 1;
        }
        changes.depth.sort_unstable();
        for (owner, old) in users {
            let new = *self.user_depths[&owner]
                .last_key_value()
                .expect("an owner of a blob")
                .0;
            if old != Some(new) {
                changes.user_depth.push((owner, old, new));
            }
        }
        changes.user_depth.sort_unstable();
    }

    /// Depth after the edge `p -> c`: grows forward from `c`, in topological order, only
    /// where it increases; the depth each changed blob had before the batch goes into
    /// `depth_before` (`None` for blobs created in it).
    fn raise_depth(
        &mut self,
        p: u32,
        c: u32,
        depth_before: &mut FxHashMap<u32, Option<u32>>,
        heap: &mut BinaryHeap<Reverse<(u32, u32)>>,
    ) {
        let (dp, dc) = (self.depth[p as usize], self.depth[c as usize]);
        if dp < dc {
            return;
        }
        depth_before
            .entry(c)
            .or_insert(self.owner[c as usize].map(|_| dc));
        self.depth[c as usize] = dp + 1;
        heap.push(Reverse((self.topo.position(c), c)));
        while let Some(Reverse((_, x))) = heap.pop() {
            let dx = self.depth[x as usize];
            for i in 0..self.view_children[x as usize].len() {
                let y = self.view_children[x as usize][i];
                let dy = self.depth[y as usize];
                if dx + 1 > dy {
                    depth_before
                        .entry(y)
                        .or_insert(self.owner[y as usize].map(|_| dy));
                    self.depth[y as usize] = dx + 1;
                    heap.push(Reverse((self.topo.position(y), y)));
                }
            }
        }
    }

    /// The descendants of `c` with their shortest distances, `c` itself first at 0: a
    /// breadth-first search over the edges in the views, into `out`.
    fn descendants_of(&mut self, c: u32, out: &mut Vec<(u32, u32)>) {
        out.clear();
        out.push((c, 0));
        self.seen[c as usize] = true;
        let mut next = 0;
        while let Some(&(x, dx)) = out.get(next) {
            next += 1;
            for &y in &self.view_children[x as usize] {
                if !self.seen[y as usize] {
                    self.seen[y as usize] = true;
                    out.push((y, dx + 1));
                }
            }
        }
        for &(x, _) in out.iter() {
            self.seen[x as usize] = false;
        }
    }

    /// Adds the pairs that `p -> c` creates or shortens, recording them in `batch`;
    /// false (and nothing changed) if that would pass the pair limit. One descendant at
    /// a time, so that its map of ancestors stays in cache across the ancestors of `p`.
    fn add_reach(&mut self, p: u32, c: u32, batch: &mut Batch) -> bool {
        let mut left = std::mem::take(&mut self.left);
        let mut right = std::mem::take(&mut self.right);
        left.clear();
        left.push((p, 0));
        left.extend(
            self.ancestors[p as usize]
                .iter()
                .map(|(&a, &k)| (a, k & !TOUCHED)),
        );
        self.descendants_of(c, &mut right);

        let bound = (left.len() as u64) * (right.len() as u64);
        let mut fits = self.pairs + bound <= self.limits.max_reach_pairs;
        if !fits {
            // Count the pairs that would be new.
            let mut new = 0u64;
            for &(d, _) in &right {
                let known = &self.ancestors[d as usize];
                new += left.iter().filter(|(a, _)| !known.contains_key(a)).count() as u64;
            }
            fits = self.pairs + new <= self.limits.max_reach_pairs;
        }
        if fits {
            for &(d, dd) in &right {
                let ancestors = &mut self.ancestors[d as usize];
                if ancestors.is_empty() {
                    ancestors.reserve(left.len());
                }
                for &(a, da) in &left {
                    let distance = da + 1 + dd;
                    match ancestors.entry(a) {
                        std::collections::hash_map::Entry::Occupied(mut e) => {
                            let current = *e.get();
                            if current & !TOUCHED <= distance {
                                continue;
                            }
                            if current & TOUCHED == 0 {
                                batch.shortened.push(((a, d), current));
                            }
                            *e.get_mut() = distance | TOUCHED;
                        }
                        std::collections::hash_map::Entry::Vacant(e) => {
                            e.insert(distance | TOUCHED);
                            self.pairs += 1;
                            batch.created.push((a, d));
                        }
                    }
                }
            }
        }
        self.left = left;
        self.right = right;
        fits
    }
}

/// The outputs of [`DagViews::dag_views`].
pub struct DagStreams<'scope, T: Timestamp> {
    /// `blob_reach`.
    pub reach: VecCollection<'scope, T, ReachRow>,
    /// `blob_depth`.
    pub depth: VecCollection<'scope, T, DepthRow>,
    /// `user_depth`.
    pub user_depth: VecCollection<'scope, T, UserDepthRow>,
    /// Edges left out of the views at the pair limit (reason [`REACH_LIMIT_REASON`]).
    pub limited: VecCollection<'scope, T, RejectedEdgeRow>,
}

/// The DAG views of S5.2 from the edges whose ends exist and the created blobs.
pub trait DagViews<'scope, T: Timestamp> {
    /// `self`: the edges whose two ends are created blobs (insert-only); `created`:
    /// `(blob, owner)` of every created blob (insert-only).
    fn dag_views(
        self,
        created: VecCollection<'scope, T, (Uuid, Uuid)>,
        limits: DagLimits,
    ) -> DagStreams<'scope, T>;
}

type Out<D, T> = CapacityContainerBuilder<Vec<(D, T, isize)>>;

/// One timestamp's input: capabilities for the four outputs, created blobs, edges.
type Pending<T> = (Vec<Capability<T>>, Vec<(Uuid, Uuid)>, Vec<EdgeRow>);

impl<'scope, T: Timestamp + TotalOrder> DagViews<'scope, T> for VecCollection<'scope, T, EdgeRow> {
    fn dag_views(
        self,
        created: VecCollection<'scope, T, (Uuid, Uuid)>,
        limits: DagLimits,
    ) -> DagStreams<'scope, T> {
        let mut builder = OperatorBuilder::new("DagViews".to_owned(), self.scope());
        let mut edges_in = builder.new_input(self.inner, Exchange::new(|_: &_| 0));
        let mut created_in = builder.new_input(created.inner, Exchange::new(|_: &_| 0));
        let (reach_out, reach) = builder.new_output();
        let (depth_out, depth) = builder.new_output();
        let (user_out, user_depth) = builder.new_output();
        let (limited_out, limited) = builder.new_output();
        let mut reach_out = OutputBuilder::<_, Out<ReachRow, T>>::from(reach_out);
        let mut depth_out = OutputBuilder::<_, Out<DepthRow, T>>::from(depth_out);
        let mut user_out = OutputBuilder::<_, Out<UserDepthRow, T>>::from(user_out);
        let mut limited_out = OutputBuilder::<_, Out<RejectedEdgeRow, T>>::from(limited_out);

        builder.build(move |_| {
            let mut closure = Closure::new(limits);
            let mut pending: BTreeMap<T, Pending<T>> = BTreeMap::new();
            move |frontiers| {
                edges_in.for_each_stamp(|cap, data| {
                    stash(&mut pending, &cap, data, |p, edge| p.2.push(edge));
                });
                created_in.for_each_stamp(|cap, data| {
                    stash(&mut pending, &cap, data, |p, blob| p.1.push(blob));
                });
                let mut reach_session = reach_out.activate();
                let mut depth_session = depth_out.activate();
                let mut user_session = user_out.activate();
                let mut limited_session = limited_out.activate();
                while let Some(entry) = pending.first_entry() {
                    let time = entry.key().clone();
                    if frontiers.iter().any(|f| f.less_equal(&time)) {
                        break;
                    }
                    let (caps, created, edges) = entry.remove();
                    let pairs: Vec<(Uuid, Uuid)> =
                        edges.iter().map(|e| (e.parent_id, e.child_id)).collect();
                    let changes = closure.apply(&created, &pairs);
                    let reach = changes.reach.into_iter().map(|((a, d), old, new)| {
                        let row = |distance| ReachRow {
                            ancestor_id: closure.id(a),
                            descendant_id: closure.id(d),
                            distance,
                        };
                        (old.map(row), row(new))
                    });
                    reach_session
                        .session(&caps[0])
                        .give_iterator(updates(&time, reach));
                    let depth = changes.depth.into_iter().map(|(n, old, new)| {
                        let blob_id = closure.id(n);
                        let row = |depth| DepthRow { blob_id, depth };
                        (old.map(row), row(new))
                    });
                    depth_session
                        .session(&caps[1])
                        .give_iterator(updates(&time, depth));
                    let user_depth = changes.user_depth.into_iter().map(|(user_id, old, new)| {
                        let row = |max_depth| UserDepthRow { user_id, max_depth };
                        (old.map(row), row(new))
                    });
                    user_session
                        .session(&caps[2])
                        .give_iterator(updates(&time, user_depth));
                    if !changes.limited.is_empty() {
                        let rows = limited_rows(&closure, &edges, changes.limited);
                        let mut out = limited_session.session(&caps[3]);
                        out.give_iterator(rows.into_iter().map(|row| (row, time.clone(), 1)));
                    }
                }
            }
        });
        DagStreams {
            reach: reach.as_collection(),
            depth: depth.as_collection(),
            user_depth: user_depth.as_collection(),
            limited: limited.as_collection(),
        }
    }
}

/// Adds one input's updates to the pending timestamps, with capabilities for the four
/// outputs at each new timestamp.
fn stash<'a, T: Timestamp, D: 'a>(
    pending: &mut BTreeMap<T, Pending<T>>,
    cap: &timely::dataflow::operators::InputCapability<T>,
    data: impl IntoIterator<Item = &'a mut Vec<(D, T, isize)>>,
    push: impl Fn(&mut Pending<T>, D),
) {
    for batch in data {
        for (item, time, diff) in batch.drain(..) {
            debug_assert!(diff > 0, "the DAG's inputs are insert-only");
            let entry = pending.entry(time.clone()).or_insert_with(|| {
                let caps = (0..4).map(|port| cap.delayed(&time, port)).collect();
                (caps, Vec::new(), Vec::new())
            });
            if diff > 0 {
                push(entry, item);
            }
        }
    }
}

/// Each change as collection updates at `time`: `-old` (if any), `+new`.
fn updates<T: Timestamp, R>(
    time: &T,
    changes: impl IntoIterator<Item = (Option<R>, R)>,
) -> impl Iterator<Item = (R, T, isize)> {
    changes.into_iter().flat_map(move |(old, new)| {
        let retract = old.map(|old| (old, time.clone(), -1));
        retract.into_iter().chain([(new, time.clone(), 1)])
    })
}

/// The `rejected_edges` rows of the edges left out at the pair limit (S5.2).
fn limited_rows(
    closure: &Closure,
    edges: &[EdgeRow],
    limited: Vec<(u32, u32)>,
) -> Vec<RejectedEdgeRow> {
    let by_pair: FxHashMap<(Uuid, Uuid), Uuid> = edges
        .iter()
        .map(|e| ((e.parent_id, e.child_id), e.delta_id))
        .collect();
    limited
        .into_iter()
        .map(|(p, c)| {
            let (parent_id, child_id) = (closure.id(p), closure.id(c));
            RejectedEdgeRow {
                delta_id: by_pair[&(parent_id, child_id)],
                parent_id,
                child_id,
                reason: REACH_LIMIT_REASON.to_owned(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::{BTreeSet, HashMap, VecDeque};

    fn id(n: u32) -> Uuid {
        Uuid::from_u128(0xb000 + u128::from(n))
    }

    fn owner(n: u32) -> Uuid {
        Uuid::from_u128(0xa000 + u128::from(n % 3))
    }

    /// The views held as maps, updated by [`Changes`] (checking that every `old` is
    /// what the map held).
    #[derive(Default, Debug, PartialEq)]
    struct Views {
        reach: BTreeMap<(Uuid, Uuid), u32>,
        depth: BTreeMap<Uuid, u32>,
        user_depth: BTreeMap<Uuid, u32>,
    }

    impl Views {
        fn apply(&mut self, closure: &Closure, changes: &Changes) {
            for &((a, d), old, new) in &changes.reach {
                let key = (closure.id(a), closure.id(d));
                assert_eq!(self.reach.insert(key, new), old, "reach {key:?}");
                assert_ne!(old, Some(new), "a change changes");
            }
            for &(n, old, new) in &changes.depth {
                assert_eq!(self.depth.insert(closure.id(n), new), old, "depth");
            }
            for &(u, old, new) in &changes.user_depth {
                assert_eq!(self.user_depth.insert(u, new), old, "user depth");
            }
        }
    }

    /// BFS from every node and a longest path by repeated relaxation: the oracle.
    fn oracle(created: &BTreeSet<u32>, edges: &BTreeSet<(u32, u32)>) -> Views {
        let mut out: HashMap<u32, Vec<u32>> = HashMap::new();
        for &(p, c) in edges {
            out.entry(p).or_default().push(c);
        }
        let mut views = Views::default();
        for &start in created {
            let mut dist = HashMap::from([(start, 0u32)]);
            let mut queue = VecDeque::from([start]);
            while let Some(x) = queue.pop_front() {
                for &y in out.get(&x).into_iter().flatten() {
                    if !dist.contains_key(&y) {
                        dist.insert(y, dist[&x] + 1);
                        views.reach.insert((id(start), id(y)), dist[&x] + 1);
                        queue.push_back(y);
                    }
                }
            }
        }
        let mut depth: HashMap<u32, u32> = created.iter().map(|&n| (n, 0)).collect();
        loop {
            let mut changed = false;
            for &(p, c) in edges {
                if depth[&p] + 1 > depth[&c] {
                    depth.insert(c, depth[&p] + 1);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        for (&n, &d) in &depth {
            views.depth.insert(id(n), d);
            let deepest = views.user_depth.entry(owner(n)).or_insert(0);
            *deepest = (*deepest).max(d);
        }
        views
    }

    /// Random DAGs (edges from lower to higher numbers, including long chains and
    /// diamonds), blobs and edges added in random batches, edges arriving once both
    /// ends exist; after every batch the views equal the oracle's.
    #[test]
    fn random_dags_in_random_batches_match_the_oracle() {
        for seed in 0..60 {
            let mut rng = StdRng::seed_from_u64(seed);
            let n: u32 = rng.random_range(2..60);
            let mut edges: Vec<(u32, u32)> = Vec::new();
            for c in 1..n {
                if rng.random_bool(0.8) {
                    let p = if rng.random_bool(0.5) {
                        c - 1
                    } else {
                        rng.random_range(0..c)
                    };
                    edges.push((p, c));
                }
                if rng.random_bool(0.3) {
                    edges.push((rng.random_range(0..c), c));
                }
            }
            // Blobs created in random order; each edge offered once both ends exist.
            let mut order: Vec<u32> = (0..n).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
            let mut closure = Closure::new(DagLimits::default());
            let mut views = Views::default();
            let (mut created, mut present) = (BTreeSet::new(), BTreeSet::new());
            let mut next = 0;
            while next < order.len() {
                let take = rng.random_range(1..=4).min(order.len() - next);
                let batch: Vec<u32> = order[next..next + take].to_vec();
                next += take;
                created.extend(batch.iter().copied());
                let mut new_edges: Vec<(Uuid, Uuid)> = Vec::new();
                for &(p, c) in &edges {
                    if created.contains(&p) && created.contains(&c) && present.insert((p, c)) {
                        new_edges.push((id(p), id(c)));
                    }
                }
                for i in (1..new_edges.len()).rev() {
                    new_edges.swap(i, rng.random_range(0..=i));
                }
                let blobs: Vec<(Uuid, Uuid)> = batch.iter().map(|&b| (id(b), owner(b))).collect();
                let changes = closure.apply(&blobs, &new_edges);
                assert!(changes.limited.is_empty());
                views.apply(&closure, &changes);
                assert_eq!(views, oracle(&created, &present), "seed {seed}");
                assert_eq!(closure.pairs() as usize, views.reach.len());
            }
        }
    }

    /// A new blob at the end of a long chain adds its pairs and one depth, nothing else.
    #[test]
    fn a_blob_at_the_end_of_a_chain_costs_its_own_pairs() {
        let n = 1000;
        let mut closure = Closure::new(DagLimits::default());
        let blobs: Vec<(Uuid, Uuid)> = (0..n).map(|b| (id(b), owner(0))).collect();
        let edges: Vec<(Uuid, Uuid)> = (1..n).map(|c| (id(c - 1), id(c))).collect();
        let changes = closure.apply(&blobs, &edges);
        assert_eq!(changes.reach.len() as u32, n * (n - 1) / 2);
        let changes = closure.apply(&[(id(n), owner(0))], &[(id(n - 1), id(n))]);
        assert_eq!(changes.reach.len() as u32, n);
        assert_eq!(changes.depth, vec![(n, None, n)]);
        assert_eq!(changes.user_depth, vec![(owner(0), Some(n - 1), n)]);
    }

    /// Issue #16's batches on a 1,000-long chain beside a small forest: batches of new
    /// derived blobs under random blobs (1 in 10 with a second parent: a diamond), then
    /// batches of random shortcuts between existing blobs; after every batch the views
    /// equal the oracle's.
    #[test]
    fn derived_blobs_and_shortcuts_on_a_long_chain_match_the_oracle() {
        let mut rng = StdRng::seed_from_u64(16);
        let chain = 1000u32;
        let mut created: BTreeSet<u32> = (0..chain + 50).collect();
        let mut edges: BTreeSet<(u32, u32)> = (1..chain).map(|c| (c - 1, c)).collect();
        // A forest of 50 blobs, one of them above the chain's head.
        for c in chain + 1..chain + 50 {
            edges.insert((rng.random_range(chain..c), c));
        }
        edges.insert((chain + 3, 0));
        let blobs: Vec<(Uuid, Uuid)> = created.iter().map(|&b| (id(b), owner(b))).collect();
        let first: Vec<(Uuid, Uuid)> = edges.iter().map(|&(p, c)| (id(p), id(c))).collect();
        let mut closure = Closure::new(DagLimits::default());
        let mut views = Views::default();
        let changes = closure.apply(&blobs, &first);
        views.apply(&closure, &changes);
        assert_eq!(views, oracle(&created, &edges));
        // A topological order: the forest, then the chain (under blob chain+3), then the
        // derived blobs in order.
        let rank = |x: u32| match x {
            x if x < chain => 100 + x,
            x if x < chain + 50 => x - chain,
            x => 10_000 + x,
        };
        let mut next = chain + 50;
        for round in 0..6 {
            let (mut blobs, mut new_edges) = (Vec::new(), Vec::new());
            for _ in 0..40 {
                if round < 3 {
                    let c = next;
                    next += 1;
                    blobs.push((id(c), owner(c)));
                    created.insert(c);
                    let p = rng.random_range(0..c);
                    new_edges.push((p, c));
                    if rng.random_bool(0.1) {
                        new_edges.push((rng.random_range(0..c), c));
                    }
                } else {
                    let (a, b) = (rng.random_range(0..next), rng.random_range(0..next));
                    let (a, b) = if rank(a) < rank(b) { (a, b) } else { (b, a) };
                    if a != b {
                        new_edges.push((a, b));
                    }
                }
            }
            new_edges.retain(|e| edges.insert(*e));
            let pairs: Vec<(Uuid, Uuid)> = new_edges.iter().map(|&(p, c)| (id(p), id(c))).collect();
            let changes = closure.apply(&blobs, &pairs);
            assert!(changes.limited.is_empty());
            views.apply(&closure, &changes);
            assert_eq!(views, oracle(&created, &edges), "round {round}");
            assert_eq!(closure.pairs() as usize, views.reach.len());
        }
    }

    /// At the pair limit an edge is left out whole, and the views are those of the graph
    /// without it.
    #[test]
    fn the_pair_limit_leaves_out_whole_edges() {
        let limits = DagLimits {
            max_reach_pairs: 50,
        };
        let mut closure = Closure::new(limits);
        let mut views = Views::default();
        let n = 20u32;
        let mut kept = BTreeSet::new();
        let created: BTreeSet<u32> = (0..n).collect();
        let blobs: Vec<(Uuid, Uuid)> = (0..n).map(|b| (id(b), owner(b))).collect();
        let changes = closure.apply(&blobs, &[]);
        views.apply(&closure, &changes);
        let mut limited = 0;
        for c in 1..n {
            let changes = closure.apply(&[], &[(id(c - 1), id(c))]);
            views.apply(&closure, &changes);
            if changes.limited.is_empty() {
                kept.insert((c - 1, c));
            } else {
                assert_eq!(changes.limited, vec![(c - 1, c)]);
                assert!(changes.reach.is_empty() && changes.depth.is_empty());
                limited += 1;
            }
            assert!(closure.pairs() <= 50);
        }
        assert!(limited > 0);
        assert_eq!(views, oracle(&created, &kept));
    }

    /// Issue #16's deep case: a chain of 10,000 edges in one batch would be 50M pairs.
    /// The limit holds (10M pairs by default; 1M in debug builds, to keep the test
    /// quick), the edges past it are left out and reported, and the batch completes.
    #[test]
    fn a_chain_of_10000_edges_stops_at_the_pair_limit() {
        let limit = if cfg!(debug_assertions) {
            1_000_000
        } else {
            MAX_REACH_PAIRS
        };
        let n = 10_001u32;
        let mut closure = Closure::new(DagLimits {
            max_reach_pairs: limit,
        });
        let blobs: Vec<(Uuid, Uuid)> = (0..n).map(|b| (id(b), owner(0))).collect();
        let edges: Vec<(Uuid, Uuid)> = (1..n).map(|c| (id(c - 1), id(c))).collect();
        let started = std::time::Instant::now();
        let changes = closure.apply(&blobs, &edges);
        let elapsed = started.elapsed();
        assert!(closure.pairs() <= limit);
        assert_eq!(changes.reach.len() as u64, closure.pairs());
        assert!(!changes.limited.is_empty());
        // Exactly the views of the chain without the edges left out: each kept run of
        // the chain is a chain of its own.
        let left_out: BTreeSet<u32> = changes.limited.iter().map(|&(_, c)| c).collect();
        let (mut pairs, mut run) = (0u64, 0u64);
        for c in 1..n {
            run = if left_out.contains(&c) { 0 } else { run + 1 };
            pairs += run;
        }
        assert_eq!(closure.pairs(), pairs);
        eprintln!(
            "chain of {} edges, limit {limit}: {} pairs kept, {} edges left out, {:.2} s",
            n - 1,
            closure.pairs(),
            changes.limited.len(),
            elapsed.as_secs_f64()
        );
    }
}
