//! Every SQL statement runwire runs. Reads only: the host application owns the data.
//!
//! Each function takes a slice of ids and answers with one round trip, so a burst of
//! notifications or a multiplexed stream costs one query however many items it covers.
//! Access queries return *facts* (memberships, roles); the rules that judge them live in
//! `access::rules`, once.
//!
//! Rows are read column by column as integers and text (`model::row` interprets them, the
//! same way it interprets a replication message), so the host's own column types — `json` or
//! `jsonb`, `timestamp` or `timestamptz`, `int4` or `int8`, `varchar` or `text` — all read the
//! same, and a value that does not decode spoils one row, not the query.
//!
//! Statements come in two variants, by [`ChangeSource`]: NOTIFY mode reads runwire's
//! `version` columns; WAL mode has none, and each read also returns the snapshot it saw
//! (`pg_current_snapshot()`), which `access::batch` checks against what the watcher has
//! applied.
//!
//! The functions look alike on purpose (a signature, the statement built once from the
//! shared fragments below, a bind per slice): one function per question, so each reads as
//! its SQL.

use crate::access::rules::Facts;
use crate::model::{
    ChangeSource, Columns, Decoded, Owner, PackRow, RunRow, ACTIVE_PACK_STATUSES,
    ACTIVE_RUN_STATUSES,
};
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgExecutor, Row};
use std::sync::LazyLock;

/// A statement in both variants, built once.
struct Sql(LazyLock<[String; 2]>);

impl Sql {
    const fn new(build: fn() -> [String; 2]) -> Sql {
        Sql(LazyLock::new(build))
    }

    fn get(&self, mode: ChangeSource) -> &str {
        &self.0[mode as usize]
    }
}

/// Builds a statement's two variants from a template: `{version}` and `{pack_version}` become
/// the version columns (NOTIFY) or nothing (WAL); `{snap}` becomes the snapshot column (WAL)
/// or nothing.
fn variants(template: &str) -> [String; 2] {
    let notify = template
        .replace("{version}", ", r.version::int8 AS version")
        .replace("{pack_version}", ", p.version::int8 AS version")
        .replace("{snap}", "");
    let wal = template
        .replace("{version}", "")
        .replace("{pack_version}", "")
        .replace("{snap}", ", pg_current_snapshot()::text AS snap");
    [notify, wal]
}

/// The run columns, as integers and text. Timestamps are rendered as `timestamptz` in the
/// session's time zone, which every runwire connection sets to UTC (so a `timestamp` column
/// is read as UTC).
const RUN_COLUMNS: &str = "r.id::int8 AS id, r.workspace_id::int8 AS workspace_id, \
     r.tenant_id::int8 AS tenant_id, r.type::text AS type, r.status::text AS status, \
     r.outcome::text AS outcome, r.summary_counts::text AS summary_counts, \
     r.created_at::timestamptz::text AS created_at, r.started_at::timestamptz::text AS started_at, \
     r.completed_at::timestamptz::text AS completed_at, \
     r.updated_at::timestamptz::text AS updated_at {version}";

/// A query row's columns by name, for `model::row`.
struct RowColumns<'r>(&'r PgRow);

impl Columns for RowColumns<'_> {
    fn int(&self, column: &'static str) -> Result<Option<i64>, String> {
        self.0.try_get(column).map_err(|e| e.to_string())
    }
    fn text(&self, column: &'static str) -> Result<Option<&str>, String> {
        self.0.try_get(column).map_err(|e| e.to_string())
    }
}

fn read_run(row: &PgRow) -> Decoded<RunRow> {
    let mut run = RunRow::read(&RowColumns(row))?;
    run.version = row.try_get("version").ok().flatten();
    Ok(run)
}

fn read_pack(row: &PgRow) -> Decoded<PackRow> {
    let mut pack = PackRow::read(&RowColumns(row))?;
    pack.version = row.try_get("version").ok().flatten();
    Ok(pack)
}

/// The snapshot a WAL-mode read saw (None in NOTIFY mode).
fn snap(row: &PgRow) -> Option<String> {
    row.try_get("snap").ok().flatten()
}

/// The id of a run read, even when another of its columns did not decode.
pub(crate) fn run_id(run: &Decoded<RunRow>) -> Option<i64> {
    match run {
        Ok(r) => Some(r.id),
        Err((key, _)) => key.map(|k| k.id),
    }
}

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
        "(SELECT tm.role::text FROM tenant_memberships tm \
         WHERE tm.tenant_id = {tenant} AND tm.user_id = q.user_id)"
    )
}

/// Whether a run's tenant `tenant` (NULL: none) sits in the run's workspace `workspace` (an
/// SQL expression): a tenant that moved to another workspace, or is gone, does not.
fn tenant_in(workspace: &str, tenant: &str) -> String {
    format!(
        "({tenant} IS NULL OR EXISTS (SELECT 1 FROM tenants tw \
         WHERE tw.id = {tenant} AND tw.workspace_id = {workspace}))"
    )
}

/// Current rows of these runs (missing ids are simply absent).
pub(crate) async fn runs_by_ids(
    db: impl PgExecutor<'_>,
    mode: ChangeSource,
    ids: &[i64],
) -> sqlx::Result<Vec<Decoded<RunRow>>> {
    static SQL: Sql = Sql::new(|| {
        variants(&format!(
            "SELECT {RUN_COLUMNS} FROM operation_runs r WHERE r.id = ANY($1::int8[])"
        ))
    });
    let rows = sqlx::query(SQL.get(mode)).bind(ids).fetch_all(db).await?;
    Ok(rows.iter().map(read_run).collect())
}

/// Every column of a review pack, for the operations metrics (no version: they need none).
const PACK_COLUMNS: &str = "p.id::int8 AS id, p.workspace_id::int8 AS workspace_id, \
     p.tenant_id::int8 AS tenant_id, p.status::text AS status, \
     p.created_at::timestamptz::text AS created_at, \
     p.generated_at::timestamptz::text AS generated_at, \
     p.expires_at::timestamptz::text AS expires_at, p.updated_at::timestamptz::text AS updated_at";

/// Current rows of these review packs, for the operations metrics (missing ids are absent).
pub(crate) async fn packs_by_ids(
    db: impl PgExecutor<'_>,
    ids: &[i64],
) -> sqlx::Result<Vec<Decoded<(PackRow, Option<i64>)>>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!("SELECT {PACK_COLUMNS} FROM review_packs p WHERE p.id = ANY($1::int8[])")
    });
    let rows = sqlx::query(&SQL).bind(ids).fetch_all(db).await?;
    Ok(rows.iter().map(pack_with_workspace).collect())
}

/// A pack and its workspace (the card's reads do not need the latter).
fn pack_with_workspace(row: &PgRow) -> Decoded<(PackRow, Option<i64>)> {
    Ok((read_pack(row)?, row.try_get("workspace_id").ok().flatten()))
}

/// What the operations metrics start from (`ops::Snapshot`), read in one snapshot of the
/// database: every active run and pack, and those that finished within the last
/// `window_secs`. At start-up and after a reconnect only; never per change. Rows that do
/// not decode are left out (their streams say so).
pub(crate) async fn ops_snapshot(
    pool: &sqlx::PgPool,
    window_secs: f64,
) -> sqlx::Result<crate::ops::Snapshot> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let snapshot = ops_snapshot_in(&mut tx, window_secs).await?;
    tx.commit().await?;
    Ok(snapshot)
}

/// [`ops_snapshot`] on a transaction the caller set up (the WAL source reads it in the
/// replication slot's exported snapshot, so it matches the stream's start exactly).
pub(crate) async fn ops_snapshot_in(
    tx: &mut sqlx::PgConnection,
    window_secs: f64,
) -> sqlx::Result<crate::ops::Snapshot> {
    // "Finished at" as `ops` has it: completed_at (generated_at for packs), else created_at.
    static SQL: LazyLock<[String; 4]> = LazyLock::new(|| {
        [
            format!("SELECT {RUN_COLUMNS} FROM operation_runs r WHERE r.status = ANY($1)"),
            format!(
                "SELECT {RUN_COLUMNS} FROM operation_runs r WHERE NOT (r.status = ANY($1))
                   AND COALESCE(r.completed_at, r.created_at) > now() - make_interval(secs => $2)"
            ),
            format!("SELECT {PACK_COLUMNS} FROM review_packs p WHERE p.status = ANY($1)"),
            format!(
                "SELECT {PACK_COLUMNS} FROM review_packs p WHERE NOT (p.status = ANY($1))
                   AND COALESCE(p.generated_at, p.created_at) > now() - make_interval(secs => $2)"
            ),
        ]
        .map(|sql| sql.replace("{version}", ""))
    });
    let mut read = Vec::new();
    let statuses = [
        ACTIVE_RUN_STATUSES,
        ACTIVE_RUN_STATUSES,
        ACTIVE_PACK_STATUSES,
        ACTIVE_PACK_STATUSES,
    ];
    for (n, (sql, statuses)) in SQL.iter().zip(statuses).enumerate() {
        let query = sqlx::query(sql).bind(&statuses[..]);
        // The odd statements are the finished ones, which take the window.
        let query = match n % 2 {
            1 => query.bind(window_secs),
            _ => query,
        };
        read.push(query.fetch_all(&mut *tx).await?);
    }
    let runs = |rows: &[PgRow]| rows.iter().filter_map(|r| read_run(r).ok()).collect();
    let packs = |rows: &[PgRow]| {
        let packs = rows.iter().map(pack_with_workspace);
        packs.filter_map(Result::ok).collect()
    };
    Ok(crate::ops::Snapshot {
        active_runs: runs(&read[0]),
        finished_runs: runs(&read[1]),
        active_packs: packs(&read[2]),
        finished_packs: packs(&read[3]),
    })
}

/// Access changes that became visible between two snapshots (NOTIFY mode: the triggers log
/// them in `runwire.access_changes`), and the later snapshot.
#[derive(Debug)]
pub(crate) struct AccessLog {
    pub snapshot: String,
    pub changes: Vec<AccessChange>,
}

/// One logged access change: `member` (of `user_id`), `tenant` or `access` (everyone's).
#[derive(Debug, serde::Deserialize)]
pub(crate) struct AccessChange {
    pub kind: String,
    pub user_id: Option<i64>,
}

/// Wraps `query` (which selects `x.*`, a LEFT JOIN LATERAL's rows) so that the same statement
/// also returns its snapshot and the access log since `$2` (a snapshot, or NULL for none).
fn with_access_log(query: &str) -> String {
    format!(
        "WITH s AS (
            SELECT pg_current_snapshot()::text AS log_snapshot,
                   COALESCE((SELECT json_agg(json_build_object(
                                'kind', c.kind, 'user_id', c.user_id, 'tenant_id', c.tenant_id)
                                ORDER BY c.id)
                             FROM runwire.access_changes c
                             WHERE $2::text IS NOT NULL
                               AND NOT pg_visible_in_snapshot(c.xid, $2::text::pg_snapshot)),
                            '[]')::text AS log)
         SELECT s.log_snapshot, s.log, x.* FROM s LEFT JOIN LATERAL ({query}) x ON true"
    )
}

fn access_log(rows: &[PgRow]) -> sqlx::Result<AccessLog> {
    let row = rows.first().ok_or(sqlx::Error::RowNotFound)?;
    let log: String = row.try_get("log")?;
    Ok(AccessLog {
        snapshot: row.try_get("log_snapshot")?,
        changes: serde_json::from_str(&log).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
    })
}

/// [`runs_by_ids`] (NOTIFY mode) and, in the same snapshot, the access log since `since`.
pub(crate) async fn runs_with_access_log(
    db: impl PgExecutor<'_>,
    ids: &[i64],
    since: Option<&str>,
) -> sqlx::Result<(Vec<Decoded<RunRow>>, AccessLog)> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        let runs =
            format!("SELECT {RUN_COLUMNS} FROM operation_runs r WHERE r.id = ANY($1::int8[])");
        with_access_log(&variants(&runs)[ChangeSource::Notify as usize])
    });
    let rows = sqlx::query(&SQL)
        .bind(ids)
        .bind(since)
        .fetch_all(db)
        .await?;
    let log = access_log(&rows)?;
    let runs = rows
        .iter()
        .filter(|row| row.try_get::<Option<i64>, _>("id").ok().flatten().is_some())
        .map(read_run)
        .collect();
    Ok((runs, log))
}

/// [`latest_packs`] (NOTIFY mode) and, in the same snapshot, the access log since `since`.
pub(crate) async fn latest_packs_with_access_log(
    db: impl PgExecutor<'_>,
    tenant_ids: &[i64],
    since: Option<&str>,
) -> sqlx::Result<(Vec<TenantPack>, AccessLog)> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        let packs = format!(
            "SELECT t.id AS tenant_id,
                EXISTS (SELECT 1 FROM tenants x WHERE x.id = t.id) AS exists, lp.*
             FROM unnest($1::bigint[]) AS t(id) {LATEST_PACK_JOIN}"
        );
        with_access_log(&variants(&packs)[ChangeSource::Notify as usize])
    });
    let rows = sqlx::query(&SQL)
        .bind(tenant_ids)
        .bind(since)
        .fetch_all(db)
        .await?;
    let log = access_log(&rows)?;
    let mut packs = Vec::new();
    for row in &rows {
        let Some(tenant_id) = row.try_get::<Option<i64>, _>("tenant_id")? else {
            continue;
        };
        packs.push(TenantPack {
            tenant_id,
            exists: row.try_get("exists")?,
            pack: latest_pack(row),
        });
    }
    Ok((packs, log))
}

/// A run together with one user's facts towards its owner.
#[derive(Debug, Clone)]
pub(crate) struct RunForUser {
    pub user_id: i64,
    pub run: Decoded<RunRow>,
    pub workspace_member: bool,
    pub tenant_in_workspace: bool,
    pub tenant_role: Option<String>,
    pub snap: Option<String>,
}

impl RunForUser {
    pub(crate) fn facts(&self) -> Facts {
        Facts {
            workspace_member: self.workspace_member,
            tenant_exists: true,
            tenant_in_workspace: self.tenant_in_workspace,
            tenant_role: self.tenant_role.clone(),
        }
    }
}

/// State and access facts for many (user, run) pairs at once: `users[i]` asks about
/// `ids[i]`. Streams opened at about the same time share this one query (`access::batch`).
pub(crate) async fn runs_for_users(
    db: impl PgExecutor<'_>,
    mode: ChangeSource,
    users: &[i64],
    ids: &[i64],
) -> sqlx::Result<Vec<RunForUser>> {
    static SQL: Sql = Sql::new(|| {
        variants(&format!(
            "SELECT q.user_id, {RUN_COLUMNS},
                {} AS workspace_member, {} AS tenant_in_workspace, {} AS tenant_role {{snap}}
             FROM unnest($1::bigint[], $2::bigint[]) AS q(user_id, run_id)
             JOIN operation_runs r ON r.id = q.run_id",
            member_of("r.workspace_id"),
            tenant_in("r.workspace_id", "r.tenant_id"),
            role_in("r.tenant_id")
        ))
    });
    let rows = sqlx::query(SQL.get(mode))
        .bind(users)
        .bind(ids)
        .fetch_all(db)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(RunForUser {
                user_id: row.try_get("user_id")?,
                run: read_run(row),
                workspace_member: row.try_get("workspace_member")?,
                tenant_in_workspace: row.try_get("tenant_in_workspace")?,
                tenant_role: row.try_get("tenant_role")?,
                snap: snap(row),
            })
        })
        .collect()
}

// "Latest" is the newest created_at, then the highest id (an index in runwire's migration
// matches this order). The pack's columns come back NULL when the tenant has none.
const LATEST_PACK_JOIN: &str = "LEFT JOIN LATERAL (
        SELECT p.id::int8 AS id, p.workspace_id::int8 AS workspace_id,
               p.tenant_id::int8 AS pack_tenant_id, p.status::text AS status,
               p.created_at::timestamptz::text AS created_at,
               p.generated_at::timestamptz::text AS generated_at,
               p.expires_at::timestamptz::text AS expires_at,
               p.updated_at::timestamptz::text AS updated_at {pack_version}
        FROM review_packs p WHERE p.tenant_id = t.id
        ORDER BY p.created_at DESC NULLS LAST, p.id DESC LIMIT 1) lp ON true";

/// The latest pack of a LEFT JOIN row: None without one.
fn latest_pack(row: &PgRow) -> Option<Decoded<PackRow>> {
    let id: Option<i64> = row.try_get("id").ok().flatten();
    id?;
    Some(read_pack(row))
}

/// The review-pack card of one tenant as the watcher reads it.
#[derive(Debug)]
pub(crate) struct TenantPack {
    pub tenant_id: i64,
    /// False once the tenant row is gone.
    pub exists: bool,
    pub pack: Option<Decoded<PackRow>>,
}

/// The latest pack of each tenant (None: the tenant has no pack).
pub(crate) async fn latest_packs(
    db: impl PgExecutor<'_>,
    mode: ChangeSource,
    tenant_ids: &[i64],
) -> sqlx::Result<Vec<TenantPack>> {
    static SQL: Sql = Sql::new(|| {
        variants(&format!(
            "SELECT t.id AS tenant_id,
                EXISTS (SELECT 1 FROM tenants x WHERE x.id = t.id) AS exists, lp.*
             FROM unnest($1::bigint[]) AS t(id) {LATEST_PACK_JOIN}"
        ))
    });
    let rows = sqlx::query(SQL.get(mode))
        .bind(tenant_ids)
        .fetch_all(db)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(TenantPack {
                tenant_id: row.try_get("tenant_id")?,
                exists: row.try_get("exists")?,
                pack: latest_pack(row),
            })
        })
        .collect()
}

/// A tenant's latest pack together with one user's facts towards the tenant.
#[derive(Debug, Clone)]
pub(crate) struct PackForUser {
    pub user_id: i64,
    pub tenant_id: i64,
    pub facts: Facts,
    pub pack: Option<Decoded<PackRow>>,
    pub snap: Option<String>,
}

/// State and access facts for many (user, tenant) pairs at once (rows of tenants that exist).
pub(crate) async fn packs_for_users(
    db: impl PgExecutor<'_>,
    mode: ChangeSource,
    users: &[i64],
    tenant_ids: &[i64],
) -> sqlx::Result<Vec<PackForUser>> {
    static SQL: Sql = Sql::new(|| {
        variants(&format!(
            "SELECT q.user_id, t.id::int8 AS tenant_id,
                {} AS workspace_member, {} AS tenant_role, lp.* {{snap}}
             FROM unnest($1::bigint[], $2::bigint[]) AS q(user_id, tenant_id)
             JOIN tenants t ON t.id = q.tenant_id {LATEST_PACK_JOIN}",
            member_of("t.workspace_id"),
            role_in("t.id")
        ))
    });
    let rows = sqlx::query(SQL.get(mode))
        .bind(users)
        .bind(tenant_ids)
        .fetch_all(db)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(PackForUser {
                user_id: row.try_get("user_id")?,
                tenant_id: row.try_get("tenant_id")?,
                pack: latest_pack(row),
                facts: Facts {
                    workspace_member: row.try_get("workspace_member")?,
                    tenant_exists: true,
                    tenant_in_workspace: true,
                    tenant_role: row.try_get("tenant_role")?,
                },
                snap: snap(row),
            })
        })
        .collect()
}

/// One user's facts towards one owner.
#[derive(Debug, Clone)]
pub(crate) struct OwnerFacts {
    pub user_id: i64,
    pub owner: Owner,
    pub facts: Facts,
    pub snap: Option<String>,
}

/// Facts for many (user, owner) pairs at once: the re-check of streams whose decisions went
/// stale. A pack's workspace is its tenant's *current* workspace.
pub(crate) async fn owner_facts(
    db: impl PgExecutor<'_>,
    mode: ChangeSource,
    users: &[i64],
    owners: &[Owner],
) -> sqlx::Result<Vec<OwnerFacts>> {
    static SQL: Sql = Sql::new(|| {
        variants(&format!(
            "SELECT q.user_id, q.pack, q.workspace_id, q.tenant_id,
                (t.id IS NOT NULL) AS tenant_exists,
                {} AS workspace_member, {} AS tenant_in_workspace, {} AS tenant_role {{snap}}
             FROM unnest($1::bigint[], $2::bool[], $3::bigint[], $4::bigint[])
                  AS q(user_id, pack, workspace_id, tenant_id)
             LEFT JOIN tenants t ON t.id = q.tenant_id",
            member_of("CASE WHEN q.pack THEN t.workspace_id ELSE q.workspace_id END"),
            tenant_in("q.workspace_id", "q.tenant_id"),
            role_in("q.tenant_id")
        ))
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
    let rows = sqlx::query(SQL.get(mode))
        .bind(users)
        .bind(&packs)
        .bind(&workspaces)
        .bind(&tenants)
        .fetch_all(db)
        .await?;
    let mut facts = Vec::with_capacity(rows.len());
    for row in &rows {
        let pack: bool = row.try_get("pack")?;
        let workspace: Option<i64> = row.try_get("workspace_id")?;
        let tenant: Option<i64> = row.try_get("tenant_id")?;
        let owner = match (pack, workspace, tenant) {
            (true, _, Some(tenant)) => Owner::Pack { tenant },
            (false, Some(workspace), tenant) => Owner::Run { workspace, tenant },
            _ => continue,
        };
        let tenant_exists: bool = row.try_get("tenant_exists")?;
        facts.push(OwnerFacts {
            user_id: row.try_get("user_id")?,
            owner,
            facts: Facts {
                workspace_member: row.try_get("workspace_member")?,
                tenant_exists: !pack || tenant_exists,
                tenant_in_workspace: pack || row.try_get::<bool, _>("tenant_in_workspace")?,
                tenant_role: row.try_get("tenant_role")?,
            },
            snap: snap(row),
        });
    }
    Ok(facts)
}

/// What a user may see of a workspace: membership, and their roles in its tenants.
#[derive(Debug, FromRow)]
pub(crate) struct WorkspaceView {
    pub workspace_member: bool,
    pub tenant_roles: sqlx::types::Json<Vec<(i64, String)>>,
    #[sqlx(default)]
    pub snap: Option<String>,
}

pub(crate) async fn workspace_view(
    db: impl PgExecutor<'_>,
    mode: ChangeSource,
    user_id: i64,
    workspace_id: i64,
) -> sqlx::Result<WorkspaceView> {
    static SQL: Sql = Sql::new(|| {
        variants(
            "SELECT EXISTS (SELECT 1 FROM workspace_memberships m
                        WHERE m.workspace_id = $1 AND m.user_id = $2) AS workspace_member,
                COALESCE((SELECT json_agg(json_build_array(tm.tenant_id, tm.role))
                          FROM tenant_memberships tm
                          JOIN tenants t ON t.id = tm.tenant_id
                          WHERE t.workspace_id = $1 AND tm.user_id = $2), '[]'::json)
                    AS tenant_roles {snap}",
        )
    });
    sqlx::query_as(SQL.get(mode))
        .bind(workspace_id)
        .bind(user_id)
        .fetch_one(db)
        .await
}

/// Active runs of a workspace, newest first (the caller filters them by access).
pub(crate) async fn active_runs(
    db: impl PgExecutor<'_>,
    mode: ChangeSource,
    workspace_id: i64,
) -> sqlx::Result<Vec<Decoded<RunRow>>> {
    static SQL: Sql = Sql::new(|| {
        variants(&format!(
            "SELECT {RUN_COLUMNS} FROM operation_runs r
             WHERE r.workspace_id = $1 AND r.status = ANY($2)
             ORDER BY r.created_at DESC NULLS LAST, r.id DESC"
        ))
    });
    let rows = sqlx::query(SQL.get(mode))
        .bind(workspace_id)
        .bind(&ACTIVE_RUN_STATUSES[..])
        .fetch_all(db)
        .await?;
    Ok(rows.iter().map(read_run).collect())
}

/// Runs of a workspace that finished in the last 24 hours, newest first, at most `limit`
/// (the caller filters them by access).
pub(crate) async fn recent_runs(
    db: impl PgExecutor<'_>,
    mode: ChangeSource,
    workspace_id: i64,
    limit: i64,
) -> sqlx::Result<Vec<Decoded<RunRow>>> {
    static SQL: Sql = Sql::new(|| {
        variants(&format!(
            "SELECT {RUN_COLUMNS} FROM operation_runs r
             WHERE r.workspace_id = $1 AND NOT (r.status = ANY($2))
               AND COALESCE(r.completed_at, r.updated_at) > now() - interval '24 hours'
             ORDER BY COALESCE(r.completed_at, r.updated_at) DESC, r.id DESC
             LIMIT $3"
        ))
    });
    let rows = sqlx::query(SQL.get(mode))
        .bind(workspace_id)
        .bind(&ACTIVE_RUN_STATUSES[..])
        .bind(limit)
        .fetch_all(db)
        .await?;
    Ok(rows.iter().map(read_run).collect())
}

/// Everything a workspace feed's snapshot shows, with the facts that decide what of it the
/// user may see, read in one snapshot of the database (REPEATABLE READ): the decision and
/// the states it judges are of the same moment.
pub(crate) struct FeedRead {
    pub(crate) view: WorkspaceView,
    pub(crate) active: Vec<Decoded<RunRow>>,
    pub(crate) recent: Vec<Decoded<RunRow>>,
    /// The review-pack cards of the tenants the user has a role in, in this workspace.
    pub(crate) packs: Vec<TenantPack>,
}

pub(crate) async fn feed_read(
    pool: &sqlx::PgPool,
    mode: ChangeSource,
    user_id: i64,
    workspace_id: i64,
    recent_limit: i64,
) -> sqlx::Result<FeedRead> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let view = workspace_view(&mut *tx, mode, user_id, workspace_id).await?;
    let active = active_runs(&mut *tx, mode, workspace_id).await?;
    let recent = recent_runs(&mut *tx, mode, workspace_id, recent_limit).await?;
    let mut tenants: Vec<i64> = view.tenant_roles.0.iter().map(|(t, _)| *t).collect();
    tenants.sort_unstable();
    let packs = latest_packs(&mut *tx, mode, &tenants).await?;
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
        "SELECT w.id::int8 AS id, w.name::text AS name,
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

/// Every tenant's workspace (the WAL source keeps them, to tell a moved tenant).
pub(crate) async fn tenant_workspaces(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<(i64, i64)>> {
    sqlx::query_as(
        "SELECT id::int8, workspace_id::int8 FROM tenants WHERE workspace_id IS NOT NULL",
    )
    .fetch_all(db)
    .await
}

/// The snapshot a statement sees, as text (`xmin:xmax:xip,...`).
pub(crate) async fn current_snapshot(db: impl PgExecutor<'_>) -> sqlx::Result<String> {
    sqlx::query_scalar("SELECT pg_current_snapshot()::text")
        .fetch_one(db)
        .await
}

/// Writes a marker into the WAL (a transactional logical message, no table touched): the WAL
/// source knows everything committed before it has been applied once it streams past it.
pub(crate) async fn emit_marker(db: impl PgExecutor<'_>, token: &str) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_logical_emit_message(true, 'runwire', $1)")
        .bind(token)
        .execute(db)
        .await
        .map(|_| ())
}
