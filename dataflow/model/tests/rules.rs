//! SPEC S3 (operations) and S4 (order, conflicts) driven through `BlobLedger` directly,
//! plus every dead-letter `Reason`: deltas are written as JSON lines, parsed with
//! `parse_record` at increasing log positions and offered in that order; results are
//! read from `Effects` and from the rows `flush` emits.

use std::collections::BTreeMap;

use serde_json::Value;
use studio_model::{
    AppliedRow, BlobLedger, BlobRow, DeadLetter, Effects, Operation, ProcessedRow, Reason,
    SourcePos, Timestamp, Uuid, parse_record,
};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

const BLOB: u64 = 1;
const USER: u64 = 1;
const PARENT: u64 = 99;

fn uuid_text(kind: u32, n: u64) -> String {
    format!("{kind:08x}-0000-4000-8000-{n:012x}")
}

/// Delta ids, blob ids and user ids live in different UUID ranges.
fn did(n: u64) -> Uuid {
    Uuid::parse_str(&uuid_text(0xd, n)).unwrap()
}
fn bid(n: u64) -> Uuid {
    Uuid::parse_str(&uuid_text(0xb, n)).unwrap()
}
fn uid(n: u64) -> Uuid {
    Uuid::parse_str(&uuid_text(0xa, n)).unwrap()
}

/// `created_at` of delta `n`: `n` minutes after 2026-01-01T00:00:00Z (distinct per delta).
fn at(n: u64) -> String {
    format!("2026-01-01T{:02}:{:02}:00Z", n / 60, n % 60)
}
fn ts(n: u64) -> Timestamp {
    Timestamp::parse_rfc3339(&at(n)).unwrap()
}

/// One delta as a JSON line. `patch` and `metadata` are JSON texts inserted verbatim.
#[allow(clippy::too_many_arguments)]
fn delta_line(
    id: u64,
    blob: u64,
    user: u64,
    op: &str,
    version: u64,
    patch: Option<&str>,
    metadata: Option<&str>,
    provider: Option<&str>,
) -> String {
    let mut s = format!(
        r#"{{"id":"{}","blob_id":"{}","user_id":"{}","operation":"{op}","version":{version},"created_at":"{}""#,
        uuid_text(0xd, id),
        uuid_text(0xb, blob),
        uuid_text(0xa, user),
        at(id)
    );
    if let Some(p) = provider {
        s.push_str(&format!(
            r#","provider_id":{}"#,
            serde_json::to_string(p).unwrap()
        ));
    }
    if let Some(p) = patch {
        s.push_str(&format!(r#","patch":{p}"#));
    }
    if let Some(m) = metadata {
        s.push_str(&format!(r#","metadata":{m}"#));
    }
    s.push('}');
    s
}

fn fmt_meta(format: &str) -> String {
    format!(r#"{{"patch_format":"{format}"}}"#)
}

/// Compact JSON with sorted keys (serde_json without `preserve_order`), for originals
/// written by hand with spaces.
fn canon(json: &str) -> String {
    serde_json::from_str::<Value>(json).unwrap().to_string()
}

/// One blob's ledger, the effects so far, and the view rows it emitted.
struct H {
    ledger: BlobLedger,
    fx: Effects,
    next_pos: u64,
    next_id: u64,
    /// The `blobs` row currently held by the view (after applying every flush).
    row: Option<BlobRow>,
    /// The `processed_by` rows currently held by the view.
    processed: BTreeMap<String, ProcessedRow>,
}

impl H {
    fn new() -> Self {
        H {
            ledger: BlobLedger::default(),
            fx: Effects::default(),
            next_pos: 0,
            next_id: 1,
            row: None,
            processed: BTreeMap::new(),
        }
    }

    /// Parses `line` at the next log position and offers it.
    fn offer_line(&mut self, line: &str) {
        let pos = SourcePos::at(self.next_pos);
        self.next_pos += 1;
        let delta = parse_record(line.as_bytes(), pos)
            .unwrap_or_else(|dl| panic!("test line does not parse: {}: {line}", dl.reason));
        self.ledger.offer(delta, &mut self.fx);
    }

    /// Builds a delta for this blob with the next id, offers it, returns its id number.
    fn offer(
        &mut self,
        op: &str,
        version: u64,
        patch: Option<&str>,
        metadata: Option<&str>,
        provider: Option<&str>,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let line = delta_line(id, BLOB, USER, op, version, patch, metadata, provider);
        self.offer_line(&line);
        id
    }

    fn create(&mut self, patch: Option<&str>) -> u64 {
        self.offer("create", 1, patch, None, None)
    }
    fn update(&mut self, version: u64, patch: &str) -> u64 {
        self.offer("update", version, Some(patch), None, None)
    }
    fn update_as(&mut self, version: u64, patch: &str, format: &str) -> u64 {
        self.offer(
            "update",
            version,
            Some(patch),
            Some(&fmt_meta(format)),
            None,
        )
    }
    fn transform(&mut self, version: u64, provider: &str, patch: Option<&str>) -> u64 {
        self.offer("transform", version, patch, None, Some(provider))
    }
    fn delete(&mut self, version: u64) -> u64 {
        self.offer("delete", version, None, None, None)
    }
    fn revert(&mut self, version: u64, to: u64) -> u64 {
        self.offer(
            "revert",
            version,
            Some(&format!(r#"{{"to_version":{to}}}"#)),
            None,
            None,
        )
    }

    /// Flushes, checks that every retraction retracts what is held, and returns the diffs.
    #[allow(clippy::type_complexity)]
    fn flush(&mut self) -> (Vec<(BlobRow, isize)>, Vec<(ProcessedRow, isize)>) {
        let (mut blobs, mut processed) = (Vec::new(), Vec::new());
        self.ledger.flush(&mut blobs, &mut processed);
        for (row, diff) in &blobs {
            match diff {
                -1 => {
                    assert_eq!(self.row.as_ref(), Some(row), "retracts a row not held");
                    self.row = None;
                }
                1 => {
                    assert!(
                        self.row.is_none(),
                        "a second row without retracting the first"
                    );
                    self.row = Some(row.clone());
                }
                d => panic!("diff {d}"),
            }
        }
        for (row, diff) in &processed {
            match diff {
                -1 => {
                    let old = self.processed.remove(&row.provider_id);
                    assert_eq!(old.as_ref(), Some(row), "retracts a processed row not held");
                }
                1 => {
                    let old = self.processed.insert(row.provider_id.clone(), row.clone());
                    assert!(old.is_none(), "a second processed row without retraction");
                }
                d => panic!("diff {d}"),
            }
        }
        (blobs, processed)
    }

    /// The blob's row as the view holds it after a flush.
    fn row(&mut self) -> BlobRow {
        self.flush();
        self.row.clone().expect("the blob has a row")
    }

    fn doc(&mut self) -> String {
        self.row().doc.to_json()
    }

    /// Takes the dead letters so far.
    fn dead(&mut self) -> Vec<DeadLetter> {
        std::mem::take(&mut self.fx.dead_letters)
    }

    /// Takes the reasons of the dead letters so far.
    fn reasons(&mut self) -> Vec<Reason> {
        self.dead().into_iter().map(|d| d.reason).collect()
    }

    /// Takes the applied rows so far.
    fn applied(&mut self) -> Vec<AppliedRow> {
        std::mem::take(&mut self.fx.applied)
    }

    /// Takes the applied rows so far as (delta id number, version).
    fn applied_ids(&mut self) -> Vec<(Uuid, u64)> {
        self.applied()
            .into_iter()
            .map(|a| (a.delta_id, a.version))
            .collect()
    }

    /// Asserts that flushing now emits nothing: the blob is as it was.
    fn assert_unchanged(&mut self) {
        let (blobs, processed) = self.flush();
        assert!(blobs.is_empty(), "blob row changed: {blobs:?}");
        assert!(
            processed.is_empty(),
            "processed rows changed: {processed:?}"
        );
    }
}

/// The one dead letter's reason, checking there is exactly one.
fn one(reasons: Vec<Reason>) -> Reason {
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    reasons.into_iter().next().unwrap()
}

// ---------------------------------------------------------------------------------------
// S3.1 create
// ---------------------------------------------------------------------------------------

#[test]
fn s3_1_create_doc_is_patch_with_metadata_and_parent() {
    let mut h = H::new();
    let line = format!(
        r#"{{"id":"{}","blob_id":"{}","user_id":"{}","operation":"create","version":1,"created_at":"{}","parent_id":"{}","patch":{{ "b" : 1, "a" : {{"d":2,"c":[1, 2]}} }},"metadata":{{"content_type":"text/markdown","other":true}}}}"#,
        uuid_text(0xd, 7),
        uuid_text(0xb, BLOB),
        uuid_text(0xa, 3),
        at(7),
        uuid_text(0xb, PARENT),
    );
    h.offer_line(&line);
    assert!(h.reasons().is_empty());
    let applied = h.applied();
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].delta_id, did(7));
    assert_eq!(applied[0].operation, Operation::Create);
    assert_eq!(applied[0].version, 1);
    assert_eq!(
        h.row(),
        BlobRow {
            blob_id: bid(BLOB),
            user_id: uid(3),
            version: 1,
            content_type: "text/markdown".into(),
            doc: studio_model::Doc::new(
                serde_json::from_str(r#"{"a":{"c":[1,2],"d":2},"b":1}"#).unwrap()
            ),
            parent_id: Some(bid(PARENT)),
            created_at: ts(7),
            updated_at: ts(7),
            deleted_at: None,
        }
    );
    assert_eq!(h.ledger.version(), 1);
}

#[test]
fn s3_1_create_without_patch_is_empty_object_and_default_content_type() {
    let mut h = H::new();
    h.create(None);
    let row = h.row();
    assert_eq!(row.doc.to_json(), "{}");
    assert_eq!(row.content_type, "application/json");
    assert_eq!(row.parent_id, None);
    assert_eq!(row.version, 1);
    assert_eq!(row.created_at, ts(1));
    assert_eq!(row.updated_at, ts(1));

    // `null` is absent too.
    let mut h = H::new();
    h.create(Some("null"));
    assert_eq!(h.doc(), "{}");
}

#[test]
fn s3_1_create_doc_may_be_any_json_value() {
    for doc in [r#""hello""#, "[1,2]", "42", "true", r#"["a",{"b":null}]"#] {
        let mut h = H::new();
        h.create(Some(doc));
        assert!(h.reasons().is_empty(), "{doc}");
        assert_eq!(h.doc(), doc);
    }
    // A create's patch is the document whatever `patch_format` says.
    let mut h = H::new();
    let patch = r#"[{"op":"add","path":"/a","value":1}]"#;
    h.offer(
        "create",
        1,
        Some(patch),
        Some(&fmt_meta("json-patch")),
        None,
    );
    assert!(h.reasons().is_empty());
    assert_eq!(h.doc(), patch);
}

#[test]
fn s3_1_content_type_only_from_create() {
    let mut h = H::new();
    h.offer(
        "create",
        1,
        Some("{}"),
        Some(r#"{"content_type":"text/plain"}"#),
        None,
    );
    h.offer(
        "update",
        2,
        Some(r#"{"a":1}"#),
        Some(r#"{"content_type":"image/png"}"#),
        None,
    );
    let row = h.row();
    assert_eq!(row.version, 2);
    assert_eq!(row.content_type, "text/plain");
}

#[test]
fn s3_1_create_with_version_other_than_1_is_create_version() {
    let mut h = H::new();
    h.offer("create", 2, Some(r#"{"a":1}"#), None, None);
    let reason = one(h.reasons());
    assert_eq!(reason, Reason::CreateVersion { version: 2 });
    assert_eq!(
        reason.to_string(),
        "S3.1 create must have version 1: got version 2"
    );
    assert_eq!(h.ledger.version(), 0);
    assert_eq!(h.ledger.pending_len(), 0, "rejected, not waiting");
    assert!(h.applied().is_empty());
    let (blobs, _) = h.flush();
    assert!(blobs.is_empty());

    // The blob can still be created afterwards.
    h.create(Some(r#"{"b":2}"#));
    assert_eq!(h.doc(), r#"{"b":2}"#);
}

#[test]
fn s3_1_create_of_existing_blob_is_version_conflict() {
    let mut h = H::new();
    h.create(Some(r#"{"a":1}"#));
    let before = h.row();
    h.create(Some(r#"{"a":2}"#));
    let reason = one(h.reasons());
    assert_eq!(reason, Reason::VersionConflict { version: 1 });
    h.assert_unchanged();
    assert_eq!(h.row(), before);

    // Also after further versions.
    h.update(2, r#"{"b":1}"#);
    h.create(Some(r#"{"a":3}"#));
    assert_eq!(one(h.reasons()), Reason::VersionConflict { version: 1 });
    assert_eq!(h.doc(), r#"{"a":1,"b":1}"#);
}

#[test]
fn s3_1_non_create_at_version_1_is_not_created() {
    for (op, patch, provider) in [
        ("update", Some(r#"{"a":1}"#), None),
        ("transform", Some(r#"{"a":1}"#), Some("p")),
        ("delete", None, None),
        ("revert", Some(r#"{"to_version":1}"#), None),
    ] {
        let mut h = H::new();
        h.offer(op, 1, patch, None, provider);
        let reason = one(h.reasons());
        let operation = Operation::from_wire(op).unwrap();
        assert_eq!(reason, Reason::NotCreated { operation });
        assert_eq!(
            reason.to_string(),
            format!("S3.1 blob does not exist: {op} at version 1; only a create may start a blob")
        );
        assert_eq!(h.ledger.version(), 0);
        assert_eq!(h.ledger.pending_len(), 0);
        let (blobs, _) = h.flush();
        assert!(blobs.is_empty());
    }
}

/// S4.3: a non-create delta claiming version 1 of a blob that exists is a second delta
/// for version 1 (the create holds it): a version conflict, not "blob does not exist".
#[test]
fn s4_3_update_at_version_1_of_existing_blob_is_version_conflict() {
    let mut h = H::new();
    h.create(Some(r#"{"a":1}"#));
    h.update(1, r#"{"a":2}"#);
    assert_eq!(one(h.reasons()), Reason::VersionConflict { version: 1 });
    assert_eq!(h.doc(), r#"{"a":1}"#);
}

// ---------------------------------------------------------------------------------------
// S3.2 update: format choice, all-or-nothing, overrides, missing patch
// ---------------------------------------------------------------------------------------

#[test]
fn s3_2_array_is_json_patch_and_object_is_merge_patch() {
    let mut h = H::new();
    h.create(Some(r#"{"a":1,"list":[1]}"#));
    h.update(2, r#"[{"op":"add","path":"/list/-","value":2}]"#);
    assert_eq!(h.doc(), r#"{"a":1,"list":[1,2]}"#);
    h.update(3, r#"{"list":[9],"a":null,"b":{"c":1}}"#);
    assert_eq!(h.doc(), r#"{"b":{"c":1},"list":[9]}"#);
    assert!(h.reasons().is_empty());
    assert_eq!(h.row().version, 3);
}

#[test]
fn s3_2_json_patch_is_all_or_nothing() {
    let mut h = H::new();
    h.create(Some(r#"{"a":1,"list":[1,2],"o":{"k":"v"}}"#));
    let before = h.row();
    // Ops 0-2 succeed, op 3 fails, op 4 would succeed.
    h.update(
        2,
        r#"[{"op":"add","path":"/b","value":2},{"op":"remove","path":"/list/0"},{"op":"move","from":"/o/k","path":"/moved"},{"op":"remove","path":"/nope"},{"op":"add","path":"/c","value":3}]"#,
    );
    let reason = one(h.reasons());
    match &reason {
        Reason::PatchFailed {
            operation: Operation::Update,
            detail,
        } => {
            assert!(detail.contains("/nope"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        reason
            .to_string()
            .starts_with("S3.2 patch does not apply: "),
        "{reason}"
    );
    h.assert_unchanged();
    assert_eq!(h.row(), before);
    assert_eq!(h.ledger.version(), 1);
    // The state itself was rolled back, not only the row: the next patch sees the
    // original document.
    h.update(2, r#"[{"op":"add","path":"/list/-","value":3}]"#);
    assert!(h.reasons().is_empty());
    assert_eq!(h.doc(), r#"{"a":1,"list":[1,2,3],"o":{"k":"v"}}"#);
}

#[test]
fn s3_2_patch_format_merge_patch_with_array_replaces_doc() {
    let mut h = H::new();
    h.create(Some(r#"{"a":1}"#));
    h.update_as(2, r#"[{"op":"add","path":"/b","value":2}]"#, "merge-patch");
    assert!(h.reasons().is_empty());
    assert_eq!(h.doc(), r#"[{"op":"add","path":"/b","value":2}]"#);
}

#[test]
fn s3_2_patch_format_json_patch_with_object_fails() {
    let mut h = H::new();
    h.create(Some(r#"{"a":1}"#));
    h.flush();
    h.update_as(2, r#"{"a":2}"#, "json-patch");
    let reason = one(h.reasons());
    assert!(
        matches!(
            reason,
            Reason::PatchFailed {
                operation: Operation::Update,
                ..
            }
        ),
        "{reason:?}"
    );
    h.assert_unchanged();
    assert_eq!(h.doc(), r#"{"a":1}"#);
    // Explicit json-patch with an array works.
    h.update_as(
        2,
        r#"[{"op":"replace","path":"/a","value":2}]"#,
        "json-patch",
    );
    assert!(h.reasons().is_empty());
    assert_eq!(h.doc(), r#"{"a":2}"#);
}

#[test]
fn s3_2_array_that_is_not_a_json_patch_fails_without_override() {
    let mut h = H::new();
    h.create(Some(r#"{"a":"b"}"#));
    h.update(2, r#"["c"]"#);
    assert!(matches!(
        one(h.reasons()),
        Reason::PatchFailed {
            operation: Operation::Update,
            ..
        }
    ));
    assert_eq!(h.doc(), r#"{"a":"b"}"#);
}

#[test]
fn s3_2_update_without_patch_is_missing_patch() {
    let mut h = H::new();
    h.create(Some(r#"{"a":1}"#));
    h.flush();
    h.offer("update", 2, None, None, None);
    let reason = one(h.reasons());
    assert_eq!(
        reason,
        Reason::MissingPatch {
            operation: Operation::Update
        }
    );
    assert_eq!(
        reason.to_string(),
        "S3.2 update without patch: update needs a patch"
    );
    h.assert_unchanged();
    assert_eq!(h.ledger.version(), 1);
}

/// RFC 7386 row `{"a":"foo"} + null => null`: on the wire a `null` patch is absent
/// (parse.rs: "null is taken as absent"), so the update has no patch. The RFC's result
/// is still reachable with a JSON Patch replacing the root.
#[test]
fn rfc7386_null_patch_row_is_missing_patch_on_the_wire() {
    let mut h = H::new();
    h.create(Some(r#"{"a":"foo"}"#));
    h.update_as(2, "null", "merge-patch");
    assert_eq!(
        one(h.reasons()),
        Reason::MissingPatch {
            operation: Operation::Update
        }
    );
    assert_eq!(h.doc(), r#"{"a":"foo"}"#);
    h.update(2, r#"[{"op":"replace","path":"","value":null}]"#);
    assert!(h.reasons().is_empty());
    assert_eq!(h.doc(), "null");
}

/// Creates `original`, updates it with `patch` (forcing `format` if given) and checks the
/// result: `Some(doc)` exactly, or `None` for a PatchFailed that leaves the blob as it
/// was. A success is also replayed through reverts (S3.5 rebuilds docs from patches).
fn check_patch(original: &str, patch: &str, format: Option<&str>, expected: Option<&str>) {
    let mut h = H::new();
    h.create(Some(original));
    let before = h.row();
    assert_eq!(before.doc.to_json(), canon(original));
    let meta = format.map(fmt_meta);
    let id = h.offer("update", 2, Some(patch), meta.as_deref(), None);
    match expected {
        Some(expected) => {
            assert_eq!(h.reasons(), vec![], "{original} + {patch}");
            assert_eq!(h.applied_ids(), vec![(did(1), 1), (did(id), 2)]);
            let row = h.row();
            assert_eq!(row.version, 2);
            assert_eq!(row.updated_at, ts(id));
            assert_eq!(row.doc.to_json(), expected, "{original} + {patch}");
            h.revert(3, 1);
            assert_eq!(h.doc(), before.doc.to_json(), "revert to 1");
            h.revert(4, 2);
            assert_eq!(h.doc(), expected, "revert to 2");
            assert!(h.reasons().is_empty());
        }
        None => {
            let reason = one(h.reasons());
            assert!(
                matches!(
                    reason,
                    Reason::PatchFailed {
                        operation: Operation::Update,
                        ..
                    }
                ),
                "{original} + {patch}: {reason:?}"
            );
            assert!(
                reason
                    .to_string()
                    .starts_with("S3.2 patch does not apply: ")
            );
            assert_eq!(h.applied_ids(), vec![(did(1), 1)]);
            h.assert_unchanged();
            assert_eq!(h.row(), before);
            assert_eq!(h.ledger.version(), 1);
        }
    }
}

macro_rules! patch_case {
    ($name:ident, $original:expr, $patch:expr, $format:expr, $expected:expr) => {
        #[test]
        fn $name() {
            check_patch($original, $patch, $format, $expected);
        }
    };
}

// RFC 6902 Appendix A.
patch_case!(
    rfc6902_a01_add_object_member,
    r#"{"foo":"bar"}"#,
    r#"[{"op":"add","path":"/baz","value":"qux"}]"#,
    None,
    Some(r#"{"baz":"qux","foo":"bar"}"#)
);
patch_case!(
    rfc6902_a02_add_array_element,
    r#"{"foo":["bar","baz"]}"#,
    r#"[{"op":"add","path":"/foo/1","value":"qux"}]"#,
    None,
    Some(r#"{"foo":["bar","qux","baz"]}"#)
);
patch_case!(
    rfc6902_a03_remove_object_member,
    r#"{"baz":"qux","foo":"bar"}"#,
    r#"[{"op":"remove","path":"/baz"}]"#,
    None,
    Some(r#"{"foo":"bar"}"#)
);
patch_case!(
    rfc6902_a04_remove_array_element,
    r#"{"foo":["bar","qux","baz"]}"#,
    r#"[{"op":"remove","path":"/foo/1"}]"#,
    None,
    Some(r#"{"foo":["bar","baz"]}"#)
);
patch_case!(
    rfc6902_a05_replace_value,
    r#"{"baz":"qux","foo":"bar"}"#,
    r#"[{"op":"replace","path":"/baz","value":"boo"}]"#,
    None,
    Some(r#"{"baz":"boo","foo":"bar"}"#)
);
patch_case!(
    rfc6902_a06_move_value,
    r#"{"foo":{"bar":"baz","waldo":"fred"},"qux":{"corge":"grault"}}"#,
    r#"[{"op":"move","from":"/foo/waldo","path":"/qux/thud"}]"#,
    None,
    Some(r#"{"foo":{"bar":"baz"},"qux":{"corge":"grault","thud":"fred"}}"#)
);
patch_case!(
    rfc6902_a07_move_array_element,
    r#"{"foo":["all","grass","cows","eat"]}"#,
    r#"[{"op":"move","from":"/foo/1","path":"/foo/3"}]"#,
    None,
    Some(r#"{"foo":["all","cows","eat","grass"]}"#)
);
patch_case!(
    rfc6902_a08_test_success,
    r#"{"baz":"qux","foo":["a",2,"c"]}"#,
    r#"[{"op":"test","path":"/baz","value":"qux"},{"op":"test","path":"/foo/1","value":2}]"#,
    None,
    Some(r#"{"baz":"qux","foo":["a",2,"c"]}"#)
);
patch_case!(
    rfc6902_a09_test_error,
    r#"{"baz":"qux"}"#,
    r#"[{"op":"test","path":"/baz","value":"bar"}]"#,
    None,
    None
);
patch_case!(
    rfc6902_a10_add_nested_member,
    r#"{"foo":"bar"}"#,
    r#"[{"op":"add","path":"/child","value":{"grandchild":{}}}]"#,
    None,
    Some(r#"{"child":{"grandchild":{}},"foo":"bar"}"#)
);
patch_case!(
    rfc6902_a11_ignore_unrecognized_elements,
    r#"{"foo":"bar"}"#,
    r#"[{"op":"add","path":"/baz","value":"qux","xyz":123}]"#,
    None,
    Some(r#"{"baz":"qux","foo":"bar"}"#)
);
patch_case!(
    rfc6902_a12_add_to_nonexistent_target_error,
    r#"{"foo":"bar"}"#,
    r#"[{"op":"add","path":"/baz/bat","value":"qux"}]"#,
    None,
    None
);
patch_case!(
    rfc6902_a14_tilde_escape_ordering,
    r#"{"/":9,"~1":10}"#,
    r#"[{"op":"test","path":"/~01","value":10}]"#,
    None,
    Some(r#"{"/":9,"~1":10}"#)
);
patch_case!(
    rfc6902_a15_comparing_strings_and_numbers_error,
    r#"{"/":9,"~1":10}"#,
    r#"[{"op":"test","path":"/~01","value":"10"}]"#,
    None,
    None
);
patch_case!(
    rfc6902_a16_add_array_value,
    r#"{"foo":["bar"]}"#,
    r#"[{"op":"add","path":"/foo/-","value":["abc","def"]}]"#,
    None,
    Some(r#"{"foo":["bar",["abc","def"]]}"#)
);

// RFC 7386 Appendix A (the `null` patch row is `rfc7386_null_patch_row_...` above).
patch_case!(
    rfc7386_row01_replace_member,
    r#"{"a":"b"}"#,
    r#"{"a":"c"}"#,
    None,
    Some(r#"{"a":"c"}"#)
);
patch_case!(
    rfc7386_row02_add_member,
    r#"{"a":"b"}"#,
    r#"{"b":"c"}"#,
    None,
    Some(r#"{"a":"b","b":"c"}"#)
);
patch_case!(
    rfc7386_row03_remove_only_member,
    r#"{"a":"b"}"#,
    r#"{"a":null}"#,
    None,
    Some("{}")
);
patch_case!(
    rfc7386_row04_remove_one_member,
    r#"{"a":"b","b":"c"}"#,
    r#"{"a":null}"#,
    None,
    Some(r#"{"b":"c"}"#)
);
patch_case!(
    rfc7386_row05_array_replaced_by_string,
    r#"{"a":["b"]}"#,
    r#"{"a":"c"}"#,
    None,
    Some(r#"{"a":"c"}"#)
);
patch_case!(
    rfc7386_row06_string_replaced_by_array,
    r#"{"a":"c"}"#,
    r#"{"a":["b"]}"#,
    None,
    Some(r#"{"a":["b"]}"#)
);
patch_case!(
    rfc7386_row07_nested_merge_and_remove,
    r#"{"a": {"b": "c"}}"#,
    r#"{"a": {"b": "d", "c": null}}"#,
    None,
    Some(r#"{"a":{"b":"d"}}"#)
);
patch_case!(
    rfc7386_row08_array_of_objects_replaced,
    r#"{"a": [{"b":"c"}]}"#,
    r#"{"a": [1]}"#,
    None,
    Some(r#"{"a":[1]}"#)
);
patch_case!(
    rfc7386_row09_array_replaces_array,
    r#"["a","b"]"#,
    r#"["c","d"]"#,
    Some("merge-patch"),
    Some(r#"["c","d"]"#)
);
patch_case!(
    rfc7386_row10_array_replaces_object,
    r#"{"a":"b"}"#,
    r#"["c"]"#,
    Some("merge-patch"),
    Some(r#"["c"]"#)
);
patch_case!(
    rfc7386_row12_string_replaces_object,
    r#"{"a":"foo"}"#,
    r#""bar""#,
    None,
    Some(r#""bar""#)
);
patch_case!(
    rfc7386_row13_existing_null_kept,
    r#"{"e":null}"#,
    r#"{"a":1}"#,
    None,
    Some(r#"{"a":1,"e":null}"#)
);
patch_case!(
    rfc7386_row14_object_patch_on_array,
    "[1,2]",
    r#"{"a":"b","c":null}"#,
    None,
    Some(r#"{"a":"b"}"#)
);
patch_case!(
    rfc7386_row15_nested_null_on_missing_member,
    "{}",
    r#"{"a":{"bb":{"ccc":null}}}"#,
    None,
    Some(r#"{"a":{"bb":{}}}"#)
);
patch_case!(
    rfc7386_object_patch_on_string_original,
    r#""string""#,
    r#"{"a":1}"#,
    None,
    Some(r#"{"a":1}"#)
);

// ---------------------------------------------------------------------------------------
// S3.3 transform
// ---------------------------------------------------------------------------------------

#[test]
fn s3_3_transform_requires_provider_at_parse() {
    let line = delta_line(
        5,
        BLOB,
        USER,
        "transform",
        2,
        Some(r#"{"a":1}"#),
        None,
        None,
    );
    let dl = parse_record(line.as_bytes(), SourcePos::at(4)).unwrap_err();
    match &dl.reason {
        Reason::Malformed(what) => assert!(what.contains("provider_id"), "{what}"),
        other => panic!("{other:?}"),
    }
    assert!(dl.reason.to_string().starts_with("S1.1 malformed: "));
    assert_eq!(dl.raw, line.as_bytes());
    assert_eq!(dl.pos, SourcePos::at(4));
}

#[test]
fn s3_3_transform_applies_patch_like_update() {
    let mut h = H::new();
    h.create(Some(r#"{"content":"hello"}"#));
    let t1 = h.transform(2, "summarizer", Some(r#"{"summary":"hi"}"#));
    assert_eq!(h.doc(), r#"{"content":"hello","summary":"hi"}"#);
    let t2 = h.transform(
        3,
        "tagger",
        Some(r#"[{"op":"add","path":"/tags","value":["greeting"]}]"#),
    );
    assert_eq!(
        h.doc(),
        r#"{"content":"hello","summary":"hi","tags":["greeting"]}"#
    );
    let t3 = h.offer(
        "transform",
        4,
        Some(r#"["replaced"]"#),
        Some(&fmt_meta("merge-patch")),
        Some("tagger"),
    );
    assert_eq!(h.doc(), r#"["replaced"]"#);
    assert!(h.reasons().is_empty());
    let applied = h.applied();
    assert_eq!(
        applied
            .iter()
            .map(|a| (a.delta_id, a.operation, a.provider_id.as_deref()))
            .collect::<Vec<_>>(),
        vec![
            (did(1), Operation::Create, None),
            (did(t1), Operation::Transform, Some("summarizer")),
            (did(t2), Operation::Transform, Some("tagger")),
            (did(t3), Operation::Transform, Some("tagger")),
        ]
    );
}

#[test]
fn s3_3_transform_without_patch_keeps_doc_and_raises_version() {
    let mut h = H::new();
    h.create(Some(r#"{"content":"x"}"#));
    let before = h.row();
    let t = h.transform(2, "p", None);
    assert!(h.reasons().is_empty());
    let row = h.row();
    assert_eq!(row.doc.to_json(), before.doc.to_json());
    assert_eq!(row.version, 2);
    assert_eq!(row.updated_at, ts(t));
    // A revert across the unchanged step still finds the doc.
    h.update(3, r#"{"content":"y"}"#);
    h.revert(4, 2);
    assert_eq!(h.doc(), r#"{"content":"x"}"#);
}

#[test]
fn s3_3_transform_records_processed_by_and_retracts_the_old_row() {
    let mut h = H::new();
    h.create(Some(r#"{"content":"x"}"#));
    let (_, processed) = h.flush();
    assert!(processed.is_empty());

    let t1 = h.transform(2, "p", Some(r#"{"p":1}"#));
    let (_, processed) = h.flush();
    let row1 = ProcessedRow {
        blob_id: bid(BLOB),
        provider_id: "p".into(),
        version: 2,
        delta_id: did(t1),
    };
    assert_eq!(processed, vec![(row1.clone(), 1)]);

    // An update does not touch processed_by.
    h.update(3, r#"{"content":"y"}"#);
    let (blobs, processed) = h.flush();
    assert_eq!(blobs.len(), 2);
    assert!(processed.is_empty(), "{processed:?}");

    // The same provider again: old row retracted, new row emitted.
    let t2 = h.transform(4, "p", None);
    let (_, processed) = h.flush();
    let row2 = ProcessedRow {
        blob_id: bid(BLOB),
        provider_id: "p".into(),
        version: 4,
        delta_id: did(t2),
    };
    assert_eq!(processed, vec![(row1, -1), (row2.clone(), 1)]);

    // Another provider: only its own row.
    let t3 = h.transform(5, "q", Some(r#"{"q":1}"#));
    let (_, processed) = h.flush();
    let row3 = ProcessedRow {
        blob_id: bid(BLOB),
        provider_id: "q".into(),
        version: 5,
        delta_id: did(t3),
    };
    assert_eq!(processed, vec![(row3.clone(), 1)]);
    assert_eq!(
        h.processed.values().cloned().collect::<Vec<_>>(),
        vec![row2, row3]
    );
}

#[test]
fn s3_3_failed_transform_is_patch_failed_and_records_nothing() {
    let mut h = H::new();
    h.create(Some(r#"{"content":"x"}"#));
    h.flush();
    h.transform(2, "p", Some(r#"[{"op":"remove","path":"/missing"}]"#));
    let reason = one(h.reasons());
    assert!(
        matches!(
            reason,
            Reason::PatchFailed {
                operation: Operation::Transform,
                ..
            }
        ),
        "{reason:?}"
    );
    assert!(
        reason
            .to_string()
            .starts_with("S3.3 patch does not apply: "),
        "{reason}"
    );
    h.assert_unchanged();
    assert!(h.processed.is_empty());
    assert_eq!(h.ledger.version(), 1);
}

// ---------------------------------------------------------------------------------------
// S3.4 delete
// ---------------------------------------------------------------------------------------

#[test]
fn s3_4_delete_is_soft() {
    let mut h = H::new();
    h.create(Some(r#"{"a":1}"#));
    let d = h.delete(2);
    assert!(h.reasons().is_empty());
    let row = h.row();
    assert_eq!(row.deleted_at, Some(ts(d)));
    assert_eq!(row.updated_at, ts(d));
    assert_eq!(row.created_at, ts(1));
    assert_eq!(row.doc.to_json(), r#"{"a":1}"#);
    assert_eq!(row.version, 2);
}

#[test]
fn s3_4_deleted_blob_accepts_only_revert() {
    let mut h = H::new();
    h.create(Some(r#"{"a":1}"#));
    h.delete(2);
    let deleted = h.row();

    h.update(3, r#"{"a":2}"#);
    h.transform(3, "p", Some(r#"{"a":3}"#));
    h.transform(3, "p", None);
    h.delete(3);
    let reasons = h.reasons();
    assert_eq!(
        reasons,
        vec![
            Reason::Deleted {
                operation: Operation::Update
            },
            Reason::Deleted {
                operation: Operation::Transform
            },
            Reason::Deleted {
                operation: Operation::Transform
            },
            Reason::Deleted {
                operation: Operation::Delete
            },
        ]
    );
    assert_eq!(
        reasons[0].to_string(),
        "S3.4 blob is deleted: update refused; a deleted blob accepts only revert"
    );
    h.assert_unchanged();
    assert_eq!(h.row(), deleted);
    assert!(h.processed.is_empty());

    let r = h.revert(3, 1);
    assert!(h.reasons().is_empty());
    let row = h.row();
    assert_eq!(row.version, 3);
    assert_eq!(row.deleted_at, None);
    assert_eq!(row.updated_at, ts(r));
    assert_eq!(row.doc.to_json(), r#"{"a":1}"#);
    // Live again: updates apply.
    h.update(4, r#"{"a":2}"#);
    assert!(h.reasons().is_empty());
    assert_eq!(h.doc(), r#"{"a":2}"#);
}

// ---------------------------------------------------------------------------------------
// S3.5 revert
// ---------------------------------------------------------------------------------------

#[test]
fn s3_5_revert_rebuilds_docs_after_mixed_patches_and_reverts() {
    let mut h = H::new();
    h.create(Some(r#"{"tags":[],"title":"a"}"#)); // v1
    let v1 = h.doc();
    h.update(2, r#"{"title":"b"}"#); // merge
    let v2 = h.doc();
    h.update(3, r#"[{"op":"add","path":"/tags/-","value":"x"}]"#); // json
    let v3 = h.doc();
    h.update(4, r#"{"body":"t"}"#);
    let v4 = h.doc();
    h.update(
        5,
        r#"[{"op":"replace","path":"/title","value":"c"},{"op":"remove","path":"/body"},{"op":"add","path":"/tags/0","value":"w"}]"#,
    );
    let v5 = h.doc();
    assert_eq!(v1, r#"{"tags":[],"title":"a"}"#);
    assert_eq!(v2, r#"{"tags":[],"title":"b"}"#);
    assert_eq!(v3, r#"{"tags":["x"],"title":"b"}"#);
    assert_eq!(v4, r#"{"body":"t","tags":["x"],"title":"b"}"#);
    assert_eq!(v5, r#"{"tags":["w","x"],"title":"c"}"#);

    h.revert(6, 3);
    assert_eq!(h.doc(), v3);
    h.update(7, r#"{"n":1}"#);
    let v7 = h.doc();
    assert_eq!(v7, r#"{"n":1,"tags":["x"],"title":"b"}"#);
    h.revert(8, 6); // a version that was itself a revert
    assert_eq!(h.doc(), v3);
    h.revert(9, 7); // a patch on top of a revert
    assert_eq!(h.doc(), v7);
    h.revert(10, 1);
    assert_eq!(h.doc(), v1);
    h.revert(11, 5);
    assert_eq!(h.doc(), v5);
    h.revert(12, 10); // a revert to a revert
    assert_eq!(h.doc(), v1);
    h.revert(13, 4);
    assert_eq!(h.doc(), v4);
    h.revert(14, 2);
    assert_eq!(h.doc(), v2);
    // A JSON Patch on top of a reverted doc, then a revert across it.
    h.update(15, r#"[{"op":"add","path":"/tags/-","value":"y"}]"#);
    assert_eq!(h.doc(), r#"{"tags":["y"],"title":"b"}"#);
    h.revert(16, 9);
    assert_eq!(h.doc(), v7);
    h.revert(17, 15);
    assert_eq!(h.doc(), r#"{"tags":["y"],"title":"b"}"#);
    assert!(h.reasons().is_empty());
    assert_eq!(h.row().version, 17);
}

#[test]
fn s3_5_revert_clears_deleted_at_when_target_predates_delete() {
    let mut h = H::new();
    h.create(Some(r#"{"a":1}"#));
    h.update(2, r#"{"a":2}"#);
    let d = h.delete(3);
    assert_eq!(h.row().deleted_at, Some(ts(d)));
    h.revert(4, 2);
    assert!(h.reasons().is_empty());
    let row = h.row();
    assert_eq!(row.deleted_at, None);
    assert_eq!(row.doc.to_json(), r#"{"a":2}"#);
    assert_eq!(row.version, 4);

    // Deleted again, then back to the first version.
    let d2 = h.delete(5);
    assert_eq!(h.row().deleted_at, Some(ts(d2)));
    h.revert(6, 1);
    let row = h.row();
    assert_eq!(row.deleted_at, None);
    assert_eq!(row.doc.to_json(), r#"{"a":1}"#);
}

/// A revert to a version at which the blob was deleted gives the state of that version:
/// deleted, since that delete's `created_at`, with the doc it kept.
#[test]
fn s3_5_revert_to_a_deleted_version_restores_only_its_doc() {
    // SPEC S3.5 read literally: a revert sets the doc and may clear deleted_at (when k
    // predates the delete); it never deletes. Going back to a version that was deleted
    // restores that version's document on a live blob.
    let mut h = H::new();
    h.create(Some(r#"{"a":1}"#));
    h.delete(2);
    h.revert(3, 1);
    assert_eq!(h.row().deleted_at, None);
    h.revert(4, 2);
    assert!(h.reasons().is_empty());
    let row = h.row();
    assert_eq!(row.deleted_at, None);
    assert_eq!(row.doc.to_json(), r#"{"a":1}"#);
    h.update(5, r#"{"a":2}"#);
    assert!(h.reasons().is_empty());
    assert_eq!(h.row().doc.to_json(), r#"{"a":2}"#);
}

#[test]
fn s3_5_reverting_a_deleted_blob_to_the_delete_is_out_of_range() {
    // While deleted the current version is the delete's, so every valid k predates it:
    // a revert that is accepted always clears deleted_at.
    let mut h = H::new();
    h.create(Some(r#"{"a":1}"#));
    h.update(2, r#"{"a":2}"#);
    h.delete(3);
    h.revert(4, 3);
    assert_eq!(
        one(h.reasons()),
        Reason::RevertRange {
            to_version: 3,
            current: 3
        }
    );
    h.revert(4, 2);
    assert!(h.reasons().is_empty());
    assert_eq!(h.row().deleted_at, None);
    assert_eq!(h.row().doc.to_json(), r#"{"a":2}"#);
}

#[test]
fn s3_5_revert_target_out_of_range() {
    let mut h = H::new();
    h.create(Some(r#"{"a":1}"#));
    h.update(2, r#"{"a":2}"#);
    let before = h.row();
    for to in [2, 0, 3, 7] {
        h.revert(3, to);
        let reason = one(h.reasons());
        assert_eq!(
            reason,
            Reason::RevertRange {
                to_version: to,
                current: 2
            }
        );
        assert_eq!(
            reason.to_string(),
            format!(
                "S3.5 revert target out of range: to_version {to} is not in 1..2 (1 <= k < current version)"
            )
        );
        h.assert_unchanged();
    }
    assert_eq!(h.row(), before);
    // k = current - 1 is fine.
    h.revert(3, 1);
    assert!(h.reasons().is_empty());
    assert_eq!(h.doc(), r#"{"a":1}"#);
}

#[test]
fn s3_5_revert_bad_shapes() {
    let mut h = H::new();
    h.create(Some(r#"{"a":1}"#));
    h.update(2, r#"{"a":2}"#);
    let before = h.row();
    let shapes: [Option<&str>; 9] = [
        Some(r#"{"to": 1}"#),
        Some("[1]"),
        None,
        Some("null"),
        Some(r#"{"to_version": 1, "x": 2}"#),
        Some(r#"{"to_version": "1"}"#),
        Some(r#"{"to_version": -1}"#),
        Some(r#"{"to_version": 1.5}"#),
        Some("1"),
    ];
    for patch in shapes {
        h.offer("revert", 3, patch, None, None);
        let reason = one(h.reasons());
        assert_eq!(reason, Reason::RevertShape, "{patch:?}");
        assert_eq!(
            reason.to_string(),
            r#"S3.5 revert patch invalid: the patch must be {"to_version": k}"#
        );
        h.assert_unchanged();
    }
    assert_eq!(h.row(), before);
    // Spaces inside the shape are fine.
    h.offer("revert", 3, Some(r#"{ "to_version" : 1 }"#), None, None);
    assert!(h.reasons().is_empty());
    assert_eq!(h.doc(), r#"{"a":1}"#);
}

// ---------------------------------------------------------------------------------------
// S3.6 version and updated_at
// ---------------------------------------------------------------------------------------

#[test]
fn s3_6_every_accepted_delta_raises_version_by_one_and_sets_updated_at() {
    let mut h = H::new();
    type Step = Box<dyn Fn(&mut H, u64) -> u64>;
    let steps: Vec<Step> = vec![
        Box::new(|h, _| h.create(Some(r#"{"a":1}"#))),
        Box::new(|h, v| h.update(v, r#"{"b":2}"#)),
        Box::new(|h, v| h.update(v, r#"[{"op":"test","path":"/a","value":1}]"#)),
        Box::new(|h, v| h.transform(v, "p", None)),
        Box::new(|h, v| h.transform(v, "p", Some(r#"{"c":3}"#))),
        Box::new(|h, v| h.delete(v)),
        Box::new(|h, v| h.revert(v, 2)),
        Box::new(|h, v| h.update(v, r#"{"d":4}"#)),
    ];
    for (i, step) in steps.iter().enumerate() {
        let version = i as u64 + 1;
        let id = step(&mut h, version);
        assert!(h.reasons().is_empty(), "step {version}");
        let applied = h.applied();
        assert_eq!(applied.len(), 1, "step {version}");
        assert_eq!(applied[0].version, version);
        assert_eq!(applied[0].delta_id, did(id));
        assert_eq!(applied[0].created_at, ts(id));
        assert_eq!(applied[0].user_id, uid(USER));
        assert_eq!(h.ledger.version(), version);
        let row = h.row();
        assert_eq!(row.version, version);
        assert_eq!(row.updated_at, ts(id));
        assert_eq!(row.created_at, ts(1));
    }
    // Rejections change neither.
    h.update(10, r#"{"e":5}"#); // waits
    h.update(9, "[1]"); // fails
    h.assert_unchanged();
    assert_eq!(h.row().version, 8);
}

#[test]
fn s3_6_updated_at_is_normalised_created_at_of_the_delta() {
    let mut h = H::new();
    h.create(None);
    let line = format!(
        r#"{{"id":"{}","blob_id":"{}","user_id":"{}","operation":"update","version":2,"created_at":"2026-03-01T10:00:00.5+02:00","patch":{{"a":1}},"caused_by":"{}"}}"#,
        uuid_text(0xd, 50),
        uuid_text(0xb, BLOB),
        uuid_text(0xa, 2),
        uuid_text(0xd, 1),
    );
    h.offer_line(&line);
    let t = Timestamp::parse_rfc3339("2026-03-01T08:00:00.500Z").unwrap();
    assert_eq!(h.row().updated_at, t);
    let applied = h.applied();
    assert_eq!(applied[1].created_at, t);
    assert_eq!(applied[1].user_id, uid(2));
    assert_eq!(applied[1].caused_by, Some(did(1)));
    assert_eq!(h.row().user_id, uid(USER), "the owner stays the creator");
}

// ---------------------------------------------------------------------------------------
// S4.1 order
// ---------------------------------------------------------------------------------------

#[test]
fn s4_1_delta_ahead_waits_until_the_gap_fills() {
    let mut h = H::new();
    h.create(Some(r#"{"n":0}"#));
    h.flush();
    // v3 only applies on top of v2 (it tests v2's value).
    let v3 = h.update(
        3,
        r#"[{"op":"test","path":"/n","value":1},{"op":"replace","path":"/n","value":2}]"#,
    );
    assert!(h.reasons().is_empty());
    assert_eq!(h.applied().len(), 1, "only the create");
    assert_eq!(h.ledger.pending_len(), 1);
    assert_eq!(h.ledger.version(), 1);
    h.assert_unchanged();

    let v2 = h.update(2, r#"[{"op":"replace","path":"/n","value":1}]"#);
    assert!(h.reasons().is_empty());
    assert_eq!(h.applied_ids(), vec![(did(v2), 2), (did(v3), 3)]);
    assert_eq!(h.ledger.pending_len(), 0);
    let row = h.row();
    assert_eq!(row.version, 3);
    assert_eq!(row.doc.to_json(), r#"{"n":2}"#);
    assert_eq!(row.updated_at, ts(v3));
}

#[test]
fn s4_1_deltas_before_the_create_wait_for_it() {
    let mut h = H::new();
    let u3 = h.update(3, r#"{"c":3}"#);
    let u2 = h.update(2, r#"{"b":2}"#);
    assert_eq!(h.ledger.pending_len(), 2);
    assert_eq!(h.ledger.version(), 0);
    let (blobs, _) = h.flush();
    assert!(blobs.is_empty());
    let c = h.create(Some(r#"{"a":1}"#));
    assert!(h.reasons().is_empty());
    assert_eq!(
        h.applied_ids(),
        vec![(did(c), 1), (did(u2), 2), (did(u3), 3)]
    );
    assert_eq!(h.doc(), r#"{"a":1,"b":2,"c":3}"#);
}

/// Heap's algorithm: every permutation of `0..n`.
fn permutations(n: usize) -> Vec<Vec<usize>> {
    fn heap(k: usize, a: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if k <= 1 {
            out.push(a.clone());
            return;
        }
        heap(k - 1, a, out);
        for i in 0..k - 1 {
            if k.is_multiple_of(2) {
                a.swap(i, k - 1);
            } else {
                a.swap(0, k - 1);
            }
            heap(k - 1, a, out);
        }
    }
    let mut a: Vec<usize> = (0..n).collect();
    let mut out = Vec::new();
    heap(n, &mut a, &mut out);
    out
}

#[test]
fn s4_1_final_state_is_independent_of_arrival_order() {
    let parent = uuid_text(0xb, PARENT);
    let chain: Vec<String> = vec![
        delta_line(
            1,
            BLOB,
            USER,
            "create",
            1,
            Some(r#"{"n":0,"title":"t"}"#),
            Some(r#"{"content_type":"text/plain"}"#),
            None,
        )
        .replace(
            r#""version":1,"#,
            &format!(r#""version":1,"parent_id":"{parent}","#),
        ),
        delta_line(
            2,
            BLOB,
            USER,
            "update",
            2,
            Some(r#"[{"op":"test","path":"/n","value":0},{"op":"replace","path":"/n","value":1}]"#),
            None,
            None,
        ),
        delta_line(
            3,
            BLOB,
            USER,
            "update",
            3,
            Some(r#"{"tags":["a"]}"#),
            None,
            None,
        ),
        delta_line(
            4,
            BLOB,
            USER,
            "transform",
            4,
            Some(r#"[{"op":"add","path":"/tags/-","value":"b"}]"#),
            Some(r#"{"source_version":3}"#),
            Some("p1"),
        ),
        delta_line(5, BLOB, USER, "delete", 5, None, None, None),
        delta_line(
            6,
            BLOB,
            USER,
            "revert",
            6,
            Some(r#"{"to_version":4}"#),
            None,
            None,
        ),
        delta_line(
            7,
            BLOB,
            USER,
            "update",
            7,
            Some(
                r#"[{"op":"test","path":"/tags/1","value":"b"},{"op":"add","path":"/n","value":2}]"#,
            ),
            None,
            None,
        ),
    ];
    let expected_row = BlobRow {
        blob_id: bid(BLOB),
        user_id: uid(USER),
        version: 7,
        content_type: "text/plain".into(),
        doc: studio_model::Doc::new(
            serde_json::from_str(r#"{"n":2,"tags":["a","b"],"title":"t"}"#).unwrap(),
        ),
        parent_id: Some(bid(PARENT)),
        created_at: ts(1),
        updated_at: ts(7),
        deleted_at: None,
    };
    let expected_processed = vec![ProcessedRow {
        blob_id: bid(BLOB),
        provider_id: "p1".into(),
        version: 4,
        delta_id: did(4),
    }];
    let perms = permutations(chain.len());
    assert_eq!(perms.len(), 5040);
    for perm in perms {
        let mut h = H::new();
        for &i in &perm {
            h.offer_line(&chain[i]);
        }
        assert!(
            h.fx.dead_letters.is_empty(),
            "{perm:?}: {:?}",
            h.fx.dead_letters
        );
        let versions: Vec<u64> = h.applied().iter().map(|a| a.version).collect();
        assert_eq!(versions, (1..=7).collect::<Vec<_>>(), "{perm:?}");
        assert_eq!(h.ledger.pending_len(), 0);
        assert_eq!(h.row(), expected_row, "{perm:?}");
        assert_eq!(
            h.processed.values().cloned().collect::<Vec<_>>(),
            expected_processed,
            "{perm:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// S4.3 conflicts
// ---------------------------------------------------------------------------------------

#[test]
fn s4_3_same_version_in_order_first_wins() {
    let mut h = H::new();
    h.create(Some(r#"{"a":0}"#));
    let a = h.update(2, r#"{"a":1}"#);
    let b = h.update(2, r#"{"a":2}"#);
    let dead = h.dead();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].delta_id, Some(did(b)));
    assert_eq!(dead[0].reason, Reason::VersionConflict { version: 2 });
    assert_eq!(
        dead[0].reason.to_string(),
        "S4.3 version conflict: version 2 is already held by an earlier delta in log order"
    );
    assert_eq!(h.applied_ids(), vec![(did(1), 1), (did(a), 2)]);
    assert_eq!(h.doc(), r#"{"a":1}"#);
    // Also once the blob moved on.
    h.update(3, r#"{"a":3}"#);
    h.update(2, r#"{"a":9}"#);
    assert_eq!(one(h.reasons()), Reason::VersionConflict { version: 2 });
    assert_eq!(h.doc(), r#"{"a":3}"#);
}

#[test]
fn s4_3_same_version_both_pending_first_in_log_order_wins() {
    let mut h = H::new();
    h.create(Some(r#"{"a":0}"#));
    let a = h.update(3, r#"{"a":"first"}"#);
    let b = h.update(3, r#"{"a":"second"}"#);
    // v4 depends on the winner of v3.
    let c = h.update(
        4,
        r#"[{"op":"test","path":"/a","value":"first"},{"op":"add","path":"/ok","value":true}]"#,
    );
    assert_eq!(h.ledger.pending_len(), 3);
    assert!(h.reasons().is_empty());
    let v2 = h.update(2, r#"{"b":1}"#);
    let dead = h.dead();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].delta_id, Some(did(b)));
    assert_eq!(dead[0].reason, Reason::VersionConflict { version: 3 });
    assert_eq!(
        h.applied_ids(),
        vec![(did(1), 1), (did(v2), 2), (did(a), 3), (did(c), 4)]
    );
    assert_eq!(h.doc(), r#"{"a":"first","b":1,"ok":true}"#);
    assert_eq!(h.ledger.pending_len(), 0);
}

#[test]
fn s4_3_a_failing_first_candidate_lets_the_next_win() {
    // Waiting in pending.
    let mut h = H::new();
    h.create(Some(r#"{"a":0}"#));
    let bad = h.update(3, r#"[{"op":"remove","path":"/missing"}]"#);
    let good = h.update(3, r#"{"a":"good"}"#);
    let late = h.update(3, r#"{"a":"late"}"#);
    let v2 = h.update(2, r#"{"b":1}"#);
    let dead = h.dead();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0].delta_id, Some(did(bad)));
    assert!(matches!(
        dead[0].reason,
        Reason::PatchFailed {
            operation: Operation::Update,
            ..
        }
    ));
    assert_eq!(dead[1].delta_id, Some(did(late)));
    assert_eq!(dead[1].reason, Reason::VersionConflict { version: 3 });
    assert_eq!(
        h.applied_ids(),
        vec![(did(1), 1), (did(v2), 2), (did(good), 3)]
    );
    assert_eq!(h.doc(), r#"{"a":"good","b":1}"#);

    // The same when they arrive in order.
    let mut h = H::new();
    h.create(Some(r#"{"a":0}"#));
    let bad = h.update(2, r#"[{"op":"remove","path":"/missing"}]"#);
    let good = h.update(2, r#"{"a":"good"}"#);
    let late = h.update(2, r#"{"a":"late"}"#);
    let dead = h.dead();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].delta_id, Some(did(bad)));
    assert_eq!(dead[1].delta_id, Some(did(late)));
    assert_eq!(dead[1].reason, Reason::VersionConflict { version: 2 });
    assert_eq!(h.applied_ids(), vec![(did(1), 1), (did(good), 2)]);
    assert_eq!(h.doc(), r#"{"a":"good"}"#);
}

#[test]
fn s4_3_all_candidates_failing_leave_later_versions_waiting() {
    let mut h = H::new();
    h.create(Some(r#"{"a":0}"#));
    let bad = h.update(3, "[1]");
    let v4 = h.update(4, r#"{"c":4}"#);
    let v2 = h.update(2, r#"{"b":2}"#);
    let dead = h.dead();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].delta_id, Some(did(bad)));
    assert_eq!(h.applied_ids(), vec![(did(1), 1), (did(v2), 2)]);
    assert_eq!(h.ledger.pending_len(), 1);
    let v3 = h.update(3, r#"{"a":3}"#);
    assert!(h.reasons().is_empty());
    assert_eq!(h.applied_ids(), vec![(did(v3), 3), (did(v4), 4)]);
    assert_eq!(h.doc(), r#"{"a":3,"b":2,"c":4}"#);
}

// ---------------------------------------------------------------------------------------
// S4.4 gaps
// ---------------------------------------------------------------------------------------

#[test]
fn s4_4_expire_pending_turns_waiting_deltas_into_version_gaps() {
    let mut h = H::new();
    h.create(Some(r#"{"a":1}"#));
    let before = h.row();
    let v6 = h.update(6, r#"{"f":1}"#);
    let v4 = h.update(4, r#"{"d":1}"#);
    let v3a = h.update(3, r#"{"c":1}"#);
    let v3b = h.update(3, r#"{"c":2}"#);
    assert_eq!(h.ledger.pending_len(), 4);
    assert!(h.reasons().is_empty());
    h.ledger.expire_pending(&mut h.fx);
    let dead = h.dead();
    assert_eq!(
        dead.iter()
            .map(|d| (d.delta_id.unwrap(), d.reason.clone()))
            .collect::<Vec<_>>(),
        vec![
            (
                did(v3a),
                Reason::VersionGap {
                    current: 1,
                    version: 3
                }
            ),
            (
                did(v3b),
                Reason::VersionGap {
                    current: 1,
                    version: 3
                }
            ),
            (
                did(v4),
                Reason::VersionGap {
                    current: 1,
                    version: 4
                }
            ),
            (
                did(v6),
                Reason::VersionGap {
                    current: 1,
                    version: 6
                }
            ),
        ]
    );
    assert_eq!(
        dead[0].reason.to_string(),
        "S4.4 version gap: claims version 3 but the blob stayed at version 1"
    );
    assert_eq!(h.ledger.pending_len(), 0);
    assert_eq!(h.ledger.version(), 1);
    assert_eq!(h.applied().len(), 1);
    h.assert_unchanged();
    assert_eq!(h.row(), before);

    // Nothing waits any more: filling the gap applies only the new delta.
    let v2 = h.update(2, r#"{"b":1}"#);
    assert!(h.reasons().is_empty());
    assert_eq!(h.applied_ids(), vec![(did(v2), 2)]);
    assert_eq!(h.doc(), r#"{"a":1,"b":1}"#);
    // Expiring with nothing pending does nothing.
    h.ledger.expire_pending(&mut h.fx);
    assert!(h.reasons().is_empty());
}

#[test]
fn s4_4_expire_before_the_create() {
    let mut h = H::new();
    let u = h.update(2, r#"{"a":1}"#);
    h.ledger.expire_pending(&mut h.fx);
    let dead = h.dead();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].delta_id, Some(did(u)));
    assert_eq!(
        dead[0].reason,
        Reason::VersionGap {
            current: 0,
            version: 2
        }
    );
    let (blobs, _) = h.flush();
    assert!(blobs.is_empty());
}

// ---------------------------------------------------------------------------------------
// S4.5 failures leave the blob as it was
// ---------------------------------------------------------------------------------------

#[test]
fn s4_5_failing_deltas_leave_blob_unchanged_and_later_deltas_apply() {
    let mut h = H::new();
    h.create(Some(r#"{"a":1}"#));
    h.transform(2, "p", Some(r#"{"p":1}"#));
    let before = h.row();
    let processed_before = h.processed.clone();

    h.update(3, r#"[{"op":"replace","path":"/zzz","value":1}]"#); // PatchFailed
    h.offer("update", 3, None, None, None); // MissingPatch
    h.revert(3, 3); // RevertRange
    h.offer("revert", 3, Some("[3]"), None, None); // RevertShape
    h.transform(3, "p", Some(r#"{"op":"x"}"#)); // applies! (merge patch)
    let reasons = h.reasons();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(matches!(reasons[0], Reason::PatchFailed { .. }));
    assert_eq!(
        reasons[1],
        Reason::MissingPatch {
            operation: Operation::Update
        }
    );
    assert_eq!(
        reasons[2],
        Reason::RevertRange {
            to_version: 3,
            current: 2
        }
    );
    assert_eq!(reasons[3], Reason::RevertShape);
    let row = h.row();
    assert_eq!(row.version, 3);
    assert_eq!(row.doc.to_json(), r#"{"a":1,"op":"x","p":1}"#);
    assert_ne!(row, before);
    assert_ne!(h.processed, processed_before);

    // A failure after a success: nothing accepted is lost.
    let now = h.row();
    h.update(4, r#"[{"op":"test","path":"/a","value":2}]"#);
    assert_eq!(h.reasons().len(), 1);
    h.assert_unchanged();
    assert_eq!(h.row(), now);
    h.update(4, r#"{"b":2}"#);
    assert!(h.reasons().is_empty());
    assert_eq!(h.doc(), r#"{"a":1,"b":2,"op":"x","p":1}"#);
    // The failed deltas left no trace in the history either.
    h.revert(5, 3);
    assert_eq!(h.doc(), r#"{"a":1,"op":"x","p":1}"#);
    h.revert(6, 2);
    assert_eq!(h.doc(), r#"{"a":1,"p":1}"#);
}

// ---------------------------------------------------------------------------------------
// Dead letters: rule numbers and raw bytes
// ---------------------------------------------------------------------------------------

#[test]
fn every_reason_cites_its_rule() {
    let mut all: Vec<Reason> = Vec::new();

    let dl = parse_record(b"not json", SourcePos::at(0)).unwrap_err();
    all.push(dl.reason);

    let mut h = H::new();
    h.offer("create", 3, None, None, None); // CreateVersion
    h.offer("update", 1, Some("{}"), None, None); // NotCreated
    h.create(Some(r#"{"a":1}"#));
    h.offer("update", 2, None, None, None); // MissingPatch
    h.update(2, r#"[{"op":"remove","path":"/x"}]"#); // PatchFailed (update)
    h.transform(2, "p", Some(r#"[{"op":"remove","path":"/x"}]"#)); // PatchFailed (transform)
    h.offer("revert", 2, Some(r#"{"to":1}"#), None, None); // RevertShape
    h.revert(2, 1); // RevertRange
    h.delete(2);
    h.update(3, r#"{"a":2}"#); // Deleted
    h.delete(2); // VersionConflict
    h.update(9, r#"{"a":2}"#);
    h.ledger.expire_pending(&mut h.fx); // VersionGap
    all.extend(h.reasons());

    let expected = [
        ("S1.1", "S1.1 malformed"),
        ("S3.1", "S3.1 create must have version 1"),
        ("S3.1", "S3.1 blob does not exist"),
        ("S3.2", "S3.2 update without patch"),
        ("S3.2", "S3.2 patch does not apply"),
        ("S3.3", "S3.3 patch does not apply"),
        ("S3.5", "S3.5 revert patch invalid"),
        ("S3.5", "S3.5 revert target out of range"),
        ("S3.4", "S3.4 blob is deleted"),
        ("S4.3", "S4.3 version conflict"),
        ("S4.4", "S4.4 version gap"),
    ];
    assert_eq!(all.len(), expected.len(), "{all:?}");
    for (reason, (rule, kind)) in all.iter().zip(expected) {
        let text = reason.to_string();
        assert!(text.starts_with(&format!("{rule} ")), "{text}");
        assert_eq!(reason.kind(), kind);
        assert!(text.starts_with(&format!("{kind}: ")), "{text}");
    }
    // Every variant is represented.
    let variants: std::collections::BTreeSet<_> = all
        .iter()
        .map(std::mem::discriminant)
        .map(|d| format!("{d:?}"))
        .collect();
    assert_eq!(variants.len(), 10);
}

#[test]
fn dead_letters_carry_the_exact_raw_bytes() {
    let mut h = H::new();
    h.create(Some(r#"{"a":1}"#));
    // Spaces, escapes, non-ASCII and an unknown field, all kept byte for byte.
    let line = format!(
        "{{ \"id\" : \"{}\",\n \"blob_id\":\"{}\", \"user_id\":\"{}\", \"operation\":\"update\", \"version\": 2, \"created_at\":\"2026-01-01T00:00:00+01:00\", \"patch\" :  [ {{\"op\":\"remove\", \"path\":\"/caf\u{e9}\\u00e9\"}} ], \"x-unknown\": [1, 2.50] }}  ",
        uuid_text(0xd, 77),
        uuid_text(0xb, BLOB),
        uuid_text(0xa, USER),
    );
    h.offer_line(&line); // pos 1
    let dead = h.dead();
    assert_eq!(dead.len(), 1);
    let dl = &dead[0];
    assert!(
        matches!(dl.reason, Reason::PatchFailed { .. }),
        "{:?}",
        dl.reason
    );
    assert_eq!(dl.raw, line.as_bytes());
    assert_eq!(dl.pos, SourcePos::at(1));
    assert_eq!(dl.delta_id, Some(did(77)));
    assert_eq!(dl.blob_id, Some(bid(BLOB)));
    assert_eq!(dl.raw_text(), line);

    // Waiting deltas expired and conflicts keep their bytes too.
    let waiting = format!(
        " {} ",
        delta_line(
            78,
            BLOB,
            USER,
            "update",
            5,
            Some(r#"{"k":"\u00fc"}"#),
            None,
            None
        )
    );
    h.offer_line(&waiting); // pos 2
    let conflict = delta_line(79, BLOB, USER, "create", 1, Some("{}"), None, None);
    h.offer_line(&conflict); // pos 3
    h.ledger.expire_pending(&mut h.fx);
    let dead = h.dead();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].raw, conflict.as_bytes());
    assert_eq!(dead[0].pos, SourcePos::at(3));
    assert_eq!(dead[1].raw, waiting.as_bytes());
    assert_eq!(dead[1].pos, SourcePos::at(2));

    // Malformed records (even invalid UTF-8) keep their bytes.
    let bad: &[u8] = b"{\"id\": \xff}";
    let dl = parse_record(bad, SourcePos::at(9)).unwrap_err();
    assert_eq!(dl.raw, bad);
    assert_eq!(dl.delta_id, None);
    assert!(dl.reason.to_string().starts_with("S1.1 malformed: "));
}

/// RFC 6902 section 4.6: `test` compares numbers by value ("numbers: are considered
/// equal if their values are numerically equal").
#[test]
fn rfc6902_test_compares_numbers_numerically() {
    check_patch(
        r#"{"n":1}"#,
        r#"[{"op":"test","path":"/n","value":1.0},{"op":"add","path":"/ok","value":true}]"#,
        None,
        Some(r#"{"n":1,"ok":true}"#),
    );
}

/// RFC 6902 A.13: a patch operation with two "op" members is invalid.
#[test]
fn rfc6902_a13_invalid_patch_document_fails() {
    check_patch(
        r#"{"foo":"bar"}"#,
        r#"[{"op":"add","path":"/baz","value":"qux","op":"remove"}]"#,
        None,
        None,
    );
}
