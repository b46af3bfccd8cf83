//! `studio-bench`: the baselines the replay load test is measured against, each a
//! whole process over the same log so that they time side by side with `studio replay`
//! (see BENCHMARKS.md and `benches/replay.sh`).
//!
//! - `serde-parse`: every line through `serde_json::from_slice::<Value>` (what any JSON
//!   consumer pays).
//! - `parse`: every line through Studio's own S1 parser (`parse_record`).
//! - `fold`: parse, then the sequential fold: one `BlobLedger` per blob in a hash map,
//!   in log order, flushing view rows every `--batch-records` records. No dataflow, no
//!   sink: the hand-written single-threaded baseline.
//! - `verify LOG --db DB`: not a baseline but the check that goes with the load test:
//!   the reference model of the tests (`studio-tests`) run over the log must give
//!   exactly the view tables a `studio replay` left in DB.

use clap::{Parser, ValueEnum};
use rustc_hash::FxHashMap;
use studio_connectors::file::FileSource;
use studio_model::{BlobLedger, Effects, History, SourcePos, Uuid, parse_record};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Baselines for the replay load test.
#[derive(Parser)]
struct Args {
    /// Which baseline.
    #[arg(value_enum)]
    mode: Mode,
    /// The delta log.
    log: std::path::PathBuf,
    /// Records per flush of view rows (fold only).
    #[arg(long, default_value_t = 250_000)]
    batch_records: u64,
    /// The view database to verify (verify only).
    #[arg(long)]
    db: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    SerdeParse,
    Parse,
    Fold,
    Verify,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Mode::Verify = args.mode {
        return verify(&args);
    }
    let mut source = FileSource::open(std::slice::from_ref(&args.log))?;
    let started = std::time::Instant::now();
    let (mut records, mut ok) = (0u64, 0u64);
    let mut ledgers: FxHashMap<Uuid, BlobLedger> = FxHashMap::default();
    // As the dataflow keeps it: in a spill file.
    let history = History::spilled();
    let mut touched = Vec::new();
    let (mut blobs, mut processed) = (Vec::new(), Vec::new());
    let (mut applied, mut dead) = (0usize, 0usize);
    while let Some(record) = source.next_record()? {
        records += 1;
        match args.mode {
            Mode::SerdeParse => {
                ok += serde_json::from_slice::<serde_json::Value>(record.bytes).is_ok() as u64
            }
            Mode::Parse => ok += parse_record(record.bytes, record.pos).is_ok() as u64,
            Mode::Verify => unreachable!("handled above"),
            Mode::Fold => {
                let pos: SourcePos = record.pos;
                if let Ok(delta) = parse_record(record.bytes, pos) {
                    ok += 1;
                    let mut fx = Effects::default();
                    let blob = delta.blob_id;
                    ledgers
                        .entry(blob)
                        .or_insert_with(|| BlobLedger::new(history.clone(), false))
                        .offer(delta, &mut fx);
                    touched.push(blob);
                    applied += fx.applied.len();
                    dead += fx.dead_letters.len();
                }
                if records % args.batch_records == 0 {
                    for blob in touched.drain(..) {
                        ledgers
                            .get_mut(&blob)
                            .expect("touched")
                            .flush(&mut blobs, &mut processed);
                    }
                    blobs.clear();
                    processed.clear();
                }
            }
        }
    }
    let mut fx = Effects::default();
    for ledger in ledgers.values_mut() {
        ledger.expire_pending(&mut fx);
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{records} records, {ok} parsed, {applied} applied, {} dead, {} blobs in {seconds:.2} s ({:.0} records/s)",
        dead + fx.dead_letters.len(),
        ledgers.len(),
        records as f64 / seconds
    );
    Ok(())
}

/// Compares the views in `--db` with the reference model run over the log.
fn verify(args: &Args) -> anyhow::Result<()> {
    use studio_tests::{model, views};
    let db = args
        .db
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("verify needs --db"))?;
    let started = std::time::Instant::now();
    let lines = model::split_lines(&std::fs::read(&args.log)?);
    let expected = model::run(&lines);
    let got = views::read_tables(db).map_err(anyhow::Error::msg)?;
    let (expected, got) = (expected.tables.unordered(), got.unordered());
    fn same<T: PartialEq>(name: &str, model: &[T], views: &[T]) -> bool {
        let equal = model == views;
        let verdict = if equal { "equal" } else { "DIFFERENT" };
        println!(
            "{name:<15} model {:>9} rows, views {:>9} rows: {verdict}",
            model.len(),
            views.len()
        );
        equal
    }
    let ok = [
        same("blobs", &expected.blobs, &got.blobs),
        same("deltas_applied", &expected.applied, &got.applied),
        same("processed_by", &expected.processed, &got.processed),
        same("dead_letters", &expected.dead_letters, &got.dead_letters),
    ]
    .iter()
    .all(|ok| *ok);
    println!("verified in {:.1} s", started.elapsed().as_secs_f64());
    anyhow::ensure!(ok, "the views differ from the reference model");
    Ok(())
}
