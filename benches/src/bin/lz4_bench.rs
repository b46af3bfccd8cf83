//! `studio-lz4-bench LOG [--rounds N]`: the LZ4 content rule on generated documents.
//!
//! Takes the document of every `create` in the log (a whole document, as the views
//! store it: compact JSON, keys sorted), and reports the compression ratio (all
//! documents, and the share that LZ4 makes smaller, which the sinks then store
//! compressed), with the cost of compressing and decompressing next to the cost of
//! serialising the same documents to JSON, which the sinks pay anyway.

use std::hint::black_box;
use std::time::Instant;

use anyhow::Context;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let log = args
        .next()
        .context("usage: studio-lz4-bench LOG [--rounds N]")?;
    let rounds: u32 = match (args.next().as_deref(), args.next()) {
        (Some("--rounds"), Some(n)) => n.parse()?,
        _ => 5,
    };
    let text = std::fs::read_to_string(&log).with_context(|| format!("reading {log}"))?;
    let docs: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|d| d["operation"] == "create")
        .map(|d| d["patch"].clone())
        .collect();
    let json: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
    let raw: usize = json.iter().map(String::len).sum();

    let t = Instant::now();
    for _ in 0..rounds {
        for d in &docs {
            black_box(d.to_string());
        }
    }
    let serialise = t.elapsed().as_secs_f64() / f64::from(rounds);

    let t = Instant::now();
    let mut packed = Vec::new();
    for _ in 0..rounds {
        packed = json
            .iter()
            .map(|j| lz4_flex::compress_prepend_size(j.as_bytes()))
            .collect();
    }
    let compress = t.elapsed().as_secs_f64() / f64::from(rounds);

    let t = Instant::now();
    for _ in 0..rounds {
        for p in &packed {
            black_box(lz4_flex::decompress_size_prepended(p).expect("round trip"));
        }
    }
    let decompress = t.elapsed().as_secs_f64() / f64::from(rounds);

    let packed_bytes: usize = packed.iter().map(Vec::len).sum();
    let saved = json
        .iter()
        .zip(&packed)
        .filter(|(j, p)| p.len() < j.len())
        .count();
    let stored: usize = json
        .iter()
        .zip(&packed)
        .map(|(j, p)| p.len().min(j.len()))
        .sum();
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    println!("documents            {}", docs.len());
    println!(
        "JSON bytes           {raw} ({:.0} per document)",
        raw as f64 / docs.len() as f64
    );
    println!(
        "LZ4 bytes            {packed_bytes} (ratio {:.3})",
        packed_bytes as f64 / raw as f64
    );
    println!(
        "stored by the rule   {stored} (ratio {:.3}; {saved} of {} documents compressed)",
        stored as f64 / raw as f64,
        docs.len()
    );
    println!(
        "serialise to JSON    {:.1} ms ({:.0} MiB/s)",
        serialise * 1e3,
        mib(raw) / serialise
    );
    println!(
        "LZ4 compress         {:.1} ms ({:.0} MiB/s of JSON)",
        compress * 1e3,
        mib(raw) / compress
    );
    println!(
        "LZ4 decompress       {:.1} ms ({:.0} MiB/s of JSON)",
        decompress * 1e3,
        mib(raw) / decompress
    );
    Ok(())
}
