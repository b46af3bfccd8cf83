//! The service's HTTP endpoints: `/metrics` (Prometheus text format, from the
//! `metrics` recorder) and `/healthz` (200 while recovering or running, 503 once
//! stopping or failed; the body says which), and the query API when
//! `api.jwt_secret` is set (the routes of `studio serve`).

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use studio_dataflow::pipeline::{Control, Phase};

use crate::api::ApiState;

/// Latency buckets, seconds: Prometheus histograms (aggregatable across instances),
/// not client-side quantiles.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Installs the Prometheus recorder as the global `metrics` recorder, with every
/// metric the service exports described.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .context("invalid histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!("studio_records_read_total", "Records read from the bus.");
    describe_counter!(
        "studio_deltas_applied_total",
        "Deltas accepted and committed."
    );
    describe_counter!(
        "studio_duplicates_total",
        "Repeated delta ids ignored (S4.2)."
    );
    describe_counter!(
        "studio_dead_letters_total",
        "Rejected records committed to the dead letters, by the rule they broke."
    );
    describe_counter!(
        "studio_batches_committed_total",
        "Batches (timestamps) whose views are committed."
    );
    describe_counter!("studio_view_transactions_total", "View store transactions.");
    describe_gauge!(
        "studio_consumer_lag",
        "Records on the bus not yet read, per partition (refreshed every second)."
    );
    describe_gauge!("studio_dag_depth", "The deepest blob in the DAG (S5.2).");
    describe_gauge!(
        "studio_deltas_waiting",
        "Deltas waiting for a version gap to fill (S4.1), since this start."
    );
    describe_histogram!(
        "studio_batch_latency_seconds",
        metrics::Unit::Seconds,
        "Per batch: from reading its first record to committing its views."
    );
    describe_histogram!(
        "studio_blob_processing_duration_seconds",
        metrics::Unit::Seconds,
        "Per blob change committed: from reading its batch to committing it."
    );
    describe_counter!(
        "studio_api_cache_hits_total",
        "GET /v1/blobs/{id} answered from the Redis cache."
    );
    describe_counter!(
        "studio_api_cache_misses_total",
        "GET /v1/blobs/{id} not in the Redis cache: answered from the view store, then cached."
    );
    describe_counter!(
        "studio_api_cache_errors_total",
        "Redis cache operations of the API that failed or timed out, by operation (lookup, store)."
    );
    describe_counter!(
        "studio_api_cache_bypassed_total",
        "GET /v1/blobs/{id} answered from the view store without asking Redis, in the pause after a cache error."
    );
    describe_counter!(
        "studio_cache_invalidations_total",
        "Blobs whose cached answers the view writer dropped after a commit."
    );
    describe_counter!(
        "studio_cache_invalidation_errors_total",
        "Commits after which the view writer could not reach Redis to invalidate."
    );
    Ok(handle)
}

/// `GET /metrics`: the recorder's metrics in the Prometheus text format.
pub fn metrics_router(metrics: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || async move {
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                metrics.render(),
            )
        }),
    )
}

/// Serves the endpoints on `listen` from a background thread, and the query API
/// (`crate::api`) beside them when `api` is given.
pub fn serve(
    listen: &str,
    metrics: PrometheusHandle,
    control: Arc<Control>,
    api: Option<ApiState>,
) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(listen).map_err(|e| {
        anyhow::anyhow!("cannot listen on {listen} for /metrics: {e} (set run.listen or --listen)")
    })?;
    listener.set_nonblocking(true)?;
    let mut app = metrics_router(metrics).route(
        "/healthz",
        get(move || async move {
            let (status, body) = health(&control);
            (status, [(header::CONTENT_TYPE, "application/json")], body)
        }),
    );
    let what = match api {
        Some(state) => {
            app = app.merge(crate::api::router(state));
            "/metrics, /healthz and the query API (/v1)"
        }
        None => "/metrics and /healthz",
    };
    let app = app.fallback(|| async {
        (
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /v1/openapi.json\n",
        )
    });
    tracing::info!(%listen, "serving {what}");
    std::thread::Builder::new()
        .name("studio-http".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the HTTP thread");
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("a bound listener");
                if let Err(error) = axum::serve(listener, app).await {
                    tracing::error!(%error, "the HTTP server stopped");
                }
            });
        })
        .context("cannot start the HTTP thread")?;
    Ok(())
}

fn health(control: &Control) -> (StatusCode, String) {
    let phase = control.phase();
    let status = match phase {
        Phase::Starting | Phase::Recovering | Phase::Running => StatusCode::OK,
        Phase::Stopping | Phase::Stopped | Phase::Failed => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = serde_json::json!({
        "phase": phase,
        "last_commit_unix_ms": control.last_commit_ms(),
    });
    (status, format!("{body}\n"))
}
