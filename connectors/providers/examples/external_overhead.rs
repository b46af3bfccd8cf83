//! What an external provider costs per request: the sample provider
//! (samples/providers/word_count.py) run by the [`Runtime`] one process per request,
//! beside one sandboxed call holding every request (what batching or a long-lived
//! process would pay). BENCHMARKS.md has the figures.
//!
//! ```sh
//! cargo run --release -p studio-providers --example external_overhead -- [REQUESTS]
//! ```

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use studio_model::{Provider, TransformRequest, Uuid};
use studio_providers::external::ExternalProvider;
use studio_providers::{ProviderInput, Runtime};

fn main() {
    let requests: u32 = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("REQUESTS is a number"))
        .unwrap_or(200);
    let python = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 is installed");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../samples/providers/word_count.py"
    );
    let provider: Provider = serde_json::from_value(json!({
        "id": "word-count",
        "command": [String::from_utf8_lossy(&python.stdout).trim(), script],
    }))
    .expect("a provider");
    let batch: Vec<TransformRequest> = (0..requests).map(|n| request(&provider, n)).collect();

    let (runtime, answers) = Runtime::new(1).expect("a runtime");
    assert!(
        runtime
            .register_runnable(provider.clone())
            .expect("registered")
    );
    let started = Instant::now();
    for request in &batch {
        runtime.submit(request.clone(), Arc::new(|_| true));
        let answer = answers.recv().expect("an answer");
        assert!(answer.outcome.expect("ran").result.error.is_none());
    }
    let per_process = started.elapsed() / requests;

    let external = ExternalProvider::new(&provider).expect("the command");
    let inputs: Vec<ProviderInput> = batch
        .into_iter()
        .map(|r| ProviderInput::new(r, provider.clone()))
        .collect();
    let started = Instant::now();
    let answered = external.call(&inputs.iter().collect::<Vec<_>>());
    assert!(answered.iter().all(Result::is_ok));
    let one_call = started.elapsed() / requests;
    println!(
        "{requests} requests, sequential: one process per request {:.2} ms/request; all in one call {:.3} ms/request",
        per_process.as_secs_f64() * 1e3,
        one_call.as_secs_f64() * 1e3
    );
}

/// A request for a blob `n` with its own text (so that the memo never answers).
fn request(provider: &Provider, n: u32) -> TransformRequest {
    let doc = json!({"content": format!("request number {n} has six words")});
    serde_json::from_value(json!({
        "request_id": Uuid::from_u128(n as u128 + 1),
        "provider_id": provider.id,
        "provider_version": provider.version,
        "blob_id": Uuid::from_u128(n as u128 + 1_000_000),
        "version": 1,
        "fingerprint": provider.fingerprint(&doc),
        "user_id": Uuid::from_u128(9),
        "caused_by": Uuid::from_u128(n as u128 + 2_000_000),
        "content_type": "text/plain",
        "doc": doc,
        "derived": [],
        "created_at": "2026-11-01T10:00:00Z",
    }))
    .expect("a request")
}
