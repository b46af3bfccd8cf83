//! Providers and their triggers (SPEC S5.3–S5.7), with no dataflow and no I/O.
//!
//! - [`Provider`]: the seed's definition (events, blob types, processing rules, config,
//!   version) plus what it reads (`reads`, JSON pointers) and its runtime settings.
//! - [`BlobFacts`]: what a trigger is decided on: a blob's row and its latest change.
//! - [`Provider::trigger`]: the rule of S5.4 for one (provider, blob) pair, giving the
//!   [`TransformRequest`] that is pending, if any. What P "has processed" are the
//!   [`Fingerprint`]s of its latest processing of the blob (what it read, and what it
//!   reads after its own output): a request settles when the provider's output is
//!   accepted (the output carries the fingerprints in its metadata, see
//!   [`OUTPUT_METADATA_KEYS`]) or when the worker reports that there was nothing to
//!   write or that every attempt failed. A blob whose latest change is P's own output
//!   never triggers P either.
//! - Stable identifiers: request ids are UUID v5 of (provider, blob, version,
//!   fingerprint); the ids of output deltas are UUID v5 of (request, target blob,
//!   target version), so a retry of the same output is a duplicate (S4.2) while an
//!   output rebuilt on a newer version of its target is a new delta.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{BlobRow, Doc, Operation, Timestamp};

/// The namespace of Studio's UUID v5 identifiers.
pub const STUDIO_NAMESPACE: Uuid = Uuid::from_u128(0x5f0d_1c3e_8a47_4b5e_9c1a_57ad_10b1_0b00);

/// Metadata keys a provider's output delta carries so that it settles its request:
/// `request_id`, `source_blob_id`, `fingerprint`, and `output_fingerprint` when the
/// output changes the blob it read (besides the reserved `source_version`).
pub const OUTPUT_METADATA_KEYS: [&str; 4] = [
    "request_id",
    "source_blob_id",
    "fingerprint",
    "output_fingerprint",
];

/// The events a provider subscribes to (S5.8). Only changes of a live blob trigger.
pub const EVENT_CREATED: &str = "blob.created";
/// See [`EVENT_CREATED`].
pub const EVENT_UPDATED: &str = "blob.updated";

/// Provider definitions (the config's `[[providers]]` tables) that cannot be read.
/// The message starts as the config's own errors do: these tables are configuration.
#[derive(Debug, thiserror::Error)]
pub enum InvalidProvider {
    /// A table does not fit [`Provider`].
    #[error("invalid configuration: provider {id}: {error}")]
    Fields {
        /// The table's `id`, quoted, or its place (`#1` is the first) when it has none.
        id: String,
        /// What does not fit (not a `#[source]`: the message already holds it).
        error: serde_json::Error,
    },
    /// A provider without an id.
    #[error("invalid configuration: a provider has an empty id")]
    EmptyId,
    /// Two providers with one id.
    #[error("invalid configuration: provider {0:?} is defined twice")]
    Twice(String),
}

impl Provider {
    /// Reads providers from their definitions' fields (the config's `[[providers]]`
    /// tables), in order; refuses a table that does not fit, an empty id, and an id
    /// defined twice.
    pub fn from_tables<'a>(
        tables: impl IntoIterator<Item = &'a serde_json::Map<String, Value>>,
    ) -> Result<Vec<Provider>, InvalidProvider> {
        let mut providers: Vec<Provider> = Vec::new();
        for (place, table) in tables.into_iter().enumerate() {
            let provider =
                Provider::deserialize(Value::Object(table.clone())).map_err(|error| {
                    let id = match table.get("id").and_then(Value::as_str) {
                        Some(id) => format!("{id:?}"),
                        None => format!("#{}", place + 1),
                    };
                    InvalidProvider::Fields { id, error }
                })?;
            if provider.id.is_empty() {
                return Err(InvalidProvider::EmptyId);
            }
            if providers.iter().any(|p| p.id == provider.id) {
                return Err(InvalidProvider::Twice(provider.id));
            }
            providers.push(provider);
        }
        Ok(providers)
    }
}

/// A blob processor (S5.3): the seed's `Provider`, plus `reads` and runtime settings.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// Unique id; output deltas carry it as `provider_id`.
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// The events that trigger it: `blob.created`, `blob.updated` (default: both).
    #[serde(default = "default_events")]
    pub events: Vec<String>,
    /// Content types it processes (`text/*` and `*` allowed; empty: any).
    #[serde(default)]
    pub blob_types: Vec<String>,
    /// Settings for its implementation (e.g. the content expander's `base_url`).
    #[serde(default = "empty_object", with = "doc_value")]
    pub config: Doc,
    /// The seed's processing rules (`rules` is accepted as an alias).
    #[serde(default, alias = "rules")]
    pub processing_rules: ProcessingRules,
    /// Its version: a new version processes every blob again (its fingerprints change).
    #[serde(default)]
    pub version: String,
    /// JSON pointers of the parts of a blob it reads (default `/content`).
    #[serde(default = "default_reads")]
    pub reads: Vec<String>,
    /// The built-in implementation that runs it (`grammar-checker`, `content-expander`,
    /// `render-html`); absent: the id, if it names one, else an external worker.
    #[serde(default)]
    pub worker: Option<String>,
    /// Per-attempt timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts before `processing.failed`.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Delay before the second attempt; it doubles up to `backoff_max_ms`.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// The longest delay between attempts.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// An external implementation: a program and its arguments, run as a sandboxed
    /// child process speaking JSON lines (docs/providers.md, "External providers").
    /// Empty: the built-in implementation named by `worker`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// The operating-system limits of the `command`'s process.
    #[serde(default)]
    pub sandbox: SandboxLimits,
}

/// The limits of an external provider's process (`[providers.sandbox]`), enforced by
/// the operating system; the wall-clock limit is the provider's `timeout_ms`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxLimits {
    /// CPU seconds per call (`RLIMIT_CPU`): SIGXCPU past it, SIGKILL a second later.
    #[serde(default = "default_cpu_secs")]
    pub cpu_secs: u64,
    /// Address space per process in MiB (`RLIMIT_AS`): allocations past it fail.
    #[serde(default = "default_address_space_mib")]
    pub address_space_mib: u64,
    /// Bytes of standard output per call; past it the process group is killed.
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: u64,
    /// The environment variables passed on from Studio's environment; every other one
    /// is cleared (`HOME` and `TMPDIR` are set to the call's temporary directory).
    #[serde(default = "default_env_allow")]
    pub env_allow: Vec<String>,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            cpu_secs: default_cpu_secs(),
            address_space_mib: default_address_space_mib(),
            max_output_bytes: default_max_output_bytes(),
            env_allow: default_env_allow(),
        }
    }
}

/// The seed's `ProcessingRules`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingRules {
    /// Largest input in bytes (absent or 0: no limit).
    #[serde(default)]
    pub max_input_size: Option<u64>,
    /// Smallest input in bytes.
    #[serde(default)]
    pub min_input_size: u64,
    /// Content types allowed (wildcards as in `blob_types`; empty: any).
    #[serde(default)]
    pub allowed_mime_types: Vec<String>,
    /// Metadata keys the triggering delta must carry.
    #[serde(default)]
    pub required_metadata: Vec<String>,
    /// Process on `blob.updated`.
    #[serde(default = "yes")]
    pub process_on_edit: bool,
    /// Process on `blob.created`.
    #[serde(default = "yes")]
    pub process_on_create: bool,
    /// Concurrency of its worker: `true` (4 at a time), `false` (1), or a number.
    #[serde(default)]
    pub process_in_parallel: Parallelism,
}

impl Default for ProcessingRules {
    fn default() -> Self {
        ProcessingRules {
            max_input_size: None,
            min_input_size: 0,
            allowed_mime_types: Vec::new(),
            required_metadata: Vec::new(),
            process_on_edit: true,
            process_on_create: true,
            process_in_parallel: Parallelism::default(),
        }
    }
}

/// `process_in_parallel`: the seed's boolean, or a bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Parallelism {
    /// `true`: [`Parallelism::PARALLEL`] at a time; `false`: one at a time.
    Flag(bool),
    /// At most this many at a time (0 counts as 1).
    Bound(u32),
}

impl Parallelism {
    /// What `true` means.
    pub const PARALLEL: u32 = 4;

    /// Requests of this provider that may run at once.
    pub fn limit(self) -> u32 {
        match self {
            Parallelism::Flag(true) => Self::PARALLEL,
            Parallelism::Flag(false) => 1,
            Parallelism::Bound(n) => n.max(1),
        }
    }
}

impl Default for Parallelism {
    fn default() -> Self {
        Parallelism::Flag(false)
    }
}

/// A [`Doc`] as the JSON value itself (not as JSON text in a string).
mod doc_value {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    use crate::Doc;

    pub fn serialize<S: Serializer>(doc: &Doc, s: S) -> Result<S::Ok, S::Error> {
        let raw: &serde_json::value::RawValue =
            serde_json::from_str(doc.as_str()).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Doc, D::Error> {
        Value::deserialize(d).map(Doc::new)
    }
}

fn default_events() -> Vec<String> {
    vec![EVENT_CREATED.into(), EVENT_UPDATED.into()]
}
fn default_reads() -> Vec<String> {
    vec!["/content".into()]
}
fn empty_object() -> Doc {
    Doc::new(Value::Object(Default::default()))
}
fn yes() -> bool {
    true
}
fn default_timeout_ms() -> u64 {
    30_000
}
fn default_max_attempts() -> u32 {
    3
}
fn default_backoff_ms() -> u64 {
    200
}
fn default_backoff_max_ms() -> u64 {
    10_000
}
fn default_cpu_secs() -> u64 {
    30
}
fn default_address_space_mib() -> u64 {
    1024
}
fn default_max_output_bytes() -> u64 {
    16 << 20
}
fn default_env_allow() -> Vec<String> {
    ["PATH", "LANG", "LC_ALL", "TZ"].map(String::from).to_vec()
}

/// A blob as triggers see it: its row and its latest accepted change.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlobFacts {
    /// The blob's current row.
    pub row: BlobRow,
    /// The operation of its latest accepted delta.
    pub last_operation: Operation,
    /// That delta's id.
    pub last_delta_id: Uuid,
    /// Who made it.
    pub last_user_id: Uuid,
    /// The provider that made it, if any.
    pub last_provider: Option<String>,
    /// The keys of its `metadata`, sorted.
    pub last_metadata_keys: Vec<String>,
    /// The provider whose output created this blob (a derived blob), if any.
    pub created_by: Option<String>,
}

impl BlobFacts {
    /// The event of the latest change (S5.8), `None` while deleted.
    pub fn event(&self) -> Option<&'static str> {
        if self.row.deleted_at.is_some() {
            return None;
        }
        Some(match self.last_operation {
            Operation::Create => EVENT_CREATED,
            Operation::Update | Operation::Transform | Operation::Revert => EVENT_UPDATED,
            Operation::Delete => return None,
        })
    }

    /// The derived-blob reference this blob is, when a provider created it from a parent.
    pub fn as_derived(&self) -> Option<DerivedRef> {
        Some(DerivedRef {
            source_blob_id: self.row.parent_id?,
            provider_id: self.created_by.clone()?,
            blob_id: self.row.blob_id,
            version: self.row.version,
            doc: self.row.doc.clone(),
            deleted: self.row.deleted_at.is_some(),
        })
    }
}

/// A blob that a provider derived from another (edge source -> blob, made by it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DerivedRef {
    /// The blob it was derived from.
    pub source_blob_id: Uuid,
    /// The provider that derived it.
    pub provider_id: String,
    /// The derived blob.
    pub blob_id: Uuid,
    /// Its current version.
    pub version: u64,
    /// Its current document.
    #[serde(with = "doc_value")]
    pub doc: Doc,
    /// Soft-deleted.
    pub deleted: bool,
}

/// A 128-bit hash of exactly what a provider reads of a blob, and the provider's version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Fingerprint(pub u128);

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u128::from_str_radix(s, 16).map(Fingerprint)
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A pending trigger, as emitted to the requests sink (S5.7).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TransformRequest {
    /// UUID v5 of (provider, blob, version, fingerprint).
    pub request_id: Uuid,
    /// The provider asked.
    pub provider_id: String,
    /// Its version.
    pub provider_version: String,
    /// The blob to process.
    pub blob_id: Uuid,
    /// The version to process.
    pub version: u64,
    /// What the provider reads of it, hashed.
    pub fingerprint: Fingerprint,
    /// The user whose delta triggered it: outputs act with their rights (S6.2).
    pub user_id: Uuid,
    /// The triggering delta (outputs carry it as `caused_by`).
    pub caused_by: Uuid,
    /// The blob's content type.
    pub content_type: String,
    /// The blob's document at `version`.
    #[serde(with = "doc_value")]
    pub doc: Doc,
    /// The blobs this provider derived from this one before (S5.6), to recompute.
    pub derived: Vec<DerivedRef>,
    /// The time of the triggering change (outputs carry it, so replays reproduce).
    pub created_at: Timestamp,
}

/// "P has processed B at this fingerprint": settles pending triggers (S5.4).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Settled {
    /// The provider.
    pub provider_id: String,
    /// The blob it read.
    pub blob_id: Uuid,
    /// What it read.
    pub fingerprint: Fingerprint,
    /// What it reads once its own output applied, when that output changed the blob it
    /// read (a provider writing a part it reads must not be triggered by its output).
    pub output_fingerprint: Option<Fingerprint>,
}

impl Settled {
    /// The settlement an accepted output delta carries in its (parsed) metadata, if it
    /// is one: `source_blob_id` and `fingerprint` present and valid, and
    /// `output_fingerprint` absent, null or valid.
    pub fn from_output(
        provider_id: Option<&str>,
        metadata: Option<&serde_json::Map<String, Value>>,
    ) -> Option<Self> {
        let (provider_id, metadata) = (provider_id?, metadata?);
        let text = |key: &str| metadata.get(key).and_then(Value::as_str);
        let output_fingerprint = match metadata.get("output_fingerprint") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_str()?.parse().ok()?),
        };
        Some(Settled {
            provider_id: provider_id.to_owned(),
            blob_id: text("source_blob_id")?.parse().ok()?,
            fingerprint: text("fingerprint")?.parse().ok()?,
            output_fingerprint,
        })
    }

    /// The fingerprints at which the provider counts as having processed the blob.
    pub fn fingerprints(&self) -> Vec<Fingerprint> {
        std::iter::once(self.fingerprint)
            .chain(self.output_fingerprint)
            .collect()
    }
}

/// How a request ended (S5.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessingStatus {
    /// The provider answered; its outputs (if any) were written as deltas.
    Completed,
    /// Every attempt failed (`processing.failed`).
    Failed,
}

impl ProcessingStatus {
    /// The wire and table name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessingStatus::Completed => "completed",
            ProcessingStatus::Failed => "failed",
        }
    }
}

/// A worker's answer to a request: a row of `processing`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProcessingResult {
    /// The request answered.
    pub request_id: Uuid,
    /// Its provider.
    pub provider_id: String,
    /// Its blob.
    pub blob_id: Uuid,
    /// The version processed.
    pub version: u64,
    /// What was processed.
    pub fingerprint: Fingerprint,
    /// How it ended.
    pub status: ProcessingStatus,
    /// Attempts made (calls to the provider; 0 when the memo answered).
    pub attempts: u32,
    /// Output deltas written.
    pub outputs: u32,
    /// The last error, if any.
    pub error: Option<String>,
    /// When the first attempt started.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Timestamp,
}

impl ProcessingResult {
    /// The settlement this result makes by itself: a failure, or an answer with nothing
    /// to write. An answer with outputs settles when those outputs are accepted, so an
    /// output that lost a race with another delta leaves the trigger pending.
    pub fn settles(&self) -> Option<Settled> {
        (self.outputs == 0 || self.status == ProcessingStatus::Failed).then(|| Settled {
            provider_id: self.provider_id.clone(),
            blob_id: self.blob_id,
            fingerprint: self.fingerprint,
            output_fingerprint: None,
        })
    }
}

/// The `kind` of a processing result on the bus (S5.7): the workers publish each
/// [`ProcessingResult`] as a JSON object with `"kind": "result"` (and `provider_ms`),
/// and the service reads it beside the deltas, told apart by that field as grant
/// records are (S6.4).
pub const RESULT_KIND: &str = "result";

impl ProcessingResult {
    /// Its record on the bus: its fields, `"kind": "result"`, and `provider_ms`, the
    /// time from its first attempt to its end (0 when the memo answered).
    pub fn to_record(&self) -> String {
        let mut fields = serde_json::to_value(self).expect("a result serialises");
        let millis = (self.finished_at.0 - self.started_at.0)
            .num_milliseconds()
            .max(0);
        let object = fields.as_object_mut().expect("a result is an object");
        object.insert("kind".into(), RESULT_KIND.into());
        object.insert("provider_ms".into(), millis.into());
        fields.to_string()
    }

    /// Parses a result record ([`ProcessingResult::to_record`]); the error says what
    /// does not fit.
    pub fn from_record(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(crate::parse::describe_json_error)
    }
}

/// An accepted processing result read from the bus, with its record and log position:
/// a row of `result_log`, which a restart replays (the first result of a request wins;
/// later ones are duplicates, S4.2).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResultLogRow {
    /// The result.
    pub result: ProcessingResult,
    /// Where it was read.
    pub pos: crate::SourcePos,
    /// The record as read.
    pub record: std::sync::Arc<str>,
}

/// Why a provider has no pending trigger on a blob (for tests and diagnostics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoTrigger {
    /// Deleted, or not created.
    NotLive,
    /// Its latest change is not one of the provider's `events`.
    Event,
    /// `process_on_create` / `process_on_edit` say no.
    OnCreateOrEdit,
    /// `blob_types` does not match the content type.
    BlobType,
    /// `allowed_mime_types` does not match the content type.
    MimeType,
    /// The input is smaller than `min_input_size` or larger than `max_input_size`.
    Size,
    /// A `required_metadata` key is missing on the triggering delta.
    Metadata,
    /// The provider already processed what it reads, at its current value.
    Processed,
}

impl Provider {
    /// True when a sandboxed process (`command`) implements this provider.
    pub fn is_external(&self) -> bool {
        !self.command.is_empty()
    }

    /// The implementation that runs this provider: `worker`, else its id.
    pub fn worker_name(&self) -> &str {
        self.worker.as_deref().unwrap_or(&self.id)
    }

    /// The size of what this provider reads of `doc`: the UTF-8 length of strings, the
    /// compact JSON length of other values, 0 for missing parts.
    pub fn input_size(&self, doc: &Value) -> u64 {
        self.reads
            .iter()
            .filter_map(|pointer| doc.pointer(pointer))
            .map(|v| match v {
                Value::String(s) => s.len() as u64,
                other => other.to_string().len() as u64,
            })
            .sum()
    }

    /// The fingerprint of what this provider reads of `doc` (and of its version).
    pub fn fingerprint(&self, doc: &Value) -> Fingerprint {
        let mut h = StableHasher::default();
        h.bytes(self.id.as_bytes());
        h.bytes(self.version.as_bytes());
        for pointer in &self.reads {
            h.bytes(pointer.as_bytes());
            match doc.pointer(pointer) {
                None => h.bytes(b"\x00absent"),
                Some(v) => h.value(v),
            }
        }
        Fingerprint(h.finish())
    }

    /// S5.4: the request pending for this provider on this blob, or why there is none.
    /// `settled` are the fingerprints at which it processed the blob; `derived` the
    /// blobs it derived from it (S5.6).
    pub fn trigger(
        &self,
        facts: &BlobFacts,
        settled: &[Fingerprint],
        derived: &[DerivedRef],
    ) -> Result<TransformRequest, NoTrigger> {
        let event = facts.event().ok_or(NoTrigger::NotLive)?;
        if !self.events.iter().any(|e| e == event) {
            return Err(NoTrigger::Event);
        }
        let rules = &self.processing_rules;
        let allowed = if event == EVENT_CREATED {
            rules.process_on_create
        } else {
            rules.process_on_edit
        };
        if !allowed {
            return Err(NoTrigger::OnCreateOrEdit);
        }
        let content_type = &facts.row.content_type;
        if !type_matches(&self.blob_types, content_type) {
            return Err(NoTrigger::BlobType);
        }
        if !type_matches(&rules.allowed_mime_types, content_type) {
            return Err(NoTrigger::MimeType);
        }
        let doc = &facts.row.doc.value();
        let size = self.input_size(doc);
        let max = rules.max_input_size.filter(|&m| m > 0).unwrap_or(u64::MAX);
        if size < rules.min_input_size || size > max {
            return Err(NoTrigger::Size);
        }
        if !rules
            .required_metadata
            .iter()
            .all(|k| facts.last_metadata_keys.binary_search(k).is_ok())
        {
            return Err(NoTrigger::Metadata);
        }
        let fingerprint = self.fingerprint(doc);
        // Its own latest output counts as processed: a provider never re-triggers itself.
        let own_output = facts.last_provider.as_deref() == Some(self.id.as_str());
        if own_output || settled.contains(&fingerprint) {
            return Err(NoTrigger::Processed);
        }
        let mut derived: Vec<DerivedRef> = derived
            .iter()
            .filter(|d| d.provider_id == self.id)
            .cloned()
            .collect();
        derived.sort();
        Ok(TransformRequest {
            request_id: request_id(&self.id, facts.row.blob_id, facts.row.version, fingerprint),
            provider_id: self.id.clone(),
            provider_version: self.version.clone(),
            blob_id: facts.row.blob_id,
            version: facts.row.version,
            fingerprint,
            user_id: facts.last_user_id,
            caused_by: facts.last_delta_id,
            content_type: content_type.clone(),
            doc: facts.row.doc.clone(),
            derived,
            created_at: facts.row.updated_at,
        })
    }
}

/// True when `content_type` matches one of `patterns` (`*`, `type/*`, exact, case
/// insensitive; parameters after `;` ignored), or `patterns` is empty.
pub fn type_matches(patterns: &[String], content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    patterns.is_empty()
        || patterns.iter().any(|p| {
            let p = p.trim().to_ascii_lowercase();
            p == "*"
                || p == "*/*"
                || p == essence
                || p.strip_suffix("/*")
                    .is_some_and(|major| essence.split_once('/').is_some_and(|(m, _)| m == major))
        })
}

/// The stable id of the request for (provider, blob, version, fingerprint).
pub fn request_id(provider_id: &str, blob_id: Uuid, version: u64, fp: Fingerprint) -> Uuid {
    Uuid::new_v5(
        &STUDIO_NAMESPACE,
        format!("request\n{provider_id}\n{blob_id}\n{version}\n{fp}").as_bytes(),
    )
}

/// The stable id of a request's output delta on `target` at `version`.
pub fn output_delta_id(request_id: Uuid, target: Uuid, version: u64) -> Uuid {
    Uuid::new_v5(
        &STUDIO_NAMESPACE,
        format!("output\n{request_id}\n{target}\n{version}").as_bytes(),
    )
}

/// The id of the blob that `provider_id` derives from `source` (its first output).
pub fn derived_blob_id(provider_id: &str, source: Uuid) -> Uuid {
    Uuid::new_v5(
        &STUDIO_NAMESPACE,
        format!("derived\n{provider_id}\n{source}").as_bytes(),
    )
}

/// FNV-1a over 128 bits, over a canonical walk of JSON (object keys sorted): the same
/// value gives the same fingerprint in every process and version of Studio.
#[derive(Debug)]
struct StableHasher(u128);

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher(0x6c62_272e_07bb_0142_62b8_2175_6295_c58d)
    }
}

impl StableHasher {
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;

    fn byte(&mut self, b: u8) {
        self.0 ^= u128::from(b);
        self.0 = self.0.wrapping_mul(Self::PRIME);
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for &b in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            self.byte(b);
        }
    }

    fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.byte(0),
            Value::Bool(b) => {
                self.byte(1);
                self.byte(u8::from(*b));
            }
            Value::Number(n) => {
                self.byte(2);
                self.bytes(n.to_string().as_bytes());
            }
            Value::String(s) => {
                self.byte(3);
                self.bytes(s.as_bytes());
            }
            Value::Array(items) => {
                self.byte(4);
                self.bytes(&(items.len() as u64).to_le_bytes());
                items.iter().for_each(|i| self.value(i));
            }
            Value::Object(map) => {
                self.byte(5);
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                self.bytes(&(keys.len() as u64).to_le_bytes());
                for k in keys {
                    self.bytes(k.as_bytes());
                    self.value(&map[k]);
                }
            }
        }
    }

    fn finish(&self) -> u128 {
        // A final avalanche so that near inputs give far fingerprints.
        let mut x = self.0;
        x ^= x >> 67;
        x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        x ^= x >> 61;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_become_providers_or_errors_naming_them() {
        let table = |v: Value| match v {
            Value::Object(map) => map,
            _ => unreachable!(),
        };
        let a = table(serde_json::json!({"id": "a", "timeout_ms": 5}));
        let b = table(serde_json::json!({"id": "b"}));
        let providers = Provider::from_tables([&a, &b]).unwrap();
        assert_eq!(providers.len(), 2);
        assert_eq!(
            (providers[0].id.as_str(), providers[0].timeout_ms),
            ("a", 5)
        );

        let err = |tables: &[serde_json::Map<String, Value>]| {
            Provider::from_tables(tables).unwrap_err().to_string()
        };
        let bad = table(serde_json::json!({"id": "x", "timeout_ms": "soon"}));
        let e = err(&[a.clone(), bad]);
        assert!(
            e.starts_with("invalid configuration: provider \"x\": "),
            "{e}"
        );
        assert!(e.contains("invalid type"), "{e}");
        let e = err(&[table(serde_json::json!({"idd": "x"}))]);
        assert!(e.starts_with("invalid configuration: provider #1: "), "{e}");
        assert_eq!(
            err(&[table(serde_json::json!({"id": ""}))]),
            "invalid configuration: a provider has an empty id"
        );
        assert_eq!(
            err(&[a.clone(), b, a]),
            "invalid configuration: provider \"a\" is defined twice"
        );
    }

    #[test]
    fn fingerprints_see_only_what_is_read() {
        let p: Provider = serde_json::from_str(r#"{"id":"g","version":"1"}"#).unwrap();
        let a = serde_json::json!({"content": "hello", "grammar": [1]});
        let b = serde_json::json!({"content": "hello", "grammar": [2], "x": 1});
        let c = serde_json::json!({"content": "hello!"});
        assert_eq!(p.fingerprint(&a), p.fingerprint(&b));
        assert_ne!(p.fingerprint(&a), p.fingerprint(&c));
        let p2: Provider = serde_json::from_str(r#"{"id":"g","version":"2"}"#).unwrap();
        assert_ne!(
            p.fingerprint(&a),
            p2.fingerprint(&a),
            "a new version reprocesses"
        );
        let fp = p.fingerprint(&a);
        assert_eq!(fp.to_string().parse::<Fingerprint>().unwrap(), fp);
    }

    #[test]
    fn type_patterns() {
        let pats = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(type_matches(&[], "anything"));
        assert!(type_matches(
            &pats(&["text/*"]),
            "text/markdown; charset=utf-8"
        ));
        assert!(type_matches(&pats(&["TEXT/PLAIN"]), "text/plain"));
        assert!(!type_matches(&pats(&["text/*"]), "application/json"));
        assert!(!type_matches(&pats(&["text/plain"]), "text/plainer"));
        assert!(type_matches(&pats(&["*"]), "image/png"));
    }

    #[test]
    fn seed_rules_alias_and_parallelism() {
        let p: Provider = serde_json::from_str(
            r#"{"id":"x","rules":{"process_in_parallel":true,"max_input_size":10}}"#,
        )
        .unwrap();
        assert_eq!(p.processing_rules.process_in_parallel.limit(), 4);
        assert_eq!(p.processing_rules.max_input_size, Some(10));
        assert_eq!(p.reads, vec!["/content".to_string()]);
        assert_eq!((p.timeout_ms, p.max_attempts), (30_000, 3));
        let p: Provider =
            serde_json::from_str(r#"{"id":"x","processing_rules":{"process_in_parallel":7}}"#)
                .unwrap();
        assert_eq!(p.processing_rules.process_in_parallel.limit(), 7);
        assert!(serde_json::from_str::<Provider>(r#"{"id":"x","evnts":[]}"#).is_err());
    }
}
