//! # studio-config
//!
//! Studio's typed configuration, loaded in layers: the built-in defaults
//! (`default.toml` beside this crate), then a TOML file, then `STUDIO_*` environment
//! variables (`STUDIO_REPLAY__WORKERS=2`: sections and keys joined by `__`), then the
//! command-line flags that the binary applies last. Unknown keys in a file are errors, so
//! a typo never passes silently; an unknown `STUDIO_*` variable is only warned about and
//! ignored (users name their own variables `STUDIO_DIR` and the like), with the closest
//! setting when one is near. Units are in the names (`cache_size_kib`).
#![forbid(missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Value};
use serde::{Deserialize, Serialize};

/// The built-in defaults, as TOML.
pub const DEFAULTS: &str = include_str!("../default.toml");

/// All of Studio's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How replays run.
    pub replay: ReplayConfig,
    /// How the long-running service runs (`studio run`).
    pub run: RunConfig,
    /// The SQLite view store.
    pub sqlite: SqliteConfig,
    /// The Kafka bus.
    pub kafka: KafkaConfig,
    /// The NATS JetStream bus.
    pub nats: NatsConfig,
    /// How provider workers run.
    pub provider_runtime: ProviderRuntimeConfig,
    /// The bus worker (`studio worker --source kafka|nats`).
    pub worker: WorkerConfig,
    /// Providers registered at start (`[[providers]]` tables; SPEC S5.3), as written:
    /// `studio_model::Provider::from_tables` checks them and reads them (this crate is
    /// a leaf and does not know the provider's schema).
    #[serde(default)]
    pub providers: Vec<ProviderTable>,
    /// The Postgres view store (`--db postgres://...`).
    pub postgres: PostgresConfig,
    /// How documents are stored: where large ones go.
    pub content: ContentConfig,
    /// The S3-compatible store for large documents (`content.large_store = "s3"`).
    pub s3: S3Config,
    /// Retries while a store is unavailable.
    pub retry: RetryConfig,
    /// The query API (`studio serve`, and `studio run`'s listener).
    pub api: ApiConfig,
    /// The Redis cache in front of `GET /v1/blobs/{id}`, and its invalidation by the
    /// view writer.
    pub redis: RedisConfig,
    /// Traces exported over OTLP.
    pub telemetry: TelemetryConfig,
}

/// OpenTelemetry traces (docs/observability.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP endpoint spans are exported to (e.g. `http://127.0.0.1:4318`;
    /// `/v1/traces` is appended). Empty: no traces are exported.
    pub otlp_endpoint: String,
    /// The resource's `service.name`.
    pub service_name: String,
    /// Also export a span per delta applied (`delta.apply`): one per delta, so off by
    /// default on a busy service.
    pub delta_spans: bool,
}

/// The Redis read-through cache of the query API (docs/access.md, "The Redis cache").
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://HOST:PORT[/DB]`; empty: no cache, and writers invalidate nothing.
    pub url: String,
    /// How long a cached answer lives, seconds (>= 1): the bound on staleness when an
    /// invalidation could not reach Redis.
    pub ttl_seconds: u64,
    /// The first part of every key (`PREFIX:blob:...`), so that deployments can share
    /// a server.
    pub key_prefix: String,
    /// How long one cache operation may take before the API answers from the view
    /// store instead (and the writer gives up on an invalidation), ms (>= 1).
    pub timeout_ms: u64,
    /// After a failed cache operation, the API leaves Redis alone this long, ms.
    pub retry_after_ms: u64,
    /// Answers larger than this are not cached, bytes.
    pub max_entry_bytes: u64,
}

impl RedisConfig {
    /// True when a cache is configured.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: show only whether it is set.
        let url = if self.url.is_empty() {
            "(unset)"
        } else {
            "(set)"
        };
        f.debug_struct("RedisConfig")
            .field("url", &url)
            .field("ttl_seconds", &self.ttl_seconds)
            .field("key_prefix", &self.key_prefix)
            .field("timeout_ms", &self.timeout_ms)
            .field("retry_after_ms", &self.retry_after_ms)
            .field("max_entry_bytes", &self.max_entry_bytes)
            .finish()
    }
}

/// The query API: bearer tokens and pages (docs/access.md).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// The HS256 secret that signs bearer tokens (JWT, `sub` = the user's UUID).
    /// Empty: not configured; `studio serve` refuses to start.
    pub jwt_secret: String,
    /// The largest page `GET /v1/blobs?limit=` returns.
    pub max_page: u32,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = if self.jwt_secret.is_empty() {
            "(unset)"
        } else {
            "(set)"
        };
        f.debug_struct("ApiConfig")
            .field("jwt_secret", &secret)
            .field("max_page", &self.max_page)
            .finish()
    }
}

/// A `[[providers]]` table: its keys and values, as JSON.
pub type ProviderTable = serde_json::Map<String, serde_json::Value>;

/// The long-running service (`studio run`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The bus the deltas come from.
    pub source: BusKind,
    /// The view store: a SQLite file or a `postgres://` URL.
    pub db: String,
    /// Timely worker threads (>= 1).
    pub workers: usize,
    /// At most this many records go into one timestamp (one view transaction).
    pub max_batch_records: usize,
    /// How long a poll waits for the first record of a batch, in ms.
    pub poll_timeout_ms: u64,
    /// Batches read but not yet completed by the dataflow before reading pauses.
    pub max_batches_in_flight: usize,
    /// Completed batches waiting for the view writer before the dataflow pauses.
    pub writer_queue_batches: usize,
    /// A delta waiting for a version gap this long becomes a dead letter (S4.4), in ms.
    pub gap_timeout_ms: u64,
    /// Where `/metrics` and `/healthz` are served (`host:port`); empty: nowhere.
    pub listen: String,
    /// The output streams published to the bus, after each batch's views commit.
    pub publish: Vec<OutputStream>,
    /// Record events (S5.8) in the view store.
    pub events: bool,
    /// How long after a request's provider could have answered (every attempt timed
    /// out, with its backoffs) the service waits for its result before it issues the
    /// request again, in ms.
    pub worker_grace_ms: u64,
}

/// The buses Studio reads from and publishes to (`run.source`, and the binary's
/// `--source` and `loadgen --to`: with the `clap` feature it is a `clap::ValueEnum`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// Kafka (or a Kafka-compatible bus): `[kafka]`, the deltas on kafka.topics.deltas.
    Kafka,
    /// NATS JetStream: `[nats]`, the deltas on nats.subjects.deltas.
    Nats,
}

/// The streams Studio reads or writes on a bus, each with its topic (Kafka) or subject
/// (NATS) in [`BusNames`]. All but `Deltas` are outputs that `studio run` can publish
/// (`run.publish`); `Deltas` is the input stream (what `studio loadgen` and provider
/// workers write), so a config file cannot list it there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// The input deltas (what `studio loadgen` and provider workers write; what the
    /// sources read). Never published by the service.
    #[serde(skip_deserializing)]
    Deltas,
    /// New pending transform requests (S5.7).
    Requests,
    /// Events (S5.8): `blob.created`, `delta.applied`, ...
    Events,
    /// Accepted deltas, with `applied_at` (the output deltas).
    Applied,
    /// Dead letters, with their reason and raw bytes.
    DeadLetters,
    /// Processing results (S5.7), written by the provider workers and read by the
    /// service. Never published by the service.
    #[serde(skip_deserializing)]
    Results,
}

impl OutputStream {
    /// Every stream, in a fixed order.
    pub const ALL: [OutputStream; 6] = [
        OutputStream::Deltas,
        OutputStream::Requests,
        OutputStream::Events,
        OutputStream::Applied,
        OutputStream::DeadLetters,
        OutputStream::Results,
    ];

    /// The key of its topic or subject in `[kafka.topics]` and `[nats.subjects]`.
    pub fn key(self) -> &'static str {
        match self {
            OutputStream::Deltas => "deltas",
            OutputStream::Requests => "requests",
            OutputStream::Events => "events",
            OutputStream::Applied => "applied",
            OutputStream::DeadLetters => "dead_letters",
            OutputStream::Results => "results",
        }
    }
}

impl BusNames {
    /// The topic or subject of `stream`.
    pub fn of(&self, stream: OutputStream) -> &str {
        match stream {
            OutputStream::Deltas => &self.deltas,
            OutputStream::Requests => &self.requests,
            OutputStream::Events => &self.events,
            OutputStream::Applied => &self.applied,
            OutputStream::DeadLetters => &self.dead_letters,
            OutputStream::Results => &self.results,
        }
    }
}

/// The in-process provider worker runtime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderRuntimeConfig {
    /// Tokio threads running provider calls (>= 1).
    pub threads: usize,
    /// The environment variables a content expander's `config.api_key_env` may name
    /// (their values are sent to its `base_url`).
    pub api_key_env_allow: Vec<String>,
}

/// The bus worker: `studio worker --source kafka|nats` (docs/providers.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// The bus the requests come from.
    pub source: BusKind,
    /// The Kafka consumer group the workers share.
    pub group_id: String,
    /// The JetStream durable pull consumer the workers share.
    pub durable: String,
    /// Requests taken from the bus at once (>= 1); their positions are acknowledged
    /// once every one of them is answered and published.
    pub max_batch_requests: usize,
    /// How long a poll waits for the first request, in ms (>= 1).
    pub poll_timeout_ms: u64,
    /// The memo's SQLite file (answers by provider, provider version and fingerprint,
    /// kept across restarts); empty: the memo lives in the process only.
    pub memo: String,
}

/// The Postgres view store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Rows per batched `UNNEST` statement (>= 1).
    pub rows_per_statement: usize,
    /// A connection attempt or one batch's transaction taking longer than this counts
    /// as a lost connection (>= 1).
    pub timeout_secs: u64,
}

/// Where large documents go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LargeStoreKind {
    /// `content.dir` when set; else the view database's own place: a directory beside
    /// a SQLite file (`PATH.sqlite.blobs/`), the table `large_docs` of a Postgres
    /// database.
    Auto,
    /// A local directory (`content.dir`; empty: beside a SQLite file).
    Dir,
    /// The table `large_docs` of the Postgres view database.
    Postgres,
    /// The S3 bucket of `[s3]`.
    S3,
}

/// How documents are stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentConfig {
    /// Documents of this many bytes of JSON or more go to the large store (>= 1).
    pub large_min_bytes: u64,
    /// Where large documents go.
    pub large_store: LargeStoreKind,
    /// The directory for `large_store = "dir"` or `"auto"`; empty: see
    /// [`LargeStoreKind::Auto`]. With Postgres, `dir` needs it set.
    pub dir: String,
    /// How long a presigned URL (`studio query blob --url`) is valid, in seconds.
    pub url_expiry_secs: u64,
}

/// The S3-compatible store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL, e.g. `http://127.0.0.1:15000`; empty: AWS's own.
    pub endpoint: String,
    /// Region.
    pub region: String,
    /// Bucket.
    pub bucket: String,
    /// Path-style addressing (`ENDPOINT/BUCKET/KEY`).
    pub force_path_style: bool,
    /// Create the bucket when it does not exist.
    pub create_bucket: bool,
    /// Per-request timeout, seconds (>= 1).
    pub timeout_secs: u64,
}

/// Retries while a store is unavailable: exponential backoff, capped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// The first delay, milliseconds (>= 1); each next one doubles.
    pub initial_delay_ms: u64,
    /// The longest delay, milliseconds.
    pub max_delay_ms: u64,
    /// Give up after this many seconds; 0: never (the pipeline waits for the store).
    pub give_up_after_secs: u64,
}

/// How the dataflow runs a replay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayConfig {
    /// Timely worker threads (>= 1).
    pub workers: usize,
    /// Records per timestamp (>= 1).
    pub batch_records: u64,
    /// Batches the source may read ahead of the completed ones (>= 1).
    pub max_batches_in_flight: u64,
    /// Completed batches queued for the view writer before the dataflow waits (>= 1).
    pub writer_queue_batches: usize,
    /// Keep every accepted delta's full record in the delta store.
    pub store_records: bool,
}

/// The SQLite view store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteConfig {
    /// Page cache in KiB.
    pub cache_size_kib: u64,
}

/// The Kafka bus (see `default.toml` for what each key does).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma-separated `host:port`.
    pub brokers: String,
    /// The consumer group whose offsets follow the committed views.
    pub group_id: String,
    /// Where a partition without a stored position starts.
    pub start: StartAt,
    /// Create missing topics at open.
    pub create_topics: bool,
    /// Partitions of the topics Studio creates (>= 1).
    pub partitions: u32,
    /// librdkafka's `session.timeout.ms`.
    pub session_timeout_ms: u64,
    /// librdkafka's `linger.ms` for the producer.
    pub linger_ms: u64,
    /// How long open, metadata, lag and shutdown may wait, in ms (>= 1).
    pub request_timeout_ms: u64,
    /// Extra librdkafka properties, applied last.
    pub client: BTreeMap<String, String>,
    /// The topic of each stream.
    pub topics: BusNames,
}

/// Where a partition starts when the view database holds no position for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// From the first record the bus still holds.
    Earliest,
    /// From the records that arrive after the source opened.
    Latest,
}

/// The topic (Kafka) or subject (NATS) of each stream Studio reads or writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusNames {
    /// Input deltas (the source reads them; `studio loadgen` writes them).
    pub deltas: String,
    /// Transform requests for provider workers (S5.7).
    pub requests: String,
    /// Events (S5.8).
    pub events: String,
    /// Deltas as applied.
    pub applied: String,
    /// Dead letters.
    pub dead_letters: String,
    /// Processing results from the provider workers, which `studio run` reads.
    pub results: String,
}

/// The NATS JetStream bus (see `default.toml` for what each key does).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// The stream holding the input deltas.
    pub stream: String,
    /// The stream holding the output subjects.
    pub output_stream: String,
    /// The durable pull consumer of the input stream.
    pub durable: String,
    /// Create missing streams at open.
    pub create_streams: bool,
    /// Storage of the streams Studio creates.
    pub storage: NatsStorage,
    /// Seconds before an unacknowledged record is redelivered (>= 1).
    pub ack_wait_s: u64,
    /// Unacknowledged records allowed; 0: no limit.
    pub max_ack_pending: u64,
    /// Records per pull request (>= 1).
    pub pull_batch: usize,
    /// How long open, lag and flush may wait, in ms (>= 1).
    pub request_timeout_ms: u64,
    /// The subject of each stream.
    pub subjects: BusNames,
}

/// Where a JetStream stream keeps its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NatsStorage {
    /// On disk: survives a server restart.
    File,
    /// In memory: lost when the server stops.
    Memory,
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or did not fit the schema.
    #[error("invalid configuration: {0}")]
    Invalid(Box<figment::Error>), // not a `#[source]`: the message already holds it
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    OutOfRange(String),
}

impl From<Box<figment::Error>> for ConfigError {
    fn from(error: Box<figment::Error>) -> Self {
        ConfigError::Invalid(error)
    }
}

impl Config {
    /// Defaults < `file` (if given) < `STUDIO_*` environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(file, Env::prefixed("STUDIO_").split("__"))
    }

    fn load_from(file: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let known = std::sync::Arc::new(KnownKeys::new());
        for unknown in known.unknown_env(&env) {
            match &unknown.suggestion {
                Some(near) => tracing::warn!(
                    variable = %unknown.variable,
                    "ignoring environment variable {}: no setting `{}` (did you mean {}, `{near}`?)",
                    unknown.variable,
                    unknown.key,
                    env_name(near),
                ),
                None => tracing::warn!(
                    variable = %unknown.variable,
                    "ignoring environment variable {}: no setting `{}`",
                    unknown.variable,
                    unknown.key,
                ),
            }
        }
        let env = env.filter(move |key| known.knows(key.as_str()));
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::OutOfRange(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        let config: Config = figment.merge(env).extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges that types do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let r = &self.replay;
        for (name, value) in [
            ("replay.workers", r.workers as u64),
            ("replay.batch_records", r.batch_records),
            ("replay.max_batches_in_flight", r.max_batches_in_flight),
            ("replay.writer_queue_batches", r.writer_queue_batches as u64),
            ("run.workers", self.run.workers as u64),
            ("run.max_batch_records", self.run.max_batch_records as u64),
            (
                "run.max_batches_in_flight",
                self.run.max_batches_in_flight as u64,
            ),
            (
                "run.writer_queue_batches",
                self.run.writer_queue_batches as u64,
            ),
            ("run.gap_timeout_ms", self.run.gap_timeout_ms),
            (
                "worker.max_batch_requests",
                self.worker.max_batch_requests as u64,
            ),
            ("worker.poll_timeout_ms", self.worker.poll_timeout_ms),
            (
                "provider_runtime.threads",
                self.provider_runtime.threads as u64,
            ),
            ("kafka.partitions", self.kafka.partitions as u64),
            ("kafka.request_timeout_ms", self.kafka.request_timeout_ms),
            ("nats.ack_wait_s", self.nats.ack_wait_s),
            ("nats.pull_batch", self.nats.pull_batch as u64),
            ("nats.request_timeout_ms", self.nats.request_timeout_ms),
            (
                "postgres.rows_per_statement",
                self.postgres.rows_per_statement as u64,
            ),
            ("postgres.timeout_secs", self.postgres.timeout_secs),
            ("content.large_min_bytes", self.content.large_min_bytes),
            ("s3.timeout_secs", self.s3.timeout_secs),
            ("retry.initial_delay_ms", self.retry.initial_delay_ms),
            ("api.max_page", self.api.max_page as u64),
            ("redis.ttl_seconds", self.redis.ttl_seconds),
            ("redis.timeout_ms", self.redis.timeout_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::OutOfRange(format!(
                    "{name} must be at least 1"
                )));
            }
        }
        Ok(())
    }
}

/// Variables with the `STUDIO_` prefix that are not settings but are read elsewhere
/// (`STUDIO_CONFIG` is the binary's `--config`): ignored without a warning.
const NOT_SETTINGS: &[&str] = &["config"];

/// An environment variable that names no setting.
#[derive(Clone, Debug, PartialEq, Eq)]
struct UnknownEnv {
    /// The variable, as `STUDIO_` and the key's parts joined by `__`, in capitals.
    variable: String,
    /// The key it would set, dotted (`content.dir`).
    key: String,
    /// The closest known setting, dotted, when one is near.
    suggestion: Option<String>,
}

/// `STUDIO_` and `key`'s parts joined by `__`, in capitals: the variable setting `key`.
fn env_name(key: &str) -> String {
    format!("STUDIO_{}", key.replace('.', "__").to_ascii_uppercase())
}

/// The settings' key paths, from the defaults: every section and key of [`Config`], and
/// free maps (a table empty in the defaults, e.g. `kafka.client`) that take any key.
struct KnownKeys {
    tree: Dict,
    /// Every leaf and free map, dotted, for suggestions.
    paths: Vec<String>,
}

impl KnownKeys {
    fn new() -> Self {
        let tree = match Value::serialize(Config::default()) {
            Ok(Value::Dict(_, dict)) => dict,
            _ => unreachable!("Config serializes to a table"),
        };
        fn walk(dict: &Dict, prefix: &str, paths: &mut Vec<String>) {
            for (key, value) in dict {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                match value {
                    Value::Dict(_, inner) if !inner.is_empty() => walk(inner, &path, paths),
                    _ => paths.push(path),
                }
            }
        }
        let mut paths = Vec::new();
        walk(&tree, "", &mut paths);
        KnownKeys { tree, paths }
    }

    /// Whether the dotted `key` (any case) is a section, a setting, or a key of a free
    /// map. A key below a setting (`replay.workers.x`) is unknown.
    fn knows(&self, key: &str) -> bool {
        let key = key.to_ascii_lowercase();
        if NOT_SETTINGS.contains(&key.as_str()) {
            return false;
        }
        let mut node = &self.tree;
        let mut parts = key.split('.');
        while let Some(part) = parts.next() {
            match node.get(part) {
                Some(Value::Dict(_, inner)) if inner.is_empty() => return true, // a free map
                Some(Value::Dict(_, inner)) => node = inner,
                Some(_) => return parts.next().is_none(),
                None => return false,
            }
        }
        true
    }

    /// The variables of `env` that name no setting, with the closest setting if near.
    fn unknown_env(&self, env: &Env) -> Vec<UnknownEnv> {
        env.iter()
            .map(|(key, _)| key.as_str().to_owned())
            .filter(|key| !self.knows(key) && !NOT_SETTINGS.contains(&key.as_str()))
            .map(|key| UnknownEnv {
                variable: env_name(&key),
                suggestion: self.closest(&key),
                key,
            })
            .collect()
    }

    /// The known setting nearest `key`: within a few edits of it, or else the only one
    /// with the same last part (`dir`: `content.dir`).
    fn closest(&self, key: &str) -> Option<String> {
        let best = self
            .paths
            .iter()
            .map(|path| (edit_distance(key, path), path))
            .min()
            .filter(|(distance, _)| *distance <= 2.max(key.len() / 4));
        if let Some((_, path)) = best {
            return Some(path.clone());
        }
        let last = key.rsplit('.').next().unwrap_or(key);
        let mut same = self
            .paths
            .iter()
            .filter(|path| path.rsplit('.').next() == Some(last));
        match (same.next(), same.next()) {
            (Some(path), None) => Some(path.clone()),
            _ => None,
        }
    }
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

impl Default for Config {
    fn default() -> Self {
        Figment::from(Toml::string(DEFAULTS))
            .extract()
            .expect("default.toml matches Config")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type, not ours
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("studio.toml");
        std::fs::write(&file, "[replay]\nworkers = 3\nbatch_records = 10\n").unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("STUDIO_REPLAY__BATCH_RECORDS", "20");
            let c = Config::load(Some(&file)).unwrap();
            assert_eq!(c.replay.workers, 3, "file over defaults");
            assert_eq!(c.replay.batch_records, 20, "env over file");
            assert_eq!(c.sqlite, Config::default().sqlite, "defaults kept");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type, not ours
    fn bus_sections_layer_and_nest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("studio.toml");
        std::fs::write(
            &file,
            "[kafka]\nbrokers = \"k:1\"\nclient = { \"acks\" = \"all\" }\n\
             [kafka.topics]\ndeltas = \"in\"\n[nats]\nstorage = \"memory\"\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("STUDIO_KAFKA__TOPICS__EVENTS", "ev");
            jail.set_env("STUDIO_NATS__URL", "nats://n:2");
            let c = Config::load(Some(&file)).unwrap();
            let d = Config::default();
            assert_eq!(c.kafka.brokers, "k:1");
            assert_eq!(c.kafka.client.get("acks").map(String::as_str), Some("all"));
            assert_eq!(c.kafka.topics.deltas, "in");
            assert_eq!(c.kafka.topics.events, "ev", "env over defaults, nested");
            assert_eq!(c.kafka.topics.requests, d.kafka.topics.requests);
            assert_eq!(c.kafka.start, StartAt::Earliest);
            assert_eq!(c.nats.url, "nats://n:2");
            assert_eq!(c.nats.storage, NatsStorage::Memory);
            assert_eq!(c.nats.subjects, d.nats.subjects);
            Ok(())
        });
        std::fs::write(&file, "[kafka.topics]\ndelta = \"x\"\n").unwrap();
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("delta"), "{err}");
        std::fs::write(&file, "[nats]\nstorage = \"disk\"\n").unwrap();
        assert!(Config::load(Some(&file)).is_err());
    }

    #[test]
    fn unknown_keys_and_zeroes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("studio.toml");
        std::fs::write(&file, "[replay]\nworkrs = 3\n").unwrap();
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("workrs"), "{err}");
        std::fs::write(&file, "[replay]\nworkers = 0\n").unwrap();
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("replay.workers"), "{err}");
        assert!(Config::load(Some(&dir.path().join("none.toml"))).is_err());
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type, not ours
    fn unknown_env_vars_are_ignored_and_named() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("STUDIO_DIR", "/somewhere");
            jail.set_env("STUDIO_REPLAY__WORKRS", "9");
            jail.set_env("STUDIO_REPLAY__WORKERS__X", "9");
            jail.set_env("STUDIO_CONFIG", "/not/a/setting.toml");
            jail.set_env("STUDIO_REPLAY__WORKERS", "3");
            jail.set_env("STUDIO_KAFKA__CLIENT__ACKS", "all");
            let c = Config::load(None).expect("unknown variables do not fail a load");
            assert_eq!(c.replay.workers, 3, "known ones still apply");
            assert_eq!(c.kafka.client.get("acks").map(String::as_str), Some("all"));

            let known = KnownKeys::new();
            let mut unknown = known.unknown_env(&Env::prefixed("STUDIO_").split("__"));
            unknown.sort_by(|a, b| a.variable.cmp(&b.variable));
            let named: Vec<(&str, &str, Option<&str>)> = unknown
                .iter()
                .map(|u| (&*u.variable, &*u.key, u.suggestion.as_deref()))
                .collect();
            assert_eq!(
                named,
                [
                    ("STUDIO_DIR", "dir", Some("content.dir")),
                    (
                        "STUDIO_REPLAY__WORKERS__X",
                        "replay.workers.x",
                        Some("replay.workers")
                    ),
                    (
                        "STUDIO_REPLAY__WORKRS",
                        "replay.workrs",
                        Some("replay.workers")
                    ),
                ],
                "STUDIO_CONFIG is --config, not a setting: no warning"
            );
            assert!(known.knows("kafka.topics.deltas") && known.knows("KAFKA.TOPICS"));
            assert!(known.knows("providers") && known.knows("kafka.client.anything"));
            assert!(!known.knows("kafka.topic") && !known.knows("config"));

            // A known key with a bad value is still an error.
            jail.set_env("STUDIO_REPLAY__WORKERS", "many");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("REPLAY.WORKERS"), "figment's spelling: {err}");
            Ok(())
        });
    }

    #[test]
    fn provider_tables_are_kept_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("studio.toml");
        std::fs::write(
            &file,
            "[[providers]]\nid = \"g\"\ntimeout_ms = 5\n\
             [providers.processing_rules]\nmax_input_size = 10\n",
        )
        .unwrap();
        let c = Config::load(Some(&file)).unwrap();
        assert_eq!(c.providers.len(), 1);
        let p = &c.providers[0];
        assert_eq!(p["id"], "g");
        assert_eq!(p["timeout_ms"], 5);
        assert_eq!(p["processing_rules"]["max_input_size"], 10);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type, not ours
    fn redis_section_layers() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("studio.toml");
        std::fs::write(
            &file,
            "[redis]\nurl = \"redis://file:1\"\nttl_seconds = 60\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            let d = Config::default();
            assert!(!d.redis.enabled(), "no cache unless configured");
            assert_eq!(d.redis.ttl_seconds, 300, "the seed's TTL");
            jail.set_env("STUDIO_REDIS__URL", "redis://env:2");
            let c = Config::load(Some(&file)).unwrap();
            assert_eq!(c.redis.url, "redis://env:2", "env over file");
            assert_eq!(c.redis.ttl_seconds, 60, "file over defaults");
            assert_eq!(c.redis.key_prefix, "studio");
            assert!(
                !format!("{:?}", c.redis).contains("env:2"),
                "the URL is not logged"
            );
            Ok(())
        });
        std::fs::write(&file, "[redis]\nttl_seconds = 0\n").unwrap();
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("redis.ttl_seconds"), "{err}");
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("workrs", "workers"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type, not ours
    fn unknown_file_keys_are_still_refused_beside_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("studio.toml");
        std::fs::write(&file, "dir = \"/x\"\n").unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("STUDIO_DIR", "/somewhere");
            let err = Config::load(Some(&file)).unwrap_err().to_string();
            assert!(err.contains("`dir`"), "{err}");
            assert!(err.contains("studio.toml"), "names the file: {err}");
            Ok(())
        });
    }
}
