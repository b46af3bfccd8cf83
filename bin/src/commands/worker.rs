//! `studio worker`: a standalone provider worker over files. It reads transform
//! requests (JSON lines, as `studio replay --requests-out` writes them), runs the
//! providers registered in the config (built-in, and external `command`s in a
//! sandbox), and writes the output deltas as a
//! delta log (to append to the input of a later replay) and the processing results as
//! JSON lines. Of several requests for one (provider, blob) only the last in the file
//! runs: the earlier ones are superseded (S5.5).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use studio_model::{ProcessingStatus, TransformRequest, Uuid};
use studio_providers::Runtime;

use crate::cli::WorkerArgs;

pub fn run(config_file: Option<&Path>, args: WorkerArgs) -> anyhow::Result<()> {
    let (config, providers) = super::load_config(config_file)?;
    if providers.is_empty() {
        bail!("no provider is registered: add [[providers]] tables to --config FILE");
    }
    let (runtime, answers) = Runtime::with_policy(
        config.provider_runtime.threads,
        super::provider_policy(&config)?,
    )
    .context("cannot start the provider runtime")?;
    let mut not_run_here = Vec::new();
    for provider in &providers {
        if !runtime.register_runnable(provider.clone())? {
            not_run_here.push(provider.id.clone());
        }
    }

    let input = File::open(&args.requests)
        .with_context(|| format!("cannot read requests {}", args.requests.display()))?;
    let mut latest: BTreeMap<(String, Uuid), TransformRequest> = BTreeMap::new();
    let mut read = 0u64;
    for (n, line) in BufReader::new(input).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", args.requests.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let request: TransformRequest = serde_json::from_str(&line).with_context(|| {
            format!(
                "{}:{}: not a transform request",
                args.requests.display(),
                n + 1
            )
        })?;
        read += 1;
        latest.insert((request.provider_id.clone(), request.blob_id), request);
    }
    let superseded = read - latest.len() as u64;
    let mut submitted = 0u64;
    let mut skipped = 0u64;
    for request in latest.into_values() {
        if runtime.runs(&request.provider_id) {
            runtime.submit(request, Arc::new(|_| true));
            submitted += 1;
        } else {
            skipped += 1;
        }
    }

    let mut out = BufWriter::new(
        File::create(&args.out).with_context(|| format!("cannot write {}", args.out.display()))?,
    );
    let mut results = match &args.results {
        Some(path) => {
            Some(BufWriter::new(File::create(path).with_context(|| {
                format!("cannot write {}", path.display())
            })?))
        }
        None => None,
    };
    let (mut outputs, mut completed, mut failed) = (0u64, 0u64, 0u64);
    for _ in 0..submitted {
        let answer = answers
            .recv()
            .context("the provider runtime stopped answering")?;
        let Some(outcome) = answer.outcome else {
            continue;
        };
        for output in &outcome.outputs {
            writeln!(out, "{}", output.record)?;
            outputs += 1;
        }
        match outcome.result.status {
            ProcessingStatus::Completed => completed += 1,
            ProcessingStatus::Failed => failed += 1,
        }
        if let Some(results) = results.as_mut() {
            serde_json::to_writer(&mut *results, &outcome.result)?;
            writeln!(results)?;
        }
    }
    out.flush()?;
    if let Some(results) = results.as_mut() {
        results.flush()?;
    }
    println!(
        "{read} requests read: {superseded} superseded, {completed} completed, {failed} failed, {skipped} for providers without a built-in worker or a command; {outputs} output deltas written to {}",
        args.out.display()
    );
    if !not_run_here.is_empty() {
        println!(
            "  no built-in worker or command for: {}",
            not_run_here.join(", ")
        );
    }
    Ok(())
}
