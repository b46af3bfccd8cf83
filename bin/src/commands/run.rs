//! `studio run`: the long-running service. Opens the view store (maintained, not
//! rebuilt), the bus source and publisher from the config, serves `/metrics` and
//! `/healthz`, stops gracefully on SIGINT/SIGTERM, and prints a summary.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use studio_config::{BusKind, Config};
use studio_connectors::open::{output_streams, source_name};
use studio_connectors::{Db, OpenMode, open_publisher, open_service_source, open_view_store};
use studio_dataflow::pipeline::{Control, Endpoints, OpenSource};
use studio_dataflow::run::{RunReport, Service, run as run_service};

use crate::api::ApiState;
use crate::cli::RunArgs;
use crate::http;

pub fn run(config_file: Option<&Path>, args: RunArgs) -> anyhow::Result<()> {
    let (mut config, providers) = super::load_config(config_file)?;
    apply_flags(&mut config, &args);
    config.validate()?;
    let metrics = http::install_recorder()?;
    let control = Arc::new(Control::default());
    // The first SIGINT/SIGTERM asks for a graceful stop; a second one exits at once.
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 1, control.stop_flag())
            .context("cannot install the signal handlers")?;
        signal_hook::flag::register(signal, control.stop_flag())
            .context("cannot install the signal handlers")?;
    }
    if !config.run.listen.is_empty() {
        // The query API beside /metrics when a token secret is configured; its
        // readers open the view store when first asked (it may not exist yet).
        let api = (!config.api.jwt_secret.is_empty())
            .then(|| ApiState::open_lazy(&config, &config.run.db, 2))
            .transpose()?;
        http::serve(&config.run.listen, metrics, Arc::clone(&control), api)?;
    }

    let db = Db::parse(&config.run.db)?;
    let sink = open_view_store(&config, &db, OpenMode::Maintain)?;
    let streams = output_streams(&config);
    let kind = config.run.source;
    let publisher = if streams.is_empty() {
        None
    } else {
        let check = match kind {
            BusKind::Kafka => "cannot open the Kafka publisher (check kafka.brokers or --brokers)",
            BusKind::Nats => "cannot open the NATS publisher (check nats.url or --url)",
        };
        Some(open_publisher(kind, &config, &streams).context(check)?)
    };
    let source_config = config.clone();
    // With providers, the workers' results are read beside the deltas (S5.7).
    let results = !providers.is_empty();
    let open_bus_source: OpenSource =
        Box::new(move |positions| open_service_source(kind, &source_config, positions, results));
    let service = Service {
        source: source_name(kind, &config),
        providers,
        publish: streams,
        exit_when_idle: args.exit_when_idle.map(Duration::from_millis),
    };
    tracing::info!(db = %db.display(), source = %service.source, workers = config.run.workers, "studio run starting");
    let endpoints = Endpoints {
        open_source: open_bus_source,
        sink,
        publisher,
    };
    let report = run_service(&config.run, service, endpoints, control)?;
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
    args.cache.apply(config);
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
