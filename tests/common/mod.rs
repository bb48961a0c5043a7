//! Test harness: a fresh Postgres database per test (real server, real migrations), the real
//! service bound on 127.0.0.1:0, and a real SSE client over HTTP.
#![allow(dead_code)]

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use runwire::Running;
use runwire::Tokens;
use runwire::{ChangeSource, Changes, Server, Settings};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub mod binary;
pub mod h2;
pub mod laravel;
pub mod proxy;

/// At least 32 bytes, as runwire requires.
pub const SECRET: &str = "test-secret-test-secret-test-secret";
/// Upper bound for any awaited condition; tests fail rather than hang. Generous: in WAL mode
/// a (re)connect creates a replication slot, which waits for every transaction then running
/// in the cluster to end — a neighbouring test may hold one for 12 s.
pub const WAIT: Duration = Duration::from_secs(30);

fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// The change source every test runs on: `RUNWIRE_TEST_CHANGES=wal` (logical replication;
/// `DATABASE_URL` must then be a server with `wal_level = logical`, as `scripts/test` starts
/// one) or `notify` (the default).
pub fn mode() -> ChangeSource {
    match std::env::var("RUNWIRE_TEST_CHANGES").as_deref() {
        Ok("wal") => ChangeSource::Wal,
        Ok("notify") | Err(_) => ChangeSource::Notify,
        Ok(other) => panic!("RUNWIRE_TEST_CHANGES={other}: wal or notify"),
    }
}

/// [`mode`] as `--changes`.
pub fn changes() -> Changes {
    match mode() {
        ChangeSource::Wal => Changes::Wal,
        ChangeSource::Notify => Changes::Notify,
    }
}

/// A database of its own for one test, dropped (forcibly) when the `TestDb` is dropped —
/// also when the test panics, so no run leaves databases behind and none touches another's.
pub struct TestDb {
    pub name: String,
    pub options: PgConnectOptions,
    pub pool: PgPool,
}

impl TestDb {
    /// A database with the host tables and runwire's integration for the test [`mode`].
    pub async fn new() -> TestDb {
        let db = Self::empty().await;
        let mut conn = db.pool.acquire().await.expect("a connection");
        runwire::migrate(&mut conn, changes())
            .await
            .expect("migrations");
        drop(conn);
        db
    }

    /// A database with nothing in it yet.
    pub async fn empty() -> TestDb {
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
        TestDb {
            name,
            options,
            pool,
        }
    }

    /// The database's URL (test clusters trust local connections: no password).
    pub fn url(&self) -> String {
        let o = &self.options;
        format!(
            "postgres://{}@{}:{}/{}",
            o.get_username(),
            o.get_host(),
            o.get_port(),
            self.name
        )
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
                drop_database(&mut admin, &name).await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// Drops a test database, whatever still uses it: `WITH (FORCE)` ends its sessions, but a
/// logical replication slot (WAL mode) holds the database until its walsender has gone, so
/// the walsenders are ended and the drop is repeated until their temporary slots are gone.
pub async fn drop_database(admin: &mut PgConnection, name: &str) -> sqlx::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        sqlx::query(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
             WHERE database = $1 AND active_pid IS NOT NULL",
        )
        .bind(name)
        .execute(&mut *admin)
        .await?;
        let dropped = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut *admin)
            .await;
        match dropped {
            Err(e)
                if e.to_string().contains("replication slot")
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other.map(|_| ()),
        }
    }
}

pub fn settings() -> Settings {
    let mut s = Settings::defaults();
    s.bind = "127.0.0.1:0".parse().unwrap();
    s.jwt_secret = Some(SECRET.to_string());
    s.heartbeat_secs = 2;
    s.changes = changes();
    s
}

/// The real service on its own database; a [`Client`] of it through `Deref`. Dropping it
/// ends the test: the database goes (see [`TestDb`]) and the server's tasks go with the
/// test's runtime. Graceful shutdown has tests of its own (`resilience.rs`).
pub struct TestApp {
    pub db: TestDb,
    pub running: Running,
    pub client: Client,
}

impl std::ops::Deref for TestApp {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(settings()).await
    }

    /// The service with test settings changed by `change`.
    pub async fn configured(change: impl FnOnce(&mut Settings)) -> TestApp {
        let mut s = settings();
        change(&mut s);
        Self::spawn_with(s).await
    }

    /// How most tests begin: the service, a seeded [`World`] and the owner's token.
    pub async fn seeded() -> (TestApp, World, String) {
        Self::seeded_with(|_| {}).await
    }

    /// [`TestApp::seeded`] with test settings changed by `change`.
    pub async fn seeded_with(change: impl FnOnce(&mut Settings)) -> (TestApp, World, String) {
        let app = Self::configured(change).await;
        let w = seed(app.pool()).await;
        let t = token(w.owner);
        (app, w, t)
    }

    pub async fn spawn_with(settings: Settings) -> TestApp {
        let db = TestDb::new().await;
        let running = start(&db, settings).await;
        Self::on(db, running)
    }

    /// The service on host tables made by Laravel's own Schema builder (json, timestamp
    /// without time zone, int4 tenant ids, varchar, pivots with an `id`), seeded, with the
    /// owner's token.
    pub async fn laravel() -> (TestApp, World, String) {
        let db = TestDb::empty().await;
        laravel::create_laravel_schema(&db.url()).await;
        let mut conn = db.pool.acquire().await.expect("a connection");
        runwire::migrate(&mut conn, changes())
            .await
            .expect("migrations");
        drop(conn);
        let running = start(&db, settings()).await;
        let app = Self::on(db, running);
        let w = seed(app.pool()).await;
        let t = token(w.owner);
        (app, w, t)
    }

    /// The service with only its LISTEN connection through a proxy the test can break
    /// (queries go straight to Postgres).
    pub async fn listening_through_proxy() -> (TestApp, proxy::Proxy) {
        let db = TestDb::new().await;
        let proxy = proxy_to(&db).await;
        let mut settings = settings();
        settings.listener_database_url = listener_through(&proxy, &db);
        let running = start(&db, settings).await;
        (Self::on(db, running), proxy)
    }

    /// An instance started some other way (e.g. through a proxy, see [`start_with`]).
    pub fn on(db: TestDb, running: Running) -> TestApp {
        let client = Client::to(running.addr);
        TestApp {
            db,
            running,
            client,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    /// Runs one statement on the test database.
    pub async fn exec(&self, sql: &str) {
        sqlx::query(sql).execute(self.pool()).await.unwrap();
    }

    /// Holds `table` as a host migration would, until the transaction ends.
    pub async fn lock(&self, table: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut tx = self.pool().begin().await.unwrap();
        sqlx::query(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            .execute(&mut *tx)
            .await
            .unwrap();
        tx
    }
}

/// An HTTP client of one instance (in process, or the built binary).
pub struct Client {
    pub addr: SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
}

impl Client {
    pub fn to(addr: SocketAddr) -> Client {
        Client {
            addr,
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request")
    }

    /// `POST /v1/session` with this bearer token.
    pub async fn session(&self, token: &str) -> reqwest::Response {
        let req = self.http.post(self.url("/v1/session")).bearer_auth(token);
        req.send().await.expect("request")
    }

    /// The JSON body of a GET with this token.
    pub async fn json(&self, path: &str, token: &str) -> serde_json::Value {
        self.get(path, Some(token))
            .await
            .json()
            .await
            .expect("a JSON body")
    }

    /// The raw start of a stream, before any SSE parsing, up to the end of the frame that
    /// begins with `until`.
    pub async fn raw_start(&self, path: &str, token: &str, until: &str) -> String {
        use futures_util::StreamExt;
        let mut body = self.get(path, Some(token)).await.bytes_stream();
        let mut text = String::new();
        while !text
            .find(until)
            .is_some_and(|at| text[at..].contains("\n\n"))
        {
            let chunk = tokio::time::timeout(WAIT, body.next())
                .await
                .expect("timed out waiting for the stream's bytes")
                .expect("the stream ended early")
                .expect("the stream's bytes");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        text
    }

    /// The status of a GET with this token.
    pub async fn status(&self, path: &str, token: &str) -> u16 {
        self.get(path, Some(token)).await.status().as_u16()
    }

    /// A GET with these headers (and no token unless one is among them).
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.http.get(self.url(path));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.send().await.expect("request")
    }

    /// Waits until a GET of `path` (without a token) answers `status`.
    pub async fn await_status(&self, path: &str, status: u16) {
        let what = format!("{path} to answer {status}");
        eventually(&what, || async {
            self.get(path, None).await.status() == status
        })
        .await;
    }

    pub async fn sse(&self, path: &str, token: &str) -> Sse {
        Sse::open(&self.http, &self.url(path), Some(token), None).await
    }

    /// A stream read past its first snapshot.
    pub async fn watch(&self, path: &str, token: &str) -> Sse {
        let mut s = self.sse(path, token).await;
        s.expect("snapshot").await;
        s
    }

    /// A raw connection to the service.
    pub async fn connect(&self) -> tokio::net::TcpStream {
        tokio::net::TcpStream::connect(self.addr).await.unwrap()
    }
}

/// Whether `id` is the SSE id of a state of this `version`: the version itself in NOTIFY mode;
/// in WAL mode the WAL position (the version) and a digest of the state.
pub fn is_id_of(id: &str, version: &serde_json::Value) -> bool {
    let version = version.as_i64().expect("a numeric version").to_string();
    match mode() {
        ChangeSource::Notify => id == version,
        ChangeSource::Wal => id
            .split_once('-')
            .is_some_and(|(v, digest)| v == version && digest.len() == 16),
    }
}

/// Waits until `check` holds, polling; fails the test after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "waited for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
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
    let running = Server::build(settings, pool)
        .await
        .expect("build")
        .start(mode());
    assert!(running.wait_ready(WAIT).await, "listener never connected");
    running
}

/// A proxy in front of the server that holds `db`.
pub async fn proxy_to(db: &TestDb) -> proxy::Proxy {
    let (host, port) = (db.options.get_host(), db.options.get_port());
    let upstream = tokio::net::lookup_host((host, port))
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("Postgres at {host}:{port} has no TCP address"));
    proxy::Proxy::start(upstream).await
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
#[derive(Clone)]
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

/// The id a `... RETURNING id` statement returns.
async fn insert(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

pub async fn seed(pool: &PgPool) -> World {
    // Laravel's users table wants a password; runwire's own has none.
    let password: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                        WHERE table_name = 'users' AND column_name = 'password')",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let mut users = Vec::new();
    for email in ["owner@x", "readonly@x", "member@x", "outsider@x"] {
        let sql = match password {
            true => format!(
                "INSERT INTO users (email, name, password) VALUES ('{email}', '', '') RETURNING id::int8"
            ),
            false => format!("INSERT INTO users (email) VALUES ('{email}') RETURNING id::int8"),
        };
        users.push(insert(pool, &sql).await);
    }
    let [owner, readonly, member, outsider] = users[..] else {
        unreachable!()
    };
    let named = |table: &str, columns: &str, values: &str| {
        format!("INSERT INTO {table} ({columns}) VALUES ({values}) RETURNING id::int8")
    };
    let ws = insert(pool, &named("workspaces", "name", "'Acme'")).await;
    let other = insert(pool, &named("workspaces", "name", "'Other'")).await;
    let tenant_in = |name: &str| named("tenants", "workspace_id, name", &format!("{ws}, '{name}'"));
    let tenant = insert(pool, &tenant_in("Tenant A")).await;
    let tenant_b = insert(pool, &tenant_in("Tenant B")).await;
    sqlx::raw_sql(&format!(
        "INSERT INTO workspace_memberships (workspace_id, user_id, role) VALUES
            ({ws}, {owner}, 'owner'), ({ws}, {readonly}, 'readonly'), ({ws}, {member}, 'operator'),
            ({other}, {outsider}, 'owner');
         INSERT INTO tenant_memberships (tenant_id, user_id, role) VALUES
            ({tenant}, {owner}, 'owner'), ({tenant}, {readonly}, 'readonly');"
    ))
    .execute(pool)
    .await
    .unwrap();
    World {
        workspace: ws,
        other_workspace: other,
        tenant,
        tenant_b,
        owner,
        readonly,
        member,
        outsider,
    }
}

pub async fn create_run(pool: &PgPool, workspace: i64, tenant: Option<i64>, status: &str) -> i64 {
    let tenant = tenant.map_or("NULL".to_string(), |t| t.to_string());
    let sql = format!(
        "INSERT INTO operation_runs (workspace_id, tenant_id, type, status)
         VALUES ({workspace}, {tenant}, 'sync', '{status}') RETURNING id::int8"
    );
    insert(pool, &sql).await
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

/// Active runs of three kinds: of `tenant`, without a tenant, and in the other workspace.
pub async fn runs_each_way(pool: &PgPool, w: &World) -> (i64, i64, i64) {
    (
        create_run(pool, w.workspace, Some(w.tenant), "running").await,
        create_run(pool, w.workspace, None, "running").await,
        create_run(pool, w.other_workspace, None, "running").await,
    )
}

/// The host reports progress on a run: `processed` items so far.
pub async fn progress(pool: &PgPool, run: i64, processed: i64) {
    let set = format!(r#"summary_counts = '{{"processed": {processed}}}'"#);
    set_run(pool, run, &set).await
}

/// How the host finishes a run well (`set_run`).
pub const SUCCEEDED: &str = "status = 'completed', outcome = 'succeeded', completed_at = now()";

/// The run ids of a feed snapshot, in order.
pub fn run_ids(snapshot: &Msg) -> Vec<i64> {
    let runs = snapshot.data["runs"].as_array().expect("a feed snapshot");
    runs.iter().map(|r| r["id"].as_i64().unwrap()).collect()
}

pub async fn set_run(pool: &PgPool, run: i64, set: &str) {
    update_row(pool, "operation_runs", run, set).await
}

pub async fn create_pack(pool: &PgPool, workspace: i64, tenant: i64, status: &str) -> i64 {
    let sql = format!(
        "INSERT INTO review_packs (workspace_id, tenant_id, status)
         VALUES ({workspace}, {tenant}, '{status}') RETURNING id::int8"
    );
    insert(pool, &sql).await
}

pub async fn set_pack(pool: &PgPool, pack: i64, set: &str) {
    update_row(pool, "review_packs", pack, set).await
}
