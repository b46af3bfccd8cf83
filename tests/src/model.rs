//! The reference model: SPEC S3/S4 as a plain, sequential fold over the log, written
//! without `studio_model::BlobLedger`, for the property tests to hold the dataflow to.
//!
//! It is naive on purpose: every version's full document is kept per blob (a revert
//! is an index), every waiting delta sits in one list in log order, and after each
//! arrival the list is scanned until nothing more applies. Only S1 parsing is shared
//! with production (`studio_model::parse_record`); patches use `json_patch` directly.
//!
//! Decisions where SPEC is silent, as the project made them:
//! - duplicates (S4.2) are keyed by delta id alone; the first well-formed record of an
//!   id counts, every later one is a duplicate even if the first was rejected;
//!   malformed records never register an id;
//! - a non-create at version 1 of a blob that does not exist: `S3.1 blob does not
//!   exist`; a create at a version other than 1: `S3.1 create must have version 1`;
//!   a version at or below the current one: `S4.3 version conflict`;
//! - an update without patch: `S3.2 update without patch`; a transform without patch
//!   keeps the document, raises the version and records `processed_by`;
//! - a revert's patch is exactly `{"to_version": k}` with `1 <= k < current`; it clears
//!   `deleted_at` only when `k` is below the delete's version;
//! - deltas waiting for the same version are tried in log order, the first that applies
//!   wins and the later ones are conflicts; what still waits at the end is `S4.4 version
//!   gap`;
//! - dead letters are listed in the log order of their records;
//! - access (S6, docs/access.md): checked before the version rules; a blob's owner is
//!   its creator; any grant implies `read`; an edge needs `read` on an other end that
//!   exists; a delta of a blob not created yet waits for the create and is then judged
//!   as of that moment; accepted grant records count as accepted.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde_json::Value;
use studio_model::access::{GrantKind, GrantRecord, InputRecord, Permission, parse_input};
use studio_model::{Delta, Operation, PatchFormat, SourcePos, Timestamp, Uuid};

use crate::views::{
    AppliedRecord, BlobRecord, DeadRecord, ProcessedRecord, Tables, comparable_reason, raw_column,
    reason_kind,
};

/// What a replay of a log must produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The four view tables.
    pub tables: Tables,
    /// The summary counts.
    pub counts: Counts,
}

/// The summary of a replay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Records (lines) read.
    pub records: u64,
    /// Deltas accepted.
    pub accepted: u64,
    /// Repeated delta ids (S4.2).
    pub duplicates: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Dead letters by reason kind (the reason text before its first ':').
    pub by_reason: BTreeMap<String, u64>,
}

impl Counts {
    /// accepted + duplicates + dead letters = records.
    pub fn add_up(&self) -> bool {
        self.accepted + self.duplicates + self.dead_letters == self.records
    }
}

/// Splits a log file's bytes into records the way the file source does: on `\n`,
/// keeping every other byte (a `\r` included); a final line without `\n` is a record.
pub fn split_lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut lines: Vec<Vec<u8>> = bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    // `split` yields one empty piece after a final '\n' (and one for an empty file).
    if lines.last().is_some_and(Vec::is_empty) {
        lines.pop();
    }
    lines
}

/// Joins records into a log file's bytes (each followed by `\n`).
pub fn join_lines(lines: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out
}

/// One blob as the model keeps it.
struct Blob {
    user_id: Uuid,
    content_type: String,
    parent_id: Option<Uuid>,
    created_at: Timestamp,
    updated_at: Timestamp,
    deleted_at: Option<Timestamp>,
    /// The version the delete made, while deleted.
    deleted_by_version: Option<u64>,
    /// `docs[v - 1]` is the document at version `v`.
    docs: Vec<Value>,
    /// provider -> (version, delta id) of its latest transform.
    processed: BTreeMap<String, (u64, Uuid)>,
}

impl Blob {
    fn version(&self) -> u64 {
        self.docs.len() as u64
    }
}

/// A rejected record, with its log position.
struct Dead {
    pos: u64,
    delta_id: Option<Uuid>,
    blob_id: Option<Uuid>,
    reason: String,
    raw: Vec<u8>,
}

#[derive(Default)]
struct Model {
    seen: HashSet<Uuid>,
    blobs: BTreeMap<Uuid, Blob>,
    /// Waiting deltas, in log order.
    waiting: Vec<Delta>,
    /// Deltas of blobs not created yet, in log order (S6: judged at the create).
    held: Vec<Delta>,
    /// Live grants: (blob, grantee, permission).
    grants: BTreeSet<(Uuid, Uuid, Permission)>,
    /// Grant record ids seen.
    seen_grants: HashSet<Uuid>,
    /// Accepted grant records.
    grants_accepted: u64,
    applied: Vec<AppliedRecord>,
    dead: Vec<Dead>,
    counts: Counts,
}

/// Runs the model over a log's records, in order.
pub fn run(lines: &[Vec<u8>]) -> Expected {
    let mut m = Model::default();
    for (offset, line) in lines.iter().enumerate() {
        m.counts.records += 1;
        match parse_input(line, SourcePos::at(offset as u64)) {
            Err(letter) => m.dead.push(Dead {
                pos: offset as u64,
                delta_id: None,
                blob_id: None,
                reason: letter.reason.to_string(),
                raw: line.clone(),
            }),
            Ok(InputRecord::Grant(grant)) => m.grant(grant),
            Ok(InputRecord::Result(_)) => {} // the generated logs hold no results
            Ok(InputRecord::Delta(delta)) => {
                if m.seen.insert(delta.id) {
                    m.arrive(delta);
                } else {
                    m.counts.duplicates += 1;
                }
            }
        }
    }
    // S4.4: the bounded replay ends; whatever still waits is a gap.
    let mut left = std::mem::take(&mut m.waiting);
    left.append(&mut m.held);
    for delta in left {
        let current = m.version_of(delta.blob_id);
        let reason = format!(
            "S4.4 version gap: claims version {} but the blob stayed at version {current}",
            delta.version
        );
        m.reject(&delta, reason);
    }
    m.finish()
}

fn text(id: Uuid) -> String {
    id.hyphenated().to_string()
}

impl Model {
    fn version_of(&self, blob: Uuid) -> u64 {
        self.blobs.get(&blob).map_or(0, Blob::version)
    }

    fn reject(&mut self, delta: &Delta, reason: String) {
        self.dead.push(Dead {
            pos: delta.pos.offset,
            delta_id: Some(delta.id),
            blob_id: Some(delta.blob_id),
            reason,
            raw: delta.raw.as_bytes().to_vec(),
        });
    }

    /// S6 first (access is decided before the version rules), then [`Self::admit`].
    fn arrive(&mut self, delta: Delta) {
        let blob = delta.blob_id;
        if self.blobs.contains_key(&blob) {
            if let Err(reason) = self.authorized(&delta) {
                return self.reject(&delta, reason);
            }
        } else if delta.operation == Operation::Create && delta.version == 1 {
            if let Err(reason) = self.edges_readable(&delta) {
                return self.reject(&delta, reason);
            }
            self.admit(delta);
            let (held, rest) = std::mem::take(&mut self.held)
                .into_iter()
                .partition(|d| d.blob_id == blob);
            self.held = rest;
            for d in held {
                match self.authorized(&d) {
                    Ok(()) => self.admit(d),
                    Err(reason) => self.reject(&d, reason),
                }
            }
            return;
        } else if delta.operation != Operation::Create && delta.version > 1 {
            return self.held.push(delta);
        }
        self.admit(delta);
    }

    /// True when `user` may use `p` on `blob`: its owner, a grant of `p`, or for
    /// `read` any grant.
    fn may(&self, blob: Uuid, user: Uuid, p: Permission) -> bool {
        let Some(b) = self.blobs.get(&blob) else {
            return false;
        };
        b.user_id == user
            || self.grants.contains(&(blob, user, p))
            || (p == Permission::Read
                && Permission::ALL
                    .iter()
                    .any(|q| self.grants.contains(&(blob, user, *q))))
    }

    /// S6.2 for a delta of an existing blob (a create there is a conflict, not S6).
    fn authorized(&self, d: &Delta) -> Result<(), String> {
        let needed = match d.operation {
            Operation::Create => return Ok(()),
            Operation::Delete => Permission::Delete,
            _ => Permission::Write,
        };
        if !self.may(d.blob_id, d.user_id, needed) {
            return Err("S6.2 not authorized".into());
        }
        self.edges_readable(d)
    }

    /// S6.4: the other end of each edge, when it exists, must be readable.
    fn edges_readable(&self, d: &Delta) -> Result<(), String> {
        let parent = d.parent_id.filter(|_| d.operation == Operation::Create);
        let ok = parent
            .iter()
            .chain(&d.child_ids)
            .all(|o| !self.blobs.contains_key(o) || self.may(*o, d.user_id, Permission::Read));
        if ok {
            Ok(())
        } else {
            Err("S6.2 not authorized".into())
        }
    }

    /// A grant record (S6.1, S6.4).
    fn grant(&mut self, g: GrantRecord) {
        if !self.seen_grants.insert(g.id) {
            self.counts.duplicates += 1;
            return;
        }
        let allowed = match self.blobs.get(&g.blob_id) {
            None => false,
            Some(b) if b.user_id == g.granted_by => true,
            Some(_) => {
                g.permission != Permission::Share
                    && self
                        .grants
                        .contains(&(g.blob_id, g.granted_by, Permission::Share))
            }
        };
        if !allowed {
            return self.dead.push(Dead {
                pos: g.pos.offset,
                delta_id: Some(g.id),
                blob_id: Some(g.blob_id),
                reason: "S6.1 not authorized".into(),
                raw: g.raw.as_bytes().to_vec(),
            });
        }
        self.grants_accepted += 1;
        let key = (g.blob_id, g.grantee, g.permission);
        match g.kind {
            GrantKind::Grant => self.grants.insert(key),
            GrantKind::Revoke => self.grants.remove(&key),
        };
    }

    fn admit(&mut self, delta: Delta) {
        let current = self.version_of(delta.blob_id);
        if delta.operation == Operation::Create && delta.version != 1 {
            let reason = format!(
                "S3.1 create must have version 1: got version {}",
                delta.version
            );
            return self.reject(&delta, reason);
        }
        if delta.version <= current {
            return self.reject(&delta, conflict(delta.version));
        }
        if delta.version == 1 && delta.operation != Operation::Create {
            let reason = format!(
                "S3.1 blob does not exist: {} at version 1; only a create may start a blob",
                delta.operation.as_str()
            );
            return self.reject(&delta, reason);
        }
        let blob = delta.blob_id;
        self.waiting.push(delta);
        self.settle(blob);
    }

    /// Applies waiting deltas of `blob` for as long as one fits the next version.
    fn settle(&mut self, blob: Uuid) {
        loop {
            let next = self.version_of(blob) + 1;
            let (candidates, rest): (Vec<Delta>, Vec<Delta>) = std::mem::take(&mut self.waiting)
                .into_iter()
                .partition(|d| d.blob_id == blob && d.version == next);
            self.waiting = rest;
            if candidates.is_empty() {
                return;
            }
            let mut won = false;
            for delta in candidates {
                if won {
                    self.reject(&delta, conflict(next));
                    continue;
                }
                match self.apply(&delta) {
                    Ok(()) => won = true,
                    Err(reason) => self.reject(&delta, reason),
                }
            }
            if !won {
                return;
            }
        }
    }

    /// Applies a delta whose version is the blob's next one.
    fn apply(&mut self, d: &Delta) -> Result<(), String> {
        let op = d.operation;
        let patch: Option<Value> = d
            .patch_json()
            .map(|text| serde_json::from_str(text).expect("the record parsed as JSON"));
        if op == Operation::Create {
            assert!(!self.blobs.contains_key(&d.blob_id));
            self.blobs.insert(
                d.blob_id,
                Blob {
                    user_id: d.user_id,
                    content_type: d
                        .content_type
                        .clone()
                        .unwrap_or_else(|| "application/json".to_owned()),
                    parent_id: d.parent_id,
                    created_at: d.created_at,
                    updated_at: d.created_at,
                    deleted_at: None,
                    deleted_by_version: None,
                    docs: vec![patch.unwrap_or_else(|| Value::Object(Default::default()))],
                    processed: BTreeMap::new(),
                },
            );
            self.record_applied(d);
            return Ok(());
        }
        let blob = self.blobs.get_mut(&d.blob_id).expect("version >= 2 exists");
        if blob.deleted_at.is_some() && op != Operation::Revert {
            return Err(format!(
                "S3.4 blob is deleted: {} refused; a deleted blob accepts only revert",
                op.as_str()
            ));
        }
        let current_doc = blob.docs.last().expect("created").clone();
        let new_doc = match op {
            Operation::Create => unreachable!(),
            Operation::Update | Operation::Transform => match (&patch, d.patch_json()) {
                (Some(value), Some(text)) => {
                    let format = d.patch_format.unwrap_or(if value.is_array() {
                        PatchFormat::JsonPatch
                    } else {
                        PatchFormat::MergePatch
                    });
                    apply_patch(current_doc, format, text, value).ok_or_else(|| {
                        if op == Operation::Update {
                            "S3.2 patch does not apply".to_owned()
                        } else {
                            "S3.3 patch does not apply".to_owned()
                        }
                    })?
                }
                _ if op == Operation::Update => {
                    return Err("S3.2 update without patch: update needs a patch".to_owned());
                }
                _ => current_doc,
            },
            Operation::Delete => current_doc,
            Operation::Revert => {
                let shape = || {
                    "S3.5 revert patch invalid: the patch must be {\"to_version\": k}".to_owned()
                };
                let target = patch
                    .as_ref()
                    .and_then(|p| p.as_object())
                    .ok_or_else(shape)?;
                if target.len() != 1 {
                    return Err(shape());
                }
                let k = target
                    .get("to_version")
                    .and_then(Value::as_u64)
                    .ok_or_else(shape)?;
                let current = blob.version();
                if k < 1 || k >= current {
                    return Err(format!(
                        "S3.5 revert target out of range: to_version {k} is not in 1..{current} (1 <= k < current version)"
                    ));
                }
                blob.docs[(k - 1) as usize].clone()
            }
        };
        match op {
            Operation::Delete => {
                blob.deleted_at = Some(d.created_at);
                blob.deleted_by_version = Some(d.version);
            }
            Operation::Revert => {
                let to = patch
                    .as_ref()
                    .and_then(|p| p.get("to_version"))
                    .and_then(Value::as_u64)
                    .expect("checked above");
                if blob.deleted_by_version.is_some_and(|deleted| to < deleted) {
                    blob.deleted_at = None;
                    blob.deleted_by_version = None;
                }
            }
            Operation::Transform => {
                let provider = d.provider_id.clone().expect("S1 requires it on transform");
                blob.processed.insert(provider, (d.version, d.id));
            }
            _ => {}
        }
        blob.docs.push(new_doc);
        blob.updated_at = d.created_at;
        self.record_applied(d);
        Ok(())
    }

    fn record_applied(&mut self, d: &Delta) {
        self.applied.push(AppliedRecord {
            delta_id: text(d.id),
            blob_id: text(d.blob_id),
            version: d.version as i64,
            operation: d.operation.as_str().to_owned(),
            user_id: text(d.user_id),
            provider_id: d.provider_id.clone(),
            caused_by: d.caused_by.map(text),
            created_at: d.created_at.to_rfc3339(),
        });
    }

    fn finish(mut self) -> Expected {
        let blobs: Vec<BlobRecord> = self
            .blobs
            .iter()
            .map(|(id, b)| BlobRecord {
                blob_id: text(*id),
                user_id: text(b.user_id),
                version: b.version() as i64,
                content_type: b.content_type.clone(),
                doc: b.docs.last().expect("created").to_string(),
                parent_id: b.parent_id.map(text),
                created_at: b.created_at.to_rfc3339(),
                updated_at: b.updated_at.to_rfc3339(),
                deleted_at: b.deleted_at.map(|t| t.to_rfc3339()),
            })
            .collect();
        let processed: Vec<ProcessedRecord> = self
            .blobs
            .iter()
            .flat_map(|(id, b)| {
                b.processed
                    .iter()
                    .map(move |(provider, (version, delta))| ProcessedRecord {
                        blob_id: text(*id),
                        provider_id: provider.clone(),
                        version: *version as i64,
                        delta_id: text(*delta),
                    })
            })
            .collect();
        self.dead.sort_by_key(|d| d.pos);
        for d in &self.dead {
            *self
                .counts
                .by_reason
                .entry(reason_kind(&d.reason).to_owned())
                .or_default() += 1;
        }
        let dead_letters: Vec<DeadRecord> = self
            .dead
            .iter()
            .map(|d| DeadRecord {
                delta_id: d.delta_id.map(text),
                blob_id: d.blob_id.map(text),
                reason: comparable_reason(&d.reason),
                raw: raw_column(&d.raw),
            })
            .collect();
        self.counts.accepted = self.applied.len() as u64 + self.grants_accepted;
        self.counts.dead_letters = dead_letters.len() as u64;
        Expected {
            tables: Tables::new(blobs, self.applied, processed, dead_letters)
                .with_grants(self.grants_accepted),
            counts: self.counts,
        }
    }
}

fn conflict(version: u64) -> String {
    format!(
        "S4.3 version conflict: version {version} is already held by an earlier delta in log order"
    )
}

/// Applies a patch to a copy of `doc`; `None` when it does not apply (S3.2: a JSON
/// Patch is all-or-nothing, so the caller keeps the old document).
fn apply_patch(doc: Value, format: PatchFormat, text: &str, value: &Value) -> Option<Value> {
    match format {
        PatchFormat::MergePatch => {
            let mut doc = doc;
            json_patch::merge(&mut doc, value);
            Some(doc)
        }
        PatchFormat::JsonPatch => {
            // Parsed from the text, not the value: an operation with a member given twice
            // is invalid (RFC 6902 A.13), which a `Value` would hide.
            let ops: json_patch::Patch = serde_json::from_str(text).ok()?;
            let mut doc = doc;
            for op in &ops.0 {
                // Issue 13's decision: no operation may place a value deeper than 127
                // containers, and the result nests at most 127 (what serde_json reads).
                if let json_patch::PatchOperation::Add(json_patch::AddOperation { path, value })
                | json_patch::PatchOperation::Replace(json_patch::ReplaceOperation {
                    path,
                    value,
                }) = op
                    && path.as_str().matches('/').count() + nesting(value) > 127
                {
                    return None;
                }
                match op {
                    // RFC 6902 4.6: numbers are equal when their values are.
                    json_patch::PatchOperation::Test(t) => {
                        if !rfc6902_equal(doc.pointer(t.path.as_str())?, &t.value) {
                            return None;
                        }
                    }
                    other => json_patch::patch(&mut doc, std::slice::from_ref(other)).ok()?,
                }
            }
            (nesting(&doc) <= 127).then_some(doc)
        }
    }
}

/// Arrays and objects nested in a value (a scalar: 0).
fn nesting(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(nesting).max().unwrap_or(0),
        Value::Object(members) => 1 + members.values().map(nesting).max().unwrap_or(0),
        _ => 0,
    }
}

/// RFC 6902 section 4.6 equality.
fn rfc6902_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(i), Some(j)) = (x.as_i128(), y.as_i128()) {
                i == j
            } else {
                x.as_f64() == y.as_f64()
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| rfc6902_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| rfc6902_equal(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: u32, op: &str, version: u64, extra: &str) -> Vec<u8> {
        format!(
            r#"{{"id":"00000000-0000-4000-8000-{id:012x}","blob_id":"00000000-0000-4000-8000-0000000000b1","user_id":"00000000-0000-4000-8000-0000000000a1","operation":"{op}","version":{version},"created_at":"2026-01-01T00:00:{:02}Z"{extra}}}"#,
            id % 60
        )
        .into_bytes()
    }

    #[test]
    fn folds_a_small_log() {
        let log = vec![
            line(3, "update", 3, r#","patch":{"c":3}"#),
            line(1, "create", 1, r#","patch":{"a":1}"#),
            line(
                2,
                "update",
                2,
                r#","patch":[{"op":"add","path":"/b","value":2}]"#,
            ),
            line(2, "update", 2, r#","patch":{"ignored":1}"#),
            b"nope".to_vec(),
            line(4, "delete", 4, ""),
            line(5, "update", 5, r#","patch":{"x":1}"#),
            line(6, "revert", 5, r#","patch":{"to_version":2}"#),
            line(7, "update", 9, r#","patch":{"x":1}"#),
        ];
        let e = run(&log);
        assert_eq!(e.counts.records, 9);
        assert_eq!(e.counts.duplicates, 1);
        assert_eq!(e.counts.accepted, 5);
        assert_eq!(e.counts.dead_letters, 3);
        assert!(e.counts.add_up());
        let blob = &e.tables.blobs[0];
        assert_eq!(blob.version, 5);
        assert_eq!(blob.doc, r#"{"a":1,"b":2}"#);
        assert_eq!(blob.deleted_at, None);
        assert_eq!(blob.updated_at, "2026-01-01T00:00:06Z");
        let reasons: Vec<&str> = e
            .tables
            .dead_letters
            .iter()
            .map(|d| d.reason.as_str())
            .collect();
        assert_eq!(reasons.len(), 3);
        assert!(reasons[0].starts_with("S1.1 malformed: "), "{reasons:?}");
        assert!(
            reasons[1].starts_with("S3.4 blob is deleted: "),
            "{reasons:?}"
        );
        assert!(reasons[2].starts_with("S4.4 version gap: "), "{reasons:?}");
    }

    #[test]
    fn split_lines_matches_the_file_source() {
        assert_eq!(split_lines(b""), Vec::<Vec<u8>>::new());
        assert_eq!(split_lines(b"a\n"), vec![b"a".to_vec()]);
        assert_eq!(
            split_lines(b"a\r\n\nb"),
            vec![b"a\r".to_vec(), Vec::<u8>::new(), b"b".to_vec()]
        );
        assert_eq!(split_lines(b"\n"), vec![Vec::<u8>::new()]);
    }

    #[test]
    fn numbers_compare_by_value_in_test_ops() {
        let doc: Value = serde_json::from_str(r#"{"n":1}"#).unwrap();
        let text = r#"[{"op":"test","path":"/n","value":1.0}]"#;
        let value: Value = serde_json::from_str(text).unwrap();
        assert!(apply_patch(doc.clone(), PatchFormat::JsonPatch, text, &value).is_some());
        let text = r#"[{"op":"test","path":"/n","value":"1"}]"#;
        let value: Value = serde_json::from_str(text).unwrap();
        assert!(apply_patch(doc, PatchFormat::JsonPatch, text, &value).is_none());
    }
}
