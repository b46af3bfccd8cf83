-- The delta store: every accepted delta, partitioned by month of created_at. The sink
-- creates a month's partition (deltas_yYYYYmMM) in the transaction of the first delta
-- that falls in it, old months included. Indexed for "a blob's deltas in version order"
-- and "the deltas caused by X". record (the full delta) stays NULL until the dataflow
-- hands the sinks the full record.
CREATE TABLE deltas (
    delta_id    uuid NOT NULL,
    blob_id     uuid NOT NULL,
    version     bigint NOT NULL,
    operation   text NOT NULL,
    user_id     uuid NOT NULL,
    provider_id text,
    caused_by   uuid,
    created_at  timestamptz NOT NULL,
    record      jsonb,
    PRIMARY KEY (delta_id, created_at)
) PARTITION BY RANGE (created_at);
CREATE INDEX deltas_by_blob ON deltas (blob_id, version);
CREATE INDEX deltas_by_cause ON deltas (caused_by);
