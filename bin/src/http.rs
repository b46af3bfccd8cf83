//! The service's HTTP endpoints: `/metrics` (Prometheus text format, from the
//! `metrics` recorder) and `/healthz` (200 while recovering or running, 503 once
//! stopping or failed; the body says which).

use std::sync::Arc;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use studio_dataflow::run::{Phase, RunControl};

/// Installs the Prometheus recorder as the global `metrics` recorder.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")
}

/// Serves the endpoints on `listen` from a background thread.
pub fn serve(
    listen: &str,
    metrics: PrometheusHandle,
    control: Arc<RunControl>,
) -> anyhow::Result<()> {
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

fn health(control: &RunControl) -> (u16, &'static str, String) {
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
