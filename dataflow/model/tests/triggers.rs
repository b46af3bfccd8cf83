//! SPEC S5.4, rule by rule: when a (provider, blob) pair has a pending trigger, and
//! the fingerprint that decides whether the provider already processed the blob.

use serde_json::{Value, json};
use studio_model::provider::{NoTrigger, derived_blob_id, request_id};
use studio_model::{BlobFacts, BlobRow, DerivedRef, Doc, Operation, Provider, Timestamp, Uuid};

fn provider(json: Value) -> Provider {
    serde_json::from_value(json).expect("a provider definition")
}

fn at(minute: u32) -> Timestamp {
    Timestamp::parse_rfc3339(&format!("2026-11-01T10:{minute:02}:00Z")).unwrap()
}

/// A live text/markdown blob at version 3, last changed by an update with metadata `source`.
fn facts() -> BlobFacts {
    BlobFacts {
        row: BlobRow {
            blob_id: Uuid::from_u128(1),
            user_id: Uuid::from_u128(9),
            version: 3,
            content_type: "text/markdown".into(),
            doc: Doc::new(
                json!({"content": "Hello world, this is ten words or so.", "tags": ["a"]}),
            ),
            parent_id: None,
            created_at: at(0),
            updated_at: at(3),
            deleted_at: None,
        },
        last_operation: Operation::Update,
        last_delta_id: Uuid::from_u128(33),
        last_user_id: Uuid::from_u128(8),
        last_provider: None,
        last_metadata_keys: vec!["source".into()],
        created_by: None,
    }
}

fn why(p: &Provider, f: &BlobFacts) -> Result<(), NoTrigger> {
    p.trigger(f, &[], &[]).map(|_| ())
}

#[test]
fn a_matching_provider_triggers_with_a_stable_request() {
    let p = provider(json!({"id": "g", "version": "1"}));
    let f = facts();
    let r = p.trigger(&f, &[], &[]).unwrap();
    assert_eq!((r.blob_id, r.version), (f.row.blob_id, 3));
    assert_eq!(
        r.user_id, f.last_user_id,
        "outputs act for the user whose delta triggered"
    );
    assert_eq!(r.caused_by, f.last_delta_id);
    assert_eq!(r.created_at, f.row.updated_at);
    assert_eq!(r.fingerprint, p.fingerprint(&f.row.doc.value()));
    assert_eq!(
        r.request_id,
        request_id("g", f.row.blob_id, 3, r.fingerprint)
    );
    assert_eq!(
        p.trigger(&f, &[], &[]).unwrap(),
        r,
        "the same input, the same request"
    );
}

#[test]
fn only_live_blobs_trigger() {
    let p = provider(json!({"id": "g"}));
    let mut f = facts();
    f.row.deleted_at = Some(at(4));
    f.last_operation = Operation::Delete;
    assert_eq!(why(&p, &f), Err(NoTrigger::NotLive));
    // A revert that restores a deleted blob is a blob.updated of a live blob again.
    f.row.deleted_at = None;
    f.last_operation = Operation::Revert;
    assert_eq!(why(&p, &f), Ok(()));
}

#[test]
fn events_select_creates_and_updates() {
    let created_only = provider(json!({"id": "g", "events": ["blob.created"]}));
    let updated_only = provider(json!({"id": "g", "events": ["blob.updated"]}));
    let mut f = facts();
    for op in [Operation::Update, Operation::Transform, Operation::Revert] {
        f.last_operation = op;
        assert_eq!(why(&created_only, &f), Err(NoTrigger::Event), "{op:?}");
        assert_eq!(why(&updated_only, &f), Ok(()), "{op:?}");
    }
    f.last_operation = Operation::Create;
    assert_eq!(why(&created_only, &f), Ok(()));
    assert_eq!(why(&updated_only, &f), Err(NoTrigger::Event));
    let neither = provider(json!({"id": "g", "events": ["processing.complete"]}));
    assert_eq!(why(&neither, &f), Err(NoTrigger::Event));
}

#[test]
fn process_on_create_and_on_edit() {
    let no_create = provider(json!({"id": "g", "processing_rules": {"process_on_create": false}}));
    let no_edit = provider(json!({"id": "g", "processing_rules": {"process_on_edit": false}}));
    let mut f = facts();
    assert_eq!(why(&no_create, &f), Ok(()));
    assert_eq!(why(&no_edit, &f), Err(NoTrigger::OnCreateOrEdit));
    f.last_operation = Operation::Create;
    assert_eq!(why(&no_create, &f), Err(NoTrigger::OnCreateOrEdit));
    assert_eq!(why(&no_edit, &f), Ok(()));
}

#[test]
fn blob_types_and_mime_types_must_both_match() {
    let f = facts(); // text/markdown
    for (types, mimes, expected) in [
        (json!([]), json!([]), Ok(())),
        (json!(["text/*"]), json!([]), Ok(())),
        (json!(["text/markdown"]), json!(["text/*"]), Ok(())),
        (
            json!(["application/json"]),
            json!([]),
            Err(NoTrigger::BlobType),
        ),
        (
            json!(["text/*"]),
            json!(["text/plain"]),
            Err(NoTrigger::MimeType),
        ),
        (json!(["*"]), json!(["TEXT/MARKDOWN"]), Ok(())),
    ] {
        let p = provider(json!({"id": "g", "blob_types": types,
            "processing_rules": {"allowed_mime_types": mimes}}));
        assert_eq!(why(&p, &f), expected, "{types} {mimes}");
    }
}

#[test]
fn sizes_measure_what_the_provider_reads() {
    let f = facts();
    let len = "Hello world, this is ten words or so.".len() as u64;
    let rules = |min: u64, max: u64| {
        provider(
            json!({"id": "g", "processing_rules": {"min_input_size": min, "max_input_size": max}}),
        )
    };
    assert_eq!(why(&rules(len, len), &f), Ok(()), "bounds are inclusive");
    assert_eq!(why(&rules(len + 1, 0), &f), Err(NoTrigger::Size));
    assert_eq!(why(&rules(0, len - 1), &f), Err(NoTrigger::Size));
    assert_eq!(why(&rules(0, 0), &f), Ok(()), "max 0 means no limit");
    // A provider reading /tags measures the tags, as compact JSON.
    let tags = provider(json!({"id": "g", "reads": ["/tags"],
        "processing_rules": {"max_input_size": 5}}));
    assert_eq!(tags.input_size(&f.row.doc.value()), r#"["a"]"#.len() as u64);
    assert_eq!(why(&tags, &f), Ok(()));
    // Reading nothing that exists is size 0.
    let missing = provider(json!({"id": "g", "reads": ["/nope"],
        "processing_rules": {"min_input_size": 1}}));
    assert_eq!(why(&missing, &f), Err(NoTrigger::Size));
}

#[test]
fn required_metadata_is_looked_up_on_the_triggering_delta() {
    let needs_source =
        provider(json!({"id": "g", "processing_rules": {"required_metadata": ["source"]}}));
    let needs_more =
        provider(json!({"id": "g", "processing_rules": {"required_metadata": ["source", "lang"]}}));
    let f = facts();
    assert_eq!(why(&needs_source, &f), Ok(()));
    assert_eq!(why(&needs_more, &f), Err(NoTrigger::Metadata));
}

#[test]
fn a_processed_fingerprint_does_not_trigger_again() {
    let p = provider(json!({"id": "g", "version": "1"}));
    let f = facts();
    let fp = p.fingerprint(&f.row.doc.value());
    assert_eq!(
        p.trigger(&f, &[fp], &[]).map(|_| ()),
        Err(NoTrigger::Processed)
    );
    // An annotation (a part the provider does not read) keeps the fingerprint...
    let mut annotated = f.clone();
    annotated.row.version = 4;
    annotated.row.doc = Doc::new(
        json!({"content": "Hello world, this is ten words or so.", "tags": ["a", "b"], "grammar": []}),
    );
    assert_eq!(p.fingerprint(&annotated.row.doc.value()), fp);
    assert_eq!(
        p.trigger(&annotated, &[fp], &[]).map(|_| ()),
        Err(NoTrigger::Processed)
    );
    // ...while a change of what it reads does not.
    let mut edited = f.clone();
    edited.row.doc = Doc::new(json!({"content": "Hello world!"}));
    assert!(p.trigger(&edited, &[fp], &[]).is_ok());
    // A new version of the provider processes again.
    let p2 = provider(json!({"id": "g", "version": "2"}));
    assert!(p2.trigger(&f, &[fp], &[]).is_ok());
}

#[test]
fn a_providers_own_output_never_triggers_it() {
    let p = provider(json!({"id": "g"}));
    let other = provider(json!({"id": "h"}));
    let mut f = facts();
    f.last_operation = Operation::Transform;
    f.last_provider = Some("g".into());
    assert_eq!(why(&p, &f), Err(NoTrigger::Processed));
    assert_eq!(
        why(&other, &f),
        Ok(()),
        "another provider's output is an update like any"
    );
}

#[test]
fn a_request_carries_the_blobs_its_provider_derived() {
    let p = provider(json!({"id": "render"}));
    let f = facts();
    let mine = DerivedRef {
        source_blob_id: f.row.blob_id,
        provider_id: "render".into(),
        blob_id: derived_blob_id("render", f.row.blob_id),
        version: 2,
        doc: Doc::new(json!({"content": "<p>x</p>"})),
        deleted: false,
    };
    let theirs = DerivedRef {
        provider_id: "other".into(),
        blob_id: Uuid::from_u128(77),
        ..mine.clone()
    };
    let r = p.trigger(&f, &[], &[theirs, mine.clone()]).unwrap();
    assert_eq!(r.derived, vec![mine]);
}

#[test]
fn fingerprints_are_canonical() {
    let p = provider(json!({"id": "g", "reads": ["/a", "/b"]}));
    let x: Value = serde_json::from_str(r#"{"a": {"k": 1, "j": [1, 2]}, "b": "s"}"#).unwrap();
    let y: Value = serde_json::from_str(r#"{"b": "s", "a": {"j": [1, 2], "k": 1}}"#).unwrap();
    assert_eq!(
        p.fingerprint(&x),
        p.fingerprint(&y),
        "key order does not matter"
    );
    let z = json!({"a": {"k": 1, "j": [2, 1]}, "b": "s"});
    assert_ne!(p.fingerprint(&x), p.fingerprint(&z), "array order does");
    let swapped = json!({"a": "s", "b": {"k": 1, "j": [1, 2]}});
    assert_ne!(
        p.fingerprint(&x),
        p.fingerprint(&swapped),
        "which pointer holds what does"
    );
}
