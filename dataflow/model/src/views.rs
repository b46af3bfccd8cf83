//! Rows of the maintained views, as the dataflow emits them and the sinks write them
//! (README "View schema"), and [`ViewBatch`], one completed timestamp's changes.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{DeadLetter, Doc, Operation, Timestamp};

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

/// Everything that changed in the views at one completed timestamp, already net
/// (one upsert or delete per key). A sink writes it in one transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ViewBatch {
    /// Blobs to insert or replace.
    pub blob_upserts: Vec<BlobRow>,
    /// Blobs to remove (a retraction without a replacement).
    pub blob_deletes: Vec<Uuid>,
    /// Accepted deltas, in no particular order.
    pub applied: Vec<AppliedRow>,
    /// `processed_by` rows to insert or replace.
    pub processed_upserts: Vec<ProcessedRow>,
    /// `processed_by` keys to remove.
    pub processed_deletes: Vec<(Uuid, String)>,
    /// Dead letters in log order.
    pub dead_letters: Vec<DeadLetter>,
}

impl ViewBatch {
    /// True when the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.blob_upserts.is_empty()
            && self.blob_deletes.is_empty()
            && self.applied.is_empty()
            && self.processed_upserts.is_empty()
            && self.processed_deletes.is_empty()
            && self.dead_letters.is_empty()
    }

    /// Appends a later batch: its upserts and deletes win over this one's.
    pub fn absorb(&mut self, later: ViewBatch) {
        if self.is_empty() {
            *self = later;
            return;
        }
        if !later.blob_upserts.is_empty() || !later.blob_deletes.is_empty() {
            let touched: std::collections::HashSet<Uuid> = later
                .blob_upserts
                .iter()
                .map(|r| r.blob_id)
                .chain(later.blob_deletes.iter().copied())
                .collect();
            self.blob_upserts.retain(|r| !touched.contains(&r.blob_id));
            self.blob_deletes.retain(|id| !touched.contains(id));
        }
        if !later.processed_upserts.is_empty() || !later.processed_deletes.is_empty() {
            let touched: std::collections::HashSet<(Uuid, &str)> = later
                .processed_upserts
                .iter()
                .map(|r| (r.blob_id, r.provider_id.as_str()))
                .chain(
                    later
                        .processed_deletes
                        .iter()
                        .map(|(b, p)| (*b, p.as_str())),
                )
                .collect();
            self.processed_upserts
                .retain(|r| !touched.contains(&(r.blob_id, r.provider_id.as_str())));
            self.processed_deletes
                .retain(|(b, p)| !touched.contains(&(*b, p.as_str())));
        }
        self.blob_upserts.extend(later.blob_upserts);
        self.blob_deletes.extend(later.blob_deletes);
        self.applied.extend(later.applied);
        self.processed_upserts.extend(later.processed_upserts);
        self.processed_deletes.extend(later.processed_deletes);
        self.dead_letters.extend(later.dead_letters);
    }
}
