//! Opening the view store that `--db` names, with the configuration's content rule:
//! a SQLite file (a path or `sqlite://PATH`) or a Postgres database
//! (`postgres://...`). `replay` and `query` both go through here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use studio_config::{Config, LargeStoreKind};
use studio_connectors::content::s3::S3Options;
use studio_connectors::content::{ContentOptions, ContentReader, ContentSpec, LargeStoreSpec};
use studio_connectors::postgres::{PgOptions, PgReader, PgViews, is_postgres_url, redact};
use studio_connectors::retry::RetryPolicy;
use studio_connectors::sqlite::{SqliteOptions, SqliteReader, SqliteViews};
use studio_connectors::{OpenMode, ViewReader, ViewSink};

/// What `--db` names.
pub enum Db<'a> {
    /// A SQLite file.
    Sqlite(&'a Path),
    /// A Postgres URL.
    Postgres(&'a str),
}

impl<'a> Db<'a> {
    /// Parses a `--db` value.
    pub fn parse(db: &'a str) -> anyhow::Result<Db<'a>> {
        if is_postgres_url(db) {
            return Ok(Db::Postgres(db));
        }
        match SqliteViews::path_of(db) {
            Some(path) => Ok(Db::Sqlite(path)),
            None => bail!(
                "--db {db}: not a view store Studio knows (a SQLite path, sqlite://PATH, or postgres://...)"
            ),
        }
    }

    /// For messages: the path, or the URL without its password.
    pub fn display(&self) -> String {
        match self {
            Db::Sqlite(path) => path.display().to_string(),
            Db::Postgres(url) => redact(url),
        }
    }
}

fn s3_options(config: &Config) -> S3Options {
    let s3 = &config.s3;
    S3Options {
        endpoint: (!s3.endpoint.is_empty()).then(|| s3.endpoint.clone()),
        region: s3.region.clone(),
        bucket: s3.bucket.clone(),
        force_path_style: s3.force_path_style,
        create_bucket: s3.create_bucket,
        timeout: Duration::from_secs(s3.timeout_secs),
    }
}

fn retry_policy(config: &Config) -> RetryPolicy {
    let r = &config.retry;
    RetryPolicy {
        initial_delay: Duration::from_millis(r.initial_delay_ms),
        max_delay: Duration::from_millis(r.max_delay_ms.max(r.initial_delay_ms)),
        give_up_after: (r.give_up_after_secs > 0)
            .then(|| Duration::from_secs(r.give_up_after_secs)),
    }
}

fn content_spec(config: &Config, db: &Db<'_>) -> anyhow::Result<ContentSpec> {
    let c = &config.content;
    let beside_sqlite =
        |path: &Path| LargeStoreSpec::Dir(PathBuf::from(format!("{}.blobs", path.display())));
    let large = match (c.large_store, db) {
        (LargeStoreKind::S3, _) => LargeStoreSpec::S3(s3_options(config)),
        (LargeStoreKind::Dir | LargeStoreKind::Auto, _) if !c.dir.is_empty() => {
            LargeStoreSpec::Dir(PathBuf::from(&c.dir))
        }
        (LargeStoreKind::Dir | LargeStoreKind::Auto, Db::Sqlite(path)) => beside_sqlite(path),
        (LargeStoreKind::Auto | LargeStoreKind::Postgres, Db::Postgres(_)) => {
            LargeStoreSpec::Postgres
        }
        (LargeStoreKind::Dir, Db::Postgres(_)) => bail!(
            "content.large_store = \"dir\" needs content.dir with Postgres (or use \"auto\": \
             large documents in the Postgres table large_docs)"
        ),
        (LargeStoreKind::Postgres, Db::Sqlite(_)) => bail!(
            "content.large_store = \"postgres\" needs a Postgres --db (or use \"auto\": large \
             documents in a directory beside the SQLite file)"
        ),
    };
    Ok(ContentSpec {
        options: ContentOptions {
            large_min_bytes: c.large_min_bytes,
        },
        large,
    })
}

/// Where large documents go with this configuration and `--db`, for the replay's
/// summary: `the directory /abs/views.sqlite.blobs`, `the Postgres table large_docs`.
pub fn large_store_description(config: &Config, db: &Db<'_>) -> anyhow::Result<String> {
    Ok(content_spec(config, db)?.large.describe())
}

/// The sink: rebuilt for a replay, maintained for the service.
pub fn open_sink(
    config: &Config,
    db: &Db<'_>,
    mode: OpenMode,
) -> anyhow::Result<Box<dyn ViewSink + Send>> {
    let content = content_spec(config, db)?;
    let retry = retry_policy(config);
    Ok(match db {
        Db::Sqlite(path) => Box::new(
            SqliteViews::open(&SqliteOptions {
                path: path.to_path_buf(),
                cache_size_kib: config.sqlite.cache_size_kib,
                mode,
                content,
                retry,
            })
            .with_context(|| format!("cannot use {} as the view database", path.display()))?,
        ),
        Db::Postgres(url) => Box::new(
            PgViews::open(PgOptions {
                url: (*url).to_owned(),
                mode,
                rows_per_statement: config.postgres.rows_per_statement,
                timeout: Duration::from_secs(config.postgres.timeout_secs),
                content,
                retry,
            })
            .with_context(|| format!("cannot use {} as the view database", redact(url)))?,
        ),
    })
}

/// A reader for `studio query`.
pub fn open_reader(config: &Config, db: &Db<'_>) -> anyhow::Result<Box<dyn ViewReader>> {
    let content = ContentReader::with_s3(s3_options(config));
    Ok(match db {
        Db::Sqlite(path) => {
            if !path.is_file() {
                bail!(
                    "no view database at {} (run `studio replay LOG --db {}` first)",
                    path.display(),
                    path.display()
                );
            }
            Box::new(SqliteReader::open(path, content)?)
        }
        Db::Postgres(url) => Box::new(
            PgReader::open(
                url,
                Duration::from_secs(config.postgres.timeout_secs),
                content,
            )
            .with_context(|| format!("cannot open the view database {}", redact(url)))?,
        ),
    })
}
