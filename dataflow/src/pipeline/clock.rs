//! How the lead worker numbers timestamps, and how the other workers follow it.
//!
//! Timestamps only delimit batches: records keep their log position inside one, and
//! every operator that cares about order sorts by it. What a timestamp *means* is the
//! clock's choice:
//!
//! - [`Clock::LogBatches`] (a bounded replay): the `b`-th batch read is fed at
//!   `b * ROUND_SPAN`; the timestamps between two batches are provider rounds. A
//!   replay is then deterministic, whatever the number of workers.
//! - [`Clock::WallClock`] (the service): milliseconds since the Unix epoch, strictly
//!   increasing, so that a gap timeout (S4.4) is a number of timestamp units; an idle
//!   service still ticks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::render::{Inputs, Time};

/// Timestamps of log batch `b` start at `b * ROUND_SPAN` ([`Clock::LogBatches`]); the
/// timestamps between two batches are the provider rounds that may run after a batch.
pub const ROUND_SPAN: Time = 1 << 16;

/// What the lead worker's timestamps mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// Batch numbers times [`ROUND_SPAN`].
    LogBatches,
    /// Wall-clock milliseconds.
    WallClock,
}

impl Clock {
    /// The timestamp of the next batch, after `now` (the current timestamp), when
    /// `batches` batches were fed before it.
    pub(crate) fn batch(self, now: Time, batches: u64) -> Time {
        match self {
            Clock::LogBatches => (batches * ROUND_SPAN).max(now),
            Clock::WallClock => wall_clock_ms().max(now + 1),
        }
    }

    /// The timestamp of a provider round (or of the end) after `now`; `None` when a
    /// round would reach the next batch's timestamp (`before_next_batch`, after
    /// `batches` batches).
    pub(crate) fn round(self, now: Time, batches: u64, before_next_batch: bool) -> Option<Time> {
        match self {
            Clock::LogBatches => {
                let t = now + 1;
                (!before_next_batch || t < batches * ROUND_SPAN).then_some(t)
            }
            Clock::WallClock => Some(wall_clock_ms().max(now + 1)),
        }
    }

    /// An empty timestamp after `now` that does not take the next batch's place (after
    /// `batches` batches), to move the frontier when the lead waits; `None` when there
    /// is no room before the next batch.
    pub(crate) fn nudge(self, now: Time, batches: u64) -> Option<Time> {
        self.round(now, batches, true)
    }

    /// The timestamp an idle lead moves to, so that time-driven rules (the gap
    /// timeout) fire without records; `None` for a clock that only counts batches.
    pub(crate) fn idle_tick(self, now: Time) -> Option<Time> {
        match self {
            Clock::LogBatches => None,
            Clock::WallClock => Some(wall_clock_ms().max(now + 1)),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The timestamps worker 0 chooses, published for the other workers, which feed
/// nothing themselves and only advance their inputs to follow.
#[derive(Debug, Default)]
pub(crate) struct LeadClock {
    time: AtomicU64,
    done: AtomicBool,
}

impl LeadClock {
    /// Worker 0 moved its inputs to `time`.
    pub(crate) fn publish(&self, time: Time) {
        self.time.store(time, Ordering::Release);
    }

    /// Worker 0 will move no further.
    pub(crate) fn finish(&self) {
        self.done.store(true, Ordering::Release);
    }

    /// Another worker: advances `inputs` after worker 0, stepping the dataflow
    /// meanwhile, until worker 0 is done.
    pub(crate) fn follow(&self, worker: &mut timely::worker::Worker, inputs: &mut Inputs) {
        let mut mine = 0;
        loop {
            let done = self.done.load(Ordering::Acquire);
            let t = self.time.load(Ordering::Acquire);
            if t > mine {
                inputs.advance_to(t);
                mine = t;
            }
            if done {
                return;
            }
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_batches_leave_room_for_rounds_between_batches() {
        let clock = Clock::LogBatches;
        assert_eq!(clock.batch(0, 0), 0);
        assert_eq!(clock.batch(0, 1), ROUND_SPAN);
        assert_eq!(clock.round(ROUND_SPAN, 2, true), Some(ROUND_SPAN + 1));
        assert_eq!(clock.round(2 * ROUND_SPAN - 1, 2, true), None);
        assert_eq!(
            clock.round(2 * ROUND_SPAN - 1, 2, false),
            Some(2 * ROUND_SPAN)
        );
        assert_eq!(clock.idle_tick(5), None);
    }

    #[test]
    fn the_wall_clock_always_moves_forward() {
        let clock = Clock::WallClock;
        let far = wall_clock_ms() + 1_000_000;
        assert_eq!(clock.batch(far, 0), far + 1);
        assert_eq!(clock.round(far, 0, true), Some(far + 1));
        assert!(clock.idle_tick(0).unwrap() > 0);
    }
}
