//! The service's HTTP endpoints: `/metrics` (Prometheus text format, from the
//! `metrics` recorder) and `/healthz` (200 while recovering or running, 503 once
//! stopping or failed; the body says which).

use std::sync::Arc;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use studio_dataflow::pipeline::{Control, Phase};

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
    Ok(handle)
}

/// Serves the endpoints on `listen` from a background thread.
pub fn serve(listen: &str, metrics: PrometheusHandle, control: Arc<Control>) -> anyhow::Result<()> {
    let server = tiny_http::Server::http(listen).map_err(|e| {
        anyhow::anyhow!("cannot listen on {listen} for /metrics: {e} (set run.listen or --listen)")
    })?;
    tracing::info!(%listen, "serving /metrics and /healthz");
    std::thread::Builder::new()
        .name("studio-http".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let (status, content_type, body) = match request.url() {
                    "/metrics" => (200, "text/plain; version=0.0.4", metrics.render()),
                    "/healthz" => health(&control),
                    _ => (
                        404,
                        "text/plain",
                        "not found: try /metrics or /healthz\n".into(),
                    ),
                };
                let header = tiny_http::Header::from_bytes("Content-Type", content_type)
                    .expect("a valid header");
                let response = tiny_http::Response::from_string(body)
                    .with_status_code(status)
                    .with_header(header);
                let _ = request.respond(response);
            }
        })
        .context("cannot start the HTTP thread")?;
    Ok(())
}

fn health(control: &Control) -> (u16, &'static str, String) {
    let phase = control.phase();
    let status = match phase {
        Phase::Starting | Phase::Recovering | Phase::Running => 200,
        Phase::Stopping | Phase::Stopped | Phase::Failed => 503,
    };
    let body = serde_json::json!({
        "phase": phase,
        "last_commit_unix_ms": control.last_commit_ms(),
    });
    (status, "application/json", format!("{body}\n"))
}
