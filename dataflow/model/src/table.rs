//! Tables declared once: a [`Table`] names a table's columns with their types, its
//! key and how it is written ([`Kind`]); a [`Row`] hands out its values as [`Cell`]s in
//! column order. Both SQL dialects (SQLite's DDL, every store's inserts, upserts and
//! deletes) are generated from these, in `studio-connectors`.

use std::borrow::Cow;

use uuid::Uuid;

use crate::Timestamp;

/// A column's type, which each dialect spells its own way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    /// A UUID: `uuid`, or hyphenated lower-case text in SQLite.
    Id,
    /// A 64-bit integer.
    Int,
    /// Text. Postgres text cannot hold NUL: it is written as U+FFFD there.
    Text,
    /// A record's bytes as text ([`crate::dead_letter::raw_text`]); Postgres stores
    /// text holding NUL in its `base64:` form.
    Raw,
    /// A time: `timestamptz`, or RFC 3339 UTC text in SQLite.
    Time,
    /// JSON: `jsonb`, or text in SQLite.
    Json,
    /// A number the store assigns in insertion order: SQLite's rowid, or the sink's
    /// counter in Postgres. Rows do not carry it.
    Seq,
}

impl ColumnType {
    /// The SQLite type.
    pub const fn sqlite(self) -> &'static str {
        match self {
            ColumnType::Int | ColumnType::Seq => "INTEGER",
            _ => "TEXT",
        }
    }

    /// The Postgres type, as an `UNNEST` cast names it.
    pub const fn postgres(self) -> &'static str {
        match self {
            ColumnType::Id => "uuid",
            ColumnType::Int | ColumnType::Seq => "int8",
            ColumnType::Text | ColumnType::Raw => "text",
            ColumnType::Time => "timestamptz",
            ColumnType::Json => "jsonb",
        }
    }
}

/// One column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: &'static str,
    /// Its type.
    pub ty: ColumnType,
    /// `NOT NULL` (in SQLite; Postgres columns added by a later migration may be
    /// nullable for rows written before it).
    pub not_null: bool,
}

/// A nullable column.
pub const fn column(name: &'static str, ty: ColumnType) -> Column {
    Column {
        name,
        ty,
        not_null: false,
    }
}

/// A `NOT NULL` column.
pub const fn required(name: &'static str, ty: ColumnType) -> Column {
    Column {
        name,
        ty,
        not_null: true,
    }
}

/// How a table's rows change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One row per key, replaced by an upsert, removed by a delete.
    Upsert,
    /// One row per key, written once (a row already there stays), removed by a delete.
    InsertOnce,
    /// Insert-only. Postgres ignores a row whose key exists: a batch retried after a
    /// commit whose acknowledgement was lost writes nothing twice.
    Append,
}

/// A secondary index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Index {
    /// Its name.
    pub name: &'static str,
    /// Its columns.
    pub columns: &'static [&'static str],
}

/// One table, declared once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    /// Its name.
    pub name: &'static str,
    /// Its columns, in order (the order rows hand out their cells).
    pub columns: &'static [Column],
    /// The primary key's columns (empty: none).
    pub key: &'static [&'static str],
    /// How rows change.
    pub kind: Kind,
    /// Secondary indexes.
    pub indexes: &'static [Index],
    /// In SQLite, a view of this table's columns over the named table, whose rows
    /// are written once there (Postgres keeps a table of its own).
    pub sqlite_view_of: Option<&'static str>,
}

impl Table {
    /// A table with no secondary index that is a table in every store.
    pub const fn new(
        name: &'static str,
        kind: Kind,
        key: &'static [&'static str],
        columns: &'static [Column],
    ) -> Self {
        Table {
            name,
            columns,
            key,
            kind,
            indexes: &[],
            sqlite_view_of: None,
        }
    }

    /// With these secondary indexes.
    pub const fn indexed(self, indexes: &'static [Index]) -> Self {
        Table { indexes, ..self }
    }

    /// The columns a row supplies (all but [`ColumnType::Seq`]).
    pub fn row_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.ty != ColumnType::Seq)
    }

    /// The key's columns.
    pub fn key_columns(&self) -> impl Iterator<Item = &Column> {
        self.key.iter().map(|k| {
            self.columns
                .iter()
                .find(|c| c.name == *k)
                .expect("key columns are columns")
        })
    }
}

/// One value of a row, as every store binds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cell<'a> {
    /// `NULL`.
    Null,
    /// A UUID.
    Id(Uuid),
    /// An integer.
    Int(i64),
    /// Text (also JSON text and raw records).
    Text(Cow<'a, str>),
    /// A time.
    Time(Timestamp),
}

impl From<Uuid> for Cell<'_> {
    fn from(id: Uuid) -> Self {
        Cell::Id(id)
    }
}

impl From<u64> for Cell<'_> {
    fn from(n: u64) -> Self {
        Cell::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<u32> for Cell<'_> {
    fn from(n: u32) -> Self {
        Cell::Int(n.into())
    }
}

impl From<i64> for Cell<'_> {
    fn from(n: i64) -> Self {
        Cell::Int(n)
    }
}

impl<'a> From<&'a str> for Cell<'a> {
    fn from(text: &'a str) -> Self {
        Cell::Text(Cow::Borrowed(text))
    }
}

impl From<String> for Cell<'_> {
    fn from(text: String) -> Self {
        Cell::Text(Cow::Owned(text))
    }
}

impl<'a> From<Cow<'a, str>> for Cell<'a> {
    fn from(text: Cow<'a, str>) -> Self {
        Cell::Text(text)
    }
}

impl From<Timestamp> for Cell<'_> {
    fn from(t: Timestamp) -> Self {
        Cell::Time(t)
    }
}

impl<'a, T: Into<Cell<'a>>> From<Option<T>> for Cell<'a> {
    fn from(value: Option<T>) -> Self {
        value.map_or(Cell::Null, Into::into)
    }
}

/// A row of a [`Table`]: its values in column order (without [`ColumnType::Seq`]
/// columns). A key (`Uuid`, a pair) is a row of its key columns.
pub trait Row {
    /// Hands each value to `each`, in column order.
    fn cells<'a>(&'a self, each: &mut dyn FnMut(Cell<'a>));
}

impl Row for Uuid {
    fn cells<'a>(&'a self, each: &mut dyn FnMut(Cell<'a>)) {
        each(Cell::Id(*self));
    }
}

impl Row for (Uuid, Uuid) {
    fn cells<'a>(&'a self, each: &mut dyn FnMut(Cell<'a>)) {
        each(Cell::Id(self.0));
        each(Cell::Id(self.1));
    }
}

impl Row for (Uuid, String) {
    fn cells<'a>(&'a self, each: &mut dyn FnMut(Cell<'a>)) {
        each(Cell::Id(self.0));
        each(self.1.as_str().into());
    }
}

/// Declares a table and its row type's [`Row`] at once: each column beside the value
/// a row gives it (none for a [`ColumnType::Seq`] column).
macro_rules! table {
    (
        $(#[$doc:meta])*
        $name:ident = $table:literal, $kind:ident by [$($key:literal),*],
        $row:ty => |$r:ident| {
            $($make:ident($column:literal, $ty:ident) $(=> $value:expr)?),+ $(,)?
        }
        $(indexed [$($index:literal on [$($on:literal),+]),+])?
    ) => {
        $(#[$doc])*
        pub const $name: Table = Table::new(
            $table,
            Kind::$kind,
            &[$($key),*],
            &[$($make($column, $ty)),+],
        )$(.indexed(&[$(Index { name: $index, columns: &[$($on),+] }),+]))?;

        impl Row for $row {
            fn cells<'a>(&'a self, each: &mut dyn FnMut($crate::table::Cell<'a>)) {
                let $r = self;
                $($(each($value.into());)?)+
            }
        }
    };
}
pub(crate) use table;
