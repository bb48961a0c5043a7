//! Every SQL statement runwire runs. Reads only: the host application owns the data.
//!
//! Each function takes a slice of ids and answers with one round trip, so a burst of
//! notifications or a multiplexed stream costs one query however many items it covers.
//! Access queries return *facts* (memberships, roles); the rules that judge them live in
//! `access::rules`, once.
//!
//! The functions look alike on purpose (a signature, the statement built once from the
//! shared fragments below, a bind per slice): one function per question, so each reads as
//! its SQL.

use crate::access::rules::Facts;
use crate::model::{Owner, PackRow, RunRow, ACTIVE_PACK_STATUSES, ACTIVE_RUN_STATUSES};
use crate::ops::PackFacts;
use sqlx::{FromRow, PgExecutor};
use std::sync::LazyLock;

const RUN_COLUMNS: &str = "r.id, r.workspace_id, r.tenant_id, r.type AS run_type, r.status, \
     r.outcome, r.summary_counts, r.created_at, r.started_at, r.completed_at, r.updated_at, \
     r.version";

/// Whether `q.user_id` is a member of the workspace `workspace` (an SQL expression).
fn member_of(workspace: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM workspace_memberships m \
         WHERE m.workspace_id = {workspace} AND m.user_id = q.user_id)"
    )
}

/// `q.user_id`'s role in the tenant `tenant` (an SQL expression), NULL without one.
fn role_in(tenant: &str) -> String {
    format!(
        "(SELECT tm.role FROM tenant_memberships tm \
         WHERE tm.tenant_id = {tenant} AND tm.user_id = q.user_id)"
    )
}

/// Current rows of these runs (missing ids are simply absent).
pub(crate) async fn runs_by_ids(db: impl PgExecutor<'_>, ids: &[i64]) -> sqlx::Result<Vec<RunRow>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!("SELECT {RUN_COLUMNS} FROM operation_runs r WHERE r.id = ANY($1)")
    });
    sqlx::query_as(&SQL).bind(ids).fetch_all(db).await
}

const PACK_FACTS: &str = "p.id, p.workspace_id, p.status, p.created_at, p.generated_at";

/// Current rows of these review packs, for the operations metrics (missing ids are absent).
pub(crate) async fn packs_by_ids(
    db: impl PgExecutor<'_>,
    ids: &[i64],
) -> sqlx::Result<Vec<PackFacts>> {
    static SQL: LazyLock<String> =
        LazyLock::new(|| format!("SELECT {PACK_FACTS} FROM review_packs p WHERE p.id = ANY($1)"));
    sqlx::query_as(&SQL).bind(ids).fetch_all(db).await
}

/// What the operations metrics start from (`ops::Snapshot`), read in one snapshot of the
/// database: every active run and pack, and those that finished within the last
/// `window_secs`. At start-up and after a reconnect only; never per change.
pub(crate) async fn ops_snapshot(
    pool: &sqlx::PgPool,
    window_secs: f64,
) -> sqlx::Result<crate::ops::Snapshot> {
    static ACTIVE_RUNS: LazyLock<String> = LazyLock::new(|| {
        format!("SELECT {RUN_COLUMNS} FROM operation_runs r WHERE r.status = ANY($1)")
    });
    // The same "finished at" as ops: completed_at, else created_at.
    static FINISHED_RUNS: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {RUN_COLUMNS} FROM operation_runs r WHERE NOT (r.status = ANY($1))
               AND COALESCE(r.completed_at, r.created_at) > now() - make_interval(secs => $2)"
        )
    });
    static ACTIVE_PACKS: LazyLock<String> = LazyLock::new(|| {
        format!("SELECT {PACK_FACTS} FROM review_packs p WHERE p.status = ANY($1)")
    });
    static FINISHED_PACKS: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {PACK_FACTS} FROM review_packs p WHERE NOT (p.status = ANY($1))
               AND COALESCE(p.generated_at, p.created_at) > now() - make_interval(secs => $2)"
        )
    });
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let runs = &ACTIVE_RUN_STATUSES[..];
    let packs = &ACTIVE_PACK_STATUSES[..];
    let snapshot = crate::ops::Snapshot {
        active_runs: sqlx::query_as(&ACTIVE_RUNS)
            .bind(runs)
            .fetch_all(&mut *tx)
            .await?,
        finished_runs: sqlx::query_as(&FINISHED_RUNS)
            .bind(runs)
            .bind(window_secs)
            .fetch_all(&mut *tx)
            .await?,
        active_packs: sqlx::query_as(&ACTIVE_PACKS)
            .bind(packs)
            .fetch_all(&mut *tx)
            .await?,
        finished_packs: sqlx::query_as(&FINISHED_PACKS)
            .bind(packs)
            .bind(window_secs)
            .fetch_all(&mut *tx)
            .await?,
    };
    tx.commit().await?;
    Ok(snapshot)
}

/// A run together with one user's facts towards its owner.
#[derive(Debug, Clone, FromRow)]
pub(crate) struct RunForUser {
    pub user_id: i64,
    #[sqlx(flatten)]
    pub run: RunRow,
    pub workspace_member: bool,
    pub tenant_role: Option<String>,
}

impl RunForUser {
    pub(crate) fn facts(&self) -> Facts {
        Facts {
            workspace_member: self.workspace_member,
            tenant_exists: true,
            tenant_role: self.tenant_role.clone(),
        }
    }
}

/// State and access facts for many (user, run) pairs at once: `users[i]` asks about
/// `ids[i]`. Streams opened at about the same time share this one query (`access::batch`).
pub(crate) async fn runs_for_users(
    db: impl PgExecutor<'_>,
    users: &[i64],
    ids: &[i64],
) -> sqlx::Result<Vec<RunForUser>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT q.user_id, {RUN_COLUMNS},
                {} AS workspace_member, {} AS tenant_role
             FROM unnest($1::bigint[], $2::bigint[]) AS q(user_id, run_id)
             JOIN operation_runs r ON r.id = q.run_id",
            member_of("r.workspace_id"),
            role_in("r.tenant_id")
        )
    });
    sqlx::query_as(&SQL)
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

/// The review-pack card of one tenant as the watcher reads it.
#[derive(Debug)]
pub(crate) struct TenantPack {
    pub tenant_id: i64,
    /// False once the tenant row is gone.
    pub exists: bool,
    pub pack: Option<PackRow>,
}

#[derive(Debug, FromRow)]
struct TenantPackRow {
    exists: bool,
    #[sqlx(flatten)]
    latest: LatestPackRow,
}

/// The latest pack of each tenant (None: the tenant has no pack).
pub(crate) async fn latest_packs(
    db: impl PgExecutor<'_>,
    tenant_ids: &[i64],
) -> sqlx::Result<Vec<TenantPack>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT t.id AS tenant_id, EXISTS (SELECT 1 FROM tenants x WHERE x.id = t.id) AS exists,
                lp.*
             FROM unnest($1::bigint[]) AS t(id) {LATEST_PACK_JOIN}"
        )
    });
    let rows: Vec<TenantPackRow> = sqlx::query_as(&SQL).bind(tenant_ids).fetch_all(db).await?;
    Ok(rows
        .iter()
        .map(|r| TenantPack {
            tenant_id: r.latest.tenant_id,
            exists: r.exists,
            pack: r.latest.pack(),
        })
        .collect())
}

/// A tenant's latest pack together with one user's facts towards the tenant.
#[derive(Debug, Clone)]
pub(crate) struct PackForUser {
    pub user_id: i64,
    pub tenant_id: i64,
    pub facts: Facts,
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

/// State and access facts for many (user, tenant) pairs at once (rows of tenants that exist).
pub(crate) async fn packs_for_users(
    db: impl PgExecutor<'_>,
    users: &[i64],
    tenant_ids: &[i64],
) -> sqlx::Result<Vec<PackForUser>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT q.user_id, t.id AS tenant_id,
                {} AS workspace_member, {} AS tenant_role, lp.*
             FROM unnest($1::bigint[], $2::bigint[]) AS q(user_id, tenant_id)
             JOIN tenants t ON t.id = q.tenant_id {LATEST_PACK_JOIN}",
            member_of("t.workspace_id"),
            role_in("t.id")
        )
    });
    let rows: Vec<PackForUserRow> = sqlx::query_as(&SQL)
        .bind(users)
        .bind(tenant_ids)
        .fetch_all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| PackForUser {
            user_id: r.user_id,
            tenant_id: r.latest.tenant_id,
            pack: r.latest.pack(),
            facts: Facts {
                workspace_member: r.workspace_member,
                tenant_exists: true,
                tenant_role: r.tenant_role,
            },
        })
        .collect())
}

/// One user's facts towards one owner.
#[derive(Debug, Clone)]
pub(crate) struct OwnerFacts {
    pub user_id: i64,
    pub owner: Owner,
    pub facts: Facts,
}

#[derive(FromRow)]
struct OwnerFactsRow {
    user_id: i64,
    pack: bool,
    workspace_id: Option<i64>,
    tenant_id: Option<i64>,
    tenant_exists: bool,
    workspace_member: bool,
    tenant_role: Option<String>,
}

/// Facts for many (user, owner) pairs at once: the re-check of streams whose decisions went
/// stale. A pack's workspace is its tenant's *current* workspace.
pub(crate) async fn owner_facts(
    db: impl PgExecutor<'_>,
    users: &[i64],
    owners: &[Owner],
) -> sqlx::Result<Vec<OwnerFacts>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT q.user_id, q.pack, q.workspace_id, q.tenant_id,
                (t.id IS NOT NULL) AS tenant_exists,
                {} AS workspace_member, {} AS tenant_role
             FROM unnest($1::bigint[], $2::bool[], $3::bigint[], $4::bigint[])
                  AS q(user_id, pack, workspace_id, tenant_id)
             LEFT JOIN tenants t ON t.id = q.tenant_id",
            member_of("CASE WHEN q.pack THEN t.workspace_id ELSE q.workspace_id END"),
            role_in("q.tenant_id")
        )
    });
    let (mut packs, mut workspaces, mut tenants) = (Vec::new(), Vec::new(), Vec::new());
    for owner in owners {
        let (pack, workspace, tenant) = match *owner {
            Owner::Run { workspace, tenant } => (false, Some(workspace), tenant),
            Owner::Pack { tenant } => (true, None, Some(tenant)),
        };
        packs.push(pack);
        workspaces.push(workspace);
        tenants.push(tenant);
    }
    let rows: Vec<OwnerFactsRow> = sqlx::query_as(&SQL)
        .bind(users)
        .bind(&packs)
        .bind(&workspaces)
        .bind(&tenants)
        .fetch_all(db)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let owner = match (r.pack, r.workspace_id, r.tenant_id) {
                (true, _, Some(tenant)) => Owner::Pack { tenant },
                (false, Some(workspace), tenant) => Owner::Run { workspace, tenant },
                _ => return None,
            };
            Some(OwnerFacts {
                user_id: r.user_id,
                owner,
                facts: Facts {
                    workspace_member: r.workspace_member,
                    tenant_exists: !r.pack || r.tenant_exists,
                    tenant_role: r.tenant_role,
                },
            })
        })
        .collect())
}

/// What a user may see of a workspace: membership, and their roles in its tenants.
#[derive(Debug, FromRow)]
pub(crate) struct WorkspaceView {
    pub workspace_member: bool,
    pub tenant_roles: sqlx::types::Json<Vec<(i64, String)>>,
}

pub(crate) async fn workspace_view(
    db: impl PgExecutor<'_>,
    user_id: i64,
    workspace_id: i64,
) -> sqlx::Result<WorkspaceView> {
    sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM workspace_memberships m
                        WHERE m.workspace_id = $1 AND m.user_id = $2) AS workspace_member,
                COALESCE((SELECT json_agg(json_build_array(tm.tenant_id, tm.role))
                          FROM tenant_memberships tm
                          JOIN tenants t ON t.id = tm.tenant_id
                          WHERE t.workspace_id = $1 AND tm.user_id = $2), '[]'::json)
                    AS tenant_roles",
    )
    .bind(workspace_id)
    .bind(user_id)
    .fetch_one(db)
    .await
}

/// Active runs of a workspace, newest first (the caller filters them by access).
pub(crate) async fn active_runs(
    db: impl PgExecutor<'_>,
    workspace_id: i64,
) -> sqlx::Result<Vec<RunRow>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {RUN_COLUMNS} FROM operation_runs r
             WHERE r.workspace_id = $1 AND r.status = ANY($2)
             ORDER BY r.created_at DESC NULLS LAST, r.id DESC"
        )
    });
    sqlx::query_as(&SQL)
        .bind(workspace_id)
        .bind(&ACTIVE_RUN_STATUSES[..])
        .fetch_all(db)
        .await
}

/// Runs of a workspace that finished in the last 24 hours, newest first, at most `limit`
/// (the caller filters them by access).
pub(crate) async fn recent_runs(
    db: impl PgExecutor<'_>,
    workspace_id: i64,
    limit: i64,
) -> sqlx::Result<Vec<RunRow>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {RUN_COLUMNS} FROM operation_runs r
             WHERE r.workspace_id = $1 AND NOT (r.status = ANY($2))
               AND COALESCE(r.completed_at, r.updated_at) > now() - interval '24 hours'
             ORDER BY COALESCE(r.completed_at, r.updated_at) DESC, r.id DESC
             LIMIT $3"
        )
    });
    sqlx::query_as(&SQL)
        .bind(workspace_id)
        .bind(&ACTIVE_RUN_STATUSES[..])
        .bind(limit)
        .fetch_all(db)
        .await
}

/// Everything a workspace feed's snapshot shows, with the facts that decide what of it the
/// user may see, read in one snapshot of the database (REPEATABLE READ): the decision and
/// the states it judges are of the same moment.
pub(crate) struct FeedRead {
    pub(crate) view: WorkspaceView,
    pub(crate) active: Vec<RunRow>,
    pub(crate) recent: Vec<RunRow>,
    /// The review-pack cards of the tenants the user has a role in, in this workspace.
    pub(crate) packs: Vec<TenantPack>,
}

pub(crate) async fn feed_read(
    pool: &sqlx::PgPool,
    user_id: i64,
    workspace_id: i64,
    recent_limit: i64,
) -> sqlx::Result<FeedRead> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let view = workspace_view(&mut *tx, user_id, workspace_id).await?;
    let active = active_runs(&mut *tx, workspace_id).await?;
    let recent = recent_runs(&mut *tx, workspace_id, recent_limit).await?;
    let mut tenants: Vec<i64> = view.tenant_roles.0.iter().map(|(t, _)| *t).collect();
    tenants.sort_unstable();
    let packs = latest_packs(&mut *tx, &tenants).await?;
    tx.commit().await?;
    Ok(FeedRead {
        view,
        active,
        recent,
        packs,
    })
}

/// A workspace as a member sees it: its name and the tenants they belong to, with roles.
#[derive(Debug, FromRow)]
pub(crate) struct WorkspaceInfo {
    pub id: i64,
    pub name: String,
    pub workspace_member: bool,
    pub tenants: sqlx::types::Json<Vec<TenantInfo>>,
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub(crate) struct TenantInfo {
    pub id: i64,
    pub name: String,
    pub role: String,
}

pub(crate) async fn workspace_info(
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

/// Readiness: whether the tables runwire reads can be read now. `LIMIT 0` reads no row, but
/// the statement still takes each table's lock, so a host migration holding one makes it wait.
pub(crate) async fn probe(db: impl PgExecutor<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "SELECT 1 FROM operation_runs, review_packs, tenants, workspace_memberships,
                tenant_memberships LIMIT 0",
    )
    .execute(db)
    .await
    .map(|_| ())
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
            (10, 'tenant_memberships', 'runwire_notify_member'),
            (11, 'operation_runs', 'runwire_notify_truncate'),
            (12, 'review_packs', 'runwire_notify_truncate'),
            (13, 'workspace_memberships', 'runwire_notify_truncate'),
            (14, 'tenant_memberships', 'runwire_notify_truncate'),
            (15, 'tenants', 'runwire_notify_tenant'),
            (16, 'tenants', 'runwire_notify_truncate'),
            (17, 'workspaces', 'runwire_notify_delete'),
            (18, 'users', 'runwire_notify_delete'),
            (19, 'users', 'runwire_notify_truncate')
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
pub(crate) async fn unreadable_tables(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<String>> {
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
pub(crate) const HOST_TABLES: [&str; 7] = [
    "users",
    "workspaces",
    "workspace_memberships",
    "tenants",
    "tenant_memberships",
    "operation_runs",
    "review_packs",
];
