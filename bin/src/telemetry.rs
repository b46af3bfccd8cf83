//! Logging and traces. Logs: `tracing` to stderr, as text or JSON lines, filtered by
//! `RUST_LOG` or `-v`. Traces: with `[telemetry] otlp_endpoint` set, Studio's spans
//! (`batch.commit`, `provider.call`, and `delta.apply` with `delta_spans`) go to an
//! OpenTelemetry collector over OTLP/HTTP, batched on the SDK's own thread; the log
//! filter does not apply to them.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use studio_config::TelemetryConfig;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::cli::LogFormat;

/// Studio's crates (targets `studio`, `studio_*`): their `info` spans are traces.
const TRACED: &str = "studio";

/// Flushes the exported spans when dropped (at the end of `main`).
pub struct Traces(Option<SdkTracerProvider>);

impl Drop for Traces {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: traces not all exported: {e}");
        }
    }
}

/// Installs the global subscriber: logs to stderr, and traces when configured.
pub fn init(format: LogFormat, verbose: u8, service: bool, traces: &TelemetryConfig) -> Traces {
    let default = match verbose {
        0 if service => "info",
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs.with_filter(filter).boxed(),
        LogFormat::Json => logs.json().with_filter(filter).boxed(),
    };
    let (provider, export_error) = match exporter(traces) {
        Ok(provider) => (provider, None),
        Err(e) => (None, Some(e)),
    };
    let spans = provider.as_ref().map(|provider| {
        let mut targets = Targets::new().with_target(TRACED, Level::INFO);
        if traces.delta_spans {
            targets = targets.with_target(studio_operators::DELTA_SPAN_TARGET, Level::DEBUG);
        }
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("studio"))
            .with_filter(targets)
    });
    // Without traces there is no span layer at all: an absent (`None`) layer would
    // enable every callsite, the per-delta spans included.
    let subscriber = tracing_subscriber::registry().with(logs);
    match spans {
        Some(spans) => subscriber.with(spans).init(),
        None => subscriber.init(),
    }
    if let Some(e) = export_error {
        tracing::warn!("traces are not exported: {e} (check telemetry.otlp_endpoint)");
    }
    Traces(provider)
}

/// The tracer provider exporting to `telemetry.otlp_endpoint`, or none when it is
/// empty.
fn exporter(traces: &TelemetryConfig) -> anyhow::Result<Option<SdkTracerProvider>> {
    let endpoint = traces.otlp_endpoint.trim_end_matches('/');
    if endpoint.is_empty() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{endpoint}/v1/traces"))
        .build()?;
    let resource = Resource::builder()
        .with_service_name(traces.service_name.clone())
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}
