//! Kafka topics as a [`Source`] and a [`RecordPublisher`] (librdkafka through
//! `rdkafka`), for Apache Kafka and Kafka-compatible brokers (tansu in CI).
//!
//! **Source.** [`KafkaSource`] reads every partition of the deltas topic
//! (`kafka.topics.deltas`). Studio's view database is authoritative: the source does not
//! join a consumer group, it *assigns* itself every partition and starts each one right
//! after the position `open` was given for it (or at `kafka.start` when it has none), so
//! no rebalance and no group join ever delays or reorders it. A record's position is
//! `SourcePos { part: partition, offset: Kafka offset }`. [`Source::commit`] commits
//! offset + 1 for the consumer group `kafka.group_id` (what Kafka tools show as the
//! group's position and lag); nothing reads those offsets back. Any bytes are a record; a
//! record without a value is an empty one. Transient errors (a broker restarting, a
//! connection reset) are logged and retried by librdkafka; `poll` returns what arrived.
//!
//! **Group members** ([`Membership::Group`], the provider workers): the source
//! subscribes as a member of a consumer group, which shares the partitions among its
//! members and gives a dead member's partitions to the others after
//! `kafka.session_timeout_ms`; each resumes from the group's committed offsets, and
//! [`Source::commit`] commits them (a commit refused by a rebalance is only logged: the
//! partition's new owner does the work again).
//!
//! **Publisher.** [`KafkaPublisher`] produces keyed records (`blob_id`: the default
//! partitioner sends one key to one partition, so a blob's records keep their order) to
//! the topic of each [`OutputStream`]; [`RecordPublisher::flush`] waits until the broker
//! acknowledged every record and reports any that failed.
//!
//! Shutdown is bounded: dropping a source closes the librdkafka consumer on a helper
//! thread and waits for it at most `kafka.request_timeout_ms` (librdkafka's close can
//! hang on some brokers); after that the thread is left to finish on its own.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, DefaultConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use studio_config::{KafkaConfig, StartAt};
use studio_model::SourcePos;

use crate::{
    Membership, OutputStream, OwnedRecord, RecordPublisher, SinkError, Source, SourceError,
};

/// The topic that carries `stream`.
pub fn topic_of(config: &KafkaConfig, stream: OutputStream) -> &str {
    config.topics.of(stream)
}

fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("socket.timeout.ms", config.request_timeout_ms.to_string())
        .set("log_level", "4");
    c
}

fn apply_extra(c: &mut ClientConfig, config: &KafkaConfig) {
    for (key, value) in &config.client {
        c.set(key, value);
    }
}

fn timeout(config: &KafkaConfig) -> Duration {
    Duration::from_millis(config.request_timeout_ms)
}

/// Creates the topics that do not exist yet, with `kafka.partitions` partitions
/// (replication 1). Topics that exist are left as they are.
pub fn ensure_topics(config: &KafkaConfig, topics: &[&str]) -> Result<(), KafkaError> {
    let mut c = client_config(config);
    apply_extra(&mut c, config);
    let admin: AdminClient<DefaultClientContext> = c.create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, config.partitions as i32, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(timeout(config)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| KafkaError::AdminOpCreation(e.to_string()))?;
    let results = runtime.block_on(admin.create_topics(&new, &options))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                    tracing::error!(%topic, ?code, "cannot create topic");
                });
            }
        }
    }
    Ok(())
}

/// Reads every partition of `kafka.topics.deltas`; see the module docs.
pub struct KafkaSource {
    consumer: Option<BaseConsumer<DefaultConsumerContext>>,
    topic: String,
    /// Per partition: the offset after the last record handed out (or where it starts).
    next: BTreeMap<i32, Option<i64>>,
    /// Per partition: the last offset committed.
    committed: BTreeMap<i32, i64>,
    start: StartAt,
    timeout: Duration,
    last_warning: Option<Instant>,
    /// A member of a consumer group: partitions come and go with rebalances.
    grouped: bool,
}

impl KafkaSource {
    /// Opens the deltas topic (created first when `kafka.create_topics`) and assigns every
    /// partition, each starting right after its position in `resume_from` (the positions
    /// of the records whose views are committed, at most one per partition), or at
    /// `kafka.start` when it has none. Fails when the broker cannot be reached within
    /// `kafka.request_timeout_ms`, or when `resume_from` names a partition the topic does
    /// not have.
    pub fn open(config: &KafkaConfig, resume_from: &[SourcePos]) -> Result<Self, SourceError> {
        Self::open_topic(
            config,
            &config.topics.deltas,
            Membership::Assigned(resume_from),
        )
    }

    /// Opens `topic` (created first when `kafka.create_topics`) as `membership` says.
    pub fn open_topic(
        config: &KafkaConfig,
        topic: &str,
        membership: Membership<'_>,
    ) -> Result<Self, SourceError> {
        let topic = topic.to_owned();
        if config.create_topics {
            ensure_topics(config, &[&topic])
                .map_err(|e| SourceError::bus(format!("cannot create topic {topic}"), e))?;
        }
        let group = match membership {
            Membership::Assigned(_) => config.group_id.as_str(),
            Membership::Group(group) => group,
        };
        let consumer: BaseConsumer<DefaultConsumerContext> = consumer_config(config, group)
            .create()
            .map_err(|e| SourceError::bus("cannot create the Kafka consumer", e))?;
        let partitions = topic_partitions(&consumer, &topic, config)?;
        let resume_from = match membership {
            Membership::Assigned(resume_from) => resume_from,
            Membership::Group(group) => {
                consumer.subscribe(&[&topic]).map_err(|e| {
                    SourceError::bus(format!("cannot join group {group} on topic {topic}"), e)
                })?;
                tracing::info!(%topic, %group, ?partitions, "kafka group consumer open");
                return Ok(KafkaSource {
                    consumer: Some(consumer),
                    topic,
                    next: BTreeMap::new(),
                    committed: BTreeMap::new(),
                    start: config.start,
                    timeout: timeout(config),
                    last_warning: None,
                    grouped: true,
                });
            }
        };
        let stored = stored_offsets(&topic, &partitions, resume_from)?;
        let mut assignment = TopicPartitionList::new();
        let mut next = BTreeMap::new();
        for &part in &partitions {
            let resume_at = stored.get(&part).map(|last| last + 1);
            next.insert(part, resume_at);
            let offset = match (resume_at, config.start) {
                (Some(at), _) => Offset::Offset(at),
                (None, StartAt::Earliest) => Offset::Beginning,
                (None, StartAt::Latest) => Offset::End,
            };
            assignment
                .add_partition_offset(&topic, part, offset)
                .map_err(|e| SourceError::bus("cannot build the assignment", e))?;
        }
        consumer
            .assign(&assignment)
            .map_err(|e| SourceError::bus(format!("cannot assign topic {topic}"), e))?;
        tracing::info!(%topic, ?partitions, resume = ?stored, "kafka source open");
        Ok(KafkaSource {
            consumer: Some(consumer),
            topic,
            next,
            committed: stored,
            start: config.start,
            timeout: timeout(config),
            last_warning: None,
            grouped: false,
        })
    }

    /// The partitions read, in order.
    pub fn partitions(&self) -> Vec<u32> {
        self.next.keys().map(|&p| p as u32).collect()
    }

    /// The positions the consumer group last committed on the broker, per partition
    /// (the last record acknowledged, not the next one): what lag tools see.
    pub fn committed_on_broker(&self) -> Result<Vec<SourcePos>, SourceError> {
        let mut list = TopicPartitionList::new();
        for &part in self.next.keys() {
            list.add_partition(&self.topic, part);
        }
        let committed = self
            .consumer()
            .committed_offsets(list, self.timeout)
            .map_err(|e| {
                SourceError::bus(format!("cannot read the offsets of {}", self.topic), e)
            })?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(next) if next > 0 => Some(SourcePos {
                    part: e.partition() as u32,
                    offset: next as u64 - 1,
                }),
                _ => None,
            })
            .collect())
    }

    fn consumer(&self) -> &BaseConsumer<DefaultConsumerContext> {
        self.consumer.as_ref().expect("present until drop")
    }

    /// Takes one message (or an error) into `out`; false when none came in `wait`.
    fn take(&mut self, wait: Duration, out: &mut Vec<OwnedRecord>) -> Result<bool, SourceError> {
        let consumer = self.consumer.as_ref().expect("present until drop");
        match consumer.poll(wait) {
            None => Ok(false),
            Some(Ok(message)) => {
                let part = message.partition();
                let offset = message.offset();
                let next = self.next.entry(part).or_insert(None);
                if !self.grouped && next.is_some_and(|n| offset < n) {
                    // Already handed out (a refetch after a reconnection): never twice.
                    return Ok(true);
                }
                *next = Some(offset + 1);
                out.push(OwnedRecord {
                    pos: SourcePos {
                        part: part as u32,
                        offset: offset as u64,
                    },
                    bytes: message.payload().unwrap_or_default().to_vec(),
                });
                Ok(true)
            }
            Some(Err(error)) => {
                if let KafkaError::MessageConsumption(
                    code @ (RDKafkaErrorCode::UnknownTopicOrPartition
                    | RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::GroupAuthorizationFailed),
                ) = error
                {
                    return Err(SourceError::bus(
                        format!("cannot read topic {}", self.topic),
                        KafkaError::MessageConsumption(code),
                    ));
                }
                // Transient (a broker down, a reset connection): librdkafka retries.
                let quiet = self
                    .last_warning
                    .is_some_and(|at| at.elapsed() < Duration::from_secs(5));
                if !quiet {
                    tracing::warn!(topic = %self.topic, %error, "kafka source: retrying");
                    self.last_warning = Some(Instant::now());
                }
                Ok(true)
            }
        }
    }
}

/// The consumer's settings: Studio commits positions itself, after the views (or, in a
/// worker, after the answers are published).
fn consumer_config(config: &KafkaConfig, group: &str) -> ClientConfig {
    let mut c = client_config(config);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", config.session_timeout_ms.to_string())
        // A fetch that finds nothing new returns after 10 ms rather than
        // librdkafka's 500: a record that arrives meanwhile waits for the next fetch,
        // so this bounds the latency the consumer adds (override in kafka.client).
        .set("fetch.wait.max.ms", "10")
        .set(
            "auto.offset.reset",
            match config.start {
                StartAt::Earliest => "earliest",
                StartAt::Latest => "latest",
            },
        );
    apply_extra(&mut c, config);
    c
}

/// The partitions of `topic`, from the brokers' metadata.
fn topic_partitions(
    consumer: &BaseConsumer<DefaultConsumerContext>,
    topic: &str,
    config: &KafkaConfig,
) -> Result<Vec<i32>, SourceError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout(config))
        .map_err(|e| {
            let context = format!(
                "cannot read the metadata of topic {topic} from {}",
                config.brokers
            );
            SourceError::bus(context, e)
        })?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(SourceError::bus(
            format!("topic {topic} has no partitions"),
            "the topic does not exist (set kafka.create_topics to create it)",
        ));
    }
    Ok(partitions)
}

/// The last committed offset of each partition in `resume_from` (all of them must be
/// partitions of the topic).
fn stored_offsets(
    topic: &str,
    partitions: &[i32],
    resume_from: &[SourcePos],
) -> Result<BTreeMap<i32, i64>, SourceError> {
    let mut stored: BTreeMap<i32, i64> = BTreeMap::new();
    for pos in resume_from {
        let part = pos.part as i32;
        if !partitions.contains(&part) {
            return Err(SourceError::bus(
                format!("cannot resume topic {topic} at {pos}"),
                format!("the topic has partitions {partitions:?}"),
            ));
        }
        let offset = stored.entry(part).or_insert(pos.offset as i64);
        *offset = (*offset).max(pos.offset as i64);
    }
    Ok(stored)
}

impl Source for KafkaSource {
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<OwnedRecord>, SourceError> {
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        // Wait (up to the deadline) for the first record, then take what is ready.
        while out.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if !self.take(left, &mut out)? || left.is_zero() {
                break;
            }
        }
        while !out.is_empty() && out.len() < max {
            if !self.take(Duration::ZERO, &mut out)? {
                break;
            }
        }
        Ok(out)
    }

    fn commit(&mut self, upto: &[SourcePos]) -> Result<(), SourceError> {
        let mut list = TopicPartitionList::new();
        let mut newer = Vec::new();
        for pos in upto {
            let part = pos.part as i32;
            let offset = pos.offset as i64;
            if self.committed.get(&part).is_some_and(|&c| c >= offset) {
                continue;
            }
            list.add_partition_offset(&self.topic, part, Offset::Offset(offset + 1))
                .map_err(|e| SourceError::bus("cannot build the commit", e))?;
            newer.push((part, offset));
        }
        if newer.is_empty() {
            return Ok(());
        }
        let committed = self.consumer().commit(&list, CommitMode::Sync);
        match committed {
            Ok(()) => {}
            // A rebalance took the partition away: its new owner does the work again
            // (duplicates are harmless, S4.2), so a group member only warns.
            Err(e) if self.grouped => {
                tracing::warn!(topic = %self.topic, error = %e, "kafka group: cannot commit; the partition's next owner redoes it");
                return Ok(());
            }
            Err(e) => {
                return Err(SourceError::bus(
                    format!("cannot commit offsets of {}", self.topic),
                    e,
                ));
            }
        }
        for (part, offset) in newer {
            self.committed.insert(part, offset);
        }
        Ok(())
    }

    fn lag(&mut self) -> Result<Vec<(u32, u64)>, SourceError> {
        let mut lag = Vec::new();
        for (&part, &next) in &self.next {
            let (low, high) = self
                .consumer()
                .fetch_watermarks(&self.topic, part, self.timeout)
                .map_err(|e| {
                    SourceError::bus(format!("cannot read the watermarks of {}", self.topic), e)
                })?;
            let next = next.unwrap_or(match self.start {
                StartAt::Earliest => low,
                StartAt::Latest => high,
            });
            lag.push((part as u32, (high - next).max(0) as u64));
        }
        Ok(lag)
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        let (done, wait) = std::sync::mpsc::channel();
        let closer = std::thread::Builder::new()
            .name("kafka-close".into())
            .spawn(move || {
                let _ = consumer.unassign();
                drop(consumer);
                let _ = done.send(());
            });
        if closer.is_ok() && wait.recv_timeout(self.timeout).is_err() {
            tracing::warn!(topic = %self.topic, "kafka source: close timed out; left behind");
        }
    }
}

/// Counts delivery failures reported by librdkafka's delivery callbacks.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, message)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
            first.get_or_insert_with(|| {
                format!("{} [{}]: {error}", message.topic(), message.partition())
            });
        }
    }
}

/// Produces to the topics of the output streams; see the module docs.
pub struct KafkaPublisher {
    producer: ThreadedProducer<Deliveries>,
    topics: BTreeMap<&'static str, String>,
    config: KafkaConfig,
    failed_reported: u64,
}

impl KafkaPublisher {
    /// Connects a producer; creates the topics of `streams` first when
    /// `kafka.create_topics`.
    pub fn open(config: &KafkaConfig, streams: &[OutputStream]) -> Result<Self, SinkError> {
        if config.create_topics && !streams.is_empty() {
            let topics: Vec<&str> = streams.iter().map(|&s| topic_of(config, s)).collect();
            ensure_topics(config, &topics)
                .map_err(|e| SinkError::bus(format!("cannot create topics {topics:?}"), e))?;
        }
        let mut c = client_config(config);
        c.set("linger.ms", config.linger_ms.to_string())
            .set("acks", "all")
            .set("queue.buffering.max.messages", "1000000");
        apply_extra(&mut c, config);
        let producer: ThreadedProducer<Deliveries> =
            c.create_with_context(Deliveries::default())
                .map_err(|e| SinkError::bus("cannot create the Kafka producer", e))?;
        let topics = OutputStream::ALL
            .iter()
            .map(|&s| (s.key(), topic_of(config, s).to_owned()))
            .collect();
        Ok(KafkaPublisher {
            producer,
            topics,
            config: config.clone(),
            failed_reported: 0,
        })
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    fn check_failures(&mut self) -> Result<(), SinkError> {
        let failed = self.producer.context().failed.load(Ordering::Relaxed);
        if failed > self.failed_reported {
            let new = failed - self.failed_reported;
            self.failed_reported = failed;
            let first = self
                .producer
                .context()
                .first_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or_default();
            return Err(SinkError::bus(
                format!("{new} record(s) were not delivered"),
                first,
            ));
        }
        Ok(())
    }
}

impl RecordPublisher for KafkaPublisher {
    fn publish(&mut self, stream: OutputStream, key: &[u8], bytes: &[u8]) -> Result<(), SinkError> {
        let topic = &self.topics[stream.key()];
        let mut record = BaseRecord::to(topic).key(key).payload(bytes);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((error, _)) => {
                    return Err(SinkError::bus(format!("cannot produce to {topic}"), error));
                }
            }
        }
    }

    fn flush(&mut self, timeout: Duration) -> Result<(), SinkError> {
        self.producer.flush(timeout).map_err(|e| {
            SinkError::bus(
                format!(
                    "{} record(s) still undelivered after {timeout:?}",
                    self.producer.in_flight_count()
                ),
                e,
            )
        })?;
        self.check_failures()
    }
}
