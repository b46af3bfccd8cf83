//! `studio-dag-bench`: what the blob DAG's maintained views (SPEC S5.2) cost, against
//! the ways of answering the same questions without them.
//!
//! On a generated graph (a forest of depth `--depth` plus `--chains` chains of
//! `--chain-len` blobs hanging off it, `--blobs` blobs in all):
//!
//! 1. **incremental**: `studio_operators::DagViews` (`--engine closure`, what `render`
//!    uses) or the `iterate`-based `Reachability` and `Depth` (`--engine iterate`) on a
//!    timely worker, with `Closure::apply` alone and, with `--duckdb`, DuckDB's recursive
//!    CTEs over the same edges as cold-build baselines (`--shape issue16`: issue #16's graph);
//!    the base graph is loaded at time 0, then batches of `--batches` new edges are
//!    added at later times, each timed with the probe until both views are complete:
//!    for each of `--batch-shapes`, `derived` (new blobs under random existing blobs,
//!    1 % with a second parent: issue #16's "new derived blobs and diamond edges") and
//!    `random` (random acyclic edges between existing blobs: mostly shortcuts);
//! 2. **from scratch** per batch: a breadth-first search from every blob (the closure
//!    with shortest distances) plus a longest-path pass (Kahn), on the full edge set;
//!    and once, a fresh dataflow over the full edge set;
//! 3. **SQLite**: `blob_edges` in a temp database, a `WITH RECURSIVE` query for the
//!    descendants (with shortest distances) of `--queries` random blobs, against the
//!    same questions answered from a `blob_reach` table by its primary key;
//! 4. **cycle guard**: `TopoOrder::insert` (Pearce-Kelly) per proposed edge against a
//!    naive check (a depth-first search from the child for the parent), on the base
//!    graph in log order, on random edges, and on edges that all close a cycle.
//!
//! With `--write-log DIR` it writes the base graph as a delta log instead (for timing
//! `studio replay`), and with `--query-db` it times `studio query`'s DAG questions on a
//! replayed database (`benches/dag_replay.sh` does both).
//!
//! `cargo run --release -p studio-benches --bin studio-dag-bench -- --blobs 100000`

use std::cell::Cell;
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use differential_dataflow::VecCollection;
use differential_dataflow::input::Input;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustc_hash::{FxHashMap, FxHashSet};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use studio_model::dag::{EdgeOutcome, TopoOrder};
use studio_model::{EdgeRow, Uuid};
use studio_operators::dag_views::Closure;
use studio_operators::{DagLimits, DagViews, Depth, Reachability};
use timely::dataflow::operators::probe::Handle as ProbeHandle;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The blob DAG views against recomputation, SQLite recursive queries and a naive
/// cycle check.
#[derive(Parser, Clone)]
struct Args {
    /// Blobs in all.
    #[arg(long, default_value_t = 100_000)]
    blobs: u32,
    /// Depth of the forest (its levels are 0..=depth).
    #[arg(long, default_value_t = 10)]
    depth: u32,
    /// Long chains, each hanging off a forest blob.
    #[arg(long, default_value_t = 4)]
    chains: u32,
    /// Blobs per chain.
    #[arg(long, default_value_t = 250)]
    chain_len: u32,
    /// Sizes of the edge batches added to the loaded graph, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    batches: Vec<usize>,
    /// What the batches are, comma-separated, applied in this order: `derived` (issue
    /// #16's words: new derived blobs, each under an existing blob drawn at random, 1 %
    /// of them with a second parent, a diamond edge) and `random` (random new edges
    /// between existing blobs, from a blob to a later one: mostly shortcuts).
    #[arg(long, value_delimiter = ',', default_value = "derived,random")]
    batch_shapes: Vec<String>,
    /// Batches of each size (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Random blobs whose descendants SQLite is asked for.
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Proposed edges per cycle-guard workload.
    #[arg(long, default_value_t = 10_000)]
    guard_edges: usize,
    /// Timely workers for the incremental dataflow.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The graph: `forest` (the flags above) or `issue16` (issue #16's shape: three
    /// chains of 1,000 edges beside a random forest of depth <= 10 with ~1 % diamond
    /// edges; `--depth`, `--chains` and `--chain-len` are then ignored).
    #[arg(long, default_value = "forest")]
    shape: String,
    /// How the views are maintained: `closure` (`DagViews`, what `render` uses) or
    /// `iterate` (the `Reachability` and `Depth` operators built on differential's
    /// `iterate`, which `render` used before).
    #[arg(long, default_value = "closure")]
    engine: String,
    /// Also run DuckDB's recursive CTEs over the same edges
    /// (`benches/scripts/dag_duckdb.py`, needs `pip install duckdb`).
    #[arg(long)]
    duckdb: bool,
    /// Only the views: skip the SQLite queries and the cycle-guard workloads.
    #[arg(long)]
    views_only: bool,
    /// Write the base graph as two delta logs into this folder and stop: `dag.jsonl`
    /// (every blob a `create` with its first parent as `parent_id`, each further parent
    /// an `update` of that parent with `child_ids`) and `dag-noedges.jsonl` (the same
    /// records without `parent_id` and `child_ids`), for timing `studio replay`.
    #[arg(long, value_name = "DIR")]
    write_log: Option<PathBuf>,
    /// Time `studio query`'s DAG questions (descendants, ancestors, depth) on this view
    /// database, made by `studio replay` of `--write-log`'s `dag.jsonl` with the same
    /// graph flags, through the library's SQLite reader, and stop.
    #[arg(long, value_name = "PATH.sqlite")]
    query_db: Option<PathBuf>,
}

/// The owner of blob `n` (100 users).
fn owner_of(n: u32) -> Uuid {
    Uuid::from_u128(0x0000_000a_0000_4000_8000_0000_0000_0000 | u128::from(n % 100))
}

fn id(n: u32) -> Uuid {
    Uuid::from_u128(0x0000_000b_0000_4000_8000_0000_0000_0000 | u128::from(n))
}

/// The generated graph. Blob numbers are a topological order: every edge goes from a
/// lower number to a higher one.
struct Graph {
    /// Blobs of the base graph.
    n: u32,
    /// Blobs in all, with those the batches create.
    total: u32,
    /// Base edges in log order (each blob's create adds the edge from its parent).
    base: Vec<(u32, u32)>,
    /// The create's parent of each blob.
    parent: Vec<Option<u32>>,
    /// Batches to add, in order.
    batches: Vec<BatchSet>,
}

/// One batch: the blobs it creates and its new edges.
#[derive(Clone, Default)]
struct Batch {
    blobs: Vec<u32>,
    edges: Vec<(u32, u32)>,
}

/// `--repeats` batches of one shape and size.
#[derive(Clone)]
struct BatchSet {
    shape: String,
    size: usize,
    repeats: Vec<Batch>,
}

impl Graph {
    /// Every edge, base and batches.
    fn all_edges(&self) -> Vec<(u32, u32)> {
        let batches = self.batches.iter().flat_map(|s| &s.repeats);
        self.base
            .iter()
            .chain(batches.flat_map(|b| &b.edges))
            .copied()
            .collect()
    }
}

/// Issue #16's graph: a random forest (28 % roots, the other blobs spread over levels
/// 1..=10, each with a parent on the level above and 1 % with a second parent on an
/// earlier level: a diamond) and, beside it, three chains of 1,000 edges.
fn generate_issue16(args: &Args, rng: &mut StdRng) -> Graph {
    let n = args.blobs;
    let chained = args.chains * args.chain_len;
    let forest = n - chained;
    let roots = forest * 28 / 100;
    let per_level = (forest - roots).div_ceil(10);
    let mut parent: Vec<Option<u32>> = Vec::with_capacity(n as usize);
    let mut base = Vec::new();
    // Level k spans blobs [start(k), start(k+1)).
    let start = |k: u32| {
        if k == 0 {
            0
        } else {
            (roots + (k - 1) * per_level).min(forest)
        }
    };
    for level in 0..=10u32 {
        let (lo, hi) = (start(level), start(level + 1).max(start(level)));
        let hi = if level == 10 { forest } else { hi };
        for c in lo..hi {
            if level == 0 {
                parent.push(None);
                continue;
            }
            let (plo, phi) = (start(level - 1), lo);
            let p = rng.random_range(plo..phi);
            parent.push(Some(p));
            base.push((p, c));
            if rng.random_bool(0.01) {
                let q = rng.random_range(0..lo);
                if q != p {
                    base.push((q, c));
                }
            }
        }
    }
    for _ in 0..args.chains {
        let head = parent.len() as u32;
        parent.push(None);
        for i in 1..args.chain_len {
            parent.push(Some(head + i - 1));
            base.push((head + i - 1, head + i));
        }
    }
    batches(args, n, base, parent, rng)
}

/// The graph with its batches: for each of `--batch-shapes`, `--repeats` batches of
/// each of `--batches` sizes.
fn batches(
    args: &Args,
    n: u32,
    base: Vec<(u32, u32)>,
    parent: Vec<Option<u32>>,
    rng: &mut StdRng,
) -> Graph {
    let mut seen: FxHashSet<(u32, u32)> = base.iter().copied().collect();
    let mut total = n;
    let mut sets = Vec::new();
    for shape in &args.batch_shapes {
        for &size in &args.batches {
            let repeats = (0..args.repeats)
                .map(|_| match shape.as_str() {
                    "derived" => derived_batch(size, &mut total, rng),
                    "random" => random_batch(size, n, &mut seen, rng),
                    other => panic!("--batch-shapes {other}: derived or random"),
                })
                .collect();
            sets.push(BatchSet {
                shape: shape.clone(),
                size,
                repeats,
            });
        }
    }
    Graph {
        n,
        total,
        base,
        parent,
        batches: sets,
    }
}

/// `size` random new edges between the first `n` blobs (from a blob to a later one:
/// acyclic).
fn random_batch(size: usize, n: u32, seen: &mut FxHashSet<(u32, u32)>, rng: &mut StdRng) -> Batch {
    let mut edges = Vec::with_capacity(size);
    while edges.len() < size {
        let (a, b) = (rng.random_range(0..n), rng.random_range(0..n));
        let edge = (a.min(b), a.max(b));
        if a != b && seen.insert(edge) {
            edges.push(edge);
        }
    }
    Batch {
        blobs: Vec::new(),
        edges,
    }
}

/// `size` new edges as issue #16 words them: new derived blobs, each under a blob drawn
/// at random from all that exist (the new ones before it included), and 1 % of them
/// with a second parent drawn the same way (a diamond edge, the base graph's rate).
fn derived_batch(size: usize, total: &mut u32, rng: &mut StdRng) -> Batch {
    let mut batch = Batch::default();
    while batch.edges.len() < size {
        let c = *total;
        *total += 1;
        batch.blobs.push(c);
        let p = rng.random_range(0..c);
        batch.edges.push((p, c));
        if batch.edges.len() < size && rng.random_bool(0.01) {
            let q = rng.random_range(0..c);
            if q != p {
                batch.edges.push((q, c));
            }
        }
    }
    batch
}

fn generate(args: &Args, rng: &mut StdRng) -> Graph {
    if args.shape == "issue16" {
        return generate_issue16(args, rng);
    }
    let n = args.blobs;
    let chained = args.chains * args.chain_len;
    assert!(chained < n, "the chains need fewer blobs than --blobs");
    let forest = n - chained;
    // Level sizes grow towards the middle levels, shrink towards the leaves.
    let d = args.depth;
    let weights: Vec<u64> = (0..=d).map(|k| u64::from((k + 1) * (d + 1 - k))).collect();
    let total: u64 = weights.iter().sum();
    let mut sizes: Vec<u32> = weights
        .iter()
        .map(|w| (u64::from(forest) * w / total).max(1) as u32)
        .collect();
    let assigned: u32 = sizes.iter().sum();
    sizes[0] += forest - assigned;
    let mut parent: Vec<Option<u32>> = Vec::with_capacity(n as usize);
    let mut level_start = 0u32;
    let mut prev: Option<(u32, u32)> = None;
    for &size in &sizes {
        for _ in 0..size {
            parent.push(prev.map(|(start, len)| start + rng.random_range(0..len)));
        }
        prev = Some((level_start, size));
        level_start += size;
    }
    for _ in 0..args.chains {
        let head = parent.len() as u32;
        parent.push(Some(rng.random_range(0..forest / 10)));
        for i in 1..args.chain_len {
            parent.push(Some(head + i - 1));
        }
    }
    let base: Vec<(u32, u32)> = parent
        .iter()
        .enumerate()
        .filter_map(|(c, p)| p.map(|p| (p, c as u32)))
        .collect();
    batches(args, n, base, parent, rng)
}

/// The closure with shortest distances (a BFS from every blob, every pair written out
/// as a view row would be) and the longest-path depths (Kahn), from scratch. Returns
/// (pairs, sum of distances, max depth).
fn recompute(n: u32, edges: &[(u32, u32)]) -> (u64, u64, u32) {
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); n as usize];
    let mut indegree = vec![0u32; n as usize];
    for &(p, c) in edges {
        out[p as usize].push(c);
        indegree[c as usize] += 1;
    }
    let mut rows: Vec<(u32, u32, u32)> = Vec::new();
    let mut dist = vec![u32::MAX; n as usize];
    let mut queue = VecDeque::new();
    let mut touched = Vec::new();
    for start in 0..n {
        dist[start as usize] = 0;
        touched.push(start);
        queue.push_back(start);
        while let Some(x) = queue.pop_front() {
            for &y in &out[x as usize] {
                if dist[y as usize] == u32::MAX {
                    dist[y as usize] = dist[x as usize] + 1;
                    rows.push((start, y, dist[y as usize]));
                    touched.push(y);
                    queue.push_back(y);
                }
            }
        }
        for t in touched.drain(..) {
            dist[t as usize] = u32::MAX;
        }
    }
    let mut depth = vec![0u32; n as usize];
    let mut ready: Vec<u32> = (0..n).filter(|&x| indegree[x as usize] == 0).collect();
    while let Some(x) = ready.pop() {
        for &y in &out[x as usize] {
            depth[y as usize] = depth[y as usize].max(depth[x as usize] + 1);
            indegree[y as usize] -= 1;
            if indegree[y as usize] == 0 {
                ready.push(y);
            }
        }
    }
    let distances = rows.iter().map(|r| u64::from(r.2)).sum();
    (
        rows.len() as u64,
        distances,
        depth.into_iter().max().unwrap_or(0),
    )
}

fn edge(p: u32, c: u32) -> EdgeRow {
    EdgeRow {
        parent_id: id(p),
        child_id: id(c),
        delta_id: id(c),
    }
}

type Reach<'scope> = VecCollection<'scope, u64, ((Uuid, Uuid), u32)>;
type Depths<'scope> = VecCollection<'scope, u64, (Uuid, u32)>;

/// The reach and depth views by `engine`; `probe` also watches the user depths.
fn views<'scope>(
    engine: &str,
    nodes: VecCollection<'scope, u64, (Uuid, Uuid)>,
    edges: VecCollection<'scope, u64, EdgeRow>,
    probe: &ProbeHandle<u64>,
) -> (Reach<'scope>, Depths<'scope>) {
    match engine {
        "iterate" => {
            let pairs = edges.map(|e| (e.parent_id, e.child_id));
            let depth = nodes.clone().map(|(b, _)| b).depth(pairs.clone());
            // user_depth as render wired it: a join and a reduce.
            depth
                .clone()
                .join_map(nodes, |_blob, &depth, &user| (user, depth))
                .reduce(|_user, depths, deepest| deepest.push((*depths[depths.len() - 1].0, 1)))
                .probe_with(probe);
            (pairs.reachability(), depth)
        }
        "closure" => {
            let limits = DagLimits {
                max_reach_pairs: u64::MAX,
            };
            let dag = edges.dag_views(nodes, limits);
            dag.user_depth.probe_with(probe);
            (
                dag.reach
                    .map(|r| ((r.ancestor_id, r.descendant_id), r.distance)),
                dag.depth.map(|d| (d.blob_id, d.depth)),
            )
        }
        other => panic!("--engine {other}: closure or iterate"),
    }
}

/// What the incremental dataflow measured.
struct Incremental {
    load: Duration,
    /// Per batch size: (times per batch, reach rows changed per batch).
    steps: Vec<(Vec<Duration>, Vec<u64>)>,
    /// Rows of the reach view at the end.
    reach_rows: i64,
    /// Reach rows after loading the base graph.
    base_reach_rows: i64,
    max_depth: u32,
    /// A fresh dataflow over the full edge set.
    fresh: Duration,
}

fn incremental(args: &Args, graph: &Graph) -> Incremental {
    let graph_base = graph.base.clone();
    let batches = graph.batches.clone();
    let (n, total) = (graph.n, graph.total);
    let workers = args.workers;
    let engine = args.engine.clone();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let probe = ProbeHandle::new();
        let reach_size = Rc::new(Cell::new(0i64));
        let reach_changes = Rc::new(Cell::new(0u64));
        let max_depth = Rc::new(Cell::new(0u32));
        let (mut nodes_in, mut edges_in) = worker.dataflow::<u64, _, _>(|scope| {
            let (nodes_in, nodes) = scope.new_collection::<(Uuid, Uuid), isize>();
            let (edges_in, edges) = scope.new_collection::<EdgeRow, isize>();
            let (size, changes) = (Rc::clone(&reach_size), Rc::clone(&reach_changes));
            let deepest = Rc::clone(&max_depth);
            let (reach, depth) = views(&engine, nodes, edges, &probe);
            reach
                .inspect(move |(_, _, diff)| {
                    size.set(size.get() + *diff as i64);
                    changes.set(changes.get() + 1);
                })
                .probe_with(&probe);
            depth
                .inspect(move |((_, d), _, diff)| {
                    if *diff > 0 {
                        deepest.set(deepest.get().max(*d));
                    }
                })
                .probe_with(&probe);
            (nodes_in, edges_in)
        });

        let started = Instant::now();
        if index == 0 {
            for x in 0..n {
                nodes_in.insert((id(x), owner_of(x)));
            }
            for &(p, c) in &graph_base {
                edges_in.insert(edge(p, c));
            }
        }
        let mut time = 1u64;
        nodes_in.advance_to(time);
        edges_in.advance_to(time);
        nodes_in.flush();
        edges_in.flush();
        worker.step_while(|| probe.less_than(&time));
        let load = started.elapsed();
        let base_reach_rows = reach_size.get();

        let mut steps = Vec::new();
        for set in &batches {
            let (mut times, mut changes) = (Vec::new(), Vec::new());
            let set_started = Instant::now();
            for batch in &set.repeats {
                let before = reach_changes.get();
                let started = Instant::now();
                if index == 0 {
                    for &x in &batch.blobs {
                        nodes_in.insert((id(x), owner_of(x)));
                    }
                    for &(p, c) in &batch.edges {
                        edges_in.insert(edge(p, c));
                    }
                }
                time += 1;
                nodes_in.advance_to(time);
                edges_in.advance_to(time);
                nodes_in.flush();
                edges_in.flush();
                worker.step_while(|| probe.less_than(&time));
                times.push(started.elapsed());
                changes.push(reach_changes.get() - before);
            }
            if std::env::var_os("STUDIO_DAG_SPANS").is_some() {
                // Monotonic clock readings, for `perf report --time` (perf record -k mono).
                eprintln!(
                    "{} x {}: {set_started:?} .. {:?}",
                    set.shape,
                    set.size,
                    Instant::now()
                );
            }
            steps.push((times, changes));
        }
        let (reach_rows, depth) = (reach_size.get(), max_depth.get());
        drop((nodes_in, edges_in));
        worker.step_while(|| !probe.done());

        // A fresh dataflow over the full edge set.
        let fresh_probe = ProbeHandle::new();
        let (mut nodes_in, mut edges_in) = worker.dataflow::<u64, _, _>(|scope| {
            let (nodes_in, nodes) = scope.new_collection::<(Uuid, Uuid), isize>();
            let (edges_in, edges) = scope.new_collection::<EdgeRow, isize>();
            let (reach, depth) = views(&engine, nodes, edges, &fresh_probe);
            reach.probe_with(&fresh_probe);
            depth.probe_with(&fresh_probe);
            (nodes_in, edges_in)
        });
        let started = Instant::now();
        if index == 0 {
            for x in 0..total {
                nodes_in.insert((id(x), owner_of(x)));
            }
            let added = batches.iter().flat_map(|s| &s.repeats);
            for &(p, c) in graph_base.iter().chain(added.flat_map(|b| &b.edges)) {
                edges_in.insert(edge(p, c));
            }
        }
        nodes_in.advance_to(1);
        edges_in.advance_to(1);
        nodes_in.flush();
        edges_in.flush();
        worker.step_while(|| fresh_probe.less_than(&1));
        let fresh = started.elapsed();
        Incremental {
            load,
            steps,
            reach_rows,
            base_reach_rows,
            max_depth: depth,
            fresh,
        }
    })
    .expect("timely runs");
    let mut results: Vec<Incremental> = guards
        .join()
        .into_iter()
        .map(|r| r.expect("a worker finished"))
        .collect();
    // Reach rows are counted per worker (each holds its share): sum them.
    let reach_rows = results.iter().map(|r| r.reach_rows).sum();
    let base_reach_rows = results.iter().map(|r| r.base_reach_rows).sum();
    let max_depth = results.iter().map(|r| r.max_depth).max().unwrap_or(0);
    let changes: Vec<Vec<u64>> = (0..results[0].steps.len())
        .map(|s| {
            (0..results[0].steps[s].1.len())
                .map(|r| results.iter().map(|w| w.steps[s].1[r]).sum())
                .collect()
        })
        .collect();
    let mut first = results.swap_remove(0);
    for (s, c) in changes.into_iter().enumerate() {
        first.steps[s].1 = c;
    }
    first.reach_rows = reach_rows;
    first.base_reach_rows = base_reach_rows;
    first.max_depth = max_depth;
    first
}

/// One set of SQLite descendant queries: the CTE and the lookup, timed, with the rows
/// each returned (they must be the same rows).
struct QuerySet {
    name: String,
    queries: usize,
    cte: Duration,
    lookup: Duration,
    rows: u64,
}

/// SQLite: the recursive CTE over `blob_edges` against a lookup in a materialized
/// `blob_reach`, for `--queries` random blobs and for the 100 blobs with the most
/// descendants.
fn sqlite(args: &Args, graph: &Graph, rng: &mut StdRng) -> anyhow::Result<Vec<QuerySet>> {
    let edges = graph.all_edges();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); graph.total as usize];
    for &(p, c) in &edges {
        out[p as usize].push(c);
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("dag.sqlite");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let random: Vec<u32> = (0..args.queries)
        .map(|_| rng.random_range(0..graph.total))
        .collect();
    runtime.block_on(async {
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Off)
            .synchronous(SqliteSynchronous::Off);
        let mut conn = SqliteConnection::connect_with(&options).await?;
        // The schema of these two tables, as declared in studio_model::tables.
        sqlx::query(
            "CREATE TABLE blob_edges (parent_id TEXT, child_id TEXT, delta_id TEXT, \
             PRIMARY KEY (parent_id, child_id))",
        )
        .execute(&mut conn)
        .await?;
        sqlx::query("CREATE INDEX blob_edges_by_child ON blob_edges (child_id)")
            .execute(&mut conn)
            .await?;
        sqlx::query(
            "CREATE TABLE blob_reach (ancestor_id TEXT, descendant_id TEXT, distance INTEGER, \
             PRIMARY KEY (ancestor_id, descendant_id))",
        )
        .execute(&mut conn)
        .await?;
        let mut tx = conn.begin().await?;
        for &(p, c) in &edges {
            sqlx::query("INSERT INTO blob_edges VALUES (?, ?, ?)")
                .bind(id(p).to_string())
                .bind(id(c).to_string())
                .bind(id(c).to_string())
                .execute(&mut *tx)
                .await?;
        }
        // blob_reach, from a BFS from every blob; and who has the most descendants.
        let mut dist = vec![u32::MAX; graph.total as usize];
        let mut touched = Vec::new();
        let mut queue = VecDeque::new();
        let mut descendants: Vec<(usize, u32)> = Vec::with_capacity(graph.total as usize);
        for start in 0..graph.total {
            dist[start as usize] = 0;
            touched.push(start);
            queue.push_back(start);
            let ancestor = id(start).to_string();
            while let Some(x) = queue.pop_front() {
                for &y in &out[x as usize] {
                    if dist[y as usize] == u32::MAX {
                        dist[y as usize] = dist[x as usize] + 1;
                        touched.push(y);
                        queue.push_back(y);
                        sqlx::query("INSERT INTO blob_reach VALUES (?, ?, ?)")
                            .bind(&ancestor)
                            .bind(id(y).to_string())
                            .bind(i64::from(dist[y as usize]))
                            .execute(&mut *tx)
                            .await?;
                    }
                }
            }
            descendants.push((touched.len() - 1, start));
            for t in touched.drain(..) {
                dist[t as usize] = u32::MAX;
            }
        }
        tx.commit().await?;
        sqlx::query("ANALYZE").execute(&mut conn).await?;
        descendants.sort_unstable_by(|a, b| b.cmp(a));
        let widest: Vec<u32> = descendants.iter().take(100).map(|d| d.1).collect();

        let cte = "WITH RECURSIVE d(id, distance) AS ( \
                       SELECT child_id, 1 FROM blob_edges WHERE parent_id = ?1 \
                       UNION \
                       SELECT e.child_id, d.distance + 1 FROM blob_edges e JOIN d ON e.parent_id = d.id) \
                   SELECT id, MIN(distance) FROM d GROUP BY id";
        let lookup = "SELECT descendant_id, distance FROM blob_reach WHERE ancestor_id = ?1";
        let mut sets = Vec::new();
        for (name, sample) in [
            (format!("{} random blobs", random.len()), &random),
            ("the 100 blobs with most descendants".to_owned(), &widest),
        ] {
            let mut answers: [Vec<Vec<(String, i64)>>; 2] = [Vec::new(), Vec::new()];
            let mut times = [Duration::ZERO; 2];
            for (k, sql) in [cte, lookup].into_iter().enumerate() {
                let started = Instant::now();
                for &x in sample {
                    let mut rows: Vec<(String, i64)> = sqlx::query_as(sql)
                        .bind(id(x).to_string())
                        .fetch_all(&mut conn)
                        .await?;
                    rows.sort();
                    answers[k].push(rows);
                }
                times[k] = started.elapsed();
            }
            anyhow::ensure!(
                answers[0] == answers[1],
                "{name}: the recursive CTE and blob_reach disagree"
            );
            sets.push(QuerySet {
                name,
                queries: sample.len(),
                cte: times[0],
                lookup: times[1],
                rows: answers[0].iter().map(|r| r.len() as u64).sum(),
            });
        }
        conn.close().await?;
        Ok(sets)
    })
}

/// The naive cycle guard: refuse `p -> c` when `p == c` or a DFS from `c` meets `p`.
/// Like `TopoOrder`, it maps blob ids to dense node numbers with an `FxHashMap`, so
/// that the two differ only in their search.
#[derive(Default)]
struct Naive {
    index: FxHashMap<Uuid, u32>,
    out: Vec<Vec<u32>>,
    stamp: Vec<u32>,
    round: u32,
    stack: Vec<u32>,
}

impl Naive {
    fn node(&mut self, id: Uuid) -> u32 {
        let next = self.out.len() as u32;
        let n = *self.index.entry(id).or_insert(next);
        if n == next {
            self.out.push(Vec::new());
            self.stamp.push(0);
        }
        n
    }

    fn insert(&mut self, parent: Uuid, child: Uuid) -> EdgeOutcome {
        use studio_model::dag::EdgeRefusal;
        if parent == child {
            return EdgeOutcome::Refused(EdgeRefusal::SelfLoop);
        }
        let (p, c) = (self.node(parent), self.node(child));
        if self.out[p as usize].contains(&c) {
            return EdgeOutcome::Present;
        }
        self.round += 1;
        self.stack.clear();
        self.stack.push(c);
        self.stamp[c as usize] = self.round;
        while let Some(x) = self.stack.pop() {
            for &y in &self.out[x as usize] {
                if y == p {
                    return EdgeOutcome::Refused(EdgeRefusal::Cycle);
                }
                if self.stamp[y as usize] != self.round {
                    self.stamp[y as usize] = self.round;
                    self.stack.push(y);
                }
            }
        }
        self.out[p as usize].push(c);
        EdgeOutcome::Added
    }
}

/// One cycle-guard workload: (TopoOrder ns/edge, naive ns/edge, added, refused).
struct GuardRow {
    name: &'static str,
    edges: usize,
    topo_ns: f64,
    naive_ns: f64,
    added: usize,
    refused: usize,
}

fn guard(args: &Args, graph: &Graph, rng: &mut StdRng) -> Vec<GuardRow> {
    let ids: Vec<Uuid> = (0..graph.n).map(id).collect();
    let mut topo = TopoOrder::default();
    let mut naive = Naive::default();
    let mut rows = Vec::new();
    let mut run =
        |name: &'static str, edges: &[(u32, u32)], topo: &mut TopoOrder, naive: &mut Naive| {
            let started = Instant::now();
            let a: Vec<EdgeOutcome> = edges
                .iter()
                .map(|&(p, c)| topo.insert(ids[p as usize], ids[c as usize]))
                .collect();
            let topo_time = started.elapsed();
            let started = Instant::now();
            let b: Vec<EdgeOutcome> = edges
                .iter()
                .map(|&(p, c)| naive.insert(ids[p as usize], ids[c as usize]))
                .collect();
            let naive_time = started.elapsed();
            assert_eq!(a, b, "{name}: the two guards disagree");
            let per = |d: Duration| d.as_nanos() as f64 / edges.len().max(1) as f64;
            rows.push(GuardRow {
                name,
                edges: edges.len(),
                topo_ns: per(topo_time),
                naive_ns: per(naive_time),
                added: a.iter().filter(|o| **o == EdgeOutcome::Added).count(),
                refused: a
                    .iter()
                    .filter(|o| matches!(o, EdgeOutcome::Refused(_)))
                    .count(),
            });
        };
    run("base graph, log order", &graph.base, &mut topo, &mut naive);
    // Each from a forest blob into the first tenth of a chain (hundreds of descendants,
    // none of which reaches the forest): accepted, after a naive search of them all.
    let forest = graph.n - args.chains * args.chain_len;
    let into_chains: Vec<(u32, u32)> = (0..args.guard_edges)
        .map(|_| {
            let chain = rng.random_range(0..args.chains);
            let at = rng.random_range(0..(args.chain_len / 10).max(1));
            (
                rng.random_range(0..forest),
                forest + chain * args.chain_len + at,
            )
        })
        .collect();
    run("into a long chain", &into_chains, &mut topo, &mut naive);
    // Each closes a cycle: from a blob to one of its ancestors.
    let closing: Vec<(u32, u32)> = (0..args.guard_edges)
        .map(|_| {
            loop {
                let x = rng.random_range(0..graph.n);
                let mut a = x;
                for _ in 0..rng.random_range(1..40) {
                    match graph.parent[a as usize] {
                        Some(p) => a = p,
                        None => break,
                    }
                }
                if a != x {
                    break (x, a);
                }
            }
        })
        .collect();
    run(
        "closing a cycle (to an ancestor)",
        &closing,
        &mut topo,
        &mut naive,
    );
    let random: Vec<(u32, u32)> = (0..args.guard_edges)
        .map(|_| (rng.random_range(0..graph.n), rng.random_range(0..graph.n)))
        .collect();
    run("random pairs", &random, &mut topo, &mut naive);
    rows
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// DuckDB's recursive CTEs over `edges` (`benches/scripts/dag_duckdb.py`): its JSON line.
fn duckdb(n: u32, edges: &[(u32, u32)]) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let (edges_csv, blobs_csv) = (dir.path().join("edges.csv"), dir.path().join("blobs.csv"));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&edges_csv)?);
    for (p, c) in edges {
        writeln!(out, "{p},{c}")?;
    }
    out.flush()?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(&blobs_csv)?);
    for b in 0..n {
        writeln!(out, "{b},{}", b % 100)?;
    }
    out.flush()?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dag_duckdb.py");
    let output = std::process::Command::new("python3")
        .arg(script)
        .arg(&edges_csv)
        .arg(&blobs_csv)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.shape == "issue16" {
        (args.depth, args.chains, args.chain_len) = (10, 3, 1001);
    }
    let mut rng = StdRng::seed_from_u64(args.seed);
    let graph = generate(&args, &mut rng);
    println!(
        "graph ({}): {} blobs, {} edges (forest of depth {} + {} chains of {} blobs); batches {:?} x {}; engine {}, {} worker(s)",
        args.shape,
        graph.n,
        graph.base.len(),
        args.depth,
        args.chains,
        args.chain_len,
        args.batches,
        args.repeats,
        args.engine,
        args.workers
    );

    if let Some(dir) = &args.write_log {
        return write_logs(&graph, dir);
    }
    if let Some(db) = &args.query_db {
        return query_latency(&args, &graph, db, &mut rng);
    }
    let inc = incremental(&args, &graph);
    // The closure operator's state machine alone, without timely.
    let started = Instant::now();
    let mut closure = Closure::new(DagLimits {
        max_reach_pairs: u64::MAX,
    });
    let nodes: Vec<(Uuid, Uuid)> = (0..graph.n).map(|x| (id(x), owner_of(x))).collect();
    let base_edges: Vec<(Uuid, Uuid)> = graph.base.iter().map(|&(p, c)| (id(p), id(c))).collect();
    let changes = closure.apply(&nodes, &base_edges);
    let alone = started.elapsed();
    println!(
        "base graph: Closure::apply alone (no dataflow) {:.3} s, {} reach rows",
        alone.as_secs_f64(),
        changes.reach.len()
    );
    drop((closure, changes));
    let started = Instant::now();
    let (base_pairs, _, base_depth) = recompute(graph.n, &graph.base);
    let base_bfs = started.elapsed();
    anyhow::ensure!(
        inc.base_reach_rows as u64 == base_pairs,
        "reach rows {} != BFS pairs {base_pairs}",
        inc.base_reach_rows
    );
    println!(
        "base graph: reach view {} pairs, max depth {base_depth}; cold load into the dataflow {:.3} s; BFS from every blob + Kahn {:.3} s",
        inc.base_reach_rows,
        inc.load.as_secs_f64(),
        base_bfs.as_secs_f64()
    );
    if args.duckdb {
        let got = duckdb(graph.n, &graph.base)?;
        println!("base graph: DuckDB recursive CTEs (reach, depth, user depth): {got}");
        let total = got["total_s"].as_f64().unwrap_or(f64::NAN);
        println!(
            "base graph: cold load / DuckDB = {:.2}",
            inc.load.as_secs_f64() / total
        );
        anyhow::ensure!(
            got["reach_rows"].as_u64() == Some(base_pairs)
                && got["max_depth"].as_u64() == Some(u64::from(base_depth)),
            "DuckDB's views differ from the BFS"
        );
    }

    // From scratch, after each batch (the edge set as it is then).
    let mut edges = graph.base.clone();
    let mut scratch: Vec<Vec<Duration>> = Vec::new();
    let mut scratch_rows: Vec<u64> = Vec::new();
    let mut final_pairs = base_pairs;
    let mut final_depth = base_depth;
    for set in &graph.batches {
        let mut times = Vec::new();
        for batch in &set.repeats {
            edges.extend(&batch.edges);
            let started = Instant::now();
            let (pairs, _, depth) = recompute(graph.total, &edges);
            times.push(started.elapsed());
            (final_pairs, final_depth) = (pairs, depth);
        }
        scratch.push(times);
        scratch_rows.push(final_pairs);
    }
    anyhow::ensure!(
        inc.reach_rows as u64 == final_pairs && inc.max_depth == final_depth,
        "incremental ({} pairs, depth {}) != recomputed ({final_pairs}, {final_depth})",
        inc.reach_rows,
        inc.max_depth
    );

    println!();
    println!(
        "{:>7} | {:>6} | {:>14} | {:>16} | {:>14} | {:>22} | {:>9} | {:>18} | {:>9}",
        "batch",
        "edges",
        "incremental ms",
        "reach rows moved",
        "reach rows",
        "BFS from every blob ms",
        "BFS/incr",
        "fresh dataflow ms",
        "fresh/incr"
    );
    for (i, set) in graph.batches.iter().enumerate() {
        let incr = median(inc.steps[i].0.clone());
        let moved = {
            let mut c = inc.steps[i].1.clone();
            c.sort();
            c[c.len() / 2]
        };
        let bfs = median(scratch[i].clone());
        println!(
            "{:>7} | {:>6} | {:>14.2} | {moved:>16} | {:>14} | {:>22.1} | {:>8.2}x | {:>18.0} | {:>8.0}x",
            set.shape,
            set.size,
            ms(incr),
            scratch_rows[i],
            ms(bfs),
            ms(bfs) / ms(incr),
            ms(inc.fresh),
            ms(inc.fresh) / ms(incr)
        );
    }
    println!(
        "(medians of {}; reach view at the end: {} pairs, max depth {})",
        args.repeats, inc.reach_rows, inc.max_depth
    );

    if args.views_only {
        return Ok(());
    }
    println!();
    println!(
        "{:<36} | {:>8} | {:>23} | {:>22} | {:>10}",
        "SQLite: descendants of",
        "rows",
        "WITH RECURSIVE µs/query",
        "blob_reach µs/query",
        "CTE/lookup"
    );
    for set in sqlite(&args, &graph, &mut rng)? {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / set.queries as f64;
        println!(
            "{:<36} | {:>8} | {:>23.1} | {:>22.1} | {:>9.1}x",
            set.name,
            set.rows,
            per(set.cte),
            per(set.lookup),
            set.cte.as_secs_f64() / set.lookup.as_secs_f64()
        );
    }

    println!();
    println!(
        "{:<34} | {:>6} | {:>6} | {:>7} | {:>17} | {:>15} | {:>11}",
        "cycle guard",
        "edges",
        "added",
        "refused",
        "TopoOrder ns/edge",
        "naive DFS ns/edge",
        "naive/topo"
    );
    for row in guard(&args, &graph, &mut rng) {
        println!(
            "{:<34} | {:>6} | {:>6} | {:>7} | {:>17.0} | {:>15.0} | {:>10.1}x",
            row.name,
            row.edges,
            row.added,
            row.refused,
            row.topo_ns,
            row.naive_ns,
            row.naive_ns / row.topo_ns
        );
    }
    Ok(())
}

/// One delta of the logs `--write-log` writes, as a JSON line.
fn delta_line(
    seq: u64,
    blob: u32,
    version: u64,
    parent: Option<u32>,
    child: Option<u32>,
) -> String {
    let ms = seq * 7;
    let created_at = format!(
        "2026-01-01T{:02}:{:02}:{:02}.{:03}Z",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    );
    let delta = Uuid::from_u128(0x0000_000d_0000_4000_8000_0000_0000_0000 | u128::from(seq));
    let (operation, patch) = if version == 1 {
        ("create", format!(r#"{{"content":"blob {blob}"}}"#))
    } else {
        ("update", format!(r#"{{"n":{seq}}}"#))
    };
    let mut line = format!(
        r#"{{"id":"{delta}","blob_id":"{}","user_id":"{}","operation":"{operation}","version":{version},"created_at":"{created_at}","patch":{patch}"#,
        id(blob),
        owner_of(blob)
    );
    if version == 1 {
        line.push_str(r#","metadata":{"content_type":"text/plain"}"#);
    }
    if let Some(p) = parent {
        line.push_str(&format!(r#","parent_id":"{}""#, id(p)));
    }
    if let Some(c) = child {
        line.push_str(&format!(r#","child_ids":["{}"]"#, id(c)));
    }
    line.push('}');
    line
}

/// `--write-log`: the base graph as a delta log with its edges and without them.
fn write_logs(graph: &Graph, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    // The parents of each blob beyond its create's.
    let mut further: Vec<Vec<u32>> = vec![Vec::new(); graph.n as usize];
    for &(p, c) in &graph.base {
        if graph.parent[c as usize] != Some(p) {
            further[c as usize].push(p);
        }
    }
    for (name, with_edges) in [("dag.jsonl", true), ("dag-noedges.jsonl", false)] {
        let path = dir.join(name);
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut version = vec![1u64; graph.n as usize];
        let mut seq = 0u64;
        for c in 0..graph.n {
            let parent = graph.parent[c as usize].filter(|_| with_edges);
            writeln!(out, "{}", delta_line(seq, c, 1, parent, None))?;
            seq += 1;
            for &q in &further[c as usize] {
                version[q as usize] += 1;
                let child = Some(c).filter(|_| with_edges);
                writeln!(
                    out,
                    "{}",
                    delta_line(seq, q, version[q as usize], None, child)
                )?;
                seq += 1;
            }
        }
        out.flush()?;
        println!(
            "{}: {seq} deltas, {} blobs, {} edges",
            path.display(),
            graph.n,
            if with_edges { graph.base.len() } else { 0 }
        );
    }
    Ok(())
}

/// The descendants of each blob (a BFS from it), counted.
fn descendant_counts(n: u32, edges: &[(u32, u32)]) -> Vec<usize> {
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); n as usize];
    for &(p, c) in edges {
        out[p as usize].push(c);
    }
    let mut seen = vec![u32::MAX; n as usize];
    let mut stack = Vec::new();
    (0..n)
        .map(|start| {
            let mut count = 0;
            stack.push(start);
            while let Some(x) = stack.pop() {
                for &y in &out[x as usize] {
                    if seen[y as usize] != start {
                        seen[y as usize] = start;
                        count += 1;
                        stack.push(y);
                    }
                }
            }
            count
        })
        .collect()
}

/// `--query-db`: the latency of `studio query descendants|ancestors|depth` through the
/// library's reader, on random blobs and on the heads and ends of the long chains (the
/// widest answers); each answer's size checked against a BFS; and SQLite's plan for each.
fn query_latency(args: &Args, graph: &Graph, db: &Path, rng: &mut StdRng) -> anyhow::Result<()> {
    use studio_connectors::{Db, Param, open_reader};
    let config = studio_config::Config::default();
    let path = db.to_str().context("a UTF-8 path")?;
    let mut reader = open_reader(&config, &Db::parse(path)?)?;
    let reach: i64 = reader.rows("SELECT count(*) AS n FROM blob_reach", &[])?[0][0]
        .1
        .as_i64()
        .unwrap_or(-1);
    println!("{}: blob_reach {reach} rows", db.display());
    let down = descendant_counts(graph.n, &graph.base);
    let reversed: Vec<(u32, u32)> = graph.base.iter().map(|&(p, c)| (c, p)).collect();
    let up = descendant_counts(graph.n, &reversed);
    let forest = graph.n - args.chains * args.chain_len;
    let random: Vec<u32> = (0..args.queries)
        .map(|_| rng.random_range(0..graph.n))
        .collect();
    let chain_ends: Vec<u32> = (0..args.chains)
        .flat_map(|k| {
            let head = forest + k * args.chain_len;
            [head, head + args.chain_len - 1]
        })
        .collect();
    // The SQL of `ViewReader::{descendants, ancestors, blob_depth}` (connectors/src/query.rs).
    let plans = [
        (
            "descendants",
            "SELECT r.descendant_id AS blob_id, r.distance, \
             CASE WHEN b.deleted_at IS NULL THEN 0 ELSE 1 END AS deleted \
             FROM blob_reach r JOIN blobs b ON b.blob_id = r.descendant_id \
             WHERE r.ancestor_id = ? ORDER BY r.distance, r.descendant_id",
        ),
        (
            "ancestors",
            "SELECT r.ancestor_id AS blob_id, r.distance, \
             CASE WHEN b.deleted_at IS NULL THEN 0 ELSE 1 END AS deleted \
             FROM blob_reach r JOIN blobs b ON b.blob_id = r.ancestor_id \
             WHERE r.descendant_id = ? ORDER BY r.distance, r.ancestor_id",
        ),
        (
            "depth",
            "SELECT blob_id, depth FROM blob_depth WHERE blob_id = ?",
        ),
    ];
    for (name, sql) in plans {
        let plan = reader.rows(&format!("EXPLAIN QUERY PLAN {sql}"), &[Param::Id(id(0))])?;
        let steps: Vec<String> = plan
            .iter()
            .filter_map(|row| row.iter().find(|(c, _)| c == "detail"))
            .map(|(_, v)| v.as_str().unwrap_or_default().to_owned())
            .collect();
        println!("plan of {name}: {}", steps.join("; "));
    }
    println!();
    println!(
        "{:<12} | {:<28} | {:>7} | {:>9} | {:>7} | {:>7} | {:>7}",
        "query", "blobs", "queries", "rows", "p50 µs", "p99 µs", "max µs"
    );
    for (set, sample) in [
        (format!("{} random", random.len()), &random),
        ("chain heads and ends".to_owned(), &chain_ends),
    ] {
        for name in ["descendants", "ancestors", "depth"] {
            let mut times = Vec::with_capacity(sample.len());
            let mut rows = 0;
            for &x in sample.iter() {
                let started = Instant::now();
                let got = match name {
                    "descendants" => reader.descendants(id(x))?,
                    "ancestors" => reader.ancestors(id(x))?,
                    _ => reader.blob_depth(id(x))?,
                };
                times.push(started.elapsed());
                let want = match name {
                    "descendants" => down[x as usize],
                    "ancestors" => up[x as usize],
                    _ => 1,
                };
                anyhow::ensure!(
                    got.len() == want,
                    "{name} of blob {x}: {} rows, not {want}",
                    got.len()
                );
                rows += got.len();
            }
            times.sort();
            let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            println!(
                "{name:<12} | {set:<28} | {:>7} | {rows:>9} | {:>7.0} | {:>7.0} | {:>7.0}",
                times.len(),
                us(at(0.5)),
                us(at(0.99)),
                us(at(1.0))
            );
        }
    }
    Ok(())
}
