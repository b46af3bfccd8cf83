//! NATS JetStream streams as a [`Source`] and a [`RecordPublisher`] (`async-nats`,
//! driven by an internal single-threaded tokio runtime: the traits are blocking).
//!
//! **Source.** [`NatsSource`] reads the input stream (`nats.stream`, capturing
//! `nats.subjects.deltas`) through a durable pull consumer (`nats.durable`) with ack
//! policy *all*: acknowledging a record acknowledges every earlier one, which is exactly
//! [`Source::commit`]. A record's position is `SourcePos { part: 0, offset: stream
//! sequence }`. Studio's view database is authoritative: `open` recreates the durable
//! consumer so that it starts right after the stored position (or at the start of the
//! stream when there is none); the consumer's ack floor then follows the committed views
//! and serves lag monitoring and tools (`nats consumer info`).
//!
//! The server redelivers a record that stays unacknowledged longer than `nats.ack_wait_s`;
//! the source hands out each stream sequence once and drops such redeliveries. When the
//! pull subscription fails (the server restarted, the consumer vanished), the source
//! recreates the consumer from the last committed position and skips what it already
//! handed out, so nothing is lost and nothing repeated. Any bytes are a record.
//!
//! **Group members** ([`Membership::Group`], the provider workers): the source joins a
//! durable pull consumer that several processes share (created when missing, never
//! recreated), with explicit acks; [`Source::commit`] acknowledges each record this
//! member took, and a record a dead member never acknowledged is redelivered to another
//! after `nats.ack_wait_s` (redeliveries are handed out again: at least once).
//!
//! **Publisher.** [`NatsPublisher`] publishes each record to the subject of its
//! [`OutputStream`] through JetStream (every publish is acknowledged by the server once it
//! is stored), with the key in the `Studio-Key` header. A stream keeps one total order,
//! so keys do not affect ordering. Up to 4,096 acknowledgements are awaited concurrently;
//! [`RecordPublisher::flush`] waits for all of them.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::stream::StorageType;
use async_nats::jetstream::{self, Context, consumer, stream};
use futures_util::StreamExt;
use studio_config::{NatsConfig, NatsStorage};
use studio_model::SourcePos;
use tokio::runtime::Runtime;

use crate::{
    Membership, OutputStream, OwnedRecord, RecordPublisher, SinkError, Source, SourceError,
};

/// The header that carries a record's key.
pub const KEY_HEADER: &str = "Studio-Key";

/// The subject that carries `stream`.
pub fn subject_of(config: &NatsConfig, stream: OutputStream) -> &str {
    config.subjects.of(stream)
}

/// The stream that holds `stream`'s subject: the input stream for the deltas, the
/// output stream for the others.
pub fn stream_of(config: &NatsConfig, stream: OutputStream) -> &str {
    match stream {
        OutputStream::Deltas => &config.stream,
        _ => &config.output_stream,
    }
}

/// The subjects the output stream captures: every stream's but the deltas'.
fn output_subjects(config: &NatsConfig) -> Vec<String> {
    OutputStream::ALL
        .iter()
        .filter(|&&s| s != OutputStream::Deltas)
        .map(|&s| subject_of(config, s).to_owned())
        .collect()
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One background thread per client: the connection's reader and writer run there at
/// all times, not only while a call is blocked on the runtime. (On a current-thread
/// runtime a published message could sit in the client's buffer until the next call,
/// and a delivered one in the socket while the dataflow worked.)
fn runtime() -> Result<Runtime, std::io::Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("studio-nats")
        .enable_all()
        .build()
}

async fn connect(config: &NatsConfig) -> Result<Context, BoxError> {
    let timeout = Duration::from_millis(config.request_timeout_ms);
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(timeout)
        .request_timeout(Some(timeout))
        .connect(config.url.as_str())
        .await?;
    let mut js = jetstream::new(client);
    js.set_timeout(timeout);
    Ok(js)
}

/// Creates the stream `name` capturing `subjects` when it does not exist (with
/// `nats.storage`); an existing stream is used as it is.
async fn ensure_stream(
    js: &Context,
    config: &NatsConfig,
    name: &str,
    subjects: Vec<String>,
) -> Result<stream::Stream, BoxError> {
    if !config.create_streams {
        return Ok(js.get_stream(name).await?);
    }
    let storage = match config.storage {
        NatsStorage::File => StorageType::File,
        NatsStorage::Memory => StorageType::Memory,
    };
    Ok(js
        .get_or_create_stream(stream::Config {
            name: name.to_owned(),
            subjects,
            storage,
            ..Default::default()
        })
        .await?)
}

/// Reads the input stream through a durable pull consumer; see the module docs.
pub struct NatsSource {
    runtime: Runtime,
    stream: stream::Stream,
    consumer: Option<consumer::PullConsumer>,
    messages: Option<consumer::pull::Stream>,
    config: NatsConfig,
    /// The stream's name, the subject read and the durable consumer.
    stream_name: String,
    subject: String,
    durable: String,
    /// A member of a group sharing the durable consumer (explicit acks).
    shared: bool,
    /// The last stream sequence handed out.
    last: Option<u64>,
    /// The last stream sequence committed (or resumed from).
    committed: Option<u64>,
    /// Delivered, not yet committed: their ackers.
    acks: BTreeMap<u64, Acker>,
    last_warning: Option<Instant>,
}

impl NatsSource {
    /// Connects, makes sure the input stream exists (when `nats.create_streams`) and
    /// recreates the durable consumer to start right after `resume_from` (at most one
    /// position, in part 0), or at the stream's first record when it is empty. Fails
    /// when the server cannot be reached within `nats.request_timeout_ms`.
    pub fn open(config: &NatsConfig, resume_from: &[SourcePos]) -> Result<Self, SourceError> {
        Self::open_stream(
            config,
            OutputStream::Deltas,
            Membership::Assigned(resume_from),
        )
    }

    /// Opens the subject of `stream` in the stream that holds it ([`stream_of`]) as
    /// `membership` says: alone, resuming after the given position, or as a member of
    /// the durable consumer the group shares.
    pub fn open_stream(
        config: &NatsConfig,
        stream: OutputStream,
        membership: Membership<'_>,
    ) -> Result<Self, SourceError> {
        let (stream_name, subject) = (stream_of(config, stream), subject_of(config, stream));
        let (resume_from, durable, shared) = match membership {
            Membership::Assigned(resume_from) => (resume_from, config.durable.as_str(), false),
            Membership::Group(durable) => (&[][..], durable, true),
        };
        if let Some(pos) = resume_from.iter().find(|p| p.part != 0) {
            return Err(SourceError::bus(
                format!("cannot resume stream {stream_name} at {pos}"),
                "a JetStream stream has one partition, 0",
            ));
        }
        let committed = resume_from.iter().map(|p| p.offset).max();
        let runtime = runtime().map_err(|e| SourceError::bus("cannot start a runtime", e))?;
        let captured = match stream {
            OutputStream::Deltas => vec![config.subjects.deltas.clone()],
            _ => output_subjects(config),
        };
        let handle = runtime
            .block_on(async {
                let js = connect(config).await?;
                ensure_stream(&js, config, stream_name, captured).await
            })
            .map_err(|e| {
                SourceError::bus(
                    format!("cannot open stream {stream_name} at {}", config.url),
                    e,
                )
            })?;
        let mut source = NatsSource {
            runtime,
            stream: handle,
            consumer: None,
            messages: None,
            config: config.clone(),
            stream_name: stream_name.to_owned(),
            subject: subject.to_owned(),
            durable: durable.to_owned(),
            shared,
            last: committed,
            committed,
            acks: BTreeMap::new(),
            last_warning: None,
        };
        source
            .recreate_consumer()
            .map_err(|e| SourceError::bus(format!("cannot create consumer {durable}"), e))?;
        tracing::info!(stream = %stream_name, %subject, %durable, shared, ?committed, "nats source open");
        Ok(source)
    }

    /// Deletes and creates the durable consumer, starting after the last committed
    /// position; what was handed out since is skipped when redelivered. A group member
    /// joins the shared durable consumer instead (creating it when missing).
    fn recreate_consumer(&mut self) -> Result<(), BoxError> {
        self.messages = None;
        self.consumer = None;
        self.acks.clear();
        let config = &self.config;
        if self.shared {
            let consumer_config = consumer::pull::Config {
                durable_name: Some(self.durable.clone()),
                filter_subject: self.subject.clone(),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(config.ack_wait_s),
                ..Default::default()
            };
            let stream = &self.stream;
            let consumer = self
                .runtime
                .block_on(stream.get_or_create_consumer(&self.durable.clone(), consumer_config))?;
            self.consumer = Some(consumer);
            return Ok(());
        }
        let deliver_policy = match self.committed {
            Some(seq) => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: seq + 1,
            },
            None => consumer::DeliverPolicy::All,
        };
        let consumer_config = consumer::pull::Config {
            durable_name: Some(self.durable.clone()),
            filter_subject: self.subject.clone(),
            deliver_policy,
            ack_policy: consumer::AckPolicy::All,
            ack_wait: Duration::from_secs(config.ack_wait_s),
            max_ack_pending: match config.max_ack_pending {
                0 => -1,
                n => n as i64,
            },
            ..Default::default()
        };
        let (stream, durable) = (&self.stream, &self.durable);
        let consumer = self.runtime.block_on(async {
            match stream.delete_consumer(durable).await {
                Ok(_) => {}
                Err(e) if e.to_string().contains("not found") => {}
                Err(e) => tracing::debug!(%e, "deleting the durable consumer"),
            }
            stream.create_consumer(consumer_config).await
        })?;
        self.consumer = Some(consumer);
        Ok(())
    }

    fn warn(&mut self, what: &str, error: &dyn std::fmt::Display) {
        let quiet = self
            .last_warning
            .is_some_and(|at| at.elapsed() < Duration::from_secs(5));
        if !quiet {
            tracing::warn!(stream = %self.stream_name, %error, "nats source: {what}");
            self.last_warning = Some(Instant::now());
        }
    }

    /// The pull subscription, started when missing.
    fn ensure_messages(&mut self) -> Result<(), BoxError> {
        if self.consumer.is_none() {
            self.recreate_consumer()?;
        }
        if self.messages.is_none() {
            let consumer = self.consumer.as_ref().expect("just ensured");
            let batch = self.config.pull_batch;
            let messages = self.runtime.block_on(
                consumer
                    .stream()
                    .max_messages_per_batch(batch)
                    .heartbeat(Duration::from_secs(5))
                    .expires(Duration::from_secs(30))
                    .messages(),
            )?;
            self.messages = Some(messages);
        }
        Ok(())
    }

    /// Takes up to `max` messages into `out`, waiting at most `wait` for the first and
    /// then taking only what is ready, in one entry into the runtime; false when nothing
    /// came.
    fn take(&mut self, max: usize, wait: Duration, out: &mut Vec<OwnedRecord>) -> bool {
        use futures_util::FutureExt;
        if let Err(error) = self.ensure_messages() {
            self.warn("cannot subscribe; retrying", &error);
            self.consumer = None;
            self.messages = None;
            if !wait.is_zero() {
                std::thread::sleep(wait.min(Duration::from_millis(500)));
            }
            return false;
        }
        let messages = self.messages.as_mut().expect("just ensured");
        let (pulled, ended) = self.runtime.block_on(async {
            let mut pulled = Vec::new();
            match tokio::time::timeout(wait, messages.next()).await {
                Err(_elapsed) => return (pulled, false),
                Ok(None) => return (pulled, true),
                Ok(Some(item)) => pulled.push(item),
            }
            while pulled.len() < max {
                match messages.next().now_or_never() {
                    Some(Some(item)) => pulled.push(item),
                    Some(None) => return (pulled, true),
                    None => break,
                }
            }
            (pulled, false)
        });
        let came = !pulled.is_empty() || ended;
        if ended {
            self.messages = None;
        }
        for item in pulled {
            self.handle(item, out);
        }
        came
    }

    fn handle(
        &mut self,
        item: Result<jetstream::Message, consumer::pull::MessagesError>,
        out: &mut Vec<OwnedRecord>,
    ) {
        match item {
            Err(error) => {
                use consumer::pull::MessagesErrorKind as Kind;
                match error.kind() {
                    Kind::MissingHeartbeat => self.warn("missed heartbeats", &error),
                    _ => {
                        // The consumer or the server went away: start over from the
                        // last committed position, skipping what was handed out.
                        self.warn("pull failed; recreating the consumer", &error);
                        self.consumer = None;
                        self.messages = None;
                    }
                }
            }
            Ok(message) => {
                let sequence = match message.info() {
                    Ok(info) => info.stream_sequence,
                    Err(error) => {
                        self.warn("a message without JetStream info", &error);
                        return;
                    }
                };
                if !self.shared && self.last.is_some_and(|last| sequence <= last) {
                    // A redelivery of something already handed out. Keep its acker:
                    // a redelivery after a consumer was recreated is what commits use.
                    if self.committed.is_none_or(|c| sequence > c) {
                        let (_, acker) = message.split();
                        self.acks.insert(sequence, acker);
                    }
                    return;
                }
                let (message, acker) = message.split();
                self.last = Some(sequence);
                self.acks.insert(sequence, acker);
                out.push(OwnedRecord {
                    pos: SourcePos::at(sequence),
                    bytes: message.payload.to_vec(),
                });
            }
        }
    }
}

impl Source for NatsSource {
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<OwnedRecord>, SourceError> {
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        while out.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if !self.take(max, left, &mut out) || left.is_zero() {
                break;
            }
        }
        while !out.is_empty() && out.len() < max {
            if !self.take(max - out.len(), Duration::ZERO, &mut out) {
                break;
            }
        }
        Ok(out)
    }

    fn commit(&mut self, upto: &[SourcePos]) -> Result<(), SourceError> {
        let Some(upto) = upto.iter().filter(|p| p.part == 0).map(|p| p.offset).max() else {
            return Ok(());
        };
        if self.committed.is_some_and(|c| c >= upto) {
            return Ok(());
        }
        if self.shared {
            // Explicit acks: each record this member took, at or below `upto`.
            for (sequence, acker) in self.acks.range(..=upto) {
                if let Err(error) = self.runtime.block_on(acker.double_ack()) {
                    tracing::warn!(stream = %self.stream_name, sequence, %error, "nats group: cannot acknowledge; it will be redelivered");
                }
            }
            self.acks = self.acks.split_off(&(upto + 1));
            return Ok(());
        }
        // Ack policy "all": acknowledging the newest delivered record at or below `upto`
        // acknowledges everything before it.
        if let Some((&sequence, acker)) = self.acks.range(..=upto).next_back() {
            let result = self.runtime.block_on(acker.double_ack());
            if let Err(error) = result {
                // The views are committed, which is what counts; the ack floor catches
                // up with the next commit.
                self.warn(&format!("cannot acknowledge {sequence}"), &error);
            }
        }
        self.acks = self.acks.split_off(&(upto + 1));
        self.committed = Some(upto);
        Ok(())
    }

    fn lag(&mut self) -> Result<Vec<(u32, u64)>, SourceError> {
        let durable = self.durable.clone();
        let info = self
            .runtime
            .block_on(self.stream.consumer_info(&durable))
            .map_err(|e| SourceError::bus(format!("cannot read consumer {durable}"), e))?;
        Ok(vec![(0, info.num_pending)])
    }
}

/// Publishes to the subjects of the output streams through JetStream; see the module docs.
pub struct NatsPublisher {
    runtime: Runtime,
    js: Context,
    subjects: BTreeMap<u8, String>,
    pending: VecDeque<PublishAckFuture>,
    /// How long the acks of a full window may take (`nats.request_timeout_ms`).
    ack_timeout: Duration,
    failed: u64,
    first_error: Option<String>,
}

const MAX_PENDING_ACKS: usize = 4096;

impl NatsPublisher {
    /// Connects; when `nats.create_streams`, makes sure the input stream exists when
    /// `streams` holds [`OutputStream::Deltas`], and the output stream
    /// (`nats.output_stream`, capturing the four output subjects) when it holds any
    /// other.
    pub fn open(config: &NatsConfig, streams: &[OutputStream]) -> Result<Self, SinkError> {
        let runtime = runtime().map_err(|e| SinkError::bus("cannot start a runtime", e))?;
        let js = runtime
            .block_on(async {
                let js = connect(config).await?;
                if streams.contains(&OutputStream::Deltas) {
                    ensure_stream(
                        &js,
                        config,
                        &config.stream,
                        vec![config.subjects.deltas.clone()],
                    )
                    .await?;
                }
                if streams.iter().any(|&s| s != OutputStream::Deltas) {
                    let all = output_subjects(config);
                    ensure_stream(&js, config, &config.output_stream, all).await?;
                }
                Ok::<_, BoxError>(js)
            })
            .map_err(|e| SinkError::bus(format!("cannot open NATS at {}", config.url), e))?;
        let subjects = OutputStream::ALL
            .iter()
            .map(|&s| (s as u8, subject_of(config, s).to_owned()))
            .collect();
        Ok(NatsPublisher {
            runtime,
            js,
            subjects,
            pending: VecDeque::new(),
            ack_timeout: Duration::from_millis(config.request_timeout_ms),
            failed: 0,
            first_error: None,
        })
    }

    /// Waits for every pending acknowledgement at once: each ack's timeout runs from
    /// when it is awaited, so awaiting them one by one would take the timeout times the
    /// number of acks lost in a server restart.
    /// Gives up on the acks still missing after `timeout`.
    fn settle_all(&mut self, timeout: Duration) {
        let acks: Vec<_> = self
            .pending
            .drain(..)
            .map(IntoFuture::into_future)
            .collect();
        let count = acks.len();
        let all = futures_util::future::join_all(acks);
        match self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, all).await })
        {
            Ok(results) => {
                for error in results.into_iter().filter_map(Result::err) {
                    self.failed += 1;
                    self.first_error.get_or_insert_with(|| error.to_string());
                }
            }
            Err(_) => {
                self.failed += count as u64;
                self.first_error
                    .get_or_insert_with(|| format!("no acknowledgement within {timeout:?}"));
            }
        }
    }

    fn check_failures(&mut self) -> Result<(), SinkError> {
        if self.failed > 0 {
            let failed = std::mem::take(&mut self.failed);
            let first = self.first_error.take().unwrap_or_default();
            return Err(SinkError::bus(
                format!("{failed} record(s) were not stored"),
                first,
            ));
        }
        Ok(())
    }
}

/// A header value for `key`: itself when it is printable ASCII, else `hex:` and its hex.
fn key_header(key: &[u8]) -> String {
    if key.iter().all(|b| (0x20..0x7f).contains(b)) {
        String::from_utf8(key.to_vec()).expect("ASCII")
    } else {
        let mut s = String::from("hex:");
        for b in key {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

impl RecordPublisher for NatsPublisher {
    fn publish(&mut self, stream: OutputStream, key: &[u8], bytes: &[u8]) -> Result<(), SinkError> {
        if self.pending.len() >= MAX_PENDING_ACKS {
            self.settle_all(self.ack_timeout);
        }
        let subject = self.subjects[&(stream as u8)].clone();
        let mut headers = HeaderMap::new();
        if !key.is_empty() {
            headers.insert(KEY_HEADER, key_header(key).as_str());
        }
        let ack = self
            .runtime
            .block_on(
                self.js
                    .publish_with_headers(subject.clone(), headers, bytes.to_vec().into()),
            )
            .map_err(|e| SinkError::bus(format!("cannot publish to {subject}"), e))?;
        self.pending.push_back(ack);
        Ok(())
    }

    fn flush(&mut self, timeout: Duration) -> Result<(), SinkError> {
        self.settle_all(timeout);
        self.check_failures()
    }
}
