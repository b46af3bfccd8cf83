//! Blob content: how a document is stored, one rule for every view store.
//!
//! A document is the compact JSON of [`BlobRow::doc`](studio_model::BlobRow). The sinks
//! ask [`ContentCodec::encode`] how to store it and write the answer into three columns
//! of `blobs` (exactly one of the first two is set):
//!
//! | column | holds |
//! |---|---|
//! | `doc` | the JSON itself (JSONB in Postgres, TEXT in SQLite) |
//! | `doc_ref` | where a large document lives: `s3://BUCKET/KEY`, `file:///PATH` or `postgres:large_docs/KEY` |
//! | `doc_bytes` | the length of the JSON, however it is stored |
//!
//! The rule ([`ContentOptions`]): a document of `large_min_bytes` or more goes to the
//! large store ([`LargeStore`]: a local directory, the Postgres table `large_docs`, or
//! S3 with the `s3` feature) under a versioned key, `blobs/{blob_id}/v{version}.json`,
//! so an update writes a new object and the older versions stay readable. A smaller
//! one is stored as JSON text in `doc`, so SQL reads it directly (`json_extract(doc,
//! '$.content')` in SQLite, `doc->>'content'` in Postgres). Studio does not compress
//! documents itself: Postgres compresses `doc` on its own (TOAST, LZ4 where the server
//! has it), and SQLite keeps plain text for its JSON functions. JSON holding the escape
//! `\u0000` (which Postgres JSONB cannot hold) goes to the large store, whatever its
//! size.
//!
//! Databases written before this rule may hold LZ4-compressed documents in a
//! `doc_lz4` column: both sinks turn them back into JSON when they open such a
//! database ([`inflate_legacy_lz4`]), and drop the column.
//!
//! Reads go the other way ([`Content::resolve`]), so `studio query blob` prints the
//! document wherever it lives.

#[cfg(feature = "s3")]
pub mod s3;

use std::path::{Path, PathBuf};
use std::time::Duration;

use studio_model::{BlobRow, Keyed, Uuid};

use crate::SinkError;

/// The content rule.
#[derive(Clone, Debug)]
pub struct ContentOptions {
    /// Documents of this many bytes (compact JSON) or more go to the large store.
    pub large_min_bytes: u64,
}

impl Default for ContentOptions {
    fn default() -> Self {
        ContentOptions {
            large_min_bytes: 1 << 20,
        }
    }
}

/// How one document is stored: the values of the `doc`, `doc_ref` and `doc_bytes`
/// columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The JSON, when stored in `blobs.doc`.
    pub doc: Option<String>,
    /// The large store's reference, when stored in the large store.
    pub doc_ref: Option<String>,
    /// Length of the JSON in bytes.
    pub doc_bytes: i64,
    /// A large document for the sink to write into its own `large_docs` table, in the
    /// batch's transaction, under `doc_ref` ([`LargeStore::Postgres`] only).
    pub large_doc: Option<String>,
}

/// The prefix of a reference to the Postgres table `large_docs`.
pub const POSTGRES_REF_PREFIX: &str = "postgres:large_docs/";

/// The object key of a large document: versioned, so updates never overwrite.
pub fn object_key(blob_id: Uuid, version: u64) -> String {
    format!("blobs/{}/v{version}.json", blob_id.hyphenated())
}

/// Where large documents go.
#[derive(Clone)]
pub enum LargeStore {
    /// A local directory: objects are files under it.
    Dir(PathBuf),
    /// The table `large_docs` of the Postgres view database: the sink writes the
    /// document in the batch's own transaction ([`Stored::large_doc`]).
    Postgres,
    /// An S3-compatible bucket.
    #[cfg(feature = "s3")]
    S3(s3::S3Store),
}

impl std::fmt::Debug for LargeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LargeStore::Dir(dir) => write!(f, "LargeStore::Dir({})", dir.display()),
            LargeStore::Postgres => write!(f, "LargeStore::Postgres"),
            #[cfg(feature = "s3")]
            LargeStore::S3(s3) => write!(f, "LargeStore::S3({})", s3.bucket()),
        }
    }
}

fn io_error(context: String) -> impl FnOnce(std::io::Error) -> SinkError {
    move |e| SinkError::Database {
        context,
        source: Box::new(e),
    }
}

impl LargeStore {
    /// Stores `bytes` under `key` and returns the reference kept in `doc_ref`.
    /// Writing the same key twice writes the same bytes (keys are versioned), so a
    /// retried batch may put again safely.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<String, SinkError> {
        match self {
            LargeStore::Dir(dir) => {
                let path = dir.join(key);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(io_error(format!("creating {}", parent.display())))?;
                }
                // Write then rename, so a reader never sees half a document.
                let partial = path.with_extension("json.partial");
                std::fs::write(&partial, &bytes)
                    .map_err(io_error(format!("writing {}", partial.display())))?;
                std::fs::rename(&partial, &path)
                    .map_err(io_error(format!("writing {}", path.display())))?;
                Ok(file_ref(&path))
            }
            LargeStore::Postgres => Err(SinkError::Refused(
                "the Postgres large store is written by the Postgres sink".into(),
            )),
            #[cfg(feature = "s3")]
            LargeStore::S3(s3) => s3.put(key, bytes).await,
        }
    }
}

fn file_ref(path: &Path) -> String {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    format!("file://{}", absolute.display())
}

/// Where large documents go, before connecting.
#[derive(Clone, Debug)]
pub enum LargeStoreSpec {
    /// A local directory (created when missing).
    Dir(PathBuf),
    /// The table `large_docs` of the Postgres view database (the default with a
    /// Postgres `--db`; only the Postgres sink accepts it).
    Postgres,
    /// An S3-compatible bucket.
    #[cfg(feature = "s3")]
    S3(s3::S3Options),
}

impl LargeStoreSpec {
    /// Where large documents go, for people: `the directory /abs/dir`, `the Postgres
    /// table large_docs`, `the S3 bucket NAME`.
    pub fn describe(&self) -> String {
        match self {
            LargeStoreSpec::Dir(dir) => {
                let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
                format!("the directory {}", absolute.display())
            }
            LargeStoreSpec::Postgres => "the Postgres table large_docs".into(),
            #[cfg(feature = "s3")]
            LargeStoreSpec::S3(options) => format!("the S3 bucket {}", options.bucket),
        }
    }
}

/// The content rule and where large documents go: what a sink is configured with.
#[derive(Clone, Debug)]
pub struct ContentSpec {
    /// The rule.
    pub options: ContentOptions,
    /// The large store.
    pub large: LargeStoreSpec,
}

impl ContentSpec {
    /// The default rule, with large documents in a local directory.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        ContentSpec {
            options: ContentOptions::default(),
            large: LargeStoreSpec::Dir(dir.into()),
        }
    }

    /// Connects the large store (S3: checks or creates the bucket). Call it in the
    /// runtime that will use the codec: the S3 client's connections belong to it.
    pub async fn connect(&self) -> Result<ContentCodec, SinkError> {
        let large = match &self.large {
            LargeStoreSpec::Dir(dir) => LargeStore::Dir(dir.clone()),
            LargeStoreSpec::Postgres => LargeStore::Postgres,
            #[cfg(feature = "s3")]
            LargeStoreSpec::S3(options) => LargeStore::S3(s3::S3Store::connect(options).await?),
        };
        Ok(ContentCodec::new(self.options.clone(), large))
    }
}

/// Encodes documents for a sink: the rule plus the large store.
#[derive(Clone, Debug)]
pub struct ContentCodec {
    options: ContentOptions,
    large: LargeStore,
}

impl ContentCodec {
    /// A codec with `options` and `large` for large documents.
    pub fn new(options: ContentOptions, large: LargeStore) -> Self {
        ContentCodec { options, large }
    }

    /// How to store the document `json` of `blob_id` at `version`. Large documents are
    /// written to the large store here, before the sink's transaction.
    pub async fn encode(
        &self,
        blob_id: Uuid,
        version: u64,
        json: String,
    ) -> Result<Stored, SinkError> {
        let doc_bytes = json.len() as i64;
        // Postgres JSONB cannot hold \u0000; the large stores hold any bytes.
        let large = json.len() as u64 >= self.options.large_min_bytes || json.contains("\\u0000");
        if !large {
            return Ok(Stored {
                doc: Some(json),
                doc_ref: None,
                doc_bytes,
                large_doc: None,
            });
        }
        let key = object_key(blob_id, version);
        if let LargeStore::Postgres = self.large {
            return Ok(Stored {
                doc: None,
                doc_ref: Some(format!("{POSTGRES_REF_PREFIX}{key}")),
                doc_bytes,
                large_doc: Some(json),
            });
        }
        let doc_ref = self.large.put(&key, json.into_bytes()).await?;
        Ok(Stored {
            doc: None,
            doc_ref: Some(doc_ref),
            doc_bytes,
            large_doc: None,
        })
    }

    /// True when large documents go to the Postgres table `large_docs`.
    pub fn large_in_postgres(&self) -> bool {
        matches!(self.large, LargeStore::Postgres)
    }
}

/// A `blobs` row with its document encoded, ready for a sink to bind.
#[derive(Debug)]
pub struct EncodedBlob<'a> {
    /// The row.
    pub row: &'a BlobRow,
    /// How its document is stored.
    pub stored: Stored,
}

impl studio_model::Row for EncodedBlob<'_> {
    fn cells<'a>(&'a self, each: &mut dyn FnMut(studio_model::Cell<'a>)) {
        let (r, stored) = (self.row, &self.stored);
        each(r.blob_id.into());
        each(r.user_id.into());
        each(r.version.into());
        each(r.content_type.as_str().into());
        each(stored.doc.as_deref().into());
        each(stored.doc_ref.as_deref().into());
        each(stored.doc_bytes.into());
        each(r.parent_id.into());
        each(r.created_at.into());
        each(r.updated_at.into());
        each(r.deleted_at.into());
    }
}

impl ContentCodec {
    /// Encodes the upserted rows of a batch, sorted by key (B-tree inserts in key order
    /// touch neighbouring pages). Large documents are written to the large store first,
    /// so the transaction that references them commits only after they exist.
    pub async fn encode_rows<'a>(
        &self,
        rows: &'a [BlobRow],
    ) -> Result<Vec<EncodedBlob<'a>>, SinkError> {
        let mut sorted: Vec<&BlobRow> = rows.iter().collect();
        sorted.sort_unstable_by_key(|r| r.key());
        let mut out = Vec::with_capacity(sorted.len());
        for row in sorted {
            let stored = self
                .encode(row.blob_id, row.version, row.doc.to_json())
                .await?;
            out.push(EncodedBlob { row, stored });
        }
        Ok(out)
    }
}

/// The `doc` and `doc_ref` columns as read.
pub type ContentColumns = (Option<String>, Option<String>);

/// A document as read back from the two columns.
#[derive(Clone, Debug)]
pub enum Content {
    /// Stored as JSON.
    Json(String),
    /// Stored in a large store, by reference.
    Ref(String),
}

impl Content {
    /// From the `doc` and `doc_ref` columns; `None` when both are NULL.
    pub fn from_columns(doc: Option<String>, doc_ref: Option<String>) -> Option<Content> {
        doc.map(Content::Json).or(doc_ref.map(Content::Ref))
    }

    /// The document's JSON, fetching it from the large store when needed.
    pub async fn resolve(self, reader: &mut ContentReader) -> Result<String, SinkError> {
        let bytes = match self {
            Content::Json(json) => return Ok(json),
            Content::Ref(reference) => reader.fetch(&reference).await?,
        };
        String::from_utf8(bytes).map_err(|e| SinkError::Database {
            context: "a stored document is not UTF-8".into(),
            source: Box::new(e),
        })
    }
}

/// A document from the `doc_lz4` column of a database written before documents were
/// kept as JSON (`lz4_flex` block, size first), as JSON text.
pub fn inflate_legacy_lz4(packed: &[u8]) -> Result<String, SinkError> {
    let bytes = lz4_flex::decompress_size_prepended(packed).map_err(|e| SinkError::Database {
        context: "decompressing a document of doc_lz4".into(),
        source: Box::new(e),
    })?;
    String::from_utf8(bytes).map_err(|e| SinkError::Database {
        context: "a document of doc_lz4 is not UTF-8".into(),
        source: Box::new(e),
    })
}

/// Follows references to large documents when reading. The S3 client is made on
/// first use (in the caller's runtime), so reading a database that keeps everything
/// inline never needs S3.
#[derive(Default)]
pub struct ContentReader {
    /// How to reach S3, when configured.
    #[cfg(feature = "s3")]
    pub s3_options: Option<s3::S3Options>,
    #[cfg(feature = "s3")]
    s3: Option<s3::S3Store>,
}

impl ContentReader {
    /// A reader that follows only `file://` references.
    pub fn local() -> Self {
        ContentReader::default()
    }

    /// A reader that also follows `s3://` references.
    #[cfg(feature = "s3")]
    pub fn with_s3(options: s3::S3Options) -> Self {
        ContentReader {
            s3_options: Some(s3::S3Options {
                create_bucket: false,
                ..options
            }),
            s3: None,
        }
    }

    #[cfg(feature = "s3")]
    async fn s3(&mut self, reference: &str) -> Result<&s3::S3Store, SinkError> {
        if self.s3.is_none() {
            let Some(options) = &self.s3_options else {
                return Err(SinkError::Refused(format!(
                    "{reference} is in S3, but no S3 store is configured ([s3] in the config)"
                )));
            };
            self.s3 = Some(s3::S3Store::connect(options).await?);
        }
        Ok(self.s3.as_ref().expect("connected"))
    }

    /// The bytes a reference names.
    pub async fn fetch(&mut self, reference: &str) -> Result<Vec<u8>, SinkError> {
        if let Some(path) = reference.strip_prefix("file://") {
            return std::fs::read(path).map_err(io_error(format!("reading {reference}")));
        }
        #[cfg(feature = "s3")]
        if reference.starts_with("s3://") {
            return self.s3(reference).await?.get(reference).await;
        }
        if reference.starts_with(POSTGRES_REF_PREFIX) {
            return Err(SinkError::Refused(format!(
                "{reference} is in the Postgres view database: read it with --db postgres://..."
            )));
        }
        Err(SinkError::Refused(format!(
            "cannot read {reference}: this build has no store for it"
        )))
    }

    /// A presigned GET URL for an `s3://` reference, valid for `expiry`.
    pub async fn presigned_url(
        &mut self,
        reference: &str,
        expiry: Duration,
    ) -> Result<String, SinkError> {
        if !reference.starts_with("s3://") {
            return Err(SinkError::Refused(format!(
                "{reference} is not in S3, so it has no URL"
            )));
        }
        #[cfg(feature = "s3")]
        {
            self.s3(reference)
                .await?
                .presigned_get(reference, expiry)
                .await
        }
        #[cfg(not(feature = "s3"))]
        {
            let _ = expiry;
            Err(SinkError::Refused(format!(
                "{reference} is in S3, but this build has no S3 support"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(dir: &Path, large: u64) -> ContentCodec {
        ContentCodec::new(
            ContentOptions {
                large_min_bytes: large,
            },
            LargeStore::Dir(dir.to_path_buf()),
        )
    }

    fn run<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn small_large_and_nul_documents() {
        let dir = tempfile::tempdir().unwrap();
        let id = Uuid::from_u128(7);
        run(async {
            let c = codec(dir.path(), 1000);
            let text = format!(r#"{{"content":"{}"}}"#, "the quick fox ".repeat(40));
            let small = c.encode(id, 2, text.clone()).await.unwrap();
            assert_eq!(
                small.doc.as_deref(),
                Some(text.as_str()),
                "JSON, never packed"
            );
            assert!(small.doc_ref.is_none() && small.large_doc.is_none());
            assert_eq!(small.doc_bytes, text.len() as i64);

            let big = format!(r#"{{"content":"{}"}}"#, "x".repeat(2000));
            let stored = c.encode(id, 3, big.clone()).await.unwrap();
            let reference = stored.doc_ref.clone().unwrap();
            assert!(reference.ends_with("/blobs/00000000-0000-0000-0000-000000000007/v3.json"));
            let back = Content::from_columns(None, Some(reference)).unwrap();
            assert_eq!(
                back.resolve(&mut ContentReader::local()).await.unwrap(),
                big
            );

            let nul = c.encode(id, 5, r#"{"a":"\u0000"}"#.into()).await.unwrap();
            assert!(
                nul.doc.is_none() && nul.doc_ref.is_some(),
                "JSONB cannot hold NUL: the large store"
            );

            let pg = ContentCodec::new(ContentOptions::default(), LargeStore::Postgres);
            let huge = format!(r#"{{"content":"{}"}}"#, "y".repeat(1 << 20));
            let stored = pg.encode(id, 6, huge.clone()).await.unwrap();
            assert_eq!(
                stored.doc_ref.as_deref(),
                Some("postgres:large_docs/blobs/00000000-0000-0000-0000-000000000007/v6.json")
            );
            assert_eq!(stored.large_doc.as_deref(), Some(huge.as_str()));
            assert!(stored.doc.is_none());
        });
    }

    #[test]
    fn legacy_lz4_documents_inflate() {
        let json = r#"{"content":"hello hello hello hello"}"#;
        let packed = lz4_flex::compress_prepend_size(json.as_bytes());
        assert_eq!(inflate_legacy_lz4(&packed).unwrap(), json);
    }
}
