//! Rows of the maintained views, as the dataflow emits them and the sinks write them
//! (README "View schema"), and [`ViewBatch`], one completed timestamp's changes.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::table::{Row, Table};
use crate::{Delta, Doc, Operation, ProcessingResult, SourcePos, Timestamp, TransformRequest};

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

/// A view the dataflow maintains: the table it is stored in, and how a batch carries
/// its changes.
pub trait View: Sized {
    /// Its table.
    const TABLE: &'static Table;
    /// Its changes in a [`ViewBatch`].
    type Changes: Changes;
    /// The net changes at one time from its updates there, as they came.
    fn changes(updates: Vec<(Self, isize)>) -> Self::Changes;
}

/// One view's changes in a batch.
pub trait Changes: Default {
    /// True when nothing changes.
    fn is_empty(&self) -> bool;
    /// Appends later changes.
    fn absorb(&mut self, later: Self);
}

impl<R: Keyed> Changes for KeyedChanges<R> {
    fn is_empty(&self) -> bool {
        KeyedChanges::is_empty(self)
    }
    fn absorb(&mut self, later: Self) {
        KeyedChanges::absorb(self, later);
    }
}

impl<T> Changes for Vec<T> {
    fn is_empty(&self) -> bool {
        <[T]>::is_empty(self)
    }
    fn absorb(&mut self, later: Self) {
        self.extend(later);
    }
}

/// Updates sorted, equal rows summed, zero sums dropped (differential's `consolidate`).
pub(crate) fn consolidated<R: Ord>(mut updates: Vec<(R, isize)>) -> Vec<(R, isize)> {
    updates.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<(R, isize)> = Vec::with_capacity(updates.len());
    for (row, diff) in updates {
        match out.last_mut() {
            Some((last, sum)) if *last == row => *sum += diff,
            _ => out.push((row, diff)),
        }
    }
    out.retain(|(_, diff)| *diff != 0);
    out
}

/// A keyed view's net changes at one time.
pub(crate) fn keyed_changes<R: Keyed + Ord>(updates: Vec<(R, isize)>) -> KeyedChanges<R> {
    KeyedChanges::from_updates(consolidated(updates))
}

/// A view's changes as a store writes them from its [`Table`] alone.
pub trait TableChanges {
    /// The table.
    fn table(&self) -> &'static Table;
    /// Rows to insert (or upsert), keyed rows in key order.
    fn rows(&self) -> Vec<&dyn Row>;
    /// Keys of rows to delete, each a row of the key's columns.
    fn deleted_keys(&self) -> Vec<&dyn Row>;
}

impl<R: View + Keyed + Row> TableChanges for KeyedChanges<R>
where
    R::Key: Row,
{
    fn table(&self) -> &'static Table {
        R::TABLE
    }
    fn rows(&self) -> Vec<&dyn Row> {
        let mut rows: Vec<&R> = self.upserts.iter().collect();
        // B-tree inserts in key order touch neighbouring pages.
        rows.sort_unstable_by_key(|r| r.key());
        rows.into_iter().map(|r| r as &dyn Row).collect()
    }
    fn deleted_keys(&self) -> Vec<&dyn Row> {
        self.deletes.iter().map(|k| k as &dyn Row).collect()
    }
}

impl<R: View + Row> TableChanges for Vec<R> {
    fn table(&self) -> &'static Table {
        R::TABLE
    }
    fn rows(&self) -> Vec<&dyn Row> {
        self.iter().map(|r| r as &dyn Row).collect()
    }
    fn deleted_keys(&self) -> Vec<&dyn Row> {
        Vec::new()
    }
}

/// The views the dataflow maintains, listed once: calls `$then!` with them, in two
/// groups. `by_declaration`: every store writes them from their [`Table`] alone (a new
/// view goes here). `by_hand`: stores write them with rules of their own (documents'
/// storage, the delta store, numbered dead letters, the requests' statuses).
#[macro_export]
macro_rules! for_each_view {
    ($then:ident) => {
        $then! {
            by_hand {
                /// `blobs`.
                blobs: $crate::BlobRow,
                /// Accepted deltas (`deltas_applied` and the delta store), insert-only,
                /// in no particular order.
                applied: $crate::AppliedRow,
                /// Dead letters in the order they were decided.
                dead_letters: $crate::DeadLetter,
                /// Changes of the pending transform requests (S5.7), in time order and,
                /// within a time, retractions first: `+1` a request became pending (or
                /// its payload changed), `-1` it is no longer pending (superseded, or
                /// settled).
                requests: $crate::TransformRequest,
                /// Processing results (`processing`), in the order they finished.
                processing: $crate::ProcessingResult,
            }
            by_declaration {
                /// `processed_by`.
                processed: $crate::ProcessedRow,
                /// `blob_edges`.
                edges: $crate::EdgeRow,
                /// `blob_reach`.
                reach: $crate::ReachRow,
                /// `blob_depth`.
                depth: $crate::DepthRow,
                /// `user_depth`.
                user_depth: $crate::UserDepthRow,
                /// Deltas waiting for a gap (`deltas_waiting`).
                waiting: $crate::WaitingRow,
                /// Rejected edges, insert-only.
                rejected_edges: $crate::RejectedEdgeRow,
                /// Live grants (`grants`, S6.1).
                grants: $crate::access::GrantRow,
                /// Accepted grant records (`grant_log`), insert-only.
                grant_log: $crate::access::GrantLogRow,
                /// Accepted processing results read from the bus (`result_log`),
                /// insert-only.
                result_log: $crate::ResultLogRow,
            }
        }
    };
}

macro_rules! view_batch {
    (
        by_hand { $($(#[$hdoc:meta])* $hand:ident: $hrow:ty,)* }
        by_declaration { $($(#[$ddoc:meta])* $decl:ident: $drow:ty,)* }
    ) => {
        /// Everything that changed in the views at one completed timestamp, already net
        /// (one upsert or delete per key). A sink writes it in one transaction.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct ViewBatch {
            $($(#[$hdoc])* pub $hand: <$hrow as View>::Changes,)*
            $($(#[$ddoc])* pub $decl: <$drow as View>::Changes,)*
            /// Events (S5.8), when the run records them.
            pub events: Vec<EventRow>,
            /// With a live source: where it was when this batch was cut.
            pub checkpoint: Option<Checkpoint>,
        }

        impl ViewBatch {
            /// True when the batch changes nothing.
            pub fn is_empty(&self) -> bool {
                $(Changes::is_empty(&self.$hand) &&)*
                $(Changes::is_empty(&self.$decl) &&)*
                self.events.is_empty() && self.checkpoint.is_none()
            }

            /// Appends a later batch: its upserts and deletes win over this one's.
            pub fn absorb(&mut self, later: ViewBatch) {
                if self.is_empty() {
                    *self = later;
                    return;
                }
                $(Changes::absorb(&mut self.$hand, later.$hand);)*
                $(Changes::absorb(&mut self.$decl, later.$decl);)*
                self.events.extend(later.events);
                if later.checkpoint.is_some() {
                    self.checkpoint = later.checkpoint;
                }
            }

            /// The views every store writes from their declaration alone, in list order.
            pub fn declared_changes(&self) -> Vec<&dyn TableChanges> {
                vec![$(&self.$decl as &dyn TableChanges),*]
            }
        }
    };
}
for_each_view!(view_batch);

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
    /// The blobs whose answer to a reader this batch may change: their `blobs` row
    /// (document, version, deletion) or their grants (who may read them), sorted and
    /// unique. A cache of per-blob answers drops exactly these after the commit.
    pub fn blobs_changed_for_readers(&self) -> Vec<Uuid> {
        let mut blobs: Vec<Uuid> = (self.blobs.upserts.iter().map(|row| row.blob_id))
            .chain(self.blobs.deletes.iter().copied())
            .chain(self.grants.upserts.iter().map(|row| row.blob_id))
            .chain(self.grants.deletes.iter().map(|key| key.0))
            .collect();
        blobs.sort_unstable();
        blobs.dedup();
        blobs
    }

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{GrantKey, Permission};

    /// What a cache of per-blob answers must drop: blobs whose row or grants changed,
    /// each once, whatever else the batch holds.
    #[test]
    fn blobs_changed_for_readers_are_rows_and_grants_once_each() {
        let id = Uuid::from_u128;
        let mut batch = ViewBatch::default();
        batch.blobs.deletes = vec![id(3), id(1)];
        batch.grants.deletes = vec![
            GrantKey(id(2), id(9), Permission::Read),
            GrantKey(id(1), id(9), Permission::Write),
        ];
        batch.depth.deletes = vec![id(7)];
        assert_eq!(batch.blobs_changed_for_readers(), vec![id(1), id(2), id(3)]);
        assert!(ViewBatch::default().blobs_changed_for_readers().is_empty());
    }
}
