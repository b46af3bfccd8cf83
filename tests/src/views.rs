//! The four view tables of a SQLite view database (declared in `studio_model::tables`),
//! read back into plain rows that compare with `assert_eq!` against the reference
//! model's [`crate::model::Expected`].
//!
//! Dead-letter reasons are compared in full, except the detail after `patch does not
//! apply:`, which is the patch library's own wording: [`comparable_reason`] cuts it.

use std::path::Path;
use std::str::FromStr;

use base64::Engine as _;
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use studio_connectors::content::{Content, ContentReader, ContentSpec};
use studio_connectors::retry::RetryPolicy;
use studio_connectors::sqlite::{OpenMode, SqliteOptions, SqliteViews};
use studio_connectors::{Rows, VIEW_TABLES, ViewReader};

/// A new SQLite view database at `db` for a test's replay: a small page cache, large
/// documents in the directory beside it.
pub fn new_sqlite_views(db: &Path) -> SqliteViews {
    SqliteViews::open(&SqliteOptions {
        path: db.to_path_buf(),
        cache_size_kib: 2048,
        mode: OpenMode::Rebuild,
        content: ContentSpec::in_dir(db.with_extension("blobs")),
        retry: RetryPolicy::default(),
    })
    .expect("open the view database")
}

/// A row of `blobs`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BlobRecord {
    /// The blob.
    pub blob_id: String,
    /// Its owner.
    pub user_id: String,
    /// Current version.
    pub version: i64,
    /// Content type from its create.
    pub content_type: String,
    /// Compact JSON, keys sorted.
    pub doc: String,
    /// The blob it was derived from.
    pub parent_id: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC.
    pub updated_at: String,
    /// RFC 3339 UTC, while deleted.
    pub deleted_at: Option<String>,
}

/// A row of `deltas_applied`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AppliedRecord {
    /// The delta.
    pub delta_id: String,
    /// Its blob.
    pub blob_id: String,
    /// The version it made.
    pub version: i64,
    /// `create`, `update`, ...
    pub operation: String,
    /// Who acted.
    pub user_id: String,
    /// The provider that produced it.
    pub provider_id: Option<String>,
    /// The delta that caused it.
    pub caused_by: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
}

/// A row of `processed_by`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProcessedRecord {
    /// The blob.
    pub blob_id: String,
    /// The provider.
    pub provider_id: String,
    /// The version its latest transform made.
    pub version: i64,
    /// That transform.
    pub delta_id: String,
}

/// A row of `dead_letters`, without `seq` (the list order stands for it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeadRecord {
    /// The delta id, when the record parsed.
    pub delta_id: Option<String>,
    /// The blob id, when the record parsed.
    pub blob_id: Option<String>,
    /// The reason, through [`comparable_reason`].
    pub reason: String,
    /// The `raw` column: the record, or `base64:` and its base64.
    pub raw: String,
}

/// The four view tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    /// Sorted.
    pub blobs: Vec<BlobRecord>,
    /// Sorted.
    pub applied: Vec<AppliedRecord>,
    /// Sorted.
    pub processed: Vec<ProcessedRecord>,
    /// In `seq` order (the model: log order).
    pub dead_letters: Vec<DeadRecord>,
    /// Accepted grant records (rows of `grant_log`, S6.4).
    pub grants_accepted: u64,
}

impl Tables {
    /// Sorts the keyed tables; keeps the dead letters' order.
    pub fn new(
        mut blobs: Vec<BlobRecord>,
        mut applied: Vec<AppliedRecord>,
        mut processed: Vec<ProcessedRecord>,
        dead_letters: Vec<DeadRecord>,
    ) -> Self {
        blobs.sort();
        applied.sort();
        processed.sort();
        Tables {
            blobs,
            applied,
            processed,
            dead_letters,
            grants_accepted: 0,
        }
    }

    /// With `n` accepted grant records.
    pub fn with_grants(mut self, n: u64) -> Self {
        self.grants_accepted = n;
        self
    }

    /// The same tables with the dead letters sorted: compares contents, not order.
    pub fn unordered(&self) -> Tables {
        let mut t = self.clone();
        t.dead_letters.sort();
        t
    }
}

/// The kind of a reason: its text before the first `:`.
pub fn reason_kind(reason: &str) -> &str {
    reason.split(':').next().unwrap_or(reason)
}

/// The reason as compared: the full text, but only the kind for `patch does not apply`
/// (whose detail is the patch library's message) and `not authorized` (whose detail
/// is wording).
pub fn comparable_reason(reason: &str) -> String {
    let kind = reason_kind(reason);
    if kind.ends_with("patch does not apply") || kind.ends_with("not authorized") {
        kind.to_owned()
    } else {
        reason.to_owned()
    }
}

/// The text of the `raw` column for a record's bytes: the record itself when it is
/// UTF-8 and does not start with `base64:`, else `base64:` and its standard base64.
pub fn raw_column(raw: &[u8]) -> String {
    match std::str::from_utf8(raw) {
        Ok(text) if !text.starts_with("base64:") => text.to_owned(),
        _ => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        ),
    }
}

/// The bytes a `raw` column stands for (inverse of [`raw_column`]).
pub fn raw_bytes(column: &str) -> Vec<u8> {
    match column.strip_prefix("base64:") {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("a base64: raw column holds valid base64"),
        None => column.as_bytes().to_vec(),
    }
}

type BlobTuple = (
    String,
    String,
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
    Option<String>,
);
type AppliedTuple = (
    String,
    String,
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
);

/// Reads the view tables of the SQLite database at `path`.
pub fn read_tables(path: &Path) -> Result<Tables, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let err = |what: &str| {
            let what = what.to_owned();
            move |e: sqlx::Error| format!("{what} in {}: {e}", path.display())
        };
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(err("options"))?
            .filename(path)
            .create_if_missing(false);
        let mut conn = SqliteConnection::connect_with(&options)
            .await
            .map_err(err("open"))?;
        let blobs: Vec<BlobTuple> = sqlx::query_as(
            "SELECT blob_id, user_id, version, content_type, doc, doc_ref, parent_id, \
             created_at, updated_at, deleted_at FROM blobs",
        )
        .fetch_all(&mut conn)
        .await
        .map_err(err("reading blobs"))?;
        let applied: Vec<AppliedTuple> = sqlx::query_as(
            "SELECT delta_id, blob_id, version, operation, user_id, provider_id, caused_by, \
             created_at FROM deltas_applied",
        )
        .fetch_all(&mut conn)
        .await
        .map_err(err("reading deltas_applied"))?;
        let processed: Vec<(String, String, i64, String)> =
            sqlx::query_as("SELECT blob_id, provider_id, version, delta_id FROM processed_by")
                .fetch_all(&mut conn)
                .await
                .map_err(err("reading processed_by"))?;
        let dead: Vec<(Option<String>, Option<String>, String, String)> =
            sqlx::query_as("SELECT delta_id, blob_id, reason, raw FROM dead_letters ORDER BY seq")
                .fetch_all(&mut conn)
                .await
                .map_err(err("reading dead_letters"))?;
        let grants: i64 = sqlx::query_scalar("SELECT count(*) FROM grant_log")
            .fetch_one(&mut conn)
            .await
            .map_err(err("grant_log"))?;
        conn.close().await.map_err(err("close"))?;
        // Documents are read back through the content rule, wherever they are stored.
        let mut reader = ContentReader::local();
        let mut blob_records = Vec::with_capacity(blobs.len());
        for (
            blob_id,
            user_id,
            version,
            content_type,
            doc,
            doc_ref,
            parent_id,
            created_at,
            updated_at,
            deleted_at,
        ) in blobs
        {
            let doc = Content::from_columns(doc, doc_ref)
                .ok_or_else(|| format!("blob {blob_id} has no content"))?
                .resolve(&mut reader)
                .await
                .map_err(|e| e.to_string())?;
            blob_records.push(BlobRecord {
                blob_id,
                user_id,
                version,
                content_type,
                doc,
                parent_id,
                created_at,
                updated_at,
                deleted_at,
            });
        }
        Ok(Tables::new(
            blob_records,
            applied
                .into_iter()
                .map(
                    |(
                        delta_id,
                        blob_id,
                        version,
                        operation,
                        user_id,
                        provider_id,
                        caused_by,
                        created_at,
                    )| AppliedRecord {
                        delta_id,
                        blob_id,
                        version,
                        operation,
                        user_id,
                        provider_id,
                        caused_by,
                        created_at,
                    },
                )
                .collect(),
            processed
                .into_iter()
                .map(
                    |(blob_id, provider_id, version, delta_id)| ProcessedRecord {
                        blob_id,
                        provider_id,
                        version,
                        delta_id,
                    },
                )
                .collect(),
            dead.into_iter()
                .map(|(delta_id, blob_id, reason, raw)| DeadRecord {
                    delta_id,
                    blob_id,
                    reason: comparable_reason(&reason),
                    raw,
                })
                .collect(),
        )
        .with_grants(grants as u64))
    })
}

/// Rows of text columns (NULL as `None`).
pub type TextRows = Vec<Vec<Option<String>>>;

/// Runs `sql` on the SQLite database at `path` and returns every row as text (each
/// column cast to TEXT by the query, NULL as `None`).
pub fn text_rows(path: &Path, sql: &str) -> TextRows {
    use sqlx::Row;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let options = SqliteConnectOptions::from_str("sqlite:")
            .expect("options")
            .filename(path)
            .create_if_missing(false);
        let mut conn = SqliteConnection::connect_with(&options)
            .await
            .expect("open the views");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| row.try_get::<Option<String>, _>(i).expect("a text column"))
                    .collect()
            })
            .collect()
    })
}

/// Every view table, rows sorted, as JSON values.
pub fn dump(reader: &mut dyn ViewReader) -> Vec<(String, Rows)> {
    VIEW_TABLES
        .iter()
        .map(|t| {
            let mut rows = reader
                .rows(&format!("SELECT * FROM {t}"), &[])
                .unwrap_or_else(|e| panic!("reading {t}: {e}"));
            rows.sort_by_cached_key(|r| serde_json::to_string(r).expect("JSON"));
            ((*t).to_owned(), rows)
        })
        .collect()
}

/// Every table equal, row by row; `what` names the comparison.
pub fn assert_same_tables(left: &[(String, Rows)], right: &[(String, Rows)], what: &str) {
    for ((table, l), (_, r)) in left.iter().zip(right) {
        assert_eq!(l.len(), r.len(), "{what}: {table} row counts differ");
        for (a, b) in l.iter().zip(r) {
            assert_eq!(a, b, "{what}: {table} differs");
        }
    }
}
