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
ALTER PUBLICATION runwire SET (publish = 'insert, update, delete, truncate');
