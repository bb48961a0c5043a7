-- runwire's NOTIFY integration: what `runwire migrate --changes notify` applies, and the
-- file a host applies with its own migrations if it prefers (it creates none of the host's
-- tables). Idempotent: applying it again (a newer runwire) replaces what an older one
-- installed. Prefer logical replication (`wal.sql`) where the server allows it: `pg_notify`
-- takes a global lock at commit, so every transaction that fires these triggers commits one
-- at a time (measured: a quarter of the host's write throughput at 32 writers).
--
-- What it installs:
--   * schema `runwire`: the trigger functions, and `runwire.access_changes`, a short log
--     (an hour) of access changes, which runwire reads in the same snapshot as the rows it
--     re-reads — so a state is never published ahead of an access change that committed
--     before it, whatever order notifications arrive in;
--   * a `version` column on operation_runs and review_packs, bumped by a BEFORE trigger on
--     every real change (an UPDATE that changes nothing keeps the version), so every state
--     runwire streams has a strictly increasing id;
--   * AFTER triggers that pg_notify('runwire', payload) once a change is made. A payload is a
--     doorbell, not the truth: runwire re-reads the rows and the access facts, so a forged
--     NOTIFY cannot fake a state or grant access;
--   * indexes for the reads runwire makes (latest pack per tenant, active runs per workspace).
--
-- Payloads (k = kind):
--   {"k":"run","id","w","t","v"[,"ow"]}  a run was inserted, changed or deleted; "ow" is the
--                                         workspace it moved from
--   {"k":"pack","id","w","t","v"[,"ot"]} a review pack likewise; "ot" the tenant it moved from
--   {"k":"member","u"}                   a user's memberships changed, or the user was deleted
--   {"k":"tenant","t"}                   a tenant moved to another workspace or was deleted
--   {"k":"access"}                       anything else access depends on changed wholesale
--                                         (a workspace deleted, a membership table truncated)
--   {"k":"runs"} / {"k":"packs"}         operation_runs / review_packs was truncated
--
-- The functions run as their owner (SECURITY DEFINER), so the host's own roles need no
-- rights on schema `runwire`. NOTIFY is delivered at commit, and only if the transaction
-- commits.

CREATE SCHEMA IF NOT EXISTS runwire;
GRANT USAGE ON SCHEMA runwire TO PUBLIC;

-- Only ids and kinds, kept for an hour: readable by runwire's read-only role without a grant
-- of its own.
CREATE TABLE IF NOT EXISTS runwire.access_changes (
    id BIGSERIAL PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    at TIMESTAMPTZ NOT NULL DEFAULT now(),
    kind TEXT NOT NULL,
    user_id BIGINT,
    tenant_id BIGINT
);
GRANT SELECT ON runwire.access_changes TO PUBLIC;

ALTER TABLE operation_runs ADD COLUMN IF NOT EXISTS version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE review_packs ADD COLUMN IF NOT EXISTS version BIGINT NOT NULL DEFAULT 1;

CREATE OR REPLACE FUNCTION runwire.bump_version() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    NEW.version := OLD.version;
    -- Compared as text: every column type has a text form, not every one an equality
    -- operator (`json` has none, and Laravel's `$table->json()` makes json).
    IF NEW::text = OLD::text THEN
        RETURN NEW;
    END IF;
    NEW.version := OLD.version + 1;
    RETURN NEW;
END;
$$;

-- Records an access change (and forgets those older than an hour, without waiting on rows
-- another transaction is forgetting).
CREATE OR REPLACE FUNCTION runwire.log_access(k text, u bigint, t bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO runwire.access_changes (kind, user_id, tenant_id) VALUES (k, u, t);
    DELETE FROM runwire.access_changes WHERE id IN (
        SELECT id FROM runwire.access_changes WHERE at < now() - interval '1 hour'
        FOR UPDATE SKIP LOCKED);
END;
$$;

-- A run or pack changed. Streams of a deleted item end with `gone`; a moved item is
-- re-authorised for its new owner before anything of it is sent, and the old owner's side
-- (the workspace feed it left, the tenant card it left) is re-read too.
CREATE OR REPLACE FUNCTION runwire.notify_item() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    item RECORD;
    payload jsonb;
BEGIN
    IF TG_OP = 'DELETE' THEN
        item := OLD;
    ELSE
        item := NEW;
    END IF;
    payload := jsonb_build_object(
        'k', TG_ARGV[0],
        'id', item.id,
        'w', item.workspace_id,
        't', item.tenant_id,
        'v', item.version);
    IF TG_OP = 'UPDATE' AND OLD.workspace_id IS DISTINCT FROM NEW.workspace_id THEN
        payload := payload || jsonb_build_object('ow', OLD.workspace_id);
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.tenant_id IS DISTINCT FROM NEW.tenant_id THEN
        payload := payload || jsonb_build_object('ot', OLD.tenant_id);
    END IF;
    PERFORM pg_notify('runwire', payload::text);
    RETURN NULL;
END;
$$;

-- A membership changed: the user's open streams re-check their access.
CREATE OR REPLACE FUNCTION runwire.notify_member() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM runwire.log_access('member', OLD.user_id, NULL);
        PERFORM pg_notify('runwire', json_build_object('k', 'member', 'u', OLD.user_id)::text);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.user_id IS DISTINCT FROM OLD.user_id) THEN
        PERFORM runwire.log_access('member', NEW.user_id, NULL);
        PERFORM pg_notify('runwire', json_build_object('k', 'member', 'u', NEW.user_id)::text);
    END IF;
    RETURN NULL;
END;
$$;

-- A user was deleted (their memberships cascade too, but say it directly).
CREATE OR REPLACE FUNCTION runwire.notify_user() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM runwire.log_access('member', OLD.id, NULL);
    PERFORM pg_notify('runwire', json_build_object('k', 'member', 'u', OLD.id)::text);
    RETURN NULL;
END;
$$;

-- A tenant moved to another workspace or was deleted: whose access it grants changed.
CREATE OR REPLACE FUNCTION runwire.notify_tenant() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'DELETE' OR NEW.workspace_id IS DISTINCT FROM OLD.workspace_id THEN
        PERFORM runwire.log_access('tenant', NULL, OLD.id);
        PERFORM pg_notify('runwire', json_build_object('k', 'tenant', 't', OLD.id)::text);
    END IF;
    RETURN NULL;
END;
$$;

-- Statement-level: a whole table changed at once (TRUNCATE, a deleted workspace).
CREATE OR REPLACE FUNCTION runwire.notify_table() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_ARGV[0] = 'access' THEN
        PERFORM runwire.log_access('access', NULL, NULL);
    END IF;
    PERFORM pg_notify('runwire', json_build_object('k', TG_ARGV[0])::text);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS runwire_version ON operation_runs;
CREATE TRIGGER runwire_version BEFORE UPDATE ON operation_runs
    FOR EACH ROW EXECUTE FUNCTION runwire.bump_version();

DROP TRIGGER IF EXISTS runwire_version ON review_packs;
CREATE TRIGGER runwire_version BEFORE UPDATE ON review_packs
    FOR EACH ROW EXECUTE FUNCTION runwire.bump_version();

DROP TRIGGER IF EXISTS runwire_notify_insert ON operation_runs;
CREATE TRIGGER runwire_notify_insert AFTER INSERT OR DELETE ON operation_runs
    FOR EACH ROW EXECUTE FUNCTION runwire.notify_item('run');

DROP TRIGGER IF EXISTS runwire_notify_update ON operation_runs;
CREATE TRIGGER runwire_notify_update AFTER UPDATE ON operation_runs
    FOR EACH ROW WHEN (OLD.version IS DISTINCT FROM NEW.version)
    EXECUTE FUNCTION runwire.notify_item('run');

DROP TRIGGER IF EXISTS runwire_notify_truncate ON operation_runs;
CREATE TRIGGER runwire_notify_truncate AFTER TRUNCATE ON operation_runs
    FOR EACH STATEMENT EXECUTE FUNCTION runwire.notify_table('runs');

DROP TRIGGER IF EXISTS runwire_notify_insert ON review_packs;
CREATE TRIGGER runwire_notify_insert AFTER INSERT OR DELETE ON review_packs
    FOR EACH ROW EXECUTE FUNCTION runwire.notify_item('pack');

DROP TRIGGER IF EXISTS runwire_notify_update ON review_packs;
CREATE TRIGGER runwire_notify_update AFTER UPDATE ON review_packs
    FOR EACH ROW WHEN (OLD.version IS DISTINCT FROM NEW.version)
    EXECUTE FUNCTION runwire.notify_item('pack');

DROP TRIGGER IF EXISTS runwire_notify_truncate ON review_packs;
CREATE TRIGGER runwire_notify_truncate AFTER TRUNCATE ON review_packs
    FOR EACH STATEMENT EXECUTE FUNCTION runwire.notify_table('packs');

-- Losing access must end open streams; gaining it widens what a workspace feed shows.
DROP TRIGGER IF EXISTS runwire_notify_member ON workspace_memberships;
CREATE TRIGGER runwire_notify_member AFTER INSERT OR UPDATE OR DELETE ON workspace_memberships
    FOR EACH ROW EXECUTE FUNCTION runwire.notify_member();

DROP TRIGGER IF EXISTS runwire_notify_member ON tenant_memberships;
CREATE TRIGGER runwire_notify_member AFTER INSERT OR UPDATE OR DELETE ON tenant_memberships
    FOR EACH ROW EXECUTE FUNCTION runwire.notify_member();

DROP TRIGGER IF EXISTS runwire_notify_truncate ON workspace_memberships;
CREATE TRIGGER runwire_notify_truncate AFTER TRUNCATE ON workspace_memberships
    FOR EACH STATEMENT EXECUTE FUNCTION runwire.notify_table('access');

DROP TRIGGER IF EXISTS runwire_notify_truncate ON tenant_memberships;
CREATE TRIGGER runwire_notify_truncate AFTER TRUNCATE ON tenant_memberships
    FOR EACH STATEMENT EXECUTE FUNCTION runwire.notify_table('access');

DROP TRIGGER IF EXISTS runwire_notify_tenant ON tenants;
CREATE TRIGGER runwire_notify_tenant AFTER UPDATE OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION runwire.notify_tenant();

DROP TRIGGER IF EXISTS runwire_notify_truncate ON tenants;
CREATE TRIGGER runwire_notify_truncate AFTER TRUNCATE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION runwire.notify_table('access');

DROP TRIGGER IF EXISTS runwire_notify_delete ON workspaces;
CREATE TRIGGER runwire_notify_delete AFTER DELETE OR TRUNCATE ON workspaces
    FOR EACH STATEMENT EXECUTE FUNCTION runwire.notify_table('access');

DROP TRIGGER IF EXISTS runwire_notify_delete ON users;
CREATE TRIGGER runwire_notify_delete AFTER DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION runwire.notify_user();

DROP TRIGGER IF EXISTS runwire_notify_truncate ON users;
CREATE TRIGGER runwire_notify_truncate AFTER TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION runwire.notify_table('access');

-- An older runwire kept its functions in the host's schema.
DROP FUNCTION IF EXISTS public.runwire_bump_version();
DROP FUNCTION IF EXISTS public.runwire_notify_item();
DROP FUNCTION IF EXISTS public.runwire_notify_member();
DROP FUNCTION IF EXISTS public.runwire_notify_user();
DROP FUNCTION IF EXISTS public.runwire_notify_tenant();
DROP FUNCTION IF EXISTS public.runwire_notify_table();

CREATE INDEX IF NOT EXISTS review_packs_tenant_latest
    ON review_packs (tenant_id, created_at DESC NULLS LAST, id DESC);
CREATE INDEX IF NOT EXISTS operation_runs_workspace_active
    ON operation_runs (workspace_id, status);
