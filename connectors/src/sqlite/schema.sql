-- Studio's views in SQLite. Times are RFC 3339 UTC text; doc is compact JSON.
-- The same tables and columns as the Postgres migrations (connectors/src/postgres/migrations).
-- A document is stored in exactly one of doc (JSON text, for SQLite's JSON functions) or
-- doc_ref (a large store's reference); doc_bytes is its JSON length (connectors/src/content).
CREATE TABLE IF NOT EXISTS blobs (
    blob_id      TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    version      INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    doc          TEXT,
    doc_ref      TEXT,
    doc_bytes    INTEGER NOT NULL,
    parent_id    TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    deleted_at   TEXT
);
-- The delta store: every accepted delta, by blob in version order and by cause, with
-- the full record as read and its log position (pos_part, pos_offset: the order a
-- restart replays it in). In Postgres it is partitioned by month of created_at.
CREATE TABLE IF NOT EXISTS deltas (
    delta_id    TEXT NOT NULL,
    blob_id     TEXT NOT NULL,
    version     INTEGER NOT NULL,
    operation   TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    provider_id TEXT,
    caused_by   TEXT,
    created_at  TEXT NOT NULL,
    record      TEXT,
    pos_part    INTEGER NOT NULL,
    pos_offset  INTEGER NOT NULL,
    PRIMARY KEY (delta_id, created_at)
);
CREATE INDEX IF NOT EXISTS deltas_by_blob ON deltas (blob_id, version);
CREATE INDEX IF NOT EXISTS deltas_by_cause ON deltas (caused_by);
-- The accepted deltas (the delta.applied events): the delta store's columns without
-- the record. A view, so that each accepted delta is written once; lookups by
-- delta_id use the delta store's primary key.
CREATE VIEW IF NOT EXISTS deltas_applied AS
    SELECT delta_id, blob_id, version, operation, user_id, provider_id, caused_by, created_at
    FROM deltas;
-- Deltas waiting for a gap to fill (S4.1), kept so that a restart does not lose them.
CREATE TABLE IF NOT EXISTS deltas_waiting (
    delta_id   TEXT PRIMARY KEY,
    blob_id    TEXT NOT NULL,
    version    INTEGER NOT NULL,
    pos_part   INTEGER NOT NULL,
    pos_offset INTEGER NOT NULL,
    record     TEXT NOT NULL
);
-- Where each live source was when the views were last committed (`studio run`),
-- written in the same transaction as the views.
CREATE TABLE IF NOT EXISTS checkpoints (
    source     TEXT PRIMARY KEY,
    positions  TEXT NOT NULL,
    next_seq   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS processed_by (
    blob_id     TEXT,
    provider_id TEXT,
    version     INTEGER,
    delta_id    TEXT,
    PRIMARY KEY (blob_id, provider_id)
);
-- Rejected records in the order they were decided, with their log position: a
-- restart replays the rejected deltas (not the malformed records, not the expired
-- gaps) so that a later copy of one is still a duplicate (S4.2).
CREATE TABLE IF NOT EXISTS dead_letters (
    seq        INTEGER PRIMARY KEY,
    delta_id   TEXT,
    blob_id    TEXT,
    reason     TEXT NOT NULL,
    raw        TEXT NOT NULL,
    pos_part   INTEGER NOT NULL,
    pos_offset INTEGER NOT NULL
);
-- The blob DAG (S5.1, S5.2): edges whose two ends exist, the closure with shortest
-- distances, each blob's longest path from a root, each user's deepest blob.
CREATE TABLE IF NOT EXISTS blob_edges (
    parent_id TEXT,
    child_id  TEXT,
    delta_id  TEXT,
    PRIMARY KEY (parent_id, child_id)
);
CREATE INDEX IF NOT EXISTS blob_edges_by_child ON blob_edges (child_id);
CREATE TABLE IF NOT EXISTS blob_reach (
    ancestor_id   TEXT,
    descendant_id TEXT,
    distance      INTEGER,
    PRIMARY KEY (ancestor_id, descendant_id)
);
CREATE INDEX IF NOT EXISTS blob_reach_by_descendant ON blob_reach (descendant_id);
CREATE TABLE IF NOT EXISTS blob_depth (
    blob_id TEXT PRIMARY KEY,
    depth   INTEGER
);
CREATE TABLE IF NOT EXISTS user_depth (
    user_id   TEXT PRIMARY KEY,
    max_depth INTEGER
);
CREATE TABLE IF NOT EXISTS rejected_edges (
    delta_id  TEXT,
    parent_id TEXT,
    child_id  TEXT,
    reason    TEXT
);
-- Providers (S5.7, S5.8): every transform request emitted, with its latest status
-- (pending, superseded, completed, failed); the workers' results; the events.
CREATE TABLE IF NOT EXISTS transform_requests (
    request_id  TEXT PRIMARY KEY,
    provider_id TEXT NOT NULL,
    blob_id     TEXT NOT NULL,
    version     INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    status      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS transform_requests_by_blob ON transform_requests (blob_id, provider_id);
CREATE TABLE IF NOT EXISTS processing (
    request_id  TEXT PRIMARY KEY,
    provider_id TEXT NOT NULL,
    blob_id     TEXT NOT NULL,
    version     INTEGER NOT NULL,
    status      TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    error       TEXT,
    started_at  TEXT NOT NULL,
    finished_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq         INTEGER PRIMARY KEY,
    type        TEXT NOT NULL,
    blob_id     TEXT NOT NULL,
    delta_id    TEXT,
    provider_id TEXT,
    at          TEXT NOT NULL,
    payload     TEXT NOT NULL
);
