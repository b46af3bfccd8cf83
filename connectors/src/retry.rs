//! Retrying a sink's write while a service is unavailable.
//!
//! A view store or object store that cannot be reached (connection refused or lost, a
//! timeout, a server error) makes the write fail with [`SinkError::Unavailable`]. The
//! sink then retries the *whole* write (its transaction, its object puts) after an
//! exponentially growing delay, capped at `max_delay`, logging each retry with
//! `tracing::warn!`. While it waits, the writer thread is blocked, its bounded channel
//! fills, and the dataflow waits too: nothing is dropped, and a batch is reported as
//! written only when its transaction committed. Any other error is returned at once.

use std::time::{Duration, Instant};

use crate::SinkError;

/// How long to keep trying, and how fast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The delay before the first retry; each next delay doubles.
    pub initial_delay: Duration,
    /// The longest delay between two attempts.
    pub max_delay: Duration,
    /// Give up (return the error) after this long; `None`: never.
    pub give_up_after: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            give_up_after: None,
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `n` (0 for the first): `initial * 2^n`, capped.
    pub fn delay(&self, n: u32) -> Duration {
        self.initial_delay
            .saturating_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
            .min(self.max_delay)
    }

    /// Runs `attempt` until it succeeds, fails with an error that is not
    /// [`SinkError::Unavailable`], or the policy gives up. Blocks the calling thread
    /// while it waits.
    pub fn run<T>(
        &self,
        what: &str,
        mut attempt: impl FnMut() -> Result<T, SinkError>,
    ) -> Result<T, SinkError> {
        let started = Instant::now();
        let mut retries = 0u32;
        loop {
            match attempt() {
                Err(e @ SinkError::Unavailable { .. }) => {
                    let delay = self.delay(retries);
                    if let Some(limit) = self.give_up_after
                        && started.elapsed() + delay > limit
                    {
                        tracing::error!(what, retries, error = %e, "giving up");
                        return Err(e);
                    }
                    retries += 1;
                    tracing::warn!(
                        what,
                        retry = retries,
                        delay_ms = delay.as_millis() as u64,
                        error = %e,
                        "unavailable; retrying the whole write"
                    );
                    std::thread::sleep(delay);
                }
                other => {
                    if retries > 0 && other.is_ok() {
                        tracing::info!(what, retries, "resumed after retries");
                    }
                    return other;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down() -> SinkError {
        SinkError::Unavailable {
            context: "test".into(),
            source: Box::new(std::io::Error::other("down")),
        }
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let p = RetryPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(700),
            give_up_after: None,
        };
        let ms: Vec<u128> = (0..6).map(|n| p.delay(n).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 700, 700, 700]);
        assert_eq!(p.delay(200), Duration::from_millis(700));
    }

    #[test]
    fn retries_only_what_may_pass_and_can_give_up() {
        let p = RetryPolicy {
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            give_up_after: None,
        };
        let mut calls = 0;
        let out = p.run("t", || {
            calls += 1;
            if calls < 4 { Err(down()) } else { Ok(calls) }
        });
        assert_eq!(out.unwrap(), 4);
        let mut calls = 0;
        let out: Result<(), _> = p.run("t", || {
            calls += 1;
            Err(SinkError::Refused("no".into()))
        });
        assert!(out.is_err());
        assert_eq!(calls, 1, "a refusal is not retried");
        let p = RetryPolicy {
            give_up_after: Some(Duration::from_millis(20)),
            ..p
        };
        let out: Result<(), _> = p.run("t", || Err(down()));
        assert!(matches!(out, Err(SinkError::Unavailable { .. })));
    }
}
