//! # studio-config
//!
//! Studio's typed configuration, loaded in layers: the built-in defaults
//! (`default.toml` beside this crate), then a TOML file, then `STUDIO_*` environment
//! variables (`STUDIO_REPLAY__WORKERS=2`: sections and keys joined by `__`), then the
//! command-line flags that the binary applies last. Unknown keys are errors, so a typo
//! never passes silently; units are in the names (`cache_size_kib`).
#![forbid(missing_docs)]

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
    /// The SQLite view store.
    pub sqlite: SqliteConfig,
    /// The Postgres view store (`--db postgres://...`).
    pub postgres: PostgresConfig,
    /// How documents are stored: compression, and where large ones go.
    pub content: ContentConfig,
    /// The S3-compatible store for large documents (`content.large_store = "s3"`).
    pub s3: S3Config,
    /// Retries while a store is unavailable.
    pub retry: RetryConfig,
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
    /// A local directory (`content.dir`).
    Dir,
    /// The S3 bucket of `[s3]`.
    S3,
}

/// How documents are stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentConfig {
    /// Compress documents with LZ4 in the database when that makes them smaller.
    pub compress: bool,
    /// Documents of this many bytes of JSON or more go to the large store (>= 1).
    pub large_min_bytes: u64,
    /// Where large documents go.
    pub large_store: LargeStoreKind,
    /// The directory for `large_store = "dir"`; empty: beside a SQLite file
    /// (`PATH.sqlite.blobs/`). Postgres needs it set, or S3.
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
}

/// The SQLite view store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteConfig {
    /// Page cache in KiB.
    pub cache_size_kib: u64,
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
