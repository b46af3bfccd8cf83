//! `studio-trigger-bench`: what the provider pipeline (SPEC S5.3–S5.7) costs, each
//! figure beside a baseline measured in the same process.
//!
//! - `triggers`: the cost per delta of the pending-trigger computation with N providers
//!   registered. A log is generated (`studio_model::generate`), then replayed into SQLite
//!   with no providers and with N providers that no worker here runs (`worker =
//!   "external"`: only the triggers are computed and the requests written). The added
//!   cost is `(t_N - t_0) / deltas`. The baseline is an evaluator with no dataflow: the
//!   same log folded by one `BlobLedger::tracking_facts()` per blob, and after every
//!   batch **every provider re-evaluated against every blob** with `Provider::trigger`
//!   (and diffed against the previous batch's requests); only that evaluation is timed.
//!   Beside it the same evaluator re-evaluates only the blobs the batch touched, which
//!   is what `PendingTriggers` does, without the dataflow.
//! - `cascade`: chains of derived blobs. Stage `k` derives a `text/x-stage-k` blob from
//!   a `text/x-stage-(k-1)` one (a copy of `/content`). The log creates `--roots` roots
//!   and then edits each one, which changes every level. It is replayed with the
//!   provider loop after every batch (`each_batch`), the batch being the roots. Timed
//!   beside it: the log with the creates only (so the edit's cascade is the
//!   difference), the same derivations as direct calls in a plain loop (trigger,
//!   transform, output deltas, parse, fold), and a replay of a log holding the loop's
//!   outputs already written, without providers and with the stages registered as
//!   external.
//!
//! ```sh
//! cargo run --release -p studio-benches --bin studio-trigger-bench -- triggers
//! cargo run --release -p studio-benches --bin studio-trigger-bench -- cascade
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::{Args, Parser, Subcommand};
use rustc_hash::{FxHashMap, FxHashSet};
use serde_json::{Value, json};
use studio_config::Config;
use studio_connectors::content::{ContentOptions, ContentSpec};
use studio_connectors::retry::RetryPolicy;
use studio_connectors::sqlite::{OpenMode, SqliteOptions, SqliteViews};
use studio_dataflow::providers::ProviderSetup;
use studio_dataflow::replay::{Progress, ReplayOptions, ReplayReport, replay};
use studio_model::generate::{Faults, GenSpec, generate};
use studio_model::provider::derived_blob_id;
use studio_model::{BlobFacts, BlobLedger, Effects, Provider, SourcePos, Uuid, parse_record};
use studio_providers::output::output_deltas;
use studio_providers::transformer::TransformFuture;
use studio_providers::{ProviderInput, ProviderOutput, Transformer};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Provider pipeline benchmarks: trigger evaluation and cascades.
#[derive(Parser)]
struct Cli {
    /// What to measure.
    #[command(subcommand)]
    mode: Mode,
}

/// The two measurements.
#[derive(Subcommand)]
enum Mode {
    /// Trigger evaluation cost per delta with N providers, against re-evaluating
    /// every provider on every blob after each batch.
    Triggers(TriggerArgs),
    /// End-to-end time of cascades of derived blobs, against direct calls.
    Cascade(CascadeArgs),
}

/// Settings of `triggers`.
#[derive(Args)]
struct TriggerArgs {
    /// Blobs of the generated log.
    #[arg(long, default_value_t = 20_000)]
    blobs: u64,
    /// Deltas of the generated log.
    #[arg(long, default_value_t = 200_000)]
    deltas: u64,
    /// Records per batch (timestamp).
    #[arg(long, default_value_t = 10_000)]
    batch_records: u64,
    /// Provider counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    providers: Vec<usize>,
    /// Repetitions of every measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Timely workers of the replays.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Seed of the generated log.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Skip the baseline that re-evaluates every blob (it is slow with many providers).
    #[arg(long)]
    no_naive: bool,
}

/// Settings of `cascade`.
#[derive(Args)]
struct CascadeArgs {
    /// Chain depths (stages), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,10")]
    depths: Vec<usize>,
    /// Root counts, comma-separated; each root gets its own chain.
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    roots: Vec<usize>,
    /// Repetitions of every measurement (the median is reported).
    #[arg(long, default_value_t = 7)]
    repeats: usize,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().mode {
        Mode::Triggers(args) => triggers(&args),
        Mode::Cascade(args) => cascade(&args),
    }
}

// ---------------------------------------------------------------------------------------
// Shared
// ---------------------------------------------------------------------------------------

/// Replays `log` into a fresh SQLite database in a temp dir (deleted after).
fn replay_once(
    log: &Path,
    batch_records: u64,
    workers: usize,
    options: &ReplayOptions,
) -> anyhow::Result<ReplayReport> {
    let dir = tempfile::tempdir()?;
    // As `studio replay --db` opens it with the default configuration.
    let defaults = Config::default();
    let path = dir.path().join("views.sqlite");
    let mut content = ContentSpec::in_dir(path.with_extension("sqlite.blobs"));
    content.options = ContentOptions {
        large_min_bytes: defaults.content.large_min_bytes,
    };
    let sink = SqliteViews::open(&SqliteOptions {
        path,
        cache_size_kib: defaults.sqlite.cache_size_kib,
        mode: OpenMode::Rebuild,
        content,
        retry: RetryPolicy::default(),
    })?;
    let config = studio_config::ReplayConfig {
        workers,
        batch_records,
        ..Config::default().replay
    };
    let report = replay(
        &[log.to_path_buf()],
        &config,
        Box::new(sink),
        Arc::new(Progress::default()),
        options,
    )?;
    ensure!(report.counts_add_up(), "counts do not add up: {report:?}");
    Ok(report)
}

/// Provider options for a replay.
fn with_providers(
    providers: Vec<Provider>,
    each_batch: bool,
    transformers: Vec<(String, Arc<dyn Transformer>)>,
) -> ReplayOptions {
    ReplayOptions {
        providers: Some(ProviderSetup {
            providers,
            threads: Config::default().provider_runtime.threads,
            requests_out: None,
            each_batch,
            transformers,
            policy: Default::default(),
        }),
        events: false,
    }
}

/// Median, minimum and maximum.
#[derive(Clone, Copy, Debug, Default)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(samples: &[f64]) -> Spread {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        if s.is_empty() {
            return Spread::default();
        }
        Spread {
            median: s[s.len() / 2],
            min: s[0],
            max: s[s.len() - 1],
        }
    }

    /// `median (min–max)`, scaled.
    fn show(&self, scale: f64, digits: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median * scale,
            self.min * scale,
            self.max * scale,
            d = digits
        )
    }
}

fn provider(def: Value) -> anyhow::Result<Provider> {
    serde_json::from_value(def).context("a provider definition")
}

// ---------------------------------------------------------------------------------------
// triggers
// ---------------------------------------------------------------------------------------

/// `n` providers no worker here runs, with varied rules: of every ten, about half match
/// a given blob (types, events, sizes, metadata and what they read vary).
fn external_providers(n: usize) -> anyhow::Result<Vec<Provider>> {
    (0..n)
        .map(|i| {
            let mut def = json!({"id": format!("p-{i:03}"), "worker": "external", "version": "1"});
            match i % 10 {
                0 => def["blob_types"] = json!(["text/*"]),
                1 => def["blob_types"] = json!(["text/markdown"]),
                2 => {
                    def["blob_types"] = json!(["text/plain"]);
                    def["rules"] = json!({"process_on_edit": false});
                }
                3 => {
                    def["blob_types"] = json!(["application/json"]);
                    def["reads"] = json!(["/title"]);
                }
                4 => def["blob_types"] = json!(["image/png"]),
                5 => def["rules"] = json!({"required_metadata": ["patch_format"]}),
                6 => {
                    def["blob_types"] = json!(["text/*"]);
                    def["rules"] = json!({"min_input_size": 600});
                }
                7 => {
                    def["blob_types"] = json!(["text/markdown"]);
                    def["events"] = json!(["blob.created"]);
                }
                8 => def["rules"] = json!({"max_input_size": 400}),
                _ => {
                    def["blob_types"] = json!(["text/plain"]);
                    def["rules"] = json!({"allowed_mime_types": ["text/plain"]});
                    def["reads"] = json!(["/content", "/title"]);
                }
            }
            provider(def)
        })
        .collect()
}

/// What the evaluator without dataflow measured for one provider set.
#[derive(Default)]
struct NaiveRun {
    /// Re-evaluating every provider on every blob after each batch.
    all: Duration,
    /// Re-evaluating every provider on the blobs the batch touched only.
    touched: Duration,
    /// `Provider::trigger` calls of each.
    calls_all: u64,
    calls_touched: u64,
    /// Distinct request ids emitted by each (they must agree with the dataflow).
    requests_all: u64,
    requests_touched: u64,
}

/// The pending requests of one evaluator: (provider index, blob) -> request id, and the
/// request ids ever emitted.
#[derive(Default)]
struct Pending {
    current: FxHashMap<(u32, Uuid), Uuid>,
    seen: FxHashSet<Uuid>,
    calls: u64,
}

impl Pending {
    fn evaluate(&mut self, providers: &[Provider], blob: Uuid, facts: &BlobFacts) {
        for (i, p) in providers.iter().enumerate() {
            self.calls += 1;
            let key = (i as u32, blob);
            match p.trigger(facts, &[], &[]) {
                Ok(request) => {
                    if self.current.insert(key, request.request_id) != Some(request.request_id) {
                        self.seen.insert(request.request_id);
                    }
                }
                Err(_) => {
                    self.current.remove(&key);
                }
            }
        }
    }
}

/// The sequential fold of `lines` with trigger facts; after each batch, each provider
/// set is evaluated on every blob and on the touched blobs, each timed.
fn naive(
    lines: &[&[u8]],
    batch_records: u64,
    sets: &[Vec<Provider>],
) -> anyhow::Result<Vec<NaiveRun>> {
    let mut ledgers: FxHashMap<Uuid, BlobLedger> = FxHashMap::default();
    let mut facts: FxHashMap<Uuid, BlobFacts> = FxHashMap::default();
    let mut touched: Vec<Uuid> = Vec::new();
    let mut all: Vec<Pending> = sets.iter().map(|_| Pending::default()).collect();
    let mut inc: Vec<Pending> = sets.iter().map(|_| Pending::default()).collect();
    let mut runs: Vec<NaiveRun> = sets.iter().map(|_| NaiveRun::default()).collect();
    let mut fx = Effects::default();
    for (offset, line) in lines.iter().enumerate() {
        let pos = SourcePos {
            part: 0,
            offset: offset as u64,
        };
        let Ok(delta) = parse_record(line, pos) else {
            bail!("line {offset} does not parse");
        };
        let blob = delta.blob_id;
        ledgers
            .entry(blob)
            .or_insert_with(BlobLedger::tracking_facts)
            .offer(delta, &mut fx);
        touched.push(blob);
        let last = offset + 1 == lines.len();
        if !(last || (offset as u64 + 1).is_multiple_of(batch_records)) {
            continue;
        }
        fx = Effects::default();
        touched.sort_unstable();
        touched.dedup();
        for b in &touched {
            if let Some(f) = ledgers[b].facts() {
                facts.insert(*b, f);
            }
        }
        for (s, providers) in sets.iter().enumerate() {
            let started = Instant::now();
            for (blob, f) in &facts {
                all[s].evaluate(providers, *blob, f);
            }
            runs[s].all += started.elapsed();
            let started = Instant::now();
            for blob in &touched {
                if let Some(f) = facts.get(blob) {
                    inc[s].evaluate(providers, *blob, f);
                }
            }
            runs[s].touched += started.elapsed();
        }
        touched.clear();
    }
    for (s, run) in runs.iter_mut().enumerate() {
        run.calls_all = all[s].calls;
        run.calls_touched = inc[s].calls;
        run.requests_all = all[s].seen.len() as u64;
        run.requests_touched = inc[s].seen.len() as u64;
    }
    Ok(runs)
}

fn triggers(args: &TriggerArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("log.jsonl");
    let mut bytes = Vec::new();
    let stats = generate(
        &GenSpec {
            blobs: args.blobs,
            deltas: args.deltas,
            seed: args.seed,
            faults: Faults::default(),
        },
        &mut bytes,
    )?;
    std::fs::write(&log, &bytes)?;
    let lines: Vec<&[u8]> = bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let deltas = stats.valid as f64;
    let batches = (lines.len() as u64).div_ceil(args.batch_records);
    println!(
        "log: {} deltas on {} blobs ({:.0} MiB), {} batches of {} records, {} worker(s), {} repeats",
        stats.valid,
        args.blobs,
        bytes.len() as f64 / (1 << 20) as f64,
        batches,
        args.batch_records,
        args.workers,
        args.repeats
    );
    let sets: Vec<Vec<Provider>> = args
        .providers
        .iter()
        .map(|&n| external_providers(n))
        .collect::<anyhow::Result<_>>()?;

    // Replays, interleaved so that drift hits every configuration alike.
    let mut t0 = Vec::new();
    let mut tn: Vec<Vec<f64>> = vec![Vec::new(); sets.len()];
    let mut sink_n: Vec<Vec<f64>> = vec![Vec::new(); sets.len()];
    let mut requests_n: Vec<u64> = vec![0; sets.len()];
    for rep in 0..args.repeats {
        let r = replay_once(
            &log,
            args.batch_records,
            args.workers,
            &ReplayOptions::default(),
        )?;
        eprintln!(
            "rep {rep}: no providers {:.2} s (sink {:.2} s)",
            r.wall_seconds, r.sink_seconds
        );
        t0.push(r.wall_seconds);
        for (s, providers) in sets.iter().enumerate() {
            let r = replay_once(
                &log,
                args.batch_records,
                args.workers,
                &with_providers(providers.clone(), false, Vec::new()),
            )?;
            let p = r.providers.as_ref().context("a provider report")?;
            eprintln!(
                "rep {rep}: {} providers {:.2} s (sink {:.2} s), {} requests, {} waiting",
                providers.len(),
                r.wall_seconds,
                r.sink_seconds,
                p.requests,
                p.waiting_for_external_workers
            );
            tn[s].push(r.wall_seconds);
            sink_n[s].push(r.sink_seconds);
            requests_n[s] = p.requests;
        }
    }

    let mut naive_all: Vec<Vec<f64>> = vec![Vec::new(); sets.len()];
    let mut naive_touched: Vec<Vec<f64>> = vec![Vec::new(); sets.len()];
    let mut last_naive = Vec::new();
    if !args.no_naive {
        for rep in 0..args.repeats {
            let runs = naive(&lines, args.batch_records, &sets)?;
            for (s, run) in runs.iter().enumerate() {
                eprintln!(
                    "rep {rep}: naive, {} providers: every blob {:.2} s ({} calls, {} requests), touched {:.2} s ({} calls, {} requests)",
                    sets[s].len(),
                    run.all.as_secs_f64(),
                    run.calls_all,
                    run.requests_all,
                    run.touched.as_secs_f64(),
                    run.calls_touched,
                    run.requests_touched
                );
                naive_all[s].push(run.all.as_secs_f64());
                naive_touched[s].push(run.touched.as_secs_f64());
            }
            last_naive = runs;
        }
    }

    let t0 = Spread::of(&t0);
    let us = 1e6 / deltas;
    println!(
        "\nno providers: {} s per replay, {} µs per delta",
        t0.show(1.0, 2),
        t0.show(us, 2)
    );
    println!(
        "| providers | requests | replay s | added µs/delta (dataflow) | every blob µs/delta | every blob / dataflow | touched only µs/delta | sink s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (s, providers) in sets.iter().enumerate() {
        let t = Spread::of(&tn[s]);
        let added: Vec<f64> = tn[s].iter().map(|x| (x - t0.median) * us).collect();
        let added = Spread::of(&added);
        let all = Spread::of(&naive_all[s]);
        let touched = Spread::of(&naive_touched[s]);
        if let Some(run) = last_naive.get(s)
            && (run.requests_all != requests_n[s] || run.requests_touched != requests_n[s])
        {
            eprintln!(
                "WARNING: {} providers: the dataflow emitted {} requests, the evaluators {} and {}",
                providers.len(),
                requests_n[s],
                run.requests_all,
                run.requests_touched
            );
        }
        println!(
            "| {} | {} | {} | {} | {} | {:.1}× | {} | {:.2} |",
            providers.len(),
            requests_n[s],
            t.show(1.0, 2),
            added.show(1.0, 2),
            all.show(us, 2),
            all.median * us / added.median.max(1e-9),
            touched.show(us, 2),
            Spread::of(&sink_n[s]).median
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// cascade
// ---------------------------------------------------------------------------------------

/// Stage `k`: derives a blob of content type `config.content_type` holding a copy of
/// `/content` (so an edit of the root changes every level).
struct Stage;

impl Transformer for Stage {
    fn transform<'a>(&'a self, input: &'a ProviderInput) -> TransformFuture<'a> {
        Box::pin(async move {
            Ok(ProviderOutput::Derive {
                content_type: input
                    .config_str("content_type")
                    .unwrap_or("text/plain")
                    .into(),
                doc: json!({"content": input.content()}),
            })
        })
    }
}

/// The stage providers 1..=depth, run by `worker`.
fn stages(depth: usize, worker: &str) -> anyhow::Result<Vec<Provider>> {
    (1..=depth)
        .map(|k| {
            provider(json!({"id": format!("stage-{k}"), "worker": worker,
                "blob_types": [format!("text/x-stage-{}", k - 1)],
                "config": {"content_type": format!("text/x-stage-{k}")}}))
        })
        .collect()
}

const USER: Uuid = Uuid::from_u128(0x0a11_ce00);

fn root(r: usize) -> Uuid {
    Uuid::from_u128(0x7000_0000_0000 + r as u128)
}

/// The root creates, and with `edit` then an edit of each root's content.
fn root_records(roots: usize, edit: bool) -> (Vec<String>, Vec<String>) {
    let creates = (0..roots)
        .map(|r| {
            json!({"id": Uuid::from_u128(0x7100_0000_0000 + r as u128), "blob_id": root(r),
                "user_id": USER, "operation": "create", "version": 1,
                "created_at": "2026-11-01T10:00:00Z",
                "patch": {"content": format!("root {r}: the first draft of a document")},
                "metadata": {"content_type": "text/x-stage-0"}})
            .to_string()
        })
        .collect();
    let edits = (0..roots)
        .filter(|_| edit)
        .map(|r| {
            json!({"id": Uuid::from_u128(0x7200_0000_0000 + r as u128), "blob_id": root(r),
                "user_id": USER, "operation": "update", "version": 2,
                "created_at": "2026-11-01T10:01:00Z",
                "patch": {"content": format!("root {r}: the second draft, edited")}})
            .to_string()
        })
        .collect();
    (creates, edits)
}

/// Polls a future that is ready at once (the stage transformer never waits).
fn ready<T>(mut future: std::pin::Pin<Box<dyn Future<Output = T> + Send + '_>>) -> T {
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(value) => value,
        Poll::Pending => panic!("the stage transformer is synchronous"),
    }
}

/// Ledgers in a hash map, fed record by record: the fold of the direct loop.
#[derive(Default)]
struct Folder {
    ledgers: FxHashMap<Uuid, BlobLedger>,
    fx: Effects,
    /// Every record folded, in order.
    log: Vec<String>,
}

impl Folder {
    /// Parses and folds one record; returns its blob.
    fn apply(&mut self, record: &str) -> anyhow::Result<Uuid> {
        let pos = SourcePos {
            part: 0,
            offset: self.log.len() as u64,
        };
        let delta = parse_record(record.as_bytes(), pos)
            .map_err(|letter| anyhow::anyhow!("{:?}", letter.reason))?;
        let blob = delta.blob_id;
        self.ledgers
            .entry(blob)
            .or_insert_with(BlobLedger::tracking_facts)
            .offer(delta, &mut self.fx);
        ensure!(
            self.fx.dead_letters.is_empty(),
            "{:?}",
            self.fx.dead_letters
        );
        self.log.push(record.to_owned());
        Ok(blob)
    }

    fn facts(&self, blob: Uuid) -> Option<BlobFacts> {
        self.ledgers.get(&blob)?.facts()
    }
}

/// The cascade as direct calls: fold the root deltas, then level by level, for each
/// blob of the level: `Provider::trigger`, `Stage::transform`, `output_deltas`, parse
/// and fold the output. Returns the time and the log it amounts to (roots and outputs,
/// level after level).
fn direct(roots: usize, depth: usize, edit: bool) -> anyhow::Result<(Duration, Vec<String>)> {
    let providers = stages(depth, "stage")?;
    let (creates, edits) = root_records(roots, edit);
    let started = Instant::now();
    let mut folder = Folder::default();
    for phase in [creates, edits] {
        let mut level = Vec::new();
        for record in &phase {
            level.push(folder.apply(record)?);
        }
        for p in &providers {
            let mut next = Vec::new();
            for source in level {
                let facts = folder.facts(source).context("a folded blob")?;
                let derived: Vec<_> = folder
                    .facts(derived_blob_id(&p.id, source))
                    .and_then(|f| f.as_derived())
                    .into_iter()
                    .collect();
                let Ok(request) = p.trigger(&facts, &[], &derived) else {
                    continue;
                };
                let input = ProviderInput::new(request, p.clone());
                let output = ready(Stage.transform(&input)).map_err(|e| anyhow::anyhow!("{e}"))?;
                for out in output_deltas(&input.request, p, &output) {
                    next.push(folder.apply(&out.record)?);
                }
            }
            level = next;
        }
    }
    Ok((started.elapsed(), folder.log))
}

/// Writes `records` as a log file in `dir`.
fn write_log(dir: &Path, name: &str, records: &[String]) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The samples of one cascade shape, in seconds.
#[derive(Default)]
struct CascadeSamples {
    full: Vec<f64>,
    create_only: Vec<f64>,
    direct_full: Vec<f64>,
    direct_create: Vec<f64>,
    prewritten: Vec<f64>,
    prewritten_external: Vec<f64>,
}

fn cascade(args: &CascadeArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    println!(
        "| roots | depth | output deltas | loop replay ms | create-only replay ms | edit's cascade ms | per level ms | direct loop ms | loop / direct | pre-written log, no providers, ms | loop / pre-written | pre-written, stages external, ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &roots in &args.roots {
        for &depth in &args.depths {
            let (creates, edits) = root_records(roots, true);
            let (_, expected) = direct(roots, depth, true)?;
            let outputs = expected.len() - 2 * roots;
            ensure!(
                outputs == 2 * roots * depth,
                "{outputs} output deltas: the edit did not reach every level"
            );
            let full_log = write_log(dir.path(), "full.jsonl", &[creates.clone(), edits].concat())?;
            let create_log = write_log(dir.path(), "create.jsonl", &creates)?;
            let pre_log = write_log(dir.path(), "prewritten.jsonl", &expected)?;
            let loop_options = |external: bool| -> anyhow::Result<ReplayOptions> {
                let transformers: Vec<(String, Arc<dyn Transformer>)> =
                    vec![("stage".into(), Arc::new(Stage))];
                Ok(with_providers(
                    stages(depth, if external { "external" } else { "stage" })?,
                    !external,
                    transformers,
                ))
            };
            let batch = roots as u64;
            let mut s = CascadeSamples::default();
            for _ in 0..args.repeats {
                let r = replay_once(&full_log, batch, 1, &loop_options(false)?)?;
                let p = r.providers.as_ref().context("a provider report")?;
                ensure!(
                    r.accepted as usize == expected.len() && p.cascade_depth as usize == depth,
                    "the loop accepted {} deltas (expected {}), cascade depth {}",
                    r.accepted,
                    expected.len(),
                    p.cascade_depth
                );
                s.full.push(r.wall_seconds);
                let r = replay_once(&create_log, batch, 1, &loop_options(false)?)?;
                ensure!(r.accepted as usize == roots * (depth + 1), "create-only");
                s.create_only.push(r.wall_seconds);
                let r = replay_once(&pre_log, batch, 1, &ReplayOptions::default())?;
                ensure!(r.accepted as usize == expected.len(), "pre-written");
                s.prewritten.push(r.wall_seconds);
                let r = replay_once(&pre_log, batch, 1, &loop_options(true)?)?;
                ensure!(
                    r.accepted as usize == expected.len(),
                    "pre-written, external"
                );
                s.prewritten_external.push(r.wall_seconds);
                s.direct_full
                    .push(direct(roots, depth, true)?.0.as_secs_f64());
                s.direct_create
                    .push(direct(roots, depth, false)?.0.as_secs_f64());
            }
            let ms = 1e3;
            let full = Spread::of(&s.full);
            let create = Spread::of(&s.create_only);
            let edit = full.median - create.median;
            let dfull = Spread::of(&s.direct_full);
            let pre = Spread::of(&s.prewritten);
            let pre_ext = Spread::of(&s.prewritten_external);
            println!(
                "| {roots} | {depth} | {outputs} | {} | {} | {:.1} | {:.2} | {} | {:.0}× | {} | {:.1}× | {} |",
                full.show(ms, 1),
                create.show(ms, 1),
                edit * ms,
                edit * ms / depth as f64,
                dfull.show(ms, 3),
                full.median / dfull.median.max(1e-12),
                pre.show(ms, 1),
                full.median / pre.median.max(1e-12),
                pre_ext.show(ms, 1),
            );
            let dcreate = Spread::of(&s.direct_create);
            eprintln!(
                "roots {roots} depth {depth}: direct loop, creates only {} ms",
                dcreate.show(ms, 3)
            );
        }
    }
    Ok(())
}
