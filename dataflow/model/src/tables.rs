//! Every table Studio writes, declared once ([`Table`]), with how its rows hand out
//! their values ([`Row`]) and, for the views the dataflow maintains, how a batch
//! carries their changes ([`View`]). Stores derive their SQL from these.
//!
//! Adding a view: its row type, a `table!` here with its `View` (`keyed_view!` for a
//! keyed one), and a line in [`crate::for_each_view`]; Postgres also needs a migration.

use crate::access::{GrantKey, GrantLogRow, GrantRow};
use crate::table::{Cell, Column, ColumnType::*, Index, Kind, Row, Table, column, required, table};
use crate::views::{
    AppliedRow, DepthRow, EdgeRow, EventRow, KeyedChanges, ProcessedRow, ReachRow, RejectedEdgeRow,
    UserDepthRow, View, WaitingRow, consolidated, keyed_changes,
};
use crate::{BlobRow, DeadLetter, ProcessingResult, ResultLogRow, TransformRequest};

/// A keyed view: its changes are upserts and deletes by key.
macro_rules! keyed_view {
    ($row:ty, $table:ident) => {
        impl View for $row {
            const TABLE: &'static Table = &$table;
            type Changes = KeyedChanges<Self>;
            fn changes(updates: Vec<(Self, isize)>) -> KeyedChanges<Self> {
                keyed_changes(updates)
            }
        }
    };
}

/// `blobs`: the current state of each blob. Its document is in exactly one of `doc`
/// (JSON) or `doc_ref` (a large store's reference); `doc_bytes` is its JSON length.
pub const BLOBS: Table = Table::new(
    "blobs",
    Kind::Upsert,
    &["blob_id"],
    &[
        column("blob_id", Id),
        required("user_id", Id),
        required("version", Int),
        required("content_type", Text),
        column("doc", Json),
        column("doc_ref", Text),
        required("doc_bytes", Int),
        column("parent_id", Id),
        required("created_at", Time),
        required("updated_at", Time),
        column("deleted_at", Time),
    ],
);
keyed_view!(BlobRow, BLOBS);

/// The columns of the delta store; the first eight are `deltas_applied`'s.
const DELTA_COLUMNS: &[Column] = &[
    required("delta_id", Id),
    required("blob_id", Id),
    required("version", Int),
    required("operation", Text),
    required("user_id", Id),
    column("provider_id", Text),
    column("caused_by", Id),
    required("created_at", Time),
    column("record", Text),
    required("pos_part", Int),
    required("pos_offset", Int),
];

/// `deltas`, the delta store: every accepted delta with its full record as read and its
/// log position (the order a restart replays it in). Partitioned by month of
/// `created_at` in Postgres.
pub const DELTAS: Table = Table::new(
    "deltas",
    Kind::Append,
    &["delta_id", "created_at"],
    DELTA_COLUMNS,
)
.indexed(&[
    Index {
        name: "deltas_by_blob",
        columns: &["blob_id", "version"],
    },
    Index {
        name: "deltas_by_cause",
        columns: &["caused_by"],
    },
]);

/// `deltas_applied`: the accepted deltas (`delta.applied`), the delta store's columns
/// without the record. In SQLite a view of `deltas`, so each delta is written once.
pub const DELTAS_APPLIED: Table = Table {
    sqlite_view_of: Some("deltas"),
    ..Table::new(
        "deltas_applied",
        Kind::Append,
        &["delta_id"],
        DELTA_COLUMNS.split_at(8).0,
    )
};

/// A delta store row; `deltas_applied` binds its first eight cells.
impl Row for AppliedRow {
    fn cells<'a>(&'a self, each: &mut dyn FnMut(Cell<'a>)) {
        let r = self;
        each(r.delta_id.into());
        each(r.blob_id.into());
        each(r.version.into());
        each(r.operation.as_str().into());
        each(r.user_id.into());
        each(r.provider_id.as_deref().into());
        each(r.caused_by.into());
        each(r.created_at.into());
        each(r.record.as_deref().into());
        each(r.pos.part.into());
        each(r.pos.offset.into());
    }
}

impl View for AppliedRow {
    const TABLE: &'static Table = &DELTAS;
    type Changes = Vec<Self>;
    fn changes(updates: Vec<(Self, isize)>) -> Vec<Self> {
        inserts(updates)
    }
}

table! {
    /// `deltas_waiting`: deltas waiting for a gap to fill (S4.1), kept so that a
    /// restart does not lose them.
    DELTAS_WAITING = "deltas_waiting", InsertOnce by ["delta_id"],
    WaitingRow => |r| {
        column("delta_id", Id) => r.delta_id,
        required("blob_id", Id) => r.blob_id,
        required("version", Int) => r.version,
        required("pos_part", Int) => r.pos.part,
        required("pos_offset", Int) => r.pos.offset,
        required("record", Text) => &*r.record,
    }
}
keyed_view!(WaitingRow, DELTAS_WAITING);

/// `checkpoints`: where each live source was when the views were last committed,
/// written in the same transaction as the views. `positions` is `[[part, offset], ...]`.
pub const CHECKPOINTS: Table = Table::new(
    "checkpoints",
    Kind::Upsert,
    &["source"],
    &[
        column("source", Text),
        required("positions", Json),
        required("next_seq", Int),
    ],
);

table! {
    /// `processed_by`: the latest output of a provider on a blob (S3.3).
    PROCESSED_BY = "processed_by", Upsert by ["blob_id", "provider_id"],
    ProcessedRow => |r| {
        column("blob_id", Id) => r.blob_id,
        column("provider_id", Text) => r.provider_id.as_str(),
        column("version", Int) => r.version,
        column("delta_id", Id) => r.delta_id,
    }
}
keyed_view!(ProcessedRow, PROCESSED_BY);

table! {
    /// `dead_letters`: rejected records in the order they were decided, with their
    /// log position (a restart replays the rejected deltas, so a later copy of one is
    /// still a duplicate, S4.2).
    DEAD_LETTERS = "dead_letters", Append by ["seq"],
    DeadLetter => |r| {
        column("seq", Seq),
        column("delta_id", Id) => r.delta_id,
        column("blob_id", Id) => r.blob_id,
        required("reason", Text) => r.reason.to_string(),
        required("raw", Raw) => r.raw_text(),
        required("pos_part", Int) => r.pos.part,
        required("pos_offset", Int) => r.pos.offset,
    }
}

impl View for DeadLetter {
    const TABLE: &'static Table = &DEAD_LETTERS;
    type Changes = Vec<Self>;
    fn changes(updates: Vec<(Self, isize)>) -> Vec<Self> {
        let mut letters = inserts(updates);
        letters.sort_by_key(|dl| dl.pos);
        letters
    }
}

table! {
    /// `blob_edges`: accepted edges of the blob DAG (S5.1) whose two ends exist.
    BLOB_EDGES = "blob_edges", Upsert by ["parent_id", "child_id"],
    EdgeRow => |r| {
        column("parent_id", Id) => r.parent_id,
        column("child_id", Id) => r.child_id,
        column("delta_id", Id) => r.delta_id,
    }
    indexed ["blob_edges_by_child" on ["child_id"]]
}
keyed_view!(EdgeRow, BLOB_EDGES);

table! {
    /// `blob_reach`: the DAG's closure with shortest distances (S5.2).
    BLOB_REACH = "blob_reach", Upsert by ["ancestor_id", "descendant_id"],
    ReachRow => |r| {
        column("ancestor_id", Id) => r.ancestor_id,
        column("descendant_id", Id) => r.descendant_id,
        column("distance", Int) => r.distance,
    }
    indexed ["blob_reach_to_ancestors" on ["descendant_id", "ancestor_id", "distance"]]
}
keyed_view!(ReachRow, BLOB_REACH);

table! {
    /// `blob_depth`: each blob's longest path from a root.
    BLOB_DEPTH = "blob_depth", Upsert by ["blob_id"],
    DepthRow => |r| {
        column("blob_id", Id) => r.blob_id,
        column("depth", Int) => r.depth,
    }
}
keyed_view!(DepthRow, BLOB_DEPTH);

table! {
    /// `user_depth`: each user's deepest blob.
    USER_DEPTH = "user_depth", Upsert by ["user_id"],
    UserDepthRow => |r| {
        column("user_id", Id) => r.user_id,
        column("max_depth", Int) => r.max_depth,
    }
}
keyed_view!(UserDepthRow, USER_DEPTH);

table! {
    /// `rejected_edges`: edges that would have closed a cycle (S5.1).
    REJECTED_EDGES = "rejected_edges", Append by [],
    RejectedEdgeRow => |r| {
        column("delta_id", Id) => r.delta_id,
        column("parent_id", Id) => r.parent_id,
        column("child_id", Id) => r.child_id,
        column("reason", Text) => r.reason.as_str(),
    }
}

impl View for RejectedEdgeRow {
    const TABLE: &'static Table = &REJECTED_EDGES;
    type Changes = Vec<Self>;
    fn changes(updates: Vec<(Self, isize)>) -> Vec<Self> {
        let mut rows = inserts(updates);
        rows.sort();
        rows
    }
}

/// `transform_requests` (S5.7): every request emitted, with its latest status
/// (`pending`, `superseded`, `completed`, `failed`).
pub const TRANSFORM_REQUESTS: Table = Table::new(
    "transform_requests",
    Kind::Upsert,
    &["request_id"],
    &[
        column("request_id", Id),
        required("provider_id", Text),
        required("blob_id", Id),
        required("version", Int),
        required("fingerprint", Text),
        required("created_at", Time),
        required("status", Text),
    ],
)
.indexed(&[Index {
    name: "transform_requests_by_blob",
    columns: &["blob_id", "provider_id"],
}]);

/// A request with its state after a batch: pending (`true`) or superseded.
impl Row for (&TransformRequest, bool) {
    fn cells<'a>(&'a self, each: &mut dyn FnMut(Cell<'a>)) {
        let r = self.0;
        each(r.request_id.into());
        each(r.provider_id.as_str().into());
        each(r.blob_id.into());
        each(r.version.into());
        each(r.fingerprint.to_string().into());
        each(r.created_at.into());
        each(if self.1 { "pending" } else { "superseded" }.into());
    }
}

impl View for TransformRequest {
    const TABLE: &'static Table = &TRANSFORM_REQUESTS;
    type Changes = Vec<(Self, isize)>;
    fn changes(updates: Vec<(Self, isize)>) -> Vec<(Self, isize)> {
        let mut updates = consolidated(updates);
        updates.sort_by_key(|(_, diff)| *diff);
        updates
    }
}

table! {
    /// `processing` (S5.8): the workers' results, one row per request.
    PROCESSING = "processing", Upsert by ["request_id"],
    ProcessingResult => |r| {
        column("request_id", Id) => r.request_id,
        required("provider_id", Text) => r.provider_id.as_str(),
        required("blob_id", Id) => r.blob_id,
        required("version", Int) => r.version,
        required("status", Text) => r.status.as_str(),
        required("attempts", Int) => r.attempts,
        column("error", Text) => r.error.as_deref(),
        required("started_at", Time) => r.started_at,
        required("finished_at", Time) => r.finished_at,
    }
}

impl View for ProcessingResult {
    const TABLE: &'static Table = &PROCESSING;
    type Changes = Vec<Self>;
    fn changes(updates: Vec<(Self, isize)>) -> Vec<Self> {
        let mut results = inserts(updates);
        results.sort_by_key(|r| (r.finished_at, r.request_id));
        results
    }
}

table! {
    /// `events` (S5.8): what happened, in the order it was decided.
    EVENTS = "events", Append by ["seq"],
    EventRow => |r| {
        column("seq", Seq),
        required("type", Text) => r.event_type,
        required("blob_id", Id) => r.blob_id,
        column("delta_id", Id) => r.delta_id,
        column("provider_id", Text) => r.provider_id.as_deref(),
        required("at", Time) => r.at,
        required("payload", Json) => r.payload.as_str(),
    }
}

table! {
    /// `grants` (S6.1): the live grants. A revoke deletes its row.
    GRANTS = "grants", Upsert by ["blob_id", "user_id", "permission"],
    GrantRow => |r| {
        column("blob_id", Id) => r.blob_id,
        column("user_id", Id) => r.user_id,
        column("permission", Text) => r.permission.as_str(),
        required("granted_by", Id) => r.granted_by,
        required("granted_at", Time) => r.granted_at,
    }
    indexed ["grants_by_user" on ["user_id", "blob_id"]]
}
keyed_view!(GrantRow, GRANTS);

impl Row for GrantKey {
    fn cells<'a>(&'a self, each: &mut dyn FnMut(Cell<'a>)) {
        each(self.0.into());
        each(self.1.into());
        each(self.2.as_str().into());
    }
}

table! {
    /// `grant_log` (S6.4): every accepted grant and revoke with its record and log
    /// position, which a restart replays (the `grants` view alone loses their order).
    GRANT_LOG = "grant_log", Append by ["grant_id"],
    GrantLogRow => |r| {
        column("grant_id", Id) => r.grant_id,
        required("blob_id", Id) => r.blob_id,
        required("kind", Text) => r.kind.as_str(),
        required("pos_part", Int) => r.pos.part,
        required("pos_offset", Int) => r.pos.offset,
        required("record", Text) => &*r.record,
    }
}

impl View for GrantLogRow {
    const TABLE: &'static Table = &GRANT_LOG;
    type Changes = Vec<Self>;
    fn changes(updates: Vec<(Self, isize)>) -> Vec<Self> {
        let mut rows = inserts(updates);
        rows.sort_by_key(|r| r.pos);
        rows
    }
}

table! {
    /// `result_log` (S5.7): the first processing result of each request read from the
    /// bus, with its record and log position, which a restart replays.
    RESULT_LOG = "result_log", Append by ["request_id"],
    ResultLogRow => |r| {
        column("request_id", Id) => r.result.request_id,
        required("status", Text) => r.result.status.as_str(),
        required("pos_part", Int) => r.pos.part,
        required("pos_offset", Int) => r.pos.offset,
        required("record", Text) => &*r.record,
    }
}

impl View for ResultLogRow {
    const TABLE: &'static Table = &RESULT_LOG;
    type Changes = Vec<Self>;
    fn changes(updates: Vec<(Self, isize)>) -> Vec<Self> {
        let mut rows = inserts(updates);
        rows.sort_by_key(|r| r.pos);
        rows
    }
}

/// `large_docs` (Postgres only): large documents when no other large store is
/// configured, named by `blobs.doc_ref`.
pub const LARGE_DOCS: Table = Table::new(
    "large_docs",
    Kind::Append,
    &["doc_ref"],
    &[column("doc_ref", Text), required("doc", Text)],
);

/// The view tables Studio owns in every store, in creation order (a replay rebuilds
/// exactly these).
pub const TABLES: [&Table; 18] = [
    &BLOBS,
    &DELTAS,
    &DELTAS_APPLIED,
    &DELTAS_WAITING,
    &CHECKPOINTS,
    &PROCESSED_BY,
    &DEAD_LETTERS,
    &BLOB_EDGES,
    &BLOB_REACH,
    &BLOB_DEPTH,
    &USER_DEPTH,
    &REJECTED_EDGES,
    &TRANSFORM_REQUESTS,
    &PROCESSING,
    &EVENTS,
    &GRANTS,
    &GRANT_LOG,
    &RESULT_LOG,
];

/// The names of [`TABLES`].
pub const TABLE_NAMES: [&str; TABLES.len()] = {
    let mut names = [""; TABLES.len()];
    let mut i = 0;
    while i < TABLES.len() {
        names[i] = TABLES[i].name;
        i += 1;
    }
    names
};

/// An insert-only view's rows at one time, as they came (they only grow).
fn inserts<R>(updates: Vec<(R, isize)>) -> Vec<R> {
    debug_assert!(
        updates.iter().all(|(_, d)| *d == 1),
        "insert-only views only grow"
    );
    updates.into_iter().map(|(row, _)| row).collect()
}
