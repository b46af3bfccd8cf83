//! [`PgTable`]: one table described once, from which its `UNNEST` insert, upsert and
//! delete statements are generated and run in chunks.

use sqlx::Postgres;
use sqlx::postgres::{PgArguments, PgConnection};

use super::connection::pg_error;
use crate::SinkError;

/// A statement with its bound values.
pub(crate) type PgQuery<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// One table as written: its name, its columns with their Postgres types (for the
/// `UNNEST` casts), and its key (empty for an insert-only table).
pub struct PgTable {
    /// Table name.
    pub name: &'static str,
    /// `(column, type)` in bind order.
    pub columns: &'static [(&'static str, &'static str)],
    /// Primary key columns: upserted on, deleted by.
    pub key: &'static [&'static str],
    /// For an insert-only table with a primary key: `ON CONFLICT DO NOTHING`, so that
    /// a batch retried after a commit whose acknowledgement was lost writes nothing twice.
    pub ignore_duplicates: bool,
}

impl PgTable {
    fn unnest(columns: &[(&str, &str)]) -> String {
        let arrays: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, (_, ty))| format!("${}::{ty}[]", i + 1))
            .collect();
        format!("SELECT * FROM UNNEST({})", arrays.join(", "))
    }

    /// `INSERT ... SELECT * FROM UNNEST(...)`, without a conflict clause.
    fn plain_insert_sql(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|(c, _)| *c).collect();
        format!(
            "INSERT INTO {} ({}) {}",
            self.name,
            names.join(", "),
            Self::unnest(self.columns)
        )
    }

    /// `INSERT ... SELECT * FROM UNNEST(...) [ON CONFLICT (key) DO UPDATE SET ...]`.
    pub fn insert_sql(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|(c, _)| *c).collect();
        let mut sql = self.plain_insert_sql();
        if self.ignore_duplicates {
            sql.push_str(" ON CONFLICT DO NOTHING");
        } else if !self.key.is_empty() {
            let updates: Vec<String> = names
                .iter()
                .filter(|c| !self.key.contains(c))
                .map(|c| format!("{c} = EXCLUDED.{c}"))
                .collect();
            sql.push_str(&format!(
                " ON CONFLICT ({}) DO UPDATE SET {}",
                self.key.join(", "),
                updates.join(", ")
            ));
        }
        sql
    }

    /// `DELETE ... WHERE (key) IN (SELECT * FROM UNNEST(...))`.
    pub fn delete_sql(&self) -> String {
        let key_columns: Vec<(&str, &str)> = self
            .key
            .iter()
            .map(|k| {
                *self
                    .columns
                    .iter()
                    .find(|(c, _)| c == k)
                    .expect("key columns are columns")
            })
            .collect();
        format!(
            "DELETE FROM {} WHERE ({}) IN ({})",
            self.name,
            self.key.join(", "),
            Self::unnest(&key_columns)
        )
    }

    /// Inserts (or upserts) `rows` in chunks; `bind` binds one array per column.
    pub(crate) async fn insert<R>(
        &self,
        conn: &mut PgConnection,
        rows: &[R],
        chunk: usize,
        bind: for<'q> fn(PgQuery<'q>, &[R]) -> PgQuery<'q>,
    ) -> Result<(), SinkError> {
        self.run(conn, &self.insert_sql(), rows, chunk, bind).await
    }

    /// Inserts `rows` in chunks with `on_conflict` after the `UNNEST` (a conflict rule
    /// that [`PgTable::insert_sql`] does not generate).
    pub(crate) async fn insert_with<R>(
        &self,
        conn: &mut PgConnection,
        on_conflict: &str,
        rows: &[R],
        chunk: usize,
        bind: for<'q> fn(PgQuery<'q>, &[R]) -> PgQuery<'q>,
    ) -> Result<(), SinkError> {
        let sql = format!("{} {on_conflict}", self.plain_insert_sql());
        self.run(conn, &sql, rows, chunk, bind).await
    }

    /// Runs `sql` over `rows` in chunks.
    async fn run<R>(
        &self,
        conn: &mut PgConnection,
        sql: &str,
        rows: &[R],
        chunk: usize,
        bind: for<'q> fn(PgQuery<'q>, &[R]) -> PgQuery<'q>,
    ) -> Result<(), SinkError> {
        if rows.is_empty() {
            return Ok(());
        }
        for part in rows.chunks(chunk.max(1)) {
            bind(sqlx::query(sqlx::AssertSqlSafe(sql)), part)
                .execute(&mut *conn)
                .await
                .map_err(pg_error(format!("writing {}", self.name)))?;
        }
        Ok(())
    }

    /// Deletes rows by key in chunks; `bind` binds one array per key column.
    pub(crate) async fn delete<K>(
        &self,
        conn: &mut PgConnection,
        keys: &[K],
        chunk: usize,
        bind: for<'q> fn(PgQuery<'q>, &[K]) -> PgQuery<'q>,
    ) -> Result<(), SinkError> {
        if keys.is_empty() {
            return Ok(());
        }
        let sql = self.delete_sql();
        for part in keys.chunks(chunk.max(1)) {
            bind(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())), part)
                .execute(&mut *conn)
                .await
                .map_err(pg_error(format!("deleting from {}", self.name)))?;
        }
        Ok(())
    }
}

/// One column's values, as the array bound for `UNNEST`.
pub(crate) fn col<R, T>(rows: &[R], f: impl Fn(&R) -> T) -> Vec<T> {
    rows.iter().map(f).collect()
}

pub(crate) fn int(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}
