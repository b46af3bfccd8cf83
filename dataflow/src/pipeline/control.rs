//! What a running pipeline shares with the outside: its phase (for `/healthz`), the
//! stop switch (signals, `exit_when_idle`, a failed part), and progress counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

/// What the pipeline is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Opening stores.
    Starting = 0,
    /// Replaying the delta store.
    Recovering = 1,
    /// Reading the source.
    Running = 2,
    /// Draining after a stop was asked (or the source ended).
    Stopping = 3,
    /// Stopped.
    Stopped = 4,
    /// A part failed.
    Failed = 5,
}

/// Live counters, readable while the pipeline runs (progress bars, metrics).
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes of records read from the source (a line's terminator included).
    pub bytes_read: AtomicU64,
    /// Deltas accepted and committed.
    pub accepted: AtomicU64,
}

/// Shared state of a running pipeline: its phase, the stop switch and its progress.
#[derive(Debug, Default)]
pub struct Control {
    phase: AtomicU8,
    stop: Arc<AtomicBool>,
    /// Unix ms of the last committed view transaction.
    last_commit_ms: AtomicU64,
    progress: Arc<Progress>,
}

impl Control {
    /// A control whose progress counters are `progress`.
    pub fn with_progress(progress: Arc<Progress>) -> Self {
        Control {
            progress,
            ..Control::default()
        }
    }

    /// Asks the pipeline to stop: it stops reading, commits what it read, and returns.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// The stop switch itself, for signal handlers (`signal_hook::flag::register`).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// True once a stop was asked.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Starting,
            1 => Phase::Recovering,
            2 => Phase::Running,
            3 => Phase::Stopping,
            4 => Phase::Stopped,
            _ => Phase::Failed,
        }
    }

    /// Unix milliseconds of the last view commit (0: none yet).
    pub fn last_commit_ms(&self) -> u64 {
        self.last_commit_ms.load(Ordering::SeqCst)
    }

    /// The progress counters.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        // A failure is final.
        if self.phase() != Phase::Failed {
            self.phase.store(phase as u8, Ordering::SeqCst);
        }
    }

    /// A part failed: the pipeline stops, and stays failed.
    pub(crate) fn fail(&self) {
        self.phase.store(Phase::Failed as u8, Ordering::SeqCst);
        self.stop();
    }

    /// A view transaction committed at `unix_ms`; `accepted` deltas so far.
    pub(crate) fn committed(&self, unix_ms: u64, accepted: u64) {
        self.last_commit_ms.store(unix_ms, Ordering::SeqCst);
        self.progress.accepted.store(accepted, Ordering::Relaxed);
    }
}
