//! Helpers shared by the runtime's tests: a request for a provider, running one
//! request, reading an output's patch.
#![allow(dead_code)] // each test crate uses its own part

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use studio_model::{
    BlobFacts, BlobRow, Doc, Operation, Provider, Timestamp, TransformRequest, Uuid,
};
use studio_providers::output::OutputDelta;
use studio_providers::{Answer, Runtime};

/// The request `provider` gets for a new `text/markdown` blob `blob` holding `content`.
pub fn request_for(provider: &Provider, blob: u128, content: &str) -> TransformRequest {
    let t = Timestamp::parse_rfc3339("2026-11-01T10:00:00Z").unwrap();
    let facts = BlobFacts {
        row: BlobRow {
            blob_id: Uuid::from_u128(blob),
            user_id: Uuid::from_u128(9),
            version: 1,
            content_type: "text/markdown".into(),
            doc: Doc::new(json!({"content": content})),
            parent_id: None,
            created_at: t,
            updated_at: t,
            deleted_at: None,
        },
        last_operation: Operation::Create,
        last_delta_id: Uuid::from_u128(blob << 8),
        last_user_id: Uuid::from_u128(9),
        last_provider: None,
        last_metadata_keys: Vec::new(),
        created_by: None,
    };
    provider.trigger(&facts, &[], &[]).expect("triggers")
}

/// Submits `r` and waits for its answer.
pub fn run_one(
    runtime: &Runtime,
    answers: &crossbeam_channel::Receiver<Answer>,
    r: TransformRequest,
) -> Answer {
    runtime.submit(r, Arc::new(|_| true));
    answers
        .recv_timeout(Duration::from_secs(60))
        .expect("an answer")
}

/// The patch of an output delta.
pub fn patch_of(output: &OutputDelta) -> Value {
    let record: Value = serde_json::from_str(&output.record).unwrap();
    record["patch"].clone()
}
