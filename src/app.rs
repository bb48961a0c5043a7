//! Startup and shutdown: build the application from settings and a pool, bind, run the
//! watcher beside the HTTP server, and stop both promptly.
//!
//! `serve` binds and answers HTTP first, then waits for the database (logging why it cannot
//! reach it, with backoff), migrates, and only then starts the watcher: `/healthz` answers
//! throughout and `/readyz` says what start-up is waiting for.
//!
//! Shutdown cancels one token. The watcher stops, every open stream returns (without an
//! `end` event, so browsers reconnect, to another instance if there is one), the connection
//! front stops accepting and waits for in-flight responses; a hard deadline stops the wait
//! regardless.

use crate::access::batch::Deadline;
use crate::access::token::check_secret;
use crate::access::{Batcher, Epochs, Tokens};
use crate::config::Settings;
use crate::http::front::ConnectionLimits;
use crate::http::{self, Health};
use crate::metrics::Metrics;
use crate::model::ChangeSource;
use crate::schema::Changes;
use crate::stream::limits::StreamLimiter;
use crate::stream::Streams;
use crate::watch::applied::Applied;
use crate::watch::hub::Hub;
use crate::watch::{Shared, SourceDatabase, SourceStatus, Watcher};
use anyhow::{bail, Context};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use std::net::SocketAddr;
use std::ops::Deref;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long shutdown waits for connections to finish before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Connections the kernel may hold for us before `accept` (capped by `net.core.somaxconn`).
/// When every browser reconnects at once — after a deploy, a restart, a network blip — a
/// short queue overflows and the kernel drops SYNs, which clients retry only after 1 s, 3 s,
/// 7 s. (Measured: with the default backlog, 126 of 1,000 clients opening together waited
/// a second.)
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the HTTP listener with a backlog sized for reconnect storms.
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Postgres connection options from a URL, named `runwire` in `pg_stat_activity`.
pub fn connect_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    Ok(postgres_url(url, "DATABASE_URL")?.application_name("runwire"))
}

/// Parses the Postgres URL in `var`. Another scheme is refused here, at once: the parser
/// would otherwise take `mysql://x` for a Postgres on host `x` and start-up would retry it
/// forever. The URL itself is never repeated (it may carry a password).
fn postgres_url(url: &str, var: &str) -> anyhow::Result<PgConnectOptions> {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    match scheme {
        Some(s) if s.eq_ignore_ascii_case("postgres") || s.eq_ignore_ascii_case("postgresql") => {
            PgConnectOptions::from_str(url)
                .with_context(|| format!("{var} is not a valid Postgres URL"))
        }
        Some(other) => anyhow::bail!(
            "{var} must be a Postgres URL (postgres://user@host/database), not a {other}:// URL"
        ),
        None => anyhow::bail!("{var} must be a Postgres URL (postgres://user@host/database)"),
    }
}

/// The query pool's options. Every query has a deadline: each connection carries
/// `statement_timeout` (Postgres cancels a query that runs or waits for a lock longer, and
/// the connection is free again), and waiting for a connection gives up after the acquire
/// timeout. Either way the request answers 503 `database_unavailable` instead of hanging.
pub fn pool_options(settings: &Settings) -> PgPoolOptions {
    let statement_timeout_ms = settings.query_timeout().as_millis();
    PgPoolOptions::new()
        .max_connections(settings.db_pool_size.max(1))
        .acquire_timeout(settings.acquire_timeout())
        .after_connect(move |conn, _| {
            Box::pin(async move {
                // UTC and ISO: how `model::row` reads timestamps (a `timestamp` column, as
                // Laravel makes them, is read as UTC).
                sqlx::query(
                    "SELECT set_config('statement_timeout', $1, false),
                            set_config('TimeZone', 'UTC', false),
                            set_config('DateStyle', 'ISO, MDY', false)",
                )
                .bind(statement_timeout_ms.to_string())
                .execute(conn)
                .await
                .map(|_| ())
            })
        })
}

/// Opens the query pool (connecting once now, so a bad URL or password fails here).
pub(crate) async fn connect_database(url: &str, settings: &Settings) -> anyhow::Result<PgPool> {
    pool_options(settings)
        .connect_with(connect_options(url)?)
        .await
        .context("cannot connect to Postgres")
}

/// How long one connection attempt may take (a host that drops packets never refuses).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause between two attempts while waiting for the database.
const MAX_CONNECT_BACKOFF: Duration = Duration::from_secs(10);

/// Connects to the database, retrying with backoff until it answers, and logs the real cause
/// of every failed attempt (connection refused, unknown host, a wrong password, a missing
/// database). With `fail_fast`, the first failure is returned instead. `health` shows the
/// cause on `/readyz` meanwhile.
pub(crate) async fn wait_for_database(
    options: &PgConnectOptions,
    fail_fast: bool,
    health: &Health,
) -> anyhow::Result<PgConnection> {
    let mut backoff = Duration::from_millis(250);
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options
            .get_database()
            .unwrap_or_else(|| options.get_username())
    );
    loop {
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options))
            .await
            .map_err(|_| format!("no answer within {CONNECT_TIMEOUT:?}"))
            .and_then(|r| r.map_err(|e| cause(&e)));
        match attempt {
            Ok(conn) => return Ok(conn),
            Err(cause) if fail_fast => {
                bail!("cannot connect to Postgres at {target}: {cause}")
            }
            Err(cause) => {
                health.set_starting(format!("waiting for the database at {target}: {cause}"));
                tracing::warn!(database = %target, %cause, retry_in = ?backoff, "cannot connect to Postgres; waiting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_CONNECT_BACKOFF);
            }
        }
    }
}

/// The cause of a connection failure, without sqlx's wrapping ("error communicating with
/// database: Connection refused" → "Connection refused (os error 111)").
fn cause(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    }
}

/// Waits for the database (see [`wait_for_database`]), then applies the migrations (with
/// `migrate`, on a connection of their own: it has no statement timeout, since a migration
/// of a large host table may rightly take long) and checks, reading only, that the tables
/// are readable, their columns of types runwire reads, and the integration of the change
/// source it will use in place (`schema::check`). Returns that source.
pub(crate) async fn prepare_database(
    options: &PgConnectOptions,
    migrate: bool,
    changes: Changes,
    fail_fast: bool,
    health: &Health,
) -> anyhow::Result<ChangeSource> {
    let mut conn = wait_for_database(options, fail_fast, health).await?;
    if migrate {
        health.set_starting("applying migrations");
        crate::schema::migrate(&mut conn, changes).await?;
    }
    health.set_starting("checking the schema");
    let checked = crate::schema::check(&mut conn, changes).await?;
    let _ = conn.close().await;
    if let Some(why) = checked.fallback_reason {
        tracing::warn!(
            %why,
            "changes come from NOTIFY triggers, which make every write to the watched tables \
             wait for a global lock at commit (measured: a twentieth to a quarter of the host's \
             own write throughput at 32 writers); for logical replication, which costs the host's \
             writes almost nothing: wal_level = logical, REPLICATION for this role, and \
             `runwire migrate --changes wal`"
        );
    }
    Ok(checked.source)
}

/// File descriptors kept free for everything but client connections besides the query pool
/// and the listener: the listening socket, stdio, tokio's epoll and wake-up descriptors, a
/// listener being replaced, files opened now and then.
const FD_HEADROOM: u64 = 64;

/// The default connection cap: the process's open-files limit minus what the query pool, the
/// listener and [`FD_HEADROOM`] need, so runwire refuses a connection before the kernel
/// refuses it a file (after which `accept` fails in a loop and nothing gets an answer).
pub(crate) fn default_max_connections(db_pool_size: u32) -> usize {
    let open_files = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _hard)| soft)
        .unwrap_or(1024);
    let reserved = FD_HEADROOM + u64::from(db_pool_size) + 2;
    let cap = open_files.saturating_sub(reserved).max(1);
    usize::try_from(cap)
        .unwrap_or(usize::MAX)
        .min(tokio::sync::Semaphore::MAX_PERMITS)
}

/// Everything a request may need, cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) pool: PgPool,
    /// What every stream needs: the hub, access epochs, the batcher, the caps.
    pub(crate) streams: Arc<Streams>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) tokens: Tokens,
    /// The change source: connected or not, which one, how far behind.
    pub(crate) listener: Arc<SourceStatus>,
    /// Start-up progress and readiness verdicts, for `/readyz`.
    pub(crate) health: Arc<Health>,
    /// The embeddable view's `Content-Security-Policy` (`--embed-origins`).
    pub(crate) embed_policy: axum::http::HeaderValue,
    pub(crate) settings: Settings,
    /// Cancelled at shutdown: every open stream ends (without `end`, so clients reconnect to
    /// another instance).
    pub(crate) shutdown: CancellationToken,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub(crate) fn new(inner: Inner) -> Self {
        AppState(Arc::new(inner))
    }
}

/// A built, bound server that is not yet running.
pub struct Server {
    listener: tokio::net::TcpListener,
    metrics_listener: Option<tokio::net::TcpListener>,
    state: AppState,
    watcher: Watcher,
    limits: ConnectionLimits,
}

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    /// Where `/metrics` is served when it has a listener of its own (`--metrics-bind`).
    pub metrics_addr: Option<SocketAddr>,
    pub(crate) state: AppState,
    serve: JoinHandle<()>,
    serve_metrics: Option<JoinHandle<()>>,
    /// The watcher, until [`Running::start_watcher`] starts it.
    watcher: Option<Watcher>,
    watching: Option<JoinHandle<()>>,
}

impl Server {
    /// Builds the application and binds `settings.bind`; migrations are the caller's.
    pub async fn build(settings: Settings, pool: PgPool) -> anyhow::Result<Server> {
        settings.validate()?;
        let secret = settings
            .jwt_secret
            .clone()
            .filter(|s| !s.is_empty())
            .context(
            "set RUNWIRE_JWT_SECRET (or --jwt-secret): the HS256 secret shared with the host app; generate one with `openssl rand -hex 32`",
        )?;
        check_secret(&secret).context("RUNWIRE_JWT_SECRET (or --jwt-secret) is too short")?;
        let embed_policy = http::embed_policy(&settings.embed_origins)?;
        let hub = Arc::new(Hub::default());
        let epochs = Arc::new(Epochs::default());
        let metrics = Arc::new(Metrics::new(settings.metrics_workspace_label));
        let status = Arc::new(SourceStatus::default());
        let applied = Arc::new(Applied::default());
        // The change source's connection: --listener-database-url, else the pool's database.
        let database = match settings.listener_database_url.as_deref() {
            Some(url) if !url.is_empty() => SourceDatabase {
                options: postgres_url(url, "RUNWIRE_LISTENER_DATABASE_URL")?
                    .application_name("runwire-listener"),
            },
            _ => SourceDatabase {
                options: pool.connect_options().as_ref().clone(),
            },
        };
        let shared = Shared {
            hub: Arc::clone(&hub),
            epochs: Arc::clone(&epochs),
            metrics: Arc::clone(&metrics),
            status: Arc::clone(&status),
            applied: Arc::clone(&applied),
        };
        let heartbeat = Duration::from_secs(settings.heartbeat_secs.max(1));
        let watcher = Watcher::new(pool.clone(), database, shared, heartbeat);
        let max_connections = settings
            .max_connections
            .unwrap_or_else(|| default_max_connections(settings.db_pool_size))
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        if settings.max_streams >= max_connections {
            tracing::warn!(
                max_streams = settings.max_streams,
                max_connections,
                "--max-streams is not below the connection cap, so connections run out before \
                 streams are refused with 503: raise the open-files limit (ulimit -n) or lower \
                 --max-streams"
            );
        }
        let limits = ConnectionLimits {
            max_connections,
            head_timeout: Duration::from_secs(settings.request_head_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(settings.idle_timeout_secs.max(1)),
            auth_timeout: Duration::from_secs(settings.auth_timeout_secs.max(1)),
            write_timeout: Duration::from_secs(settings.write_timeout_secs.max(1)),
        };
        let listener =
            listen(settings.bind).with_context(|| format!("cannot listen on {}", settings.bind))?;
        let metrics_listener = match settings.metrics_bind {
            Some(addr) => Some(
                listen(addr)
                    .with_context(|| format!("cannot listen on {addr} (--metrics-bind)"))?,
            ),
            None => None,
        };
        let shutdown = CancellationToken::new();
        let deadline = Deadline(settings.query_timeout());
        let streams = Arc::new(Streams {
            hub,
            epochs,
            batcher: Arc::new(Batcher::start(
                pool.clone(),
                Arc::clone(&status),
                applied,
                deadline,
                // Every read is made for a permit holder, one at a time: the stream cap bounds
                // each queue first, this only backs it up.
                settings.max_streams,
            )),
            limiter: StreamLimiter::new(settings.max_streams_per_user, settings.max_streams),
            metrics: Arc::clone(&metrics),
            shutdown: shutdown.clone(),
            keepalive: Duration::from_secs(settings.keepalive_secs.max(1)),
            write_timeout: limits.write_timeout,
            max_lifetime_secs: settings.max_stream_lifetime_secs,
        });
        let state = AppState::new(Inner {
            pool,
            streams,
            metrics,
            tokens: Tokens::new(secret.as_bytes()),
            listener: status,
            health: Arc::new(Health::starting("connecting to the database")),
            embed_policy,
            settings,
            shutdown,
        });
        Ok(Server {
            listener,
            metrics_listener,
            state,
            watcher,
            limits,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound socket has an address")
    }

    /// Starts the watcher (on `source`) and the HTTP server in the background, for a
    /// database that is known to be up and migrated for that source.
    pub fn start(self, source: ChangeSource) -> Running {
        let mut running = self.start_http();
        running.start_watcher(source);
        running
    }

    /// Starts only the HTTP server: `/healthz` answers, `/readyz` says why not ready, and
    /// requests that need the database get 503 until [`Running::start_watcher`].
    pub fn start_http(self) -> Running {
        let addr = self.local_addr();
        let shutdown = self.state.shutdown.clone();
        let app = http::router(self.state.clone());
        // Each connection gets a clone of the finished router (an `Arc`). (axum::serve with
        // a `Router` re-applies its state per connection, rebuilding the route table: ~9 KB
        // per open stream, measured.)
        let serve = tokio::spawn(http::front::serve(
            self.listener,
            app,
            self.limits,
            Arc::clone(&self.state.metrics),
            shutdown,
        ));
        tracing::info!(%addr, max_connections = self.limits.max_connections, "runwire listening");
        // Scrapes are few and short: axum's own server is enough here, without the front's
        // limits (the address is meant to be reachable by Prometheus only).
        let metrics_addr = self
            .metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok());
        let serve_metrics = self.metrics_listener.map(|listener| {
            tracing::info!(addr = ?metrics_addr, "metrics listening");
            let app = http::metrics_router(self.state.clone());
            let stop = self.state.shutdown.clone().cancelled_owned();
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
                {
                    tracing::warn!(error = %e, "the metrics listener failed");
                }
            })
        });
        Running {
            addr,
            metrics_addr,
            state: self.state,
            serve,
            serve_metrics,
            watcher: Some(self.watcher),
            watching: None,
        }
    }
}

impl Running {
    /// Starts the watcher on `source`: start-up is over once it connects.
    pub fn start_watcher(&mut self, source: ChangeSource) {
        if let Some(watcher) = self.watcher.take() {
            self.state.health.started();
            let shutdown = self.state.shutdown.clone();
            self.watching = Some(tokio::spawn(watcher.run(source, shutdown)));
        }
    }

    /// The change source's backend pid while it is connected — the LISTEN connection, or
    /// the walsender (for operators, and for tests that kill it).
    pub fn listener_backend_pid(&self) -> Option<i32> {
        self.state.listener.backend_pid()
    }

    pub fn listener_connected(&self) -> bool {
        self.state.listener.is_connected()
    }

    /// Waits until the change source's first connection is up (streams opened before that
    /// would miss nothing, but readiness is clearer for callers and tests).
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.state.listener.is_connected() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Stops everything: open streams end, connections close, within the grace period.
    pub async fn shutdown(self) {
        self.state.shutdown.cancel();
        let finished = tokio::time::timeout(SHUTDOWN_GRACE, async {
            let _ = self.serve.await;
            if let Some(serve_metrics) = self.serve_metrics {
                let _ = serve_metrics.await;
            }
            if let Some(watching) = self.watching {
                let _ = watching.await;
            }
        })
        .await;
        if finished.is_err() {
            tracing::warn!("connections still open after the grace period; exiting anyway");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel completes handshakes into the accept queue by itself; a connection that does
    /// not fit has its SYN dropped and retried only a second later.
    #[tokio::test]
    async fn a_burst_of_connections_fits_in_the_accept_queue() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // Nobody accepts while 600 clients connect at once.
        let connects = (0..600).map(|_| tokio::net::TcpStream::connect(addr));
        let all = futures_util::future::join_all(connects);
        let done = tokio::time::timeout(Duration::from_millis(900), all)
            .await
            .expect("every connection was queued, none waited for a SYN retry");
        assert!(done.iter().all(|c| c.is_ok()));
        drop(listener);
    }
}
