-- runwire's integration point. This is the only file a host application needs to apply to
-- its own database (it touches the host's tables but creates none of them). It is
-- idempotent: applying it again (a newer runwire) replaces what an older one installed.
--
--   * a `version` column on operation_runs and review_packs, bumped by a BEFORE trigger on
--     every real change (an UPDATE that changes nothing keeps the version), so every state
--     runwire streams has a strictly increasing id;
--   * AFTER triggers that pg_notify('runwire', payload) once a change is made. A payload is a
--     doorbell, not the truth: runwire re-reads the rows and the access facts, so a forged
--     NOTIFY cannot fake a state or grant access. Every change that runwire's answers
--     depend on rings: the watched rows themselves (including moves and deletes), and
--     everything access depends on (memberships, tenants, workspaces, users);
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
-- NOTIFY is delivered at commit, and only if the transaction commits.

ALTER TABLE operation_runs ADD COLUMN IF NOT EXISTS version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE review_packs ADD COLUMN IF NOT EXISTS version BIGINT NOT NULL DEFAULT 1;

CREATE OR REPLACE FUNCTION runwire_bump_version() RETURNS trigger
LANGUAGE plpgsql AS $$
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

-- A run or pack changed. Streams of a deleted item end with `gone`; a moved item is
-- re-authorised for its new owner before anything of it is sent, and the old owner's side
-- (the workspace feed it left, the tenant card it left) is re-read too.
CREATE OR REPLACE FUNCTION runwire_notify_item() RETURNS trigger
LANGUAGE plpgsql AS $$
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
CREATE OR REPLACE FUNCTION runwire_notify_member() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM pg_notify('runwire', json_build_object('k', 'member', 'u', OLD.user_id)::text);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.user_id IS DISTINCT FROM OLD.user_id) THEN
        PERFORM pg_notify('runwire', json_build_object('k', 'member', 'u', NEW.user_id)::text);
    END IF;
    RETURN NULL;
END;
$$;

-- A user was deleted (their memberships cascade too, but say it directly).
CREATE OR REPLACE FUNCTION runwire_notify_user() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('runwire', json_build_object('k', 'member', 'u', OLD.id)::text);
    RETURN NULL;
END;
$$;

-- A tenant moved to another workspace or was deleted: whose access it grants changed.
CREATE OR REPLACE FUNCTION runwire_notify_tenant() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR NEW.workspace_id IS DISTINCT FROM OLD.workspace_id THEN
        PERFORM pg_notify('runwire', json_build_object('k', 'tenant', 't', OLD.id)::text);
    END IF;
    RETURN NULL;
END;
$$;

-- Statement-level: a whole table changed at once (TRUNCATE, a deleted workspace).
CREATE OR REPLACE FUNCTION runwire_notify_table() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('runwire', json_build_object('k', TG_ARGV[0])::text);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS runwire_version ON operation_runs;
CREATE TRIGGER runwire_version BEFORE UPDATE ON operation_runs
    FOR EACH ROW EXECUTE FUNCTION runwire_bump_version();

DROP TRIGGER IF EXISTS runwire_version ON review_packs;
CREATE TRIGGER runwire_version BEFORE UPDATE ON review_packs
    FOR EACH ROW EXECUTE FUNCTION runwire_bump_version();

DROP TRIGGER IF EXISTS runwire_notify_insert ON operation_runs;
CREATE TRIGGER runwire_notify_insert AFTER INSERT OR DELETE ON operation_runs
    FOR EACH ROW EXECUTE FUNCTION runwire_notify_item('run');

DROP TRIGGER IF EXISTS runwire_notify_update ON operation_runs;
CREATE TRIGGER runwire_notify_update AFTER UPDATE ON operation_runs
    FOR EACH ROW WHEN (OLD.version IS DISTINCT FROM NEW.version)
    EXECUTE FUNCTION runwire_notify_item('run');

DROP TRIGGER IF EXISTS runwire_notify_truncate ON operation_runs;
CREATE TRIGGER runwire_notify_truncate AFTER TRUNCATE ON operation_runs
    FOR EACH STATEMENT EXECUTE FUNCTION runwire_notify_table('runs');

DROP TRIGGER IF EXISTS runwire_notify_insert ON review_packs;
CREATE TRIGGER runwire_notify_insert AFTER INSERT OR DELETE ON review_packs
    FOR EACH ROW EXECUTE FUNCTION runwire_notify_item('pack');

DROP TRIGGER IF EXISTS runwire_notify_update ON review_packs;
CREATE TRIGGER runwire_notify_update AFTER UPDATE ON review_packs
    FOR EACH ROW WHEN (OLD.version IS DISTINCT FROM NEW.version)
    EXECUTE FUNCTION runwire_notify_item('pack');

DROP TRIGGER IF EXISTS runwire_notify_truncate ON review_packs;
CREATE TRIGGER runwire_notify_truncate AFTER TRUNCATE ON review_packs
    FOR EACH STATEMENT EXECUTE FUNCTION runwire_notify_table('packs');

-- Losing access must end open streams; gaining it widens what a workspace feed shows.
DROP TRIGGER IF EXISTS runwire_notify_member ON workspace_memberships;
CREATE TRIGGER runwire_notify_member AFTER INSERT OR UPDATE OR DELETE ON workspace_memberships
    FOR EACH ROW EXECUTE FUNCTION runwire_notify_member();

DROP TRIGGER IF EXISTS runwire_notify_member ON tenant_memberships;
CREATE TRIGGER runwire_notify_member AFTER INSERT OR UPDATE OR DELETE ON tenant_memberships
    FOR EACH ROW EXECUTE FUNCTION runwire_notify_member();

DROP TRIGGER IF EXISTS runwire_notify_truncate ON workspace_memberships;
CREATE TRIGGER runwire_notify_truncate AFTER TRUNCATE ON workspace_memberships
    FOR EACH STATEMENT EXECUTE FUNCTION runwire_notify_table('access');

DROP TRIGGER IF EXISTS runwire_notify_truncate ON tenant_memberships;
CREATE TRIGGER runwire_notify_truncate AFTER TRUNCATE ON tenant_memberships
    FOR EACH STATEMENT EXECUTE FUNCTION runwire_notify_table('access');

DROP TRIGGER IF EXISTS runwire_notify_tenant ON tenants;
CREATE TRIGGER runwire_notify_tenant AFTER UPDATE OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION runwire_notify_tenant();

DROP TRIGGER IF EXISTS runwire_notify_truncate ON tenants;
CREATE TRIGGER runwire_notify_truncate AFTER TRUNCATE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION runwire_notify_table('access');

DROP TRIGGER IF EXISTS runwire_notify_delete ON workspaces;
CREATE TRIGGER runwire_notify_delete AFTER DELETE OR TRUNCATE ON workspaces
    FOR EACH STATEMENT EXECUTE FUNCTION runwire_notify_table('access');

DROP TRIGGER IF EXISTS runwire_notify_delete ON users;
CREATE TRIGGER runwire_notify_delete AFTER DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION runwire_notify_user();

DROP TRIGGER IF EXISTS runwire_notify_truncate ON users;
CREATE TRIGGER runwire_notify_truncate AFTER TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION runwire_notify_table('access');

CREATE INDEX IF NOT EXISTS review_packs_tenant_latest
    ON review_packs (tenant_id, created_at DESC NULLS LAST, id DESC);
CREATE INDEX IF NOT EXISTS operation_runs_workspace_active
    ON operation_runs (workspace_id, status);
