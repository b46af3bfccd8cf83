//! Blob content: how a document is stored, one rule for every view store.
//!
//! A document is the compact JSON of [`BlobRow::doc`](studio_model::BlobRow). The sinks
//! ask [`ContentCodec::encode`] how to store it and write the answer into four columns
//! of `blobs` (exactly one of the first three is set):
//!
//! | column | holds |
//! |---|---|
//! | `doc` | the JSON itself (JSONB in Postgres, TEXT in SQLite) |
//! | `doc_lz4` | the JSON compressed with LZ4 (`lz4_flex` block, size-prepended) |
//! | `doc_ref` | where a large document lives: `s3://BUCKET/KEY` or `file:///PATH` |
//! | `doc_bytes` | the length of the JSON, however it is stored |
//!
//! The rule ([`ContentOptions`]): a document of `large_min_bytes` or more goes to the
//! large store ([`LargeStore`]: a local directory, or S3 with the `s3` feature) under a
//! versioned key, `blobs/{blob_id}/v{version}.json`, so an update writes a new object
//! and the older versions stay readable. A smaller one is compressed with LZ4 when
//! `compress` is on and that makes it smaller; otherwise it is stored as JSON. JSON
//! holding a NUL character (`\u0000`) is never stored as `doc`, because Postgres JSONB
//! cannot hold it: it is compressed instead, whatever the saving.
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
    /// Compress documents below the large threshold with LZ4 when that saves space.
    pub compress: bool,
    /// Documents of this many bytes (compact JSON) or more go to the large store.
    pub large_min_bytes: u64,
}

impl Default for ContentOptions {
    fn default() -> Self {
        ContentOptions {
            compress: true,
            large_min_bytes: 1 << 20,
        }
    }
}

/// How one document is stored: the values of the `doc`, `doc_lz4`, `doc_ref` and
/// `doc_bytes` columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The JSON, when stored as is.
    pub doc: Option<String>,
    /// The LZ4 block, when compressed.
    pub doc_lz4: Option<Vec<u8>>,
    /// The large store's reference, when stored outside the database.
    pub doc_ref: Option<String>,
    /// Length of the JSON in bytes.
    pub doc_bytes: i64,
}

/// The object key of a large document: versioned, so updates never overwrite.
pub fn object_key(blob_id: Uuid, version: u64) -> String {
    format!("blobs/{}/v{version}.json", blob_id.hyphenated())
}

/// Where large documents go.
#[derive(Clone)]
pub enum LargeStore {
    /// A local directory: objects are files under it.
    Dir(PathBuf),
    /// An S3-compatible bucket.
    #[cfg(feature = "s3")]
    S3(s3::S3Store),
}

impl std::fmt::Debug for LargeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LargeStore::Dir(dir) => write!(f, "LargeStore::Dir({})", dir.display()),
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
    /// An S3-compatible bucket.
    #[cfg(feature = "s3")]
    S3(s3::S3Options),
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
        if json.len() as u64 >= self.options.large_min_bytes {
            let doc_ref = self
                .large
                .put(&object_key(blob_id, version), json.into_bytes())
                .await?;
            return Ok(Stored {
                doc: None,
                doc_lz4: None,
                doc_ref: Some(doc_ref),
                doc_bytes,
            });
        }
        let must_compress = json.contains("\\u0000");
        if self.options.compress || must_compress {
            let packed = lz4_flex::compress_prepend_size(json.as_bytes());
            if must_compress || packed.len() < json.len() {
                return Ok(Stored {
                    doc: None,
                    doc_lz4: Some(packed),
                    doc_ref: None,
                    doc_bytes,
                });
            }
        }
        Ok(Stored {
            doc: Some(json),
            doc_lz4: None,
            doc_ref: None,
            doc_bytes,
        })
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

/// The `doc`, `doc_lz4` and `doc_ref` columns as read.
pub type ContentColumns = (Option<String>, Option<Vec<u8>>, Option<String>);

/// A document as read back from the three columns.
#[derive(Clone, Debug)]
pub enum Content {
    /// Stored as JSON.
    Json(String),
    /// Stored compressed.
    Lz4(Vec<u8>),
    /// Stored in a large store, by reference.
    Ref(String),
}

impl Content {
    /// From the `doc`, `doc_lz4` and `doc_ref` columns; `None` when all are NULL.
    pub fn from_columns(
        doc: Option<String>,
        doc_lz4: Option<Vec<u8>>,
        doc_ref: Option<String>,
    ) -> Option<Content> {
        doc.map(Content::Json)
            .or(doc_lz4.map(Content::Lz4))
            .or(doc_ref.map(Content::Ref))
    }

    /// The document's JSON, fetching it from the large store when needed.
    pub async fn resolve(self, reader: &mut ContentReader) -> Result<String, SinkError> {
        let bytes = match self {
            Content::Json(json) => return Ok(json),
            Content::Lz4(packed) => {
                lz4_flex::decompress_size_prepended(&packed).map_err(|e| SinkError::Database {
                    context: "decompressing a document".into(),
                    source: Box::new(e),
                })?
            }
            Content::Ref(reference) => reader.fetch(&reference).await?,
        };
        String::from_utf8(bytes).map_err(|e| SinkError::Database {
            context: "a stored document is not UTF-8".into(),
            source: Box::new(e),
        })
    }
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

    fn codec(dir: &Path, compress: bool, large: u64) -> ContentCodec {
        ContentCodec::new(
            ContentOptions {
                compress,
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
    fn small_compressible_large_and_nul_documents() {
        let dir = tempfile::tempdir().unwrap();
        let id = Uuid::from_u128(7);
        run(async {
            let c = codec(dir.path(), true, 1000);
            let tiny = c.encode(id, 1, r#"{"a":1}"#.into()).await.unwrap();
            assert_eq!(tiny.doc.as_deref(), Some(r#"{"a":1}"#), "no saving: JSON");
            let text = format!(r#"{{"content":"{}"}}"#, "the quick fox ".repeat(40));
            let packed = c.encode(id, 2, text.clone()).await.unwrap();
            assert!(packed.doc.is_none() && packed.doc_ref.is_none());
            assert!(packed.doc_lz4.as_ref().unwrap().len() < text.len());
            assert_eq!(packed.doc_bytes, text.len() as i64);
            let back = Content::from_columns(None, packed.doc_lz4, None).unwrap();
            assert_eq!(
                back.resolve(&mut ContentReader::local()).await.unwrap(),
                text
            );

            let big = format!(r#"{{"content":"{}"}}"#, "x".repeat(2000));
            let stored = c.encode(id, 3, big.clone()).await.unwrap();
            let reference = stored.doc_ref.clone().unwrap();
            assert!(reference.ends_with("/blobs/00000000-0000-0000-0000-000000000007/v3.json"));
            let back = Content::from_columns(None, None, Some(reference)).unwrap();
            assert_eq!(
                back.resolve(&mut ContentReader::local()).await.unwrap(),
                big
            );

            let off = codec(dir.path(), false, 1000);
            let plain = off.encode(id, 4, text.clone()).await.unwrap();
            assert_eq!(plain.doc.as_deref(), Some(text.as_str()));
            let nul = off.encode(id, 5, r#"{"a":"\u0000"}"#.into()).await.unwrap();
            assert!(
                nul.doc.is_none() && nul.doc_lz4.is_some(),
                "JSONB cannot hold NUL"
            );
        });
    }
}
