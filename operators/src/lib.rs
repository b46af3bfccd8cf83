//! # studio-operators
//!
//! Studio's dataflow operators, one per file, each an extension trait on a timely
//! stream or a differential collection. They do no I/O: sources feed them and sinks
//! drain them (`studio-dataflow` wires the two).
//!
//! | operator | rule | what it does |
//! |---|---|---|
//! | [`DedupById`] | S4.2 | drops a delta whose id was seen before, in log order |
//! | [`ApplyDeltas`] | S3, S4 | folds each blob's deltas in version order into its state |
//!
//! All of them take a totally ordered timestamp (the batch of the source the records
//! came from) and, within one timestamp, process records in log order ([`SourcePos`]),
//! so their output does not depend on how many workers run them.
//!
//! [`SourcePos`]: studio_model::SourcePos
#![forbid(missing_docs)]

pub mod apply_deltas;
pub mod dedup;
pub mod stash;

pub use apply_deltas::{AppliedStreams, ApplyDeltas};
pub use dedup::{DedupById, Duplicate};
