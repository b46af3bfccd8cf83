//! The partitions of `deltas`, one per month of `created_at`, created in the
//! transaction of the first delta that needs one.

use std::collections::HashSet;

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use sqlx::postgres::PgConnection;

use super::connection::pg_error;
use crate::SinkError;

/// The first day of `t`'s month (UTC).
pub(crate) fn month_of(t: DateTime<Utc>) -> NaiveDate {
    NaiveDate::from_ymd_opt(t.year(), t.month(), 1).expect("the first of a month exists")
}

/// The partition of `deltas` for the month starting at `month`: `deltas_y2026m01`.
pub fn partition_name(month: NaiveDate) -> String {
    format!("deltas_y{:04}m{:02}", month.year(), month.month())
}

/// The months whose partitions of `deltas` exist.
pub(crate) async fn existing_partitions(
    conn: &mut PgConnection,
) -> Result<HashSet<NaiveDate>, SinkError> {
    let partitions: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'deltas'::regclass",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(pg_error("listing the partitions of deltas"))?;
    Ok(partitions
        .iter()
        .filter_map(|name| partition_month(name))
        .collect())
}

/// The month of a partition named by [`partition_name`].
fn partition_month(name: &str) -> Option<NaiveDate> {
    let rest = name.strip_prefix("deltas_y")?;
    let (year, month) = rest.split_once('m')?;
    NaiveDate::from_ymd_opt(year.parse().ok()?, month.parse().ok()?, 1)
}

/// Creates the partition of `deltas` for the month starting at `month`, unless it exists.
pub(crate) async fn ensure_partition(
    conn: &mut PgConnection,
    month: NaiveDate,
) -> Result<(), SinkError> {
    let next = month + Months::new(1);
    // Row security on, no policy: read through `deltas` (whose policies apply, S6.3),
    // never around them.
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {name} PARTITION OF deltas FOR VALUES FROM ('{month} 00:00:00+00') TO ('{next} 00:00:00+00'); \
         ALTER TABLE {name} ENABLE ROW LEVEL SECURITY",
        name = partition_name(month)
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *conn)
        .await
        .map_err(pg_error(format!(
            "creating the partition {}",
            partition_name(month)
        )))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions() {
        let t = DateTime::parse_from_rfc3339("2025-12-31T23:59:59.5Z")
            .unwrap()
            .to_utc();
        assert_eq!(partition_name(month_of(t)), "deltas_y2025m12");
        assert_eq!(partition_month("deltas_y2025m12"), Some(month_of(t)));
        assert!(crate::is_delta_partition("deltas_y2025m12"));
        assert!(!crate::is_delta_partition("deltas_y2025m1x"));
    }
}
