//! `studio-bus-bench`: the bus's own produce and consume throughput for a generated
//! delta log, beside the same work done through Studio's connectors, so that Studio's
//! end-to-end rate can be put next to what the broker itself sustains (BENCHMARKS.md).
//!
//! For `--to kafka` (brokers from `--brokers` or `KAFKA_BROKERS`) and `--to nats` (`--url`
//! or `NATS_URL`), each on fresh topics or streams:
//!
//! 1. **raw produce**: the plain client (rdkafka `BaseProducer`, linger 5 ms, acks=all;
//!    async-nats JetStream publish with up to 4,096 acknowledgements in flight), every
//!    record keyed by `blob_id`, timed until every record is acknowledged;
//! 2. **raw consume**: the plain client reads them all back (rdkafka `BaseConsumer`
//!    assigned every partition from the beginning; a JetStream pull consumer, batches of
//!    1,000, no acks);
//! 3. **studio produce**: `KafkaPublisher` / `NatsPublisher` through `publish_paced`
//!    (what `studio loadgen` does, at full speed);
//! 4. **studio consume**: `KafkaSource` / `NatsSource`, `poll(10_000, 1 s)` until all
//!    records came.
//!
//! `cargo run --release -p studio-benches --bin studio-bus-bench -- --to kafka --deltas 1000000`

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use studio_config::Config;
use studio_connectors::kafka::{KafkaPublisher, KafkaSource, ensure_topics};
use studio_connectors::load::{KeyedRecord, generate_keyed, publish_paced};
use studio_connectors::nats::{NatsPublisher, NatsSource};
use studio_connectors::{OutputStream, Source};
use studio_model::generate::{Faults, GenSpec};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The bus's own throughput against Studio's connectors on the same records.
#[derive(Parser)]
struct Args {
    /// Which bus.
    #[arg(long, value_enum)]
    to: Bus,
    /// Valid deltas in the generated log.
    #[arg(long, default_value_t = 100_000)]
    deltas: u64,
    /// Blobs in the generated log.
    #[arg(long, default_value_t = 10_000)]
    blobs: u64,
    /// Seed of the generated log.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Kafka bootstrap brokers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:19092")]
    brokers: String,
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:14222")]
    url: String,
    /// Partitions of the Kafka topics.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
}

#[derive(Clone, Copy, ValueEnum)]
enum Bus {
    Kafka,
    Nats,
}

fn line(what: &str, records: usize, bytes: u64, seconds: f64) {
    println!(
        "{what:<16} {records:>9} records {:>8.1} MiB {seconds:>7.2} s {:>10.0} records/s {:>7.1} MiB/s",
        bytes as f64 / (1 << 20) as f64,
        records as f64 / seconds,
        bytes as f64 / (1 << 20) as f64 / seconds
    );
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let (records, _) = generate_keyed(&GenSpec {
        blobs: args.blobs,
        deltas: args.deltas,
        seed: args.seed,
        faults: Faults::default(),
    })?;
    let bytes: u64 = records.iter().map(|r| r.bytes.len() as u64).sum();
    println!(
        "{} records, {:.1} MiB, generated in {:.2} s",
        records.len(),
        bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    let run = format!("bench{}", std::process::id());
    match args.to {
        Bus::Kafka => kafka(&args, &run, &records, bytes),
        Bus::Nats => nats(&args, &run, &records, bytes),
    }
}

fn kafka(args: &Args, run: &str, records: &[KeyedRecord], bytes: u64) -> anyhow::Result<()> {
    let mut config = Config::default().kafka;
    config.brokers = args.brokers.clone();
    config.partitions = args.partitions;
    config.group_id = format!("{run}-group");
    let raw_topic = format!("{run}-raw");
    ensure_topics(&config, &[&raw_topic])?;

    // 1. raw produce
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("linger.ms", "5")
        .set("acks", "all")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let t = Instant::now();
    for r in records {
        let mut record = BaseRecord::to(&raw_topic).key(&r.key).payload(&r.bytes);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(300))?;
    line(
        "raw produce",
        records.len(),
        bytes,
        t.elapsed().as_secs_f64(),
    );

    // 2. raw consume
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", format!("{run}-raw"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let mut list = TopicPartitionList::new();
    for p in 0..args.partitions as i32 {
        list.add_partition_offset(&raw_topic, p, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    let t = Instant::now();
    let (mut n, mut b) = (0usize, 0u64);
    let deadline = Instant::now() + Duration::from_secs(600);
    while n < records.len() && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_secs(1)) {
            n += 1;
            b += m.payload().map_or(0, |p| p.len() as u64);
        }
    }
    line("raw consume", n, b, t.elapsed().as_secs_f64());
    drop(consumer);

    // 3. studio produce
    config.topics.deltas = format!("{run}-studio");
    let mut publisher = KafkaPublisher::open(&config, &[OutputStream::Deltas])?;
    let stats = publish_paced(
        &mut publisher,
        OutputStream::Deltas,
        records,
        0.0,
        Duration::from_secs(300),
        &mut |_| {},
        None,
    )?;
    line("studio produce", records.len(), bytes, stats.seconds);

    // 4. studio consume
    let mut source = KafkaSource::open(&config, &[])?;
    let t = Instant::now();
    let (n, b) = drain(&mut source, records.len())?;
    line("studio consume", n, b, t.elapsed().as_secs_f64());
    Ok(())
}

fn drain(source: &mut dyn Source, n: usize) -> anyhow::Result<(usize, u64)> {
    let (mut got, mut bytes) = (0usize, 0u64);
    let deadline = Instant::now() + Duration::from_secs(600);
    while got < n && Instant::now() < deadline {
        for r in source.poll(10_000, Duration::from_secs(1))? {
            got += 1;
            bytes += r.bytes.len() as u64;
        }
    }
    Ok((got, bytes))
}

fn nats(args: &Args, run: &str, records: &[KeyedRecord], bytes: u64) -> anyhow::Result<()> {
    use async_nats::jetstream::{self, consumer, stream};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let raw_subject = format!("{run}.raw");
    runtime.block_on(async {
        let client = async_nats::connect(args.url.as_str()).await?;
        let js = jetstream::new(client);
        let raw = js
            .create_stream(stream::Config {
                name: format!("{run}_RAW"),
                subjects: vec![raw_subject.clone()],
                ..Default::default()
            })
            .await?;

        // 1. raw produce
        let t = Instant::now();
        let mut pending = VecDeque::new();
        for r in records {
            if pending.len() >= 4096 {
                let ack: jetstream::context::PublishAckFuture =
                    pending.pop_front().expect("non-empty");
                ack.await?;
            }
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Studio-Key", std::str::from_utf8(&r.key)?);
            pending.push_back(
                js.publish_with_headers(raw_subject.clone(), headers, r.bytes.clone().into())
                    .await?,
            );
        }
        for ack in pending {
            ack.await?;
        }
        line(
            "raw produce",
            records.len(),
            bytes,
            t.elapsed().as_secs_f64(),
        );

        // 2. raw consume
        let consumer = raw
            .create_consumer(consumer::pull::Config {
                durable_name: Some("raw".into()),
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await?;
        let t = Instant::now();
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(1000)
            .messages()
            .await?;
        let (mut n, mut b) = (0usize, 0u64);
        while n < records.len() {
            match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
                Ok(Some(Ok(m))) => {
                    n += 1;
                    b += m.payload.len() as u64;
                }
                Ok(Some(Err(e))) => eprintln!("raw consume: {e}"),
                Ok(None) | Err(_) => break,
            }
        }
        line("raw consume", n, b, t.elapsed().as_secs_f64());
        Ok::<_, anyhow::Error>(())
    })?;

    // 3. studio produce
    let mut config = Config::default().nats;
    config.url = args.url.clone();
    config.stream = format!("{run}_STUDIO");
    config.subjects.deltas = format!("{run}.studio");
    config.durable = "studio".into();
    let mut publisher = NatsPublisher::open(&config, &[OutputStream::Deltas])?;
    let stats = publish_paced(
        &mut publisher,
        OutputStream::Deltas,
        records,
        0.0,
        Duration::from_secs(300),
        &mut |_| {},
        None,
    )?;
    line("studio produce", records.len(), bytes, stats.seconds);

    // 4. studio consume
    let mut source = NatsSource::open(&config, &[])?;
    let t = Instant::now();
    let (n, b) = drain(&mut source, records.len())?;
    line("studio consume", n, b, t.elapsed().as_secs_f64());
    Ok(())
}
