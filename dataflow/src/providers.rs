//! The provider loop (S5.4–S5.7): hands pending transform requests to the workers run
//! here (built-in, or external programs in a sandbox) and feeds their answers back
//! into the dataflow.
//!
//! ```text
//!  ViewBatch.requests --observe--> pending (by provider, blob) --dispatch--> Runtime (tokio)
//!                                                                            |
//!  dataflow inputs <--feed: output deltas + processing results-- answers <---+
//! ```
//!
//! A request is dispatched when it is pending, its provider runs here, and no request
//! of the same provider for the same blob and fingerprint is in flight (a newer
//! version that only added annotations waits for the older request's answer, which
//! settles it). Its answer is fed at the next timestamp; once that timestamp is
//! complete, an accepted output has settled the request. A request still pending then
//! lost a race (its output was a `version conflict`, S4.3, because another delta took
//! the version first) and is dispatched again on the blob's new state — answered from
//! the memo, so the provider is not called twice for the same input — at most
//! [`MAX_REBASES`] times, after which it fails.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;
use studio_model::{
    Fingerprint, ProcessingResult, ProcessingStatus, Provider, SourcePos, Timestamp,
    TransformRequest, Uuid, ViewBatch,
};
use studio_providers::{Answer, Policy, Runtime, Transformer};

/// Source partition of provider outputs fed back into the dataflow.
pub const OUTPUT_PART: u32 = u32::MAX;

/// The longest chain of provider outputs caused by one another; an output deeper than
/// this is not written and its request fails (a provider that derives from its own
/// outputs would otherwise never stop).
pub const MAX_CASCADE_DEPTH: u32 = 64;

/// Times a request whose output lost a race is run again before it fails.
pub const MAX_REBASES: u32 = 3;

/// How providers run in a replay.
#[derive(Clone, Default)]
pub struct ProviderSetup {
    /// The registry at the start (config file and provider log).
    pub providers: Vec<Provider>,
    /// Tokio threads of the worker runtime.
    pub threads: usize,
    /// Also write each new transform request as a JSON line here.
    pub requests_out: Option<PathBuf>,
    /// Run the providers to quiescence after every log batch, not only at the end.
    pub each_batch: bool,
    /// Implementations by worker name, besides (and before) the built-in ones.
    pub transformers: Vec<(String, Arc<dyn Transformer>)>,
    /// What a provider definition may ask for (`provider_runtime.api_key_env_allow`).
    pub policy: Policy,
}

impl std::fmt::Debug for ProviderSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSetup")
            .field("providers", &self.providers)
            .field("threads", &self.threads)
            .field("requests_out", &self.requests_out)
            .field("each_batch", &self.each_batch)
            .field("policy", &self.policy)
            .field(
                "transformers",
                &self.transformers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What the provider loop did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProviderReport {
    /// Providers registered.
    pub providers: usize,
    /// Of which run here: by a built-in worker, a sandboxed `command`, or a given
    /// implementation.
    pub providers_built_in: usize,
    /// Distinct transform requests emitted.
    pub requests: u64,
    /// Requests superseded by a newer version before they ran (S5.5).
    pub superseded: u64,
    /// Requests completed (one row each in `processing`).
    pub completed: u64,
    /// Requests that failed every attempt (`processing.failed`).
    pub failed: u64,
    /// Calls to providers.
    pub calls: u64,
    /// Attempts after a failure.
    pub retries: u64,
    /// Attempts that timed out.
    pub timeouts: u64,
    /// Requests answered from the memo.
    pub memo_hits: u64,
    /// Output deltas fed back.
    pub outputs: u64,
    /// Requests run again because their output lost a race (S4.3).
    pub rebases: u64,
    /// The longest chain of provider outputs caused by one another (S5.6).
    pub cascade_depth: u32,
    /// Requests still pending at the end for providers no worker here runs.
    pub waiting_for_external_workers: u64,
}

/// The dispatcher: lives on worker 0 beside the view sink.
pub struct Dispatcher {
    runtime: Runtime,
    answers: crossbeam_channel::Receiver<Answer>,
    /// The pending request of each (provider, blob), as of the last completed timestamp.
    pending: Arc<Mutex<FxHashMap<(String, Uuid), TransformRequest>>>,
    /// (provider, blob, fingerprint) of the requests in flight: a newer version of a
    /// blob with the same fingerprint (an annotation by someone else) waits for the
    /// answer on the older one, which settles it.
    in_flight: FxHashSet<(String, Uuid, Fingerprint)>,
    runs: FxHashMap<Uuid, u32>,
    seen: FxHashSet<Uuid>,
    answered: FxHashSet<Uuid>,
    /// Depth of each output delta in its cascade.
    output_depth: FxHashMap<Uuid, u32>,
    requests_out: Option<BufWriter<File>>,
    next_offset: u64,
    report: ProviderReport,
}

/// What to feed at the next timestamp.
#[derive(Default)]
pub struct Feed {
    /// Output delta records, with their positions.
    pub records: Vec<(SourcePos, String)>,
    /// Processing results.
    pub results: Vec<ProcessingResult>,
}

impl Feed {
    /// True when there is nothing to feed.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.results.is_empty()
    }
}

impl Dispatcher {
    /// Starts the runtime and registers the providers of `setup` that run here; fails
    /// when the policy refuses a definition.
    pub fn start(setup: &ProviderSetup) -> std::io::Result<Self> {
        let (runtime, answers) = Runtime::with_policy(setup.threads, setup.policy.clone())?;
        let mut report = ProviderReport {
            providers: setup.providers.len(),
            ..ProviderReport::default()
        };
        for provider in &setup.providers {
            let custom = setup
                .transformers
                .iter()
                .find(|(name, _)| name == provider.worker_name());
            if let Some((_, transformer)) = custom {
                runtime.register(provider.clone(), Arc::clone(transformer));
                report.providers_built_in += 1;
            } else if runtime
                .register_runnable(provider.clone())
                .map_err(std::io::Error::other)?
            {
                report.providers_built_in += 1;
            } else {
                tracing::info!(provider = %provider.id, worker = provider.worker_name(), "no built-in worker and no command: its requests wait for a worker elsewhere");
            }
        }
        let requests_out = match &setup.requests_out {
            Some(path) => Some(BufWriter::new(File::create(path)?)),
            None => None,
        };
        Ok(Dispatcher {
            runtime,
            answers,
            pending: Arc::default(),
            in_flight: FxHashSet::default(),
            runs: FxHashMap::default(),
            seen: FxHashSet::default(),
            answered: FxHashSet::default(),
            output_depth: FxHashMap::default(),
            requests_out,
            next_offset: 0,
            report,
        })
    }

    /// Takes note of a completed timestamp's request changes.
    pub fn observe(&mut self, batch: &ViewBatch) {
        self.answered
            .extend(batch.processing.iter().map(|r| r.request_id));
        let still: FxHashSet<Uuid> = batch
            .requests
            .iter()
            .filter(|(_, diff)| *diff > 0)
            .map(|(r, _)| r.request_id)
            .collect();
        let mut pending = self.pending.lock().expect("pending lock");
        for (request, diff) in &batch.requests {
            let key = (request.provider_id.clone(), request.blob_id);
            if *diff < 0 {
                if !still.contains(&request.request_id)
                    && pending
                        .get(&key)
                        .is_some_and(|p| p.request_id == request.request_id)
                {
                    pending.remove(&key);
                }
                continue;
            }
            if self.seen.insert(request.request_id) {
                self.report.requests += 1;
                if let Some(out) = self.requests_out.as_mut()
                    && let Err(e) = serde_json::to_writer(&mut *out, request)
                        .map_err(std::io::Error::from)
                        .and_then(|()| out.write_all(b"\n"))
                {
                    tracing::error!(error = %e, "cannot write the requests file; no more requests go there");
                    self.requests_out = None;
                }
            }
            pending.insert(key, request.clone());
        }
    }

    /// Hands every dispatchable request to the runtime; returns the failures to feed
    /// for requests that lost too many races.
    pub fn dispatch(&mut self) -> Vec<ProcessingResult> {
        let mut ready: Vec<TransformRequest> = {
            let pending = self.pending.lock().expect("pending lock");
            pending
                .values()
                .filter(|r| !self.in_flight.contains(&in_flight_key(r)))
                .filter(|r| self.runtime.runs(&r.provider_id))
                .cloned()
                .collect()
        };
        ready.sort_by_key(|r| (r.created_at, r.request_id));
        let mut failures = Vec::new();
        for request in ready {
            let runs = self.runs.entry(request.request_id).or_default();
            *runs += 1;
            if *runs > 1 {
                self.report.rebases += 1;
            }
            if *runs > MAX_REBASES + 1 {
                let at = Timestamp(chrono::Utc::now());
                failures.push(ProcessingResult {
                    request_id: request.request_id,
                    provider_id: request.provider_id.clone(),
                    blob_id: request.blob_id,
                    version: request.version,
                    fingerprint: request.fingerprint,
                    status: ProcessingStatus::Failed,
                    attempts: 0,
                    outputs: 0,
                    error: Some(format!(
                        "its output was rejected {MAX_REBASES} times (see dead_letters)"
                    )),
                    started_at: at,
                    finished_at: at,
                });
                self.report.failed += 1;
                continue;
            }
            self.in_flight.insert(in_flight_key(&request));
            let pending = Arc::clone(&self.pending);
            // Still pending at its turn: the same fingerprint is pending, at this
            // version or a newer one that only changed what the provider does not read.
            self.runtime.submit(
                request,
                Arc::new(move |r: &TransformRequest| {
                    pending
                        .lock()
                        .expect("pending lock")
                        .get(&(r.provider_id.clone(), r.blob_id))
                        .is_some_and(|p| p.fingerprint == r.fingerprint)
                }),
            );
        }
        failures
    }

    /// True when no request is in flight.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Waits (up to `wait`) for answers and turns them into what to feed.
    pub fn collect(&mut self, wait: Duration) -> Feed {
        let mut feed = Feed::default();
        if self.in_flight.is_empty() {
            return feed;
        }
        let first = match self.answers.recv_timeout(wait) {
            Ok(answer) => answer,
            Err(_) => return feed,
        };
        for answer in std::iter::once(first).chain(self.answers.try_iter()) {
            self.in_flight.remove(&in_flight_key(&answer.request));
            let Some(mut outcome) = answer.outcome else {
                continue;
            };
            let depth = self
                .output_depth
                .get(&answer.request.caused_by)
                .copied()
                .unwrap_or(0)
                + 1;
            if depth > MAX_CASCADE_DEPTH && !outcome.outputs.is_empty() {
                tracing::warn!(provider = %answer.request.provider_id, blob = %answer.request.blob_id, "cascade depth limit reached; output dropped");
                outcome.outputs.clear();
                outcome.result.outputs = 0;
                outcome.result.status = ProcessingStatus::Failed;
                outcome.result.error = Some(format!(
                    "cascade depth limit ({MAX_CASCADE_DEPTH}) reached: the output was not written"
                ));
            }
            for output in outcome.outputs {
                self.output_depth.insert(output.id, depth);
                self.report.cascade_depth = self.report.cascade_depth.max(depth);
                feed.records.push((
                    SourcePos {
                        part: OUTPUT_PART,
                        offset: self.next_offset,
                    },
                    output.record,
                ));
                self.next_offset += 1;
                self.report.outputs += 1;
            }
            match outcome.result.status {
                ProcessingStatus::Completed => self.report.completed += 1,
                ProcessingStatus::Failed => self.report.failed += 1,
            }
            feed.results.push(outcome.result);
        }
        feed
    }

    /// The report, with the runtime's counters and what is left waiting.
    pub fn report(&mut self) -> ProviderReport {
        if let Some(out) = self.requests_out.as_mut()
            && let Err(e) = out.flush()
        {
            tracing::error!(error = %e, "cannot flush the requests file");
        }
        let stats = &self.runtime.stats;
        self.report.calls = stats.calls.load(Ordering::Relaxed);
        self.report.retries = stats.retries.load(Ordering::Relaxed);
        self.report.timeouts = stats.timeouts.load(Ordering::Relaxed);
        self.report.memo_hits = stats.memo_hits.load(Ordering::Relaxed);
        let pending = self.pending.lock().expect("pending lock");
        let still_pending: FxHashSet<Uuid> = pending.values().map(|p| p.request_id).collect();
        self.report.superseded = self
            .seen
            .iter()
            .filter(|id| !self.answered.contains(id) && !still_pending.contains(id))
            .count() as u64;
        self.report.waiting_for_external_workers = pending
            .values()
            .filter(|r| !self.runtime.runs(&r.provider_id))
            .count() as u64;
        self.report.clone()
    }
}

fn in_flight_key(r: &TransformRequest) -> (String, Uuid, Fingerprint) {
    (r.provider_id.clone(), r.blob_id, r.fingerprint)
}

/// Loads a provider log: one JSON provider definition per line (blank lines and lines
/// starting with `#` are skipped); a later definition with the same id replaces an
/// earlier one, and `{"remove": "ID"}` removes it.
pub fn read_provider_log(path: &std::path::Path) -> Result<Vec<Provider>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read provider log {}: {e}", path.display()))?;
    let mut registry: BTreeMap<String, Provider> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("{}:{}: not JSON: {e}", path.display(), n + 1))?;
        if let Some(id) = value.get("remove").and_then(|v| v.as_str()) {
            registry.remove(id);
            continue;
        }
        let provider: Provider = serde_json::from_value(value)
            .map_err(|e| format!("{}:{}: not a provider: {e}", path.display(), n + 1))?;
        registry.insert(provider.id.clone(), provider);
    }
    Ok(registry.into_values().collect())
}
