//! The query API (S6.3, issue 17): `studio serve`, axum over any view store.
//!
//! Every route but `/v1/openapi.json` needs `Authorization: Bearer <JWT>` (HS256,
//! `sub` = the user's UUID, `exp` checked; else 401) and answers only with blobs that
//! user may read ([`Readable`]): an unreadable blob answers exactly like a missing one
//! (404). View readers are blocking (each holds its own runtime), so a few threads own
//! one reader each and take the questions from a channel ([`ReaderPool`]).
//!
//! With `[redis]` configured, `GET /v1/blobs/{id}` reads through the Redis cache
//! ([`BlobCache`]): per user, so one user's answer is never another's, and dropped by
//! the view writer after each commit that changes the blob or its grants. Redis
//! failing only costs the cache: the answer comes from the view store.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};
use studio_config::Config;
use studio_connectors::cache::{BlobCache, CacheOptions, Lookup};
use studio_connectors::readable::HistoryError;
use studio_connectors::{Db, Readable, SinkError, ViewReader, open_reader};
use uuid::Uuid;

/// The API described (OpenAPI 3.1).
const OPENAPI: &str = include_str!("openapi.json");

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    readers: ReaderPool,
    key: Arc<DecodingKey>,
    max_page: u32,
    cache: Option<BlobCache>,
}

impl ApiState {
    /// Opens `threads` readers of `db` and takes the secret from `config.api`.
    pub fn open(config: &Config, db: &str, threads: usize) -> anyhow::Result<Self> {
        Self::with_readers(config, db, threads, false)
    }

    /// As [`ApiState::open`], but each reader opens `db` when first asked, and again
    /// after a failure (`studio run`, whose view store may not exist yet).
    pub fn open_lazy(config: &Config, db: &str, threads: usize) -> anyhow::Result<Self> {
        Self::with_readers(config, db, threads, true)
    }

    fn with_readers(config: &Config, db: &str, threads: usize, lazy: bool) -> anyhow::Result<Self> {
        if config.api.jwt_secret.is_empty() {
            anyhow::bail!(
                "no secret for the API's bearer tokens: set api.jwt_secret in the config \
                 file or STUDIO_API__JWT_SECRET"
            );
        }
        let cache = CacheOptions::from_config(&config.redis)
            .map(BlobCache::open)
            .transpose()?;
        if let Some(cache) = &cache {
            tracing::info!(
                ttl = ?cache.options().ttl,
                prefix = %cache.options().key_prefix,
                "GET /v1/blobs/{{id}} reads through the Redis cache"
            );
        }
        Ok(ApiState {
            readers: ReaderPool::open(config, db, threads, lazy)?,
            key: Arc::new(DecodingKey::from_secret(config.api.jwt_secret.as_bytes())),
            max_page: config.api.max_page,
            cache,
        })
    }
}

/// The routes of the API.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/blobs", get(blobs))
        .route("/v1/blobs/{blob_id}", get(blob))
        .route("/v1/blobs/{blob_id}/versions/{version}", get(version))
        .route("/v1/blobs/{blob_id}/deltas", get(deltas))
        .route("/v1/blobs/{blob_id}/descendants", get(descendants))
        .route("/v1/blobs/{blob_id}/ancestors", get(ancestors))
        .with_state(state)
}

/// An error answer: a status and `{"error": ...}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<SinkError> for ApiError {
    fn from(error: SinkError) -> Self {
        tracing::error!(%error, "the view store failed");
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the view store failed: {error}"),
        )
    }
}

fn not_found(blob: Uuid) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no blob {blob}"))
}

/// The authenticated user: the `sub` of a valid bearer token.
pub struct User(Uuid);

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

impl FromRequestParts<ApiState> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let unauthorized = |why: &str| ApiError(StatusCode::UNAUTHORIZED, why.to_owned());
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("missing Authorization: Bearer <JWT>"))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &state.key, &validation)
            .map_err(|e| unauthorized(&format!("invalid token: {e}")))?;
        let user = Uuid::try_parse(&data.claims.sub)
            .map_err(|_| unauthorized("the token's sub is not a user UUID"))?;
        Ok(User(user))
    }
}

fn blob_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(text).map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("{text:?} is not a blob UUID"),
        )
    })
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn blob(
    State(s): State<ApiState>,
    User(user): User,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = blob_id(&id)?;
    let lookup = match &s.cache {
        Some(cache) => cache.lookup(user, id).await,
        None => None,
    };
    if let Some(Lookup::Hit(answer)) = lookup {
        return blob_answer(id, answer);
    }
    // Read after the lookup: the stamp it read is older than what the store shows.
    let found = s.readers.ask(move |r| r.readable_blob(user, id)).await??;
    let answer = found.map(|o| Value::Object(o).to_string());
    if let (Some(cache), Some(Lookup::Miss { stamp })) = (&s.cache, lookup) {
        let (cache, answer) = (cache.clone(), answer.clone());
        tokio::spawn(async move { cache.store(user, id, &stamp, answer.as_deref()).await });
    }
    blob_answer(id, answer)
}

/// The answer of `GET /v1/blobs/{id}`: the blob's JSON text, or 404.
fn blob_answer(id: Uuid, answer: Option<String>) -> Result<Response, ApiError> {
    let json = answer.ok_or_else(|| not_found(id))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

#[derive(Deserialize)]
struct Page {
    limit: Option<u32>,
    after: Option<String>,
}

async fn blobs(
    State(s): State<ApiState>,
    User(user): User,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let limit = page.limit.unwrap_or(100).clamp(1, s.max_page);
    let after = page.after.as_deref().map(blob_id).transpose()?;
    let (blobs, next) = s
        .readers
        .ask(move |r| r.readable_blobs(user, after, limit))
        .await??;
    Ok(Json(json!({ "blobs": blobs, "next": next })))
}

async fn version(
    State(s): State<ApiState>,
    User(user): User,
    Path((id, k)): Path<(String, u64)>,
) -> Result<Json<Value>, ApiError> {
    let id = blob_id(&id)?;
    let doc = s
        .readers
        .ask(move |r| r.readable_version(user, id, k))
        .await?;
    match doc {
        Ok(Some(doc)) => Ok(Json(json!({ "blob_id": id, "version": k, "doc": doc }))),
        Ok(None) => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no version {k} of blob {id}"),
        )),
        Err(HistoryError::Store(e)) => Err(e.into()),
        Err(e @ HistoryError::NoRecords) => Err(ApiError(StatusCode::CONFLICT, e.to_string())),
    }
}

async fn deltas(
    State(s): State<ApiState>,
    User(user): User,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = blob_id(&id)?;
    let rows = s
        .readers
        .ask(move |r| r.readable_deltas(user, id))
        .await??;
    rows.map(|d| Json(json!({ "deltas": d })))
        .ok_or_else(|| not_found(id))
}

async fn relatives(s: ApiState, user: Uuid, id: &str, down: bool) -> Result<Json<Value>, ApiError> {
    let id = blob_id(id)?;
    let rows = s
        .readers
        .ask(move |r| r.readable_relatives(user, id, down))
        .await??;
    rows.map(|b| Json(json!({ "blobs": b })))
        .ok_or_else(|| not_found(id))
}

async fn descendants(
    State(s): State<ApiState>,
    User(user): User,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    relatives(s, user, &id, true).await
}

async fn ancestors(
    State(s): State<ApiState>,
    User(user): User,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    relatives(s, user, &id, false).await
}

type Job = Box<dyn FnOnce(anyhow::Result<&mut dyn ViewReader>) + Send>;

/// Threads that each own a view reader and answer questions sent to them.
#[derive(Clone)]
pub struct ReaderPool {
    jobs: crossbeam_channel::Sender<Job>,
}

impl ReaderPool {
    /// Opens `threads` readers of `db`, each on its own thread: at once (an error
    /// fails here), or `lazy`ly when first asked (an error fails that question).
    pub fn open(config: &Config, db: &str, threads: usize, lazy: bool) -> anyhow::Result<Self> {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        for i in 0..threads.max(1) {
            let (config, db, queue) = (config.clone(), db.to_owned(), queue.clone());
            let (ready_tx, ready) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("studio-api-reader-{i}"))
                .spawn(move || {
                    let open = || -> anyhow::Result<Box<dyn ViewReader>> {
                        Ok(open_reader(&config, &Db::parse(&db)?)?)
                    };
                    let mut reader = None;
                    if !lazy {
                        match open() {
                            Ok(r) => reader = Some(r),
                            Err(e) => return drop(ready_tx.send(Err(e))),
                        }
                    }
                    let _ = ready_tx.send(Ok(()));
                    for job in queue {
                        if reader.is_none() {
                            match open() {
                                Ok(r) => reader = Some(r),
                                Err(error) => {
                                    tracing::warn!(%error, "cannot open the view store");
                                    job(Err(error));
                                    continue;
                                }
                            }
                        }
                        job(Ok(reader.as_deref_mut().expect("opened")));
                    }
                })?;
            ready.recv()??;
        }
        Ok(ReaderPool { jobs })
    }

    /// Runs `question` on a reader's thread.
    pub async fn ask<T: Send + 'static>(
        &self,
        question: impl FnOnce(&mut dyn ViewReader) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |reader| {
            let _ = tx.send(reader.map(question).map_err(|e| format!("{e:#}")));
        });
        let unavailable = |why: String| ApiError(StatusCode::SERVICE_UNAVAILABLE, why);
        self.jobs
            .send(job)
            .map_err(|_| unavailable("no view reader".into()))?;
        rx.await
            .map_err(|_| unavailable("no view reader".into()))?
            .map_err(|e| unavailable(format!("cannot open the view store: {e}")))
    }
}

/// Serves the API on `listen` until the process ends.
pub fn serve_blocking(listen: &str, app: Router) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
            anyhow::anyhow!("cannot listen on {listen}: {e} (choose --listen HOST:PORT)")
        })?;
        tracing::info!(%listen, "serving the query API");
        eprintln!("serving the query API on http://{}", listener.local_addr()?);
        axum::serve(listener, app).await?;
        Ok(())
    })
}
