//! The writer thread: reads the delta store back for recovery (a durable source), then
//! commits every completed batch in time order: merges the batches that queued behind
//! a slow store into one transaction, publishes their outputs, writes the views (and
//! the source's positions) atomically, and hands the positions to the reader to
//! acknowledge.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use hdrhistogram::Histogram;
use studio_connectors::OutputStream;
use studio_connectors::{RecordPublisher, RecoveredAs, ViewSink};
use studio_model::{Checkpoint, SourcePos, ViewBatch};

use super::PipelineOptions;
use super::clock::wall_clock_ms;
use super::control::Control;
use super::outputs::{key, publish, publish_records};
use super::reissue::Reissuer;
use super::report::PipelineError;

/// At most this many queued batches go into one transaction.
const MAX_GROUP: usize = 16;
/// Records handed over during recovery, in chunks.
const RECOVERY_CHUNK: usize = 4096;

/// What the writer reads back at start, for the lead to replay.
pub(super) enum Recovered {
    /// Stored records, in log order.
    Records(Vec<(SourcePos, Vec<u8>, RecoveredAs)>),
    /// The end, with the source's last committed checkpoint.
    Done(Option<Checkpoint>),
}

/// One completed timestamp's changes, and when its first record was read.
pub(super) struct Completed {
    pub batch: Box<ViewBatch>,
    pub read_at: Instant,
    /// Already in the store (the recovered delta store): only its pending requests
    /// matter, to watch them ([`Reissuer`]).
    pub stored: bool,
}

/// How often the writer looks for requests whose worker went silent.
const REISSUE_CHECK: Duration = Duration::from_millis(100);

/// What the writer counted over the transactions it committed.
pub(super) struct WriterTally {
    /// Deltas accepted.
    pub accepted: u64,
    /// Dead letters by reason kind.
    pub dead_letters: BTreeMap<String, u64>,
    /// Batches (timestamps) committed.
    pub batches: u64,
    /// Transactions (a transaction may hold several batches).
    pub transactions: u64,
    /// Per batch, microseconds from its first record read to its commit.
    pub latency_us: Histogram<u64>,
    /// Net edges added to `blob_edges`.
    pub edges_accepted: u64,
    /// Edges refused.
    pub edges_rejected: u64,
    /// Records published.
    pub published: u64,
    /// The positions committed last.
    pub positions: Vec<SourcePos>,
    /// Time spent writing.
    pub busy: Duration,
}

impl Default for WriterTally {
    fn default() -> Self {
        WriterTally {
            accepted: 0,
            dead_letters: BTreeMap::new(),
            batches: 0,
            transactions: 0,
            // Up to an hour in microseconds, 3 significant digits; longer saturates.
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("valid histogram bounds"),
            edges_accepted: 0,
            edges_rejected: 0,
            published: 0,
            positions: Vec::new(),
            busy: Duration::ZERO,
        }
    }
}

impl WriterTally {
    /// Counts one committed transaction: `merged`, made of batches first read at
    /// `read_at`, committed at `now`.
    fn count(&mut self, merged: &ViewBatch, read_at: &[Instant], now: Instant) {
        for at in read_at {
            let micros = now.saturating_duration_since(*at).as_micros().max(1);
            self.latency_us.saturating_record(micros as u64);
        }
        // Accepted grant records and results count as accepted (docs/access.md,
        // docs/providers.md).
        self.accepted +=
            (merged.applied.len() + merged.grant_log.len() + merged.result_log.len()) as u64;
        for letter in &merged.dead_letters {
            *self
                .dead_letters
                .entry(letter.reason.kind().to_owned())
                .or_default() += 1;
        }
        self.batches += read_at.len() as u64;
        self.transactions += 1;
        self.edges_accepted += merged.edges.upserts.len() as u64;
        self.edges_accepted -= merged.edges.deletes.len() as u64;
        self.edges_rejected += merged.rejected_edges.len() as u64;
        if let Some(checkpoint) = &merged.checkpoint {
            self.positions.clone_from(&checkpoint.positions);
        }
    }
}

/// The writer's ends of the pipeline's channels.
pub(super) struct WriterChannels {
    /// Recovered records, to the lead (dropped at once without a durable source).
    pub recovered: Sender<Recovered>,
    /// Completed batches, from the view sink.
    pub completed: Receiver<Completed>,
    /// Committed positions, to the reader to acknowledge.
    pub acknowledge: Sender<Vec<SourcePos>>,
}

/// The writer thread's body: recovery first, then every batch until the dataflow ends.
pub(super) fn write_views(
    mut sink: Box<dyn ViewSink + Send>,
    mut publisher: Option<Box<dyn RecordPublisher>>,
    options: &PipelineOptions,
    channels: WriterChannels,
    control: &Control,
) -> Result<WriterTally, PipelineError> {
    let WriterChannels {
        recovered,
        completed,
        acknowledge,
    } = channels;
    if let Some(source) = &options.durable {
        recover(sink.as_mut(), source, &recovered)?;
    }
    drop(recovered);
    let mut tally = WriterTally::default();
    let mut dag_depth = 0u32;
    let mut reissuer = match (&options.worker_grace, &publisher) {
        (Some(grace), Some(_)) if !options.providers.is_empty() => {
            Some(Reissuer::new(&options.providers, *grace))
        }
        _ => None,
    };
    loop {
        let first = match completed.recv_timeout(REISSUE_CHECK) {
            Ok(first) => first,
            Err(RecvTimeoutError::Timeout) => {
                reissue_overdue(reissuer.as_mut(), publisher.as_deref_mut(), control);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if first.stored {
            if let Some(reissuer) = reissuer.as_mut() {
                reissuer.observe(&first.batch, Instant::now());
            }
            continue;
        }
        let (merged, read_at) = merge_queued(first, &completed);
        if let Some(publisher) = publisher.as_mut() {
            tally.published += publish(publisher.as_mut(), &options.publish, &merged, control);
        }
        let writing = Instant::now();
        tracing::info_span!(
            "batch.commit",
            batches = read_at.len(),
            deltas = merged.applied.len(),
            blobs = merged.blobs.upserts.len(),
            dead_letters = merged.dead_letters.len(),
        )
        .in_scope(|| sink.write(&merged))?;
        let now = Instant::now();
        tally.busy += now - writing;
        tracing::debug!(
            batches = read_at.len(),
            upserts = merged.blobs.upserts.len(),
            applied = merged.applied.len(),
            seconds = (now - writing).as_secs_f64(),
            "view transaction committed"
        );
        tally.count(&merged, &read_at, now);
        control.committed(wall_clock_ms(), tally.accepted);
        if let Some(checkpoint) = &merged.checkpoint {
            let _ = acknowledge.send(checkpoint.positions.clone());
        }
        record_metrics(&merged, &read_at, now, &mut dag_depth);
        if let Some(reissuer) = reissuer.as_mut() {
            reissuer.observe(&merged, now);
        }
        reissue_overdue(reissuer.as_mut(), publisher.as_deref_mut(), control);
    }
    sink.finish()?;
    Ok(tally)
}

/// Publishes the overdue requests again, and the failures of those issued too often.
fn reissue_overdue(
    reissuer: Option<&mut Reissuer>,
    publisher: Option<&mut (dyn RecordPublisher + 'static)>,
    control: &Control,
) {
    let (Some(reissuer), Some(publisher)) = (reissuer, publisher) else {
        return;
    };
    let overdue = reissuer.overdue(Instant::now());
    let requests = overdue.reissue.iter().map(|r| {
        let value = serde_json::to_vec(r).expect("requests serialise");
        (OutputStream::Requests, key(&r.blob_id), value)
    });
    let failures = overdue.failed.iter().map(|r| {
        let value = r.to_record().into_bytes();
        (OutputStream::Results, key(&r.blob_id), value)
    });
    let records: Vec<_> = requests.chain(failures).collect();
    publish_records(publisher, &records, control);
}

/// Reads the delta store back, in chunks, for the lead to replay.
fn recover(
    sink: &mut (dyn ViewSink + Send),
    source: &str,
    to_lead: &Sender<Recovered>,
) -> Result<(), PipelineError> {
    let mut chunk = Vec::with_capacity(RECOVERY_CHUNK);
    let checkpoint = sink.recover(source, &mut |pos, record, kind| {
        chunk.push((pos, record.as_bytes().to_vec(), kind));
        if chunk.len() == RECOVERY_CHUNK {
            let _ = to_lead.send(Recovered::Records(std::mem::take(&mut chunk)));
        }
    })?;
    if !chunk.is_empty() {
        let _ = to_lead.send(Recovered::Records(chunk));
    }
    let _ = to_lead.send(Recovered::Done(checkpoint));
    Ok(())
}

/// `first` and the batches queued behind it (at most [`MAX_GROUP`]), as one batch,
/// with when each was read.
fn merge_queued(first: Completed, queue: &Receiver<Completed>) -> (ViewBatch, Vec<Instant>) {
    let mut merged = *first.batch;
    let mut read_at = vec![first.read_at];
    while read_at.len() < MAX_GROUP {
        let Ok(next) = queue.try_recv() else { break };
        merged.absorb(*next.batch);
        read_at.push(next.read_at);
    }
    (merged, read_at)
}

/// Updates the metrics for one committed transaction.
fn record_metrics(merged: &ViewBatch, read_at: &[Instant], now: Instant, dag_depth: &mut u32) {
    let batch_latency = metrics::histogram!("studio_batch_latency_seconds");
    for at in read_at {
        batch_latency.record(now.saturating_duration_since(*at).as_secs_f64());
    }
    let latency = now.saturating_duration_since(read_at[0]).as_secs_f64();
    let blob_timing = metrics::histogram!("studio_blob_processing_duration_seconds");
    for _ in &merged.blobs.upserts {
        blob_timing.record(latency);
    }
    *dag_depth = merged
        .depth
        .upserts
        .iter()
        .fold(*dag_depth, |d, r| d.max(r.depth));
    metrics::gauge!("studio_dag_depth").set(*dag_depth as f64);
    metrics::counter!("studio_deltas_applied_total").increment(merged.applied.len() as u64);
    metrics::gauge!("studio_deltas_waiting")
        .increment(merged.waiting.upserts.len() as f64 - merged.waiting.deletes.len() as f64);
    metrics::counter!("studio_batches_committed_total").increment(read_at.len() as u64);
    metrics::counter!("studio_view_transactions_total").increment(1);
    for letter in &merged.dead_letters {
        metrics::counter!("studio_dead_letters_total", "reason" => letter.reason.kind())
            .increment(1);
    }
}
