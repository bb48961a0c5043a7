//! Test harness: a fresh Postgres database per test (real server, real migrations), the real
//! service bound on 127.0.0.1:0, and a real SSE client over HTTP.
#![allow(dead_code)]

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use runwire::Running;
use runwire::Tokens;
use runwire::{Server, Settings, MIGRATOR};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub mod proxy;

/// At least 32 bytes, as runwire requires.
pub const SECRET: &str = "test-secret-test-secret-test-secret";
/// Upper bound for any awaited condition; tests fail rather than hang.
pub const WAIT: Duration = Duration::from_secs(15);

fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A database of its own for one test, dropped (forcibly) when the `TestDb` is dropped —
/// also when the test panics, so no run leaves databases behind and none touches another's.
pub struct TestDb {
    pub name: String,
    pub options: PgConnectOptions,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new() -> TestDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "runwire_test_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let mut admin = PgConnection::connect(&admin_url())
            .await
            .expect("admin connection");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        admin.close().await.ok();
        let options = PgConnectOptions::from_str(&admin_url())
            .unwrap()
            .database(&name);
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .connect_with(options.clone())
            .await
            .expect("test pool");
        MIGRATOR.run(&pool).await.expect("migrations");
        TestDb {
            name,
            options,
            pool,
        }
    }

    /// Closes the pool first, so the drop is quick; the database goes with `self`.
    pub async fn drop_db(self) {
        self.pool.close().await;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await, and runs while a panicking test unwinds: a thread of its own
        // with a small runtime does the work.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&admin_url()).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .map(|_| ())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

pub fn settings() -> Settings {
    let mut s = Settings::defaults();
    s.bind = "127.0.0.1:0".parse().unwrap();
    s.jwt_secret = Some(SECRET.to_string());
    s.heartbeat_secs = 2;
    s
}

/// The real service on its own database.
pub struct TestApp {
    pub db: TestDb,
    pub running: Running,
    pub base: String,
    pub http: reqwest::Client,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(settings()).await
    }

    pub async fn spawn_with(settings: Settings) -> TestApp {
        let db = TestDb::new().await;
        let running = start(&db, settings).await;
        let base = format!("http://{}", running.addr);
        TestApp {
            db,
            running,
            base,
            http: reqwest::Client::new(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn stop(self) {
        self.running.shutdown().await;
        self.db.drop_db().await;
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request")
    }

    pub async fn sse(&self, path: &str, token: &str) -> Sse {
        Sse::open(&self.http, &self.url(path), Some(token), None).await
    }
}

/// Starts another instance of the service on an existing database.
pub async fn start(db: &TestDb, settings: Settings) -> Running {
    start_with(db.options.clone(), settings).await
}

/// Starts an instance whose query pool connects with `options` (e.g. through a proxy).
pub async fn start_with(options: PgConnectOptions, settings: Settings) -> Running {
    // The pool as production builds it (statement timeout included); named like production,
    // so a test can find (and kill) runwire's own backends.
    let pool = runwire::pool_options(&settings)
        .connect_with(options.application_name("runwire"))
        .await
        .expect("app pool");
    let running = Server::build(settings, pool).await.expect("build").start();
    assert!(running.wait_ready(WAIT).await, "listener never connected");
    running
}

/// A `--listener-database-url` that reaches `db` through `proxy`, so a test can break the
/// LISTEN connection alone while queries still work.
pub fn listener_through(proxy: &proxy::Proxy, db: &TestDb) -> Option<String> {
    Some(format!(
        "postgres://{}@127.0.0.1:{}/{}",
        db.options.get_username(),
        proxy.addr.port(),
        db.name
    ))
}

/// The stream path of a run.
pub fn run_events(run: i64) -> String {
    format!("/v1/runs/{run}/events")
}

/// The stream path of a tenant's review-pack card.
pub fn pack_events(tenant: i64) -> String {
    format!("/v1/tenants/{tenant}/review-pack/events")
}

pub fn token(user_id: i64) -> String {
    Tokens::new(SECRET.as_bytes()).issue(user_id, 3600)
}

type Events = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<reqwest::Error>>> + Send>>;

/// One SSE response, parsed with a real SSE parser.
pub struct Sse {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    events: Option<Events>,
    /// `id:` of the last event that carried one, as EventSource tracks it.
    pub last_id: Option<String>,
    pub retry: Option<Duration>,
}

#[derive(Debug)]
pub struct Msg {
    pub event: String,
    pub data: serde_json::Value,
    pub id: String,
}

impl Sse {
    pub async fn open(
        http: &reqwest::Client,
        url: &str,
        token: Option<&str>,
        last_event_id: Option<&str>,
    ) -> Sse {
        let mut req = http.get(url).header("accept", "text/event-stream");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let events: Option<Events> =
            (status == 200).then(|| Box::pin(resp.bytes_stream().eventsource()) as Events);
        Sse {
            status,
            headers,
            events,
            last_id: None,
            retry: None,
        }
    }

    /// The next message, or None once the server closed the stream.
    pub async fn next(&mut self) -> Option<Msg> {
        let events = self.events.as_mut().expect("stream response");
        loop {
            let ev = tokio::time::timeout(WAIT, events.next())
                .await
                .expect("timed out waiting for an SSE message")?;
            let ev = ev.expect("well-formed SSE");
            if let Some(r) = ev.retry {
                self.retry = Some(r);
            }
            if !ev.id.is_empty() {
                self.last_id = Some(ev.id.clone());
            }
            if ev.data.is_empty() {
                // A `retry:`-only message: EventSource dispatches nothing for it.
                continue;
            }
            return Some(Msg {
                event: ev.event,
                data: serde_json::from_str(&ev.data).expect("data is JSON"),
                id: ev.id,
            });
        }
    }

    /// The next message if one arrives within `wait` (Some(None): the stream closed).
    pub async fn next_within(&mut self, wait: Duration) -> Option<Option<Msg>> {
        tokio::time::timeout(wait, self.next()).await.ok()
    }

    /// The next message, which must exist and be of this type.
    pub async fn expect(&mut self, event: &str) -> Msg {
        let msg = self
            .next()
            .await
            .unwrap_or_else(|| panic!("stream ended, expected {event}"));
        assert_eq!(msg.event, event, "unexpected message {msg:?}");
        msg
    }

    /// The next message, which must exist.
    pub async fn expect_any(&mut self) -> Msg {
        self.next().await.expect("stream ended")
    }

    /// Expects `end` with this reason, then the end of the response.
    pub async fn expect_end(&mut self, reason: &str) {
        let msg = self.expect("end").await;
        assert_eq!(msg.data["reason"], reason);
        assert!(self.next().await.is_none(), "stream continued after end");
    }

    /// Expects the response to end without another message.
    pub async fn expect_closed(&mut self) {
        if let Some(msg) = self.next().await {
            panic!("expected the stream to close, got {msg:?}");
        }
    }
}

/// The messages of a whole SSE body read from a raw socket, by the same parser as [`Sse`]:
/// (event name, JSON data) of each message with data.
pub async fn sse_events(body: Vec<u8>) -> Vec<(String, serde_json::Value)> {
    let bytes = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(body)]);
    bytes
        .eventsource()
        .filter_map(|ev| async move {
            let ev = ev.expect("well-formed SSE");
            (!ev.data.is_empty()).then(|| (ev.event, serde_json::from_str(&ev.data).expect("JSON")))
        })
        .collect()
        .await
}

/// A small world: a workspace with two tenants and users in every role.
pub struct World {
    pub workspace: i64,
    pub other_workspace: i64,
    pub tenant: i64,
    pub tenant_b: i64,
    /// owner of the workspace and of `tenant`
    pub owner: i64,
    /// workspace member with `readonly` on `tenant`
    pub readonly: i64,
    /// workspace member without any tenant membership
    pub member: i64,
    /// not a member of the workspace
    pub outsider: i64,
}

pub async fn seed(pool: &PgPool) -> World {
    let mut ids = Vec::new();
    for email in ["owner@x", "readonly@x", "member@x", "outsider@x"] {
        let id: i64 = sqlx::query_scalar("INSERT INTO users (email) VALUES ($1) RETURNING id")
            .bind(email)
            .fetch_one(pool)
            .await
            .unwrap();
        ids.push(id);
    }
    let ws: i64 = sqlx::query_scalar("INSERT INTO workspaces (name) VALUES ('Acme') RETURNING id")
        .fetch_one(pool)
        .await
        .unwrap();
    let other: i64 =
        sqlx::query_scalar("INSERT INTO workspaces (name) VALUES ('Other') RETURNING id")
            .fetch_one(pool)
            .await
            .unwrap();
    let tenant: i64 = sqlx::query_scalar(
        "INSERT INTO tenants (workspace_id, name) VALUES ($1, 'Tenant A') RETURNING id",
    )
    .bind(ws)
    .fetch_one(pool)
    .await
    .unwrap();
    let tenant_b: i64 = sqlx::query_scalar(
        "INSERT INTO tenants (workspace_id, name) VALUES ($1, 'Tenant B') RETURNING id",
    )
    .bind(ws)
    .fetch_one(pool)
    .await
    .unwrap();
    for (user, role) in [
        (ids[0], "owner"),
        (ids[1], "readonly"),
        (ids[2], "operator"),
    ] {
        sqlx::query("INSERT INTO workspace_memberships VALUES ($1, $2, $3)")
            .bind(ws)
            .bind(user)
            .bind(role)
            .execute(pool)
            .await
            .unwrap();
    }
    for (user, role) in [(ids[0], "owner"), (ids[1], "readonly")] {
        sqlx::query("INSERT INTO tenant_memberships VALUES ($1, $2, $3)")
            .bind(tenant)
            .bind(user)
            .bind(role)
            .execute(pool)
            .await
            .unwrap();
    }
    sqlx::query("INSERT INTO workspace_memberships VALUES ($1, $2, 'owner')")
        .bind(other)
        .bind(ids[3])
        .execute(pool)
        .await
        .unwrap();
    World {
        workspace: ws,
        other_workspace: other,
        tenant,
        tenant_b,
        owner: ids[0],
        readonly: ids[1],
        member: ids[2],
        outsider: ids[3],
    }
}

pub async fn create_run(pool: &PgPool, workspace: i64, tenant: Option<i64>, status: &str) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO operation_runs (workspace_id, tenant_id, type, status) VALUES ($1, $2, 'sync', $3) RETURNING id",
    )
    .bind(workspace)
    .bind(tenant)
    .bind(status)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// `UPDATE <table> SET <set>, updated_at = now() WHERE id = <id>`, as the host app writes.
async fn update_row(pool: &PgPool, table: &str, id: i64, set: &str) {
    sqlx::query(&format!(
        "UPDATE {table} SET {set}, updated_at = now() WHERE id = $1"
    ))
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
}

pub async fn set_run(pool: &PgPool, run: i64, set: &str) {
    update_row(pool, "operation_runs", run, set).await
}

pub async fn create_pack(pool: &PgPool, workspace: i64, tenant: i64, status: &str) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO review_packs (workspace_id, tenant_id, status) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(workspace)
    .bind(tenant)
    .bind(status)
    .fetch_one(pool)
    .await
    .unwrap()
}

pub async fn set_pack(pool: &PgPool, pack: i64, set: &str) {
    update_row(pool, "review_packs", pack, set).await
}
