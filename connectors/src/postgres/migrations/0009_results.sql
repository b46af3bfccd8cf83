-- Processing results read from the bus (S5.7): the first result of each request, with
-- its record and log position, replayed on restart like the delta store.
CREATE TABLE result_log (
    request_id uuid PRIMARY KEY,
    status     text NOT NULL,
    pos_part   bigint NOT NULL,
    pos_offset bigint NOT NULL,
    record     text NOT NULL
);
