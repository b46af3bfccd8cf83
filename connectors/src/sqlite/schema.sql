-- Studio's views in SQLite. Times are RFC 3339 UTC text; doc is compact JSON.
CREATE TABLE IF NOT EXISTS blobs (
    blob_id      TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    version      INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    doc          TEXT NOT NULL,
    parent_id    TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    deleted_at   TEXT
);
CREATE TABLE IF NOT EXISTS deltas_applied (
    delta_id    TEXT PRIMARY KEY,
    blob_id     TEXT NOT NULL,
    version     INTEGER NOT NULL,
    operation   TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    provider_id TEXT,
    caused_by   TEXT,
    created_at  TEXT NOT NULL
) WITHOUT ROWID; -- one B-tree keyed by delta_id: small rows, insert-only
CREATE TABLE IF NOT EXISTS processed_by (
    blob_id     TEXT,
    provider_id TEXT,
    version     INTEGER,
    delta_id    TEXT,
    PRIMARY KEY (blob_id, provider_id)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq      INTEGER PRIMARY KEY,
    delta_id TEXT,
    blob_id  TEXT,
    reason   TEXT NOT NULL,
    raw      TEXT NOT NULL
);
