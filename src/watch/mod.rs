//! Watching Postgres: one change source per process, and the hub of per-item state cells.
//!
//! Two sources, one seam. [`wal`] takes changes from logical replication: whole
//! transactions in commit order, each row's new values in the message, nothing on the host's
//! tables. [`notify`] takes doorbells from runwire's triggers and re-reads what they name.
//! Both end in the same step, in the same order: **a batch's access changes are applied to
//! the access epochs before any state of it is published** ([`Watcher::publish`]), so the
//! gate never admits a state ahead of a revocation that committed before it. The hub, the
//! stream driver and the access rules do not know which source runs.
//!
//! Both sources also report every run and pack row they see to the operations metrics
//! (`ops::Operations`: `run_changed`, `pack_changed`, the deletes and truncates, and `reset`
//! from one snapshot of the tables at every (re)connect — WAL: the slot's exported one), and
//! every run row to `progress::Rates::observe` before its state is rendered. So NOTIFY
//! re-reads every run that rings, watched or not. (Issue 17's wiring, marked `ops`/`progress`
//! in the sources.)
//!
//! Losing the connection (an error, a closed stream, a heartbeat that goes unanswered on a
//! silently dead socket) makes the watcher connect again, mark every access decision stale
//! (changes may have been missed) and re-read every watched item, so no transition is lost
//! to the gap. Workspace feeds re-read their snapshots.

pub(crate) mod applied;
pub(crate) mod hub;
mod notify;
mod wal;

pub use notify::Doorbell;

use crate::access::Epochs;
use crate::metrics::Metrics;
use crate::model::{ChangeSource, ItemKey, State};
use applied::Applied;
use hub::Hub;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A re-read that takes longer is treated like a lost connection (sqlx has no query timeout
/// of its own, and a pooled connection whose peer vanished would otherwise wedge the
/// watcher).
const REREAD_TIMEOUT: Duration = Duration::from_secs(10);

async fn bounded<T>(query: impl std::future::Future<Output = sqlx::Result<T>>) -> sqlx::Result<T> {
    tokio::time::timeout(REREAD_TIMEOUT, query)
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
}

/// The change source as operators and readers see it: connected or not, which one, its
/// backend (the LISTEN connection, or the walsender), and how far behind it is.
#[derive(Debug, Default)]
pub(crate) struct SourceStatus {
    connected: AtomicBool,
    /// Bumped whenever the source connects or disconnects: a read that spans a change may
    /// not seed a cell (see `access::batch`).
    session: AtomicU64,
    backend_pid: AtomicI32,
    /// 0 none yet, 1 NOTIFY, 2 WAL.
    source: AtomicU8,
    /// The last applied transaction's commit → applied, in microseconds (WAL mode).
    lag_micros: AtomicU64,
    /// WAL the server has sent beyond what was applied, in bytes (WAL mode).
    lag_bytes: AtomicU64,
}

impl SourceStatus {
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub(crate) fn backend_pid(&self) -> Option<i32> {
        self.is_connected()
            .then(|| self.backend_pid.load(Ordering::Acquire))
    }

    /// The source in use (None before the watcher started).
    pub(crate) fn source(&self) -> Option<ChangeSource> {
        match self.source.load(Ordering::Acquire) {
            1 => Some(ChangeSource::Notify),
            2 => Some(ChangeSource::Wal),
            _ => None,
        }
    }

    /// How far behind the source is: seconds (commit → applied) and WAL bytes.
    pub(crate) fn lag(&self) -> (f64, u64) {
        (
            self.lag_micros.load(Ordering::Relaxed) as f64 / 1e6,
            self.lag_bytes.load(Ordering::Relaxed),
        )
    }

    fn set_source(&self, source: ChangeSource) {
        let n = match source {
            ChangeSource::Notify => 1,
            ChangeSource::Wal => 2,
        };
        self.source.store(n, Ordering::Release);
    }

    /// Which connected (or disconnected) period this is.
    pub(crate) fn session(&self) -> u64 {
        self.session.load(Ordering::Acquire)
    }

    fn set(&self, pid: Option<i32>) {
        self.session.fetch_add(1, Ordering::AcqRel);
        self.backend_pid.store(pid.unwrap_or(0), Ordering::Release);
        self.connected.store(pid.is_some(), Ordering::Release);
        self.session.fetch_add(1, Ordering::AcqRel);
    }

    /// A source connected to backend 1, for tests of what reads it.
    #[cfg(test)]
    pub(crate) fn connected(source: ChangeSource) -> Self {
        let status = SourceStatus::default();
        status.set_source(source);
        status.set(Some(1));
        status
    }

    fn set_lag(&self, lag: Duration, bytes: u64) {
        let micros = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        self.lag_micros.store(micros, Ordering::Relaxed);
        self.lag_bytes.store(bytes, Ordering::Relaxed);
    }
}

/// Why a session of a source ended.
enum Stop {
    Lost(String),
    Shutdown,
}

/// Where the change source connects.
#[derive(Clone)]
pub(crate) struct SourceDatabase {
    pub options: PgConnectOptions,
}

pub(crate) struct Watcher {
    pool: PgPool,
    epochs: Arc<Epochs>,
    database: SourceDatabase,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    status: Arc<SourceStatus>,
    applied: Arc<Applied>,
    heartbeat: Duration,
    /// Set when a session applies a change: only then does the reconnect back-off start over.
    progressed: AtomicBool,
}

/// The workspace feeds, besides each state's own workspace, that must hear of an item: the
/// one a run moved from, a pack's, the ones that show it.
pub(crate) type Feeds = BTreeMap<ItemKey, Vec<i64>>;

/// What the watcher writes into, shared with the rest of the process.
pub(crate) struct Shared {
    pub hub: Arc<Hub>,
    pub epochs: Arc<Epochs>,
    pub metrics: Arc<Metrics>,
    pub status: Arc<SourceStatus>,
    pub applied: Arc<Applied>,
}

impl Watcher {
    pub(crate) fn new(
        pool: PgPool,
        database: SourceDatabase,
        shared: Shared,
        heartbeat: Duration,
    ) -> Self {
        let Shared {
            hub,
            epochs,
            metrics,
            status,
            applied,
        } = shared;
        Watcher {
            pool,
            epochs,
            database,
            hub,
            metrics,
            status,
            applied,
            heartbeat: heartbeat.max(Duration::from_millis(200)),
            progressed: AtomicBool::new(false),
        }
    }

    /// Runs `source` until `shutdown` is cancelled, reconnecting with back-off.
    pub(crate) async fn run(self, source: ChangeSource, shutdown: CancellationToken) {
        self.status.set_source(source);
        let mut notify = notify::Notify::default();
        let mut backoff = Duration::from_millis(100);
        let mut first = true;
        loop {
            let stop = match source {
                ChangeSource::Notify => notify.session(&self, &shutdown, &mut first).await,
                ChangeSource::Wal => wal::session(&self, &shutdown, &mut first).await,
            };
            self.status.set(None);
            // Back-off starts over only after a session that applied something: one that
            // fails at its first change (a dropped publication fails at every change) would
            // otherwise reconnect, and resync everything, at every write of the host's.
            if self.progressed.swap(false, Ordering::AcqRel) {
                backoff = Duration::from_millis(100);
            }
            match stop {
                Stop::Shutdown => return,
                Stop::Lost(why) => {
                    tracing::warn!(%why, retry_in = ?backoff, "change source connection lost");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Called by a source once it is connected and before it re-reads anything: every
    /// decision is stale (changes may have been missed), and a reconnect is counted.
    fn reconnected(&self, first: &mut bool) {
        self.epochs.everyone_changed();
        if !*first {
            self.metrics.listener_reconnects.inc();
        }
        *first = false;
    }

    /// A session applied a change (see `run`'s back-off).
    fn progressed(&self) {
        self.progressed.store(true, Ordering::Release);
    }

    /// The source is ready: reads and streams may use the database again.
    fn connected(&self, pid: i32) {
        self.status.set(Some(pid));
    }

    /// The one step both sources end in: publishes states into the cells that watch them and
    /// the workspace feeds that must hear of them. The caller has applied the access changes
    /// that came before these states.
    fn publish(&self, states: Vec<Arc<State>>, feeds: &Feeds) {
        for state in states {
            let cell = self.hub.items.get(&state.key);
            // None: nobody watches the item; Some(None): unchanged.
            let published = cell.map(|cell| cell.publish(Arc::clone(&state)));
            if !matches!(published, Some(None)) {
                // Feeds de-duplicate themselves; a send error only means nobody watches that
                // workspace right now.
                let mut to = feeds.get(&state.key).cloned().unwrap_or_default();
                to.extend(state.workspace());
                to.extend(self.hub.shown_in(&state.key));
                to.sort_unstable();
                to.dedup();
                for workspace in to {
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

    /// Whether anyone watches `key`, or a feed of one of `workspaces` is open.
    fn wanted(&self, key: &ItemKey, workspaces: &[Option<i64>]) -> bool {
        self.hub.items.contains(key)
            || self.hub.is_shown(key)
            || workspaces
                .iter()
                .flatten()
                .any(|w| self.hub.workspaces.contains(w))
    }
}
