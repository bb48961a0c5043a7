//! Least privilege: the real `runwire serve` binary runs as a Postgres role that may only
//! SELECT the seven tables it reads (and LISTEN, which needs no grant; in WAL mode, with
//! REPLICATION), and refuses to start on a database without the integration of its change
//! source instead of changing the schema.

mod common;

use common::*;
use runwire::Tokens;
use sqlx::{Connection, PgConnection};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

/// At least 32 bytes, as every HS256 secret runwire accepts.
const SECRET: &str = "privileges-test-secret-0123456789abcdef";

const TABLES: &str = "users, workspaces, workspace_memberships, tenants, tenant_memberships, \
                      operation_runs, review_packs";

/// A login role with exactly what `serve` needs on `db`: CONNECT, USAGE on `public`, SELECT on
/// the seven tables, and in WAL mode REPLICATION. Roles are cluster-wide: [`drop_role`]
/// removes it after the database.
async fn select_only_role(db: &TestDb) -> String {
    let role = format!("runwire_test_ro_{}", rand::random::<u32>());
    let mut conn = PgConnection::connect_with(&db.options).await.unwrap();
    let replication = match mode() {
        runwire::ChangeSource::Wal => "REPLICATION",
        runwire::ChangeSource::Notify => "",
    };
    for sql in [
        format!("CREATE ROLE {role} LOGIN {replication}"),
        format!("GRANT CONNECT ON DATABASE {} TO {role}", db.name),
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC".to_string(),
        format!("GRANT USAGE ON SCHEMA public TO {role}"),
        format!("GRANT SELECT ON {TABLES} TO {role}"),
    ] {
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }
    conn.close().await.ok();
    role
}

async fn drop_role(db: TestDb, role: &str) {
    let mut conn = PgConnection::connect_with(&db.options.clone().database("postgres"))
        .await
        .unwrap();
    db.drop_db().await;
    sqlx::query(&format!("DROP ROLE IF EXISTS {role}"))
        .execute(&mut conn)
        .await
        .unwrap();
}

fn database_url(db: &TestDb, user: &str) -> String {
    format!(
        "postgres://{user}@{}:{}/{}",
        db.options.get_host(),
        db.options.get_port(),
        db.name
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `runwire serve` on the test's change source.
fn serve(database_url: &str, port: u16, flags: &[&str]) -> Child {
    let changes = match mode() {
        runwire::ChangeSource::Wal => "wal",
        runwire::ChangeSource::Notify => "notify",
    };
    Command::new(env!("CARGO_BIN_EXE_runwire"))
        .arg("serve")
        .args(["--changes", changes])
        .args(flags)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .env("RUNWIRE_JWT_SECRET", SECRET)
        .env("RUNWIRE_BIND", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the runwire binary")
}

/// What the server wrote to stderr.
async fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    let stderr = child.stderr.as_mut().expect("stderr is piped");
    stderr.read_to_string(&mut err).await.expect("read stderr");
    err
}

/// Waits for `serve` to exit unsuccessfully; returns its stderr.
async fn refused(mut server: Child) -> String {
    let status = tokio::time::timeout(WAIT, server.wait())
        .await
        .expect("serve exits")
        .unwrap();
    assert!(!status.success());
    stderr_of(&mut server).await
}

/// Waits for `/readyz` on `port`; fails with the server's stderr if it exits first.
async fn wait_ready(child: &mut Child, port: u16) -> Client {
    let c = Client::to(([127, 0, 0, 1], port).into());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "runwire serve exited ({status}): {}",
                stderr_of(child).await
            );
        }
        if let Ok(r) = c.http.get(c.url("/readyz")).send().await {
            if r.status() == 200 {
                return c;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "runwire never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn serve_as_a_select_only_role_streams_runs_packs_and_the_feed() {
    let db = TestDb::new().await;
    let w = seed(&db.pool).await;
    let role = select_only_role(&db).await;
    let port = free_port();
    let mut server = serve(&database_url(&db, &role), port, &[]);
    let c = wait_ready(&mut server, port).await;

    // The role really is read-only: it cannot write, nor create anything.
    let mut as_role = PgConnection::connect(&database_url(&db, &role))
        .await
        .unwrap();
    for sql in [
        "UPDATE operation_runs SET status = 'x'",
        "CREATE TABLE runwire_probe (id int)",
    ] {
        let err = sqlx::query(sql).execute(&mut as_role).await.unwrap_err();
        assert!(
            err.to_string().contains("permission denied"),
            "{sql}: {err}"
        );
    }
    as_role.close().await.ok();

    let token = Tokens::new(SECRET.as_bytes()).issue(w.owner, 600);
    let run = create_run(&db.pool, w.workspace, Some(w.tenant), "queued").await;
    let pack = create_pack(&db.pool, w.workspace, w.tenant, "generating").await;
    let feed_path = format!("/v1/workspaces/{}/runs/events", w.workspace);
    let mut runs = c.sse(&run_events(run), &token).await;
    let mut card = c.sse(&pack_events(w.tenant), &token).await;
    let mut feed = c.sse(&feed_path, &token).await;
    for s in [&runs, &card, &feed] {
        assert_eq!(s.status, 200);
    }

    assert_eq!(runs.expect("snapshot").await.data["status"], "queued");
    assert_eq!(
        card.expect("snapshot").await.data["pack"]["status"],
        "generating"
    );
    let snap = feed.expect("snapshot").await;
    assert_eq!(snap.data["runs"][0]["id"], run);

    set_run(&db.pool, run, "status = 'running', started_at = now()").await;
    assert_eq!(runs.expect("update").await.data["status"], "running");
    assert_eq!(feed.expect("update").await.data["status"], "running");
    set_run(&db.pool, run, SUCCEEDED).await;
    let done = runs.expect("update").await;
    assert_eq!(done.data["status"], "completed");
    assert_eq!(done.data["terminal"], true);
    runs.expect_end("terminal").await;
    assert_eq!(feed.expect("update").await.data["status"], "completed");

    set_pack(&db.pool, pack, "status = 'ready', generated_at = now()").await;
    assert_eq!(card.expect("update").await.data["pack"]["status"], "ready");
    card.expect_end("terminal").await;

    // Access rules still come from the tables the role reads.
    let other = Tokens::new(SECRET.as_bytes()).issue(w.outsider, 600);
    assert_eq!(c.status(&format!("/v1/runs/{run}"), &other).await, 404);

    drop(feed);
    server.kill().await.ok();
    drop_role(db, &role).await;
}

/// A host database before runwire: its own tables, none of runwire's columns or triggers.
async fn host_tables_only() -> TestDb {
    let db = TestDb::empty().await;
    let mut conn = db.pool.acquire().await.unwrap();
    runwire::create_host_tables(&mut conn).await.unwrap();
    drop(conn);
    db
}

/// What of the integration of the test's change source is missing: NOTIFY's parts by name,
/// or the publication's tables.
async fn missing_integration(db: &TestDb) -> usize {
    let mut conn = db.pool.acquire().await.unwrap();
    match mode() {
        runwire::ChangeSource::Notify => runwire::missing_notify(&mut conn).await.unwrap().len(),
        runwire::ChangeSource::Wal => {
            let published: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'runwire'",
            )
            .fetch_one(&mut *conn)
            .await
            .unwrap();
            7 - published as usize
        }
    }
}

#[tokio::test]
async fn serve_refuses_a_database_without_the_integration_migration_and_changes_nothing() {
    let db = host_tables_only().await;
    let port = free_port();
    // As the superuser: serve could change the schema, but must not without --migrate.
    let err = refused(serve(
        &database_url(&db, db.options.get_username()),
        port,
        &[],
    ))
    .await;
    let last = err
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    let says = match mode() {
        runwire::ChangeSource::Notify => {
            last.contains("operation_runs.version")
                && last.contains("trigger runwire_notify_update on review_packs")
                && last.contains("run `runwire migrate --changes notify` (or pass --migrate)")
        }
        runwire::ChangeSource::Wal => last.contains(
            "the publication runwire does not publish users, workspaces, workspace_memberships, \
             tenants, tenant_memberships, operation_runs, review_packs: run `runwire migrate --changes wal`",
        ),
    };
    assert!(says, "{err}");
    let missing = match mode() {
        runwire::ChangeSource::Notify => 20,
        runwire::ChangeSource::Wal => 7,
    };
    assert_eq!(
        missing_integration(&db).await,
        missing,
        "serve without --migrate changed the schema"
    );

    // --migrate puts it in place (a role with DDL rights).
    let mut server = serve(
        &database_url(&db, db.options.get_username()),
        port,
        &["--migrate"],
    );
    wait_ready(&mut server, port).await;
    assert_eq!(missing_integration(&db).await, 0);
    server.kill().await.ok();
    db.drop_db().await;
}

#[tokio::test]
async fn serve_names_a_table_it_may_not_read() {
    let db = TestDb::new().await;
    let role = select_only_role(&db).await;
    sqlx::query(&format!("REVOKE SELECT ON review_packs FROM {role}"))
        .execute(&db.pool)
        .await
        .unwrap();
    let err = refused(serve(&database_url(&db, &role), free_port(), &[])).await;
    assert_eq!(
        err.trim_end().lines().last().unwrap(),
        "runwire: serve needs SELECT on review_packs (missing table or grant); see docs/operations.md",
        "{err}"
    );
    drop_role(db, &role).await;
}

/// `migrate` (and `serve --migrate`) as a role that may only read: one line that says what
/// failed and Postgres's cause once, and what to do.
#[tokio::test]
async fn migrating_as_a_read_only_role_names_its_cause_once() {
    let db = TestDb::new().await;
    let role = select_only_role(&db).await;
    let url = database_url(&db, &role);
    let migrate = common::binary::runwire(&["migrate"], &[("DATABASE_URL", &url)]);
    let serve = common::binary::runwire(
        &[
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--migrate",
            "--database-fail-fast",
        ],
        &[("DATABASE_URL", &url), common::binary::strong_secret()],
    );
    for p in [migrate, serve] {
        let (ok, out) = p.exit().await;
        assert!(!ok, "{out}");
        let last = out.lines().last().unwrap();
        assert!(last.starts_with("runwire: cannot install the "), "{out}");
        // Postgres's cause, once: NOTIFY mode's statements are refused ("permission denied
        // for schema public"), WAL mode's publication too ("must be owner of publication").
        let causes =
            last.matches("permission denied").count() + last.matches("must be owner").count();
        assert_eq!(causes, 1, "{last}");
        assert!(!last.contains("error returned from database"), "{last}");
        assert!(last.contains("the owner of the host's tables"), "{last}");
    }
    drop_role(db, &role).await;
}

/// A private cluster with `wal_level = logical` whose roles other than `postgres` must give
/// a password (SCRAM), over TCP and for replication alike; stopped and removed when dropped.
struct PasswordCluster {
    dir: std::path::PathBuf,
    port: u16,
}

impl PasswordCluster {
    fn start() -> PasswordCluster {
        let dir = std::env::temp_dir().join(format!("runwire_pw_{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let hba = dir.join("pg_hba.conf");
        std::fs::write(
            &hba,
            "host all postgres 127.0.0.1/32 trust\n\
             host replication postgres 127.0.0.1/32 trust\n\
             host all all 127.0.0.1/32 scram-sha-256\n\
             host replication all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        for path in [&dir, &hba] {
            let mode = if path.is_dir() { 0o777 } else { 0o644 };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-cluster");
        let out = std::process::Command::new(script)
            .arg("start")
            .arg(dir.join("pg"))
            .args(["-c", &format!("hba_file={}", hba.display())])
            .args(["-c", "wal_level=logical", "-c", "max_wal_senders=4"])
            .args(["-c", "max_replication_slots=4"])
            .output()
            .unwrap();
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            panic!("{}", String::from_utf8_lossy(&out.stderr));
        }
        let url = String::from_utf8(out.stdout).unwrap();
        let port = url.trim().rsplit(':').next().unwrap();
        let port = port.split('/').next().unwrap().parse().unwrap();
        PasswordCluster { dir, port }
    }

    fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PasswordCluster {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-cluster");
        let _ = std::process::Command::new(script)
            .arg("stop")
            .arg(self.dir.join("pg"))
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The query pool takes its password wherever libpq (and sqlx) would find it — the URL's
/// `password` parameter, `PGPASSWORD`, `~/.pgpass` — and so must the replication connection
/// of `--changes wal`, or `serve` checks the database, picks WAL and is never ready.
#[tokio::test]
async fn the_wal_source_logs_in_with_the_password_the_pool_uses() {
    // Its own cluster, whichever pass; run once, in the WAL pass.
    if mode() != runwire::ChangeSource::Wal {
        return;
    }
    let cluster = PasswordCluster::start();
    let admin = cluster.url("postgres", "postgres");
    let mut conn = PgConnection::connect(&admin).await.unwrap();
    let (role, password, db) = ("runwire_pw", "s3cret-pw", "runwire_pw");
    for sql in [
        format!("CREATE ROLE {role} LOGIN REPLICATION PASSWORD '{password}'"),
        format!("CREATE DATABASE {db}"),
    ] {
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }
    let mut owner = PgConnection::connect(&cluster.url("postgres", db))
        .await
        .unwrap();
    runwire::migrate(&mut owner, runwire::Changes::Wal)
        .await
        .unwrap();
    sqlx::query(&format!("GRANT SELECT ON {TABLES} TO {role}"))
        .execute(&mut owner)
        .await
        .unwrap();
    let without_password = cluster.url(role, db);
    let in_query = format!("{without_password}?password={password}");
    let in_userinfo = format!(
        "postgres://{role}:{password}@127.0.0.1:{}/{db}",
        cluster.port
    );
    let ways = [
        (
            "a password in the URL's user info",
            in_userinfo.as_str(),
            None,
        ),
        ("?password= in the URL", in_query.as_str(), None),
        ("PGPASSWORD", without_password.as_str(), Some(password)),
    ];
    // Both at once: each must be ready within WAIT.
    let started: Vec<_> = ways
        .iter()
        .map(|(way, url, pgpassword)| {
            let mut env = vec![("DATABASE_URL", *url), common::binary::strong_secret()];
            env.extend(pgpassword.map(|p| ("PGPASSWORD", p)));
            let args = ["serve", "--bind", "127.0.0.1:0", "--changes", "wal"];
            (*way, common::binary::runwire(&args, &env))
        })
        .collect();
    let mut failed = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    for (way, p) in &started {
        let c = Client::to(p.addr().await);
        loop {
            let r = c.get("/readyz", None).await;
            if r.status() == 200 {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                failed.push(format!("{way}: {}", r.text().await.unwrap()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(failed.is_empty(), "never ready: {failed:#?}");
}
