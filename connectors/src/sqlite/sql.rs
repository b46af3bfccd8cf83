//! SQLite's SQL, generated from the tables declared in `studio_model::tables`: the
//! schema, and each table's insert, upsert and delete, run with one row's cells.

use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use rusqlite::{CachedStatement, Transaction};
use studio_model::tables::TABLES;
use studio_model::{Cell, Kind, Row, Table, TableChanges};

use super::{id, sql_error, time};
use crate::SinkError;

/// Every view table, created if missing (`CREATE TABLE IF NOT EXISTS`, its indexes, and
/// the tables SQLite keeps as views).
pub fn schema() -> String {
    TABLES
        .iter()
        .map(|t| create_sql(t, Indexes::WithTable))
        .collect()
}

/// The schema for a bulk load into a new file: the append-only tables (the delta
/// store) without their key and indexes, which [`bulk_load_indexes`] builds once the
/// rows are in. A million random-key index inserts cost several times one sort.
pub fn bulk_load_schema() -> String {
    TABLES
        .iter()
        .map(|t| create_sql(t, Indexes::AfterLoad))
        .collect()
}

/// The key (as a unique index) and the indexes [`bulk_load_schema`] left out.
pub fn bulk_load_indexes() -> String {
    TABLES
        .iter()
        .filter(|t| loaded_in_bulk(t))
        .map(|t| format!("{}{}", key_index_sql(t), indexes_sql(t)))
        .collect()
}

/// The key of a table [`bulk_load_schema`] made, when a bulk load stopped before
/// [`bulk_load_indexes`]: `(table, CREATE UNIQUE INDEX ...)` for each such table.
pub fn bulk_load_keys() -> impl Iterator<Item = (&'static str, String)> {
    TABLES
        .iter()
        .filter(|t| loaded_in_bulk(t))
        .map(|t| (t.name, key_index_sql(t)))
}

/// Append-only tables with a key of their own (not a sequence): the delta store.
fn loaded_in_bulk(table: &Table) -> bool {
    table.kind == Kind::Append
        && table.sqlite_view_of.is_none()
        && !table.key.is_empty()
        && table
            .key_columns()
            .all(|c| c.ty != studio_model::ColumnType::Seq)
}

/// When a table's key and indexes are made.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Indexes {
    /// With the table.
    WithTable,
    /// After a bulk load, for the tables [`loaded_in_bulk`].
    AfterLoad,
}

fn key_index_sql(table: &Table) -> String {
    format!(
        "CREATE UNIQUE INDEX IF NOT EXISTS {0}_key ON {0} ({1});\n",
        table.name,
        table.key.join(", ")
    )
}

fn indexes_sql(table: &Table) -> String {
    table
        .indexes
        .iter()
        .map(|index| {
            format!(
                "CREATE INDEX IF NOT EXISTS {} ON {} ({});\n",
                index.name,
                table.name,
                index.columns.join(", ")
            )
        })
        .collect()
}

fn create_sql(table: &Table, indexes: Indexes) -> String {
    let deferred = indexes == Indexes::AfterLoad && loaded_in_bulk(table);
    let columns: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
    if let Some(base) = table.sqlite_view_of {
        return format!(
            "CREATE VIEW IF NOT EXISTS {} AS SELECT {} FROM {base};\n",
            table.name,
            columns.join(", ")
        );
    }
    let single_key = (table.key.len() == 1 && !deferred).then(|| table.key[0]);
    let mut lines: Vec<String> = table
        .columns
        .iter()
        .map(|c| {
            let key = if single_key == Some(c.name) {
                " PRIMARY KEY"
            } else {
                ""
            };
            let not_null = if c.not_null { " NOT NULL" } else { "" };
            format!("    {} {}{key}{not_null}", c.name, c.ty.sqlite())
        })
        .collect();
    if table.key.len() > 1 && !deferred {
        lines.push(format!("    PRIMARY KEY ({})", table.key.join(", ")));
    }
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {} (\n{}\n);\n",
        table.name,
        lines.join(",\n")
    );
    if deferred {
        sql
    } else {
        sql + &indexes_sql(table)
    }
}

/// `INSERT INTO t (columns) VALUES (?, ...)` over the columns rows supply, without a
/// conflict clause.
pub(super) fn plain_insert_sql(table: &Table) -> String {
    let names: Vec<&str> = table.row_columns().map(|c| c.name).collect();
    let marks = vec!["?"; names.len()].join(", ");
    format!(
        "INSERT INTO {} ({}) VALUES ({marks})",
        table.name,
        names.join(", ")
    )
}

/// The insert of the table's [`Kind`]: an upsert by key, an insert that keeps a row
/// already there, or a plain insert.
pub(super) fn insert_sql(table: &Table) -> String {
    let insert = plain_insert_sql(table);
    let key = table.key.join(", ");
    match table.kind {
        Kind::Upsert => {
            let updates: Vec<String> = table
                .row_columns()
                .filter(|c| !table.key.contains(&c.name))
                .map(|c| format!("{0} = excluded.{0}", c.name))
                .collect();
            format!(
                "{insert} ON CONFLICT ({key}) DO UPDATE SET {}",
                updates.join(", ")
            )
        }
        Kind::InsertOnce => format!("{insert} ON CONFLICT ({key}) DO NOTHING"),
        Kind::Append => insert,
    }
}

/// `DELETE FROM t WHERE k = ? AND ...`.
pub(super) fn delete_sql(table: &Table) -> String {
    let conditions: Vec<String> = table.key.iter().map(|k| format!("{k} = ?")).collect();
    format!(
        "DELETE FROM {} WHERE {}",
        table.name,
        conditions.join(" AND ")
    )
}

/// A cell as SQLite holds it: ids as hyphenated text, times as RFC 3339 UTC text.
struct Bound<'a>(Cell<'a>);

impl ToSql for Bound<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match &self.0 {
            Cell::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Cell::Id(u) => {
                ToSqlOutput::Owned(rusqlite::types::Value::Text(u.hyphenated().to_string()))
            }
            Cell::Int(n) => ToSqlOutput::Borrowed(ValueRef::Integer(*n)),
            Cell::Text(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
            Cell::Time(t) => ToSqlOutput::Owned(rusqlite::types::Value::Text(time(*t))),
        })
    }
}

/// Runs a prepared statement once with `row`'s cells as its parameters.
fn execute(statement: &mut CachedStatement<'_>, row: &dyn Row) -> rusqlite::Result<usize> {
    let mut at = 0;
    let mut bound = Ok(());
    row.cells(&mut |cell| {
        at += 1;
        if bound.is_ok() {
            bound = match cell {
                // Bound without allocating: the text is copied by SQLite.
                Cell::Id(u) => statement.raw_bind_parameter(at, id(u)),
                cell => statement.raw_bind_parameter(at, Bound(cell)),
            };
        }
    });
    bound?;
    statement.raw_execute()
}

/// Runs `sql` once per row, in order.
pub(super) fn run_rows<'r>(
    tx: &Transaction<'_>,
    table: &Table,
    sql: &str,
    rows: impl IntoIterator<Item = &'r dyn Row>,
) -> Result<(), SinkError> {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let context = format!("writing {}", table.name);
    let mut statement = tx.prepare_cached(sql).map_err(sql_error(context.clone()))?;
    for row in rows {
        execute(&mut statement, row).map_err(sql_error(context.clone()))?;
    }
    Ok(())
}

/// Writes rows with the table's own insert.
pub(super) fn insert_rows<'r>(
    tx: &Transaction<'_>,
    table: &Table,
    rows: impl IntoIterator<Item = &'r dyn Row>,
) -> Result<(), SinkError> {
    run_rows(tx, table, &insert_sql(table), rows)
}

/// Deletes rows by key (each key a row of the key's cells).
pub(super) fn delete_keys<'r>(
    tx: &Transaction<'_>,
    table: &Table,
    keys: impl IntoIterator<Item = &'r dyn Row>,
) -> Result<(), SinkError> {
    run_rows(tx, table, &delete_sql(table), keys)
}

/// One view's changes, from its declaration alone: inserts or upserts, then deletes.
pub(super) fn write_changes(
    tx: &Transaction<'_>,
    changes: &dyn TableChanges,
) -> Result<(), SinkError> {
    insert_rows(tx, changes.table(), changes.rows())?;
    delete_keys(tx, changes.table(), changes.deleted_keys())
}

/// A column as `PRAGMA table_info` reports it: name, type, not null, position in the
/// primary key.
#[cfg(test)]
type ColumnInfo = (String, String, bool, i64);

/// The columns `PRAGMA table_info` should report for a declared table.
#[cfg(test)]
pub(super) fn declared_columns(table: &Table) -> Vec<ColumnInfo> {
    table
        .columns
        .iter()
        .map(|c| {
            // A view reports neither keys nor constraints.
            let table_only = table.sqlite_view_of.is_none();
            let pk = match table.key.iter().position(|k| *k == c.name) {
                Some(i) if table_only => i as i64 + 1,
                _ => 0,
            };
            let name = c.name.to_owned();
            (name, c.ty.sqlite().to_owned(), c.not_null && table_only, pk)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;
    use studio_model::tables::TABLES;

    use super::{declared_columns, schema};

    /// Every table's columns and indexes as SQLite reports them.
    fn described(conn: &Connection, table: &str) -> (Vec<super::ColumnInfo>, Vec<String>) {
        let columns = conn
            .prepare(&format!("PRAGMA table_info({table})"))
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(1)?, r.get(2)?, r.get(3)?, r.get(5)?)))?
                    .collect()
            })
            .unwrap();
        let indexes = conn
            .prepare(&format!(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = '{table}' \
                 AND sql IS NOT NULL ORDER BY name"
            ))
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .unwrap();
        (columns, indexes)
    }

    /// Each table's unique and plain indexes, as (unique, columns), sorted: what a
    /// query planner can use, whatever the indexes are named.
    fn index_shapes(conn: &Connection, table: &str) -> Vec<(bool, Vec<String>)> {
        let indexes: Vec<(String, bool)> = conn
            .prepare("SELECT name, \"unique\" FROM pragma_index_list(?1)")
            .and_then(|mut s| {
                s.query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .unwrap();
        let mut shapes: Vec<(bool, Vec<String>)> = indexes
            .into_iter()
            .map(|(name, unique)| {
                let columns = conn
                    .prepare("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")
                    .and_then(|mut s| s.query_map([&name], |r| r.get(0))?.collect())
                    .unwrap();
                (unique, columns)
            })
            .collect();
        shapes.sort();
        shapes
    }

    /// A bulk load's schema, once its indexes are built, answers the same queries with
    /// the same indexes and enforces the same keys as the service's schema.
    #[test]
    fn a_bulk_load_ends_with_the_same_keys_and_indexes() {
        let service = Connection::open_in_memory().unwrap();
        service.execute_batch(&schema()).unwrap();
        let bulk = Connection::open_in_memory().unwrap();
        bulk.execute_batch(&super::bulk_load_schema()).unwrap();
        let deltas_while_loading = index_shapes(&bulk, "deltas");
        assert!(deltas_while_loading.is_empty(), "{deltas_while_loading:?}");
        bulk.execute_batch(&super::bulk_load_indexes()).unwrap();
        for table in TABLES {
            let (columns, _) = described(&bulk, table.name);
            let (expected, _) = described(&service, table.name);
            let without_pk = |c: Vec<super::ColumnInfo>| -> Vec<_> {
                c.into_iter().map(|(n, t, nn, _)| (n, t, nn)).collect()
            };
            assert_eq!(without_pk(columns), without_pk(expected), "{}", table.name);
            assert_eq!(
                index_shapes(&bulk, table.name),
                index_shapes(&service, table.name),
                "{}",
                table.name
            );
        }
    }

    /// A bulk load that stopped before its indexes: the service's open builds the
    /// delta store's key, and only when it is missing.
    #[test]
    fn the_service_adds_a_key_a_stopped_bulk_load_left_out() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&super::bulk_load_schema()).unwrap();
        conn.execute_batch(&schema()).unwrap();
        super::super::add_missing_keys(&conn).unwrap();
        super::super::add_missing_keys(&conn).unwrap();
        let service = Connection::open_in_memory().unwrap();
        service.execute_batch(&schema()).unwrap();
        super::super::add_missing_keys(&service).unwrap();
        assert_eq!(
            index_shapes(&conn, "deltas"),
            index_shapes(&service, "deltas")
        );
    }

    #[test]
    fn the_schema_has_the_declared_columns() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&schema()).unwrap();
        for table in TABLES {
            let (columns, indexes) = described(&conn, table.name);
            assert_eq!(columns, declared_columns(table), "{}", table.name);
            assert_eq!(indexes.len(), table.indexes.len(), "{}", table.name);
        }
    }
}
