//! The provider worker on the bus (`studio worker --source kafka|nats`, S5.7).
//!
//! ```text
//!  requests topic/subject --(group member: Kafka consumer group / shared JetStream
//!        |                   durable, explicit acks)--> poll a batch
//!        v
//!  parse (malformed: a dead letter with its raw bytes, acknowledged)
//!  last request per (provider, blob) in the batch (the earlier ones are superseded)
//!        v
//!  Runtime (attempts, timeouts, backoff, memo) --> answers
//!        v
//!  publish: each output delta to the deltas stream, the result (kind "result") to the
//!  results stream, keyed by blob; flush (the bus acknowledged them)
//!        v
//!  commit the batch's positions (Kafka group offsets / JetStream acks)
//! ```
//!
//! At least once: the positions are acknowledged only after the answers are published,
//! so a worker that dies mid-batch leaves its requests to another member (Kafka: after
//! the group's session timeout; NATS: after `nats.ack_wait_s`). A request answered twice
//! is harmless: its output deltas have the same ids (S4.2 duplicates) and the service
//! keeps the first result of each request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use studio_connectors::{OutputStream, RecordPublisher, Source, SourceError};
use studio_model::{ProcessingStatus, Reason, SourcePos, TransformRequest, Uuid};
use studio_providers::{Answer, Runtime};

use crate::pipeline::{Control, key, publish_records};

/// How the worker runs.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Requests taken at once.
    pub max_batch_requests: usize,
    /// How long a poll waits for the first request.
    pub poll_timeout: Duration,
    /// Stop (gracefully) after this long without a request.
    pub exit_when_idle: Option<Duration>,
}

/// What the worker did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WorkerReport {
    /// Records read from the requests stream.
    pub requests: u64,
    /// Requests superseded by a newer one for the same (provider, blob) in a batch.
    pub superseded: u64,
    /// Records that are not transform requests (published as dead letters).
    pub malformed: u64,
    /// Requests for providers this worker does not run (acknowledged unanswered).
    pub not_run_here: u64,
    /// Results published `completed`.
    pub completed: u64,
    /// Results published `failed`.
    pub failed: u64,
    /// Output deltas published.
    pub outputs: u64,
    /// Requests answered from the memo.
    pub memo_hits: u64,
    /// Calls to providers.
    pub calls: u64,
}

/// A worker failed (not a bad request: those are dead letters).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The requests stream failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The runtime stopped answering.
    #[error("the provider runtime stopped answering")]
    Runtime,
}

/// Serves requests from `source` until `control.stop()` (or `exit_when_idle`).
pub fn serve(
    source: &mut dyn Source,
    publisher: &mut dyn RecordPublisher,
    runtime: &Runtime,
    answers: &crossbeam_channel::Receiver<Answer>,
    options: &WorkerOptions,
    control: &Control,
) -> Result<WorkerReport, ServeError> {
    let mut report = WorkerReport::default();
    let mut last_request = Instant::now();
    while !control.stopping() {
        let records = source.poll(options.max_batch_requests, options.poll_timeout)?;
        if records.is_empty() {
            if options
                .exit_when_idle
                .is_some_and(|idle| last_request.elapsed() >= idle)
            {
                control.stop();
            }
            continue;
        }
        last_request = Instant::now();
        report.requests += records.len() as u64;
        let mut upto: BTreeMap<u32, u64> = BTreeMap::new();
        let mut latest: BTreeMap<(String, Uuid), TransformRequest> = BTreeMap::new();
        let mut letters = Vec::new();
        for record in &records {
            let offset = upto.entry(record.pos.part).or_default();
            *offset = (*offset).max(record.pos.offset);
            match serde_json::from_slice::<TransformRequest>(&record.bytes) {
                Ok(request) => {
                    let key = (request.provider_id.clone(), request.blob_id);
                    if latest.insert(key, request).is_some() {
                        report.superseded += 1;
                    }
                }
                Err(e) => {
                    report.malformed += 1;
                    tracing::warn!(pos = %record.pos, error = %e, "not a transform request: published as a dead letter");
                    letters.push(dead_letter(&record.bytes, &e.to_string()));
                }
            }
        }
        let mut submitted = 0;
        for request in latest.into_values() {
            if runtime.runs(&request.provider_id) {
                tracing::debug!(request = %request.request_id, provider = %request.provider_id, blob = %request.blob_id, "running");
                runtime.submit(request, Arc::new(|_| true));
                submitted += 1;
            } else {
                report.not_run_here += 1;
                tracing::warn!(provider = %request.provider_id, request = %request.request_id, "no provider of that id runs here: the request is left unanswered");
            }
        }
        let mut out = letters;
        for _ in 0..submitted {
            let answer = answers.recv().map_err(|_| ServeError::Runtime)?;
            let Some(outcome) = answer.outcome else {
                continue;
            };
            report.memo_hits += u64::from(outcome.memo_hit);
            for output in &outcome.outputs {
                out.push((
                    OutputStream::Deltas,
                    key(&output.blob_id),
                    output.record.clone().into_bytes(),
                ));
                report.outputs += 1;
            }
            match outcome.result.status {
                ProcessingStatus::Completed => report.completed += 1,
                ProcessingStatus::Failed => report.failed += 1,
            }
            let result = &outcome.result;
            tracing::info!(request = %result.request_id, provider = %result.provider_id, blob = %result.blob_id, status = result.status.as_str(), attempts = result.attempts, outputs = result.outputs, memo = outcome.memo_hit, "answered");
            out.push((
                OutputStream::Results,
                key(&result.blob_id),
                result.to_record().into_bytes(),
            ));
        }
        // Published (acknowledged by the bus) before the requests are acknowledged.
        publish_records(publisher, &out, control);
        let positions: Vec<SourcePos> = upto
            .into_iter()
            .map(|(part, offset)| SourcePos { part, offset })
            .collect();
        source.commit(&positions)?;
    }
    report.calls = runtime
        .stats
        .calls
        .load(std::sync::atomic::Ordering::Relaxed);
    Ok(report)
}

/// A dead letter for a record that is not a transform request, as the service
/// publishes its own (`reason`, `rule`, `raw`).
fn dead_letter(raw: &[u8], what: &str) -> (OutputStream, Vec<u8>, Vec<u8>) {
    let reason = Reason::Malformed(format!("not a transform request: {what}"));
    let value = serde_json::json!({
        "reason": reason.to_string(),
        "rule": reason.kind(),
        "delta_id": null,
        "blob_id": null,
        "raw": studio_model::dead_letter::raw_text(raw),
    });
    (
        OutputStream::DeadLetters,
        Vec::new(),
        value.to_string().into_bytes(),
    )
}
