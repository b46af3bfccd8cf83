//! One factory per store and bus: what `--db` and the configuration name, opened.
//!
//! The binary calls these and only adds its messages; which type serves a store or a
//! bus, and how the configuration becomes its options, is decided here. A store or bus
//! whose cargo feature is off is an [`OpenError::FeatureOff`], not a build error.
//!
//! ```text
//!   --db / [run] db ──> Db::parse ──> open_view_store (replay, run) -> Box<dyn ViewSink>
//!                                 └─> open_reader (query, loadgen)  -> Box<dyn ViewReader>
//!   [run] source / --to ──────────> open_source                     -> Box<dyn Source>
//!                                 └─> open_publisher                -> Box<dyn RecordPublisher>
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use studio_config::{BusKind, Config, LargeStoreKind};
use studio_model::SourcePos;

use crate::content::{ContentOptions, ContentReader, ContentSpec, LargeStoreSpec};
use crate::retry::RetryPolicy;
use crate::{OpenMode, OutputStream, RecordPublisher, SinkError, Source, SourceError};
use crate::{ViewReader, ViewSink};

/// A store or bus could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// `--db` or the configuration asks for something Studio does not do.
    #[error("{0}")]
    Invalid(String),
    /// This build lacks the cargo feature that the store or bus needs.
    #[error(
        "{what} needs the cargo feature `{feature}` of studio-connectors, which this build lacks"
    )]
    FeatureOff {
        /// The store or bus asked for.
        what: String,
        /// The missing feature.
        feature: &'static str,
    },
    /// Opening a store failed; `context` names it.
    #[error("{context}")]
    Store {
        /// What was being opened.
        context: String,
        /// Why it failed.
        #[source]
        source: SinkError,
    },
    /// The store or bus failed as it opened.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// True when a `--db` value names a Postgres database.
pub fn is_postgres_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// What `--db` names.
pub enum Db<'a> {
    /// A SQLite file.
    Sqlite(&'a Path),
    /// A Postgres URL.
    Postgres(&'a str),
}

impl<'a> Db<'a> {
    /// Parses a `--db` value.
    pub fn parse(db: &'a str) -> Result<Db<'a>, OpenError> {
        if is_postgres_url(db) {
            return Ok(Db::Postgres(db));
        }
        #[cfg(feature = "sqlite")]
        if let Some(path) = crate::sqlite::SqliteViews::path_of(db) {
            return Ok(Db::Sqlite(path));
        }
        #[cfg(not(feature = "sqlite"))]
        if !db.contains("://") || db.starts_with("sqlite://") {
            return Err(feature_off(format!("--db {db} (SQLite)"), "sqlite"));
        }
        Err(OpenError::Invalid(format!(
            "--db {db}: not a view store Studio knows (a SQLite path, sqlite://PATH, or postgres://...)"
        )))
    }

    /// For messages: the path, or the URL without its password.
    pub fn display(&self) -> String {
        match self {
            Db::Sqlite(path) => path.display().to_string(),
            Db::Postgres(url) => redact(url),
        }
    }
}

fn feature_off(what: impl Into<String>, feature: &'static str) -> OpenError {
    OpenError::FeatureOff {
        what: what.into(),
        feature,
    }
}

/// The S3 options of `[s3]`.
#[cfg(feature = "s3")]
fn s3_options(config: &Config) -> crate::content::s3::S3Options {
    let s3 = &config.s3;
    crate::content::s3::S3Options {
        endpoint: (!s3.endpoint.is_empty()).then(|| s3.endpoint.clone()),
        region: s3.region.clone(),
        bucket: s3.bucket.clone(),
        force_path_style: s3.force_path_style,
        create_bucket: s3.create_bucket,
        timeout: Duration::from_secs(s3.timeout_secs),
    }
}

/// The retry policy of `[retry]`.
pub fn retry_policy(config: &Config) -> RetryPolicy {
    let r = &config.retry;
    RetryPolicy {
        initial_delay: Duration::from_millis(r.initial_delay_ms),
        max_delay: Duration::from_millis(r.max_delay_ms.max(r.initial_delay_ms)),
        give_up_after: (r.give_up_after_secs > 0)
            .then(|| Duration::from_secs(r.give_up_after_secs)),
    }
}

/// Where documents go with this configuration and `--db`.
fn content_spec(config: &Config, db: &Db<'_>) -> Result<ContentSpec, OpenError> {
    let c = &config.content;
    let beside_sqlite =
        |path: &Path| LargeStoreSpec::Dir(PathBuf::from(format!("{}.blobs", path.display())));
    let large = match (c.large_store, db) {
        #[cfg(feature = "s3")]
        (LargeStoreKind::S3, _) => LargeStoreSpec::S3(s3_options(config)),
        #[cfg(not(feature = "s3"))]
        (LargeStoreKind::S3, _) => {
            return Err(feature_off("content.large_store = \"s3\"", "s3"));
        }
        (LargeStoreKind::Dir | LargeStoreKind::Auto, _) if !c.dir.is_empty() => {
            LargeStoreSpec::Dir(PathBuf::from(&c.dir))
        }
        (LargeStoreKind::Dir | LargeStoreKind::Auto, Db::Sqlite(path)) => beside_sqlite(path),
        (LargeStoreKind::Auto | LargeStoreKind::Postgres, Db::Postgres(_)) => {
            LargeStoreSpec::Postgres
        }
        (LargeStoreKind::Dir, Db::Postgres(_)) => {
            return Err(OpenError::Invalid(
                "content.large_store = \"dir\" needs content.dir with Postgres (or use \"auto\": \
                 large documents in the Postgres table large_docs)"
                    .into(),
            ));
        }
        (LargeStoreKind::Postgres, Db::Sqlite(_)) => {
            return Err(OpenError::Invalid(
                "content.large_store = \"postgres\" needs a Postgres --db (or use \"auto\": large \
                 documents in a directory beside the SQLite file)"
                    .into(),
            ));
        }
    };
    Ok(ContentSpec {
        options: ContentOptions {
            large_min_bytes: c.large_min_bytes,
        },
        large,
    })
}

/// Where large documents go with this configuration and `--db`, for a replay's
/// summary: `the directory /abs/views.sqlite.blobs`, `the Postgres table large_docs`.
pub fn large_store_description(config: &Config, db: &Db<'_>) -> Result<String, OpenError> {
    Ok(content_spec(config, db)?.large.describe())
}

/// The view store `db` names: rebuilt for a replay, maintained for the service.
pub fn open_view_store(
    config: &Config,
    db: &Db<'_>,
    mode: OpenMode,
) -> Result<Box<dyn ViewSink + Send>, OpenError> {
    let content = content_spec(config, db)?;
    let retry = retry_policy(config);
    let context = format!("cannot use {} as the view database", db.display());
    let store = |source| OpenError::Store {
        context: context.clone(),
        source,
    };
    let sink: Result<Box<dyn ViewSink + Send>, OpenError> = match db {
        #[cfg(feature = "sqlite")]
        Db::Sqlite(path) => Ok(Box::new(
            crate::sqlite::SqliteViews::open(&crate::sqlite::SqliteOptions {
                path: path.to_path_buf(),
                cache_size_kib: config.sqlite.cache_size_kib,
                mode,
                content,
                retry,
            })
            .map_err(store)?,
        )),
        #[cfg(feature = "postgres")]
        Db::Postgres(url) => Ok(Box::new(
            crate::postgres::PgViews::open(crate::postgres::PgOptions {
                url: (*url).to_owned(),
                mode,
                rows_per_statement: config.postgres.rows_per_statement,
                timeout: Duration::from_secs(config.postgres.timeout_secs),
                content,
                retry,
            })
            .map_err(store)?,
        )),
        #[allow(unreachable_patterns)]
        _ => {
            let _ = (content, retry, mode, store);
            Err(store_feature_off(db))
        }
    };
    with_cache_invalidation(config, sink?)
}

/// `sink`, invalidating the Redis cache after each commit when `[redis]` is configured.
fn with_cache_invalidation(
    config: &Config,
    sink: Box<dyn ViewSink + Send>,
) -> Result<Box<dyn ViewSink + Send>, OpenError> {
    if !config.redis.enabled() {
        return Ok(sink);
    }
    #[cfg(feature = "redis")]
    {
        let options = crate::cache::CacheOptions::from_config(&config.redis).expect("enabled");
        let sink = crate::cache::InvalidatingSink::wrap(sink, options)
            .map_err(|e| OpenError::Invalid(e.to_string()))?;
        Ok(Box::new(sink))
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = sink;
        Err(feature_off("redis.url (the Redis cache)", "redis"))
    }
}

/// A store whose feature this build lacks.
#[allow(dead_code)]
fn store_feature_off(db: &Db<'_>) -> OpenError {
    match db {
        Db::Sqlite(_) => feature_off(format!("the SQLite view store {}", db.display()), "sqlite"),
        Db::Postgres(_) => feature_off(
            format!("the Postgres view store {}", db.display()),
            "postgres",
        ),
    }
}

/// A reader of the view store `db` names (`studio query`, `studio loadgen --wait-db`).
pub fn open_reader(config: &Config, db: &Db<'_>) -> Result<Box<dyn ViewReader>, OpenError> {
    #[cfg(feature = "s3")]
    let content = ContentReader::with_s3(s3_options(config));
    #[cfg(not(feature = "s3"))]
    let content = ContentReader::local();
    match db {
        #[cfg(feature = "sqlite")]
        Db::Sqlite(path) => {
            if !path.is_file() {
                return Err(OpenError::Invalid(format!(
                    "no view database at {} (run `studio replay LOG --db {}` first)",
                    path.display(),
                    path.display()
                )));
            }
            Ok(Box::new(crate::sqlite::SqliteReader::open(path, content)?))
        }
        #[cfg(feature = "postgres")]
        Db::Postgres(url) => Ok(Box::new(
            crate::postgres::PgReader::open(
                url,
                Duration::from_secs(config.postgres.timeout_secs),
                content,
            )
            .map_err(|source| OpenError::Store {
                context: format!("cannot open the view database {}", redact(url)),
                source,
            })?,
        )),
        #[allow(unreachable_patterns)]
        _ => {
            let _ = (config, content);
            Err(store_feature_off(db))
        }
    }
}

/// The name of the bus source `kind`, as its checkpoint is stored: `kafka:TOPIC`,
/// `nats:STREAM`.
pub fn source_name(kind: BusKind, config: &Config) -> String {
    match kind {
        BusKind::Kafka => format!("kafka:{}", config.kafka.topics.deltas),
        BusKind::Nats => format!("nats:{}", config.nats.stream),
    }
}

/// The bus source `kind`, resuming after `resume_from`.
pub fn open_source(
    kind: BusKind,
    config: &Config,
    resume_from: &[SourcePos],
) -> Result<Box<dyn Source>, SourceError> {
    let _ = resume_from;
    match kind {
        #[cfg(feature = "kafka")]
        BusKind::Kafka => Ok(Box::new(crate::kafka::KafkaSource::open(
            &config.kafka,
            resume_from,
        )?)),
        #[cfg(feature = "nats")]
        BusKind::Nats => Ok(Box::new(crate::nats::NatsSource::open(
            &config.nats,
            resume_from,
        )?)),
        #[allow(unreachable_patterns)]
        _ => Err(SourceError::bus(
            format!("opening the source {}", source_name(kind, config)),
            bus_feature_off(kind),
        )),
    }
}

/// The service's source: the deltas, and beside them (with `results`) the processing
/// results of the provider workers, as one [`MergedSource`](crate::merged::MergedSource)
/// whose positions hold both (the results' partitions from
/// [`SECOND_PART`](crate::merged::SECOND_PART)); each resumes after its own positions.
/// The results are read through their own durable consumer (`nats.durable` + `_results`).
pub fn open_service_source(
    kind: BusKind,
    config: &Config,
    resume_from: &[SourcePos],
    results: bool,
) -> Result<Box<dyn Source>, SourceError> {
    if !results {
        return open_source(kind, config, resume_from);
    }
    let (deltas_at, results_at) = crate::merged::MergedSource::split(resume_from);
    let results = open_results_source(kind, config, &results_at)?;
    let deltas = open_source(kind, config, &deltas_at)?;
    Ok(Box::new(crate::merged::MergedSource::new(deltas, results)))
}

/// The results topic or subject, resuming after `resume_from`.
fn open_results_source(
    kind: BusKind,
    config: &Config,
    resume_from: &[SourcePos],
) -> Result<Box<dyn Source>, SourceError> {
    let _ = resume_from;
    match kind {
        #[cfg(feature = "kafka")]
        BusKind::Kafka => Ok(Box::new(crate::kafka::KafkaSource::open_topic(
            &config.kafka,
            &config.kafka.topics.results,
            crate::Membership::Assigned(resume_from),
        )?)),
        #[cfg(feature = "nats")]
        BusKind::Nats => {
            let mut nats = config.nats.clone();
            nats.durable = format!("{}_results", nats.durable);
            Ok(Box::new(crate::nats::NatsSource::open_stream(
                &nats,
                OutputStream::Results,
                crate::Membership::Assigned(resume_from),
            )?))
        }
        #[allow(unreachable_patterns)]
        _ => Err(SourceError::bus(
            format!("opening the results of {}", source_name(kind, config)),
            bus_feature_off(kind),
        )),
    }
}

/// A member of the group `group` reading `stream` on the bus `kind` (the provider
/// workers: `worker.group_id` on Kafka, `worker.durable` on NATS).
pub fn open_group_source(
    kind: BusKind,
    config: &Config,
    stream: OutputStream,
    group: &str,
) -> Result<Box<dyn Source>, SourceError> {
    let _ = (config, stream, group);
    match kind {
        #[cfg(feature = "kafka")]
        BusKind::Kafka => Ok(Box::new(crate::kafka::KafkaSource::open_topic(
            &config.kafka,
            config.kafka.topics.of(stream),
            crate::Membership::Group(group),
        )?)),
        #[cfg(feature = "nats")]
        BusKind::Nats => Ok(Box::new(crate::nats::NatsSource::open_stream(
            &config.nats,
            stream,
            crate::Membership::Group(group),
        )?)),
        #[allow(unreachable_patterns)]
        _ => Err(SourceError::bus(
            format!("opening the {} stream", stream.key()),
            bus_feature_off(kind),
        )),
    }
}

/// The publisher of `streams` on the bus `kind`.
pub fn open_publisher(
    kind: BusKind,
    config: &Config,
    streams: &[OutputStream],
) -> Result<Box<dyn RecordPublisher>, OpenError> {
    let _ = (config, streams);
    match kind {
        #[cfg(feature = "kafka")]
        BusKind::Kafka => Ok(Box::new(crate::kafka::KafkaPublisher::open(
            &config.kafka,
            streams,
        )?)),
        #[cfg(feature = "nats")]
        BusKind::Nats => Ok(Box::new(crate::nats::NatsPublisher::open(
            &config.nats,
            streams,
        )?)),
        #[allow(unreachable_patterns)]
        _ => Err(bus_feature_off(kind)),
    }
}

/// A bus whose feature this build lacks.
#[allow(dead_code)]
fn bus_feature_off(kind: BusKind) -> OpenError {
    match kind {
        BusKind::Kafka => feature_off("the Kafka bus", "kafka"),
        BusKind::Nats => feature_off("the NATS bus", "nats"),
    }
}

/// The output streams `[run] publish` names.
pub fn output_streams(config: &Config) -> Vec<OutputStream> {
    config.run.publish.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_db() {
        assert!(matches!(Db::parse("postgres://h/db"), Ok(Db::Postgres(_))));
        assert!(matches!(
            Db::parse("mysql://h/db"),
            Err(OpenError::Invalid(_))
        ));
        assert_eq!(
            redact("postgres://me:secret@h:5432/db"),
            "postgres://me@h:5432/db"
        );
    }

    #[cfg(not(feature = "kafka"))]
    #[test]
    fn a_bus_without_its_feature_says_so() {
        let config = Config::default();
        let Err(e) = open_publisher(BusKind::Kafka, &config, &[]) else {
            panic!("opened a Kafka publisher without the kafka feature");
        };
        assert!(e.to_string().contains("cargo feature `kafka`"), "{e}");
    }
}
