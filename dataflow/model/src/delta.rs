//! The delta record (SPEC S1) as it travels through the dataflow: validated, typed, and
//! still holding its raw line so that a later rejection can dead-letter the exact bytes.

use std::ops::Range;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{SourcePos, Timestamp};

/// The five operations of SPEC S3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operation {
    /// S3.1: make a new blob at version 1.
    Create,
    /// S3.2: patch the document.
    Update,
    /// S3.3: a provider's output; patches and records `processed_by`.
    Transform,
    /// S3.4: soft delete.
    Delete,
    /// S3.5: back to the document of an earlier version.
    Revert,
}

impl Operation {
    /// The wire name (`create`, `update`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Transform => "transform",
            Operation::Delete => "delete",
            Operation::Revert => "revert",
        }
    }

    /// Parses a wire name.
    pub fn from_wire(name: &str) -> Option<Self> {
        Some(match name {
            "create" => Operation::Create,
            "update" => Operation::Update,
            "transform" => Operation::Transform,
            "delete" => Operation::Delete,
            "revert" => Operation::Revert,
            _ => return None,
        })
    }

    /// The SPEC rule that defines this operation, cited by its dead letters.
    pub fn rule(self) -> &'static str {
        match self {
            Operation::Create => "S3.1",
            Operation::Update => "S3.2",
            Operation::Transform => "S3.3",
            Operation::Delete => "S3.4",
            Operation::Revert => "S3.5",
        }
    }
}

/// How a `patch` is applied (SPEC S3.2, reserved metadata key `patch_format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PatchFormat {
    /// RFC 6902 JSON Patch: an array of operations, all-or-nothing.
    JsonPatch,
    /// RFC 7386 JSON Merge Patch.
    MergePatch,
}

impl PatchFormat {
    /// Parses the `metadata.patch_format` value.
    pub fn from_wire(name: &str) -> Option<Self> {
        match name {
            "json-patch" => Some(PatchFormat::JsonPatch),
            "merge-patch" => Some(PatchFormat::MergePatch),
            _ => None,
        }
    }
}

/// A delta that passed S1 validation.
///
/// JSON-valued fields (`patch`, `metadata`) are kept as byte ranges into [`Delta::raw`],
/// so a delta costs one allocation for its text however large its patch is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// Unique id of the delta.
    pub id: Uuid,
    /// The blob it changes.
    pub blob_id: Uuid,
    /// Who acts (the owner, on `create`).
    pub user_id: Uuid,
    /// What it does.
    pub operation: Operation,
    /// The blob's version after this delta (>= 1).
    pub version: u64,
    /// When it was written.
    pub created_at: Timestamp,
    /// The provider that produced it; required on `transform`.
    pub provider_id: Option<String>,
    /// On `create`: the blob this one is derived from.
    pub parent_id: Option<Uuid>,
    /// Edges from this blob to other blobs, added by this delta.
    pub child_ids: Vec<Uuid>,
    /// The delta that caused this one.
    pub caused_by: Option<Uuid>,
    /// `metadata.content_type` (meaningful on `create`).
    pub content_type: Option<String>,
    /// `metadata.patch_format`, when given.
    pub patch_format: Option<PatchFormat>,
    /// `metadata.source_version` (on `transform`).
    pub source_version: Option<u64>,
    /// Where `patch` sits in `raw`, if present and not `null`.
    pub patch: Option<Range<u32>>,
    /// Where `metadata` sits in `raw`, if present and not `null`.
    pub metadata: Option<Range<u32>>,
    /// The record exactly as read (valid UTF-8: it parsed as JSON); shared with the
    /// delta store's row when the delta is accepted.
    pub raw: Arc<str>,
    /// Where the record was read.
    pub pos: SourcePos,
}

impl Delta {
    /// The patch's JSON text, if any.
    pub fn patch_json(&self) -> Option<&str> {
        self.patch
            .as_ref()
            .map(|r| &self.raw[r.start as usize..r.end as usize])
    }

    /// The metadata's JSON text, if any.
    pub fn metadata_json(&self) -> Option<&str> {
        self.metadata
            .as_ref()
            .map(|r| &self.raw[r.start as usize..r.end as usize])
    }

    /// A 64-bit hash of the blob id, for exchanging deltas between workers.
    pub fn blob_route(&self) -> u64 {
        route(self.blob_id)
    }

    /// A 64-bit hash of the delta id, for exchanging deltas between workers.
    pub fn id_route(&self) -> u64 {
        route(self.id)
    }
}

/// Spreads a UUID over 64 bits (UUIDs from producers may not be random: v7 and
/// hand-written ids share long prefixes).
pub fn route(id: Uuid) -> u64 {
    let x = id.as_u128();
    let folded = (x as u64) ^ ((x >> 64) as u64);
    // splitmix64 finaliser
    let mut z = folded.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
