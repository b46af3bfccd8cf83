//! Where a record sits in its source's log: the basis of "log order" (SPEC S4.3).

use serde::{Deserialize, Serialize};

/// The position of a record in its source.
///
/// `part` is the partition (Kafka partition, NATS stream, or 0 for a set of files read
/// as one log) and `offset` the record's index in it. Positions order records of one
/// partition in log order; producers key records by `blob_id`, so all the deltas of a
/// blob share a partition and their log order is total.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct SourcePos {
    /// Partition within the source.
    pub part: u32,
    /// Index of the record within the partition, from 0.
    pub offset: u64,
}

impl SourcePos {
    /// A position in partition 0 (how files are read).
    pub const fn at(offset: u64) -> Self {
        SourcePos { part: 0, offset }
    }
}

impl std::fmt::Display for SourcePos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.part, self.offset)
    }
}
