//! What runwire needs of the database, installed (`runwire migrate`) or checked (`serve`).
//!
//! Two integrations, one per change source (`migrations/`): WAL mode needs a publication and
//! nothing on the host's tables; NOTIFY mode needs triggers, `version` columns and a schema
//! `runwire` of its own. `migrate` installs the chosen one and removes the other, in one
//! transaction, with no bookkeeping table: every file is idempotent. It creates the seven
//! host tables only in a database that has none of them (standalone use, the demo, tests);
//! in a host's database it touches no table of the host's but to install the integration.
//!
//! `serve` changes nothing: [`check`] reads the catalog and says what is missing, which
//! change source it will use, and which of the host's columns it cannot read.

use crate::model::ChangeSource;
use anyhow::{bail, Context};
use clap::ValueEnum;
use sqlx::{Executor, PgConnection};

const HOST_TABLES_SQL: &str = include_str!("../migrations/host_tables.sql");
const NOTIFY_SQL: &str = include_str!("../migrations/notify.sql");
const WAL_SQL: &str = include_str!("../migrations/wal.sql");
const REMOVE_NOTIFY_SQL: &str = include_str!("../migrations/remove_notify.sql");
const REMOVE_WAL_SQL: &str = include_str!("../migrations/remove_wal.sql");

/// Every table runwire reads; `serve` needs `SELECT` on each.
pub(crate) const HOST_TABLES: [&str; 7] = [
    "users",
    "workspaces",
    "workspace_memberships",
    "tenants",
    "tenant_memberships",
    "operation_runs",
    "review_packs",
];

/// Where changes come from, as asked (`--changes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Changes {
    /// Logical replication where the server and role allow it, else NOTIFY.
    Auto,
    /// Logical replication (pgoutput): nothing on the host's tables.
    Wal,
    /// Triggers and NOTIFY: works everywhere, but serialises the host's commits.
    Notify,
}

/// Applies what `changes` needs and removes what it does not; creates the host tables in an
/// empty database. Returns the source installed (Auto: WAL when `wal_level = logical`).
pub async fn migrate(conn: &mut PgConnection, changes: Changes) -> anyhow::Result<ChangeSource> {
    let mut tx = sqlx::Connection::begin(&mut *conn)
        .await
        .context("cannot connect to Postgres")?;
    // Instances started together with --migrate take turns.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('runwire migrate'))")
        .execute(&mut *tx)
        .await?;
    let missing = missing_tables(&mut tx).await?;
    if missing.len() == HOST_TABLES.len() {
        tx.execute(HOST_TABLES_SQL)
            .await
            .context("cannot create the host tables")?;
    } else if !missing.is_empty() {
        bail!(
            "the database has some of the host's tables but not {}: runwire creates tables only \
             in an empty database (standalone use); create them with the host app's migrations",
            missing.join(", ")
        );
    }
    let source = match changes {
        Changes::Wal => ChangeSource::Wal,
        Changes::Notify => ChangeSource::Notify,
        Changes::Auto if wal_level(&mut tx).await? == "logical" => ChangeSource::Wal,
        Changes::Auto => ChangeSource::Notify,
    };
    let (install, remove) = match source {
        ChangeSource::Wal => (WAL_SQL, REMOVE_NOTIFY_SQL),
        ChangeSource::Notify => (NOTIFY_SQL, REMOVE_WAL_SQL),
    };
    let what = describe(source);
    tx.execute(install)
        .await
        .map_err(|e| failed(&format!("cannot install the {what} integration"), &e))?;
    tx.execute(remove).await.map_err(|e| {
        failed(
            &format!("cannot remove what the {what} integration does not need"),
            &e,
        )
    })?;
    tx.commit().await?;
    Ok(source)
}

/// A failed migration step as one line: what runwire was doing and Postgres's message, once.
/// (sqlx's error says "error returned from database: X" and then its source, X, again.) A
/// refusal for lack of rights says who may migrate.
fn failed(doing: &str, e: &sqlx::Error) -> anyhow::Error {
    match e.as_database_error() {
        Some(db) if db.code().as_deref() == Some("42501") => anyhow::anyhow!(
            "{doing}: {}; migrate as the owner of the host's tables (see docs/operations.md)",
            db.message()
        ),
        Some(db) => anyhow::anyhow!("{doing}: {}", db.message()),
        None => anyhow::anyhow!("{doing}: {e}"),
    }
}

/// Creates the seven host tables if none exist (tests, the demo, standalone use).
pub async fn create_host_tables(conn: &mut PgConnection) -> anyhow::Result<()> {
    if missing_tables(&mut *conn).await?.len() == HOST_TABLES.len() {
        conn.execute(HOST_TABLES_SQL).await?;
    }
    Ok(())
}

fn describe(source: ChangeSource) -> &'static str {
    match source {
        ChangeSource::Wal => "logical replication (WAL)",
        ChangeSource::Notify => "NOTIFY",
    }
}

async fn missing_tables(conn: &mut PgConnection) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT t.name FROM unnest($1::text[]) WITH ORDINALITY AS t(name, n)
         WHERE to_regclass(t.name) IS NULL ORDER BY t.n",
    )
    .bind(&HOST_TABLES[..])
    .fetch_all(conn)
    .await
}

async fn wal_level(conn: &mut PgConnection) -> sqlx::Result<String> {
    sqlx::query_scalar("SELECT current_setting('wal_level')")
        .fetch_one(conn)
        .await
}

/// What `serve` decided at start-up: the change source, and why NOTIFY when it was not asked
/// for (for the one warning that says what it costs).
#[derive(Debug)]
pub(crate) struct Checked {
    pub source: ChangeSource,
    pub fallback_reason: Option<String>,
}

/// Checks, reading only, that runwire can serve this database with `changes`: SELECT on
/// every table, the integration of the source it will use in place, and every column it
/// reads of a type it reads. Says exactly what is missing.
pub(crate) async fn check(conn: &mut PgConnection, changes: Changes) -> anyhow::Result<Checked> {
    let unreadable = unreadable_tables(&mut *conn)
        .await
        .context("cannot check which tables runwire may read")?;
    anyhow::ensure!(
        unreadable.is_empty(),
        "serve needs SELECT on {} (missing table or grant); see docs/operations.md",
        unreadable.join(", ")
    );
    let columns = column_problems(&mut *conn)
        .await
        .context("cannot check the host tables' columns")?;
    anyhow::ensure!(
        columns.is_empty(),
        "runwire cannot read these columns: {}; see the column contract in docs/api.md",
        columns.join("; ")
    );
    let wal = wal_problems(&mut *conn)
        .await
        .context("cannot check for logical replication")?;
    let notify = missing_notify(&mut *conn)
        .await
        .context("cannot check for the NOTIFY integration")?;
    let notify_problem = (!notify.is_empty()).then(|| {
        format!(
            "the NOTIFY integration is not in place (missing {}): run `runwire migrate --changes notify`",
            notify.join(", ")
        )
    });
    match changes {
        Changes::Wal => match wal {
            None => Ok(Checked {
                source: ChangeSource::Wal,
                fallback_reason: None,
            }),
            Some(why) => bail!("--changes wal: {why}"),
        },
        Changes::Notify => match notify_problem {
            None => Ok(Checked {
                source: ChangeSource::Notify,
                fallback_reason: None,
            }),
            Some(why) => bail!("--changes notify: {why} (or pass --migrate)"),
        },
        Changes::Auto => match (wal, notify_problem) {
            (None, _) => Ok(Checked {
                source: ChangeSource::Wal,
                fallback_reason: None,
            }),
            (Some(why), None) => Ok(Checked {
                source: ChangeSource::Notify,
                fallback_reason: Some(why),
            }),
            (Some(wal), Some(notify)) => bail!(
                "no change source is set up: logical replication — {wal}; NOTIFY — {notify} (or pass --migrate)"
            ),
        },
    }
}

/// Why logical replication cannot be used (None: it can).
async fn wal_problems(conn: &mut PgConnection) -> sqlx::Result<Option<String>> {
    let level = wal_level(&mut *conn).await?;
    if level != "logical" {
        return Ok(Some(format!(
            "the server has wal_level = {level}; logical replication needs wal_level = logical \
             (postgresql.conf, then restart)"
        )));
    }
    let (role, may): (String, bool) = sqlx::query_as(
        "SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut *conn)
    .await?;
    if !may {
        return Ok(Some(format!(
            "the role {role} may not replicate: ALTER ROLE {role} REPLICATION"
        )));
    }
    let missing: Vec<String> = sqlx::query_scalar(
        "SELECT t.name FROM unnest($1::text[]) WITH ORDINALITY AS t(name, n)
         WHERE NOT EXISTS (SELECT 1 FROM pg_publication_tables p
                           WHERE p.pubname = 'runwire' AND p.tablename = t.name
                             AND to_regclass(t.name) = format('%I.%I', p.schemaname, p.tablename)::regclass)
         ORDER BY t.n",
    )
    .bind(&HOST_TABLES[..])
    .fetch_all(&mut *conn)
    .await?;
    if !missing.is_empty() {
        return Ok(Some(format!(
            "the publication runwire does not publish {}: run `runwire migrate --changes wal`",
            missing.join(", ")
        )));
    }
    Ok(None)
}

/// The parts of the NOTIFY integration that are missing, by name (empty: in place).
pub async fn missing_notify(conn: &mut PgConnection) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT CASE WHEN need.trigger IS NULL THEN need.tbl || '.version'
                     WHEN need.trigger = '' THEN need.tbl
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
            (19, 'users', 'runwire_notify_truncate'),
            (20, 'runwire.access_changes', '')
         ) AS need(n, tbl, trigger)
         WHERE NOT CASE WHEN need.trigger IS NULL
             THEN EXISTS (SELECT 1 FROM pg_attribute a
                 WHERE a.attrelid = to_regclass(need.tbl) AND a.attname = 'version'
                   AND NOT a.attisdropped)
             WHEN need.trigger = '' THEN to_regclass(need.tbl) IS NOT NULL
                 AND has_table_privilege(to_regclass(need.tbl), 'SELECT')
             ELSE EXISTS (SELECT 1 FROM pg_trigger g
                 WHERE g.tgrelid = to_regclass(need.tbl) AND g.tgname = need.trigger)
             END
         ORDER BY need.n",
    )
    .fetch_all(conn)
    .await
}

/// The tables runwire reads that the current role may not `SELECT` (missing tables included).
async fn unreadable_tables(conn: &mut PgConnection) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT t.name FROM unnest($1::text[]) WITH ORDINALITY AS t(name, n)
         WHERE to_regclass(t.name) IS NULL
            OR NOT has_table_privilege(to_regclass(t.name), 'SELECT')
         ORDER BY t.n",
    )
    .bind(&HOST_TABLES[..])
    .fetch_all(conn)
    .await
}

/// The column contract (docs/api.md): each column runwire reads, and the types it reads it
/// as. Returns one line per column that is missing or of another type.
async fn column_problems(conn: &mut PgConnection) -> sqlx::Result<Vec<String>> {
    const ID: &str = "int2,int4,int8";
    const TEXT: &str = "text,varchar,bpchar,name,citext";
    const TIME: &str = "timestamp,timestamptz";
    const JSON: &str = "json,jsonb,text,varchar";
    let contract: &[(&str, &str, &str)] = &[
        ("users", "id", ID),
        ("workspaces", "id", ID),
        ("workspaces", "name", TEXT),
        ("workspace_memberships", "workspace_id", ID),
        ("workspace_memberships", "user_id", ID),
        ("tenants", "id", ID),
        ("tenants", "workspace_id", ID),
        ("tenants", "name", TEXT),
        ("tenant_memberships", "tenant_id", ID),
        ("tenant_memberships", "user_id", ID),
        ("tenant_memberships", "role", TEXT),
        ("operation_runs", "id", ID),
        ("operation_runs", "workspace_id", ID),
        ("operation_runs", "tenant_id", ID),
        ("operation_runs", "type", TEXT),
        ("operation_runs", "status", TEXT),
        ("operation_runs", "outcome", TEXT),
        ("operation_runs", "summary_counts", JSON),
        ("operation_runs", "created_at", TIME),
        ("operation_runs", "started_at", TIME),
        ("operation_runs", "completed_at", TIME),
        ("operation_runs", "updated_at", TIME),
        ("review_packs", "id", ID),
        ("review_packs", "workspace_id", ID),
        ("review_packs", "tenant_id", ID),
        ("review_packs", "status", TEXT),
        ("review_packs", "created_at", TIME),
        ("review_packs", "generated_at", TIME),
        ("review_packs", "expires_at", TIME),
        ("review_packs", "updated_at", TIME),
    ];
    let (tables, columns, types): (Vec<&str>, Vec<&str>, Vec<&str>) =
        contract
            .iter()
            .fold((vec![], vec![], vec![]), |mut acc, (t, c, ty)| {
                acc.0.push(*t);
                acc.1.push(*c);
                acc.2.push(*ty);
                acc
            });
    sqlx::query_scalar(
        "SELECT CASE WHEN a.attname IS NULL THEN q.tbl || '.' || q.col || ' is missing'
                ELSE q.tbl || '.' || q.col || ' is ' || format_type(a.atttypid, a.atttypmod)
                     || ' (runwire reads ' || replace(q.types, ',', ', ') || ')' END
         FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS q(tbl, col, types, n)
         LEFT JOIN pg_attribute a ON a.attrelid = to_regclass(q.tbl) AND a.attname = q.col
              AND NOT a.attisdropped AND a.attnum > 0
         LEFT JOIN pg_type ty ON ty.oid = a.atttypid
         WHERE a.attname IS NULL OR NOT (ty.typname = ANY(string_to_array(q.types, ',')))
         ORDER BY q.n",
    )
    .bind(&tables)
    .bind(&columns)
    .bind(&types)
    .fetch_all(conn)
    .await
}
