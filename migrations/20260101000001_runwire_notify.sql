-- runwire's integration point. This is the only file a host application needs to apply to
-- its own database (it touches the host's tables but creates none of them):
--
--   * a `version` column on operation_runs and review_packs, bumped by a BEFORE trigger on
--     every real change (an UPDATE that changes nothing keeps the version), so every state
--     runwire streams has a strictly increasing id;
--   * AFTER triggers that pg_notify('runwire', payload) once the change is made. The payload is
--     a doorbell, not the truth: runwire re-reads the row, so a forged NOTIFY cannot fake a
--     state. Payloads: {"k":"run","id","w","t","v"}, {"k":"pack","id","w","t","v"},
--     {"k":"member","u"} for membership changes (access is re-checked for that user).
--   * indexes for the reads runwire makes (latest pack per tenant, active runs per workspace).
--
-- NOTIFY is delivered at commit, and only if the transaction commits.

ALTER TABLE operation_runs ADD COLUMN IF NOT EXISTS version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE review_packs ADD COLUMN IF NOT EXISTS version BIGINT NOT NULL DEFAULT 1;

CREATE OR REPLACE FUNCTION runwire_bump_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version;
    IF NEW IS NOT DISTINCT FROM OLD THEN
        RETURN NEW;
    END IF;
    NEW.version := OLD.version + 1;
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION runwire_notify_item() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    item RECORD;
BEGIN
    IF TG_OP = 'DELETE' THEN
        item := OLD;
    ELSE
        item := NEW;
    END IF;
    PERFORM pg_notify('runwire', json_build_object(
        'k', TG_ARGV[0],
        'id', item.id,
        'w', item.workspace_id,
        't', item.tenant_id,
        'v', item.version)::text);
    RETURN NULL;
END;
$$;

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

DROP TRIGGER IF EXISTS runwire_version ON operation_runs;
CREATE TRIGGER runwire_version BEFORE UPDATE ON operation_runs
    FOR EACH ROW EXECUTE FUNCTION runwire_bump_version();

DROP TRIGGER IF EXISTS runwire_version ON review_packs;
CREATE TRIGGER runwire_version BEFORE UPDATE ON review_packs
    FOR EACH ROW EXECUTE FUNCTION runwire_bump_version();

DROP TRIGGER IF EXISTS runwire_notify_insert ON operation_runs;
CREATE TRIGGER runwire_notify_insert AFTER INSERT ON operation_runs
    FOR EACH ROW EXECUTE FUNCTION runwire_notify_item('run');

DROP TRIGGER IF EXISTS runwire_notify_update ON operation_runs;
CREATE TRIGGER runwire_notify_update AFTER UPDATE ON operation_runs
    FOR EACH ROW WHEN (OLD.version IS DISTINCT FROM NEW.version)
    EXECUTE FUNCTION runwire_notify_item('run');

DROP TRIGGER IF EXISTS runwire_notify_insert ON review_packs;
CREATE TRIGGER runwire_notify_insert AFTER INSERT OR DELETE ON review_packs
    FOR EACH ROW EXECUTE FUNCTION runwire_notify_item('pack');

DROP TRIGGER IF EXISTS runwire_notify_update ON review_packs;
CREATE TRIGGER runwire_notify_update AFTER UPDATE ON review_packs
    FOR EACH ROW WHEN (OLD.version IS DISTINCT FROM NEW.version)
    EXECUTE FUNCTION runwire_notify_item('pack');

-- Losing access must end open streams; gaining it widens what a workspace feed shows.
DROP TRIGGER IF EXISTS runwire_notify_member ON workspace_memberships;
CREATE TRIGGER runwire_notify_member AFTER INSERT OR UPDATE OR DELETE ON workspace_memberships
    FOR EACH ROW EXECUTE FUNCTION runwire_notify_member();

DROP TRIGGER IF EXISTS runwire_notify_member ON tenant_memberships;
CREATE TRIGGER runwire_notify_member AFTER INSERT OR UPDATE OR DELETE ON tenant_memberships
    FOR EACH ROW EXECUTE FUNCTION runwire_notify_member();

CREATE INDEX IF NOT EXISTS review_packs_tenant_latest
    ON review_packs (tenant_id, created_at DESC NULLS LAST, id DESC);
CREATE INDEX IF NOT EXISTS operation_runs_workspace_active
    ON operation_runs (workspace_id, status);
