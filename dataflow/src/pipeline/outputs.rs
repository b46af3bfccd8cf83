//! The output streams of a committed batch (transform requests, events, applied
//! deltas, dead letters), published before the views commit: at least once, keyed by
//! blob, with stable ids for consumers to deduplicate.

use std::time::Duration;

use studio_connectors::{OutputStream, RecordPublisher};
use studio_model::ViewBatch;

use super::control::{Control, Phase};

/// Publishes a batch's output streams and waits for the bus to take them, retrying
/// with backoff while it does not (a broker restarting): outputs are at least once.
/// Returns the number of records published.
pub(super) fn publish(
    publisher: &mut dyn RecordPublisher,
    streams: &[OutputStream],
    batch: &ViewBatch,
    control: &Control,
) -> u64 {
    publish_records(publisher, &outputs(streams, batch), control)
}

/// Publishes `records` (`(stream, key, value)`) and waits for the bus to take them,
/// retrying with backoff while it does not. Returns the number published.
pub(crate) fn publish_records(
    publisher: &mut dyn RecordPublisher,
    records: &[(OutputStream, Vec<u8>, Vec<u8>)],
    control: &Control,
) -> u64 {
    if records.is_empty() {
        return 0;
    }
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt = records
            .iter()
            .try_for_each(|(stream, key, bytes)| publisher.publish(*stream, key, bytes))
            .and_then(|()| publisher.flush(Duration::from_secs(30)));
        match attempt {
            Ok(()) => return records.len() as u64,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "publishing the outputs failed; retrying");
                if control.phase() == Phase::Failed {
                    return 0;
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// The records of a batch's output streams: `(stream, key, value)`, keyed by blob.
fn outputs(streams: &[OutputStream], batch: &ViewBatch) -> Vec<(OutputStream, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for stream in streams {
        match stream {
            OutputStream::Requests => {
                for (request, diff) in &batch.requests {
                    if *diff > 0 {
                        let value = serde_json::to_vec(request).expect("requests serialise");
                        out.push((*stream, key(&request.blob_id), value));
                    }
                }
            }
            OutputStream::Events => {
                for event in &batch.events {
                    let value = serde_json::to_vec(event).expect("events serialise");
                    out.push((*stream, key(&event.blob_id), value));
                }
            }
            OutputStream::Applied => {
                let applied_at = chrono::Utc::now().to_rfc3339();
                for row in &batch.applied {
                    let record = row.record.as_deref().unwrap_or_default();
                    out.push((
                        *stream,
                        key(&row.blob_id),
                        with_applied_at(record, &applied_at),
                    ));
                }
            }
            OutputStream::DeadLetters => {
                for letter in &batch.dead_letters {
                    let value = serde_json::json!({
                        "reason": letter.reason.to_string(),
                        "rule": letter.reason.kind(),
                        "delta_id": letter.delta_id,
                        "blob_id": letter.blob_id,
                        "raw": letter.raw_text(),
                    });
                    let key = letter.blob_id.as_ref().map(key).unwrap_or_default();
                    out.push((*stream, key, value.to_string().into_bytes()));
                }
            }
            // The input stream, and the workers' results: never published by the service.
            OutputStream::Deltas | OutputStream::Results => {}
        }
    }
    out
}

/// A record's key: its blob's id.
pub(crate) fn key(id: &studio_model::Uuid) -> Vec<u8> {
    id.hyphenated().to_string().into_bytes()
}

/// The delta as applied: its record with `applied_at` set (S1).
fn with_applied_at(record: &str, applied_at: &str) -> Vec<u8> {
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(record) {
        Ok(mut fields) => {
            fields.insert("applied_at".into(), applied_at.into());
            serde_json::to_vec(&fields).expect("a map serialises")
        }
        Err(_) => record.as_bytes().to_vec(), // accepted deltas parsed; unreachable
    }
}
