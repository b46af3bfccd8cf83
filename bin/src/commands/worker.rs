//! `studio worker`: a provider worker running the providers registered in the config:
//! built-in ones, and external `command`s in a sandbox.
//!
//! - **Bus mode** (`--source kafka|nats`): one member of the workers' group on the
//!   requests topic or subject; publishes output deltas and results, acknowledges
//!   requests after that ([`studio_dataflow::worker`]). The memo is a SQLite file
//!   (`worker.memo`), kept across restarts.
//! - **File mode** (`--requests FILE --out FILE`): reads transform requests (JSON lines,
//!   as `studio replay --requests-out` writes them) and writes the output deltas as a
//!   delta log (to append to the input of a later replay) and the processing results
//!   as JSON lines. Of several requests for one (provider, blob) only the last in the
//!   file runs: the earlier ones are superseded (S5.5).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use std::time::Duration;

use anyhow::{Context, bail};
use crossbeam_channel::Receiver;
use studio_config::{BusKind, Config};
use studio_connectors::{OutputStream, open_group_source, open_publisher};
use studio_dataflow::pipeline::Control;
use studio_dataflow::worker::{WorkerOptions, serve};
use studio_model::{ProcessingStatus, TransformRequest, Uuid};
use studio_providers::{Answer, Memo, Runtime};

use crate::cli::WorkerArgs;

pub fn run(config_file: Option<&Path>, args: WorkerArgs) -> anyhow::Result<()> {
    let (mut config, providers) = super::load_config(config_file)?;
    apply_flags(&mut config, &args);
    // A worker pulls no more than it takes at once: what it holds unacknowledged is
    // what another worker waits for when it dies.
    config.nats.pull_batch = config.worker.max_batch_requests;
    config.validate()?;
    if providers.is_empty() {
        bail!("no provider is registered: add [[providers]] tables to --config FILE");
    }
    let memo = match (&args.requests, config.worker.memo.as_str()) {
        (None, path) if !path.is_empty() => Memo::open(Path::new(path))?,
        _ => Memo::in_memory(),
    };
    let (runtime, answers) = Runtime::with_policy_and_memo(
        config.provider_runtime.threads,
        super::provider_policy(&config)?,
        memo,
    )
    .context("cannot start the provider runtime")?;
    let mut not_run_here = Vec::new();
    for provider in &providers {
        if !runtime.register_runnable(provider.clone())? {
            not_run_here.push(provider.id.clone());
        }
    }
    match (&args.requests, &args.out) {
        (Some(requests), Some(out)) => {
            run_files(&args, requests, out, &runtime, &answers, &not_run_here)
        }
        _ => run_bus(&config, &args, &runtime, &answers, &not_run_here),
    }
}

fn apply_flags(config: &mut Config, args: &WorkerArgs) {
    if let Some(source) = args.source {
        config.worker.source = source;
    }
    if let Some(brokers) = &args.brokers {
        config.kafka.brokers = brokers.clone();
    }
    if let Some(url) = &args.url {
        config.nats.url = url.clone();
    }
    if let Some(memo) = &args.memo {
        config.worker.memo = memo.clone();
    }
}

/// Bus mode: serves the requests stream until SIGINT/SIGTERM (or idle).
fn run_bus(
    config: &Config,
    args: &WorkerArgs,
    runtime: &Runtime,
    answers: &Receiver<Answer>,
    not_run_here: &[String],
) -> anyhow::Result<()> {
    if !not_run_here.is_empty() {
        bail!(
            "no built-in worker or command for provider(s) {}: every worker of the group must run every provider (set their `worker` to grammar-checker, content-expander or render-html, or give them a `command`)",
            not_run_here.join(", ")
        );
    }
    let control = Control::default();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 1, control.stop_flag())
            .context("cannot install the signal handlers")?;
        signal_hook::flag::register(signal, control.stop_flag())
            .context("cannot install the signal handlers")?;
    }
    let kind = config.worker.source;
    let (group, check) = match kind {
        BusKind::Kafka => (&config.worker.group_id, "check kafka.brokers or --brokers"),
        BusKind::Nats => (&config.worker.durable, "check nats.url or --url"),
    };
    let mut source = open_group_source(kind, config, OutputStream::Requests, group)
        .with_context(|| format!("cannot open the requests stream ({check})"))?;
    let streams = [
        OutputStream::Deltas,
        OutputStream::Results,
        OutputStream::DeadLetters,
    ];
    let mut publisher = open_publisher(kind, config, &streams)
        .with_context(|| format!("cannot open the publisher ({check})"))?;
    tracing::info!(source = ?kind, %group, memo = %config.worker.memo, "studio worker serving requests");
    let options = WorkerOptions {
        max_batch_requests: config.worker.max_batch_requests,
        poll_timeout: Duration::from_millis(config.worker.poll_timeout_ms),
        exit_when_idle: args.exit_when_idle.map(Duration::from_millis),
    };
    let report = serve(
        source.as_mut(),
        publisher.as_mut(),
        runtime,
        answers,
        &options,
        &control,
    )?;
    drop(source);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "studio worker stopped: {} requests read ({} superseded, {} malformed, {} not run here), {} completed, {} failed, {} output deltas, {} memo hits, {} provider calls",
            report.requests,
            report.superseded,
            report.malformed,
            report.not_run_here,
            report.completed,
            report.failed,
            report.outputs,
            report.memo_hits,
            report.calls
        );
    }
    Ok(())
}

/// File mode: answers a request file.
fn run_files(
    args: &WorkerArgs,
    requests: &Path,
    out: &Path,
    runtime: &Runtime,
    answers: &Receiver<Answer>,
    not_run_here: &[String],
) -> anyhow::Result<()> {
    let input = File::open(requests)
        .with_context(|| format!("cannot read requests {}", requests.display()))?;
    let mut latest: BTreeMap<(String, Uuid), TransformRequest> = BTreeMap::new();
    let mut read = 0u64;
    for (n, line) in BufReader::new(input).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", requests.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let request: TransformRequest = serde_json::from_str(&line).with_context(|| {
            format!("{}:{}: not a transform request", requests.display(), n + 1)
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

    let out_path = out;
    let mut out = BufWriter::new(
        File::create(out_path).with_context(|| format!("cannot write {}", out_path.display()))?,
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
        out_path.display()
    );
    if !not_run_here.is_empty() {
        println!(
            "  no built-in worker or command for: {}",
            not_run_here.join(", ")
        );
    }
    Ok(())
}
