-- `ancestors of X` reads blob_reach by descendant: an index over the columns it returns
-- answers it from the index alone (BENCHMARKS.md, issue 16: p99 3.3x lower on SQLite).
DROP INDEX IF EXISTS blob_reach_by_descendant;
CREATE INDEX IF NOT EXISTS blob_reach_to_ancestors ON blob_reach (descendant_id, ancestor_id, distance);
