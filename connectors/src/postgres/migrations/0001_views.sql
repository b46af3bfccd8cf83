-- Studio's views in Postgres: the same tables and columns as SQLite's schema.sql, with
-- native types (uuid, timestamptz, jsonb). A document is stored in exactly one of doc
-- (JSONB), doc_lz4 (LZ4 block) or doc_ref (s3:// or file:// reference); doc_bytes is
-- the length of its compact JSON.
CREATE TABLE blobs (
    blob_id      uuid PRIMARY KEY,
    user_id      uuid NOT NULL,
    version      bigint NOT NULL,
    content_type text NOT NULL,
    doc          jsonb,
    doc_lz4      bytea,
    doc_ref      text,
    doc_bytes    bigint NOT NULL,
    parent_id    uuid,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    deleted_at   timestamptz,
    CONSTRAINT blobs_one_content CHECK (num_nonnulls(doc, doc_lz4, doc_ref) = 1)
);
CREATE TABLE deltas_applied (
    delta_id    uuid PRIMARY KEY,
    blob_id     uuid NOT NULL,
    version     bigint NOT NULL,
    operation   text NOT NULL,
    user_id     uuid NOT NULL,
    provider_id text,
    caused_by   uuid,
    created_at  timestamptz NOT NULL
);
CREATE TABLE processed_by (
    blob_id     uuid,
    provider_id text,
    version     bigint,
    delta_id    uuid,
    PRIMARY KEY (blob_id, provider_id)
);
-- seq is assigned by the sink (not a sequence), so a retried transaction leaves no gap.
CREATE TABLE dead_letters (
    seq      bigint PRIMARY KEY,
    delta_id uuid,
    blob_id  uuid,
    reason   text NOT NULL,
    raw      text NOT NULL
);
CREATE TABLE blob_edges (
    parent_id uuid,
    child_id  uuid,
    delta_id  uuid,
    PRIMARY KEY (parent_id, child_id)
);
CREATE INDEX blob_edges_by_child ON blob_edges (child_id);
CREATE TABLE blob_reach (
    ancestor_id   uuid,
    descendant_id uuid,
    distance      bigint,
    PRIMARY KEY (ancestor_id, descendant_id)
);
CREATE INDEX blob_reach_by_descendant ON blob_reach (descendant_id);
CREATE TABLE blob_depth (
    blob_id uuid PRIMARY KEY,
    depth   bigint
);
CREATE TABLE user_depth (
    user_id   uuid PRIMARY KEY,
    max_depth bigint
);
CREATE TABLE rejected_edges (
    delta_id  uuid,
    parent_id uuid,
    child_id  uuid,
    reason    text
);
