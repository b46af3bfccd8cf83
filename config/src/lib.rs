//! # studio-config
//!
//! Studio's typed configuration, loaded in layers: the built-in defaults
//! (`default.toml` beside this crate), then a TOML file, then `STUDIO_*` environment
//! variables (`STUDIO_REPLAY__WORKERS=2`: sections and keys joined by `__`), then the
//! command-line flags that the binary applies last. Unknown keys are errors, so a typo
//! never passes silently; units are in the names (`cache_size_kib`).
#![forbid(missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
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
    /// Providers registered at start (`[[providers]]` tables; SPEC S5.3).
    #[serde(default)]
    pub providers: Vec<studio_model::Provider>,
    /// The Postgres view store (`--db postgres://...`).
    pub postgres: PostgresConfig,
    /// How documents are stored: where large ones go.
    pub content: ContentConfig,
    /// The S3-compatible store for large documents (`content.large_store = "s3"`).
    pub s3: S3Config,
    /// Retries while a store is unavailable.
    pub retry: RetryConfig,
}

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
    pub publish: Vec<PublishedStream>,
    /// Record events (S5.8) in the view store.
    pub events: bool,
}

/// The buses Studio reads from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// Kafka (`[kafka]`).
    Kafka,
    /// NATS JetStream (`[nats]`).
    Nats,
}

/// The output streams `studio run` can publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishedStream {
    /// New pending transform requests (S5.7).
    Requests,
    /// Events (S5.8).
    Events,
    /// Accepted deltas, with `applied_at`.
    Applied,
    /// Dead letters, with their reason and raw bytes.
    DeadLetters,
}

/// The in-process provider worker runtime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderRuntimeConfig {
    /// Tokio threads running provider calls (>= 1).
    pub threads: usize,
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
    Invalid(#[from] Box<figment::Error>),
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    OutOfRange(String),
}

impl Config {
    /// Defaults < `file` (if given) < `STUDIO_*` environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(file, Env::prefixed("STUDIO_").split("__"))
    }

    fn load_from(file: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
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
        ] {
            if value == 0 {
                return Err(ConfigError::OutOfRange(format!(
                    "{name} must be at least 1"
                )));
            }
        }
        let mut ids = std::collections::BTreeSet::new();
        for p in &self.providers {
            if p.id.is_empty() {
                return Err(ConfigError::OutOfRange("a provider has an empty id".into()));
            }
            if !ids.insert(&p.id) {
                return Err(ConfigError::OutOfRange(format!(
                    "provider {:?} is defined twice",
                    p.id
                )));
            }
        }
        Ok(())
    }
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
}
