-- Removes runwire's NOTIFY integration (`notify.sql`): its triggers, functions, `version`
-- columns and access log. Applied by `runwire migrate --changes wal`. The two indexes stay:
-- runwire's reads use them in both modes (drop them yourself if you have equivalent ones).

DROP TRIGGER IF EXISTS runwire_version ON operation_runs;
DROP TRIGGER IF EXISTS runwire_notify_insert ON operation_runs;
DROP TRIGGER IF EXISTS runwire_notify_update ON operation_runs;
DROP TRIGGER IF EXISTS runwire_notify_truncate ON operation_runs;
DROP TRIGGER IF EXISTS runwire_version ON review_packs;
DROP TRIGGER IF EXISTS runwire_notify_insert ON review_packs;
DROP TRIGGER IF EXISTS runwire_notify_update ON review_packs;
DROP TRIGGER IF EXISTS runwire_notify_truncate ON review_packs;
DROP TRIGGER IF EXISTS runwire_notify_member ON workspace_memberships;
DROP TRIGGER IF EXISTS runwire_notify_truncate ON workspace_memberships;
DROP TRIGGER IF EXISTS runwire_notify_member ON tenant_memberships;
DROP TRIGGER IF EXISTS runwire_notify_truncate ON tenant_memberships;
DROP TRIGGER IF EXISTS runwire_notify_tenant ON tenants;
DROP TRIGGER IF EXISTS runwire_notify_truncate ON tenants;
DROP TRIGGER IF EXISTS runwire_notify_delete ON workspaces;
DROP TRIGGER IF EXISTS runwire_notify_delete ON users;
DROP TRIGGER IF EXISTS runwire_notify_truncate ON users;

DROP SCHEMA IF EXISTS runwire CASCADE;
DROP FUNCTION IF EXISTS public.runwire_bump_version();
DROP FUNCTION IF EXISTS public.runwire_notify_item();
DROP FUNCTION IF EXISTS public.runwire_notify_member();
DROP FUNCTION IF EXISTS public.runwire_notify_user();
DROP FUNCTION IF EXISTS public.runwire_notify_tenant();
DROP FUNCTION IF EXISTS public.runwire_notify_table();

ALTER TABLE operation_runs DROP COLUMN IF EXISTS version;
ALTER TABLE review_packs DROP COLUMN IF EXISTS version;
