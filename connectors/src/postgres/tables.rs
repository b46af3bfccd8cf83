//! The tables Studio writes: a [`PgTable`] description and a bind function each.
//! Column order = bind order.

use studio_model::{
    AppliedRow, DeadLetter, DepthRow, EdgeRow, EventRow, ProcessedRow, ProcessingResult, ReachRow,
    RejectedEdgeRow, TransformRequest, UserDepthRow, Uuid, WaitingRow,
};

use super::table::{PgQuery, PgTable, col, int};
use crate::content::EncodedBlob;

pub(crate) const BLOBS: PgTable = PgTable {
    name: "blobs",
    columns: &[
        ("blob_id", "uuid"),
        ("user_id", "uuid"),
        ("version", "int8"),
        ("content_type", "text"),
        ("doc", "jsonb"),
        ("doc_ref", "text"),
        ("doc_bytes", "int8"),
        ("parent_id", "uuid"),
        ("created_at", "timestamptz"),
        ("updated_at", "timestamptz"),
        ("deleted_at", "timestamptz"),
    ],
    key: &["blob_id"],
    ignore_duplicates: false,
};

pub(crate) fn bind_blobs<'q>(q: PgQuery<'q>, rows: &[EncodedBlob<'_>]) -> PgQuery<'q> {
    q.bind(col(rows, |e| e.row.blob_id))
        .bind(col(rows, |e| e.row.user_id))
        .bind(col(rows, |e| int(e.row.version)))
        .bind(col(rows, |e| e.row.content_type.clone()))
        .bind(col(rows, |e| e.stored.doc.clone())) // text[], cast to jsonb[] by the SQL
        .bind(col(rows, |e| e.stored.doc_ref.clone()))
        .bind(col(rows, |e| e.stored.doc_bytes))
        .bind(col(rows, |e| e.row.parent_id))
        .bind(col(rows, |e| e.row.created_at.0))
        .bind(col(rows, |e| e.row.updated_at.0))
        .bind(col(rows, |e| e.row.deleted_at.map(|t| t.0)))
}

/// Large documents kept in Postgres ([`crate::content::LargeStore::Postgres`]), keyed
/// by their versioned reference: a retried batch writes nothing twice.
pub(crate) const LARGE_DOCS: PgTable = PgTable {
    name: "large_docs",
    columns: &[("doc_ref", "text"), ("doc", "text")],
    key: &[],
    ignore_duplicates: true,
};

pub(crate) fn bind_large_docs<'q>(q: PgQuery<'q>, rows: &[(&str, &str)]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.0.to_owned()))
        .bind(col(rows, |r| r.1.to_owned()))
}

pub(crate) fn bind_uuid_keys<'q>(q: PgQuery<'q>, keys: &[Uuid]) -> PgQuery<'q> {
    q.bind(keys.to_vec())
}

pub(crate) fn bind_pair_keys<'q>(q: PgQuery<'q>, keys: &[(Uuid, Uuid)]) -> PgQuery<'q> {
    q.bind(col(keys, |k| k.0)).bind(col(keys, |k| k.1))
}

pub(crate) const PROCESSED: PgTable = PgTable {
    name: "processed_by",
    columns: &[
        ("blob_id", "uuid"),
        ("provider_id", "text"),
        ("version", "int8"),
        ("delta_id", "uuid"),
    ],
    key: &["blob_id", "provider_id"],
    ignore_duplicates: false,
};

pub(crate) fn bind_processed<'q>(q: PgQuery<'q>, rows: &[&ProcessedRow]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.blob_id))
        .bind(col(rows, |r| r.provider_id.clone()))
        .bind(col(rows, |r| int(r.version)))
        .bind(col(rows, |r| r.delta_id))
}

pub(crate) fn bind_processed_keys<'q>(q: PgQuery<'q>, keys: &[(Uuid, String)]) -> PgQuery<'q> {
    q.bind(col(keys, |k| k.0)).bind(col(keys, |k| k.1.clone()))
}

pub(crate) const EDGES: PgTable = PgTable {
    name: "blob_edges",
    columns: &[
        ("parent_id", "uuid"),
        ("child_id", "uuid"),
        ("delta_id", "uuid"),
    ],
    key: &["parent_id", "child_id"],
    ignore_duplicates: false,
};

pub(crate) fn bind_edges<'q>(q: PgQuery<'q>, rows: &[&EdgeRow]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.parent_id))
        .bind(col(rows, |r| r.child_id))
        .bind(col(rows, |r| r.delta_id))
}

pub(crate) const REACH: PgTable = PgTable {
    name: "blob_reach",
    columns: &[
        ("ancestor_id", "uuid"),
        ("descendant_id", "uuid"),
        ("distance", "int8"),
    ],
    key: &["ancestor_id", "descendant_id"],
    ignore_duplicates: false,
};

pub(crate) fn bind_reach<'q>(q: PgQuery<'q>, rows: &[&ReachRow]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.ancestor_id))
        .bind(col(rows, |r| r.descendant_id))
        .bind(col(rows, |r| i64::from(r.distance)))
}

pub(crate) const DEPTH: PgTable = PgTable {
    name: "blob_depth",
    columns: &[("blob_id", "uuid"), ("depth", "int8")],
    key: &["blob_id"],
    ignore_duplicates: false,
};

pub(crate) fn bind_depth<'q>(q: PgQuery<'q>, rows: &[&DepthRow]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.blob_id))
        .bind(col(rows, |r| i64::from(r.depth)))
}

pub(crate) const USER_DEPTH: PgTable = PgTable {
    name: "user_depth",
    columns: &[("user_id", "uuid"), ("max_depth", "int8")],
    key: &["user_id"],
    ignore_duplicates: false,
};

pub(crate) fn bind_user_depth<'q>(q: PgQuery<'q>, rows: &[&UserDepthRow]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.user_id))
        .bind(col(rows, |r| i64::from(r.max_depth)))
}

const APPLIED_COLUMNS: &[(&str, &str)] = &[
    ("delta_id", "uuid"),
    ("blob_id", "uuid"),
    ("version", "int8"),
    ("operation", "text"),
    ("user_id", "uuid"),
    ("provider_id", "text"),
    ("caused_by", "uuid"),
    ("created_at", "timestamptz"),
];

pub(crate) const APPLIED: PgTable = PgTable {
    name: "deltas_applied",
    columns: APPLIED_COLUMNS,
    key: &[],
    ignore_duplicates: true,
};

/// The delta store: the columns of `deltas_applied`, the record as read and its log
/// position.
pub(crate) const DELTAS: PgTable = PgTable {
    name: "deltas",
    columns: &[
        ("delta_id", "uuid"),
        ("blob_id", "uuid"),
        ("version", "int8"),
        ("operation", "text"),
        ("user_id", "uuid"),
        ("provider_id", "text"),
        ("caused_by", "uuid"),
        ("created_at", "timestamptz"),
        ("record", "text"),
        ("pos_part", "int8"),
        ("pos_offset", "int8"),
    ],
    key: &[],
    ignore_duplicates: true,
};

pub(crate) fn bind_deltas<'q>(q: PgQuery<'q>, rows: &[&AppliedRow]) -> PgQuery<'q> {
    bind_applied(q, rows)
        .bind(col(rows, |r| r.record.as_deref().map(str::to_owned)))
        .bind(col(rows, |r| i64::from(r.pos.part)))
        .bind(col(rows, |r| int(r.pos.offset)))
}

/// Deltas waiting for a gap: inserted when they start waiting, deleted when they are
/// applied or dead-lettered.
pub(crate) const WAITING: PgTable = PgTable {
    name: "deltas_waiting",
    columns: &[
        ("delta_id", "uuid"),
        ("blob_id", "uuid"),
        ("version", "int8"),
        ("pos_part", "int8"),
        ("pos_offset", "int8"),
        ("record", "text"),
    ],
    key: &["delta_id"],
    ignore_duplicates: true,
};

pub(crate) fn bind_waiting<'q>(q: PgQuery<'q>, rows: &[&WaitingRow]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.delta_id))
        .bind(col(rows, |r| r.blob_id))
        .bind(col(rows, |r| int(r.version)))
        .bind(col(rows, |r| i64::from(r.pos.part)))
        .bind(col(rows, |r| int(r.pos.offset)))
        .bind(col(rows, |r| r.record.to_string()))
}

pub(crate) const REQUESTS: PgTable = PgTable {
    name: "transform_requests",
    columns: &[
        ("request_id", "uuid"),
        ("provider_id", "text"),
        ("blob_id", "uuid"),
        ("version", "int8"),
        ("fingerprint", "text"),
        ("created_at", "timestamptz"),
        ("status", "text"),
    ],
    key: &["request_id"],
    ignore_duplicates: false,
};

/// A request that appeared keeps a settled status (`completed`, `failed`) already
/// written; otherwise it takes the batch's (`pending`, or `superseded`).
pub(crate) const REQUESTS_ON_CONFLICT: &str = "ON CONFLICT (request_id) DO UPDATE SET status = EXCLUDED.status \
    WHERE transform_requests.status IN ('pending', 'superseded')";

pub(crate) fn bind_requests<'q>(q: PgQuery<'q>, rows: &[(&TransformRequest, bool)]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.0.request_id))
        .bind(col(rows, |r| r.0.provider_id.clone()))
        .bind(col(rows, |r| r.0.blob_id))
        .bind(col(rows, |r| int(r.0.version)))
        .bind(col(rows, |r| r.0.fingerprint.to_string()))
        .bind(col(rows, |r| r.0.created_at.0))
        .bind(col(rows, |r| {
            if r.1 { "pending" } else { "superseded" }.to_owned()
        }))
}

pub(crate) const PROCESSING: PgTable = PgTable {
    name: "processing",
    columns: &[
        ("request_id", "uuid"),
        ("provider_id", "text"),
        ("blob_id", "uuid"),
        ("version", "int8"),
        ("status", "text"),
        ("attempts", "int8"),
        ("error", "text"),
        ("started_at", "timestamptz"),
        ("finished_at", "timestamptz"),
    ],
    key: &["request_id"],
    ignore_duplicates: false,
};

/// A request answered again (a later round) adds its attempts to the earlier ones. The
/// same result written again (a batch retried after a commit whose acknowledgement was
/// lost) has the same `finished_at` and adds nothing: the statement stays idempotent.
pub(crate) const PROCESSING_ON_CONFLICT: &str = "ON CONFLICT (request_id) DO UPDATE SET status = EXCLUDED.status, \
    attempts = CASE WHEN processing.finished_at = EXCLUDED.finished_at THEN processing.attempts \
    ELSE processing.attempts + EXCLUDED.attempts END, \
    error = EXCLUDED.error, finished_at = EXCLUDED.finished_at";

pub(crate) fn bind_processing<'q>(q: PgQuery<'q>, rows: &[ProcessingResult]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.request_id))
        .bind(col(rows, |r| r.provider_id.clone()))
        .bind(col(rows, |r| r.blob_id))
        .bind(col(rows, |r| int(r.version)))
        .bind(col(rows, |r| r.status.as_str().to_owned()))
        .bind(col(rows, |r| i64::from(r.attempts)))
        .bind(col(rows, |r| {
            r.error.as_ref().map(|e| e.replace('\0', "\u{FFFD}"))
        }))
        .bind(col(rows, |r| r.started_at.0))
        .bind(col(rows, |r| r.finished_at.0))
}

/// `events.seq` is numbered by the sink, like `dead_letters.seq`.
pub(crate) const EVENTS: PgTable = PgTable {
    name: "events",
    columns: &[
        ("seq", "int8"),
        ("type", "text"),
        ("blob_id", "uuid"),
        ("delta_id", "uuid"),
        ("provider_id", "text"),
        ("at", "timestamptz"),
        ("payload", "jsonb"),
    ],
    key: &[],
    ignore_duplicates: true,
};

pub(crate) fn bind_events<'q>(q: PgQuery<'q>, rows: &[(i64, &EventRow)]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.0))
        .bind(col(rows, |r| r.1.event_type.to_owned()))
        .bind(col(rows, |r| r.1.blob_id))
        .bind(col(rows, |r| r.1.delta_id))
        .bind(col(rows, |r| r.1.provider_id.clone()))
        .bind(col(rows, |r| r.1.at.0))
        .bind(col(rows, |r| jsonb_text(&r.1.payload))) // text[], cast to jsonb[] by the SQL
}

/// JSON text that `jsonb` accepts: a string holding NUL (`\u0000`, which `jsonb`
/// refuses) has it replaced by U+FFFD, as in `dead_letters.reason`.
pub(crate) fn jsonb_text(json: &str) -> String {
    fn scrub(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) => *s = s.replace('\0', "\u{FFFD}"),
            serde_json::Value::Array(items) => items.iter_mut().for_each(scrub),
            serde_json::Value::Object(map) => map.values_mut().for_each(scrub),
            _ => {}
        }
    }
    if !json.contains("\\u0000") {
        return json.to_owned();
    }
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(mut value) => {
            scrub(&mut value);
            value.to_string()
        }
        Err(_) => json.to_owned(),
    }
}

pub(crate) fn bind_applied<'q>(q: PgQuery<'q>, rows: &[&AppliedRow]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.delta_id))
        .bind(col(rows, |r| r.blob_id))
        .bind(col(rows, |r| int(r.version)))
        .bind(col(rows, |r| r.operation.as_str().to_owned()))
        .bind(col(rows, |r| r.user_id))
        .bind(col(rows, |r| r.provider_id.clone()))
        .bind(col(rows, |r| r.caused_by))
        .bind(col(rows, |r| r.created_at.0))
}

pub(crate) const REJECTED: PgTable = PgTable {
    name: "rejected_edges",
    columns: &[
        ("delta_id", "uuid"),
        ("parent_id", "uuid"),
        ("child_id", "uuid"),
        ("reason", "text"),
    ],
    key: &[],
    ignore_duplicates: false,
};

pub(crate) fn bind_rejected<'q>(q: PgQuery<'q>, rows: &[&RejectedEdgeRow]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.delta_id))
        .bind(col(rows, |r| r.parent_id))
        .bind(col(rows, |r| r.child_id))
        .bind(col(rows, |r| r.reason.clone()))
}

pub(crate) const DEAD: PgTable = PgTable {
    name: "dead_letters",
    columns: &[
        ("seq", "int8"),
        ("delta_id", "uuid"),
        ("blob_id", "uuid"),
        ("reason", "text"),
        ("raw", "text"),
        ("pos_part", "int8"),
        ("pos_offset", "int8"),
    ],
    key: &[],
    ignore_duplicates: true,
};

/// The `raw` column in Postgres: as in SQLite, except that text holding a NUL character
/// (which Postgres text cannot hold) is written in its `base64:` form.
fn pg_raw(letter: &DeadLetter) -> String {
    let raw = letter.raw_text();
    if raw.contains('\0') {
        use base64::Engine as _;
        format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(&letter.raw)
        )
    } else {
        raw.into_owned()
    }
}

pub(crate) fn bind_dead<'q>(q: PgQuery<'q>, rows: &[(i64, &DeadLetter)]) -> PgQuery<'q> {
    q.bind(col(rows, |r| r.0))
        .bind(col(rows, |r| r.1.delta_id))
        .bind(col(rows, |r| r.1.blob_id))
        .bind(col(rows, |r| {
            r.1.reason.to_string().replace('\0', "\u{FFFD}")
        }))
        .bind(col(rows, |r| pg_raw(r.1)))
        .bind(col(rows, |r| i64::from(r.1.pos.part)))
        .bind(col(rows, |r| int(r.1.pos.offset)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_sql() {
        assert_eq!(
            DEPTH.insert_sql(),
            "INSERT INTO blob_depth (blob_id, depth) SELECT * FROM UNNEST($1::uuid[], $2::int8[]) \
             ON CONFLICT (blob_id) DO UPDATE SET depth = EXCLUDED.depth"
        );
        assert_eq!(
            PROCESSED.delete_sql(),
            "DELETE FROM processed_by WHERE (blob_id, provider_id) IN (SELECT * FROM UNNEST($1::uuid[], $2::text[]))"
        );
        assert_eq!(
            REJECTED.insert_sql(),
            "INSERT INTO rejected_edges (delta_id, parent_id, child_id, reason) SELECT * FROM \
             UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[])"
        );
    }
}
