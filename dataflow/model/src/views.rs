//! Rows of the maintained views, as the dataflow emits them and the sinks write them
//! (README "View schema"), and [`ViewBatch`], one completed timestamp's changes.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    DeadLetter, Delta, Doc, Operation, ProcessingResult, SourcePos, Timestamp, TransformRequest,
};

/// A row of `blobs`: the current state of one blob.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlobRow {
    /// The blob.
    pub blob_id: Uuid,
    /// Its owner.
    pub user_id: Uuid,
    /// Current version.
    pub version: u64,
    /// `metadata.content_type` of its create, else `application/json`.
    pub content_type: String,
    /// The document; written as compact JSON with object keys sorted.
    pub doc: Doc,
    /// The blob it was derived from.
    pub parent_id: Option<Uuid>,
    /// `created_at` of its create.
    pub created_at: Timestamp,
    /// `created_at` of its latest accepted delta.
    pub updated_at: Timestamp,
    /// Set while the blob is soft-deleted.
    pub deleted_at: Option<Timestamp>,
}

/// A row of `deltas_applied`: one accepted delta (the `delta.applied` event).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AppliedRow {
    /// The delta.
    pub delta_id: Uuid,
    /// Its blob.
    pub blob_id: Uuid,
    /// The version it made.
    pub version: u64,
    /// Its operation.
    pub operation: Operation,
    /// Who acted.
    pub user_id: Uuid,
    /// The provider that produced it.
    pub provider_id: Option<String>,
    /// The delta that caused it.
    pub caused_by: Option<Uuid>,
    /// When it was written.
    pub created_at: Timestamp,
    /// Where it was read: its place in log order, which recovery replays it in.
    pub pos: SourcePos,
    /// The full delta as read (the delta store's `record`), when the run keeps
    /// records (the service always does; a replay with `--store-records`).
    pub record: Option<Arc<str>>,
}

/// A row of `deltas_waiting`: a delta ahead of its blob's version, waiting for the gap
/// to fill (S4.1). Keyed by `delta_id`; the row goes when the delta applies or becomes
/// a dead letter.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WaitingRow {
    /// The delta.
    pub delta_id: Uuid,
    /// Its blob.
    pub blob_id: Uuid,
    /// The version it would make.
    pub version: u64,
    /// Where it was read.
    pub pos: SourcePos,
    /// The full delta as read.
    pub record: Arc<str>,
}

impl WaitingRow {
    /// The row of a waiting delta.
    pub fn of(delta: &Delta) -> Self {
        WaitingRow {
            delta_id: delta.id,
            blob_id: delta.blob_id,
            version: delta.version,
            pos: delta.pos,
            record: Arc::clone(&delta.raw),
        }
    }
}

/// Where a live source was when a batch was cut: committed with the batch's views, so
/// that the views and the positions move together (effectively-once views).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The source's name (`kafka:TOPIC`, `nats:STREAM`): positions of another source
    /// are never used.
    pub source: String,
    /// The last position read in each partition, everything up to it included.
    pub positions: Vec<SourcePos>,
    /// The next arrival sequence number: records are numbered in the order Studio
    /// read them, across restarts, and that number is their log position.
    pub next_seq: u64,
}

/// A row of `processed_by`: the latest output of a provider on a blob (S3.3).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProcessedRow {
    /// The blob.
    pub blob_id: Uuid,
    /// The provider.
    pub provider_id: String,
    /// The version its transform made.
    pub version: u64,
    /// Its transform delta.
    pub delta_id: Uuid,
}

/// A row of `blob_edges`: an accepted edge of the blob DAG (S5.1) whose two ends exist.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EdgeRow {
    /// The blob derived from.
    pub parent_id: Uuid,
    /// The derived blob.
    pub child_id: Uuid,
    /// The delta that added the edge first.
    pub delta_id: Uuid,
}

/// A row of `rejected_edges`: an edge that would have closed a cycle (S5.1).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RejectedEdgeRow {
    /// The delta that proposed it.
    pub delta_id: Uuid,
    /// Its parent end.
    pub parent_id: Uuid,
    /// Its child end.
    pub child_id: Uuid,
    /// Why (`S5.1 cycle`).
    pub reason: String,
}

/// A row of `blob_reach`: `descendant` is reachable from `ancestor` (S5.2).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReachRow {
    /// The ancestor.
    pub ancestor_id: Uuid,
    /// The descendant.
    pub descendant_id: Uuid,
    /// Length of the shortest path.
    pub distance: u32,
}

/// A row of `blob_depth`: the longest path from a root to the blob (roots at 0).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DepthRow {
    /// The blob.
    pub blob_id: Uuid,
    /// Its depth.
    pub depth: u32,
}

/// A row of `user_depth`: the deepest of a user's blobs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserDepthRow {
    /// The owner.
    pub user_id: Uuid,
    /// The maximum depth of the blobs they own.
    pub max_depth: u32,
}

/// A view row with a primary key: the sinks upsert by it.
pub trait Keyed {
    /// The primary key.
    type Key: Clone + Eq + std::hash::Hash + Ord + std::fmt::Debug;
    /// This row's key.
    fn key(&self) -> Self::Key;
}

macro_rules! keyed {
    ($row:ty, $key:ty, |$r:ident| $k:expr) => {
        impl Keyed for $row {
            type Key = $key;
            fn key(&self) -> $key {
                let $r = self;
                $k
            }
        }
    };
}
keyed!(BlobRow, Uuid, |r| r.blob_id);
keyed!(ProcessedRow, (Uuid, String), |r| (
    r.blob_id,
    r.provider_id.clone()
));
keyed!(EdgeRow, (Uuid, Uuid), |r| (r.parent_id, r.child_id));
keyed!(ReachRow, (Uuid, Uuid), |r| (r.ancestor_id, r.descendant_id));
keyed!(DepthRow, Uuid, |r| r.blob_id);
keyed!(WaitingRow, Uuid, |r| r.delta_id);
keyed!(UserDepthRow, Uuid, |r| r.user_id);

/// A row of `events` (S5.8): what happened, in the order it was decided.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventRow {
    /// `blob.created`, `blob.updated`, `blob.deleted`, `delta.applied`,
    /// `processing.complete` or `processing.failed`.
    pub event_type: &'static str,
    /// The blob concerned.
    pub blob_id: Uuid,
    /// The delta, for delta and blob events.
    pub delta_id: Option<Uuid>,
    /// The provider, for processing events and provider outputs.
    pub provider_id: Option<String>,
    /// When it happened (the delta's `created_at`, or the end of processing).
    pub at: Timestamp,
    /// Details, as JSON.
    pub payload: String,
}

impl EventRow {
    /// The events of an accepted delta: `delta.applied` and the blob event.
    pub fn of_applied(row: &AppliedRow) -> [EventRow; 2] {
        let blob_event = match row.operation {
            Operation::Create => "blob.created",
            Operation::Delete => "blob.deleted",
            Operation::Update | Operation::Transform | Operation::Revert => "blob.updated",
        };
        let payload = serde_json::json!({
            "version": row.version,
            "operation": row.operation.as_str(),
            "user_id": row.user_id,
            "caused_by": row.caused_by,
        })
        .to_string();
        let event = |event_type| EventRow {
            event_type,
            blob_id: row.blob_id,
            delta_id: Some(row.delta_id),
            provider_id: row.provider_id.clone(),
            at: row.created_at,
            payload: payload.clone(),
        };
        [event("delta.applied"), event(blob_event)]
    }

    /// The event of a processing result: `processing.complete` or `processing.failed`.
    pub fn of_processing(result: &ProcessingResult) -> EventRow {
        EventRow {
            event_type: match result.status {
                crate::ProcessingStatus::Completed => "processing.complete",
                crate::ProcessingStatus::Failed => "processing.failed",
            },
            blob_id: result.blob_id,
            delta_id: None,
            provider_id: Some(result.provider_id.clone()),
            at: result.finished_at,
            payload: serde_json::json!({
                "request_id": result.request_id,
                "version": result.version,
                "attempts": result.attempts,
                "outputs": result.outputs,
                "error": result.error,
            })
            .to_string(),
        }
    }
}

/// Net changes of a keyed view: rows to insert or replace, keys to remove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyedChanges<R: Keyed> {
    /// Rows to insert or replace.
    pub upserts: Vec<R>,
    /// Keys whose row is gone (a retraction without a replacement).
    pub deletes: Vec<R::Key>,
}

impl<R: Keyed> Default for KeyedChanges<R> {
    fn default() -> Self {
        KeyedChanges {
            upserts: Vec::new(),
            deletes: Vec::new(),
        }
    }
}

impl<R: Keyed> KeyedChanges<R> {
    /// Net changes from consolidated `(row, diff)` updates: each positive row is an
    /// upsert, and a key retracted without a positive row is a delete.
    pub fn from_updates(updates: impl IntoIterator<Item = (R, isize)>) -> Self {
        let mut changes = KeyedChanges::default();
        let mut retracted = Vec::new();
        for (row, diff) in updates {
            if diff > 0 {
                changes.upserts.push(row);
            } else if diff < 0 {
                retracted.push(row.key());
            }
        }
        if !retracted.is_empty() {
            let kept: std::collections::HashSet<R::Key> =
                changes.upserts.iter().map(Keyed::key).collect();
            changes.deletes = retracted
                .into_iter()
                .filter(|k| !kept.contains(k))
                .collect();
        }
        changes
    }

    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty()
    }

    /// Appends later changes: for a key both touch, the later change wins.
    pub fn absorb(&mut self, later: KeyedChanges<R>) {
        if self.is_empty() {
            *self = later;
            return;
        }
        if later.is_empty() {
            return;
        }
        let touched: std::collections::HashSet<R::Key> = later
            .upserts
            .iter()
            .map(Keyed::key)
            .chain(later.deletes.iter().cloned())
            .collect();
        self.upserts.retain(|r| !touched.contains(&r.key()));
        self.deletes.retain(|k| !touched.contains(k));
        self.upserts.extend(later.upserts);
        self.deletes.extend(later.deletes);
    }
}

/// Everything that changed in the views at one completed timestamp, already net
/// (one upsert or delete per key). A sink writes it in one transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ViewBatch {
    /// `blobs`.
    pub blobs: KeyedChanges<BlobRow>,
    /// `processed_by`.
    pub processed: KeyedChanges<ProcessedRow>,
    /// `blob_edges`.
    pub edges: KeyedChanges<EdgeRow>,
    /// `blob_reach`.
    pub reach: KeyedChanges<ReachRow>,
    /// `blob_depth`.
    pub depth: KeyedChanges<DepthRow>,
    /// `user_depth`.
    pub user_depth: KeyedChanges<UserDepthRow>,
    /// Accepted deltas (`deltas_applied`), insert-only, in no particular order.
    pub applied: Vec<AppliedRow>,
    /// Rejected edges, insert-only.
    pub rejected_edges: Vec<RejectedEdgeRow>,
    /// Dead letters in the order they were decided.
    pub dead_letters: Vec<DeadLetter>,
    /// Changes of the pending transform requests (S5.7), in time order and, within a
    /// time, retractions first: `+1` a request became pending (or its payload changed),
    /// `-1` it is no longer pending (superseded, or settled).
    pub requests: Vec<(TransformRequest, isize)>,
    /// Processing results (`processing`), in the order they finished.
    pub processing: Vec<ProcessingResult>,
    /// Events (S5.8), when the run records them.
    pub events: Vec<EventRow>,
    /// Deltas waiting for a gap (`deltas_waiting`).
    pub waiting: KeyedChanges<WaitingRow>,
    /// With a live source: where it was when this batch was cut.
    pub checkpoint: Option<Checkpoint>,
}

/// What one batch does to `transform_requests`, decided once for every store.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RequestChanges<'a> {
    /// The requests that appeared in the batch (a `+1`: new, or its payload changed),
    /// in request id order, each with its net state after the batch: `true` pending,
    /// `false` superseded within the batch. Stores insert them, or update a row that is
    /// still `pending` or `superseded`.
    pub upserts: Vec<(&'a TransformRequest, bool)>,
    /// The requests that only disappeared (a `-1` alone), in id order: stores mark
    /// them `superseded` unless a result already settled them.
    pub superseded: Vec<Uuid>,
}

impl ViewBatch {
    /// The net change of each request the batch touched, in log order: a `+1` leaves
    /// it pending, a `-1` alone supersedes it.
    pub fn request_changes(&self) -> RequestChanges<'_> {
        let mut last: std::collections::BTreeMap<Uuid, (&TransformRequest, bool, bool)> =
            std::collections::BTreeMap::new();
        for (request, diff) in &self.requests {
            let pending = *diff > 0;
            last.entry(request.request_id)
                .and_modify(|(kept, now_pending, appeared)| {
                    if pending {
                        *kept = request;
                    }
                    *now_pending = pending;
                    *appeared |= pending;
                })
                .or_insert((request, pending, pending));
        }
        let mut changes = RequestChanges::default();
        for (id, (request, pending, appeared)) in last {
            if appeared {
                changes.upserts.push((request, pending));
            } else if !pending {
                changes.superseded.push(id);
            }
        }
        changes
    }

    /// True when the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
            && self.processed.is_empty()
            && self.edges.is_empty()
            && self.reach.is_empty()
            && self.depth.is_empty()
            && self.user_depth.is_empty()
            && self.applied.is_empty()
            && self.rejected_edges.is_empty()
            && self.dead_letters.is_empty()
            && self.requests.is_empty()
            && self.processing.is_empty()
            && self.events.is_empty()
            && self.waiting.is_empty()
            && self.checkpoint.is_none()
    }

    /// Fills `events` from the accepted deltas and processing results (S5.8).
    pub fn record_events(&mut self) {
        let mut applied: Vec<&AppliedRow> = self.applied.iter().collect();
        applied.sort_by_key(|r| (r.created_at, r.blob_id, r.version));
        self.events = applied
            .into_iter()
            .flat_map(EventRow::of_applied)
            .chain(self.processing.iter().map(EventRow::of_processing))
            .collect();
    }

    /// Appends a later batch: its upserts and deletes win over this one's.
    pub fn absorb(&mut self, later: ViewBatch) {
        if self.is_empty() {
            *self = later;
            return;
        }
        self.blobs.absorb(later.blobs);
        self.processed.absorb(later.processed);
        self.edges.absorb(later.edges);
        self.reach.absorb(later.reach);
        self.depth.absorb(later.depth);
        self.user_depth.absorb(later.user_depth);
        self.applied.extend(later.applied);
        self.rejected_edges.extend(later.rejected_edges);
        self.dead_letters.extend(later.dead_letters);
        self.requests.extend(later.requests);
        self.processing.extend(later.processing);
        self.events.extend(later.events);
        self.waiting.absorb(later.waiting);
        if later.checkpoint.is_some() {
            self.checkpoint = later.checkpoint;
        }
    }
}
