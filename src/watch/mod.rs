//! Watching Postgres: the single `LISTEN` connection and the hub of per-item state cells.
//!
//! [`Watcher`] is the only task that receives notifications. For each burst it collects the
//! ids of watched items, re-reads them with one query per kind, and publishes the rows into
//! the [`Hub`]. It never trusts a payload: a payload only says *what* to re-read, so a forged
//! `NOTIFY` can at most cause a harmless re-read.
//!
//! Losing the connection (an error, `Ok(None)` from `try_recv`, or a heartbeat that goes
//! unanswered on a silently dead socket) makes the watcher open a fresh connection, `LISTEN`
//! again and then re-read every watched item, so no transition is lost to the gap.

pub mod hub;

use crate::metrics::Metrics;
use crate::model::{PackState, RunState};
use crate::store;
use futures_util::FutureExt;
use hub::Hub;
use serde::Deserialize;
use sqlx::postgres::{PgConnectOptions, PgListener, PgNotification, PgPoolOptions};
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub use hub::{publish, publish_initial};

/// The channel runwire's triggers notify on.
pub const CHANNEL: &str = "runwire";
/// Most notifications handled as one burst (one re-read query per kind).
const MAX_BURST: usize = 4096;
/// Most ids per re-read query when re-reading everything after a reconnect.
const RESYNC_CHUNK: usize = 5000;
/// A re-read that takes longer is treated like a lost connection (sqlx has no query timeout,
/// and a pooled connection whose peer vanished would otherwise wedge the watcher).
const REREAD_TIMEOUT: Duration = Duration::from_secs(10);

async fn bounded<T>(query: impl std::future::Future<Output = sqlx::Result<T>>) -> sqlx::Result<T> {
    tokio::time::timeout(REREAD_TIMEOUT, query)
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
}

/// A notification payload, as the triggers write it. Fields are optional so a payload from
/// an older or newer trigger still parses; anything else is ignored.
#[derive(Debug, Deserialize)]
pub struct Doorbell {
    pub k: String,
    pub id: Option<i64>,
    pub w: Option<i64>,
    pub t: Option<i64>,
    pub u: Option<i64>,
}

impl Doorbell {
    pub fn parse(payload: &str) -> Option<Doorbell> {
        serde_json::from_str(payload).ok()
    }
}

/// Whether the listener is connected, for `/readyz`, and its backend pid, for operators (and
/// for tests that kill it).
#[derive(Debug, Default)]
pub struct ListenerStatus {
    connected: AtomicBool,
    backend_pid: AtomicI32,
}

impl ListenerStatus {
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
    pub fn backend_pid(&self) -> Option<i32> {
        self.is_connected()
            .then(|| self.backend_pid.load(Ordering::Acquire))
    }
    fn set(&self, pid: Option<i32>) {
        self.backend_pid.store(pid.unwrap_or(0), Ordering::Release);
        self.connected.store(pid.is_some(), Ordering::Release);
    }
}

/// Why the pump stopped.
enum Stop {
    Lost(String),
    Shutdown,
}

pub struct Watcher {
    pool: PgPool,
    /// Where the LISTEN connection goes.
    listen_options: PgConnectOptions,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    status: Arc<ListenerStatus>,
    heartbeat: Duration,
}

impl Watcher {
    /// `listen_options`: where the LISTEN connection goes (None: the pool's database).
    pub fn new(
        pool: PgPool,
        listen_options: Option<PgConnectOptions>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        status: Arc<ListenerStatus>,
        heartbeat: Duration,
    ) -> Self {
        let listen_options =
            listen_options.unwrap_or_else(|| pool.connect_options().as_ref().clone());
        Watcher {
            pool,
            listen_options,
            hub,
            metrics,
            status,
            heartbeat: heartbeat.max(Duration::from_millis(200)),
        }
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let mut first = true;
        loop {
            let connected = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = tokio::time::timeout(self.heartbeat * 2, self.connect()) => {
                    r.unwrap_or(Err(sqlx::Error::PoolTimedOut))
                }
            };
            let stop = match connected {
                Ok(mut listener) => {
                    backoff = Duration::from_millis(100);
                    if !first {
                        self.metrics.listener_reconnects.inc();
                    }
                    first = false;
                    match self.resync().await {
                        Ok(()) => self.pump(&mut listener, &shutdown).await,
                        Err(e) => Stop::Lost(format!("resync failed: {e}")),
                    }
                }
                Err(e) => Stop::Lost(format!("connect failed: {e}")),
            };
            self.status.set(None);
            match stop {
                Stop::Shutdown => return,
                Stop::Lost(why) => {
                    tracing::warn!(%why, retry_in = ?backoff, "listener connection lost");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn connect(&self) -> Result<PgListener, sqlx::Error> {
        // A fresh one-connection pool every time: a dropped PgListener sends `UNLISTEN *` on
        // its old connection before giving it back, which never finishes on a dead socket and
        // would otherwise hold the only slot forever.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(self.heartbeat.max(Duration::from_secs(1)))
            .connect_lazy_with(self.listen_options.clone());
        let mut listener = PgListener::connect_with(&pool).await?;
        // Reconnecting is ours to do (with a resync), not the listener's.
        listener.eager_reconnect(false);
        listener.ignore_pool_close_event(true);
        listener.listen(CHANNEL).await?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut listener)
            .await?;
        self.status.set(Some(pid));
        tracing::info!(backend_pid = pid, "listening for changes");
        Ok(listener)
    }

    /// Re-reads every watched item; run after every (re)connect, once `LISTEN` is in place.
    async fn resync(&self) -> Result<(), sqlx::Error> {
        let runs = self.hub.runs.keys();
        for chunk in runs.chunks(RESYNC_CHUNK) {
            self.reread_runs(chunk).await?;
        }
        let packs = self.hub.packs.keys();
        for chunk in packs.chunks(RESYNC_CHUNK) {
            self.reread_packs(chunk).await?;
        }
        self.hub.resynced.send_modify(|n| *n += 1);
        self.hub.access_changed_for_all();
        Ok(())
    }

    async fn pump(&self, listener: &mut PgListener, shutdown: &CancellationToken) -> Stop {
        let idle = self.heartbeat / 2;
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return Stop::Shutdown,
                r = tokio::time::timeout(idle, listener.try_recv()) => r,
            };
            let first = match first {
                Ok(Ok(Some(n))) => n,
                Ok(Ok(None)) => return Stop::Lost("connection closed".into()),
                Ok(Err(e)) => return Stop::Lost(e.to_string()),
                Err(_idle) => {
                    // Nothing for a while: prove the connection is alive (sqlx has no TCP
                    // keepalive, and a peer that vanished without a FIN looks just like quiet).
                    let ping = sqlx::query("SELECT 1").execute(&mut *listener);
                    match tokio::time::timeout(idle, ping).await {
                        Ok(Ok(_)) => continue,
                        Ok(Err(e)) => return Stop::Lost(format!("heartbeat failed: {e}")),
                        Err(_) => return Stop::Lost("heartbeat timed out".into()),
                    }
                }
            };
            // Drain what has already arrived so a burst costs one re-read.
            let mut burst = vec![first];
            let mut lost = None;
            while burst.len() < MAX_BURST {
                match listener.try_recv().now_or_never() {
                    Some(Ok(Some(n))) => burst.push(n),
                    Some(Ok(None)) => {
                        lost = Some("connection closed".to_string());
                        break;
                    }
                    Some(Err(e)) => {
                        lost = Some(e.to_string());
                        break;
                    }
                    None => break,
                }
            }
            if let Err(e) = self.handle_burst(&burst).await {
                return Stop::Lost(format!("re-read failed: {e}"));
            }
            if let Some(why) = lost {
                return Stop::Lost(why);
            }
        }
    }

    /// Turns a burst of doorbells into at most one re-read per kind.
    pub async fn handle_burst(&self, burst: &[PgNotification]) -> Result<(), sqlx::Error> {
        let mut runs = BTreeSet::new();
        let mut packs = BTreeSet::new();
        let mut ignored = 0u64;
        for n in burst {
            let Some(bell) = Doorbell::parse(n.payload()) else {
                ignored += 1;
                continue;
            };
            match (bell.k.as_str(), bell.id, bell.t, bell.u) {
                ("run", Some(id), _, _) => {
                    let feed = bell.w.is_some_and(|w| self.hub.workspaces.contains(&w));
                    if feed || self.hub.runs.contains(&id) {
                        runs.insert(id);
                    }
                }
                ("pack", _, Some(tenant), _) => {
                    if self.hub.packs.contains(&tenant) {
                        packs.insert(tenant);
                    }
                }
                ("member", _, _, Some(user)) => self.hub.access_changed(user),
                _ => ignored += 1,
            }
        }
        self.metrics.notifications.inc_by(burst.len() as u64);
        self.metrics.notifications_ignored.inc_by(ignored);
        if !runs.is_empty() {
            self.reread_runs(&runs.into_iter().collect::<Vec<_>>())
                .await?;
        }
        if !packs.is_empty() {
            self.reread_packs(&packs.into_iter().collect::<Vec<_>>())
                .await?;
        }
        Ok(())
    }

    async fn reread_runs(&self, ids: &[i64]) -> Result<(), sqlx::Error> {
        let started = Instant::now();
        let rows = bounded(store::runs_by_ids(&self.pool, ids)).await?;
        self.metrics.observe_reread(ids.len(), started.elapsed());
        for row in &rows {
            let state = Arc::new(RunState::from_row(row));
            // None: nobody watches the run; Some(None): unchanged.
            let published = self
                .hub
                .runs
                .with(&state.id, |cell| publish(cell, Arc::clone(&state)));
            if !matches!(published, Some(None)) {
                // Feeds de-duplicate by version themselves; a send error only means nobody
                // watches this workspace right now.
                self.hub.workspaces.with(&state.workspace_id, |feed| {
                    feed.send(Arc::clone(&state)).ok()
                });
            }
            if let Some(Some(delivery)) = published {
                delivery.deliver(&self.metrics);
                self.metrics.observe_commit_lag(state.updated_at);
            }
        }
        Ok(())
    }

    async fn reread_packs(&self, tenant_ids: &[i64]) -> Result<(), sqlx::Error> {
        let started = Instant::now();
        let rows = bounded(store::latest_packs(&self.pool, tenant_ids)).await?;
        self.metrics
            .observe_reread(tenant_ids.len(), started.elapsed());
        for (tenant_id, pack) in &rows {
            let state = Arc::new(PackState::new(*tenant_id, pack.as_ref()));
            let published = self
                .hub
                .packs
                .with(tenant_id, |cell| publish(cell, Arc::clone(&state)));
            if let Some(Some(delivery)) = published {
                delivery.deliver(&self.metrics);
                self.metrics.observe_commit_lag(state.updated_at);
            }
        }
        Ok(())
    }
}
