//! Micro-benchmarks of the per-record work in the replay's hot path: parsing a record
//! (S1), and offering deltas of each operation to a `BlobLedger` (S3/S4). Baseline in
//! the same run: `serde_json::from_slice::<Value>` of the same records.
//!
//! `cargo bench -p studio-benches --bench model`

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use studio_model::generate::{Faults, GenSpec, generate};
use studio_model::{BlobLedger, Effects, SourcePos, parse_record};

fn sample_log() -> Vec<Vec<u8>> {
    let spec = GenSpec {
        blobs: 200,
        deltas: 20_000,
        seed: 11,
        faults: Faults::default(),
    };
    let mut out = Vec::new();
    generate(&spec, &mut out).expect("in-memory write");
    out.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

fn parsing(c: &mut Criterion) {
    let lines = sample_log();
    let bytes: usize = lines.iter().map(Vec::len).sum();
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("serde_json::Value (baseline)", |b| {
        b.iter(|| {
            for line in &lines {
                black_box(serde_json::from_slice::<serde_json::Value>(line).is_ok());
            }
        })
    });
    group.bench_function("parse_record (S1)", |b| {
        b.iter(|| {
            for (i, line) in lines.iter().enumerate() {
                black_box(parse_record(line, SourcePos::at(i as u64)).is_ok());
            }
        })
    });
    group.finish();
}

fn folding(c: &mut Criterion) {
    let lines = sample_log();
    let deltas: Vec<_> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| parse_record(l, SourcePos::at(i as u64)).expect("generated logs are valid"))
        .collect();
    let mut group = c.benchmark_group("fold");
    group.throughput(Throughput::Elements(deltas.len() as u64));
    group.bench_function(
        "BlobLedger::offer, 20k deltas on 200 blobs, flush every 1000",
        |b| {
            b.iter_batched(
                || deltas.clone(),
                |deltas| {
                    let mut ledgers: std::collections::HashMap<_, BlobLedger> = Default::default();
                    let (mut blobs, mut processed) = (Vec::new(), Vec::new());
                    let mut fx = Effects::default();
                    for (i, d) in deltas.into_iter().enumerate() {
                        let blob = d.blob_id;
                        let ledger = ledgers.entry(blob).or_default();
                        ledger.offer(d, &mut fx);
                        if i % 1000 == 999 {
                            for l in ledgers.values_mut() {
                                l.flush(&mut blobs, &mut processed);
                            }
                            blobs.clear();
                        }
                    }
                    black_box(fx.applied.len())
                },
                BatchSize::LargeInput,
            )
        },
    );
    group.finish();
}

criterion_group!(benches, parsing, folding);
criterion_main!(benches);
