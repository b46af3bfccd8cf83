-- Access control (S6): the live grants, and every accepted grant record with its log
-- position (replayed on restart like the delta store).
CREATE TABLE grants (
    blob_id    uuid NOT NULL,
    user_id    uuid NOT NULL,
    permission text NOT NULL,
    granted_by uuid NOT NULL,
    granted_at timestamptz NOT NULL,
    PRIMARY KEY (blob_id, user_id, permission)
);
CREATE INDEX grants_by_user ON grants (user_id, blob_id);
CREATE TABLE grant_log (
    grant_id   uuid PRIMARY KEY,
    blob_id    uuid NOT NULL,
    kind       text NOT NULL,
    pos_part   bigint NOT NULL,
    pos_offset bigint NOT NULL,
    record     text NOT NULL
);
