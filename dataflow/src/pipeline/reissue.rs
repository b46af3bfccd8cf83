//! Requests whose worker went silent (S5.7), on the writer thread of `studio run`.
//!
//! Every request the service publishes is watched from its commit until it leaves the
//! pending set (its result or accepted output settled it, or a newer version
//! superseded it). A request still pending when its provider could have answered
//! (`max_attempts` attempts of `timeout_ms` with their backoffs) plus
//! `run.worker_grace_ms` is published again; after `max_attempts` issues the service
//! publishes a `failed` result for it on the results stream. Both go through the bus
//! like a worker's records, so the failure enters the dataflow as any result does
//! (read in log order, stored in `result_log`, replayed on restart). A worker that
//! answers late changes nothing: its output delta has the same id as any other answer
//! (an S4.2 duplicate) and a second result of a request is a duplicate too.
//!
//! After a restart the watch starts again, from one issue, for every request still
//! pending in the recovered views.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use studio_model::{
    ProcessingResult, ProcessingStatus, Provider, Timestamp, TransformRequest, Uuid, ViewBatch,
};

/// A request under watch.
struct Watched {
    request: TransformRequest,
    /// Times it was published.
    issued: u32,
    /// When it was first published (the failure's `started_at`).
    first_issued: Timestamp,
    /// When it is overdue.
    due: Instant,
}

/// What to publish for overdue requests.
#[derive(Default)]
pub(super) struct Overdue {
    /// Requests to publish again.
    pub reissue: Vec<TransformRequest>,
    /// Failed results of requests issued `max_attempts` times.
    pub failed: Vec<ProcessingResult>,
}

/// The watch over published requests.
pub(super) struct Reissuer {
    providers: FxHashMap<String, Provider>,
    grace: Duration,
    watched: BTreeMap<Uuid, Watched>,
}

impl Reissuer {
    /// Watches the requests of `providers`, with `grace` beyond their providers' time.
    pub(super) fn new(providers: &[Provider], grace: Duration) -> Self {
        Reissuer {
            providers: providers
                .iter()
                .map(|p| (p.id.clone(), p.clone()))
                .collect(),
            grace,
            watched: BTreeMap::new(),
        }
    }

    /// How long a worker may take on a request of `provider_id` before it counts as
    /// silent: every attempt timing out, the backoffs between them, and the grace.
    fn patience(&self, provider_id: &str) -> Duration {
        let Some(p) = self.providers.get(provider_id) else {
            return self.grace;
        };
        let attempts = p.max_attempts.max(1);
        let mut backoffs = Duration::ZERO;
        let mut backoff = Duration::from_millis(p.backoff_ms);
        for _ in 1..attempts {
            backoffs += backoff;
            backoff = (backoff * 2).min(Duration::from_millis(p.backoff_max_ms));
        }
        Duration::from_millis(p.timeout_ms) * attempts + backoffs + self.grace
    }

    /// Takes note of a committed batch: its new pending requests are watched, the
    /// requests it settled or superseded are not any more.
    pub(super) fn observe(&mut self, batch: &ViewBatch, now: Instant) {
        let changes = batch.request_changes();
        for (request, pending) in changes.upserts {
            if !pending {
                self.watched.remove(&request.request_id);
                continue;
            }
            let due = now + self.patience(&request.provider_id);
            self.watched
                .entry(request.request_id)
                .and_modify(|w| w.request = request.clone())
                .or_insert_with(|| Watched {
                    request: request.clone(),
                    issued: 1,
                    first_issued: Timestamp(chrono::Utc::now()),
                    due,
                });
        }
        for id in changes.superseded {
            self.watched.remove(&id);
        }
        for result in &batch.processing {
            self.watched.remove(&result.request_id);
        }
    }

    /// The requests overdue at `now`: those issued fewer than `max_attempts` times are
    /// issued again (and watched anew); the others fail, and are no longer watched.
    pub(super) fn overdue(&mut self, now: Instant) -> Overdue {
        let mut overdue = Overdue::default();
        let late: Vec<Uuid> = self
            .watched
            .iter()
            .filter(|(_, w)| w.due <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            let patience = {
                let w = &self.watched[&id];
                self.patience(&w.request.provider_id)
            };
            let w = self.watched.get_mut(&id).expect("listed above");
            let max = self
                .providers
                .get(&w.request.provider_id)
                .map_or(1, |p| p.max_attempts.max(1));
            if w.issued < max {
                w.issued += 1;
                w.due = now + patience;
                tracing::warn!(request = %id, provider = %w.request.provider_id, blob = %w.request.blob_id, issue = w.issued, "no result from any worker in time: issuing the request again");
                metrics::counter!("studio_requests_reissued_total", "provider_id" => w.request.provider_id.clone()).increment(1);
                overdue.reissue.push(w.request.clone());
                continue;
            }
            let w = self.watched.remove(&id).expect("listed above");
            tracing::warn!(request = %id, provider = %w.request.provider_id, blob = %w.request.blob_id, issued = w.issued, "no result from any worker: the request fails");
            let r = &w.request;
            overdue.failed.push(ProcessingResult {
                request_id: r.request_id,
                provider_id: r.provider_id.clone(),
                blob_id: r.blob_id,
                version: r.version,
                fingerprint: r.fingerprint,
                status: ProcessingStatus::Failed,
                attempts: 0,
                outputs: 0,
                error: Some(format!(
                    "no worker answered: issued {} times, each left unanswered for {} ms",
                    w.issued,
                    patience.as_millis()
                )),
                started_at: w.first_issued,
                finished_at: Timestamp(chrono::Utc::now()),
            });
        }
        overdue
    }
}

#[cfg(test)]
mod tests {
    use studio_model::{Doc, Fingerprint};

    use super::*;

    fn provider() -> Provider {
        serde_json::from_value(serde_json::json!({
            "id": "p", "timeout_ms": 100, "max_attempts": 2, "backoff_ms": 10
        }))
        .unwrap()
    }

    fn request() -> TransformRequest {
        TransformRequest {
            request_id: Uuid::from_u128(1),
            provider_id: "p".into(),
            provider_version: String::new(),
            blob_id: Uuid::from_u128(2),
            version: 1,
            fingerprint: Fingerprint(3),
            user_id: Uuid::from_u128(4),
            caused_by: Uuid::from_u128(5),
            content_type: "text/plain".into(),
            doc: Doc::new(serde_json::json!({"content": "x"})),
            derived: Vec::new(),
            created_at: Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").unwrap(),
        }
    }

    fn batch(requests: Vec<(TransformRequest, isize)>) -> ViewBatch {
        ViewBatch {
            requests,
            ..ViewBatch::default()
        }
    }

    #[test]
    fn a_silent_request_is_issued_max_attempts_times_then_fails() {
        let mut reissuer = Reissuer::new(&[provider()], Duration::from_millis(50));
        let patience = Duration::from_millis(2 * 100 + 10 + 50);
        assert_eq!(reissuer.patience("p"), patience);
        let t0 = Instant::now();
        reissuer.observe(&batch(vec![(request(), 1)]), t0);
        let early = reissuer.overdue(t0 + patience - Duration::from_millis(1));
        assert!(early.reissue.is_empty() && early.failed.is_empty());
        let second = reissuer.overdue(t0 + patience);
        assert_eq!(second.reissue, vec![request()]);
        assert!(second.failed.is_empty());
        let last = reissuer.overdue(t0 + patience * 2);
        assert!(last.reissue.is_empty());
        assert_eq!(last.failed.len(), 1);
        assert_eq!(last.failed[0].status, ProcessingStatus::Failed);
        assert_eq!(last.failed[0].request_id, request().request_id);
        assert!(
            reissuer.overdue(t0 + patience * 10).failed.is_empty(),
            "once"
        );
    }

    #[test]
    fn a_settled_or_superseded_request_is_not_watched() {
        let mut reissuer = Reissuer::new(&[provider()], Duration::ZERO);
        let t0 = Instant::now();
        reissuer.observe(&batch(vec![(request(), 1)]), t0);
        reissuer.observe(&batch(vec![(request(), -1)]), t0);
        let later = reissuer.overdue(t0 + Duration::from_secs(60));
        assert!(later.reissue.is_empty() && later.failed.is_empty());
    }
}
