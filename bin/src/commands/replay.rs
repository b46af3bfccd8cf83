//! `studio replay`: a bounded replay of delta logs into the views, with a progress bar
//! and a summary.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::bail;
use studio_config::Config;
use studio_connectors::OpenMode;
use studio_connectors::file::FileSource;
use studio_dataflow::providers::{ProviderSetup, read_provider_log};
use studio_dataflow::replay::{Progress, ReplayOptions, ReplayReport, replay};

use crate::cli::ReplayArgs;
use studio_connectors::open::large_store_description;
use studio_connectors::{Db, open_reader, open_view_store};

pub fn run(config_file: Option<&Path>, args: ReplayArgs) -> anyhow::Result<()> {
    let (mut config, config_providers) = super::load_config(config_file)?;
    if let Some(workers) = args.workers {
        config.replay.workers = workers;
    }
    if let Some(batch) = args.batch_records {
        config.replay.batch_records = batch;
    }
    config.replay.store_records |= args.store_records;
    args.cache.apply(&mut config);
    config.validate()?;

    for log in &args.logs {
        if !log.is_file() {
            bail!("cannot read delta log {}: no such file", log.display());
        }
    }
    let db = Db::parse(&args.db)?;
    let sink = open_view_store(&config, &db, OpenMode::Rebuild)?;

    let options = replay_options(&config, config_providers, &args)?;
    let progress = Arc::new(Progress::default());
    let total = FileSource::total_bytes(&args.logs);
    let bar = (!args.no_progress && std::io::stderr().is_terminal())
        .then(|| spawn_progress_bar(&progress, total));
    tracing::info!(logs = ?args.logs, db = %db.display(), workers = config.replay.workers, "replay starting");
    let report = replay(
        &args.logs,
        &config.replay,
        sink,
        Arc::clone(&progress),
        &options,
    );
    if let Some((bar, handle)) = bar {
        bar.finish_and_clear();
        let _ = handle.join();
    }
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_summary(&report, &db.display());
        print_large_documents(&config, &db)?;
    }
    if !report.counts_add_up() {
        bail!(
            "counts do not add up: {} accepted + {} duplicates + {} dead letters != {} records read (a bug: please report it)",
            report.accepted,
            report.duplicates,
            report.dead_letters,
            report.records_read
        );
    }
    Ok(())
}

/// The providers and events of a replay, from the config file and the flags.
fn replay_options(
    config: &Config,
    mut providers: Vec<studio_model::Provider>,
    args: &ReplayArgs,
) -> anyhow::Result<ReplayOptions> {
    if !args.providers {
        return Ok(ReplayOptions {
            providers: None,
            events: args.events,
        });
    }
    let policy = super::provider_policy(config)?;
    if let Some(log) = &args.provider_log {
        for provider in read_provider_log(log).map_err(anyhow::Error::msg)? {
            policy
                .check(&provider)
                .map_err(|e| anyhow::anyhow!("{}: {e}", log.display()))?;
            providers.retain(|p| p.id != provider.id);
            providers.push(provider);
        }
    }
    if providers.is_empty() {
        bail!(
            "--providers: no provider is registered; add [[providers]] tables to --config FILE or give --provider-log FILE.jsonl (README \"Providers\")"
        );
    }
    Ok(ReplayOptions {
        providers: Some(ProviderSetup {
            providers,
            threads: config.provider_runtime.threads,
            requests_out: args.requests_out.clone(),
            each_batch: args.providers_each_batch,
            transformers: Vec::new(),
            policy,
        }),
        events: true,
    })
}

fn spawn_progress_bar(
    progress: &Arc<Progress>,
    total: u64,
) -> (indicatif::ProgressBar, std::thread::JoinHandle<()>) {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} replay [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta}) {msg}",
        )
        .expect("valid template"),
    );
    let (bar2, progress) = (bar.clone(), Arc::clone(progress));
    let handle = std::thread::spawn(move || {
        while !bar2.is_finished() {
            bar2.set_position(progress.bytes_read.load(Ordering::Relaxed));
            bar2.set_message(format!(
                "{} accepted",
                progress.accepted.load(Ordering::Relaxed)
            ));
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    (bar, handle)
}

/// Where the large documents went, and how many there are.
fn print_large_documents(config: &Config, db: &Db<'_>) -> anyhow::Result<()> {
    let place = large_store_description(config, db)?;
    let rows = open_reader(config, db)?.rows(
        "SELECT count(*) AS n FROM blobs WHERE doc_ref IS NOT NULL",
        &[],
    )?;
    let count = rows
        .first()
        .and_then(|row| row.first())
        .and_then(|(_, n)| n.as_i64())
        .unwrap_or(0);
    println!(
        "  large docs    {count:>10} (of {} bytes or more) in {place}",
        config.content.large_min_bytes
    );
    Ok(())
}

fn print_summary(r: &ReplayReport, db: &str) {
    println!(
        "replayed {} records into {} with {} worker{} in {:.2} s ({:.0} records/s)",
        r.records_read,
        db,
        r.workers,
        if r.workers == 1 { "" } else { "s" },
        r.wall_seconds,
        r.records_per_second
    );
    println!("  accepted      {:>10}", r.accepted);
    println!("  duplicates    {:>10}", r.duplicates);
    println!("  dead letters  {:>10}", r.dead_letters);
    for (reason, count) in &r.dead_letters_by_reason {
        println!("    {reason:<34} {count:>8}");
    }
    println!(
        "  DAG edges     {:>10} accepted, {} rejected (S5.1 cycle)",
        r.edges_accepted, r.edges_rejected
    );
    println!(
        "  batches       {:>10} in {} transactions ({:.2} s writing); batch latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        r.batches,
        r.transactions,
        r.sink_seconds,
        r.batch_latency_ms.p50,
        r.batch_latency_ms.p99,
        r.batch_latency_ms.max
    );
    if let Some(p) = &r.providers {
        println!(
            "  providers     {:>10} registered, {} run here",
            p.providers, p.providers_built_in
        );
        println!(
            "  requests      {:>10} emitted, {} superseded, {} completed, {} failed, {} waiting for external workers",
            p.requests, p.superseded, p.completed, p.failed, p.waiting_for_external_workers
        );
        println!(
            "  provider calls{:>10} ({} retries, {} timeouts, {} memo hits, {} rebases); {} outputs; cascade depth {}",
            p.calls, p.retries, p.timeouts, p.memo_hits, p.rebases, p.outputs, p.cascade_depth
        );
    }
}
