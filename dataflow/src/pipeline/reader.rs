//! The reader thread: opens the source where the views left it, polls batches for the
//! lead worker (waiting while the dataflow is behind), and acknowledges the positions
//! the writer committed.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender};
use studio_connectors::{OwnedRecord, Source, SourceError};
use studio_model::SourcePos;

use super::control::Control;
use super::report::PipelineError;
use super::{OpenSource, PipelineOptions};

/// What the reader hands the lead.
pub(super) enum Polled {
    /// A batch of records, in the source's order.
    Records(Vec<OwnedRecord>),
    /// A bounded source has no more.
    End,
}

/// The reader's ends of the pipeline's channels.
pub(super) struct ReaderChannels {
    /// Where to resume, from the lead once the delta store is recovered.
    pub resume_from: Receiver<Vec<SourcePos>>,
    /// Batches, to the lead.
    pub polled: Sender<Polled>,
    /// Committed positions, from the writer.
    pub acknowledge: Receiver<Vec<SourcePos>>,
}

/// The reader thread's body.
pub(super) fn read_source(
    open_source: OpenSource,
    options: &PipelineOptions,
    channels: ReaderChannels,
    control: &Control,
) -> Result<(), PipelineError> {
    let ReaderChannels {
        resume_from,
        polled,
        acknowledge,
    } = channels;
    let Ok(resume_from) = resume_from.recv() else {
        return Ok(()); // recovery failed; the writer reports why
    };
    let mut source = open_source(&resume_from)?;
    tracing::info!(resume_from = ?resume_from, "reading");
    let mut last_lag = Instant::now() - Duration::from_secs(60);
    'read: while !control.stopping() {
        commit_acknowledged(source.as_mut(), &acknowledge)?;
        if last_lag.elapsed() >= Duration::from_secs(1) {
            report_lag(source.as_mut());
            last_lag = Instant::now();
        }
        let records = source.poll(options.max_batch_records, options.poll_timeout)?;
        if records.is_empty() {
            if source.at_end() {
                let _ = polled.send(Polled::End);
                break;
            }
            continue;
        }
        let bytes: usize = records.iter().map(|r| r.bytes.len() + 1).sum();
        control
            .progress()
            .bytes_read
            .fetch_add(bytes as u64, Ordering::Relaxed);
        let mut pending = Polled::Records(records);
        loop {
            match polled.send_timeout(pending, Duration::from_millis(20)) {
                Ok(()) => break,
                Err(SendTimeoutError::Timeout(back)) => {
                    // Back-pressure: the dataflow is behind. Keep acknowledging.
                    commit_acknowledged(source.as_mut(), &acknowledge)?;
                    if control.stopping() {
                        break 'read; // not handed over: not committed, read again next start
                    }
                    pending = back;
                }
                Err(SendTimeoutError::Disconnected(_)) => break 'read,
            }
        }
    }
    drop(polled);
    // Acknowledge what the last transactions commit, until the writer is done.
    while let Ok(upto) = acknowledge.recv() {
        source.commit(&upto)?;
    }
    Ok(())
}

/// Acknowledges to the source every position the writer committed so far.
fn commit_acknowledged(
    source: &mut dyn Source,
    acknowledge: &Receiver<Vec<SourcePos>>,
) -> Result<(), SourceError> {
    while let Ok(upto) = acknowledge.try_recv() {
        source.commit(&upto)?;
    }
    Ok(())
}

/// Sets the consumer-lag gauges.
fn report_lag(source: &mut dyn Source) {
    match source.lag() {
        Ok(lag) => {
            for (part, records) in lag {
                metrics::gauge!("studio_consumer_lag", "partition" => part.to_string())
                    .set(records as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the consumer lag"),
    }
}
