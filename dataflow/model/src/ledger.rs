//! [`BlobLedger`]: one blob's state and the rules that move it (SPEC S3, S4).
//!
//! A ledger takes the deltas of its blob in log order ([`BlobLedger::offer`]) and
//! applies each one whose version is the current version + 1. A delta that is ahead
//! waits in `pending` until the gap is filled; deltas that wait for the same version are
//! tried in log order and the first that applies wins (S4.3). Every rejection becomes a
//! dead letter and leaves the blob as it was (S4.5).
//!
//! `revert` needs old documents, so the ledger keeps one [`Step`] per version: the
//! initial document, each patch, each delete and each revert, plus a snapshot of the
//! document every [`SNAPSHOT_EVERY`] versions. The document at version `k` is rebuilt
//! by walking back from `k` (following reverts) to the create or to a snapshot, and
//! replaying the patches on the way: a revert costs at most `SNAPSHOT_EVERY` patch
//! applications however long the history. The texts themselves live in the fold's
//! [`History`] (a spill file in the dataflow), the ledger holds 12-byte references.
//!
//! The document is a `Value` the ledger owns and patches in place; the row it emits
//! carries the document's text ([`Doc`]), written once per change.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use uuid::Uuid;

use crate::history::{History, TextRef};
use crate::parse::MAX_JSON_DEPTH;
use crate::provider::{BlobFacts, Settled};
use crate::{
    AppliedRow, BlobRow, DeadLetter, Delta, Doc, Operation, PatchFormat, ProcessedRow, Reason,
    Timestamp, WaitingRow,
};

/// What offering deltas to ledgers produced, accumulated across ledgers.
#[derive(Debug, Default)]
pub struct Effects {
    /// Accepted deltas, in the order they were accepted.
    pub applied: Vec<AppliedRow>,
    /// Rejected deltas.
    pub dead_letters: Vec<DeadLetter>,
    /// Edges the accepted deltas propose (S3.1 `parent_id`, S3.6 `child_ids`), in the
    /// order they were accepted; the DAG's cycle guard decides on them (S5.1).
    pub edges: Vec<EdgeProposal>,
    /// Blobs created, with their owners: a blob exists from its create on (a soft
    /// delete keeps it), so this only grows.
    pub created: Vec<(Uuid, Uuid)>,
    /// Provider outputs that settle their requests (S5.4), from ledgers that track
    /// trigger facts ([`BlobLedger::tracking_facts`]).
    pub settled: Vec<Settled>,
    /// Deltas that started (`+1`) or stopped (`-1`) waiting for a gap (S4.1): the
    /// service stores them so that a restart does not lose them.
    pub waiting: Vec<(WaitingRow, isize)>,
}

/// An edge an accepted delta adds to the blob DAG, before the cycle guard sees it.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct EdgeProposal {
    /// The blob derived from.
    pub parent: Uuid,
    /// The derived blob.
    pub child: Uuid,
    /// The delta that proposes it.
    pub delta_id: Uuid,
}

impl Effects {
    fn reject(&mut self, delta: Delta, reason: Reason) {
        self.dead_letters.push(DeadLetter {
            pos: delta.pos,
            delta_id: Some(delta.id),
            blob_id: Some(delta.blob_id),
            reason,
            raw: delta.raw.as_bytes().to_vec(),
        });
    }
}

/// One entry of a blob's history: enough to rebuild the document at that version.
#[derive(Clone, Debug)]
enum Step {
    /// The create's document, as JSON text.
    Create(TextRef),
    /// A patch that applied.
    Patch(PatchFormat, TextRef),
    /// A transform without a patch: the document did not change.
    Unchanged,
    /// A soft delete.
    Delete,
    /// A revert to this version.
    Revert(u64),
}

/// The live state of a created blob (SPEC S2).
#[derive(Clone, Debug)]
struct BlobState {
    blob_id: Uuid,
    user_id: Uuid,
    version: u64,
    /// The document, owned: rows carry its text ([`Doc`]), never the value.
    doc: Value,
    /// `doc` as text, written when a row first needs it after a change.
    doc_text: OnceCell<Doc>,
    content_type: String,
    parent_id: Option<Uuid>,
    processed_by: BTreeMap<String, (u64, Uuid)>,
    created_at: Timestamp,
    updated_at: Timestamp,
    deleted_at: Option<Timestamp>,
    /// The version the delete made, while deleted.
    deleted_version: Option<u64>,
    /// The latest change, for triggers (kept only by ledgers that track facts).
    last: Option<LastChange>,
    /// The provider whose output created the blob.
    created_by: Option<String>,
    /// `history[v - 1]` made version `v`.
    history: Vec<Step>,
    /// `snapshots[i]` is the document at version `(i + 1) * SNAPSHOT_EVERY`.
    snapshots: Vec<TextRef>,
}

/// What triggers need to know of a blob's latest accepted delta (S5.4).
#[derive(Clone, Debug)]
struct LastChange {
    operation: Operation,
    delta_id: Uuid,
    user_id: Uuid,
    provider: Option<String>,
    metadata_keys: Vec<String>,
}

/// One blob's state, its waiting deltas, and what was last emitted for it.
#[derive(Debug, Default)]
pub struct BlobLedger {
    /// Keep [`BlobFacts`] for the provider triggers.
    track_facts: bool,
    /// Where the texts of this blob's history are kept (shared by a fold's ledgers).
    history: History,
    /// Boxed: ledgers live in a hash map, which moves them when it grows.
    state: Option<Box<BlobState>>,
    /// Deltas ahead of the current version, by version, each list in log order.
    pending: BTreeMap<u64, Vec<Delta>>,
    /// The `blobs` row last emitted, to retract it when the blob changes.
    emitted_row: Option<BlobRow>,
    /// The `processed_by` rows last emitted.
    emitted_processed: BTreeMap<String, (u64, Uuid)>,
    /// Changed since the last [`BlobLedger::flush`].
    dirty: bool,
}

/// A snapshot of the document is kept every this many versions, for `revert`.
pub const SNAPSHOT_EVERY: u64 = 32;

/// Content type of a create without `metadata.content_type` (S3.1).
pub const DEFAULT_CONTENT_TYPE: &str = "application/json";

impl BlobLedger {
    /// A ledger that also keeps what provider triggers need ([`BlobLedger::facts`],
    /// [`Effects::settled`]); plain replays skip that work.
    pub fn tracking_facts() -> Self {
        BlobLedger {
            track_facts: true,
            ..BlobLedger::default()
        }
    }

    /// A ledger that keeps its history in `history` (shared with the other ledgers of a
    /// fold), and the trigger facts when `track_facts`.
    pub fn new(history: History, track_facts: bool) -> Self {
        BlobLedger {
            track_facts,
            history,
            ..BlobLedger::default()
        }
    }

    /// The blob's row and latest change, for triggers: `None` before the create or
    /// when this ledger does not track facts.
    pub fn facts(&self) -> Option<BlobFacts> {
        let state = self.state.as_ref()?;
        let last = state.last.as_ref()?;
        Some(BlobFacts {
            row: state.row(),
            last_operation: last.operation,
            last_delta_id: last.delta_id,
            last_user_id: last.user_id,
            last_provider: last.provider.clone(),
            last_metadata_keys: last.metadata_keys.clone(),
            created_by: state.created_by.clone(),
        })
    }

    /// The current version (0 before the create).
    pub fn version(&self) -> u64 {
        self.state.as_ref().map_or(0, |s| s.version)
    }

    /// Number of deltas waiting for a gap to fill.
    pub fn pending_len(&self) -> usize {
        self.pending.values().map(Vec::len).sum()
    }

    /// Takes one delta of this blob. Deltas must be offered in log order; duplicates
    /// (S4.2) must already be removed.
    pub fn offer(&mut self, delta: Delta, fx: &mut Effects) {
        let current = self.version();
        if delta.operation == Operation::Create && delta.version != 1 {
            let version = delta.version;
            return fx.reject(delta, Reason::CreateVersion { version });
        }
        if delta.version <= current {
            let version = delta.version;
            return fx.reject(delta, Reason::VersionConflict { version });
        }
        if delta.operation != Operation::Create && delta.version == 1 {
            let operation = delta.operation;
            return fx.reject(delta, Reason::NotCreated { operation });
        }
        if delta.version > current + 1 {
            // Offered in log order, so pushing keeps each list in log order.
            fx.waiting.push((WaitingRow::of(&delta), 1));
            self.pending.entry(delta.version).or_default().push(delta);
            return;
        }
        if self.try_apply(delta, fx) {
            self.drain_pending(fx);
        }
    }

    /// Rejects every waiting delta as a gap that was never filled (S4.4): at the end
    /// of a bounded replay, or when the pending timeout expires.
    pub fn expire_pending(&mut self, fx: &mut Effects) {
        let current = self.version();
        for (version, waiting) in std::mem::take(&mut self.pending) {
            for delta in waiting {
                fx.waiting.push((WaitingRow::of(&delta), -1));
                fx.reject(delta, Reason::VersionGap { current, version });
            }
        }
    }

    /// Emits the net change of this blob's view rows since the last flush, as
    /// `(row, diff)` pairs: a retraction of the old row and the new row.
    pub fn flush(
        &mut self,
        blobs: &mut Vec<(BlobRow, isize)>,
        processed: &mut Vec<(ProcessedRow, isize)>,
    ) {
        if !std::mem::take(&mut self.dirty) {
            return;
        }
        let Some(state) = &self.state else { return };
        // Every accepted delta raises the version, so a dirty blob's row always differs.
        let row = state.row();
        if let Some(old) = self.emitted_row.replace(row.clone()) {
            blobs.push((old, -1));
        }
        blobs.push((row, 1));
        if self.emitted_processed != state.processed_by {
            let to_row =
                |(provider_id, (version, delta_id)): (&String, &(u64, Uuid))| ProcessedRow {
                    blob_id: state.blob_id,
                    provider_id: provider_id.clone(),
                    version: *version,
                    delta_id: *delta_id,
                };
            for old in &self.emitted_processed {
                if state.processed_by.get(old.0) != Some(old.1) {
                    processed.push((to_row(old), -1));
                }
            }
            for new in &state.processed_by {
                if self.emitted_processed.get(new.0) != Some(new.1) {
                    processed.push((to_row(new), 1));
                }
            }
            self.emitted_processed = state.processed_by.clone();
        }
    }

    /// Applies the deltas that waited for the versions now reached.
    fn drain_pending(&mut self, fx: &mut Effects) {
        loop {
            let next = self.version() + 1;
            let Some(candidates) = self.pending.remove(&next) else {
                return;
            };
            let mut won = false;
            for delta in candidates {
                fx.waiting.push((WaitingRow::of(&delta), -1));
                if won {
                    fx.reject(delta, Reason::VersionConflict { version: next });
                } else {
                    won = self.try_apply(delta, fx);
                }
            }
            if !won {
                return;
            }
        }
    }

    /// Applies a delta whose version is current + 1; false (and a dead letter) when a
    /// rule refuses it.
    fn try_apply(&mut self, delta: Delta, fx: &mut Effects) -> bool {
        match self.apply(&delta) {
            Ok(()) => {
                self.dirty = true;
                if delta.operation == Operation::Create {
                    fx.created.push((delta.blob_id, delta.user_id));
                }
                if self.track_facts {
                    self.track(&delta, fx);
                }
                let parent = delta
                    .parent_id
                    .filter(|_| delta.operation == Operation::Create);
                fx.edges.extend(
                    parent
                        .map(|p| (p, delta.blob_id))
                        .into_iter()
                        .chain(delta.child_ids.iter().map(|&c| (delta.blob_id, c)))
                        .map(|(parent, child)| EdgeProposal {
                            parent,
                            child,
                            delta_id: delta.id,
                        }),
                );
                fx.applied.push(AppliedRow {
                    delta_id: delta.id,
                    blob_id: delta.blob_id,
                    version: delta.version,
                    operation: delta.operation,
                    user_id: delta.user_id,
                    provider_id: delta.provider_id,
                    caused_by: delta.caused_by,
                    created_at: delta.created_at,
                    pos: delta.pos,
                    record: Some(Arc::clone(&delta.raw)),
                });
                true
            }
            Err(reason) => {
                fx.reject(delta, reason);
                false
            }
        }
    }

    /// Records the latest change, and the settlement an output delta carries.
    fn track(&mut self, delta: &Delta, fx: &mut Effects) {
        let Some(state) = self.state.as_mut() else {
            return; // only called after `apply` accepted the delta, so the blob exists
        };
        // Parsed once: for the keys (required_metadata) and for a settlement.
        let metadata = delta
            .metadata_json()
            .and_then(|m| serde_json::from_str::<serde_json::Map<String, Value>>(m).ok());
        let mut metadata_keys: Vec<String> = metadata
            .as_ref()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        metadata_keys.sort();
        if delta.operation == Operation::Create {
            state.created_by = delta.provider_id.clone();
        }
        state.last = Some(LastChange {
            operation: delta.operation,
            delta_id: delta.id,
            user_id: delta.user_id,
            provider: delta.provider_id.clone(),
            metadata_keys,
        });
        fx.settled.extend(Settled::from_output(
            delta.provider_id.as_deref(),
            metadata.as_ref(),
        ));
    }

    fn apply(&mut self, delta: &Delta) -> Result<(), Reason> {
        let op = delta.operation;
        let Some(state) = self.state.as_mut() else {
            // Version 1 of a blob that does not exist: `offer` only lets a create here.
            debug_assert_eq!(op, Operation::Create);
            self.state = Some(Box::new(BlobState::create(delta, &self.history)?));
            return Ok(());
        };
        if state.deleted_at.is_some() && op != Operation::Revert {
            return Err(Reason::Deleted { operation: op });
        }
        let step = match op {
            Operation::Create => unreachable!("offer rejects creates after version 1"),
            Operation::Update | Operation::Transform => match delta.patch_json() {
                None if op == Operation::Update => {
                    return Err(Reason::MissingPatch { operation: op });
                }
                None => Step::Unchanged,
                Some(patch) => {
                    let format = format_of(delta.patch_format, patch);
                    state
                        .patch(format, patch, &self.history)
                        .map_err(|detail| Reason::PatchFailed {
                            operation: op,
                            detail,
                        })?;
                    Step::Patch(format, self.history.append(patch))
                }
            },
            Operation::Delete => {
                state.deleted_at = Some(delta.created_at);
                state.deleted_version = Some(delta.version);
                Step::Delete
            }
            Operation::Revert => {
                let to_version = revert_target(delta.patch_json())?;
                if to_version == 0 || to_version >= state.version {
                    return Err(Reason::RevertRange {
                        to_version,
                        current: state.version,
                    });
                }
                let doc = state
                    .doc_at(to_version, &self.history)
                    .map_err(|detail| Reason::PatchFailed {
                        operation: op,
                        detail,
                    })?;
                state.doc = doc;
                // S3.5: deleted_at is cleared when k predates the delete. A revert
                // never deletes: going back to a version that was deleted only
                // restores its document.
                if state
                    .deleted_version
                    .is_some_and(|deleted| to_version < deleted)
                {
                    state.deleted_at = None;
                    state.deleted_version = None;
                }
                Step::Revert(to_version)
            }
        };
        if op == Operation::Transform
            && let Some(provider) = delta.provider_id.clone()
        {
            // The parser requires provider_id on transform (S3.3).
            state
                .processed_by
                .insert(provider, (delta.version, delta.id));
        }
        state.history.push(step);
        state.doc_text.take();
        if delta.version.is_multiple_of(SNAPSHOT_EVERY) {
            let text = state.text();
            state.snapshots.push(self.history.append(text.as_str()));
        }
        state.version = delta.version;
        state.updated_at = delta.created_at;
        Ok(())
    }
}

impl BlobState {
    /// S3.1. The parser has already checked that the patch is a JSON value Studio can
    /// hold; should it still not read, the create is a dead letter, never a panic.
    fn create(delta: &Delta, history: &History) -> Result<Self, Reason> {
        let text = delta.patch_json().unwrap_or("{}");
        let doc: Value = serde_json::from_str(text)
            .map_err(|e| Reason::Malformed(format!("field \"patch\" is not a JSON value: {e}")))?;
        Ok(BlobState {
            blob_id: delta.blob_id,
            user_id: delta.user_id,
            version: 1,
            history: vec![Step::Create(history.append(text))],
            snapshots: Vec::new(),
            doc,
            doc_text: OnceCell::new(),
            content_type: delta
                .content_type
                .clone()
                .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_owned()),
            parent_id: delta.parent_id,
            processed_by: BTreeMap::new(),
            created_at: delta.created_at,
            updated_at: delta.created_at,
            deleted_at: None,
            deleted_version: None,
            last: None,
            created_by: None,
        })
    }

    /// Patches the document; on failure it is as it was. A patch that nests it too
    /// deep is undone from the history, not by copying every document before a
    /// `copy` or `move`.
    fn patch(&mut self, format: PatchFormat, patch: &str, history: &History) -> Result<(), String> {
        match patch_unchecked(&mut self.doc, format, patch) {
            Ok(()) => Ok(()),
            Err(PatchFailure::Refused(detail)) => Err(detail),
            Err(PatchFailure::TooDeep) => {
                self.doc = self.doc_at(self.version, history)?;
                Err(too_deep())
            }
        }
    }

    /// The document's text, written once per change.
    fn text(&self) -> Doc {
        self.doc_text.get_or_init(|| Doc::of(&self.doc)).clone()
    }

    fn row(&self) -> BlobRow {
        BlobRow {
            blob_id: self.blob_id,
            user_id: self.user_id,
            version: self.version,
            content_type: self.content_type.clone(),
            doc: self.text(),
            parent_id: self.parent_id,
            created_at: self.created_at,
            updated_at: self.updated_at,
            deleted_at: self.deleted_at,
        }
    }

    /// The document as it was at `version` (1 <= version <= self.version). Every step
    /// replayed here applied once, so it applies again; a failure is still reported as
    /// an error (the revert becomes a dead letter), never a panic.
    fn doc_at(&self, version: u64, history: &History) -> Result<Value, String> {
        let mut patches = Vec::new();
        let mut v = version;
        let mut doc = loop {
            if v.is_multiple_of(SNAPSHOT_EVERY) {
                let snapshot = history.read(self.snapshots[(v / SNAPSHOT_EVERY - 1) as usize])?;
                break serde_json::from_str(&snapshot)
                    .map_err(|e| format!("a snapshot could not be read back: {e}"))?;
            }
            match &self.history[(v - 1) as usize] {
                Step::Create(doc) => {
                    break serde_json::from_str(&history.read(*doc)?)
                        .map_err(|e| format!("version 1 could not be read back: {e}"))?;
                }
                Step::Patch(format, patch) => {
                    patches.push((*format, history.read(*patch)?));
                    v -= 1;
                }
                Step::Unchanged | Step::Delete => v -= 1,
                Step::Revert(to) => v = *to,
            }
        };
        for (format, patch) in patches.into_iter().rev() {
            patch_unchecked(&mut doc, format, &patch)
                .map_err(|e| format!("a patch of the history did not apply again: {e}"))?;
        }
        Ok(doc)
    }
}

/// S3.2: an array is a JSON Patch, anything else a merge patch, unless
/// `metadata.patch_format` says otherwise.
fn format_of(declared: Option<PatchFormat>, patch: &str) -> PatchFormat {
    declared.unwrap_or(if patch.starts_with('[') {
        PatchFormat::JsonPatch
    } else {
        PatchFormat::MergePatch
    })
}

/// Applies a patch in place; a JSON Patch is all-or-nothing (the document is left as
/// it was when any operation fails).
pub fn apply_patch(doc: &mut Value, format: PatchFormat, patch: &str) -> Result<(), String> {
    // `copy` and `move` take their value from the document, so only the result tells
    // how deep it nests: keep the document to restore it.
    let before = (format == PatchFormat::JsonPatch && copies(patch)).then(|| doc.clone());
    patch_unchecked(doc, format, patch).map_err(|failure| {
        if let (PatchFailure::TooDeep, Some(before)) = (&failure, before) {
            *doc = before;
        }
        failure.to_string()
    })
}

/// Why a patch did not apply.
#[derive(Debug)]
enum PatchFailure {
    /// The document was left as it was.
    Refused(String),
    /// A `copy` or `move` nested the document past [`MAX_JSON_DEPTH`]: the document was
    /// patched and the caller must restore it.
    TooDeep,
}

impl std::fmt::Display for PatchFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PatchFailure::Refused(detail) => f.write_str(detail),
            PatchFailure::TooDeep => f.write_str(&too_deep()),
        }
    }
}

/// Whether a JSON Patch's text may hold a `copy` or `move` (a cheap over-estimate).
fn copies(patch: &str) -> bool {
    patch.contains("copy") || patch.contains("move")
}

/// Applies a patch in place, leaving the document as it was on every failure except
/// [`PatchFailure::TooDeep`].
fn patch_unchecked(doc: &mut Value, format: PatchFormat, patch: &str) -> Result<(), PatchFailure> {
    let refused = |e: String| PatchFailure::Refused(e);
    match format {
        PatchFormat::JsonPatch => {
            let ops: json_patch::Patch = serde_json::from_str(patch)
                .map_err(|e| refused(format!("not a valid RFC 6902 JSON Patch: {e}")))?;
            check_nesting(&ops).map_err(refused)?;
            match json_patch::patch(doc, &ops) {
                Ok(()) => {}
                // `json_patch` compares `test` values with `Value` equality, where 1 and
                // 1.0 differ; RFC 6902 section 4.6 compares numbers by value. Only a
                // failed patch with a numeric `test` pays for the slower path.
                Err(e) if has_numeric_test(&ops) => patch_comparing_numbers(doc, &ops)
                    .map_err(|_| refused(e.to_string()))?,
                Err(e) => return Err(refused(e.to_string())),
            }
            let copied = ops.0.iter().any(|op| {
                matches!(
                    op,
                    json_patch::PatchOperation::Copy(_) | json_patch::PatchOperation::Move(_)
                )
            });
            if copied && nesting(doc) > MAX_JSON_DEPTH {
                return Err(PatchFailure::TooDeep);
            }
            Ok(())
        }
        PatchFormat::MergePatch => {
            let patch: Value = serde_json::from_str(patch).map_err(|e| refused(e.to_string()))?;
            json_patch::merge(doc, &patch);
            Ok(())
        }
    }
}

/// How many arrays and objects nest in a value (a scalar: 0), as serde_json counts
/// against its recursion limit.
pub fn nesting(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(nesting).max().unwrap_or(0),
        Value::Object(members) => 1 + members.values().map(nesting).max().unwrap_or(0),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => 0,
    }
}

fn too_deep() -> String {
    format!("the document would nest deeper than {MAX_JSON_DEPTH} levels")
}

/// A value that `add`, `replace` or `test` puts at a path of `k` tokens nests `k` levels
/// down: the document stays within [`MAX_JSON_DEPTH`] (a merge patch cannot deepen a
/// document beyond the patch's own nesting, which the parser bounds).
fn check_nesting(ops: &json_patch::Patch) -> Result<(), String> {
    use json_patch::PatchOperation as Op;
    for op in &ops.0 {
        let (path, value) = match op {
            Op::Add(a) => (a.path.as_str(), &a.value),
            Op::Replace(r) => (r.path.as_str(), &r.value),
            _ => continue,
        };
        if path.matches('/').count() + nesting(value) > MAX_JSON_DEPTH {
            return Err(too_deep());
        }
    }
    Ok(())
}

fn has_numeric_test(ops: &json_patch::Patch) -> bool {
    fn has_number(v: &Value) -> bool {
        match v {
            Value::Number(_) => true,
            Value::Array(items) => items.iter().any(has_number),
            Value::Object(members) => members.values().any(has_number),
            _ => false,
        }
    }
    ops.0
        .iter()
        .any(|op| matches!(op, json_patch::PatchOperation::Test(t) if has_number(&t.value)))
}

/// Applies `ops` one at a time on a copy, evaluating `test` with numbers compared by
/// value; the document changes only if every operation succeeds.
fn patch_comparing_numbers(doc: &mut Value, ops: &json_patch::Patch) -> Result<(), ()> {
    let mut copy = doc.clone();
    for op in &ops.0 {
        match op {
            json_patch::PatchOperation::Test(t) => {
                let actual = copy.pointer(t.path.as_str()).ok_or(())?;
                if !json_equal(actual, &t.value) {
                    return Err(());
                }
            }
            other => json_patch::patch(&mut copy, std::slice::from_ref(other)).map_err(|_| ())?,
        }
    }
    *doc = copy;
    Ok(())
}

/// JSON equality as RFC 6902 section 4.6 defines it: numbers equal by value.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(i), Some(j), _, _) => i == j,
                (_, _, Some(i), Some(j)) => i == j,
                _ => x.as_f64() == y.as_f64(),
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

/// Reads `{"to_version": k}`; no other member is allowed.
fn revert_target(patch: Option<&str>) -> Result<u64, Reason> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Revert {
        to_version: u64,
    }
    let text = patch.ok_or(Reason::RevertShape)?;
    if !text.starts_with('{') {
        return Err(Reason::RevertShape);
    }
    serde_json::from_str::<Revert>(text)
        .map(|r| r.to_version)
        .map_err(|_| Reason::RevertShape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SourcePos, parse_record};

    fn delta(n: u64, version: u64, op: &str, patch: &str) -> Delta {
        let line = format!(
            r#"{{"id":"00000000-0000-4000-8000-{n:012}","blob_id":"00000000-0000-4000-8000-0000000000b1","user_id":"00000000-0000-4000-8000-0000000000a1","operation":"{op}","version":{version},"created_at":"2026-01-01T00:00:00Z"{patch}}}"#
        );
        parse_record(line.as_bytes(), SourcePos::at(n)).unwrap()
    }

    /// Reverts across snapshot boundaries, to snapshots, to versions made by reverts,
    /// must give exactly the document each version had when it was made.
    #[test]
    fn long_histories_revert_through_snapshots() {
        let mut ledger = BlobLedger::default();
        let mut fx = Effects::default();
        let (mut rows, mut processed) = (Vec::new(), Vec::new());
        let mut seen: Vec<String> = vec![String::new()]; // seen[v] = doc text at version v
        ledger.offer(
            delta(1, 1, "create", r#","patch":{"n":0,"log":[]}"#),
            &mut fx,
        );
        let mut record = |ledger: &mut BlobLedger, seen: &mut Vec<String>| {
            ledger.flush(&mut rows, &mut processed);
            let row = &rows.last().unwrap().0;
            assert_eq!(row.version as usize, seen.len());
            seen.push(row.doc.to_json());
        };
        record(&mut ledger, &mut seen);
        for v in 2..=150u64 {
            let (op, patch) = match v % 7 {
                0 => (
                    "revert",
                    format!(r#","patch":{{"to_version":{}}}"#, (v * 31) % (v - 1) + 1),
                ),
                1 | 4 => (
                    "update",
                    format!(r#","patch":[{{"op":"add","path":"/log/-","value":{v}}}]"#),
                ),
                _ => ("update", format!(r#","patch":{{"n":{v}}}"#)),
            };
            ledger.offer(delta(v, v, op, &patch), &mut fx);
            assert!(fx.dead_letters.is_empty(), "{:?}", fx.dead_letters);
            record(&mut ledger, &mut seen);
            if op == "revert" {
                let to = (v * 31) % (v - 1) + 1;
                assert_eq!(
                    seen[v as usize], seen[to as usize],
                    "v{v} reverted to v{to}"
                );
            }
        }
        let state = ledger.state.as_ref().unwrap();
        assert_eq!(state.snapshots.len(), 150 / SNAPSHOT_EVERY as usize);
        for k in 1..=150u64 {
            assert_eq!(
                state.doc_at(k, &ledger.history).unwrap().to_string(),
                seen[k as usize],
                "doc_at({k})"
            );
        }
    }

    /// A stored document reads back as the same value: numbers included (serde_json's
    /// `float_roundtrip`; the fuzz target found a 61-digit integer that read back as
    /// another float without it).
    #[test]
    fn documents_read_back_exactly() {
        let mut ledger = BlobLedger::default();
        let mut fx = Effects::default();
        let patch = r#","patch":{"a":2222222222222222222222222222222222222222222222222222222222220,"b":2.2222222222222223e60,"c":0.30000000000000004,"d":-0}"#;
        ledger.offer(delta(1, 1, "create", patch), &mut fx);
        let (mut rows, mut processed) = (Vec::new(), Vec::new());
        ledger.flush(&mut rows, &mut processed);
        let doc = &rows[0].0.doc.value();
        let text = serde_json::to_string(doc).unwrap();
        assert_eq!(&serde_json::from_str::<Value>(&text).unwrap(), doc);
        assert_eq!(doc["b"].as_f64(), Some(2.2222222222222223e60));
    }

    /// A JSON Patch that would nest the document past 127 levels is a dead letter and
    /// leaves the document as it was.
    #[test]
    fn a_json_patch_may_not_nest_past_the_limit() {
        let mut ledger = BlobLedger::default();
        let mut fx = Effects::default();
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        ledger.offer(
            delta(
                1,
                1,
                "create",
                &format!(r#","patch":{{"d":{}}}"#, deep(100)),
            ),
            &mut fx,
        );
        // The value nests 30 levels at a path of 101 tokens: 131 in all.
        let add = format!(
            r#","patch":[{{"op":"add","path":"/d{}","value":{}}}]"#,
            "/0".repeat(100),
            deep(30)
        );
        ledger.offer(delta(2, 2, "update", &add), &mut fx);
        let copy = format!(
            r#","patch":[{{"op":"copy","from":"","path":"/d{}"}}]"#,
            "/0".repeat(100)
        );
        ledger.offer(delta(3, 2, "update", &copy), &mut fx);
        assert_eq!(fx.dead_letters.len(), 2);
        for letter in &fx.dead_letters {
            assert!(
                letter.reason.to_string().contains("deeper than 127"),
                "{}",
                letter.reason
            );
        }
        assert_eq!(ledger.version(), 1);
        let ok = format!(
            r#","patch":[{{"op":"add","path":"/e","value":{}}}]"#,
            deep(125)
        );
        ledger.offer(delta(4, 2, "update", &ok), &mut fx);
        assert_eq!(ledger.version(), 2);
    }
}
