//! The schema: the ordered migrations, applied under an advisory lock, and the
//! rebuild's drop of Studio's own tables.

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use studio_model::Uuid;

use super::connection::pg_error;
use super::table::jsonb_text;
use crate::SinkError;
use crate::content::inflate_legacy_lz4;
use crate::open::redact;

/// The migrations, in order: (version, name, SQL). Never edit one that was released;
/// add the next.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "views", include_str!("migrations/0001_views.sql")),
    (2, "deltas", include_str!("migrations/0002_deltas.sql")),
    (
        3,
        "providers",
        include_str!("migrations/0003_providers.sql"),
    ),
    (
        4,
        "delta_store",
        include_str!("migrations/0004_delta_store.sql"),
    ),
    (
        5,
        "documents_as_json",
        include_str!("migrations/0005_documents_as_json.sql"),
    ),
    (
        6,
        "reach_covering_index",
        include_str!("migrations/0006_reach_covering_index.sql"),
    ),
    (7, "access", include_str!("migrations/0007_access.sql")),
    (
        8,
        "row_security",
        include_str!("migrations/0008_row_security.sql"),
    ),
    (9, "results", include_str!("migrations/0009_results.sql")),
];

/// The migration before which `doc_lz4` is turned back into JSON in `doc`.
const DOCUMENTS_AS_JSON: i64 = 5;

/// Applies the migrations not yet recorded in `_studio_migrations`, each in its own
/// transaction, under an advisory lock so that two processes do not race.
pub async fn migrate(conn: &mut PgConnection) -> Result<(), SinkError> {
    const LOCK: i64 = 0x5354_5544_494f; // "STUDIO"
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS _studio_migrations (version bigint PRIMARY KEY, \
         name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&mut *conn)
    .await
    .map_err(pg_error("creating _studio_migrations"))?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(LOCK)
        .execute(&mut *conn)
        .await
        .map_err(pg_error("locking the migrations"))?;
    let result = async {
        let done: Vec<i64> = sqlx::query_scalar("SELECT version FROM _studio_migrations")
            .fetch_all(&mut *conn)
            .await
            .map_err(pg_error("reading _studio_migrations"))?;
        for (version, name, sql) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            let mut tx = conn.begin().await.map_err(pg_error("BEGIN"))?;
            if *version == DOCUMENTS_AS_JSON {
                inflate_legacy_documents(&mut tx).await?;
            }
            sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                .execute(&mut *tx)
                .await
                .map_err(pg_error(format!("applying migration {version} ({name})")))?;
            sqlx::query("INSERT INTO _studio_migrations (version, name) VALUES ($1, $2)")
                .bind(version)
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(pg_error("recording a migration"))?;
            tx.commit().await.map_err(pg_error("COMMIT"))?;
            tracing::info!(version, name, "applied a Postgres migration");
            if *version == DOCUMENTS_AS_JSON {
                log_toast_compression(&mut *conn).await?;
            }
        }
        Ok(())
    }
    .await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK)
        .execute(&mut *conn)
        .await
        .map_err(pg_error("unlocking the migrations"))?;
    result
}

/// Before migration 5: turns the LZ4-compressed documents of `blobs.doc_lz4` (written
/// by earlier versions) back into JSON in `doc`, so that the migration can drop the
/// column. JSONB cannot hold `\u0000`; such a document (which earlier versions
/// compressed for that reason) keeps U+FFFD in its place, with a warning.
async fn inflate_legacy_documents(conn: &mut PgConnection) -> Result<(), SinkError> {
    let packed: Vec<(Uuid, Vec<u8>)> =
        sqlx::query_as("SELECT blob_id, doc_lz4 FROM blobs WHERE doc_lz4 IS NOT NULL")
            .fetch_all(&mut *conn)
            .await
            .map_err(pg_error("reading blobs.doc_lz4"))?;
    for (blob_id, lz4) in &packed {
        let mut json = inflate_legacy_lz4(lz4)?;
        if json.contains("\\u0000") {
            tracing::warn!(%blob_id, "a document held \\u0000, which JSONB cannot hold: stored with U+FFFD instead");
            json = jsonb_text(&json);
        }
        sqlx::query("UPDATE blobs SET doc = $2::jsonb, doc_lz4 = NULL WHERE blob_id = $1")
            .bind(blob_id)
            .bind(json)
            .execute(&mut *conn)
            .await
            .map_err(pg_error("storing a decompressed document"))?;
    }
    if !packed.is_empty() {
        tracing::info!(
            documents = packed.len(),
            "stored the LZ4-compressed documents of blobs.doc_lz4 as JSONB in blobs.doc"
        );
    }
    Ok(())
}

/// Says how Postgres compresses documents: LZ4 when the server has it, else pglz.
async fn log_toast_compression(conn: &mut PgConnection) -> Result<(), SinkError> {
    let lz4: Option<bool> = sqlx::query_scalar(
        "SELECT 'lz4' = ANY (enumvals) FROM pg_settings WHERE name = 'default_toast_compression'",
    )
    .fetch_optional(&mut *conn)
    .await
    .map_err(pg_error("reading default_toast_compression"))?;
    match lz4 {
        Some(true) => tracing::info!("Postgres compresses blobs.doc and large_docs.doc with LZ4"),
        Some(false) => tracing::warn!(
            "this Postgres server was built without LZ4: it compresses blobs.doc and large_docs.doc with pglz"
        ),
        None => tracing::warn!(
            "this Postgres server (before 14) has no per-column compression: documents are compressed with pglz"
        ),
    }
    Ok(())
}

/// Drops Studio's tables in the current schema, refusing when it holds others.
pub(crate) async fn drop_views(conn: &mut PgConnection, url: &str) -> Result<(), SinkError> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'f', 'v', 'm')",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(pg_error("listing the tables"))?;
    let foreign = crate::foreign_tables(tables.iter().map(String::as_str));
    if !foreign.is_empty() {
        return Err(SinkError::Refused(format!(
            "the current schema of {} holds tables Studio did not create ({foreign:?}); a replay \
             drops and rebuilds Studio's tables there, so give Studio a database or schema of its own",
            redact(url)
        )));
    }
    let mut drops: Vec<String> = crate::VIEW_TABLES.iter().map(|t| (*t).to_owned()).collect();
    drops.push(crate::LARGE_DOCS_TABLE.into());
    drops.push("_studio_migrations".into());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {} CASCADE",
        drops.join(", ")
    )))
    .execute(&mut *conn)
    .await
    .map_err(pg_error("dropping the old view tables"))?;
    Ok(())
}
