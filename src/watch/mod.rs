//! Watching Postgres: the single `LISTEN` connection and the hub of per-item state cells.
//!
//! [`Watcher`] is the only task that receives notifications. For each burst it applies the
//! access changes it announces (memberships, tenants, workspaces, users: see the trigger
//! file) to the access epochs *first*, then re-reads the watched items it names with one
//! query per kind, and publishes the rows into the [`Hub`]. It never trusts a payload: a
//! payload only says *what* to re-read, so a forged `NOTIFY` can at most cause a harmless
//! re-read (or a harmless access re-check).
//!
//! Before publishing what a re-read returned, the watcher makes one round trip on the
//! listener connection (the *fence*). Postgres queues a transaction's notifications before
//! its commit is acknowledged, and sends them ahead of any later query result on that
//! connection; so after the fence, every access change that committed before the re-read
//! ran has been applied, and no state is published ahead of the revocation that preceded it.
//!
//! Every run and pack row the watcher reads is also reported to the operations metrics
//! (`ops::Operations`: `run_changed`, `pack_changed`, the deletes, and `reset` from one
//! snapshot at every (re)connect), and every run row to `progress::Rates::observe` before its
//! state is rendered — so it re-reads every run that rings, watched or not. (Issue 17's
//! wiring, marked `ops`/`progress` below, for the change-source seam to take over.)
//!
//! Losing the connection (an error, `Ok(None)` from `try_recv`, or a heartbeat that goes
//! unanswered on a silently dead socket) makes the watcher open a fresh connection, `LISTEN`
//! again, mark every access decision stale (changes may have been missed) and then re-read
//! every watched item, so no transition is lost to the gap.

pub(crate) mod hub;

use crate::access::Epochs;
use crate::metrics::Metrics;
use crate::model::{ChangeSource, ItemKey, State};
use crate::store;
use futures_util::FutureExt;
use hub::Hub;
use serde::Deserialize;
use sqlx::postgres::{PgConnectOptions, PgListener, PgNotification, PgPoolOptions};
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The channel runwire's triggers notify on.
pub(crate) const CHANNEL: &str = "runwire";
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
    /// The run's workspace before an update moved it.
    pub ow: Option<i64>,
    /// The pack's tenant before an update moved it.
    pub ot: Option<i64>,
}

impl Doorbell {
    pub fn parse(payload: &str) -> Option<Doorbell> {
        serde_json::from_str(payload).ok()
    }
}

/// Whether the listener is connected, for `/readyz`, and its backend pid, for operators (and
/// for tests that kill it).
#[derive(Debug, Default)]
pub(crate) struct ListenerStatus {
    connected: AtomicBool,
    backend_pid: AtomicI32,
}

impl ListenerStatus {
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
    pub(crate) fn backend_pid(&self) -> Option<i32> {
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

pub(crate) struct Watcher {
    pool: PgPool,
    epochs: Arc<Epochs>,
    /// Where the LISTEN connection goes.
    listen_options: PgConnectOptions,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    status: Arc<ListenerStatus>,
    heartbeat: Duration,
}

impl Watcher {
    /// `listen_options`: where the LISTEN connection goes (None: the pool's database).
    pub(crate) fn new(
        pool: PgPool,
        listen_options: Option<PgConnectOptions>,
        hub: Arc<Hub>,
        epochs: Arc<Epochs>,
        metrics: Arc<Metrics>,
        status: Arc<ListenerStatus>,
        heartbeat: Duration,
    ) -> Self {
        let listen_options =
            listen_options.unwrap_or_else(|| pool.connect_options().as_ref().clone());
        Watcher {
            pool,
            epochs,
            listen_options,
            hub,
            metrics,
            status,
            heartbeat: heartbeat.max(Duration::from_millis(200)),
        }
    }

    /// Runs until `shutdown` is cancelled.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
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
                    match self.resync(&mut listener).await {
                        Ok(()) => self.pump(&mut listener, &shutdown).await,
                        Err(stop) => stop,
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
    /// Access changes may have been missed meanwhile: every decision is marked stale before
    /// anything is published.
    async fn resync(&self, listener: &mut PgListener) -> Result<(), Stop> {
        self.epochs.everyone_changed();
        // ops (issue 17): the metrics start over from what is true now.
        self.reset_ops()
            .await
            .map_err(|e| Stop::Lost(format!("operations snapshot failed: {e}")))?;
        let keys = self.hub.items.keys();
        for chunk in keys.chunks(RESYNC_CHUNK) {
            let mut plan = Plan::default();
            for key in chunk {
                match *key {
                    ItemKey::Run(id) => plan.runs.insert(id),
                    ItemKey::Pack { tenant } => plan.packs.insert(tenant),
                };
            }
            self.process(listener, plan).await?;
        }
        self.hub.resynced.send_modify(|n| *n += 1);
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
            let lost = drain(listener, &mut burst);
            let plan = self.plan(&burst);
            if let Err(stop) = self.process(listener, plan).await {
                return stop;
            }
            if let Some(why) = lost {
                return Stop::Lost(why);
            }
        }
    }

    /// Turns a burst of doorbells into a plan of re-reads, applying the access changes it
    /// announces at once: they must be known before any state of the burst is published.
    pub(crate) fn plan(&self, burst: &[PgNotification]) -> Plan {
        let mut plan = Plan::default();
        let mut ignored = 0u64;
        for n in burst {
            let Some(bell) = Doorbell::parse(n.payload()) else {
                ignored += 1;
                continue;
            };
            match (bell.k.as_str(), bell.id, bell.t, bell.u) {
                ("run", Some(id), _, _) => {
                    // ops + progress (issue 17): every run is re-read, watched or not: the
                    // metrics count all of them.
                    plan.runs.insert(id);
                    let feeds = self.feeds_of([bell.w, bell.ow]);
                    if !feeds.is_empty() {
                        plan.feeds
                            .entry(ItemKey::Run(id))
                            .or_default()
                            .extend(feeds);
                    }
                }
                ("pack", pack, Some(tenant), _) => {
                    // ops (issue 17): the pack itself, for the metrics.
                    plan.pack_rows.extend(pack);
                    // The card of the tenant it belongs to, and of the one it left; the
                    // workspace feeds that show those cards.
                    let feeds = self.feeds_of([bell.w, bell.ow]);
                    for tenant in [Some(tenant), bell.ot].into_iter().flatten() {
                        let key = ItemKey::Pack { tenant };
                        if !feeds.is_empty() || self.hub.items.contains(&key) {
                            plan.packs.insert(tenant);
                            plan.feeds.entry(key).or_default().extend(&feeds);
                        }
                    }
                }
                ("member", _, _, Some(user)) => self.epochs.user_changed(user),
                ("tenant", _, Some(tenant), _) => {
                    // Moved to another workspace, or deleted: anyone's access may differ.
                    self.epochs.everyone_changed();
                    if self.hub.items.contains(&ItemKey::Pack { tenant }) {
                        plan.packs.insert(tenant);
                    }
                }
                ("access", _, _, _) => self.epochs.everyone_changed(),
                ("runs", _, _, _) => {
                    // Truncated: every watched run may be gone, every feed re-reads.
                    for key in self.hub.items.keys() {
                        if let ItemKey::Run(id) = key {
                            plan.runs.insert(id);
                        }
                    }
                    plan.resnapshot_feeds = true;
                    plan.reset_ops = true; // ops (issue 17)
                }
                ("packs", _, _, _) => {
                    for key in self.hub.items.keys() {
                        if let ItemKey::Pack { tenant } = key {
                            plan.packs.insert(tenant);
                        }
                    }
                    plan.resnapshot_feeds = true;
                    plan.reset_ops = true; // ops (issue 17)
                }
                _ => ignored += 1,
            }
        }
        self.metrics.notifications.inc_by(burst.len() as u64);
        self.metrics.notifications_ignored.inc_by(ignored);
        plan
    }

    /// The workspaces among these that have a feed open.
    fn feeds_of(&self, workspaces: [Option<i64>; 2]) -> Vec<i64> {
        let open = workspaces.into_iter().flatten();
        open.filter(|w| self.hub.workspaces.contains(w)).collect()
    }

    /// Re-reads what `plan` names, fences, and publishes; repeats for whatever arrived
    /// meanwhile.
    async fn process(&self, listener: &mut PgListener, mut plan: Plan) -> Result<(), Stop> {
        loop {
            if plan.resnapshot_feeds {
                self.hub.resynced.send_modify(|n| *n += 1);
            }
            let states = self
                .reread(&plan)
                .await
                .map_err(|e| Stop::Lost(format!("re-read failed: {e}")))?;
            if states.is_empty() {
                return Ok(());
            }
            // The fence (see the module docs): every notification of a transaction the
            // re-read may have seen is in hand after this round trip.
            let fence = sqlx::query("SELECT 1").execute(&mut *listener);
            match tokio::time::timeout(REREAD_TIMEOUT, fence).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(Stop::Lost(format!("fence failed: {e}"))),
                Err(_) => return Err(Stop::Lost("fence timed out".into())),
            }
            // Everything that arrived, not just a burst's worth: each chunk's access changes
            // must be applied before these states go out.
            let mut next = Plan::default();
            let lost = loop {
                let mut arrived = Vec::new();
                let lost = drain(listener, &mut arrived);
                let full = arrived.len() == MAX_BURST;
                next.merge(self.plan(&arrived));
                if lost.is_some() || !full {
                    break lost;
                }
            };
            self.publish(states, &plan);
            if let Some(why) = lost {
                return Err(Stop::Lost(why));
            }
            if next.is_empty() {
                return Ok(());
            }
            plan = next;
        }
    }

    /// ops (issue 17): the operations metrics start over from one snapshot of the tables.
    async fn reset_ops(&self) -> sqlx::Result<()> {
        let window = crate::ops::DEDUP_WINDOW.num_seconds() as f64;
        let snapshot = bounded(store::ops_snapshot(&self.pool, window)).await?;
        self.metrics.ops.reset(&snapshot);
        Ok(())
    }

    async fn reread(&self, plan: &Plan) -> Result<Vec<Arc<State>>, sqlx::Error> {
        let mode = ChangeSource::Notify;
        let mut states = Vec::new();
        if plan.reset_ops {
            self.reset_ops().await?;
        }
        if !plan.runs.is_empty() {
            let ids: Vec<i64> = plan.runs.iter().copied().collect();
            let started = Instant::now();
            let rows = bounded(store::runs_by_ids(&self.pool, mode, &ids)).await?;
            self.metrics.observe_reread(ids.len(), started.elapsed());
            let mut missing = plan.runs.clone();
            let now = chrono::Utc::now();
            for row in &rows {
                // ops + progress (issue 17): each state read is one observation, made
                // before the state renders it.
                if let Ok(row) = row {
                    self.metrics.ops.run_changed(row);
                    self.hub.rates.observe(row, now);
                }
                let Some((state, _)) = State::of_run(row, None, &self.hub.rates) else {
                    continue;
                };
                if let ItemKey::Run(id) = state.key {
                    missing.remove(&id);
                }
                states.push(Arc::new(state));
            }
            for id in missing {
                self.metrics.ops.run_deleted(id);
                self.hub.rates.forget(id);
                states.push(Arc::new(State::gone(ItemKey::Run(id))));
            }
        }
        // ops (issue 17): the packs that rang, by id (cards are per tenant, below).
        if !plan.pack_rows.is_empty() {
            let ids: Vec<i64> = plan.pack_rows.iter().copied().collect();
            let rows = bounded(store::packs_by_ids(&self.pool, &ids)).await?;
            let mut missing = plan.pack_rows.clone();
            for row in rows.iter().flatten() {
                missing.remove(&row.id);
                self.metrics.ops.pack_changed(row);
            }
            for id in missing {
                self.metrics.ops.pack_deleted(id);
            }
        }
        if !plan.packs.is_empty() {
            let tenants: Vec<i64> = plan.packs.iter().copied().collect();
            let started = Instant::now();
            let rows = bounded(store::latest_packs(&self.pool, mode, &tenants)).await?;
            self.metrics
                .observe_reread(tenants.len(), started.elapsed());
            for row in &rows {
                let state = match row.exists {
                    true => State::of_card(row.tenant_id, row.pack.as_ref(), None),
                    false => State::gone(ItemKey::Pack {
                        tenant: row.tenant_id,
                    }),
                };
                states.push(Arc::new(state));
            }
        }
        Ok(states)
    }

    fn publish(&self, states: Vec<Arc<State>>, plan: &Plan) {
        for state in states {
            let cell = self.hub.items.get(&state.key);
            // None: nobody watches the item; Some(None): unchanged.
            let published = cell.map(|cell| cell.publish(Arc::clone(&state)));
            if !matches!(published, Some(None)) {
                // Feeds de-duplicate themselves; a send error only means nobody watches that
                // workspace right now.
                let mut feeds = plan.feeds.get(&state.key).cloned().unwrap_or_default();
                feeds.extend(state.workspace());
                feeds.sort_unstable();
                feeds.dedup();
                for workspace in feeds {
                    if let Some(feed) = self.hub.workspaces.get(&workspace) {
                        let _ = feed.send(Arc::clone(&state));
                    }
                }
            }
            if let Some(Some(delivery)) = published {
                let metrics = Arc::clone(&self.metrics);
                delivery.deliver(move |sent, handed_over| {
                    metrics.events_sent.inc_by(sent);
                    metrics.direct_handovers.inc_by(handed_over);
                });
                self.metrics.observe_commit_lag(state.updated_at);
            }
        }
    }
}

/// What one burst asks the watcher to re-read.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    runs: BTreeSet<i64>,
    /// Tenants whose review-pack card to re-read.
    packs: BTreeSet<i64>,
    /// Workspace feeds that must hear of an item: a pack's, and a run's besides its current
    /// workspace's (the one it moved from, or was deleted from).
    feeds: BTreeMap<ItemKey, Vec<i64>>,
    resnapshot_feeds: bool,
    /// ops (issue 17): review packs to re-read by id, for the metrics.
    pack_rows: BTreeSet<i64>,
    /// ops (issue 17): re-count everything (a table was truncated).
    reset_ops: bool,
}

impl Plan {
    fn merge(&mut self, other: Plan) {
        self.runs.extend(other.runs);
        self.packs.extend(other.packs);
        for (key, feeds) in other.feeds {
            self.feeds.entry(key).or_default().extend(feeds);
        }
        self.resnapshot_feeds |= other.resnapshot_feeds;
        self.pack_rows.extend(other.pack_rows);
        self.reset_ops |= other.reset_ops;
    }

    fn is_empty(&self) -> bool {
        self.runs.is_empty()
            && self.packs.is_empty()
            && !self.resnapshot_feeds
            && self.pack_rows.is_empty()
            && !self.reset_ops
    }
}

/// Takes every notification that has already arrived (up to a burst's worth); returns why
/// the connection was lost, if it was.
fn drain(listener: &mut PgListener, into: &mut Vec<PgNotification>) -> Option<String> {
    while into.len() < MAX_BURST {
        match listener.try_recv().now_or_never() {
            Some(Ok(Some(n))) => into.push(n),
            Some(Ok(None)) => return Some("connection closed".to_string()),
            Some(Err(e)) => return Some(e.to_string()),
            None => break,
        }
    }
    None
}
