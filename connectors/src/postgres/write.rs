//! One view batch in one transaction: the views, the delta store, the error tables and
//! the provider tables, each with one `UNNEST` statement per chunk.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use studio_model::tables::{
    BLOBS, CHECKPOINTS, DEAD_LETTERS, DELTAS, DELTAS_APPLIED, EVENTS, LARGE_DOCS, PROCESSING,
    TRANSFORM_REQUESTS,
};
use studio_model::{AppliedRow, ProcessingResult, Row, Uuid, ViewBatch};

use super::OpenMode;
use super::connection::pg_error;
use super::partitions::ensure_partition;
use super::table::{Binding, delete, insert, insert_sql, plain_insert_sql, run};
use crate::SinkError;
use crate::content::EncodedBlob;
use crate::stored::{LargeDoc, StoredCheckpoint};

/// The first `seq` of a batch's dead letters and of its events.
#[derive(Clone, Copy)]
pub(crate) struct Seqs {
    pub(crate) dead_letter: i64,
    pub(crate) event: i64,
}

/// Writes `batch` in one transaction: the new partitions of `deltas`, the views, the
/// delta store, the error tables and the provider tables, in that order.
pub(crate) async fn write_batch(
    conn: &mut PgConnection,
    batch: &ViewBatch,
    blobs: &[EncodedBlob<'_>],
    new_months: &[NaiveDate],
    seqs: Seqs,
    chunk: usize,
    mode: OpenMode,
) -> Result<(), SinkError> {
    let mut tx = conn.begin().await.map_err(pg_error("BEGIN"))?;
    if mode == OpenMode::Rebuild {
        // A rebuild is replayed from the log again if the machine dies.
        sqlx::raw_sql("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await
            .map_err(pg_error("SET synchronous_commit"))?;
    }
    for month in new_months {
        ensure_partition(&mut tx, *month).await?;
    }
    write_views(&mut tx, batch, blobs, chunk).await?;
    write_delta_store(&mut tx, batch, chunk).await?;
    write_errors(&mut tx, batch, seqs.dead_letter, chunk).await?;
    write_provider_tables(&mut tx, batch, seqs.event, chunk).await?;
    tx.commit().await.map_err(pg_error("COMMIT"))
}

/// The large documents, `blobs` and the views written by their declaration alone.
async fn write_views(
    conn: &mut PgConnection,
    batch: &ViewBatch,
    blobs: &[EncodedBlob<'_>],
    chunk: usize,
) -> Result<(), SinkError> {
    let large: Vec<LargeDoc<'_>> = blobs
        .iter()
        .filter_map(|e| {
            Some(LargeDoc {
                doc_ref: e.stored.doc_ref.as_deref()?,
                doc: e.stored.large_doc.as_deref()?,
            })
        })
        .collect();
    // Large documents in their own chunks: a chunk of rows each ≥ 1 MiB is large.
    insert(conn, &LARGE_DOCS, &rows(&large), 16).await?;
    insert(conn, &BLOBS, &rows(blobs), chunk).await?;
    delete(conn, &BLOBS, &rows(&batch.blobs.deletes), chunk).await?;
    for changes in batch.declared_changes() {
        insert(conn, changes.table(), &changes.rows(), chunk).await?;
        delete(conn, changes.table(), &changes.deleted_keys(), chunk).await?;
    }
    Ok(())
}

/// Rows as the statements bind them.
fn rows<R: Row>(rows: &[R]) -> Vec<&dyn Row> {
    rows.iter().map(|r| r as &dyn Row).collect()
}

/// `deltas_applied`, the delta store (`deltas`) and the source's checkpoint.
async fn write_delta_store(
    conn: &mut PgConnection,
    batch: &ViewBatch,
    chunk: usize,
) -> Result<(), SinkError> {
    let mut applied: Vec<&AppliedRow> = batch.applied.iter().collect();
    applied.sort_unstable_by_key(|r| r.delta_id);
    let applied: Vec<&dyn Row> = applied.into_iter().map(|r| r as &dyn Row).collect();
    insert(conn, &DELTAS_APPLIED, &applied, chunk).await?;
    insert(conn, &DELTAS, &applied, chunk).await?;
    if let Some(checkpoint) = &batch.checkpoint {
        insert(conn, &CHECKPOINTS, &[&StoredCheckpoint(checkpoint)], chunk).await?;
    }
    Ok(())
}

/// `dead_letters`, numbered from `first_dead_letter_seq`.
async fn write_errors(
    conn: &mut PgConnection,
    batch: &ViewBatch,
    first_dead_letter_seq: i64,
    chunk: usize,
) -> Result<(), SinkError> {
    let binding = Binding {
        first_seq: first_dead_letter_seq,
        ..Binding::rows(&DEAD_LETTERS)
    };
    let sql = insert_sql(&DEAD_LETTERS);
    let letters = rows(&batch.dead_letters);
    run(conn, binding, &sql, &letters, chunk, "writing dead_letters").await
}

/// `transform_requests`, `processing` and `events`, as SQLite writes them (one
/// `UNNEST` statement per table and chunk): a request is inserted `pending` when it
/// first appears; a retraction marks it `superseded` unless a result already settled
/// it; a result sets `completed` or `failed`.
async fn write_provider_tables(
    conn: &mut PgConnection,
    batch: &ViewBatch,
    first_event_seq: i64,
    chunk: usize,
) -> Result<(), SinkError> {
    write_requests(conn, batch, chunk).await?;
    write_processing(conn, batch, chunk).await?;
    let binding = Binding {
        first_seq: first_event_seq,
        ..Binding::rows(&EVENTS)
    };
    let sql = insert_sql(&EVENTS);
    run(
        conn,
        binding,
        &sql,
        &rows(&batch.events),
        chunk,
        "writing events",
    )
    .await
}

/// The requests the batch touched: inserted (or kept) `pending` when they appeared,
/// else `superseded` unless settled.
async fn write_requests(
    conn: &mut PgConnection,
    batch: &ViewBatch,
    chunk: usize,
) -> Result<(), SinkError> {
    let changes = batch.request_changes();
    // A request that appeared keeps a settled status (`completed`, `failed`) already
    // written; otherwise it takes the batch's (`pending`, or `superseded`).
    let sql = format!(
        "{} ON CONFLICT (request_id) DO UPDATE SET status = EXCLUDED.status \
         WHERE transform_requests.status IN ('pending', 'superseded')",
        plain_insert_sql(&TRANSFORM_REQUESTS)
    );
    let binding = Binding::rows(&TRANSFORM_REQUESTS);
    let context = "writing transform_requests";
    run(conn, binding, &sql, &rows(&changes.upserts), chunk, context).await?;
    for part in changes.superseded.chunks(chunk.max(1)) {
        sqlx::query(
            "UPDATE transform_requests SET status = 'superseded' \
             WHERE status = 'pending' AND request_id = ANY($1::uuid[])",
        )
        .bind(part)
        .execute(&mut *conn)
        .await
        .map_err(pg_error("superseding transform_requests"))?;
    }
    Ok(())
}

/// The batch's results, one row per request, in `processing`, and their status in
/// `transform_requests`.
async fn write_processing(
    conn: &mut PgConnection,
    batch: &ViewBatch,
    chunk: usize,
) -> Result<(), SinkError> {
    // Results in order, one row per request (an upsert cannot touch a row twice in one
    // statement): the attempts add up, the last result's status, error and end stand.
    let mut results: Vec<ProcessingResult> = Vec::with_capacity(batch.processing.len());
    let mut at: BTreeMap<Uuid, usize> = BTreeMap::new();
    for r in &batch.processing {
        match at.get(&r.request_id) {
            Some(&i) => {
                let merged = &mut results[i];
                merged.status = r.status;
                merged.attempts += r.attempts;
                merged.error = r.error.clone();
                merged.finished_at = r.finished_at;
            }
            None => {
                at.insert(r.request_id, results.len());
                results.push(r.clone());
            }
        }
    }
    // A request answered again (a later round) adds its attempts to the earlier ones.
    // The same result written again (a batch retried after a commit whose
    // acknowledgement was lost) has the same `finished_at` and adds nothing.
    let sql = format!(
        "{} ON CONFLICT (request_id) DO UPDATE SET status = EXCLUDED.status, \
         attempts = CASE WHEN processing.finished_at = EXCLUDED.finished_at THEN processing.attempts \
         ELSE processing.attempts + EXCLUDED.attempts END, \
         error = EXCLUDED.error, finished_at = EXCLUDED.finished_at",
        plain_insert_sql(&PROCESSING)
    );
    let binding = Binding::rows(&PROCESSING);
    run(
        conn,
        binding,
        &sql,
        &rows(&results),
        chunk,
        "writing processing",
    )
    .await?;
    for part in results.chunks(chunk.max(1)) {
        sqlx::query(
            "UPDATE transform_requests t SET status = u.status \
             FROM UNNEST($1::uuid[], $2::text[]) AS u(request_id, status) \
             WHERE t.request_id = u.request_id",
        )
        .bind(part.iter().map(|r| r.request_id).collect::<Vec<_>>())
        .bind(
            part.iter()
                .map(|r| r.status.as_str().to_owned())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *conn)
        .await
        .map_err(pg_error("writing transform_requests"))?;
    }
    Ok(())
}
