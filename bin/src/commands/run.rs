//! `studio run`: the long-running service. Opens the view store (maintained, not
//! rebuilt), the bus source and publisher from the config, serves `/metrics` and
//! `/healthz`, stops gracefully on SIGINT/SIGTERM, and prints a summary.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use studio_config::{BusKind, Config};
use studio_connectors::kafka::{KafkaPublisher, KafkaSource};
use studio_connectors::nats::{NatsPublisher, NatsSource};
use studio_connectors::{LiveSource, OpenMode, OutputStream, RecordPublisher};
use studio_dataflow::run::{OpenSource, RunControl, RunOptions, RunReport, run as run_service};

use super::store::{Db, open_sink};
use crate::cli::RunArgs;
use crate::http;

pub fn run(config_file: Option<&Path>, args: RunArgs) -> anyhow::Result<()> {
    let (mut config, providers) = super::load_config(config_file)?;
    apply_flags(&mut config, &args);
    config.validate()?;
    let metrics = http::install_recorder()?;
    let control = Arc::new(RunControl::default());
    // The first SIGINT/SIGTERM asks for a graceful stop; a second one exits at once.
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 1, control.stop_flag())
            .context("cannot install the signal handlers")?;
        signal_hook::flag::register(signal, control.stop_flag())
            .context("cannot install the signal handlers")?;
    }
    if !config.run.listen.is_empty() {
        http::serve(&config.run.listen, metrics, Arc::clone(&control))?;
    }

    let db = Db::parse(&config.run.db)?;
    let sink = open_sink(&config, &db, OpenMode::Maintain)?;
    let streams: Vec<OutputStream> = config.run.publish.clone();
    let (source_name, open_source, publisher): (
        String,
        OpenSource,
        Option<Box<dyn RecordPublisher>>,
    ) = match config.run.source {
        BusKind::Kafka => {
            let kafka = config.kafka.clone();
            let publisher: Option<Box<dyn RecordPublisher>> = if streams.is_empty() {
                None
            } else {
                Some(Box::new(KafkaPublisher::open(&kafka, &streams).context(
                    "cannot open the Kafka publisher (check kafka.brokers or --brokers)",
                )?))
            };
            (
                format!("kafka:{}", kafka.topics.deltas),
                Box::new(move |positions| {
                    Ok(Box::new(KafkaSource::open(&kafka, positions)?) as Box<dyn LiveSource>)
                }),
                publisher,
            )
        }
        BusKind::Nats => {
            let nats = config.nats.clone();
            let publisher: Option<Box<dyn RecordPublisher>> = if streams.is_empty() {
                None
            } else {
                Some(Box::new(NatsPublisher::open(&nats, &streams).context(
                    "cannot open the NATS publisher (check nats.url or --url)",
                )?))
            };
            (
                format!("nats:{}", nats.stream),
                Box::new(move |positions| {
                    Ok(Box::new(NatsSource::open(&nats, positions)?) as Box<dyn LiveSource>)
                }),
                publisher,
            )
        }
    };
    let r = &config.run;
    let options = RunOptions {
        source: source_name,
        workers: r.workers,
        max_batch_records: r.max_batch_records,
        poll_timeout: Duration::from_millis(r.poll_timeout_ms),
        max_batches_in_flight: r.max_batches_in_flight,
        writer_queue_batches: r.writer_queue_batches,
        gap_timeout: Duration::from_millis(r.gap_timeout_ms),
        providers,
        events: r.events,
        publish: streams,
        exit_when_idle: args.exit_when_idle.map(Duration::from_millis),
    };
    tracing::info!(db = %db.display(), source = %options.source, workers = r.workers, "studio run starting");
    let report = run_service(options, open_source, sink, publisher, control)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_summary(&report);
    }
    Ok(())
}

fn apply_flags(config: &mut Config, args: &RunArgs) {
    if let Some(db) = &args.db {
        config.run.db = db.clone();
    }
    if let Some(source) = args.source {
        config.run.source = source;
    }
    if let Some(workers) = args.workers {
        config.run.workers = workers;
    }
    if let Some(listen) = &args.listen {
        config.run.listen = listen.clone();
    }
    if let Some(brokers) = &args.brokers {
        config.kafka.brokers = brokers.clone();
    }
    if let Some(url) = &args.url {
        config.nats.url = url.clone();
    }
}

fn print_summary(report: &RunReport) {
    println!("studio run stopped");
    println!(
        "  recovered      {:>10} deltas from the delta store",
        report.recovered
    );
    println!("  records read   {:>10}", report.records_read);
    println!("  accepted       {:>10}", report.accepted);
    println!("  duplicates     {:>10}", report.duplicates);
    println!("  dead letters   {:>10}", report.dead_letters);
    for (reason, n) in &report.dead_letters_by_reason {
        println!("    {reason:<38} {n:>6}");
    }
    println!("  published      {:>10} records", report.published);
    println!(
        "  batches        {:>10} in {} transactions; batch latency p50 {:.1} ms, p99 {:.1} ms",
        report.batches,
        report.transactions,
        report.batch_latency_ms.p50,
        report.batch_latency_ms.p99
    );
    let positions: Vec<String> = report.positions.iter().map(ToString::to_string).collect();
    println!("  positions      {}", positions.join(" "));
}
