//! The blob DAG (SPEC S5.1, S5.2) through the whole pipeline: delta logs replayed by
//! `studio_dataflow::replay::replay` into SQLite, the five DAG tables (`blob_edges`,
//! `rejected_edges`, `blob_reach`, `blob_depth`, `user_depth`) read back and held to
//! an oracle written here with plain DFS/BFS (not with `studio_model::dag::TopoOrder`).
//!
//! The oracle's semantics: accepted deltas in acceptance order (log order for logs
//! whose deltas all apply in order); per delta its proposed edges in order (the create's
//! `parent_id` edge first, then `child_ids` as listed); an edge `p -> c` is refused as
//! `S5.1 cycle` when `p == c` or `c` already reaches `p` through accepted edges (whether
//! or not their blobs exist yet), ignored when already accepted, else accepted with its
//! delta id. The views count an accepted edge once both ends are created blobs (deleted
//! ones included): `blob_reach` is every connected pair with its shortest distance,
//! `blob_depth` the longest path from a root for every created blob, `user_depth` the
//! deepest blob of each owner.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use studio_config::{Config, ReplayConfig};
use studio_connectors::sqlite::SqliteViews;
use studio_connectors::{SinkError, ViewSink};
use studio_dataflow::replay::{Progress, ReplayReport, replay};
use studio_model::{Uuid, ViewBatch};
use studio_tests::model::join_lines;
use studio_tests::views::{Tables, new_sqlite_views, read_tables};

const CYCLE: &str = "S5.1 cycle";

// ---------------------------------------------------------------------------------------
// Ids and deltas
// ---------------------------------------------------------------------------------------

fn uuid(kind: u32, n: u64) -> Uuid {
    Uuid::parse_str(&format!("{kind:08x}-0000-4000-8000-{n:012x}")).expect("a valid uuid")
}
fn blob(n: u32) -> Uuid {
    uuid(0xb, u64::from(n))
}
fn user(n: u32) -> Uuid {
    uuid(0xa, u64::from(n))
}
fn delta_id(n: u64) -> Uuid {
    uuid(0xd, n)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// `create` (version 1), with an optional `parent_id`.
    Create(Option<u32>),
    /// `update` with a merge patch.
    Update,
    /// `delete`.
    Delete,
    /// An `update` whose JSON Patch cannot apply: a dead letter (S3.2), and its edges
    /// must never be proposed.
    Failing,
}

/// One delta of a test log, before it is rendered as a JSON line.
#[derive(Clone, Debug)]
struct D {
    id: u64,
    blob: u32,
    user: u32,
    op: Op,
    version: u64,
    child_ids: Vec<u32>,
}

impl D {
    fn line(&self) -> Vec<u8> {
        let (operation, patch) = match self.op {
            Op::Create(_) => ("create", Some(format!(r#"{{"k":{}}}"#, self.blob))),
            Op::Update => ("update", Some(format!(r#"{{"n":{}}}"#, self.id))),
            Op::Delete => ("delete", None),
            Op::Failing => (
                "update",
                Some(r#"[{"op":"remove","path":"/missing"}]"#.to_owned()),
            ),
        };
        let mut fields = vec![
            format!(r#""id":"{}""#, delta_id(self.id)),
            format!(r#""blob_id":"{}""#, blob(self.blob)),
            format!(r#""user_id":"{}""#, user(self.user)),
            format!(r#""operation":"{operation}""#),
            format!(r#""version":{}"#, self.version),
            format!(
                r#""created_at":"2026-01-01T00:{:02}:{:02}Z""#,
                (self.id / 60) % 60,
                self.id % 60
            ),
        ];
        if let Some(p) = patch {
            fields.push(format!(r#""patch":{p}"#));
        }
        if let Op::Create(Some(parent)) = self.op {
            fields.push(format!(r#""parent_id":"{}""#, blob(parent)));
        }
        if !self.child_ids.is_empty() {
            let ids: Vec<String> = self
                .child_ids
                .iter()
                .map(|&c| format!(r#""{}""#, blob(c)))
                .collect();
            fields.push(format!(r#""child_ids":[{}]"#, ids.join(",")));
        }
        format!("{{{}}}", fields.join(",")).into_bytes()
    }
}

fn lines_of(deltas: &[D]) -> Vec<Vec<u8>> {
    deltas.iter().map(D::line).collect()
}

/// Writes hand-made logs: ids and versions are counted for the caller.
#[derive(Default)]
struct Log {
    deltas: Vec<D>,
    versions: HashMap<u32, u64>,
    owners: HashMap<u32, u32>,
}

impl Log {
    fn push(&mut self, blob: u32, op: Op, child_ids: &[u32]) -> Uuid {
        let id = self.deltas.len() as u64 + 1;
        let version = match op {
            Op::Create(_) => 1,
            Op::Failing => self.versions[&blob] + 1,
            Op::Update | Op::Delete => {
                let v = self.versions.get_mut(&blob).expect("created before");
                *v += 1;
                *v
            }
        };
        if let Op::Create(_) = op {
            self.versions.insert(blob, 1);
        }
        // One owner: an edge across owners needs a read grant (S6.4), which these
        // record-counting logs do not carry (access is tested in tests/tests/access.rs).
        let owner = *self.owners.entry(blob).or_insert(0);
        self.deltas.push(D {
            id,
            blob,
            user: owner,
            op,
            version,
            child_ids: child_ids.to_vec(),
        });
        delta_id(id)
    }
    fn create(&mut self, blob: u32, parent: Option<u32>, child_ids: &[u32]) -> Uuid {
        self.push(blob, Op::Create(parent), child_ids)
    }
    fn update(&mut self, blob: u32, child_ids: &[u32]) -> Uuid {
        self.push(blob, Op::Update, child_ids)
    }
    fn lines(&self) -> Vec<Vec<u8>> {
        lines_of(&self.deltas)
    }
}

// ---------------------------------------------------------------------------------------
// The oracle
// ---------------------------------------------------------------------------------------

/// The five DAG tables, sorted (the rejected edges as a multiset).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct DagViews {
    /// (parent, child, delta that added it first).
    edges: Vec<(Uuid, Uuid, Uuid)>,
    /// (delta, parent, child, reason).
    rejected: Vec<(Uuid, Uuid, Uuid, String)>,
    /// (ancestor, descendant, shortest distance).
    reach: Vec<(Uuid, Uuid, u32)>,
    /// (blob, longest path from a root).
    depth: Vec<(Uuid, u32)>,
    /// (user, deepest of their blobs).
    user_depth: Vec<(Uuid, u32)>,
}

impl DagViews {
    fn sorted(mut self) -> Self {
        self.edges.sort();
        self.rejected.sort();
        self.reach.sort();
        self.depth.sort();
        self.user_depth.sort();
        self
    }
}

/// What the oracle saw besides the views, to check that a generated log exercises the
/// rules it is meant to.
#[derive(Debug, Default)]
struct Stats {
    self_loops: usize,
    cycles: usize,
    repeats: usize,
    /// Edges accepted while one of their ends did not exist yet.
    early: usize,
    failing: usize,
    deleted: usize,
}

#[derive(Default)]
struct Oracle {
    /// Accepted edges, from the parent, in acceptance order.
    out: HashMap<u32, Vec<u32>>,
    /// Accepted edge -> the delta that added it.
    accepted: BTreeMap<(u32, u32), u64>,
    rejected: Vec<(u64, u32, u32)>,
    /// Created blob -> owner.
    created: BTreeMap<u32, u32>,
    stats: Stats,
}

impl Oracle {
    /// Runs the semantics over `deltas`, which must all apply in log order except the
    /// `Failing` ones.
    fn run(deltas: &[D]) -> Oracle {
        let mut o = Oracle::default();
        for d in deltas {
            let mut proposed = Vec::new();
            match d.op {
                Op::Failing => {
                    o.stats.failing += 1;
                    continue;
                }
                Op::Create(parent) => {
                    o.created.insert(d.blob, d.user);
                    proposed.extend(parent.map(|p| (p, d.blob)));
                }
                Op::Delete => o.stats.deleted += 1,
                Op::Update => {}
            }
            proposed.extend(d.child_ids.iter().map(|&c| (d.blob, c)));
            for (p, c) in proposed {
                o.propose(p, c, d.id);
            }
        }
        o
    }

    /// Depth-first search over every accepted edge.
    fn reaches(&self, from: u32, to: u32) -> bool {
        let mut seen = HashSet::new();
        let mut stack = vec![from];
        while let Some(n) = stack.pop() {
            if n == to {
                return true;
            }
            if seen.insert(n) {
                stack.extend(self.out.get(&n).into_iter().flatten().copied());
            }
        }
        false
    }

    fn propose(&mut self, p: u32, c: u32, delta: u64) {
        if p == c {
            self.stats.self_loops += 1;
            self.rejected.push((delta, p, c));
        } else if self.reaches(c, p) {
            self.stats.cycles += 1;
            self.rejected.push((delta, p, c));
        } else if self.accepted.contains_key(&(p, c)) {
            self.stats.repeats += 1;
        } else {
            if !(self.created.contains_key(&p) && self.created.contains_key(&c)) {
                self.stats.early += 1;
            }
            self.accepted.insert((p, c), delta);
            self.out.entry(p).or_default().push(c);
        }
    }

    /// The accepted edges whose two ends are created blobs.
    fn live(&self) -> impl Iterator<Item = (u32, u32, u64)> + '_ {
        self.accepted
            .iter()
            .filter(|((p, c), _)| self.created.contains_key(p) && self.created.contains_key(c))
            .map(|(&(p, c), &d)| (p, c, d))
    }

    fn views(&self) -> DagViews {
        let mut live_out: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        let mut indegree: BTreeMap<u32, usize> = self.created.keys().map(|&b| (b, 0)).collect();
        for (p, c, _) in self.live() {
            live_out.entry(p).or_default().push(c);
            *indegree.get_mut(&c).expect("created") += 1;
        }
        // Reach: a breadth-first search from every created blob.
        let mut reach = Vec::new();
        for &start in self.created.keys() {
            let mut dist: HashMap<u32, u32> = HashMap::from([(start, 0)]);
            let mut queue = VecDeque::from([start]);
            while let Some(n) = queue.pop_front() {
                for &m in live_out.get(&n).into_iter().flatten() {
                    if !dist.contains_key(&m) {
                        dist.insert(m, dist[&n] + 1);
                        reach.push((blob(start), blob(m), dist[&m]));
                        queue.push_back(m);
                    }
                }
            }
        }
        // Depth: longest path from a root, relaxed in a topological order (Kahn).
        let mut depth: BTreeMap<u32, u32> = self.created.keys().map(|&b| (b, 0)).collect();
        let mut queue: VecDeque<u32> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(&b, _)| b)
            .collect();
        let mut visited = 0;
        while let Some(n) = queue.pop_front() {
            visited += 1;
            for &m in live_out.get(&n).into_iter().flatten() {
                let candidate = depth[&n] + 1;
                let dm = depth.get_mut(&m).expect("created");
                *dm = (*dm).max(candidate);
                let deg = indegree.get_mut(&m).expect("created");
                *deg -= 1;
                if *deg == 0 {
                    queue.push_back(m);
                }
            }
        }
        assert_eq!(
            visited,
            self.created.len(),
            "the oracle's graph has a cycle"
        );
        let mut user_depth: BTreeMap<u32, u32> = BTreeMap::new();
        for (b, owner) in &self.created {
            let e = user_depth.entry(*owner).or_default();
            *e = (*e).max(depth[b]);
        }
        DagViews {
            edges: self
                .live()
                .map(|(p, c, d)| (blob(p), blob(c), delta_id(d)))
                .collect(),
            rejected: self
                .rejected
                .iter()
                .map(|&(d, p, c)| (delta_id(d), blob(p), blob(c), CYCLE.to_owned()))
                .collect(),
            reach,
            depth: depth.into_iter().map(|(b, d)| (blob(b), d)).collect(),
            user_depth: user_depth.into_iter().map(|(u, d)| (user(u), d)).collect(),
        }
        .sorted()
    }
}

fn expected(deltas: &[D]) -> DagViews {
    Oracle::run(deltas).views()
}

// ---------------------------------------------------------------------------------------
// Replaying and reading back
// ---------------------------------------------------------------------------------------

/// A sink that keeps a copy of every batch it commits, then writes it to SQLite.
struct Recording {
    inner: SqliteViews,
    batches: Arc<Mutex<Vec<ViewBatch>>>,
}

impl ViewSink for Recording {
    fn write(&mut self, batch: &ViewBatch) -> Result<(), SinkError> {
        self.batches.lock().unwrap().push(batch.clone());
        self.inner.write(batch)
    }
    fn finish(&mut self) -> Result<(), SinkError> {
        self.inner.finish()
    }
}

struct Run {
    report: ReplayReport,
    dag: DagViews,
    tables: Tables,
    /// Every committed batch, in order.
    batches: Vec<ViewBatch>,
}

fn replay_lines(lines: &[Vec<u8>], config: &ReplayConfig) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("log.jsonl");
    std::fs::write(&log, join_lines(lines)).expect("write the log");
    let db: PathBuf = dir.path().join("views.sqlite");
    let inner = new_sqlite_views(&db);
    let batches = Arc::new(Mutex::new(Vec::new()));
    let sink = Recording {
        inner,
        batches: Arc::clone(&batches),
    };
    let report = replay(
        &[log],
        config,
        Box::new(sink),
        Arc::new(Progress::default()),
        &Default::default(),
    )
    .expect("replay");
    let dag = read_dag(&db);
    let tables = read_tables(&db).expect("read the views");
    let batches = std::mem::take(&mut *batches.lock().unwrap());
    Run {
        report,
        dag,
        tables,
        batches,
    }
}

fn parse(text: &str) -> Uuid {
    Uuid::parse_str(text).unwrap_or_else(|e| panic!("{text:?} is not a uuid: {e}"))
}

/// Reads the five DAG tables of a view database.
fn read_dag(path: &Path) -> DagViews {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let options = SqliteConnectOptions::from_str("sqlite:")
            .unwrap()
            .filename(path)
            .create_if_missing(false);
        let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
        let edges: Vec<(String, String, String)> =
            sqlx::query_as("SELECT parent_id, child_id, delta_id FROM blob_edges")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        let rejected: Vec<(String, String, String, String)> =
            sqlx::query_as("SELECT delta_id, parent_id, child_id, reason FROM rejected_edges")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        let reach: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT ancestor_id, descendant_id, distance FROM blob_reach")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        let depth: Vec<(String, i64)> = sqlx::query_as("SELECT blob_id, depth FROM blob_depth")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        let user_depth: Vec<(String, i64)> =
            sqlx::query_as("SELECT user_id, max_depth FROM user_depth")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        conn.close().await.unwrap();
        let n = |v: i64| u32::try_from(v).expect("a small non-negative integer");
        DagViews {
            edges: edges
                .iter()
                .map(|(p, c, d)| (parse(p), parse(c), parse(d)))
                .collect(),
            rejected: rejected
                .into_iter()
                .map(|(d, p, c, r)| (parse(&d), parse(&p), parse(&c), r))
                .collect(),
            reach: reach
                .iter()
                .map(|(a, d, k)| (parse(a), parse(d), n(*k)))
                .collect(),
            depth: depth.iter().map(|(b, d)| (parse(b), n(*d))).collect(),
            user_depth: user_depth.iter().map(|(u, d)| (parse(u), n(*d))).collect(),
        }
        .sorted()
    })
}

/// The DAG views as a sequence of committed batches leaves them.
#[derive(Default)]
struct Replayed {
    edges: BTreeMap<(Uuid, Uuid), Uuid>,
    rejected: Vec<(Uuid, Uuid, Uuid, String)>,
    reach: BTreeMap<(Uuid, Uuid), u32>,
    depth: BTreeMap<Uuid, u32>,
    user_depth: BTreeMap<Uuid, u32>,
}

impl Replayed {
    fn apply(&mut self, b: &ViewBatch) {
        for k in &b.edges.deletes {
            self.edges.remove(k);
        }
        for r in &b.edges.upserts {
            self.edges.insert((r.parent_id, r.child_id), r.delta_id);
        }
        for k in &b.reach.deletes {
            self.reach.remove(k);
        }
        for r in &b.reach.upserts {
            self.reach
                .insert((r.ancestor_id, r.descendant_id), r.distance);
        }
        for k in &b.depth.deletes {
            self.depth.remove(k);
        }
        for r in &b.depth.upserts {
            self.depth.insert(r.blob_id, r.depth);
        }
        for k in &b.user_depth.deletes {
            self.user_depth.remove(k);
        }
        for r in &b.user_depth.upserts {
            self.user_depth.insert(r.user_id, r.max_depth);
        }
        self.rejected.extend(
            b.rejected_edges
                .iter()
                .map(|r| (r.delta_id, r.parent_id, r.child_id, r.reason.clone())),
        );
    }

    fn views(&self) -> DagViews {
        DagViews {
            edges: self.edges.iter().map(|(&(p, c), &d)| (p, c, d)).collect(),
            rejected: self.rejected.clone(),
            reach: self.reach.iter().map(|(&(a, d), &k)| (a, d, k)).collect(),
            depth: self.depth.iter().map(|(&b, &d)| (b, d)).collect(),
            user_depth: self.user_depth.iter().map(|(&u, &d)| (u, d)).collect(),
        }
        .sorted()
    }
}

/// Checks that the views after every committed batch are the oracle's views of a log
/// prefix ending at a batch boundary, the prefixes never going back: no batch ever
/// shows a half-applied delta or an edge the oracle refused.
fn assert_every_batch_is_a_prefix(deltas: &[D], run: &Run, batch_records: usize, what: &str) {
    let ends: Vec<usize> = (1..=deltas.len().div_ceil(batch_records))
        .map(|k| (k * batch_records).min(deltas.len()))
        .collect();
    let prefixes: Vec<DagViews> = ends.iter().map(|&end| expected(&deltas[..end])).collect();
    let mut state = Replayed::default();
    let mut at = 0;
    for (i, batch) in run.batches.iter().enumerate() {
        state.apply(batch);
        let now = state.views();
        match (at..prefixes.len()).find(|&k| prefixes[k] == now) {
            Some(k) => at = k,
            None => panic!(
                "{what}: after committed batch {i} the DAG views are no log prefix's; \
                 next prefix expected (records ..{}):\n{:#?}\ngot:\n{now:#?}",
                ends[at], prefixes[at]
            ),
        }
    }
    assert_eq!(
        state.views(),
        *prefixes.last().unwrap(),
        "{what}: final state"
    );
}

/// Compares one table, showing only the differing rows when it is large.
fn assert_table<T: Ord + Clone + std::fmt::Debug>(name: &str, got: &[T], want: &[T], ctx: &str) {
    if got == want {
        return;
    }
    let count = |rows: &[T]| {
        let mut m: BTreeMap<T, usize> = BTreeMap::new();
        for r in rows {
            *m.entry(r.clone()).or_default() += 1;
        }
        m
    };
    let (g, w) = (count(got), count(want));
    let missing: Vec<_> = w
        .iter()
        .filter(|(r, n)| g.get(*r) != Some(n))
        .take(12)
        .collect();
    let extra: Vec<_> = g
        .iter()
        .filter(|(r, n)| w.get(*r) != Some(n))
        .take(12)
        .collect();
    panic!(
        "{ctx}: {name} differs: got {} rows, expected {}\nexpected but missing (row, count): {missing:#?}\n\
         present but not expected (row, count): {extra:#?}",
        got.len(),
        want.len()
    );
}

fn assert_dag(got: &DagViews, want: &DagViews, ctx: &str) {
    assert_table("blob_edges", &got.edges, &want.edges, ctx);
    assert_table("rejected_edges", &got.rejected, &want.rejected, ctx);
    assert_table("blob_reach", &got.reach, &want.reach, ctx);
    assert_table("blob_depth", &got.depth, &want.depth, ctx);
    assert_table("user_depth", &got.user_depth, &want.user_depth, ctx);
}

fn config(workers: usize, batch_records: u64) -> ReplayConfig {
    ReplayConfig {
        workers,
        batch_records,
        max_batches_in_flight: 2,
        writer_queue_batches: 2,
        store_records: false,
    }
}

fn default_batch() -> u64 {
    Config::default().replay.batch_records
}

/// Replays with 1 and 2 workers, one batch and one record per batch; checks the DAG
/// views against the oracle (and every committed batch against a log prefix), and
/// returns the one-worker, one-batch run for the caller's own checks.
fn run_checked(deltas: &[D], what: &str) -> Run {
    let lines = lines_of(deltas);
    let want = expected(deltas);
    let mut first = None;
    for (workers, batch) in [(1, default_batch()), (2, 1), (1, 2), (2, default_batch())] {
        let ctx = format!("{what} ({workers} workers, batch_records {batch})");
        let run = replay_lines(&lines, &config(workers, batch));
        assert!(run.report.counts_add_up(), "{ctx}: {:?}", run.report);
        assert_dag(&run.dag, &want, &ctx);
        assert_every_batch_is_a_prefix(deltas, &run, batch as usize, &ctx);
        first.get_or_insert(run);
    }
    first.expect("ran")
}

fn depth_of(dag: &DagViews, b: u32) -> Option<u32> {
    dag.depth.iter().find(|(id, _)| *id == blob(b)).map(|r| r.1)
}

fn reach_of(dag: &DagViews, a: u32, d: u32) -> Option<u32> {
    dag.reach
        .iter()
        .find(|(x, y, _)| (*x, *y) == (blob(a), blob(d)))
        .map(|r| r.2)
}

fn edge_set(dag: &DagViews) -> BTreeSet<(Uuid, Uuid)> {
    dag.edges.iter().map(|&(p, c, _)| (p, c)).collect()
}

// ---------------------------------------------------------------------------------------
// Random logs against the oracle
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Shape {
    /// Trees of this many blobs (random recursive trees: each blob derived from an
    /// earlier one of its tree), with a few edges between trees.
    Forest(u32),
    /// Chains of this length: each blob derived from the one before.
    Chains(u32),
    /// The first half a forest of trees of 30, the second half chains of this length,
    /// each hanging off a forest blob.
    Mixed(u32),
}

#[derive(Clone, Copy, Debug)]
struct Case {
    seed: u64,
    blobs: u32,
    users: u32,
    shape: Shape,
    /// Updates per create, on average.
    updates: f64,
}

/// A random log: every blob created once (in index order, so a higher index is created
/// later), with updates, a few deletes and failing deltas interleaved, each delta at its
/// blob's next version.
///
/// Extra edges mostly stay within a blob's group (its tree or chain), so that the reach
/// view stays small enough for a debug build: an edge between two long chains would
/// add the product of their lengths.
fn generate(case: &Case) -> Vec<D> {
    let mut rng = StdRng::seed_from_u64(case.seed);
    let n = case.blobs;
    let half = n / 2;
    // The group of a blob: (first blob, end, whether it is a forest tree).
    let group = |i: u32| -> (u32, u32, bool) {
        let block = |base: u32, size: u32, end: u32, tree: bool| {
            let lo = base + (i - base) / size * size;
            (lo, (lo + size).min(end), tree)
        };
        match case.shape {
            Shape::Forest(size) => block(0, size, n, true),
            Shape::Chains(len) => block(0, len, n, false),
            Shape::Mixed(_) if i < half => block(0, 30, half, true),
            Shape::Mixed(len) => block(half, len, n, false),
        }
    };
    // The create's parent of every blob.
    let parents: Vec<Option<u32>> = (0..n)
        .map(|i| {
            let (lo, hi, tree) = group(i);
            let parent = if i == lo {
                // A tree's root; a chain's head hangs off a forest blob in Mixed.
                match case.shape {
                    Shape::Mixed(_) if !tree => Some(rng.random_range(0..half)),
                    _ => None,
                }
            } else if tree {
                rng.random_bool(0.9).then(|| rng.random_range(lo..i))
            } else {
                Some(i - 1)
            };
            // Now and then a parent created later (an edge that waits for its parent,
            // and may close a cycle), or the blob itself.
            parent.map(|p| match rng.random_range(0..100) {
                0..=2 if i + 1 < hi => rng.random_range(i + 1..hi),
                3 => i,
                _ => p,
            })
        })
        .collect();
    let mut children: Vec<Vec<u32>> = vec![Vec::new(); n as usize];
    for (i, p) in parents.iter().enumerate() {
        if let Some(p) = p.filter(|&p| p != i as u32) {
            children[p as usize].push(i as u32);
        }
    }
    let ancestor = |rng: &mut StdRng, b: u32| {
        let mut at = b;
        for _ in 0..rng.random_range(1..12) {
            match parents[at as usize] {
                Some(p) if p != at => at = p,
                _ => break,
            }
        }
        at
    };
    let descendant = |rng: &mut StdRng, b: u32| {
        let mut at = b;
        for _ in 0..rng.random_range(1..6) {
            let cs = &children[at as usize];
            if cs.is_empty() {
                break;
            }
            at = cs[rng.random_range(0..cs.len())];
        }
        at
    };

    let mut log: Vec<D> = Vec::new();
    let mut version: Vec<u64> = vec![0; n as usize];
    let mut deleted: Vec<bool> = vec![false; n as usize];
    let mut proposed: Vec<Vec<u32>> = vec![Vec::new(); n as usize];
    let owner = |b: u32| b.wrapping_mul(2_654_435_761) % case.users;
    let mut next_id = 1u64;
    for i in 0..n {
        // The create, sometimes announcing blobs of its group to be created later.
        let (_, hi, _) = group(i);
        let mut child_ids = Vec::new();
        if i + 1 < hi && rng.random_bool(0.15) {
            for _ in 0..rng.random_range(1..3) {
                child_ids.push(rng.random_range(i + 1..hi));
            }
        }
        proposed[i as usize].extend(&child_ids);
        log.push(D {
            id: next_id,
            blob: i,
            user: owner(i),
            op: Op::Create(parents[i as usize]),
            version: 1,
            child_ids,
        });
        next_id += 1;
        version[i as usize] = 1;

        let mut updates = case.updates;
        while updates > 0.0 && rng.random_bool(updates.min(1.0)) {
            updates -= 1.0;
            let b = rng.random_range(0..=i);
            if deleted[b as usize] {
                continue;
            }
            let (lo, hi, tree) = group(b);
            let mut child_ids = Vec::new();
            for _ in 0..rng.random_range(1..=3) {
                let c = match rng.random_range(0..100) {
                    // An ancestor: closes a cycle.
                    0..=21 => ancestor(&mut rng, b),
                    // A self-loop.
                    22..=29 => b,
                    // An edge this blob already proposed (a repeat, or a cycle again).
                    30..=41 => {
                        let p = &proposed[b as usize];
                        if p.is_empty() {
                            b
                        } else {
                            p[rng.random_range(0..p.len())]
                        }
                    }
                    // A blob of its group created later.
                    42..=56 if i + 1 < hi => rng.random_range((i + 1).max(lo)..hi),
                    // A descendant: a shortcut (a second, shorter path).
                    42..=71 => descendant(&mut rng, b),
                    // From a tree, anywhere (an edge between trees, or into a chain).
                    72..=79 if tree => rng.random_range(0..n),
                    // Anywhere in its group.
                    _ => rng.random_range(lo..hi),
                };
                child_ids.push(c);
            }
            let op = match rng.random_range(0..100) {
                0..=3 => Op::Failing,
                4..=5 => Op::Delete,
                _ => Op::Update,
            };
            if op != Op::Failing {
                proposed[b as usize].extend(&child_ids);
                version[b as usize] += 1;
            }
            if op == Op::Delete {
                deleted[b as usize] = true;
            }
            log.push(D {
                id: next_id,
                blob: b,
                user: owner(b),
                op,
                version: version[b as usize] + u64::from(op == Op::Failing),
                child_ids,
            });
            next_id += 1;
        }
    }
    log
}

/// A random configuration with `workers` workers and batches of `batch_records` (or,
/// one time in four, the default batch size).
fn random_config(
    rng: &mut StdRng,
    workers: usize,
    batch_records: std::ops::Range<u64>,
) -> ReplayConfig {
    ReplayConfig {
        workers,
        batch_records: if rng.random_bool(0.25) {
            default_batch()
        } else {
            rng.random_range(batch_records)
        },
        max_batches_in_flight: rng.random_range(1..5),
        writer_queue_batches: rng.random_range(1..4),
        store_records: false,
    }
}

fn check_case(case: &Case, configs: &[ReplayConfig]) -> Stats {
    let deltas = generate(case);
    let lines = lines_of(&deltas);
    let oracle = Oracle::run(&deltas);
    let want = oracle.views();
    let failing = oracle.stats.failing as u64;
    let mut first: Option<DagViews> = None;
    for config in configs {
        let ctx = format!("{case:?} with {config:?}");
        let run = replay_lines(&lines, config);
        assert!(run.report.counts_add_up(), "{ctx}: {:?}", run.report);
        assert_eq!(
            run.report.accepted,
            deltas.len() as u64 - failing,
            "{ctx}: accepted"
        );
        assert_eq!(run.report.dead_letters, failing, "{ctx}: dead letters");
        assert_dag(&run.dag, &want, &ctx);
        // A few batches: the state after each is also the oracle's, on a log prefix.
        assert_every_batch_is_a_prefix(&deltas, &run, config.batch_records as usize, &ctx);
        assert_eq!(
            run.report.edges_accepted,
            want.edges.len() as u64,
            "{ctx}: report.edges_accepted"
        );
        assert_eq!(
            run.report.edges_rejected,
            want.rejected.len() as u64,
            "{ctx}: report.edges_rejected"
        );
        assert_eq!(
            run.tables.blobs.len(),
            case.blobs as usize,
            "{ctx}: every blob created"
        );
        // Identical across worker counts and batchings (implied, and said).
        match &first {
            None => first = Some(run.dag),
            Some(f) => assert!(*f == run.dag, "{ctx}: differs from the first config"),
        }
    }
    oracle.stats
}

/// 1,620 blobs in all, forests and long chains, against the oracle, each
/// log replayed in one batch by one worker and in random batches by two (and the small
/// dense log once more, in batches of 20..100). Batches stay above 100 records for the
/// large logs because a debug build pays dearly per timestamp;
/// `random_dags_are_right_after_every_batch` covers batches of 1 to 4 records.
#[test]
fn random_dags_match_the_oracle() {
    let cases = [
        Case {
            seed: 1,
            blobs: 700,
            users: 1,
            shape: Shape::Forest(40),
            updates: 0.6,
        },
        Case {
            seed: 2,
            blobs: 200,
            users: 1,
            shape: Shape::Chains(100),
            updates: 0.4,
        },
        Case {
            seed: 3,
            blobs: 600,
            users: 1,
            shape: Shape::Mixed(40),
            updates: 0.5,
        },
        Case {
            seed: 4,
            blobs: 120,
            users: 1,
            shape: Shape::Forest(60),
            updates: 3.0,
        },
    ];
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut total = Stats::default();
    for case in &cases {
        let mut configs = vec![
            config(1, default_batch()),
            random_config(&mut rng, 2, 100..500),
        ];
        if case.blobs < 200 {
            let workers = rng.random_range(1..=2);
            configs.push(random_config(&mut rng, workers, 20..100));
        }
        let s = check_case(case, &configs);
        total.self_loops += s.self_loops;
        total.cycles += s.cycles;
        total.repeats += s.repeats;
        total.early += s.early;
        total.failing += s.failing;
        total.deleted += s.deleted;
    }
    // The logs exercise what they are meant to.
    assert!(total.self_loops > 50, "{total:?}");
    assert!(total.cycles > 100, "{total:?}");
    assert!(total.repeats > 50, "{total:?}");
    assert!(total.early > 100, "{total:?}");
    assert!(total.failing > 10, "{total:?}");
    assert!(total.deleted > 10, "{total:?}");
}

/// Smaller random logs, replayed a few records per batch: the views after every
/// committed batch are the oracle's views of a log prefix.
#[test]
fn random_dags_are_right_after_every_batch() {
    for seed in 10..13u64 {
        let case = Case {
            seed,
            blobs: 60,
            users: 1,
            shape: if seed % 2 == 0 {
                Shape::Forest(20)
            } else {
                Shape::Mixed(10)
            },
            updates: 1.0,
        };
        let deltas = generate(&case);
        let lines = lines_of(&deltas);
        let (workers, batch) = (1 + seed as usize % 2, 1 + seed % 4);
        let run = replay_lines(&lines, &config(workers, batch));
        assert_every_batch_is_a_prefix(
            &deltas,
            &run,
            batch as usize,
            &format!("{case:?}, {workers} workers, batch_records {batch}"),
        );
    }
}

// ---------------------------------------------------------------------------------------
// Fixed cases
// ---------------------------------------------------------------------------------------

/// S5.1: a self-loop is refused, while the rest of its delta (its patch, its other
/// edges) applies; a create whose parent is itself is created, without the edge.
#[test]
fn a_self_loop_is_rejected_and_the_rest_of_the_delta_applies() {
    let mut log = Log::default();
    log.create(0, None, &[]);
    let d = log.update(0, &[0, 1]);
    log.create(1, None, &[]);
    let d2 = log.create(2, Some(2), &[1]);
    let run = run_checked(&log.deltas, "self-loop");
    let dag = &run.dag;
    assert_eq!(
        dag.rejected,
        {
            let mut r = vec![
                (d, blob(0), blob(0), CYCLE.to_owned()),
                (d2, blob(2), blob(2), CYCLE.to_owned()),
            ];
            r.sort();
            r
        },
        "both self-loops, with their deltas"
    );
    assert_eq!(
        dag.edges,
        {
            let mut e = vec![(blob(0), blob(1), d), (blob(2), blob(1), d2)];
            e.sort();
            e
        },
        "the deltas' other edges"
    );
    let b0 = run
        .tables
        .blobs
        .iter()
        .find(|b| b.blob_id == blob(0).to_string())
        .expect("blob 0");
    assert_eq!(b0.version, 2);
    assert_eq!(b0.doc, r#"{"k":0,"n":2}"#, "the patch applied");
    assert_eq!(
        run.tables.blobs.len(),
        3,
        "the self-parented create applied"
    );
    assert!(run.tables.dead_letters.is_empty());
    assert!(dag.reach.iter().all(|(a, d, _)| a != d), "no reach to self");
    assert_eq!(depth_of(dag, 0), Some(0));
    assert_eq!(depth_of(dag, 2), Some(0));
    assert_eq!(depth_of(dag, 1), Some(1));
}

/// S5.2: two paths from 0 to 3, of length 2 (0-1-3) and 3 (0-2-4-3): the reach row
/// keeps the shorter, the depth the longer.
#[test]
fn a_diamond_gives_the_shortest_distance_and_the_longest_depth() {
    let mut log = Log::default();
    log.create(0, None, &[]);
    log.create(1, Some(0), &[]);
    log.create(2, Some(0), &[]);
    log.create(4, Some(2), &[]);
    log.create(3, Some(1), &[]);
    log.update(4, &[3]);
    let run = run_checked(&log.deltas, "diamond");
    let dag = &run.dag;
    assert_eq!(reach_of(dag, 0, 3), Some(2), "the shorter path");
    assert_eq!(depth_of(dag, 3), Some(3), "the longer path");
    assert_eq!(reach_of(dag, 2, 3), Some(2));
    assert_eq!(reach_of(dag, 3, 0), None);
    assert_eq!(dag.reach.len(), 8);
    assert_eq!(dag.edges.len(), 5);
    // One owner (see `Log::push`); user_depth across owners: tests/tests/access.rs.
    assert_eq!(dag.user_depth, vec![(user(0), 3)]);
}

/// A chain of 200 blobs: depth 199 at its end, n(n-1)/2 reach pairs, each at distance
/// j - i.
#[test]
fn a_long_chain() {
    let n = 200u32;
    let mut log = Log::default();
    for i in 0..n {
        log.create(i, i.checked_sub(1), &[]);
    }
    // Several batches: the chain grows across timestamps.
    let config = config(1, 37);
    let dag = replay_lines(&log.lines(), &config).dag;
    assert_eq!(depth_of(&dag, n - 1), Some(n - 1), "{config:?}");
    assert_eq!(dag.reach.len() as u32, n * (n - 1) / 2, "{config:?}");
    let index: HashMap<Uuid, u32> = (0..n).map(|i| (blob(i), i)).collect();
    for (a, d, k) in &dag.reach {
        assert_eq!(*k, index[d] - index[a], "{config:?}: distance");
    }
    for (b, d) in &dag.depth {
        assert_eq!(*d, index[b], "{config:?}: depth");
    }
    let deepest = dag.user_depth.iter().map(|r| r.1).max();
    assert_eq!(deepest, Some(n - 1), "{config:?}");
    assert_eq!(dag.user_depth.len(), 1);
    assert_dag(&dag, &expected(&log.deltas), &format!("{config:?}"));
}

/// A chain of 1,000 edges with diamonds (issue #16): shortcuts that shorten distances,
/// side branches that rejoin the chain, one longer detour that deepens every blob after
/// it, and an edge announced before its child. Against the oracle with 1 and 2 workers,
/// every committed batch a log prefix.
#[test]
fn a_1000_long_chain_with_diamonds() {
    let n = 1001u32;
    let mut log = Log::default();
    for i in 0..n {
        log.create(i, i.checked_sub(1), &[]);
    }
    // Shortcuts i-7 -> i: shorter distances, same depths.
    for i in (50..n).step_by(50) {
        log.update(i - 7, &[i]);
    }
    // Side blobs k*50 -> s -> k*50+3: a diamond beside the chain.
    for k in 0..20 {
        log.create(2000 + k, Some(k * 50), &[]);
        log.update(2000 + k, &[k * 50 + 3]);
    }
    // A detour of 10 blobs from 100 back into 105: every blob from 105 on is 6 deeper.
    for j in 0..10 {
        let parent = if j == 0 { 100 } else { 3000 + j - 1 };
        log.create(3000 + j, Some(parent), &[]);
    }
    log.update(3009, &[105]);
    // An edge announced before its child exists.
    log.create(4000, Some(n - 1), &[4001]);
    log.create(4001, None, &[]);

    let lines = log.lines();
    let want = expected(&log.deltas);
    for (workers, batch) in [(1, default_batch()), (2, 97)] {
        let ctx = format!("1,000-long chain ({workers} workers, batch_records {batch})");
        let run = replay_lines(&lines, &config(workers, batch));
        assert!(run.report.counts_add_up(), "{ctx}: {:?}", run.report);
        assert_dag(&run.dag, &want, &ctx);
        assert_every_batch_is_a_prefix(&log.deltas, &run, batch as usize, &ctx);
        assert_eq!(depth_of(&run.dag, n - 1), Some(n - 1 + 6), "{ctx}");
        assert_eq!(depth_of(&run.dag, 4001), Some(n + 1 + 6), "{ctx}");
        assert_eq!(
            reach_of(&run.dag, 0, n - 1),
            Some(n - 1 - 20 * 6 - 20),
            "{ctx}"
        );
    }
}

/// S5.1: an edge may name a blob that does not exist yet; it counts in the views once
/// both ends exist. The guard counts it at once: an edge closing a cycle through a blob
/// that is never created is refused.
#[test]
fn an_edge_announced_before_its_child_counts_once_the_child_exists() {
    let mut log = Log::default();
    let announce = log.create(0, None, &[1]); // 0 -> 1, 1 not yet created
    log.create(5, Some(9), &[]); // 9 -> 5, 9 never created
    log.update(0, &[9]); // 0 -> 9 -> 5
    let prefix = log.deltas.len();
    log.create(2, None, &[]);
    log.create(1, Some(2), &[]); // 2 -> 1, and now 0 -> 1 counts
    let closing = log.update(5, &[0]); // 5 -> 0 closes 0 -> 9 -> 5 -> 0: refused

    let before = replay_lines(&lines_of(&log.deltas[..prefix]), &config(1, 1)).dag;
    assert!(before.edges.is_empty(), "{before:?}");
    assert!(before.reach.is_empty(), "{before:?}");
    assert_eq!(before.depth, vec![(blob(0), 0), (blob(5), 0)]);
    assert!(before.rejected.is_empty());
    assert_dag(&before, &expected(&log.deltas[..prefix]), "prefix");

    let run = run_checked(&log.deltas, "announced edges");
    let dag = &run.dag;
    assert_eq!(
        edge_set(dag),
        BTreeSet::from([(blob(0), blob(1)), (blob(2), blob(1))])
    );
    let added_by = dag.edges.iter().find(|e| e.0 == blob(0)).unwrap().2;
    assert_eq!(added_by, announce, "the delta that announced it");
    assert_eq!(reach_of(dag, 0, 1), Some(1));
    assert_eq!(depth_of(dag, 1), Some(1));
    assert_eq!(
        dag.rejected,
        vec![(closing, blob(5), blob(0), CYCLE.to_owned())],
        "the cycle through the never-created blob 9"
    );
    assert_eq!(reach_of(dag, 5, 0), None);
}

/// S5.1: deleting a blob keeps its edges, and edges to it may still be added.
#[test]
fn an_edge_to_a_deleted_blob_stays_in_the_views() {
    let mut log = Log::default();
    log.create(0, None, &[]);
    log.create(1, Some(0), &[]);
    log.create(2, Some(1), &[]);
    log.push(1, Op::Delete, &[3]); // the delete's own child edge is added too
    log.create(3, None, &[]);
    log.create(4, None, &[]);
    log.update(4, &[1]); // an edge to the deleted blob
    let run = run_checked(&log.deltas, "deleted blob");
    let dag = &run.dag;
    let b1 = run
        .tables
        .blobs
        .iter()
        .find(|b| b.blob_id == blob(1).to_string())
        .unwrap();
    assert!(b1.deleted_at.is_some(), "blob 1 is deleted");
    assert_eq!(
        edge_set(dag),
        BTreeSet::from([
            (blob(0), blob(1)),
            (blob(1), blob(2)),
            (blob(1), blob(3)),
            (blob(4), blob(1)),
        ])
    );
    assert_eq!(reach_of(dag, 0, 2), Some(2));
    assert_eq!(reach_of(dag, 4, 3), Some(2));
    assert_eq!(depth_of(dag, 1), Some(1));
    assert_eq!(depth_of(dag, 2), Some(2));
    assert_eq!(depth_of(dag, 3), Some(2));
}

/// S5.1: an edge that would close a cycle is never half-applied: no reach row, depth or
/// batch ever reflects it (`run_checked` checks every committed batch against a log
/// prefix), while the other edges of its delta apply.
#[test]
fn a_cycle_closing_edge_is_never_half_applied() {
    let mut log = Log::default();
    log.create(0, None, &[]);
    log.create(1, Some(0), &[]);
    log.create(2, Some(1), &[]);
    let d1 = log.update(2, &[3, 0]); // 2 -> 3 applies, 2 -> 0 is refused
    log.create(3, None, &[]);
    let d2 = log.update(3, &[1, 4]); // 3 -> 1 refused (1 -> 2 -> 3), 3 -> 4 applies
    log.create(4, None, &[]);
    let d3 = log.update(4, &[4, 2, 0]); // self-loop, then two cycles
    log.update(0, &[4]); // a shortcut: 0 -> 4 applies
    let run = run_checked(&log.deltas, "cycle closing");
    let dag = &run.dag;
    let mut rejected = vec![
        (d1, blob(2), blob(0), CYCLE.to_owned()),
        (d2, blob(3), blob(1), CYCLE.to_owned()),
        (d3, blob(4), blob(4), CYCLE.to_owned()),
        (d3, blob(4), blob(2), CYCLE.to_owned()),
        (d3, blob(4), blob(0), CYCLE.to_owned()),
    ];
    rejected.sort();
    assert_eq!(dag.rejected, rejected);
    // The chain 0 -> 1 -> 2 -> 3 -> 4 plus 0 -> 4: exactly its closure.
    let mut reach = vec![];
    for a in 0..5u32 {
        for d in a + 1..5 {
            let k = if (a, d) == (0, 4) { 1 } else { d - a };
            reach.push((blob(a), blob(d), k));
        }
    }
    reach.sort();
    assert_eq!(dag.reach, reach);
    assert!(dag.reach.iter().all(|(a, d, _)| a != d));
    assert_eq!(depth_of(dag, 0), Some(0));
    assert_eq!(depth_of(dag, 4), Some(4));
    // The deltas themselves applied.
    assert!(run.tables.dead_letters.is_empty());
    assert_eq!(run.tables.applied.len(), log.deltas.len());
}

/// S5.1 "in log order" means acceptance order: a delta that waits for a gap proposes
/// its edges when the gap is filled, so a later delta's edge can win the race.
#[test]
fn edges_are_decided_in_acceptance_order() {
    let mut log = Log::default();
    log.create(0, None, &[]);
    log.create(1, None, &[]);
    // Blob 1 at version 3 arrives before version 2: it waits.
    let waiting = D {
        id: 100,
        blob: 1,
        user: 0,
        op: Op::Update,
        version: 3,
        child_ids: vec![0],
    };
    let first = log.update(0, &[1]); // 0 -> 1, accepted first
    let filler = D {
        id: 101,
        blob: 1,
        user: 0,
        op: Op::Update,
        version: 2,
        child_ids: vec![],
    };
    let mut deltas = log.deltas.clone();
    deltas.insert(2, waiting);
    deltas.push(filler);
    let lines = lines_of(&deltas);
    for config in [
        config(1, 1),
        config(2, 1),
        config(1, default_batch()),
        config(2, 2),
    ] {
        let run = replay_lines(&lines, &config);
        assert!(run.tables.dead_letters.is_empty(), "{config:?}");
        assert_eq!(run.dag.edges, vec![(blob(0), blob(1), first)], "{config:?}");
        assert_eq!(
            run.dag.rejected,
            vec![(delta_id(100), blob(1), blob(0), CYCLE.to_owned())],
            "{config:?}: the waiting delta's edge came second"
        );
        assert_eq!(depth_of(&run.dag, 1), Some(1), "{config:?}");
    }
}

/// The edges of a delta that is a dead letter are never proposed: neither accepted nor
/// rejected.
#[test]
fn a_rejected_delta_proposes_no_edge() {
    let mut log = Log::default();
    log.create(0, None, &[]);
    log.create(1, None, &[]);
    log.push(0, Op::Failing, &[1, 0]);
    log.update(1, &[0]); // not a cycle: 0 -> 1 was never added
    let run = run_checked(&log.deltas, "dead letter");
    assert_eq!(run.tables.dead_letters.len(), 1);
    assert!(run.dag.rejected.is_empty(), "{:?}", run.dag.rejected);
    assert_eq!(edge_set(&run.dag), BTreeSet::from([(blob(1), blob(0))]));
}

/// The oracle itself refuses what it should (so that a broken oracle cannot agree with
/// a broken pipeline).
#[test]
fn the_oracle_follows_the_rules() {
    let mut log = Log::default();
    log.create(0, None, &[1]);
    log.create(1, None, &[2, 1, 2]);
    log.create(2, None, &[0]);
    let o = Oracle::run(&log.deltas);
    assert_eq!(
        o.accepted.keys().copied().collect::<Vec<_>>(),
        [(0, 1), (1, 2)]
    );
    assert_eq!(o.rejected, [(2, 1, 1), (3, 2, 0)]);
    assert_eq!(o.stats.repeats, 1);
    let v = o.views();
    assert_eq!(v.reach.len(), 3);
    assert_eq!(v.depth, vec![(blob(0), 0), (blob(1), 1), (blob(2), 2)]);
}
