//! Arbitrary bytes through the wire parser (S1) and the ledger (S3, S4), as the
//! dataflow runs them: lines parsed, repeats dropped (S4.2), deltas offered to their
//! blob's ledger in log order, gaps expired at the end (S4.4). It must never panic,
//! the counts must add up, and every document a ledger holds must serialise to JSON
//! that reads back (what the view stores and their readers need).
//!
//! The first byte picks how the rest is read: as raw log lines, or as a JSON value put
//! in the `patch` (or `metadata`) of a well-formed delta of some operation, so that the
//! fuzzer spends its time past the envelope, in patches.
#![no_main]

use std::collections::{HashMap, HashSet};

use libfuzzer_sys::fuzz_target;
use studio_model::{BlobLedger, Effects, SourcePos, parse_record};

const OPS: [&str; 5] = ["create", "update", "transform", "delete", "revert"];

fn lines_of(data: &[u8]) -> Vec<Vec<u8>> {
    let Some((&mode, rest)) = data.split_first() else {
        return Vec::new();
    };
    if mode < 128 {
        return rest.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    }
    // One create, then the fuzzed value in a delta of the chosen operation.
    let op = OPS[usize::from(mode) % OPS.len()];
    let version = if op == "create" { 1 } else { 2 };
    let field = if mode & 8 == 0 { "patch" } else { "metadata" };
    let create = br#"{"id":"00000000-0000-4000-8000-000000000001","blob_id":"00000000-0000-4000-8000-0000000000b1","user_id":"00000000-0000-4000-8000-0000000000a1","operation":"create","version":1,"created_at":"2026-01-01T00:00:00Z","patch":{"content":"x","n":[1,{"a":2}]}}"#;
    let mut delta = format!(
        r#"{{"id":"00000000-0000-4000-8000-000000000002","blob_id":"00000000-0000-4000-8000-0000000000b{}","user_id":"00000000-0000-4000-8000-0000000000a1","operation":"{op}","provider_id":"p","version":{version},"created_at":"2026-01-01T00:00:01Z","{field}":"#,
        if op == "create" { 2 } else { 1 },
    )
    .into_bytes();
    delta.extend_from_slice(rest);
    delta.push(b'}');
    vec![create.to_vec(), delta]
}

fuzz_target!(|data: &[u8]| {
    let lines = lines_of(data);
    let mut seen = HashSet::new();
    let mut ledgers: HashMap<_, BlobLedger> = HashMap::new();
    let mut fx = Effects::default();
    let (mut malformed, mut duplicates) = (0usize, 0usize);
    for (n, line) in lines.iter().enumerate() {
        match parse_record(line, SourcePos::at(n as u64)) {
            Err(_) => malformed += 1,
            Ok(delta) if !seen.insert(delta.id) => duplicates += 1,
            Ok(delta) => ledgers.entry(delta.blob_id).or_default().offer(delta, &mut fx),
        }
    }
    let (mut blobs, mut processed) = (Vec::new(), Vec::new());
    for ledger in ledgers.values_mut() {
        ledger.expire_pending(&mut fx);
        ledger.flush(&mut blobs, &mut processed);
    }
    assert_eq!(
        fx.applied.len() + fx.dead_letters.len() + malformed + duplicates,
        lines.len(),
        "accepted + dead letters + duplicates = records read"
    );
    for (row, _) in &blobs {
        let back: serde_json::Value =
            serde_json::from_str(row.doc.as_str()).expect("a stored document reads back");
        assert_eq!(back.to_string(), row.doc.as_str(), "a document's text is canonical");
    }
});
