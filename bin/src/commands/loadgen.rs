//! `studio loadgen`: publishes a delta log to Kafka or NATS at a target rate, keyed by
//! `blob_id`, and prints the rate achieved. The log is generated (`studio gen`'s
//! generator) or, with `--log`, the user's own files, every line byte for byte.
//!
//! The log is generated or read into memory first (≈ 450 bytes a generated record), so
//! that neither costs anything during the timed publish. The clock starts at the first publish and
//! stops when the bus has acknowledged every record (`RecordPublisher::flush`).
//!
//! With `--wait-db`, a watcher thread polls the service's checkpoint (its committed
//! record count, `checkpoints.next_seq`) every millisecond while the records go out,
//! and each record's latency runs from its publish to the first commit that covers it
//! ([`end_to_end_micros`]): publish → view committed, as the service's users see it.
//! It counts records, not ids, so it works the same with `--log`: every line the
//! service reads advances its count, malformed ones (dead letters) included.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use studio_config::BusKind;
use studio_config::Config;
use studio_connectors::load::{end_to_end_micros, generate_keyed, publish_paced, read_keyed};
use studio_connectors::{Db, OutputStream, open_publisher, open_reader};
use studio_model::generate::{Faults, GenSpec};

use crate::cli::LoadgenArgs;

pub fn run(config_file: Option<&Path>, args: LoadgenArgs) -> anyhow::Result<()> {
    ensure!(
        args.rate >= 0.0 && args.rate.is_finite(),
        "--rate must be 0 or more"
    );
    ensure!(
        !args.log.is_empty() || args.blobs >= 1,
        "--blobs must be at least 1"
    );
    let (mut config, _providers) = super::load_config(config_file)?;
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

    let loaded = Instant::now();
    let records = if args.log.is_empty() {
        let spec = GenSpec {
            blobs: args.blobs,
            deltas: args.deltas,
            seed: args.seed,
            faults: Faults::default(),
        };
        generate_keyed(&spec)?.0
    } else {
        read_keyed(&args.log)?
    };
    tracing::info!(
        records = records.len(),
        unkeyed = records.iter().filter(|r| r.key.is_empty()).count(),
        seconds = loaded.elapsed().as_secs_f64(),
        "log {}",
        if args.log.is_empty() {
            "generated"
        } else {
            "read"
        }
    );

    let (bus, at, target) = match args.to {
        BusKind::Kafka => (
            BusKind::Kafka,
            format!("Kafka at {}", config.kafka.brokers),
            format!(
                "kafka {} topic {}",
                config.kafka.brokers, config.kafka.topics.deltas
            ),
        ),
        BusKind::Nats => (
            BusKind::Nats,
            format!("NATS at {}", config.nats.url),
            format!(
                "nats {} subject {} (stream {})",
                config.nats.url, config.nats.subjects.deltas, config.nats.stream
            ),
        ),
    };
    let mut publisher = open_publisher(bus, &config, &[OutputStream::Deltas]).context(at)?;

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
    let watch = match &args.wait_db {
        Some(db) => Some(CommitWatch::start(
            &config,
            db,
            records.len() as u64,
            Duration::from_secs(args.wait_secs),
        )?),
        None => None,
    };
    let mut sent_at = Vec::with_capacity(records.len());
    let stats = publish_paced(
        publisher.as_mut(),
        OutputStream::Deltas,
        &records,
        args.rate,
        Duration::from_secs(300),
        &mut progress,
        watch.is_some().then_some(&mut sent_at),
    )
    .with_context(|| format!("publishing to {target}"))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let end_to_end = match watch {
        Some(watch) => Some(watch.finish(&sent_at)?),
        None => None,
    };

    if args.json {
        let mut value = serde_json::to_value(&stats)?;
        value["target"] = serde_json::json!(target);
        value["target_rate"] = serde_json::json!(args.rate);
        if let Some(e2e) = &end_to_end {
            value["end_to_end"] = serde_json::to_value(e2e)?;
        }
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
        if let Some(e) = &end_to_end {
            println!(
                "end to end (publish -> view committed): {} records in {:.2} s, {:.0} records/s sustained; \
                 latency p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
                e.committed,
                e.seconds,
                e.records_per_second,
                e.p50_ms,
                e.p99_ms,
                e.p999_ms,
                e.max_ms
            );
        }
    }
    Ok(())
}

/// Publish-to-commit latency and the throughput sustained to the last commit.
#[derive(Debug, serde::Serialize)]
struct EndToEnd {
    committed: u64,
    seconds: f64,
    records_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

/// Polls the service's committed record count on its own thread.
struct CommitWatch {
    base: u64,
    handle: std::thread::JoinHandle<anyhow::Result<Vec<(Instant, u64)>>>,
}

/// The service's committed record count: its checkpoint's next log position.
const CHECKPOINT_SQL: &str =
    "SELECT CAST(coalesce(max(next_seq), 0) AS TEXT) AS n FROM checkpoints";

/// Where a store that has no checkpoint yet (a replayed database the service takes
/// over) makes the service's numbering start: after the last record its recovery
/// replays (`ViewSink::recover`). Read once: the tables are not indexed by position.
const STORED_SQL: &str = "SELECT CAST(coalesce(max(p), 0) AS TEXT) AS n FROM ( \
     SELECT max(pos_offset) + 1 AS p FROM deltas \
     UNION ALL SELECT max(pos_offset) + 1 FROM deltas_waiting \
     UNION ALL SELECT max(pos_offset) + 1 FROM grant_log \
     UNION ALL SELECT max(pos_offset) + 1 FROM result_log \
     UNION ALL SELECT max(pos_offset) + 1 FROM dead_letters WHERE delta_id IS NOT NULL) AS stored";

/// The single count `sql` answers.
fn count(reader: &mut dyn studio_connectors::ViewReader, sql: &str) -> anyhow::Result<u64> {
    let rows = reader.rows(sql, &[])?;
    let value = rows.first().and_then(|r| r.first()).map(|(_, v)| v.clone());
    value
        .as_ref()
        .and_then(|v| v.as_str().and_then(|s| s.parse().ok()).or(v.as_u64()))
        .context("the view store answered no count")
}

fn committed(reader: &mut dyn studio_connectors::ViewReader) -> anyhow::Result<u64> {
    count(reader, CHECKPOINT_SQL)
}

/// The count before the first record is published: the service's checkpoint, or the
/// end of a store it has not committed to yet (else every new record would look
/// committed at the service's first commit).
fn committed_before(reader: &mut dyn studio_connectors::ViewReader) -> u64 {
    let checkpoint = committed(reader).unwrap_or(0);
    checkpoint.max(count(reader, STORED_SQL).unwrap_or(0))
}

impl CommitWatch {
    fn start(config: &Config, db: &str, records: u64, wait: Duration) -> anyhow::Result<Self> {
        Db::parse(db)?; // a bad --wait-db fails before anything is published
        let (config, db) = (config.clone(), db.to_owned());
        let (base_tx, base_rx) = std::sync::mpsc::channel();
        // The reader is opened on the watcher's thread (readers are not Send).
        let handle = std::thread::Builder::new()
            .name("loadgen-watch".into())
            .spawn(move || {
                let deadline = Instant::now() + wait;
                let db = Db::parse(&db)?;
                let mut reader = loop {
                    match open_reader(&config, &db) {
                        Ok(reader) => break reader,
                        Err(e) if Instant::now() > deadline => return Err(e.into()),
                        Err(_) => std::thread::sleep(Duration::from_millis(100)), // not created yet
                    }
                };
                let base = committed_before(reader.as_mut());
                let _ = base_tx.send(base);
                let mut commits = Vec::new();
                let mut last = base;
                while last < base + records {
                    anyhow::ensure!(
                        Instant::now() < deadline,
                        "the service committed {} of {records} records in time (is `studio run` reading this topic?)",
                        last - base
                    );
                    let now = committed(reader.as_mut()).unwrap_or(last);
                    if now > last {
                        commits.push((Instant::now(), now));
                        last = now;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(commits)
            })?;
        let base = match base_rx.recv() {
            Ok(base) => base,
            Err(_) => {
                return Err(handle
                    .join()
                    .map_err(|_| anyhow::anyhow!("the commit watcher panicked"))?
                    .err()
                    .unwrap_or_else(|| anyhow::anyhow!("the commit watcher stopped")));
            }
        };
        Ok(CommitWatch { base, handle })
    }

    fn finish(self, sent_at: &[Instant]) -> anyhow::Result<EndToEnd> {
        let commits = self
            .handle
            .join()
            .map_err(|_| anyhow::anyhow!("the commit watcher panicked"))??;
        let micros = end_to_end_micros(sent_at, &commits, self.base);
        let mut histogram = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
        for us in &micros {
            histogram.saturating_record((*us).max(1));
        }
        let seconds = match (sent_at.first(), commits.last()) {
            (Some(first), Some((last, _))) => last.saturating_duration_since(*first).as_secs_f64(),
            _ => 0.0,
        };
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        Ok(EndToEnd {
            committed: micros.len() as u64,
            seconds,
            records_per_second: micros.len() as f64 / seconds.max(1e-9),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: histogram.max() as f64 / 1000.0,
        })
    }
}
