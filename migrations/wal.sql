-- runwire's logical-replication integration: what `runwire migrate --changes wal` applies.
-- Nothing on the host's tables — no column, no trigger: one publication that names the
-- seven tables runwire reads. runwire attaches with a temporary replication slot of its own
-- (dropped when its connection ends, so a stopped or crashed runwire never holds WAL back)
-- and decodes the changes with the built-in `pgoutput` plugin.
--
-- Needs `wal_level = logical` on the server; runwire's role needs REPLICATION (besides
-- SELECT on the seven tables). Creating the publication needs ownership of the tables.
-- Idempotent.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'runwire') THEN
        CREATE PUBLICATION runwire;
    END IF;
END;
$$;

ALTER PUBLICATION runwire SET TABLE users, workspaces, workspace_memberships, tenants,
    tenant_memberships, operation_runs, review_packs;
-- A partitioned table's changes arrive under its own name (not its partitions'), as runwire
-- knows the tables.
ALTER PUBLICATION runwire SET (publish = 'insert, update, delete, truncate',
                               publish_via_partition_root = true);

-- A published table needs a replica identity, or Postgres refuses every UPDATE and DELETE of
-- it ("does not have a replica identity and publishes updates"). A table without a primary
-- key (a Laravel pivot of two foreignIds has none), or whose identity is NOTHING or a dropped
-- index, gets REPLICA IDENTITY FULL: the host's writes go on, and their messages carry the
-- whole old row (which tells runwire whose membership changed). Left as is by remove_wal.sql.
DO $$
DECLARE
    t regclass;
BEGIN
    FOR t IN
        SELECT c.oid::regclass FROM pg_class c
        WHERE c.oid IN (to_regclass('users'), to_regclass('workspaces'),
                        to_regclass('workspace_memberships'), to_regclass('tenants'),
                        to_regclass('tenant_memberships'), to_regclass('operation_runs'),
                        to_regclass('review_packs'))
          AND CASE c.relreplident
              WHEN 'd' THEN NOT EXISTS (SELECT 1 FROM pg_index i
                                        WHERE i.indrelid = c.oid AND i.indisprimary)
              WHEN 'i' THEN NOT EXISTS (SELECT 1 FROM pg_index i
                                        WHERE i.indrelid = c.oid AND i.indisreplident)
              WHEN 'n' THEN true
              ELSE false
              END
    LOOP
        EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', t);
    END LOOP;
END;
$$;
