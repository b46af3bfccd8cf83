-- Providers (S5.7, S5.8): the same tables as SQLite's. The Postgres sink does not
-- write them yet (`studio replay --providers` and `--events` refuse a Postgres --db,
-- saying so); they exist so that both stores have one schema.
CREATE TABLE transform_requests (
    request_id  uuid PRIMARY KEY,
    provider_id text NOT NULL,
    blob_id     uuid NOT NULL,
    version     bigint NOT NULL,
    fingerprint text NOT NULL,
    created_at  timestamptz NOT NULL,
    status      text NOT NULL
);
CREATE INDEX transform_requests_by_blob ON transform_requests (blob_id, provider_id);
CREATE TABLE processing (
    request_id  uuid PRIMARY KEY,
    provider_id text NOT NULL,
    blob_id     uuid NOT NULL,
    version     bigint NOT NULL,
    status      text NOT NULL,
    attempts    bigint NOT NULL,
    error       text,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL
);
CREATE TABLE events (
    seq         bigint PRIMARY KEY,
    type        text NOT NULL,
    blob_id     uuid NOT NULL,
    delta_id    uuid,
    provider_id text,
    at          timestamptz NOT NULL,
    payload     jsonb NOT NULL
);
