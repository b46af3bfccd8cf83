//! `studio replay`: the [pipeline](crate::pipeline) over delta log files, as fast as
//! the machine allows, into a rebuilt view store; then a report.
//!
//! The files are one bounded source (positions are line numbers), read in batches of
//! `batch_records`, batch `b` at timestamp `b * ROUND_SPAN` ([`Clock::LogBatches`]):
//! the same log gives the same views whatever the number of workers. At the end the
//! inputs close, and the deltas still waiting for a gap become dead letters (S4.4).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use studio_config::ReplayConfig;
use studio_connectors::ViewSink;
use studio_connectors::file::FileSource;

use crate::pipeline::{
    Clock, Control, Endpoints, OpenSource, PipelineError, PipelineOptions, Report, run_pipeline,
};
use crate::providers::ProviderSetup;

pub use crate::pipeline::{Latency, Progress, ROUND_SPAN};

/// What a replay did.
pub type ReplayReport = Report;

/// A replay that could not complete.
pub type ReplayError = PipelineError;

/// What a replay does besides the delta views.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// Run providers: compute pending requests, run the built-in workers once the log
    /// is applied, and feed their outputs back until quiescence.
    pub providers: Option<ProviderSetup>,
    /// Record events (S5.8) in the view store.
    pub events: bool,
}

/// Replays `files` into `sink`; `progress` counts as it goes.
pub fn replay(
    files: &[PathBuf],
    config: &ReplayConfig,
    sink: Box<dyn ViewSink + Send>,
    progress: Arc<Progress>,
    options: &ReplayOptions,
) -> Result<Report, PipelineError> {
    FileSource::open(files)?; // fail before starting threads when a file is missing
    let files = files.to_vec();
    let open_source: OpenSource = Box::new(move |_| Ok(Box::new(FileSource::open(&files)?)));
    let pipeline = PipelineOptions {
        workers: config.workers,
        clock: Clock::LogBatches,
        max_batch_records: config.batch_records as usize,
        poll_timeout: Duration::ZERO,
        max_batches_in_flight: config.max_batches_in_flight as usize,
        writer_queue_batches: config.writer_queue_batches,
        gap_timeout: None,
        store_records: config.store_records,
        providers: options
            .providers
            .as_ref()
            .map(|setup| setup.providers.clone())
            .unwrap_or_default(),
        provider_workers: options.providers.clone(),
        events: options.events,
        durable: None,
        publish: Vec::new(),
        exit_when_idle: None,
        worker_grace: None,
    };
    let endpoints = Endpoints {
        open_source,
        sink,
        publisher: None,
    };
    run_pipeline(
        pipeline,
        endpoints,
        Arc::new(Control::with_progress(progress)),
    )
}
