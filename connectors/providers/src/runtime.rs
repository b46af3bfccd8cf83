//! [`Runtime`]: runs transform requests on tokio (S5.7).
//!
//! Per request: wait for a slot of the provider (`process_in_parallel`), check that
//! the request is still pending (a superseded request is never run, S5.5), answer from
//! the memo when this provider version already processed this fingerprint, else call
//! the provider with a per-attempt timeout (`timeout_ms`) and retry failures with
//! exponential backoff (`backoff_ms` doubling up to `backoff_max_ms`) until
//! `max_attempts`; then `failed`. Every request gets exactly one [`Answer`], sent on
//! the channel that [`Runtime::new`] returned.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustc_hash::FxHashMap;
use studio_model::{ProcessingResult, ProcessingStatus, Provider, Timestamp, TransformRequest};
use tokio::sync::Semaphore;

use crate::external::ExternalProvider;
use crate::memo::Memo;
use crate::output::{OutputDelta, output_deltas};
use crate::{Policy, ProviderError, ProviderInput, Refused, Transformer, builtin};

/// The runtime's answer to one request.
#[derive(Debug)]
pub struct Answer {
    /// The request.
    pub request: TransformRequest,
    /// `None` when the request was superseded before its turn: nothing ran.
    pub outcome: Option<Outcome>,
}

/// What running a request produced.
#[derive(Debug)]
pub struct Outcome {
    /// Output deltas to feed back (empty on failure or when nothing changes).
    pub outputs: Vec<OutputDelta>,
    /// The `processing` row.
    pub result: ProcessingResult,
    /// Answered from the memo, without calling the provider.
    pub memo_hit: bool,
}

/// Counters of the runtime (for the summary and metrics).
#[derive(Debug, Default)]
pub struct RuntimeStats {
    /// Calls to providers (attempts).
    pub calls: AtomicU64,
    /// Attempts after a failed one.
    pub retries: AtomicU64,
    /// Attempts that timed out.
    pub timeouts: AtomicU64,
    /// Requests answered from the memo.
    pub memo_hits: AtomicU64,
    /// Requests that completed.
    pub completed: AtomicU64,
    /// Requests that failed every attempt.
    pub failed: AtomicU64,
    /// Requests superseded before their turn.
    pub superseded: AtomicU64,
}

/// Tells whether a request is still pending when its turn comes.
pub type StillPending = Arc<dyn Fn(&TransformRequest) -> bool + Send + Sync>;

struct Registered {
    provider: Provider,
    transformer: Arc<dyn Transformer>,
    slots: Arc<Semaphore>,
}

/// The provider worker runtime.
pub struct Runtime {
    tokio: tokio::runtime::Runtime,
    providers: Arc<RwLock<FxHashMap<String, Registered>>>,
    memo: Arc<Memo>,
    answers: crossbeam_channel::Sender<Answer>,
    policy: Policy,
    /// What it did so far.
    pub stats: Arc<RuntimeStats>,
}

impl Runtime {
    /// A runtime on `threads` tokio threads, and the channel its answers arrive on,
    /// with the default [`Policy`] (no `api_key_env` allowed) and a memo in memory.
    pub fn new(threads: usize) -> std::io::Result<(Runtime, crossbeam_channel::Receiver<Answer>)> {
        Self::with_policy(threads, Policy::default())
    }

    /// A runtime that registers only the definitions `policy` accepts, with a memo in
    /// memory.
    pub fn with_policy(
        threads: usize,
        policy: Policy,
    ) -> std::io::Result<(Runtime, crossbeam_channel::Receiver<Answer>)> {
        Self::with_policy_and_memo(threads, policy, Memo::in_memory())
    }

    /// A runtime that registers only the definitions `policy` accepts and remembers
    /// answers in `memo` (a file survives restarts).
    pub fn with_policy_and_memo(
        threads: usize,
        policy: Policy,
        memo: Memo,
    ) -> std::io::Result<(Runtime, crossbeam_channel::Receiver<Answer>)> {
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("studio-provider")
            .enable_all()
            .build()?;
        let (answers, received) = crossbeam_channel::unbounded();
        Ok((
            Runtime {
                tokio,
                providers: Arc::default(),
                memo: Arc::new(memo),
                answers,
                policy,
                stats: Arc::default(),
            },
            received,
        ))
    }

    /// Registers (or replaces) a provider with the implementation its definition
    /// names: a sandboxed process when it has a `command`, else its built-in worker.
    /// `Ok(false)` when it has neither (a worker elsewhere must answer its requests);
    /// an error, and nothing registered, when the policy refuses the definition or
    /// its program cannot be found.
    pub fn register_runnable(&self, provider: Provider) -> Result<bool, Refused> {
        let refused = self.policy.check(&provider).and_then(|()| {
            if !provider.is_external() {
                return Ok(builtin::by_name(provider.worker_name()));
            }
            match ExternalProvider::new(&provider) {
                Ok(external) => Ok(Some(Arc::new(external) as Arc<dyn Transformer>)),
                Err(problem) => Err(Refused::External {
                    provider: provider.id.clone(),
                    problem,
                }),
            }
        });
        match refused {
            Ok(Some(transformer)) => {
                self.register(provider, transformer);
                Ok(true)
            }
            Ok(None) => {
                self.remove(&provider.id);
                Ok(false)
            }
            Err(refused) => {
                self.remove(&provider.id);
                Err(refused)
            }
        }
    }

    /// Registers (or replaces) a provider run by its built-in implementation; false
    /// when there is none (an external worker must answer its requests) and when the
    /// policy refuses it (logged as an error). [`Runtime::register_runnable`] also runs
    /// `command` providers and returns the refusal.
    pub fn register_builtin(&self, provider: Provider) -> bool {
        let id = provider.id.clone();
        if provider.is_external() {
            self.remove(&id);
            return false;
        }
        self.register_runnable(provider).unwrap_or_else(|refused| {
            tracing::error!(provider = %id, error = %refused, "provider not registered");
            false
        })
    }

    /// Registers (or replaces) a provider with the implementation given, trusted as it
    /// is: no policy check.
    pub fn register(&self, provider: Provider, transformer: Arc<dyn Transformer>) {
        let slots = Arc::new(Semaphore::new(
            provider.processing_rules.process_in_parallel.limit() as usize,
        ));
        self.providers.write().expect("registry lock").insert(
            provider.id.clone(),
            Registered {
                provider,
                transformer,
                slots,
            },
        );
    }

    /// Removes a provider; requests already running finish.
    pub fn remove(&self, id: &str) {
        self.providers.write().expect("registry lock").remove(id);
    }

    /// True when this runtime runs `provider_id`.
    pub fn runs(&self, provider_id: &str) -> bool {
        self.providers
            .read()
            .expect("registry lock")
            .contains_key(provider_id)
    }

    /// Queues a request; its [`Answer`] arrives on the answers channel. A request for a
    /// provider this runtime does not run is answered as superseded.
    pub fn submit(&self, request: TransformRequest, still_pending: StillPending) {
        let registered = {
            let providers = self.providers.read().expect("registry lock");
            providers.get(&request.provider_id).map(|r| {
                (
                    r.provider.clone(),
                    Arc::clone(&r.transformer),
                    Arc::clone(&r.slots),
                )
            })
        };
        let (memo, answers, stats) = (
            Arc::clone(&self.memo),
            self.answers.clone(),
            Arc::clone(&self.stats),
        );
        self.tokio.spawn(async move {
            let outcome = match registered {
                None => None,
                Some((provider, transformer, slots)) => {
                    let _slot = slots.acquire_owned().await.expect("never closed");
                    if still_pending(&request) {
                        let input = ProviderInput::new(request.clone(), provider);
                        Some(run(&input, transformer.as_ref(), &memo, &stats).await)
                    } else {
                        None
                    }
                }
            };
            if outcome.is_none() {
                stats.superseded.fetch_add(1, Ordering::Relaxed);
            }
            let _ = answers.send(Answer { request, outcome });
        });
    }
}

/// An external provider enforces `timeout_ms` itself and kills its process group; the
/// runtime's own timer waits this much longer, so that the kill comes first and the
/// next attempt never overlaps the process of the one before.
const EXTERNAL_KILL_GRACE: Duration = Duration::from_secs(1);

fn now() -> Timestamp {
    Timestamp(chrono::Utc::now())
}

/// Runs one request: memo, attempts, timeout, backoff.
#[tracing::instrument(
    name = "provider.call",
    skip_all,
    fields(
        provider.id = %input.provider.id,
        blob.id = %input.request.blob_id,
        request.id = %input.request.request_id,
        version = input.request.version,
        status = tracing::field::Empty,
        attempts = tracing::field::Empty,
        memo_hit = tracing::field::Empty,
    )
)]
async fn run(
    input: &ProviderInput,
    transformer: &dyn Transformer,
    memo: &Memo,
    stats: &RuntimeStats,
) -> Outcome {
    let (request, provider) = (&input.request, &input.provider);
    let key = (
        provider.id.clone(),
        provider.version.clone(),
        request.fingerprint,
    );
    let started_at = now();
    let remembered = memo.get(&key);
    let memo_hit = remembered.is_some();
    let mut attempts = 0;
    let mut error = None;
    let output = match remembered {
        Some(output) => {
            stats.memo_hits.fetch_add(1, Ordering::Relaxed);
            Some(output)
        }
        None => {
            let mut backoff = Duration::from_millis(provider.backoff_ms);
            let limit = Duration::from_millis(provider.timeout_ms)
                + if provider.is_external() {
                    EXTERNAL_KILL_GRACE
                } else {
                    Duration::ZERO
                };
            loop {
                attempts += 1;
                stats.calls.fetch_add(1, Ordering::Relaxed);
                let attempt = tokio::time::timeout(limit, transformer.transform(input)).await;
                match attempt.unwrap_or(Err(ProviderError::Timeout(provider.timeout_ms))) {
                    Ok(output) => {
                        memo.insert(key, &output);
                        break Some(output);
                    }
                    Err(e) => {
                        if matches!(e, ProviderError::Timeout(_)) {
                            stats.timeouts.fetch_add(1, Ordering::Relaxed);
                        }
                        tracing::warn!(provider = %provider.id, blob = %request.blob_id, attempt = attempts, error = %e, "provider attempt failed");
                        error = Some(e.to_string());
                        if attempts >= provider.max_attempts.max(1) {
                            break None;
                        }
                        stats.retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(provider.backoff_max_ms));
                    }
                }
            }
        }
    };
    let outputs = output
        .as_ref()
        .map(|o| output_deltas(request, provider, o))
        .unwrap_or_default();
    let status = if output.is_some() {
        stats.completed.fetch_add(1, Ordering::Relaxed);
        ProcessingStatus::Completed
    } else {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        ProcessingStatus::Failed
    };
    let span = tracing::Span::current();
    span.record("status", status.as_str());
    span.record("attempts", attempts);
    span.record("memo_hit", memo_hit);
    Outcome {
        result: ProcessingResult {
            request_id: request.request_id,
            provider_id: provider.id.clone(),
            blob_id: request.blob_id,
            version: request.version,
            fingerprint: request.fingerprint,
            status,
            attempts,
            outputs: outputs.len() as u32,
            error: if output.is_some() { None } else { error },
            started_at,
            finished_at: now(),
        },
        outputs,
        memo_hit,
    }
}
