//! What `runwire migrate` installs and removes, and what `serve` says about a database it
//! cannot use as it is: one integration per change source, nothing of the other left behind,
//! no host table created in a host's database, no bookkeeping table, a clear line for every
//! refusal.

mod common;

use common::binary::{runwire, strong_secret};
use common::*;
use runwire::{ChangeSource, Changes};
use sqlx::PgPool;

async fn migrate(db: &TestDb, changes: Changes) -> anyhow::Result<ChangeSource> {
    let mut conn = db.pool.acquire().await.unwrap();
    runwire::migrate(&mut conn, changes).await
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// runwire's objects in the database: (triggers named runwire_*, `version` columns, the
/// `runwire` schema, tables published by the `runwire` publication).
async fn installed(pool: &PgPool) -> (i64, i64, i64, i64) {
    (
        count(
            pool,
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'runwire\\_%'",
        )
        .await,
        count(
            pool,
            "SELECT count(*) FROM pg_attribute WHERE attname = 'version' AND NOT attisdropped
             AND attrelid IN (to_regclass('operation_runs'), to_regclass('review_packs'))",
        )
        .await,
        count(
            pool,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'runwire'",
        )
        .await,
        count(
            pool,
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'runwire'",
        )
        .await,
    )
}

#[tokio::test]
async fn migrate_installs_one_integration_and_removes_the_other() {
    let db = TestDb::empty().await;
    assert_eq!(
        migrate(&db, Changes::Notify).await.unwrap(),
        ChangeSource::Notify
    );
    let notify = installed(&db.pool).await;
    assert_eq!((notify.1, notify.2, notify.3), (2, 1, 0));
    assert_eq!(notify.0, 17, "every trigger of the NOTIFY integration");

    assert_eq!(migrate(&db, Changes::Wal).await.unwrap(), ChangeSource::Wal);
    assert_eq!(
        installed(&db.pool).await,
        (0, 0, 0, 7),
        "WAL mode: nothing on the host's tables, the seven tables published"
    );
    // Twice is the same as once, both ways.
    migrate(&db, Changes::Wal).await.unwrap();
    assert_eq!(installed(&db.pool).await, (0, 0, 0, 7));
    migrate(&db, Changes::Notify).await.unwrap();
    migrate(&db, Changes::Notify).await.unwrap();
    assert_eq!(installed(&db.pool).await, notify);
    // No bookkeeping table of runwire's anywhere.
    let bookkeeping = count(
        &db.pool,
        "SELECT count(*) FROM pg_class WHERE relname = '_sqlx_migrations'",
    )
    .await;
    assert_eq!(bookkeeping, 0);
}

#[tokio::test]
async fn auto_installs_logical_replication_where_the_server_has_it() {
    let db = TestDb::empty().await;
    let level: String = sqlx::query_scalar("SELECT current_setting('wal_level')")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let expected = match level.as_str() {
        "logical" => ChangeSource::Wal,
        _ => ChangeSource::Notify,
    };
    assert_eq!(migrate(&db, Changes::Auto).await.unwrap(), expected);
}

#[tokio::test]
async fn migrate_creates_host_tables_only_in_an_empty_database() {
    // A host's database (here: all seven tables, nothing else): no table is created.
    let db = TestDb::new().await;
    let tables = "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relkind = 'r' AND n.nspname = 'public'";
    let before = count(&db.pool, tables).await;
    migrate(&db, changes()).await.unwrap();
    assert_eq!(count(&db.pool, tables).await, before);

    // Some of the host's tables but not all: refused, naming the missing ones; nothing done.
    let partial = TestDb::empty().await;
    sqlx::raw_sql(
        "CREATE TABLE users (id bigserial PRIMARY KEY, email text);
         CREATE TABLE workspaces (id bigserial PRIMARY KEY, name text);",
    )
    .execute(&partial.pool)
    .await
    .unwrap();
    let err = migrate(&partial, Changes::Notify).await.unwrap_err();
    assert!(
        err.to_string().contains(
            "not workspace_memberships, tenants, tenant_memberships, operation_runs, review_packs"
        ),
        "{err:#}"
    );
    assert_eq!(count(&partial.pool, tables).await, 2);
    assert_eq!(installed(&partial.pool).await, (0, 0, 0, 0));
}

/// A database migrated by an older runwire (its functions in the host's schema, sqlx's
/// bookkeeping table): the triggers move to runwire's functions and the old ones go.
#[tokio::test]
async fn an_older_runwire_integration_is_replaced() {
    let db = TestDb::empty().await;
    let mut conn = db.pool.acquire().await.unwrap();
    runwire::create_host_tables(&mut conn).await.unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION runwire_bump_version() RETURNS trigger LANGUAGE plpgsql
             AS $$ BEGIN RETURN NEW; END $$;
         ALTER TABLE operation_runs ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
         CREATE TRIGGER runwire_version BEFORE UPDATE ON operation_runs
             FOR EACH ROW EXECUTE FUNCTION runwire_bump_version();",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    migrate(&db, Changes::Notify).await.unwrap();
    let old = count(
        &db.pool,
        "SELECT count(*) FROM pg_proc WHERE proname = 'runwire_bump_version'",
    )
    .await;
    assert_eq!(old, 0);
    let using_new = count(
        &db.pool,
        "SELECT count(*) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
         WHERE t.tgname = 'runwire_version' AND p.pronamespace = 'runwire'::regnamespace",
    )
    .await;
    assert_eq!(using_new, 2);
}

/// `serve --changes auto` on a database with only the NOTIFY integration uses NOTIFY and
/// says once, at WARN, what that costs and why logical replication is not used.
#[tokio::test]
async fn auto_falls_back_to_notify_with_one_warning() {
    let db = TestDb::empty().await;
    migrate(&db, Changes::Notify).await.unwrap();
    let url = db.url();
    let p = runwire(
        &["serve", "--bind", "127.0.0.1:0", "--changes", "auto"],
        &[("DATABASE_URL", &url), strong_secret()],
    );
    let c = Client::to(p.addr().await);
    c.await_status("/readyz", 200).await;
    let warning = p.line("changes come from NOTIFY triggers").await;
    assert!(warning.contains(r#""level":"WARN""#), "{warning}");
    assert!(warning.contains("wal_level = logical"), "{warning}");
    let why = match mode() {
        ChangeSource::Notify => "wal_level = replica",
        // A logical server: here the missing publication is why.
        ChangeSource::Wal => "the publication runwire does not publish",
    };
    assert!(warning.contains(why), "{warning}");
    assert_eq!(p.count("changes come from NOTIFY triggers"), 1);
    let ready: serde_json::Value = c.get("/readyz", None).await.json().await.unwrap();
    assert_eq!(ready["changes"]["source"], "notify");
}

/// A column runwire cannot read stops `serve` with the column named.
#[tokio::test]
async fn serve_names_the_columns_it_cannot_read() {
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "ALTER TABLE operation_runs ALTER COLUMN summary_counts DROP DEFAULT;
         ALTER TABLE operation_runs ALTER COLUMN summary_counts TYPE xml USING NULL;
         ALTER TABLE review_packs DROP COLUMN expires_at;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let url = db.url();
    let p = runwire(
        &["serve", "--bind", "127.0.0.1:0", "--database-fail-fast"],
        &[("DATABASE_URL", &url), strong_secret()],
    );
    let (ok, out) = p.exit().await;
    assert!(!ok);
    assert!(
        out.contains(
            "operation_runs.summary_counts is xml (runwire reads json, jsonb, text, varchar)"
        ),
        "{out}"
    );
    assert!(out.contains("review_packs.expires_at is missing"), "{out}");
}

/// A host's membership tables need not have a primary key (a Laravel pivot made of two
/// `foreignId`s has none). Postgres refuses every UPDATE and DELETE of a table that a
/// publication publishes updates and deletes of, unless it has a replica identity: after
/// `migrate --changes wal` the host must still be able to change and remove memberships.
#[tokio::test]
async fn the_wal_integration_keeps_host_writes_to_tables_without_a_primary_key() {
    let db = TestDb::empty().await;
    let mut conn = db.pool.acquire().await.unwrap();
    runwire::create_host_tables(&mut conn).await.unwrap();
    drop(conn);
    sqlx::raw_sql(
        "ALTER TABLE workspace_memberships DROP CONSTRAINT workspace_memberships_pkey;
         ALTER TABLE tenant_memberships DROP CONSTRAINT tenant_memberships_pkey;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let w = seed(&db.pool).await;
    migrate(&db, Changes::Wal).await.unwrap();
    for sql in [
        format!(
            "UPDATE tenant_memberships SET role = 'manager' WHERE user_id = {}",
            w.readonly
        ),
        format!(
            "DELETE FROM tenant_memberships WHERE user_id = {}",
            w.readonly
        ),
        format!(
            "UPDATE workspace_memberships SET role = 'viewer' WHERE user_id = {}",
            w.member
        ),
        format!(
            "DELETE FROM workspace_memberships WHERE user_id = {}",
            w.member
        ),
    ] {
        if let Err(e) = sqlx::query(&sql).execute(&db.pool).await {
            panic!("the host's own write failed after migrate --changes wal: {sql}: {e}");
        }
    }
}

/// Every relation (table, index, sequence, view) outside the system schemas, as
/// `schema.name (kind)`, and every non-system schema.
async fn catalog(pool: &PgPool) -> (Vec<String>, Vec<String>) {
    let relations = sqlx::query_scalar(
        "SELECT n.nspname || '.' || c.relname || ' (' || c.relkind::text || ')'
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let schemas = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace
         WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    (relations, schemas)
}

/// Exactly what `migrate` adds to a host's database (the seven tables made by the host), in
/// each mode, as docs/operations.md lists it: no table in the host's schema, no bookkeeping
/// (no `_sqlx_migrations`) anywhere; WAL mode adds no relation at all, NOTIFY mode its own
/// schema with its access log, and two indexes on the host's tables.
#[tokio::test]
async fn migrate_adds_to_a_host_database_exactly_what_the_docs_list() {
    for changes in [Changes::Wal, Changes::Notify] {
        let db = TestDb::empty().await;
        let mut conn = db.pool.acquire().await.unwrap();
        runwire::create_host_tables(&mut conn).await.unwrap();
        drop(conn);
        let (before, schemas_before) = catalog(&db.pool).await;
        migrate(&db, changes).await.unwrap();
        // Twice: every file is idempotent, and a second run adds nothing either.
        migrate(&db, changes).await.unwrap();
        let (after, schemas_after) = catalog(&db.pool).await;
        let added: Vec<&String> = after.iter().filter(|r| !before.contains(r)).collect();
        let removed: Vec<&String> = before.iter().filter(|r| !after.contains(r)).collect();
        assert!(removed.is_empty(), "{changes:?} removed {removed:?}");
        assert!(
            !after.iter().any(|r| r.contains("_sqlx_migrations")),
            "{changes:?}: {after:?}"
        );
        assert!(
            !added
                .iter()
                .any(|r| r.starts_with("public.") && r.ends_with("(r)")),
            "{changes:?} created a table in the host's schema: {added:?}"
        );
        match changes {
            Changes::Wal => {
                assert!(added.is_empty(), "WAL mode adds no relation: {added:?}");
                assert_eq!(schemas_after, schemas_before);
            }
            _ => {
                let mut expected = vec![
                    "public.operation_runs_workspace_active (i)",
                    "public.review_packs_tenant_latest (i)",
                    "runwire.access_changes (r)",
                ];
                let mut got: Vec<&str> = added
                    .iter()
                    .map(|r| r.as_str())
                    // The access log's own key and sequence.
                    .filter(|r| !r.starts_with("runwire.access_changes_"))
                    .collect();
                expected.sort();
                got.sort();
                assert_eq!(got, expected);
                let new_schemas: Vec<&String> = schemas_after
                    .iter()
                    .filter(|s| !schemas_before.contains(s))
                    .collect();
                assert_eq!(new_schemas, ["runwire"]);
            }
        }
        db.drop_db().await;
    }
}
