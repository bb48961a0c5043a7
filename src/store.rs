//! Every SQL statement runwire runs. Reads only: the host application owns the data.
//!
//! Each function takes a slice of ids and answers with one round trip, so a burst of
//! notifications or a multiplexed stream costs one query however many items it covers.

use crate::model::{PackRow, RunRow, ACTIVE_RUN_STATUSES};
use sqlx::{FromRow, PgExecutor};

const RUN_COLUMNS: &str = "r.id, r.workspace_id, r.tenant_id, r.type AS run_type, r.status, \
     r.outcome, r.summary_counts, r.created_at, r.started_at, r.completed_at, r.updated_at, \
     r.version";

/// Current rows of these runs (missing ids are simply absent).
pub async fn runs_by_ids(db: impl PgExecutor<'_>, ids: &[i64]) -> sqlx::Result<Vec<RunRow>> {
    sqlx::query_as(&format!(
        "SELECT {RUN_COLUMNS} FROM operation_runs r WHERE r.id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(db)
    .await
}

/// A run together with what one user may do with it.
#[derive(Debug, Clone, FromRow)]
pub struct RunForUser {
    pub user_id: i64,
    #[sqlx(flatten)]
    pub run: RunRow,
    pub workspace_member: bool,
    pub tenant_member: bool,
}

/// Access and state for many (user, run) pairs at once: `users[i]` asks about `ids[i]`.
/// Streams opened at about the same time share this one query (see `access::batch`).
pub async fn runs_for_users(
    db: impl PgExecutor<'_>,
    users: &[i64],
    ids: &[i64],
) -> sqlx::Result<Vec<RunForUser>> {
    sqlx::query_as(&format!(
        "SELECT q.user_id, {RUN_COLUMNS},
            EXISTS (SELECT 1 FROM workspace_memberships m
                    WHERE m.workspace_id = r.workspace_id AND m.user_id = q.user_id) AS workspace_member,
            (r.tenant_id IS NULL OR EXISTS (SELECT 1 FROM tenant_memberships tm
                    WHERE tm.tenant_id = r.tenant_id AND tm.user_id = q.user_id)) AS tenant_member
         FROM unnest($1::bigint[], $2::bigint[]) AS q(user_id, run_id)
         JOIN operation_runs r ON r.id = q.run_id"
    ))
    .bind(users)
    .bind(ids)
    .fetch_all(db)
    .await
}

/// A tenant's latest pack, flattened from a LEFT JOIN (all pack columns NULL when none).
#[derive(Debug, FromRow)]
struct LatestPackRow {
    tenant_id: i64,
    pack_id: Option<i64>,
    status: Option<String>,
    created_at: Option<chrono::DateTime<chrono::Utc>>,
    generated_at: Option<chrono::DateTime<chrono::Utc>>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    updated_at: Option<chrono::DateTime<chrono::Utc>>,
    version: Option<i64>,
}

impl LatestPackRow {
    fn pack(&self) -> Option<PackRow> {
        Some(PackRow {
            id: self.pack_id?,
            status: self.status.clone()?,
            created_at: self.created_at,
            generated_at: self.generated_at,
            expires_at: self.expires_at,
            updated_at: self.updated_at,
            version: self.version?,
        })
    }
}

// "Latest" is the newest created_at, then the highest id (an index in runwire's migration
// matches this order).
const LATEST_PACK_JOIN: &str = "LEFT JOIN LATERAL (
        SELECT p.id AS pack_id, p.status, p.created_at, p.generated_at, p.expires_at,
               p.updated_at, p.version
        FROM review_packs p WHERE p.tenant_id = t.id
        ORDER BY p.created_at DESC NULLS LAST, p.id DESC LIMIT 1) lp ON true";

/// The latest pack of each tenant (None: the tenant has no pack).
pub async fn latest_packs(
    db: impl PgExecutor<'_>,
    tenant_ids: &[i64],
) -> sqlx::Result<Vec<(i64, Option<PackRow>)>> {
    let rows: Vec<LatestPackRow> = sqlx::query_as(&format!(
        "SELECT t.id AS tenant_id, lp.* FROM unnest($1::bigint[]) AS t(id) {LATEST_PACK_JOIN}"
    ))
    .bind(tenant_ids)
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(|r| (r.tenant_id, r.pack())).collect())
}

/// A tenant's latest pack together with what one user may do with it.
#[derive(Debug, Clone)]
pub struct PackForUser {
    pub user_id: i64,
    pub tenant_id: i64,
    pub workspace_member: bool,
    pub tenant_role: Option<String>,
    pub pack: Option<PackRow>,
}

#[derive(Debug, FromRow)]
struct PackForUserRow {
    user_id: i64,
    workspace_member: bool,
    tenant_role: Option<String>,
    #[sqlx(flatten)]
    latest: LatestPackRow,
}

/// Access and latest pack for many (user, tenant) pairs at once.
pub async fn packs_for_users(
    db: impl PgExecutor<'_>,
    users: &[i64],
    tenant_ids: &[i64],
) -> sqlx::Result<Vec<PackForUser>> {
    let rows: Vec<PackForUserRow> = sqlx::query_as(&format!(
        "SELECT q.user_id, t.id AS tenant_id,
            EXISTS (SELECT 1 FROM workspace_memberships m
                    WHERE m.workspace_id = t.workspace_id AND m.user_id = q.user_id) AS workspace_member,
            (SELECT tm.role FROM tenant_memberships tm
                    WHERE tm.tenant_id = t.id AND tm.user_id = q.user_id) AS tenant_role,
            lp.*
         FROM unnest($1::bigint[], $2::bigint[]) AS q(user_id, tenant_id)
         JOIN tenants t ON t.id = q.tenant_id {LATEST_PACK_JOIN}"
    ))
    .bind(users)
    .bind(tenant_ids)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| PackForUser {
            user_id: r.user_id,
            tenant_id: r.latest.tenant_id,
            workspace_member: r.workspace_member,
            tenant_role: r.tenant_role.clone(),
            pack: r.latest.pack(),
        })
        .collect())
}

/// What a user may see of a workspace: membership, and the tenants they belong to there.
#[derive(Debug, FromRow)]
pub struct WorkspaceView {
    pub workspace_member: bool,
    pub tenant_ids: Vec<i64>,
}

pub async fn workspace_view(
    db: impl PgExecutor<'_>,
    user_id: i64,
    workspace_id: i64,
) -> sqlx::Result<WorkspaceView> {
    sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM workspace_memberships m
                        WHERE m.workspace_id = $1 AND m.user_id = $2) AS workspace_member,
                ARRAY(SELECT tm.tenant_id FROM tenant_memberships tm
                      JOIN tenants t ON t.id = tm.tenant_id
                      WHERE t.workspace_id = $1 AND tm.user_id = $2
                      ORDER BY tm.tenant_id) AS tenant_ids",
    )
    .bind(workspace_id)
    .bind(user_id)
    .fetch_one(db)
    .await
}

/// Active runs of a workspace that are tenantless or belong to one of `tenant_ids`.
pub async fn active_runs(
    db: impl PgExecutor<'_>,
    workspace_id: i64,
    tenant_ids: &[i64],
) -> sqlx::Result<Vec<RunRow>> {
    sqlx::query_as(&format!(
        "SELECT {RUN_COLUMNS} FROM operation_runs r
         WHERE r.workspace_id = $1 AND r.status = ANY($3)
           AND (r.tenant_id IS NULL OR r.tenant_id = ANY($2))
         ORDER BY r.created_at DESC NULLS LAST, r.id DESC"
    ))
    .bind(workspace_id)
    .bind(tenant_ids)
    .bind(&ACTIVE_RUN_STATUSES[..])
    .fetch_all(db)
    .await
}

/// A workspace as a member sees it: its name and the tenants they belong to, with roles.
#[derive(Debug, FromRow)]
pub struct WorkspaceInfo {
    pub id: i64,
    pub name: String,
    pub workspace_member: bool,
    pub tenants: sqlx::types::Json<Vec<TenantInfo>>,
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub struct TenantInfo {
    pub id: i64,
    pub name: String,
    pub role: String,
}

pub async fn workspace_info(
    db: impl PgExecutor<'_>,
    user_id: i64,
    workspace_id: i64,
) -> sqlx::Result<Option<WorkspaceInfo>> {
    sqlx::query_as(
        "SELECT w.id, w.name,
            EXISTS (SELECT 1 FROM workspace_memberships m
                    WHERE m.workspace_id = w.id AND m.user_id = $2) AS workspace_member,
            COALESCE((SELECT json_agg(json_build_object('id', t.id, 'name', t.name, 'role', tm.role)
                              ORDER BY t.name, t.id)
                      FROM tenants t
                      JOIN tenant_memberships tm ON tm.tenant_id = t.id AND tm.user_id = $2
                      WHERE t.workspace_id = w.id), '[]'::json) AS tenants
         FROM workspaces w WHERE w.id = $1",
    )
    .bind(workspace_id)
    .bind(user_id)
    .fetch_optional(db)
    .await
}

/// What `serve` needs of the schema and cannot see: the parts of the integration migration
/// (`migrations/20260101000001_runwire_notify.sql`) that are missing, by name. Empty when it
/// is in place. Reads only the catalog, so a role with nothing but SELECT can run it.
pub async fn missing_integration(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT CASE WHEN need.trigger IS NULL THEN need.tbl || '.version'
                     ELSE 'trigger ' || need.trigger || ' on ' || need.tbl END
         FROM (VALUES
            (1, 'operation_runs', NULL),
            (2, 'review_packs', NULL),
            (3, 'operation_runs', 'runwire_version'),
            (4, 'operation_runs', 'runwire_notify_insert'),
            (5, 'operation_runs', 'runwire_notify_update'),
            (6, 'review_packs', 'runwire_version'),
            (7, 'review_packs', 'runwire_notify_insert'),
            (8, 'review_packs', 'runwire_notify_update'),
            (9, 'workspace_memberships', 'runwire_notify_member'),
            (10, 'tenant_memberships', 'runwire_notify_member')
         ) AS need(n, tbl, trigger)
         WHERE NOT CASE WHEN need.trigger IS NULL
             THEN EXISTS (SELECT 1 FROM pg_attribute a
                 WHERE a.attrelid = to_regclass(need.tbl) AND a.attname = 'version'
                   AND NOT a.attisdropped)
             ELSE EXISTS (SELECT 1 FROM pg_trigger g
                 WHERE g.tgrelid = to_regclass(need.tbl) AND g.tgname = need.trigger)
             END
         ORDER BY need.n",
    )
    .fetch_all(db)
    .await
}

/// The tables runwire reads that the current role may not `SELECT` (missing tables included).
pub async fn unreadable_tables(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT t.name FROM unnest($1::text[]) WITH ORDINALITY AS t(name, n)
         WHERE to_regclass(t.name) IS NULL
            OR NOT has_table_privilege(to_regclass(t.name), 'SELECT')
         ORDER BY t.n",
    )
    .bind(&HOST_TABLES[..])
    .fetch_all(db)
    .await
}

/// Every table runwire reads; `serve` needs `SELECT` on each and nothing else.
pub const HOST_TABLES: [&str; 7] = [
    "users",
    "workspaces",
    "workspace_memberships",
    "tenants",
    "tenant_memberships",
    "operation_runs",
    "review_packs",
];
