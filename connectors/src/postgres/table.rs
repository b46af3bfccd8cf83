//! Postgres statements generated from a declared [`Table`]: its `UNNEST` insert, upsert
//! and delete, run in chunks with one array per column built from the rows' cells.

use chrono::{DateTime, Utc};
use sqlx::Postgres;
use sqlx::postgres::{PgArguments, PgConnection};
use studio_model::{Cell, Column, ColumnType, Kind, Row, Table, Uuid};

use super::connection::pg_error;
use crate::SinkError;

/// A statement with its bound values.
type PgQuery<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

fn unnest<'c>(columns: impl Iterator<Item = &'c Column>) -> String {
    let arrays: Vec<String> = columns
        .enumerate()
        .map(|(i, c)| format!("${}::{}[]", i + 1, c.ty.postgres()))
        .collect();
    format!("SELECT * FROM UNNEST({})", arrays.join(", "))
}

/// `INSERT ... SELECT * FROM UNNEST(...)`, without a conflict clause.
pub(crate) fn plain_insert_sql(table: &Table) -> String {
    let names: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
    format!(
        "INSERT INTO {} ({}) {}",
        table.name,
        names.join(", "),
        unnest(table.columns.iter())
    )
}

/// The insert of the table's [`Kind`]: an upsert by key; or, for rows written once
/// with a key, `ON CONFLICT DO NOTHING`, so that a batch retried after a commit whose
/// acknowledgement was lost writes nothing twice.
pub(crate) fn insert_sql(table: &Table) -> String {
    let mut sql = plain_insert_sql(table);
    match table.kind {
        Kind::Upsert => {
            let updates: Vec<String> = table
                .columns
                .iter()
                .filter(|c| !table.key.contains(&c.name))
                .map(|c| format!("{0} = EXCLUDED.{0}", c.name))
                .collect();
            sql.push_str(&format!(
                " ON CONFLICT ({}) DO UPDATE SET {}",
                table.key.join(", "),
                updates.join(", ")
            ));
        }
        Kind::InsertOnce | Kind::Append if !table.key.is_empty() => {
            sql.push_str(" ON CONFLICT DO NOTHING");
        }
        Kind::InsertOnce | Kind::Append => {}
    }
    sql
}

/// `DELETE ... WHERE (key) IN (SELECT * FROM UNNEST(...))`.
pub(crate) fn delete_sql(table: &Table) -> String {
    format!(
        "DELETE FROM {} WHERE ({}) IN ({})",
        table.name,
        table.key.join(", "),
        unnest(table.key_columns())
    )
}

/// One column's values, as the array bound for `UNNEST`.
enum Array {
    Id(Vec<Option<Uuid>>),
    Int(Vec<Option<i64>>),
    Text(Vec<Option<String>>),
    Time(Vec<Option<DateTime<Utc>>>),
}

impl Array {
    fn of(ty: ColumnType, len: usize) -> Self {
        match ty {
            ColumnType::Id => Array::Id(Vec::with_capacity(len)),
            ColumnType::Int | ColumnType::Seq => Array::Int(Vec::with_capacity(len)),
            ColumnType::Text | ColumnType::Raw | ColumnType::Json => {
                Array::Text(Vec::with_capacity(len))
            }
            ColumnType::Time => Array::Time(Vec::with_capacity(len)),
        }
    }

    /// Appends a cell of a column of type `ty`, as Postgres can hold it.
    fn push(&mut self, table: &str, column: &Column, cell: Cell<'_>) {
        match (self, cell) {
            (Array::Id(a), Cell::Id(id)) => a.push(Some(id)),
            (Array::Int(a), Cell::Int(n)) => a.push(Some(n)),
            (Array::Time(a), Cell::Time(t)) => a.push(Some(t.0)),
            (Array::Text(a), Cell::Text(text)) => a.push(Some(pg_text(column.ty, &text))),
            (Array::Id(a), Cell::Null) => a.push(None),
            (Array::Int(a), Cell::Null) => a.push(None),
            (Array::Time(a), Cell::Null) => a.push(None),
            (Array::Text(a), Cell::Null) => a.push(None),
            (_, cell) => panic!(
                "{table}.{}: a {cell:?} where {:?} is declared",
                column.name, column.ty
            ),
        }
    }

    fn bind<'q>(self, query: PgQuery<'q>) -> PgQuery<'q> {
        match self {
            Array::Id(a) => query.bind(a),
            Array::Int(a) => query.bind(a),
            Array::Text(a) => query.bind(a),
            Array::Time(a) => query.bind(a),
        }
    }
}

/// Text as Postgres can hold it (no NUL): JSON through [`jsonb_text`], a raw record
/// holding NUL in its `base64:` form (as SQLite writes bytes that are not UTF-8), other
/// text with U+FFFD for NUL.
fn pg_text(ty: ColumnType, text: &str) -> String {
    match ty {
        ColumnType::Json => jsonb_text(text),
        _ if !text.contains('\0') => text.to_owned(),
        ColumnType::Raw => {
            use base64::Engine as _;
            format!(
                "{}{}",
                studio_model::dead_letter::BASE64_PREFIX,
                base64::engine::general_purpose::STANDARD.encode(text)
            )
        }
        _ => text.replace('\0', "\u{FFFD}"),
    }
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

/// How rows are bound: the columns, and the first number of a [`ColumnType::Seq`]
/// column (rows do not carry it).
#[derive(Clone, Copy)]
pub(crate) struct Binding<'t> {
    pub(crate) table: &'t Table,
    pub(crate) columns: &'t [Column],
    pub(crate) first_seq: i64,
}

impl<'t> Binding<'t> {
    /// Every column of `table`.
    pub(crate) fn rows(table: &'t Table) -> Self {
        Binding {
            table,
            columns: table.columns,
            first_seq: 0,
        }
    }

    /// The arrays of `rows`, the first of them numbered `seq`.
    fn arrays(&self, rows: &[&dyn Row], seq: i64) -> Vec<Array> {
        let mut arrays: Vec<Array> = self
            .columns
            .iter()
            .map(|c| Array::of(c.ty, rows.len()))
            .collect();
        // A numbered table's number is its first column.
        let numbered = self
            .columns
            .first()
            .is_some_and(|c| c.ty == ColumnType::Seq);
        for (i, row) in rows.iter().enumerate() {
            let mut at = 0;
            if numbered {
                arrays[0].push(self.table.name, &self.columns[0], Cell::Int(seq + i as i64));
                at = 1;
            }
            row.cells(&mut |cell| {
                // Cells beyond the columns bound are not this table's (`deltas_applied`
                // binds the first columns of a delta store row).
                if at < arrays.len() {
                    arrays[at].push(self.table.name, &self.columns[at], cell);
                }
                at += 1;
            });
        }
        arrays
    }
}

/// Runs `sql` over `rows` in chunks of `chunk`, binding one array per column; `context`
/// says what failed.
pub(crate) async fn run(
    conn: &mut PgConnection,
    binding: Binding<'_>,
    sql: &str,
    rows: &[&dyn Row],
    chunk: usize,
    context: &str,
) -> Result<(), SinkError> {
    let chunk = chunk.max(1);
    for (n, part) in rows.chunks(chunk).enumerate() {
        let seq = binding.first_seq + (n * chunk) as i64;
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for array in binding.arrays(part, seq) {
            query = array.bind(query);
        }
        query.execute(&mut *conn).await.map_err(pg_error(context))?;
    }
    Ok(())
}

/// Inserts (or upserts) `rows` with the table's own statement.
pub(crate) async fn insert(
    conn: &mut PgConnection,
    table: &Table,
    rows: &[&dyn Row],
    chunk: usize,
) -> Result<(), SinkError> {
    let context = format!("writing {}", table.name);
    let sql = insert_sql(table);
    run(conn, Binding::rows(table), &sql, rows, chunk, &context).await
}

/// Deletes rows by key (each key a row of the key's cells).
pub(crate) async fn delete(
    conn: &mut PgConnection,
    table: &Table,
    keys: &[&dyn Row],
    chunk: usize,
) -> Result<(), SinkError> {
    let columns: Vec<Column> = table.key_columns().copied().collect();
    let binding = Binding {
        table,
        columns: &columns,
        first_seq: 0,
    };
    let context = format!("deleting from {}", table.name);
    run(conn, binding, &delete_sql(table), keys, chunk, &context).await
}

#[cfg(test)]
mod tests {
    use studio_model::tables::{BLOB_DEPTH, PROCESSED_BY, REJECTED_EDGES};

    use super::*;

    #[test]
    fn generated_sql() {
        assert_eq!(
            insert_sql(&BLOB_DEPTH),
            "INSERT INTO blob_depth (blob_id, depth) SELECT * FROM UNNEST($1::uuid[], $2::int8[]) \
             ON CONFLICT (blob_id) DO UPDATE SET depth = EXCLUDED.depth"
        );
        assert_eq!(
            delete_sql(&PROCESSED_BY),
            "DELETE FROM processed_by WHERE (blob_id, provider_id) IN (SELECT * FROM UNNEST($1::uuid[], $2::text[]))"
        );
        assert_eq!(
            insert_sql(&REJECTED_EDGES),
            "INSERT INTO rejected_edges (delta_id, parent_id, child_id, reason) SELECT * FROM \
             UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[])"
        );
    }
}
