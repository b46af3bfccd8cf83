//! `studio loadgen`: publishes a generated delta log (`studio gen`'s generator) to Kafka
//! or NATS at a target rate, keyed by `blob_id`, and prints the rate achieved.
//!
//! The log is generated into memory first (≈ 450 bytes a record), so that generating
//! costs nothing during the timed publish. The clock starts at the first publish and
//! stops when the bus has acknowledged every record (`RecordPublisher::flush`).

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use studio_config::Config;
use studio_connectors::OutputStream;
use studio_connectors::RecordPublisher;
use studio_connectors::kafka::KafkaPublisher;
use studio_connectors::load::{generate_keyed, publish_paced};
use studio_connectors::nats::NatsPublisher;
use studio_model::generate::{Faults, GenSpec};

use crate::cli::{Bus, LoadgenArgs};

pub fn run(config_file: Option<&Path>, args: LoadgenArgs) -> anyhow::Result<()> {
    ensure!(
        args.rate >= 0.0 && args.rate.is_finite(),
        "--rate must be 0 or more"
    );
    ensure!(args.blobs >= 1, "--blobs must be at least 1");
    let mut config = Config::load(config_file)?;
    if let Some(brokers) = args.brokers {
        config.kafka.brokers = brokers;
    }
    if let Some(url) = args.url {
        config.nats.url = url;
    }
    if let Some(topic) = args.topic {
        config.kafka.topics.deltas = topic.clone();
        config.nats.subjects.deltas = topic;
    }
    if let Some(stream) = args.stream {
        config.nats.stream = stream;
    }

    let generated = Instant::now();
    let spec = GenSpec {
        blobs: args.blobs,
        deltas: args.deltas,
        seed: args.seed,
        faults: Faults::default(),
    };
    let (records, _) = generate_keyed(&spec)?;
    tracing::info!(
        records = records.len(),
        seconds = generated.elapsed().as_secs_f64(),
        "log generated"
    );

    let (mut publisher, target): (Box<dyn RecordPublisher>, String) = match args.to {
        Bus::Kafka => (
            Box::new(
                KafkaPublisher::open(&config.kafka, &[OutputStream::Deltas])
                    .with_context(|| format!("Kafka at {}", config.kafka.brokers))?,
            ),
            format!(
                "kafka {} topic {}",
                config.kafka.brokers, config.kafka.topics.deltas
            ),
        ),
        Bus::Nats => (
            Box::new(
                NatsPublisher::open(&config.nats, &[OutputStream::Deltas])
                    .with_context(|| format!("NATS at {}", config.nats.url))?,
            ),
            format!(
                "nats {} subject {} (stream {})",
                config.nats.url, config.nats.subjects.deltas, config.nats.stream
            ),
        ),
    };

    let bar = (!args.no_progress && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(records.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} loadgen [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
            )
            .expect("valid template"),
        );
        bar
    });
    let mut progress = |sent: u64| {
        if let Some(bar) = &bar {
            bar.set_position(sent);
        }
    };
    let stats = publish_paced(
        publisher.as_mut(),
        OutputStream::Deltas,
        &records,
        args.rate,
        Duration::from_secs(300),
        &mut progress,
    )
    .with_context(|| format!("publishing to {target}"))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    if args.json {
        let mut value = serde_json::to_value(&stats)?;
        value["target"] = serde_json::json!(target);
        value["target_rate"] = serde_json::json!(args.rate);
        println!("{value}");
    } else {
        let target_rate = if args.rate > 0.0 {
            format!("target {:.0}/s", args.rate)
        } else {
            "as fast as possible".into()
        };
        println!(
            "published {} records ({:.1} MiB) to {target} in {:.2} s: {:.0} records/s ({target_rate}); \
             all sent after {:.2} s, all acknowledged after {:.2} s",
            stats.records,
            stats.bytes as f64 / (1 << 20) as f64,
            stats.seconds,
            stats.records_per_second,
            stats.send_seconds,
            stats.seconds,
        );
    }
    Ok(())
}
