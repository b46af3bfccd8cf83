//! # studio-operators
//!
//! Studio's dataflow operators, one per file, each an extension trait on a timely
//! stream or a differential collection. They do no I/O: sources feed them and sinks
//! drain them (`studio-dataflow` wires the two).
//!
//! | operator | rule | what it does |
//! |---|---|---|
//! | [`DedupById`] | S4.2 | drops a delta whose id was seen before, in log order (and a request's second result) |
//! | [`Authorize`] | S6.1, S6.2 | grants in log order; lets through only deltas their user may make |
//! | [`ApplyDeltas`] | S3, S4 | folds each blob's deltas in version order into its state |
//! | [`CycleGuard`] | S5.1 | adds proposed edges to the DAG in acceptance order, refusing cycles |
//! | [`DagViews`] | S5.2 | reach, depth and user depth, one join per new edge (what `render` uses) |
//! | [`Reachability`] | S5.2 | every (ancestor, descendant, shortest distance) with `iterate` (a reference) |
//! | [`Depth`] | S5.2 | every blob's longest path from a root with `iterate` (a reference) |
//! | [`PendingTriggers`] | S5.3–S5.6 | blobs × providers -> the pending transform requests |
//!
//! All of them take a totally ordered timestamp (the driver's clock: a replay's batch, the
//! service's milliseconds) and, within one timestamp, process records in log order
//! ([`SourcePos`]), so their output does not depend on how many workers run them.
//!
//! [`SourcePos`]: studio_model::SourcePos
#![forbid(missing_docs)]

pub mod apply_deltas;
pub mod authorize;
pub mod cycle_guard;
pub mod dag_views;
pub mod dedup;
pub mod depth;
pub mod pending_triggers;
mod ports;
pub mod reachability;
pub mod stash;

pub use apply_deltas::{AppliedStreams, ApplyDeltas, ApplyOptions, DELTA_SPAN_TARGET, OrderedEdge};
pub use authorize::{Authorize, AuthorizedStreams};
pub use cycle_guard::CycleGuard;
pub use dag_views::{DagLimits, DagStreams, DagViews};
pub use dedup::{DedupById, Duplicate, Identified};
pub use depth::Depth;
pub use pending_triggers::{PendingTriggers, ProviderChange};
pub use reachability::Reachability;
