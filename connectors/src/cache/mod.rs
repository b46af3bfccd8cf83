//! The Redis cache of the query API's `GET /v1/blobs/{id}` (docs/access.md, "The Redis
//! cache"): a read-through cache of each user's answer about each blob, and the view
//! writer's invalidation after every commit that changes a blob or its grants.
//!
//! ```text
//!  PREFIX:epoch                                 bumped when a writer opens the store, and
//!                                               after an invalidation could not reach Redis
//!  PREFIX:gen:{blob_id}                         bumped after each commit changing the blob
//!                                               (its row or its grants)
//!  PREFIX:blob:{user_id}:{blob_id}:g{epoch}.{gen}   the user's answer (TTL); "" = 404
//! ```
//!
//! **Reading.** One round trip (a Lua script) reads the stamp `{epoch}.{gen}` and the
//! entry under it. A miss reads the view store *after* that, and stores its answer
//! under the stamp it read. A writer bumps the stamp only after its commit, so an
//! answer read before a commit but stored after it lands under a stamp nobody looks up
//! any more: no SCAN, no race, and old entries simply expire.
//!
//! **Writing.** [`InvalidatingSink`] wraps any view store: after each committed batch
//! it `INCR`s the generation of every blob the batch changed, in one pipeline. When
//! Redis cannot be reached the commit stands; the failure is logged and counted, and
//! the epoch is bumped (every entry dropped) as soon as Redis answers again.
//!
//! **Failing open.** Every operation is bounded by `redis.timeout_ms`; a failed lookup
//! answers from the view store, and the API then leaves Redis alone for
//! `redis.retry_after_ms`, warning once per interval.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use studio_config::RedisConfig;
use studio_model::{Checkpoint, SourcePos, Uuid, ViewBatch};

use crate::{RecoveredAs, SinkError, ViewSink};

/// The stamp and the entry under it, in one round trip. A missing epoch is set from
/// the server's clock (microseconds), never to a number used before, so that entries
/// stored across a Redis restart (stamps of the old server's counters) stay unreachable.
const LOOKUP: &str = r"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  local now = redis.call('TIME')
  epoch = now[1] .. string.format('%06d', now[2])
  redis.call('SET', KEYS[1], epoch, 'NX')
  epoch = redis.call('GET', KEYS[1])
end
local stamp = epoch .. '.' .. (redis.call('GET', KEYS[2]) or '0')
return {stamp, redis.call('GET', ARGV[1] .. stamp)}
";

/// Bumps the epoch (set from the server's clock when missing, as in [`LOOKUP`]).
const BUMP_EPOCH: &str = r"
if not redis.call('GET', KEYS[1]) then
  local now = redis.call('TIME')
  redis.call('SET', KEYS[1], now[1] .. string.format('%06d', now[2]))
end
return redis.call('INCR', KEYS[1])
";

/// Blobs invalidated per pipeline (each pipeline has its own timeout).
const INVALIDATION_CHUNK: usize = 10_000;

/// The cache's settings, from `[redis]`.
#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// `redis://HOST:PORT[/DB]`.
    pub url: String,
    /// How long an entry lives.
    pub ttl: Duration,
    /// The first part of every key.
    pub key_prefix: String,
    /// The bound on one operation (one pipeline of invalidations).
    pub timeout: Duration,
    /// How long the API leaves Redis alone after a failure.
    pub retry_after: Duration,
    /// Larger answers are not cached.
    pub max_entry_bytes: usize,
}

impl CacheOptions {
    /// The options of `[redis]`, when a cache is configured.
    pub fn from_config(config: &RedisConfig) -> Option<CacheOptions> {
        config.enabled().then(|| CacheOptions {
            url: config.url.clone(),
            ttl: Duration::from_secs(config.ttl_seconds),
            key_prefix: config.key_prefix.clone(),
            timeout: Duration::from_millis(config.timeout_ms),
            retry_after: Duration::from_millis(config.retry_after_ms),
            max_entry_bytes: usize::try_from(config.max_entry_bytes).unwrap_or(usize::MAX),
        })
    }
}

/// A cache operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// `redis.url` is not a Redis URL.
    #[error("redis.url is not a Redis URL (redis://HOST:PORT[/DB]): {0}")]
    Url(redis::RedisError),
    /// Redis refused or failed.
    #[error("Redis failed: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer within `redis.timeout_ms`.
    #[error("Redis did not answer within {0:?} (redis.timeout_ms)")]
    Timeout(Duration),
    /// The writer's thread for invalidations could not start.
    #[error("cannot start the cache invalidation thread: {0}")]
    Runtime(std::io::Error),
}

/// What the cache holds for a user's question about a blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A cached answer: the blob as JSON text, or `None` when the user may not read it
    /// (or it does not exist).
    Hit(Option<String>),
    /// Nothing cached: store the answer read from the view store under this stamp.
    Miss {
        /// The stamp read before the view store.
        stamp: String,
    },
}

/// A handle on the cache; clones share one connection (multiplexed, reconnecting).
#[derive(Clone)]
pub struct BlobCache {
    inner: Arc<Shared>,
}

struct Shared {
    client: redis::Client,
    connection: tokio::sync::OnceCell<ConnectionManager>,
    options: CacheOptions,
    lookup: redis::Script,
    bump_epoch: redis::Script,
    /// Since `started`, in ms: the API skips the cache until then after a failure.
    paused_until_ms: AtomicU64,
    started: Instant,
}

impl BlobCache {
    /// A cache at `options.url`. Connects when first used (Redis may be down now).
    pub fn open(options: CacheOptions) -> Result<BlobCache, CacheError> {
        let client = redis::Client::open(options.url.as_str()).map_err(CacheError::Url)?;
        Ok(BlobCache {
            inner: Arc::new(Shared {
                client,
                connection: tokio::sync::OnceCell::new(),
                options,
                lookup: redis::Script::new(LOOKUP),
                bump_epoch: redis::Script::new(BUMP_EPOCH),
                paused_until_ms: AtomicU64::new(0),
                started: Instant::now(),
            }),
        })
    }

    /// The options it was opened with.
    pub fn options(&self) -> &CacheOptions {
        &self.inner.options
    }

    fn epoch_key(&self) -> String {
        format!("{}:epoch", self.inner.options.key_prefix)
    }

    /// The key of `blob`'s generation counter.
    pub fn generation_key(&self, blob: Uuid) -> String {
        format!("{}:gen:{blob}", self.inner.options.key_prefix)
    }

    /// The key of `user`'s answer about `blob`, without its stamp.
    pub fn entry_key(&self, user: Uuid, blob: Uuid) -> String {
        format!("{}:blob:{user}:{blob}:g", self.inner.options.key_prefix)
    }

    /// Runs `operation` on the connection, within `redis.timeout_ms`.
    async fn within_timeout<T>(
        &self,
        timeout: Duration,
        operation: impl AsyncFnOnce(&mut ConnectionManager) -> redis::RedisResult<T>,
    ) -> Result<T, CacheError> {
        let attempt = async {
            let connection = self
                .inner
                .connection
                .get_or_try_init(|| async {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(self.inner.options.timeout))
                        .set_response_timeout(Some(self.inner.options.timeout))
                        .set_number_of_retries(2)
                        .set_max_delay(Duration::from_secs(1));
                    ConnectionManager::new_lazy_with_config(self.inner.client.clone(), config)
                })
                .await?;
            operation(&mut connection.clone()).await
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| CacheError::Timeout(timeout))?
            .map_err(CacheError::Redis)
    }

    fn now_ms(&self) -> u64 {
        self.inner.started.elapsed().as_millis() as u64
    }

    /// False while the API leaves Redis alone after a failure.
    fn available(&self) -> bool {
        self.now_ms() >= self.inner.paused_until_ms.load(Ordering::Relaxed)
    }

    /// Counts a failed API operation and pauses the cache; warns once per pause.
    fn failed(&self, operation: &'static str, error: &CacheError) {
        metrics::counter!("studio_api_cache_errors_total", "operation" => operation).increment(1);
        let until = self.now_ms() + self.inner.options.retry_after.as_millis() as u64;
        let before = self.inner.paused_until_ms.swap(until, Ordering::Relaxed);
        if before <= self.now_ms() {
            tracing::warn!(
                %error,
                operation,
                retry_in = ?self.inner.options.retry_after,
                "the Redis cache failed; answering from the view store"
            );
        }
    }

    /// What the cache holds for `user` about `blob`; `None` when the cache cannot be
    /// used now (the caller answers from the view store and stores nothing).
    pub async fn lookup(&self, user: Uuid, blob: Uuid) -> Option<Lookup> {
        if !self.available() {
            metrics::counter!("studio_api_cache_bypassed_total").increment(1);
            return None;
        }
        let (epoch, generation, entry) = (
            self.epoch_key(),
            self.generation_key(blob),
            self.entry_key(user, blob),
        );
        let looked = self
            .within_timeout(self.inner.options.timeout, async |c| {
                let mut script = self.inner.lookup.prepare_invoke();
                script.key(&epoch).key(&generation).arg(&entry);
                script.invoke_async::<(String, Option<String>)>(c).await
            })
            .await;
        match looked {
            Ok((_, Some(answer))) => {
                metrics::counter!("studio_api_cache_hits_total").increment(1);
                Some(Lookup::Hit((!answer.is_empty()).then_some(answer)))
            }
            Ok((stamp, None)) => {
                metrics::counter!("studio_api_cache_misses_total").increment(1);
                Some(Lookup::Miss { stamp })
            }
            Err(error) => {
                self.failed("lookup", &error);
                None
            }
        }
    }

    /// Stores `answer` (`None`: not readable) for `user` about `blob` under `stamp`,
    /// the stamp its [`lookup`](BlobCache::lookup) read before the view store was.
    pub async fn store(&self, user: Uuid, blob: Uuid, stamp: &str, answer: Option<&str>) {
        let value = answer.unwrap_or("");
        if value.len() > self.inner.options.max_entry_bytes || !self.available() {
            return;
        }
        let key = format!("{}{stamp}", self.entry_key(user, blob));
        let ttl = self.inner.options.ttl.as_secs().max(1);
        let stored = self
            .within_timeout(self.inner.options.timeout, async |c| {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(value)
                    .arg("EX")
                    .arg(ttl)
                    .query_async::<()>(c)
                    .await
            })
            .await;
        if let Err(error) = stored {
            self.failed("store", &error);
        }
    }

    /// Drops every cached answer about `blobs` (bumps their generations), in
    /// pipelines of [`INVALIDATION_CHUNK`], each within `redis.timeout_ms`.
    pub async fn invalidate(&self, blobs: &[Uuid]) -> Result<(), CacheError> {
        for chunk in blobs.chunks(INVALIDATION_CHUNK) {
            let mut pipeline = redis::pipe();
            for blob in chunk {
                pipeline.incr(self.generation_key(*blob), 1).ignore();
            }
            self.within_timeout(self.inner.options.timeout, async |c| {
                pipeline.query_async::<()>(c).await
            })
            .await?;
        }
        Ok(())
    }

    /// Drops every cached answer (bumps the epoch).
    pub async fn invalidate_everything(&self) -> Result<(), CacheError> {
        let epoch = self.epoch_key();
        self.within_timeout(self.inner.options.timeout, async |c| {
            let mut script = self.inner.bump_epoch.prepare_invoke();
            script.key(&epoch);
            script.invoke_async::<i64>(c).await
        })
        .await
        .map(drop)
    }
}

/// A view store whose commits invalidate the cache: after each batch is written, the
/// blobs it changed for readers ([`ViewBatch::blobs_changed_for_readers`]) are
/// invalidated. Redis failing never fails a write: it is logged and counted
/// (`studio_cache_invalidation_errors_total`), and every cached answer is dropped as
/// soon as Redis answers again (retried every `redis.retry_after_ms`, and before the
/// next batch's invalidations).
pub struct InvalidatingSink {
    inner: Box<dyn ViewSink + Send>,
    cache: BlobCache,
    runtime: tokio::runtime::Runtime,
    /// An invalidation failed: the epoch must be bumped.
    owed: Arc<AtomicBool>,
}

impl InvalidatingSink {
    /// Wraps `inner`, and drops every cached answer now: a replay may have emptied
    /// the store, and a writer before this one may have died between a commit and its
    /// invalidation.
    pub fn wrap(
        inner: Box<dyn ViewSink + Send>,
        options: CacheOptions,
    ) -> Result<InvalidatingSink, CacheError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("studio-cache-invalidation")
            .enable_all()
            .build()
            .map_err(CacheError::Runtime)?;
        let retry_every = options.retry_after.max(Duration::from_millis(100));
        let cache = BlobCache::open(options)?;
        let owed = Arc::new(AtomicBool::new(true));
        runtime.spawn(pay_owed_epochs(
            cache.clone(),
            Arc::clone(&owed),
            retry_every,
        ));
        let mut sink = InvalidatingSink {
            inner,
            cache,
            runtime,
            owed,
        };
        sink.invalidate(&[]);
        Ok(sink)
    }

    /// Invalidates `blobs` (and everything, when an earlier invalidation failed).
    fn invalidate(&mut self, blobs: &[Uuid]) {
        let everything = self.owed.swap(false, Ordering::SeqCst);
        let cache = &self.cache;
        let done = self.runtime.block_on(async {
            if everything {
                cache.invalidate_everything().await?;
            }
            cache.invalidate(blobs).await
        });
        match done {
            Ok(()) => {
                metrics::counter!("studio_cache_invalidations_total").increment(blobs.len() as u64);
            }
            Err(error) => {
                self.owed.store(true, Ordering::SeqCst);
                metrics::counter!("studio_cache_invalidation_errors_total").increment(1);
                tracing::warn!(
                    %error,
                    blobs = blobs.len(),
                    "cannot invalidate the Redis cache after a commit (the commit stands): cached \
                     answers may be stale until Redis answers again, when every cached answer is \
                     dropped, or for at most redis.ttl_seconds"
                );
            }
        }
    }
}

/// Bumps the epoch whenever an invalidation failed, until Redis takes it.
async fn pay_owed_epochs(cache: BlobCache, owed: Arc<AtomicBool>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if owed.swap(false, Ordering::SeqCst) {
            match cache.invalidate_everything().await {
                Ok(()) => tracing::info!("Redis answers again: every cached answer was dropped"),
                Err(_) => owed.store(true, Ordering::SeqCst),
            }
        }
    }
}

impl ViewSink for InvalidatingSink {
    fn write(&mut self, batch: &ViewBatch) -> Result<(), SinkError> {
        self.inner.write(batch)?;
        self.invalidate(&batch.blobs_changed_for_readers());
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.inner.finish()
    }

    fn recover(
        &mut self,
        source: &str,
        each: &mut dyn FnMut(SourcePos, &str, RecoveredAs),
    ) -> Result<Option<Checkpoint>, SinkError> {
        self.inner.recover(source, each)
    }
}
