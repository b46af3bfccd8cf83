//! One view batch in one transaction: the views, the delta store, the error tables and
//! the provider tables, each with one `UNNEST` statement per chunk.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use studio_model::{
    AppliedRow, Checkpoint, DeadLetter, EventRow, KeyedChanges, ProcessingResult, RejectedEdgeRow,
    Uuid, ViewBatch,
};

use super::OpenMode;
use super::connection::pg_error;
use super::partitions::ensure_partition;
use super::table::{PgQuery, PgTable, col, int};
use super::tables::*;
use crate::content::EncodedBlob;
use crate::{SinkError, positions_json};

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

/// The large documents, `blobs` and the keyed views.
async fn write_views(
    conn: &mut PgConnection,
    batch: &ViewBatch,
    blobs: &[EncodedBlob<'_>],
    chunk: usize,
) -> Result<(), SinkError> {
    let large: Vec<(&str, &str)> = blobs
        .iter()
        .filter_map(|e| Some((e.stored.doc_ref.as_deref()?, e.stored.large_doc.as_deref()?)))
        .collect();
    // Large documents in their own chunks: a chunk of rows each ≥ 1 MiB is large.
    LARGE_DOCS.insert(conn, &large, 16, bind_large_docs).await?;
    BLOBS.insert(conn, blobs, chunk, bind_blobs).await?;
    BLOBS
        .delete(conn, &batch.blobs.deletes, chunk, bind_uuid_keys)
        .await?;
    write_keyed(
        conn,
        &PROCESSED,
        &batch.processed,
        chunk,
        bind_processed,
        bind_processed_keys,
    )
    .await?;
    write_keyed(
        conn,
        &EDGES,
        &batch.edges,
        chunk,
        bind_edges,
        bind_pair_keys,
    )
    .await?;
    write_keyed(
        conn,
        &REACH,
        &batch.reach,
        chunk,
        bind_reach,
        bind_pair_keys,
    )
    .await?;
    write_keyed(
        conn,
        &DEPTH,
        &batch.depth,
        chunk,
        bind_depth,
        bind_uuid_keys,
    )
    .await?;
    write_keyed(
        conn,
        &USER_DEPTH,
        &batch.user_depth,
        chunk,
        bind_user_depth,
        bind_uuid_keys,
    )
    .await
}

/// `deltas_applied`, the delta store (`deltas`, `deltas_waiting`) and the source's
/// checkpoint.
async fn write_delta_store(
    conn: &mut PgConnection,
    batch: &ViewBatch,
    chunk: usize,
) -> Result<(), SinkError> {
    let mut applied: Vec<&AppliedRow> = batch.applied.iter().collect();
    applied.sort_unstable_by_key(|r| r.delta_id);
    APPLIED.insert(conn, &applied, chunk, bind_applied).await?;
    DELTAS.insert(conn, &applied, chunk, bind_deltas).await?;
    write_keyed(
        conn,
        &WAITING,
        &batch.waiting,
        chunk,
        bind_waiting,
        bind_uuid_keys,
    )
    .await?;
    if let Some(checkpoint) = &batch.checkpoint {
        write_checkpoint(conn, checkpoint).await?;
    }
    Ok(())
}

/// `rejected_edges` and `dead_letters`, numbered from `first_dead_letter_seq`.
async fn write_errors(
    conn: &mut PgConnection,
    batch: &ViewBatch,
    first_dead_letter_seq: i64,
    chunk: usize,
) -> Result<(), SinkError> {
    let rejected: Vec<&RejectedEdgeRow> = batch.rejected_edges.iter().collect();
    REJECTED
        .insert(conn, &rejected, chunk, bind_rejected)
        .await?;
    let dead: Vec<(i64, &DeadLetter)> = batch
        .dead_letters
        .iter()
        .enumerate()
        .map(|(i, d)| (first_dead_letter_seq + i as i64, d))
        .collect();
    DEAD.insert(conn, &dead, chunk, bind_dead).await
}

async fn write_checkpoint(
    conn: &mut PgConnection,
    checkpoint: &Checkpoint,
) -> Result<(), SinkError> {
    sqlx::query(
        "INSERT INTO checkpoints (source, positions, next_seq) VALUES ($1, $2::jsonb, $3) \
         ON CONFLICT (source) DO UPDATE SET positions = EXCLUDED.positions, next_seq = EXCLUDED.next_seq",
    )
    .bind(&checkpoint.source)
    .bind(positions_json(&checkpoint.positions))
    .bind(int(checkpoint.next_seq))
    .execute(&mut *conn)
    .await
    .map_err(pg_error("writing the source checkpoint"))?;
    Ok(())
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
    let events: Vec<(i64, &EventRow)> = batch
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| (first_event_seq + i as i64, e))
        .collect();
    EVENTS.insert(conn, &events, chunk, bind_events).await
}

/// The requests the batch touched: inserted (or kept) `pending` when they appeared,
/// else `superseded` unless settled.
async fn write_requests(
    conn: &mut PgConnection,
    batch: &ViewBatch,
    chunk: usize,
) -> Result<(), SinkError> {
    let changes = batch.request_changes();
    REQUESTS
        .insert_with(
            conn,
            REQUESTS_ON_CONFLICT,
            &changes.upserts,
            chunk,
            bind_requests,
        )
        .await?;
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
    PROCESSING
        .insert_with(
            conn,
            PROCESSING_ON_CONFLICT,
            &results,
            chunk,
            bind_processing,
        )
        .await?;
    for part in results.chunks(chunk.max(1)) {
        sqlx::query(
            "UPDATE transform_requests t SET status = u.status \
             FROM UNNEST($1::uuid[], $2::text[]) AS u(request_id, status) \
             WHERE t.request_id = u.request_id",
        )
        .bind(col(part, |r| r.request_id))
        .bind(col(part, |r| r.status.as_str().to_owned()))
        .execute(&mut *conn)
        .await
        .map_err(pg_error("writing transform_requests"))?;
    }
    Ok(())
}

/// Writes one keyed view's net changes: upserts sorted by key, then deletes.
async fn write_keyed<R: studio_model::Keyed>(
    conn: &mut PgConnection,
    table: &PgTable,
    changes: &KeyedChanges<R>,
    chunk: usize,
    bind_rows: for<'q> fn(PgQuery<'q>, &[&R]) -> PgQuery<'q>,
    bind_keys: for<'q> fn(PgQuery<'q>, &[R::Key]) -> PgQuery<'q>,
) -> Result<(), SinkError> {
    let mut rows: Vec<&R> = changes.upserts.iter().collect();
    rows.sort_unstable_by_key(|r| r.key());
    table.insert(conn, &rows, chunk, bind_rows).await?;
    table.delete(conn, &changes.deletes, chunk, bind_keys).await
}
