-- Documents as JSON that SQL reads (`doc->>'content'`), compressed by Postgres itself:
-- Studio no longer compresses documents by hand into doc_lz4. Before this file runs,
-- the sink has turned every doc_lz4 row back into JSON in doc (`migrate` in
-- connectors/src/postgres/mod.rs), so dropping the column loses nothing.
ALTER TABLE blobs DROP CONSTRAINT blobs_one_content;
ALTER TABLE blobs DROP COLUMN doc_lz4;
ALTER TABLE blobs ADD CONSTRAINT blobs_one_content CHECK (num_nonnulls(doc, doc_ref) = 1);
-- Large documents (content.large_min_bytes and up) when no other large store is
-- configured: blobs.doc_ref is 'postgres:large_docs/blobs/{blob_id}/v{version}.json'
-- and names the row here (join USING (doc_ref)). text, not jsonb: it holds the
-- compact JSON as written, up to Postgres's 1 GB per value.
CREATE TABLE large_docs (
    doc_ref text PRIMARY KEY,
    doc     text NOT NULL
);
-- TOAST compression (PostgreSQL 14+): LZ4 where the server was built with it, else
-- pglz (the sink logs which). Older servers compress with pglz, unasked.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_settings
               WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        ALTER TABLE blobs ALTER COLUMN doc SET COMPRESSION lz4;
        ALTER TABLE large_docs ALTER COLUMN doc SET COMPRESSION lz4;
    ELSIF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression') THEN
        ALTER TABLE blobs ALTER COLUMN doc SET COMPRESSION pglz;
        ALTER TABLE large_docs ALTER COLUMN doc SET COMPRESSION pglz;
    END IF;
END
$$;
