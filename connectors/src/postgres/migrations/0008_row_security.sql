-- Row-level security for analysts (S6.3, docs/access.md): a role other than the
-- tables' owner that sets `studio.user_id` sees only the rows of blobs that user may
-- read (its owner, or any grant on it); without the setting it sees none. Studio
-- itself writes as the owner, to whom these policies do not apply.
--
-- studio_may_read runs as its owner (SECURITY DEFINER), so that the policy of `blobs`
-- can read `blobs` and `grants` without recursing into their own policies; its
-- search_path is pinned to this schema (pg_temp last), so a caller cannot shadow them.
DO $migration$
BEGIN
  EXECUTE format(
    'CREATE OR REPLACE FUNCTION %I.studio_user() RETURNS uuid LANGUAGE sql STABLE AS '
    '$f$ SELECT nullif(current_setting(''studio.user_id'', true), '''')::uuid $f$',
    current_schema());
  EXECUTE format(
    'CREATE OR REPLACE FUNCTION %I.studio_may_read(blob uuid) RETURNS boolean '
    'LANGUAGE sql STABLE SECURITY DEFINER SET search_path = %I, pg_temp AS '
    '$f$ SELECT EXISTS (SELECT 1 FROM blobs b WHERE b.blob_id = blob AND b.user_id = studio_user()) '
    '   OR EXISTS (SELECT 1 FROM grants g WHERE g.blob_id = blob AND g.user_id = studio_user()) $f$',
    current_schema(), current_schema());
END
$migration$;

ALTER TABLE blobs ENABLE ROW LEVEL SECURITY;
CREATE POLICY studio_readable ON blobs FOR SELECT USING (studio_may_read(blob_id));
ALTER TABLE deltas ENABLE ROW LEVEL SECURITY;
CREATE POLICY studio_readable ON deltas FOR SELECT USING (studio_may_read(blob_id));
ALTER TABLE deltas_applied ENABLE ROW LEVEL SECURITY;
CREATE POLICY studio_readable ON deltas_applied FOR SELECT USING (studio_may_read(blob_id));
ALTER TABLE deltas_waiting ENABLE ROW LEVEL SECURITY;
CREATE POLICY studio_readable ON deltas_waiting FOR SELECT USING (studio_may_read(blob_id));
ALTER TABLE processed_by ENABLE ROW LEVEL SECURITY;
CREATE POLICY studio_readable ON processed_by FOR SELECT USING (studio_may_read(blob_id));
ALTER TABLE blob_depth ENABLE ROW LEVEL SECURITY;
CREATE POLICY studio_readable ON blob_depth FOR SELECT USING (studio_may_read(blob_id));
ALTER TABLE transform_requests ENABLE ROW LEVEL SECURITY;
CREATE POLICY studio_readable ON transform_requests FOR SELECT USING (studio_may_read(blob_id));
ALTER TABLE processing ENABLE ROW LEVEL SECURITY;
CREATE POLICY studio_readable ON processing FOR SELECT USING (studio_may_read(blob_id));
ALTER TABLE events ENABLE ROW LEVEL SECURITY;
CREATE POLICY studio_readable ON events FOR SELECT USING (studio_may_read(blob_id));
ALTER TABLE grants ENABLE ROW LEVEL SECURITY;
CREATE POLICY studio_readable ON grants FOR SELECT USING (studio_may_read(blob_id));
ALTER TABLE grant_log ENABLE ROW LEVEL SECURITY;
CREATE POLICY studio_readable ON grant_log FOR SELECT USING (studio_may_read(blob_id));
-- Malformed records name no blob: only Studio's own role sees them.
ALTER TABLE dead_letters ENABLE ROW LEVEL SECURITY;
CREATE POLICY studio_readable ON dead_letters FOR SELECT
    USING (blob_id IS NOT NULL AND studio_may_read(blob_id));
-- An edge or a reach pair shows when both its ends are readable.
ALTER TABLE blob_edges ENABLE ROW LEVEL SECURITY;
CREATE POLICY studio_readable ON blob_edges FOR SELECT
    USING (studio_may_read(parent_id) AND studio_may_read(child_id));
ALTER TABLE rejected_edges ENABLE ROW LEVEL SECURITY;
CREATE POLICY studio_readable ON rejected_edges FOR SELECT
    USING (studio_may_read(parent_id) AND studio_may_read(child_id));
ALTER TABLE blob_reach ENABLE ROW LEVEL SECURITY;
CREATE POLICY studio_readable ON blob_reach FOR SELECT
    USING (studio_may_read(ancestor_id) AND studio_may_read(descendant_id));
-- A user's own depth.
ALTER TABLE user_depth ENABLE ROW LEVEL SECURITY;
CREATE POLICY studio_readable ON user_depth FOR SELECT USING (user_id = studio_user());
-- No policy: nothing for other roles.
ALTER TABLE checkpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE large_docs ENABLE ROW LEVEL SECURITY;
