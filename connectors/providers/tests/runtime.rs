//! The worker runtime against a local HTTP stub of an OpenAI-compatible API (the real
//! API is paid and remote): retries, exhaustion, timeouts, malformed answers, the memo,
//! the concurrency bound; and the offline built-in providers on real text.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{patch_of, request_for, run_one};
use serde_json::{Value, json};
use studio_model::{Doc, ProcessingStatus, Provider};
use studio_providers::Runtime;
use studio_providers::runtime::Outcome;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the stub answers to its n-th call (from 0).
#[derive(Clone)]
struct Reply {
    delay_ms: u64,
    /// Before answering, wait (up to 5 s) until this many calls are being served at
    /// once: a runtime allowing that much concurrency reaches it whatever the load.
    hold_until_active: usize,
    status: u16,
    body: String,
}

fn ok(text: &str) -> Reply {
    Reply {
        delay_ms: 0,
        hold_until_active: 0,
        status: 200,
        body: json!({"choices": [{"message": {"role": "assistant", "content": text}}]}).to_string(),
    }
}

fn error(status: u16) -> Reply {
    Reply {
        delay_ms: 0,
        hold_until_active: 0,
        status,
        body: r#"{"error":"overloaded"}"#.into(),
    }
}

/// A chat-completions stub on loopback; counts calls and the most served at once.
struct Stub {
    url: String,
    calls: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    bodies: Arc<std::sync::Mutex<Vec<Value>>>,
    _runtime: tokio::runtime::Runtime,
}

fn start_stub(reply: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Stub {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let (calls, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let active = Arc::new(AtomicUsize::new(0));
    let reply = Arc::new(reply);
    let (c, p, b) = (Arc::clone(&calls), Arc::clone(&peak), Arc::clone(&bodies));
    runtime.spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let (calls, peak, bodies, active, reply) = (
                Arc::clone(&c),
                Arc::clone(&p),
                Arc::clone(&b),
                Arc::clone(&active),
                Arc::clone(&reply),
            );
            tokio::spawn(async move {
                let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                let n = calls.fetch_add(1, Ordering::SeqCst);
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                let body = loop {
                    let read = socket.read(&mut buf).await.unwrap_or(0);
                    if read == 0 {
                        break None;
                    }
                    data.extend_from_slice(&buf[..read]);
                    let text = String::from_utf8_lossy(&data).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length: usize = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if data.len() >= end + 4 + length {
                            break Some(data[end + 4..end + 4 + length].to_vec());
                        }
                    }
                };
                if let Some(body) = body {
                    bodies
                        .lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                }
                let r = reply(n);
                let held = std::time::Instant::now();
                while active.load(Ordering::SeqCst) < r.hold_until_active
                    && held.elapsed() < Duration::from_secs(5)
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                tokio::time::sleep(Duration::from_millis(r.delay_ms)).await;
                let response = format!(
                    "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                    r.status,
                    r.body.len(),
                    r.body
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
                active.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Stub {
        url,
        calls,
        peak,
        bodies,
        _runtime: runtime,
    }
}

fn expander(url: &str, extra: Value) -> Provider {
    let mut def = json!({
        "id": "content-expander", "version": "1",
        "config": {"base_url": url, "model": "stub-model"},
        "backoff_ms": 10, "backoff_max_ms": 40,
    });
    for (k, v) in extra.as_object().unwrap() {
        def[k] = v.clone();
    }
    serde_json::from_value(def).unwrap()
}

/// Runs one request of a content expander (with `extra` settings, against `stub`) on
/// a fresh runtime; returns the runtime (for its counters) and the outcome.
fn expand_once(stub: &Stub, extra: Value, content: &str) -> (Runtime, Outcome) {
    let (runtime, answers) = Runtime::new(1).unwrap();
    let p = expander(&stub.url, extra);
    runtime.register_builtin(p.clone());
    let outcome = run_one(&runtime, &answers, request_for(&p, 1, content))
        .outcome
        .expect("the request ran");
    (runtime, outcome)
}

#[test]
fn a_stub_failing_twice_then_answering_completes_on_the_third_attempt() {
    let stub = start_stub(|n| {
        if n < 2 {
            error(503)
        } else {
            ok("A longer text.")
        }
    });
    let (runtime, answers) = Runtime::new(1).unwrap();
    let p = expander(&stub.url, json!({}));
    runtime.register_builtin(p.clone());
    let answer = run_one(&runtime, &answers, request_for(&p, 1, "Short."));
    let outcome = answer.outcome.expect("ran");
    assert_eq!(outcome.result.status, ProcessingStatus::Completed);
    assert_eq!(outcome.result.attempts, 3);
    assert_eq!(outcome.result.error, None);
    assert_eq!(stub.calls.load(Ordering::SeqCst), 3);
    assert_eq!(runtime.stats.retries.load(Ordering::SeqCst), 2);
    assert_eq!(outcome.outputs.len(), 1);
    assert_eq!(
        patch_of(&outcome.outputs[0]),
        json!({"expanded": "A longer text."})
    );
    // The API saw the model and the text.
    let body = stub.bodies.lock().unwrap()[2].clone();
    assert_eq!(body["model"], "stub-model");
    assert_eq!(body["messages"][1]["content"], "Short.");
}

#[test]
fn a_stub_always_failing_fails_after_max_attempts_with_no_output() {
    let stub = start_stub(|_| error(500));
    let (_, outcome) = expand_once(&stub, json!({}), "x");
    assert_eq!(outcome.result.status, ProcessingStatus::Failed);
    assert_eq!(outcome.result.attempts, 3, "the default max_attempts");
    assert!(
        outcome.result.error.as_deref().unwrap().contains("500"),
        "{:?}",
        outcome.result.error
    );
    assert!(outcome.outputs.is_empty());
    assert_eq!(stub.calls.load(Ordering::SeqCst), 3);
    // A failure settles its request (processing.failed); an answer with outputs does not.
    assert!(outcome.result.settles().is_some());
}

#[test]
fn a_slow_stub_times_out_per_attempt() {
    let stub = start_stub(|n| Reply {
        delay_ms: if n == 0 { 2_000 } else { 0 },
        ..ok("fast enough")
    });
    let (runtime, outcome) = expand_once(&stub, json!({"timeout_ms": 200}), "x");
    assert_eq!(outcome.result.status, ProcessingStatus::Completed);
    assert_eq!(outcome.result.attempts, 2);
    assert_eq!(runtime.stats.timeouts.load(Ordering::SeqCst), 1);

    let slow = start_stub(|_| Reply {
        delay_ms: 2_000,
        ..ok("never in time")
    });
    let (_, outcome) = expand_once(&slow, json!({"timeout_ms": 100, "max_attempts": 2}), "y");
    assert_eq!(outcome.result.status, ProcessingStatus::Failed);
    assert_eq!(outcome.result.attempts, 2);
    assert!(
        outcome
            .result
            .error
            .unwrap()
            .contains("timed out after 100 ms")
    );
}

#[test]
fn an_answer_larger_than_max_response_bytes_fails_unread() {
    let big = "x".repeat(200_000);
    let stub = start_stub(move |_| ok(&big));
    let (_, outcome) = expand_once(
        &stub,
        json!({"max_attempts": 1, "config": {"base_url": stub.url, "max_response_bytes": 10_000}}),
        "x",
    );
    assert_eq!(outcome.result.status, ProcessingStatus::Failed);
    let error = outcome.result.error.unwrap();
    assert!(
        error.contains("larger than 10000 bytes; raise config.max_response_bytes"),
        "{error}"
    );
    // The default bound (1 MiB) lets the same answer through.
    let (_, outcome) = expand_once(&stub, json!({}), "x");
    assert_eq!(outcome.result.status, ProcessingStatus::Completed);
}

#[test]
fn malformed_answers_are_failures_that_are_retried() {
    let stub = start_stub(|n| match n {
        0 => Reply {
            body: "{not json".into(),
            ..ok("")
        },
        1 => Reply {
            body: r#"{"choices": []}"#.into(),
            ..ok("")
        },
        _ => ok("finally"),
    });
    let (_, outcome) = expand_once(&stub, json!({}), "x");
    assert_eq!(outcome.result.status, ProcessingStatus::Completed);
    assert_eq!(outcome.result.attempts, 3);
}

#[test]
fn the_memo_answers_the_same_input_without_calling_the_provider() {
    let stub = start_stub(|_| ok("expanded"));
    let (runtime, answers) = Runtime::new(1).unwrap();
    let p = expander(&stub.url, json!({}));
    runtime.register_builtin(p.clone());
    let first = run_one(&runtime, &answers, request_for(&p, 1, "same text"))
        .outcome
        .unwrap();
    // Another blob with the same content: the same fingerprint.
    let second = run_one(&runtime, &answers, request_for(&p, 2, "same text"))
        .outcome
        .unwrap();
    assert!(!first.memo_hit && second.memo_hit);
    assert_eq!(second.result.attempts, 0);
    assert_eq!(stub.calls.load(Ordering::SeqCst), 1);
    assert_eq!(patch_of(&first.outputs[0]), patch_of(&second.outputs[0]));
    assert_ne!(
        first.outputs[0].id, second.outputs[0].id,
        "outputs target their own blob"
    );
    // A new provider version is a new memo key.
    let p2 = expander(&stub.url, json!({"version": "2"}));
    runtime.register_builtin(p2.clone());
    let third = run_one(&runtime, &answers, request_for(&p2, 1, "same text"))
        .outcome
        .unwrap();
    assert!(!third.memo_hit);
    assert_eq!(stub.calls.load(Ordering::SeqCst), 2);
}

#[test]
fn process_in_parallel_bounds_concurrency_per_provider() {
    for (parallel, bound) in [(json!(false), 1), (json!(3), 3)] {
        let stub = start_stub(move |_| Reply {
            delay_ms: 50,
            hold_until_active: bound,
            ..ok("x")
        });
        let (runtime, answers) = Runtime::new(4).unwrap();
        let p = expander(
            &stub.url,
            json!({"processing_rules": {"process_in_parallel": parallel}}),
        );
        runtime.register_builtin(p.clone());
        for blob in 0..8 {
            runtime.submit(
                request_for(&p, blob, &format!("text {blob}")),
                Arc::new(|_| true),
            );
        }
        for _ in 0..8 {
            answers.recv_timeout(Duration::from_secs(60)).unwrap();
        }
        assert_eq!(
            stub.peak.load(Ordering::SeqCst),
            bound,
            "process_in_parallel = {parallel}"
        );
    }
}

#[test]
fn a_superseded_request_is_never_run() {
    let stub = start_stub(|_| ok("x"));
    let (runtime, answers) = Runtime::new(1).unwrap();
    let p = expander(&stub.url, json!({}));
    runtime.register_builtin(p.clone());
    runtime.submit(request_for(&p, 1, "x"), Arc::new(|_| false));
    let answer = answers.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(answer.outcome.is_none());
    assert_eq!(stub.calls.load(Ordering::SeqCst), 0);
}

#[test]
fn a_missing_base_url_is_a_failure_that_says_what_to_set() {
    let (runtime, answers) = Runtime::new(1).unwrap();
    let p: Provider =
        serde_json::from_value(json!({"id": "content-expander", "max_attempts": 1})).unwrap();
    runtime.register_builtin(p.clone());
    let outcome = run_one(&runtime, &answers, request_for(&p, 1, "x"))
        .outcome
        .unwrap();
    assert_eq!(outcome.result.status, ProcessingStatus::Failed);
    assert!(outcome.result.error.unwrap().contains("config.base_url"));
}

#[test]
fn the_grammar_checker_finds_real_mistakes_offline() {
    let (runtime, answers) = Runtime::new(1).unwrap();
    let p: Provider = serde_json::from_value(json!({"id": "grammar-checker"})).unwrap();
    assert!(runtime.register_builtin(p.clone()));
    let outcome = run_one(
        &runtime,
        &answers,
        request_for(&p, 1, "This sentence have a error in it."),
    )
    .outcome
    .unwrap();
    let findings = patch_of(&outcome.outputs[0])["grammar"].clone();
    let found: Vec<&str> = findings
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["text"].as_str().unwrap())
        .collect();
    assert!(
        found.contains(&"a"),
        "the article before 'error': {findings}"
    );
    // A clean sentence gets an empty list, and the same findings make no new version.
    let clean = run_one(
        &runtime,
        &answers,
        request_for(&p, 2, "This sentence is fine."),
    )
    .outcome
    .unwrap();
    assert_eq!(patch_of(&clean.outputs[0]), json!({"grammar": []}));
}

#[test]
fn render_html_derives_a_blob_and_an_unchanged_rendering_writes_nothing() {
    let (runtime, answers) = Runtime::new(1).unwrap();
    let p: Provider = serde_json::from_value(json!({"id": "render-html"})).unwrap();
    assert!(runtime.register_builtin(p.clone()));
    let request = request_for(&p, 1, "# Title\n\nSome *text*.");
    let outcome = run_one(&runtime, &answers, request.clone())
        .outcome
        .unwrap();
    let record: Value = serde_json::from_str(&outcome.outputs[0].record).unwrap();
    assert_eq!(record["operation"], "create");
    assert_eq!(record["parent_id"], json!(request.blob_id));
    assert_eq!(record["metadata"]["content_type"], "text/html");
    assert_eq!(
        record["patch"]["content"],
        "<h1>Title</h1>\n<p>Some <em>text</em>.</p>\n"
    );
    assert_eq!(record["metadata"]["request_id"], json!(request.request_id));
    // The same source again, with the derived blob already holding this rendering.
    let mut again = request.clone();
    again.derived = vec![studio_model::DerivedRef {
        source_blob_id: request.blob_id,
        provider_id: "render-html".into(),
        blob_id: outcome.outputs[0].blob_id,
        version: 1,
        doc: Doc::new(record["patch"].clone()),
        deleted: false,
    }];
    let unchanged = run_one(&runtime, &answers, again).outcome.unwrap();
    assert!(unchanged.outputs.is_empty());
    assert_eq!(unchanged.result.outputs, 0);
    assert!(
        unchanged.result.settles().is_some(),
        "nothing to write settles the request"
    );
}
