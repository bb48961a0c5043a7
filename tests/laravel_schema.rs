//! The Laravel-schema fixture (`tests/fixtures/laravel/`, driven by `common/laravel.rs`): it
//! builds the host tables with Laravel's own column types, and runwire's integration must
//! leave the host's writes to them working (issue 19).

mod common;
// Until tests/common/mod.rs declares it (`pub mod laravel;`), this file brings it in itself.
#[path = "common/laravel.rs"]
mod laravel;

use common::TestDb;
use laravel::create_laravel_schema;

/// The fixture's database as a URL for PHP (the test cluster trusts local connections, so
/// there is no password to carry).
fn url_of(db: &TestDb) -> String {
    let o = &db.options;
    format!(
        "postgres://{}@{}:{}/{}",
        o.get_username(),
        o.get_host(),
        o.get_port(),
        db.name
    )
}

async fn laravel_db() -> TestDb {
    let db = TestDb::empty().await;
    create_laravel_schema(&url_of(&db)).await;
    db
}

/// (table, column, type as Postgres prints it, NOT NULL) of the columns runwire reads.
async fn columns(db: &TestDb) -> Vec<(String, String, String, bool)> {
    sqlx::query_as(
        "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY 1, a.attnum",
    )
    .fetch_all(&db.pool)
    .await
    .expect("read pg_attribute")
}

#[tokio::test]
async fn the_fixture_builds_the_host_tables_with_laravels_types() {
    let db = laravel_db().await;
    let columns = columns(&db).await;
    let has = |table: &str, column: &str, ty: &str, not_null: bool| {
        let found = columns
            .iter()
            .find(|(t, c, _, _)| t == table && c == column);
        assert_eq!(
            found.map(|(_, _, ty, nn)| (ty.as_str(), *nn)),
            Some((ty, not_null)),
            "{table}.{column}"
        );
    };
    const TS: &str = "timestamp(0) without time zone";
    const VARCHAR: &str = "character varying(255)";
    has("users", "id", "bigint", true);
    has("users", "email", VARCHAR, true);
    has("users", "name", VARCHAR, true);
    has("users", "password", VARCHAR, true);
    has("workspaces", "id", "bigint", true);
    for pivot in ["workspace_memberships", "tenant_memberships"] {
        has(pivot, "id", "bigint", true);
        has(pivot, "user_id", "bigint", true);
        has(pivot, "role", VARCHAR, true);
        has(pivot, "created_at", TS, false);
    }
    has("workspace_memberships", "workspace_id", "bigint", true);
    has("tenant_memberships", "tenant_id", "bigint", true);
    has("tenants", "id", "integer", true);
    has("tenants", "workspace_id", "bigint", true);
    has("tenants", "name", VARCHAR, true);
    has("operation_runs", "id", "bigint", true);
    has("operation_runs", "workspace_id", "bigint", true);
    has("operation_runs", "tenant_id", "bigint", false);
    has("operation_runs", "type", VARCHAR, true);
    has("operation_runs", "status", VARCHAR, true);
    has("operation_runs", "outcome", VARCHAR, true);
    has("operation_runs", "summary_counts", "json", false);
    for column in ["started_at", "completed_at", "created_at", "updated_at"] {
        has("operation_runs", column, TS, false);
    }
    has("review_packs", "id", "bigint", true);
    has("review_packs", "workspace_id", "bigint", true);
    has("review_packs", "tenant_id", "bigint", true);
    has("review_packs", "status", VARCHAR, true);
    for column in ["generated_at", "expires_at", "created_at", "updated_at"] {
        has("review_packs", column, TS, false);
    }

    // The pivots are unique per pair, as Laravel's unique() makes them.
    let unique_pairs: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
         WHERE c.relnamespace = 'public'::regnamespace
           AND i.indisunique AND NOT i.indisprimary AND i.indnatts = 2 ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        unique_pairs,
        ["tenant_memberships", "workspace_memberships"]
    );
    // Nothing of runwire's: no version column, no trigger of its own.
    assert!(!columns.iter().any(|(_, c, _, _)| c == "version"));
    let triggers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(triggers, 0);
}

/// Issue 19, breakage 2: after `runwire migrate` on Laravel's tables, a queue worker's
/// progress update to the `json` column failed with "could not identify an equality operator
/// for type json" (the version trigger compared `NEW IS NOT DISTINCT FROM OLD`, which json
/// cannot); every worker's progress update would have crashed.
#[tokio::test]
async fn json_progress_updates_succeed_with_runwire_migrated() {
    let db = laravel_db().await;
    let migrated = tokio::process::Command::new(env!("CARGO_BIN_EXE_runwire"))
        .arg("migrate")
        .env("DATABASE_URL", url_of(&db))
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run runwire migrate");
    assert!(
        migrated.status.success(),
        "runwire migrate on Laravel's tables: {}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let run: i64 = sqlx::query_scalar(
        "WITH w AS (INSERT INTO workspaces (name) VALUES ('w') RETURNING id)
         INSERT INTO operation_runs (workspace_id, type, status, started_at, created_at, updated_at)
         SELECT id, 'sync', 'running', now(), now(), now() FROM w RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .expect("a run, as Laravel inserts it");

    let progress = sqlx::query(
        r#"UPDATE operation_runs SET summary_counts = '{"processed":3}'::json, updated_at = now() WHERE id = $1"#,
    )
    .bind(run)
    .execute(&db.pool)
    .await;
    let progress = progress.expect("a json progress update with runwire migrated");
    assert_eq!(progress.rows_affected(), 1);
    let stored: String =
        sqlx::query_scalar("SELECT summary_counts::text FROM operation_runs WHERE id = $1")
            .bind(run)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored, r#"{"processed":3}"#);
}
