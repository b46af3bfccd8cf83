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
    TABLES.iter().map(|t| create_sql(t)).collect()
}

fn create_sql(table: &Table) -> String {
    let columns: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
    if let Some(base) = table.sqlite_view_of {
        return format!(
            "CREATE VIEW IF NOT EXISTS {} AS SELECT {} FROM {base};\n",
            table.name,
            columns.join(", ")
        );
    }
    let single_key = (table.key.len() == 1).then(|| table.key[0]);
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
    if table.key.len() > 1 {
        lines.push(format!("    PRIMARY KEY ({})", table.key.join(", ")));
    }
    let mut sql = format!(
        "CREATE TABLE IF NOT EXISTS {} (\n{}\n);\n",
        table.name,
        lines.join(",\n")
    );
    for index in table.indexes {
        sql.push_str(&format!(
            "CREATE INDEX IF NOT EXISTS {} ON {} ({});\n",
            index.name,
            table.name,
            index.columns.join(", ")
        ));
    }
    sql
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
