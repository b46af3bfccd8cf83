//! # studio-model
//!
//! What a delta *means*, with no dataflow and no I/O (but the revert history's
//! temporary spill file, [`history::SpillFile`]): the wire format and its parser
//! (SPEC S1), the state kept per blob (S2), the rules that apply a delta to a blob in
//! version order (S3, S4), the rows of the maintained views, and the dead letters with
//! the rule each one broke.
//!
//! ```text
//!   raw bytes --parse--> Delta --BlobLedger::offer--> Effects { applied rows,
//!        |                                                     dead letters,
//!        +--> DeadLetter (S1.1)                                processed_by changes }
//! ```
//!
//! The dataflow (`studio-operators`) runs [`BlobLedger`]s keyed by blob id; the
//! sinks write the [`views`] rows. [`generate`] writes synthetic logs that obey the rules.
#![forbid(missing_docs)]

pub mod access;
pub mod dag;
pub mod dead_letter;
pub mod delta;
pub mod doc;
pub mod generate;
pub mod history;
pub mod ledger;
pub mod parse;
pub mod position;
pub mod provider;
pub mod table;
pub mod tables;
pub mod time;
pub mod views;

pub use dead_letter::{DeadLetter, Reason};
pub use delta::{Delta, Operation, PatchFormat};
pub use doc::Doc;
pub use history::History;
pub use ledger::{BlobLedger, EdgeProposal, Effects};
pub use parse::parse_record;
pub use position::SourcePos;
pub use provider::{
    BlobFacts, DerivedRef, Fingerprint, InvalidProvider, ProcessingResult, ProcessingStatus,
    Provider, ResultLogRow, SandboxLimits, Settled, TransformRequest,
};
pub use table::{Cell, Column, ColumnType, Kind, Row, Table};
pub use time::Timestamp;
pub use views::{
    AppliedRow, BlobRow, Changes, Checkpoint, DepthRow, EdgeRow, EventRow, Keyed, KeyedChanges,
    ProcessedRow, ReachRow, RejectedEdgeRow, RequestChanges, TableChanges, UserDepthRow, View,
    ViewBatch, WaitingRow,
};

/// Identifiers of deltas, blobs and users (SPEC S1: UUIDs).
pub use uuid::Uuid;
