//! Reading the delta store back in log order, and a live source's checkpoint.

use futures_util::TryStreamExt;
use sqlx::postgres::PgConnection;
use studio_model::{Checkpoint, SourcePos};

use super::connection::pg_error;
use crate::stored::{RECOVERY_QUERY, recovered};
use crate::{RecoveredAs, SinkError};

/// Streams the delta store in log order to `each`, then reads `source`'s checkpoint.
pub(crate) async fn recover(
    conn: &mut PgConnection,
    source: &str,
    each: &mut dyn FnMut(SourcePos, &str, RecoveredAs),
) -> Result<Option<Checkpoint>, SinkError> {
    let mut rows =
        sqlx::query_as::<_, (Option<i64>, Option<i64>, Option<String>, bool)>(RECOVERY_QUERY)
            .fetch(&mut *conn);
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(pg_error("reading the delta store"))?
    {
        recovered(row, each)?;
    }
    drop(rows);
    let stored: Option<(String, i64)> =
        sqlx::query_as("SELECT positions::text, next_seq FROM checkpoints WHERE source = $1")
            .bind(source)
            .fetch_optional(&mut *conn)
            .await
            .map_err(pg_error("reading the source checkpoint"))?;
    crate::checkpoint_of(source, stored)
}
