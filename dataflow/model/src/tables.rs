//! Every table Studio writes, declared once ([`Table`]), with how its rows hand out
//! their values ([`Row`]) and, for the views the dataflow maintains, how a batch
//! carries their changes ([`View`]). Stores derive their SQL from these.
//!
//! Adding a view: its row type, a `Table` here with its `row!` and `View`, and a
//! line in [`crate::for_each_view`]; Postgres also needs a migration.

use crate::table::{Column, ColumnType::*, Index, Kind, Row, Table, column, required, row};
use crate::views::{
    AppliedRow, DepthRow, EdgeRow, EventRow, KeyedChanges, ProcessedRow, ReachRow, RejectedEdgeRow,
    UserDepthRow, View, WaitingRow, consolidated, keyed_changes,
};
use crate::{BlobRow, DeadLetter, ProcessingResult, TransformRequest};

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

row!(AppliedRow, |r| [
    r.delta_id,
    r.blob_id,
    r.version,
    r.operation.as_str(),
    r.user_id,
    r.provider_id.as_deref(),
    r.caused_by,
    r.created_at,
    r.record.as_deref(),
    r.pos.part,
    r.pos.offset,
]);

impl View for AppliedRow {
    const TABLE: &'static Table = &DELTAS;
    type Changes = Vec<Self>;
    fn changes(updates: Vec<(Self, isize)>) -> Vec<Self> {
        inserts(updates)
    }
}

/// `deltas_waiting`: deltas waiting for a gap to fill (S4.1), kept so that a restart
/// does not lose them.
pub const DELTAS_WAITING: Table = Table::new(
    "deltas_waiting",
    Kind::InsertOnce,
    &["delta_id"],
    &[
        column("delta_id", Id),
        required("blob_id", Id),
        required("version", Int),
        required("pos_part", Int),
        required("pos_offset", Int),
        required("record", Text),
    ],
);

row!(WaitingRow, |r| [
    r.delta_id,
    r.blob_id,
    r.version,
    r.pos.part,
    r.pos.offset,
    &*r.record,
]);
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

/// `processed_by`: the latest output of a provider on a blob (S3.3).
pub const PROCESSED_BY: Table = Table::new(
    "processed_by",
    Kind::Upsert,
    &["blob_id", "provider_id"],
    &[
        column("blob_id", Id),
        column("provider_id", Text),
        column("version", Int),
        column("delta_id", Id),
    ],
);

row!(ProcessedRow, |r| [
    r.blob_id,
    r.provider_id.as_str(),
    r.version,
    r.delta_id
]);
keyed_view!(ProcessedRow, PROCESSED_BY);

/// `dead_letters`: rejected records in the order they were decided, with their log
/// position (a restart replays the rejected deltas, so a later copy of one is still
/// a duplicate, S4.2).
pub const DEAD_LETTERS: Table = Table::new(
    "dead_letters",
    Kind::Append,
    &["seq"],
    &[
        column("seq", Seq),
        column("delta_id", Id),
        column("blob_id", Id),
        required("reason", Text),
        required("raw", Raw),
        required("pos_part", Int),
        required("pos_offset", Int),
    ],
);

row!(DeadLetter, |r| [
    r.delta_id,
    r.blob_id,
    r.reason.to_string(),
    r.raw_text(),
    r.pos.part,
    r.pos.offset,
]);

impl View for DeadLetter {
    const TABLE: &'static Table = &DEAD_LETTERS;
    type Changes = Vec<Self>;
    fn changes(updates: Vec<(Self, isize)>) -> Vec<Self> {
        let mut letters = inserts(updates);
        letters.sort_by_key(|dl| dl.pos);
        letters
    }
}

/// `blob_edges`: accepted edges of the blob DAG (S5.1) whose two ends exist.
pub const BLOB_EDGES: Table = Table::new(
    "blob_edges",
    Kind::Upsert,
    &["parent_id", "child_id"],
    &[
        column("parent_id", Id),
        column("child_id", Id),
        column("delta_id", Id),
    ],
)
.indexed(&[Index {
    name: "blob_edges_by_child",
    columns: &["child_id"],
}]);

row!(EdgeRow, |r| [r.parent_id, r.child_id, r.delta_id]);
keyed_view!(EdgeRow, BLOB_EDGES);

/// `blob_reach`: the DAG's closure with shortest distances (S5.2).
pub const BLOB_REACH: Table = Table::new(
    "blob_reach",
    Kind::Upsert,
    &["ancestor_id", "descendant_id"],
    &[
        column("ancestor_id", Id),
        column("descendant_id", Id),
        column("distance", Int),
    ],
)
.indexed(&[Index {
    name: "blob_reach_by_descendant",
    columns: &["descendant_id"],
}]);

row!(ReachRow, |r| [r.ancestor_id, r.descendant_id, r.distance]);
keyed_view!(ReachRow, BLOB_REACH);

/// `blob_depth`: each blob's longest path from a root.
pub const BLOB_DEPTH: Table = Table::new(
    "blob_depth",
    Kind::Upsert,
    &["blob_id"],
    &[column("blob_id", Id), column("depth", Int)],
);

row!(DepthRow, |r| [r.blob_id, r.depth]);
keyed_view!(DepthRow, BLOB_DEPTH);

/// `user_depth`: each user's deepest blob.
pub const USER_DEPTH: Table = Table::new(
    "user_depth",
    Kind::Upsert,
    &["user_id"],
    &[column("user_id", Id), column("max_depth", Int)],
);

row!(UserDepthRow, |r| [r.user_id, r.max_depth]);
keyed_view!(UserDepthRow, USER_DEPTH);

/// `rejected_edges`: edges that would have closed a cycle (S5.1).
pub const REJECTED_EDGES: Table = Table::new(
    "rejected_edges",
    Kind::Append,
    &[],
    &[
        column("delta_id", Id),
        column("parent_id", Id),
        column("child_id", Id),
        column("reason", Text),
    ],
);

row!(RejectedEdgeRow, |r| [
    r.delta_id,
    r.parent_id,
    r.child_id,
    r.reason.as_str()
]);

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
    fn cells<'a>(&'a self, each: &mut dyn FnMut(crate::table::Cell<'a>)) {
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

/// `processing` (S5.8): the workers' results, one row per request.
pub const PROCESSING: Table = Table::new(
    "processing",
    Kind::Upsert,
    &["request_id"],
    &[
        column("request_id", Id),
        required("provider_id", Text),
        required("blob_id", Id),
        required("version", Int),
        required("status", Text),
        required("attempts", Int),
        column("error", Text),
        required("started_at", Time),
        required("finished_at", Time),
    ],
);

row!(ProcessingResult, |r| [
    r.request_id,
    r.provider_id.as_str(),
    r.blob_id,
    r.version,
    r.status.as_str(),
    r.attempts,
    r.error.as_deref(),
    r.started_at,
    r.finished_at,
]);

impl View for ProcessingResult {
    const TABLE: &'static Table = &PROCESSING;
    type Changes = Vec<Self>;
    fn changes(updates: Vec<(Self, isize)>) -> Vec<Self> {
        let mut results = inserts(updates);
        results.sort_by_key(|r| (r.finished_at, r.request_id));
        results
    }
}

/// `events` (S5.8): what happened, in the order it was decided.
pub const EVENTS: Table = Table::new(
    "events",
    Kind::Append,
    &["seq"],
    &[
        column("seq", Seq),
        required("type", Text),
        required("blob_id", Id),
        column("delta_id", Id),
        column("provider_id", Text),
        required("at", Time),
        required("payload", Json),
    ],
);

row!(EventRow, |r| [
    r.event_type,
    r.blob_id,
    r.delta_id,
    r.provider_id.as_deref(),
    r.at,
    r.payload.as_str(),
]);

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
pub const TABLES: [&Table; 15] = [
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
