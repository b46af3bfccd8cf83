-- The delta store for restarts (`ViewSink::recover`), as in SQLite's schema.sql: every
-- accepted delta's full record and log position, the deltas waiting for a gap, and
-- where each live source was when the views were last committed.
--
-- record is TEXT, not JSONB: it holds the delta exactly as read (JSONB would reorder
-- its keys and drop its whitespace). An accepted delta is valid JSON, whose strings
-- cannot hold a raw NUL, so Postgres text can hold every record. record, pos_part and
-- pos_offset are NULL only in rows written before this migration.
--
-- (Since this version the sink also writes the provider tables of 0003.)
ALTER TABLE deltas ALTER COLUMN record TYPE text USING record::text;
ALTER TABLE deltas ADD COLUMN pos_part bigint, ADD COLUMN pos_offset bigint;
-- Rejected deltas are replayed too, so that a later copy stays a duplicate (S4.2).
ALTER TABLE dead_letters ADD COLUMN pos_part bigint, ADD COLUMN pos_offset bigint;
CREATE TABLE deltas_waiting (
    delta_id   uuid PRIMARY KEY,
    blob_id    uuid NOT NULL,
    version    bigint NOT NULL,
    pos_part   bigint NOT NULL,
    pos_offset bigint NOT NULL,
    record     text NOT NULL
);
-- positions: [[part, offset], ...] (connectors::positions_json), written in the same
-- transaction as the views.
CREATE TABLE checkpoints (
    source    text PRIMARY KEY,
    positions jsonb NOT NULL,
    next_seq  bigint NOT NULL
);
