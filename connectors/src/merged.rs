//! [`MergedSource`]: two bus sources read as one, so that one checkpoint holds both
//! positions. `studio run` reads the processing results (S5.7) beside the deltas this
//! way: both enter the dataflow through the same reader, numbered in the order read,
//! and the results topic's positions commit in the same transaction as the views.
//!
//! ```text
//!  deltas source   part p          --+
//!                                    +--> poll: results first (without waiting), then
//!  results source  part p + SECOND --+    deltas; commit/lag split the positions back
//! ```

use std::time::Duration;

use studio_model::SourcePos;

use crate::{OwnedRecord, Source, SourceError};

/// The partitions of the second source are numbered from here in positions.
pub const SECOND_PART: u32 = 1 << 20;

/// Reads a first source and a second one as one; see the module docs.
pub struct MergedSource {
    first: Box<dyn Source>,
    second: Box<dyn Source>,
}

impl MergedSource {
    /// Merges `first` and `second` (whose partitions are shifted by [`SECOND_PART`]).
    pub fn new(first: Box<dyn Source>, second: Box<dyn Source>) -> Self {
        MergedSource { first, second }
    }

    /// Splits merged positions into the first source's and the second's (unshifted).
    pub fn split(positions: &[SourcePos]) -> (Vec<SourcePos>, Vec<SourcePos>) {
        let (second, first): (Vec<SourcePos>, Vec<SourcePos>) =
            positions.iter().partition(|p| p.part >= SECOND_PART);
        let second = second
            .into_iter()
            .map(|p| SourcePos {
                part: p.part - SECOND_PART,
                offset: p.offset,
            })
            .collect();
        (first, second)
    }
}

impl Source for MergedSource {
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<OwnedRecord>, SourceError> {
        let mut records = self.second.poll(max, Duration::ZERO)?;
        for record in &mut records {
            record.pos.part += SECOND_PART;
        }
        let wait = if records.is_empty() {
            timeout
        } else {
            Duration::ZERO
        };
        if records.len() < max {
            records.extend(self.first.poll(max - records.len(), wait)?);
        }
        Ok(records)
    }

    fn commit(&mut self, upto: &[SourcePos]) -> Result<(), SourceError> {
        let (first, second) = Self::split(upto);
        self.first.commit(&first)?;
        self.second.commit(&second)
    }

    fn lag(&mut self) -> Result<Vec<(u32, u64)>, SourceError> {
        let mut lag = self.first.lag()?;
        let second = self.second.lag()?;
        lag.extend(second.into_iter().map(|(part, n)| (part + SECOND_PART, n)));
        Ok(lag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_positions_split_back_into_each_sources() {
        let pos = |part, offset| SourcePos { part, offset };
        let merged = [pos(0, 5), pos(SECOND_PART + 1, 7), pos(2, 9)];
        let (first, second) = MergedSource::split(&merged);
        assert_eq!(first, vec![pos(0, 5), pos(2, 9)]);
        assert_eq!(second, vec![pos(1, 7)]);
    }
}
