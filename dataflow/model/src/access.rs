//! Access control (SPEC S6): grant records on the deltas' input, and who may do what.
//!
//! ```text
//!   raw bytes --parse_input--> InputRecord::Delta  (S1, as before)
//!                          \-> InputRecord::Grant  (S6.4: a record with a "kind")
//!                          \-> InputRecord::Result (S5.7: "kind": "result", read by the service)
//!   deltas and grants, in log order --AccessControl--> authorized deltas (to the ledger)
//!                                                  \-> dead letters S6.1 / S6.2
//!                                                  \-> `grants` view, `grant_log`
//! ```
//!
//! [`AccessControl`] holds, for every blob, its owner (the user of its first create in
//! log order) and its live grants. Records are offered in log order, so a grant takes
//! effect for the records after it and a delta is judged by the rights of its own log
//! position. The decisions where SPEC is silent are in `docs/access.md`.

use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::parse::{
    Check, describe_json_error, quote, required, string_field, time_field, uuid_field,
};
use crate::views::{Keyed, WaitingRow};
use crate::{
    DeadLetter, Delta, Operation, ProcessingResult, Reason, ResultLogRow, SourcePos, Timestamp,
    parse_record,
};

/// A right on a blob (the seed's `BlobPermission`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Permission {
    /// Read the blob (implied by every other permission).
    Read,
    /// `update`, `transform`, `revert`.
    Write,
    /// `delete`.
    Delete,
    /// Grant and revoke `read`, `write` and `delete`.
    Share,
}

impl Permission {
    /// All four, in order.
    pub const ALL: [Permission; 4] = [
        Permission::Read,
        Permission::Write,
        Permission::Delete,
        Permission::Share,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Delete => "delete",
            Permission::Share => "share",
        }
    }

    /// Parses a wire name.
    pub fn from_wire(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// The permission an operation other than `create` needs (S6.4).
    pub fn for_operation(op: Operation) -> Option<Self> {
        match op {
            Operation::Create => None,
            Operation::Update | Operation::Transform | Operation::Revert => Some(Permission::Write),
            Operation::Delete => Some(Permission::Delete),
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A grant record's `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GrantKind {
    /// Gives the permission.
    Grant,
    /// Takes it back.
    Revoke,
}

impl GrantKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::Grant => "grant",
            GrantKind::Revoke => "revoke",
        }
    }
}

/// A grant or revoke record (S6.4) that passed S1 validation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    /// Its id (a repeat is a duplicate, S4.2).
    pub id: Uuid,
    /// Grant or revoke.
    pub kind: GrantKind,
    /// The blob concerned.
    pub blob_id: Uuid,
    /// The grantee (`user_id` on the wire).
    pub grantee: Uuid,
    /// The permission given or taken.
    pub permission: Permission,
    /// Who makes the grant.
    pub granted_by: Uuid,
    /// When it was written.
    pub created_at: Timestamp,
    /// The record as read.
    pub raw: Arc<str>,
    /// Where it was read.
    pub pos: SourcePos,
}

impl GrantRecord {
    fn reject(&self, detail: String) -> DeadLetter {
        DeadLetter {
            pos: self.pos,
            delta_id: Some(self.id),
            blob_id: Some(self.blob_id),
            reason: Reason::GrantNotAuthorized(detail),
            raw: self.raw.as_bytes().to_vec(),
        }
    }
}

/// One record of the input: a delta, or a grant record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputRecord {
    /// A delta (no `kind`).
    Delta(Delta),
    /// A grant or revoke.
    Grant(GrantRecord),
    /// A provider worker's processing result (`"kind": "result"`, S5.7).
    Result(ResultLogRow),
}

impl InputRecord {
    /// Where it was read.
    pub fn pos(&self) -> SourcePos {
        match self {
            InputRecord::Delta(d) => d.pos,
            InputRecord::Grant(g) => g.pos,
            InputRecord::Result(r) => r.pos,
        }
    }
}

/// A grant record's fields, each as its raw JSON text.
#[derive(Deserialize)]
struct GrantFields<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    blob_id: Option<&'a RawValue>,
    #[serde(borrow)]
    user_id: Option<&'a RawValue>,
    #[serde(borrow)]
    permission: Option<&'a RawValue>,
    #[serde(borrow)]
    granted_by: Option<&'a RawValue>,
    #[serde(borrow)]
    created_at: Option<&'a RawValue>,
}

/// Only the `kind` of a record.
#[derive(Deserialize)]
struct KindField<'a> {
    #[serde(borrow)]
    kind: Option<&'a RawValue>,
}

/// Parses one record: a grant record when it has a top-level `kind`, else a delta
/// ([`parse_record`]). Either may be a dead letter `S1.1 malformed`.
///
/// A record without the text `"kind"` anywhere is a delta without a second look, so
/// deltas cost one substring search more than before.
pub fn parse_input(raw: &[u8], pos: SourcePos) -> Result<InputRecord, Box<DeadLetter>> {
    let kind = memchr::memmem::find(raw, b"\"kind\"")
        .is_some()
        .then(|| std::str::from_utf8(raw).ok())
        .flatten()
        .and_then(|text| serde_json::from_str::<KindField<'_>>(text).ok())
        .and_then(|fields| fields.kind);
    match kind {
        None => parse_record(raw, pos).map(InputRecord::Delta),
        Some(kind) if kind.get() == "\"result\"" => parse_result(raw, pos)
            .map(InputRecord::Result)
            .map_err(|what| DeadLetter::malformed(pos, raw, what)),
        Some(_) => parse_grant(raw, pos)
            .map(InputRecord::Grant)
            .map_err(|what| DeadLetter::malformed(pos, raw, what)),
    }
}

fn parse_result(raw: &[u8], pos: SourcePos) -> Check<ResultLogRow> {
    let text = std::str::from_utf8(raw).map_err(|e| format!("not UTF-8 ({e})"))?;
    Ok(ResultLogRow {
        result: ProcessingResult::from_record(text)?,
        pos,
        record: Arc::from(text),
    })
}

fn parse_grant(raw: &[u8], pos: SourcePos) -> Check<GrantRecord> {
    let text = std::str::from_utf8(raw).map_err(|e| format!("not UTF-8 ({e})"))?;
    let w: GrantFields<'_> = serde_json::from_str(text).map_err(describe_json_error)?;
    let kind = match string_field("kind", required("kind", w.kind)?)?.as_str() {
        "grant" => GrantKind::Grant,
        "revoke" => GrantKind::Revoke,
        other => {
            return Err(format!(
                "field \"kind\" is {}, expected grant or revoke",
                quote(other)
            ));
        }
    };
    let permission = string_field("permission", required("permission", w.permission)?)?;
    let permission = Permission::from_wire(&permission).ok_or_else(|| {
        format!(
            "field \"permission\" is {}, expected one of read, write, delete, share",
            quote(&permission)
        )
    })?;
    Ok(GrantRecord {
        id: uuid_field("id", w.id)?,
        kind,
        blob_id: uuid_field("blob_id", w.blob_id)?,
        grantee: uuid_field("user_id", w.user_id)?,
        permission,
        granted_by: uuid_field("granted_by", w.granted_by)?,
        created_at: time_field("created_at", required("created_at", w.created_at)?)?,
        raw: text.into(),
        pos,
    })
}

/// A row of `grants`: a live grant.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GrantRow {
    /// The blob.
    pub blob_id: Uuid,
    /// The grantee.
    pub user_id: Uuid,
    /// The permission.
    pub permission: Permission,
    /// Who granted it.
    pub granted_by: Uuid,
    /// The grant record's `created_at`.
    pub granted_at: Timestamp,
}

/// The key of a [`GrantRow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantKey(pub Uuid, pub Uuid, pub Permission);

impl Keyed for GrantRow {
    type Key = GrantKey;
    fn key(&self) -> GrantKey {
        GrantKey(self.blob_id, self.user_id, self.permission)
    }
}

/// A row of `grant_log`: an accepted grant or revoke, with its record and position, so
/// that a restart replays it (the `grants` view alone loses the order).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GrantLogRow {
    /// The record's id.
    pub grant_id: Uuid,
    /// The blob.
    pub blob_id: Uuid,
    /// `grant` or `revoke`.
    pub kind: GrantKind,
    /// Where it was read.
    pub pos: SourcePos,
    /// The record as read.
    pub record: Arc<str>,
}

/// What offering records to [`AccessControl`] produced.
#[derive(Debug, Default)]
pub struct AccessEffects {
    /// Deltas allowed through to the ledger, in the order offered.
    pub passed: Vec<Delta>,
    /// Rejected deltas (S6.2), grants (S6.1) and gaps of never-created blobs (S4.4).
    pub dead_letters: Vec<DeadLetter>,
    /// Changes of the `grants` view.
    pub grants: Vec<(GrantRow, isize)>,
    /// Accepted grant records.
    pub log: Vec<GrantLogRow>,
    /// Deltas held until their blob is created (`deltas_waiting`).
    pub waiting: Vec<(WaitingRow, isize)>,
    /// Ids of repeated grant records (S4.2).
    pub duplicates: Vec<Uuid>,
}

/// Owners and live grants of every blob; decides S6.1 and S6.2 in log order.
#[derive(Debug, Default)]
pub struct AccessControl {
    owners: FxHashMap<Uuid, Uuid>,
    /// (blob, grantee) -> the grants, by permission.
    grants: FxHashMap<(Uuid, Uuid), Vec<GrantRow>>,
    /// Deltas of blobs not created yet, in log order.
    deferred: FxHashMap<Uuid, Vec<Delta>>,
    seen_grants: FxHashSet<Uuid>,
}

impl AccessControl {
    /// The owner of `blob`, once it is created.
    pub fn owner(&self, blob: Uuid) -> Option<Uuid> {
        self.owners.get(&blob).copied()
    }

    /// True when `user` holds `permission` on `blob` now: the owner holds every
    /// permission; any grant implies `read`.
    pub fn may(&self, blob: Uuid, user: Uuid, permission: Permission) -> bool {
        match self.owners.get(&blob) {
            None => false,
            Some(owner) if *owner == user => true,
            Some(_) => {
                let held = self.held(blob, user);
                held & permission.bit() != 0 || (permission == Permission::Read && held != 0)
            }
        }
    }

    fn held(&self, blob: Uuid, user: Uuid) -> u8 {
        self.grants
            .get(&(blob, user))
            .map_or(0, |rows| rows.iter().fold(0, |m, r| m | r.permission.bit()))
    }

    /// The blobs with deltas held until their create.
    pub fn deferred_blobs(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.deferred.keys().copied()
    }

    /// Offers the next record in log order.
    pub fn offer(&mut self, record: InputRecord, fx: &mut AccessEffects) {
        match record {
            InputRecord::Delta(d) => self.offer_delta(d, fx),
            InputRecord::Grant(g) => self.offer_grant(g, fx),
            InputRecord::Result(_) => {} // results settle requests; they need no rights
        }
    }

    /// A delta: passed on, held until its blob is created, or rejected (S6.2).
    ///
    /// What the ledger rejects anyway whoever sends it (a create of an existing blob or
    /// at a version other than 1, a non-create at version 1 of a blob not created) is
    /// passed on, so that it keeps its S3/S4 reason.
    pub fn offer_delta(&mut self, delta: Delta, fx: &mut AccessEffects) {
        let created = self.owners.contains_key(&delta.blob_id);
        if delta.operation == Operation::Create {
            if created || delta.version != 1 {
                return fx.passed.push(delta);
            }
            if let Err(detail) = self.edges_readable(&delta) {
                return fx.dead_letters.push(not_authorized(delta, detail));
            }
            let blob = delta.blob_id;
            self.owners.insert(blob, delta.user_id);
            fx.passed.push(delta);
            for held in self.deferred.remove(&blob).unwrap_or_default() {
                fx.waiting.push((WaitingRow::of(&held), -1));
                self.check(held, fx);
            }
            return;
        }
        if !created {
            if delta.version == 1 {
                return fx.passed.push(delta);
            }
            fx.waiting.push((WaitingRow::of(&delta), 1));
            self.deferred.entry(delta.blob_id).or_default().push(delta);
            return;
        }
        self.check(delta, fx);
    }

    /// A delta of a created blob: passed on when its user may do its operation and
    /// read the other end of each of its edges.
    fn check(&self, delta: Delta, fx: &mut AccessEffects) {
        let needed = Permission::for_operation(delta.operation);
        if let Some(p) = needed.filter(|p| !self.may(delta.blob_id, delta.user_id, *p)) {
            let detail = format!(
                "user {} is not the owner and holds no {} grant on blob {}",
                delta.user_id,
                p.as_str(),
                delta.blob_id
            );
            return fx.dead_letters.push(not_authorized(delta, detail));
        }
        match self.edges_readable(&delta) {
            Ok(()) => fx.passed.push(delta),
            Err(detail) => fx.dead_letters.push(not_authorized(delta, detail)),
        }
    }

    /// Each edge's other end must be readable by the delta's user, when it exists: an
    /// edge may name a blob not created yet (S5.1), which nobody can read yet.
    fn edges_readable(&self, delta: &Delta) -> Result<(), String> {
        let parent = delta
            .parent_id
            .filter(|_| delta.operation == Operation::Create);
        for other in parent.iter().chain(&delta.child_ids) {
            if self.owners.contains_key(other) && !self.may(*other, delta.user_id, Permission::Read)
            {
                return Err(format!(
                    "user {} may not read blob {other}, the other end of its edge",
                    delta.user_id
                ));
            }
        }
        Ok(())
    }

    /// Dead-letters the held deltas of `blob`, which was never created (S4.4, as the
    /// ledger words it).
    pub fn expire(&mut self, blob: Uuid, fx: &mut AccessEffects) {
        for delta in self.deferred.remove(&blob).unwrap_or_default() {
            fx.waiting.push((WaitingRow::of(&delta), -1));
            let version = delta.version;
            fx.dead_letters.push(DeadLetter {
                pos: delta.pos,
                delta_id: Some(delta.id),
                blob_id: Some(delta.blob_id),
                reason: Reason::VersionGap {
                    current: 0,
                    version,
                },
                raw: delta.raw.as_bytes().to_vec(),
            });
        }
    }

    /// A grant or revoke: applied when its author may make it, else a dead letter
    /// `S6.1 not authorized`.
    pub fn offer_grant(&mut self, grant: GrantRecord, fx: &mut AccessEffects) {
        if !self.seen_grants.insert(grant.id) {
            return fx.duplicates.push(grant.id);
        }
        if let Err(detail) = self.may_grant(&grant) {
            return fx.dead_letters.push(grant.reject(detail));
        }
        fx.log.push(GrantLogRow {
            grant_id: grant.id,
            blob_id: grant.blob_id,
            kind: grant.kind,
            pos: grant.pos,
            record: Arc::clone(&grant.raw),
        });
        let rows = self
            .grants
            .entry((grant.blob_id, grant.grantee))
            .or_default();
        let existing = rows.iter().position(|r| r.permission == grant.permission);
        match (grant.kind, existing) {
            (GrantKind::Grant, None) => {
                let row = GrantRow {
                    blob_id: grant.blob_id,
                    user_id: grant.grantee,
                    permission: grant.permission,
                    granted_by: grant.granted_by,
                    granted_at: grant.created_at,
                };
                fx.grants.push((row.clone(), 1));
                rows.push(row);
            }
            (GrantKind::Revoke, Some(i)) => {
                fx.grants.push((rows.swap_remove(i), -1));
                if rows.is_empty() {
                    self.grants.remove(&(grant.blob_id, grant.grantee));
                }
            }
            // A grant already held stays as first granted; revoking what is not held
            // changes nothing. Both are accepted (idempotent).
            _ => {}
        }
    }

    /// S6.1/S6.4: the owner may grant and revoke anything; a `share` holder `read`,
    /// `write` and `delete`.
    fn may_grant(&self, grant: &GrantRecord) -> Result<(), String> {
        let what = format!("{} {}", grant.kind.as_str(), grant.permission.as_str());
        let Some(owner) = self.owner(grant.blob_id) else {
            return Err(format!(
                "blob {} does not exist (yet), so nobody may {what} on it",
                grant.blob_id
            ));
        };
        if grant.granted_by == owner {
            return Ok(());
        }
        if grant.permission == Permission::Share {
            return Err(format!(
                "only the owner may {what}; {} is not the owner of blob {}",
                grant.granted_by, grant.blob_id
            ));
        }
        if self.held(grant.blob_id, grant.granted_by) & Permission::Share.bit() != 0 {
            return Ok(());
        }
        Err(format!(
            "user {} may not {what} on blob {}: neither its owner nor a share holder",
            grant.granted_by, grant.blob_id
        ))
    }
}

fn not_authorized(delta: Delta, detail: String) -> DeadLetter {
    DeadLetter {
        pos: delta.pos,
        delta_id: Some(delta.id),
        blob_id: Some(delta.blob_id),
        reason: Reason::NotAuthorized {
            operation: delta.operation,
            detail,
        },
        raw: delta.raw.as_bytes().to_vec(),
    }
}
