//! The NOTIFY source: runwire's triggers ring a doorbell (`pg_notify`) for every change; the
//! watcher re-reads what a burst of doorbells names, one query per kind, and publishes it.
//!
//! A payload is never the truth: it only says *what* to re-read (or whose access to re-check),
//! so a forged `NOTIFY` can at most cause a harmless re-read.
//!
//! Access changes reach the watcher two ways. Their doorbells make the epochs stale at once,
//! so streams re-decide promptly. And every re-read also returns the access changes that
//! became visible since the previous one (the triggers log them in `runwire.access_changes`),
//! read **in the same snapshot as the rows**: they are applied before the rows are published.
//! So a state is never published ahead of an access change that committed before it, though
//! Postgres makes a commit visible before it signals its listeners — a data dependency, not a
//! race won by a round trip.

use super::{bounded, Feeds, Stop, Watcher};
use crate::model::{ItemKey, State};
use crate::store::{self, AccessLog};
use futures_util::FutureExt;
use serde::Deserialize;
use sqlx::postgres::{PgListener, PgNotification, PgPoolOptions};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The channel runwire's triggers notify on.
pub(crate) const CHANNEL: &str = "runwire";
/// Most notifications handled as one burst (one re-read query per kind).
const MAX_BURST: usize = 4096;
/// Most ids per re-read query when re-reading everything after a reconnect.
const RESYNC_CHUNK: usize = 5000;
/// The access log keeps an hour; a snapshot older than this is not compared with it (every
/// decision is made stale instead).
const LOG_HORIZON: Duration = Duration::from_secs(30 * 60);

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

/// The NOTIFY source's memory between re-reads: the snapshot up to which the access log has
/// been applied, and when it was taken.
#[derive(Default)]
pub(super) struct Notify {
    applied: Option<(String, Instant)>,
    /// Re-reads that failed (a host migration holding a table, a pool out of connections):
    /// retried with back-off, without dropping the connection, so the other kind goes on.
    retry: Plan,
    retry_at: Option<(Instant, Duration)>,
}

/// What one burst asks the watcher to re-read.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    runs: BTreeSet<i64>,
    /// Tenants whose review-pack card to re-read.
    packs: BTreeSet<i64>,
    /// Workspace feeds that must hear of an item besides its current workspace's.
    feeds: Feeds,
    resnapshot_feeds: bool,
    /// ops (issue 17): review packs to re-read by id, for the operations metrics.
    pack_rows: BTreeSet<i64>,
    /// ops (issue 17): runs re-read only for the metrics (nobody watches them): no state of
    /// them is rendered or published.
    counted_runs: BTreeSet<i64>,
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.runs.is_empty()
            && self.packs.is_empty()
            && self.pack_rows.is_empty()
            && self.counted_runs.is_empty()
    }

    fn merge(&mut self, other: Plan) {
        self.runs.extend(other.runs);
        self.packs.extend(other.packs);
        for (key, feeds) in other.feeds {
            self.feeds.entry(key).or_default().extend(feeds);
        }
        self.resnapshot_feeds |= other.resnapshot_feeds;
        self.pack_rows.extend(other.pack_rows);
        self.counted_runs.extend(other.counted_runs);
    }

    /// This plan's runs part, and its packs part.
    fn split(self) -> (Plan, Plan) {
        let runs = Plan {
            runs: self.runs,
            counted_runs: self.counted_runs,
            feeds: self.feeds.clone(),
            ..Plan::default()
        };
        let packs = Plan {
            packs: self.packs,
            pack_rows: self.pack_rows,
            feeds: self.feeds,
            ..Plan::default()
        };
        (runs, packs)
    }
}

impl Notify {
    pub(super) async fn session(
        &mut self,
        w: &Watcher,
        shutdown: &CancellationToken,
        first: &mut bool,
    ) -> Stop {
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return Stop::Shutdown,
            r = tokio::time::timeout(w.heartbeat.saturating_mul(2), self.connect(w, first)) => {
                r.unwrap_or(Err(sqlx::Error::PoolTimedOut))
            }
        };
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(e) => return Stop::Lost(format!("connect failed: {e}")),
        };
        if let Err(stop) = self.resync(w).await {
            return stop;
        }
        self.pump(w, &mut listener, shutdown).await
    }

    async fn connect(&mut self, w: &Watcher, first: &mut bool) -> Result<PgListener, sqlx::Error> {
        // A fresh one-connection pool every time: a dropped PgListener sends `UNLISTEN *` on
        // its old connection before giving it back, which never finishes on a dead socket
        // and would otherwise hold the only slot forever.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(w.heartbeat.max(Duration::from_secs(1)))
            .connect_lazy_with(w.database.options.clone());
        let mut listener = PgListener::connect_with(&pool).await?;
        // Reconnecting is ours to do (with a resync), not the listener's.
        listener.eager_reconnect(false);
        listener.ignore_pool_close_event(true);
        listener.listen(CHANNEL).await?;
        // Every access change from here on rings, or shows in the log against this snapshot;
        // everything before it is covered by marking every decision stale.
        let (pid, snapshot): (i32, String) =
            sqlx::query_as("SELECT pg_backend_pid(), pg_current_snapshot()::text")
                .fetch_one(&mut listener)
                .await?;
        self.applied = Some((snapshot, Instant::now()));
        w.reconnected(first);
        w.connected(pid);
        tracing::info!(backend_pid = pid, "listening for changes (NOTIFY)");
        Ok(listener)
    }

    /// Re-reads every watched item; run after every (re)connect.
    async fn resync(&mut self, w: &Watcher) -> Result<(), Stop> {
        let keys = w.hub.items.keys();
        for chunk in keys.chunks(RESYNC_CHUNK) {
            let mut plan = Plan::default();
            for key in chunk {
                match *key {
                    ItemKey::Run(id) => plan.runs.insert(id),
                    ItemKey::Pack { tenant } => plan.packs.insert(tenant),
                };
            }
            self.process(w, plan).await;
        }
        w.hub.resynced.send_modify(|n| *n += 1);
        // ops (issue 17): the metrics start over from what is true now — after the watched
        // items, whose re-read must not wait for it (a change missed meanwhile is re-read
        // from its doorbell, and counts once).
        let window = crate::ops::DEDUP_WINDOW.num_seconds() as f64;
        // A table held by a host migration must not cost the session: the gauges then stay
        // as they were until the next reconnect.
        match bounded(store::ops_snapshot(&w.pool, window)).await {
            Ok(ops) => w.metrics.ops.reset(&ops),
            Err(e) => tracing::warn!(error = %e, "cannot count the operations for the metrics"),
        }
        Ok(())
    }

    async fn pump(
        &mut self,
        w: &Watcher,
        listener: &mut PgListener,
        shutdown: &CancellationToken,
    ) -> Stop {
        let idle = w.heartbeat / 2;
        loop {
            let retry = async {
                match self.retry_at {
                    Some((at, _)) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let first = tokio::select! {
                _ = shutdown.cancelled() => return Stop::Shutdown,
                _ = retry => {
                    let plan = std::mem::take(&mut self.retry);
                    self.process(w, plan).await;
                    continue;
                }
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
            let plan = plan(w, &burst);
            self.process(w, plan).await;
            w.progressed();
            if let Some(why) = lost {
                return Stop::Lost(why);
            }
        }
    }

    /// Re-reads what `plan` names together with the access log, applies the access changes
    /// the log shows, and publishes — runs and packs each on their own: a kind whose read
    /// fails is retried later (with what rings meanwhile), and the other goes on.
    async fn process(&mut self, w: &Watcher, plan: Plan) {
        if plan.resnapshot_feeds {
            w.hub.resynced.send_modify(|n| *n += 1);
        }
        let (runs, packs) = plan.split();
        let mut failed = Plan::default();
        for (part, read) in [(runs, true), (packs, false)] {
            let outcome = match read {
                true => self.reread_runs(w, &part).await,
                false => self.reread_packs(w, &part).await,
            };
            match outcome {
                Ok(states) => w.publish(states, &part.feeds),
                Err(e) => {
                    if self.retry_at.is_none() && failed.is_empty() {
                        tracing::warn!(error = %e, "a re-read failed; retrying");
                    }
                    failed.merge(part);
                }
            }
        }
        if failed.is_empty() {
            if self.retry.is_empty() {
                self.retry_at = None;
            }
            return;
        }
        self.retry.merge(failed);
        let backoff = self.retry_at.map_or(Duration::from_millis(100), |(_, b)| {
            (b * 2).min(Duration::from_secs(5))
        });
        self.retry_at = Some((Instant::now() + backoff, backoff));
    }

    /// The access changes a re-read's log shows: applied now, before its rows go out.
    fn apply_log(&mut self, w: &Watcher, log: AccessLog) {
        for change in &log.changes {
            match (change.kind.as_str(), change.user_id) {
                ("member", Some(user)) => w.epochs.user_changed(user),
                _ => w.epochs.everyone_changed(),
            }
        }
        self.applied = Some((log.snapshot, Instant::now()));
    }

    /// The snapshot the log is compared with: the last one applied, unless it is too old for
    /// the log to still hold everything since (then every decision goes stale instead, and
    /// the log is not read).
    fn since(&mut self, w: &Watcher) -> Option<String> {
        match &self.applied {
            Some((snapshot, at)) if at.elapsed() < LOG_HORIZON => Some(snapshot.clone()),
            _ => {
                w.epochs.everyone_changed();
                None
            }
        }
    }

    async fn reread_runs(
        &mut self,
        w: &Watcher,
        plan: &Plan,
    ) -> Result<Vec<Arc<State>>, sqlx::Error> {
        let mut states = Vec::new();
        if !plan.runs.is_empty() || !plan.counted_runs.is_empty() {
            let ids: Vec<i64> = plan.runs.union(&plan.counted_runs).copied().collect();
            let since = self.since(w);
            let started = Instant::now();
            let (rows, log) =
                bounded(store::runs_with_access_log(&w.pool, &ids, since.as_deref())).await?;
            w.metrics.observe_reread(ids.len(), started.elapsed());
            self.apply_log(w, log);
            let mut missing = plan.runs.clone();
            let now = chrono::Utc::now();
            for row in &rows {
                // ops + progress (issue 17): each row read is one observation, made before
                // its state renders the pace.
                if let Ok(run) = row {
                    w.metrics.ops.run_changed(run);
                    w.hub.rates.observe(run, now);
                }
                if store::run_id(row).is_some_and(|id| !plan.runs.contains(&id)) {
                    continue; // counted only
                }
                let Some((state, _)) = State::of_run(row, None, &w.hub.rates) else {
                    continue;
                };
                if let ItemKey::Run(id) = state.key {
                    missing.remove(&id);
                }
                states.push(Arc::new(state));
            }
            let found: BTreeSet<i64> = rows.iter().filter_map(store::run_id).collect();
            let counted_gone = plan.counted_runs.difference(&found);
            for id in missing
                .iter()
                .chain(counted_gone.filter(|id| !plan.runs.contains(id)))
            {
                w.metrics.ops.run_deleted(*id);
                w.hub.rates.forget(*id);
            }
            let gone = missing.into_iter().map(|id| State::gone(ItemKey::Run(id)));
            states.extend(gone.map(Arc::new));
        }
        Ok(states)
    }

    async fn reread_packs(
        &mut self,
        w: &Watcher,
        plan: &Plan,
    ) -> Result<Vec<Arc<State>>, sqlx::Error> {
        // ops (issue 17): the packs that rang, by id (cards, below, are per tenant).
        if !plan.pack_rows.is_empty() {
            let ids: Vec<i64> = plan.pack_rows.iter().copied().collect();
            let rows = bounded(store::packs_by_ids(&w.pool, &ids)).await?;
            let mut missing = plan.pack_rows.clone();
            for (pack, workspace) in rows.iter().flatten() {
                missing.remove(&pack.id);
                w.metrics.ops.pack_changed(pack, *workspace);
            }
            missing
                .into_iter()
                .for_each(|id| w.metrics.ops.pack_deleted(id));
        }
        let mut states = Vec::new();
        if !plan.packs.is_empty() {
            let tenants: Vec<i64> = plan.packs.iter().copied().collect();
            let since = self.since(w);
            let started = Instant::now();
            let (rows, log) = bounded(store::latest_packs_with_access_log(
                &w.pool,
                &tenants,
                since.as_deref(),
            ))
            .await?;
            w.metrics.observe_reread(tenants.len(), started.elapsed());
            self.apply_log(w, log);
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
}

/// Turns a burst of doorbells into a plan of re-reads, applying the access changes it
/// announces at once (streams re-decide promptly; the log read with the rows covers the
/// rest).
pub(crate) fn plan(w: &Watcher, burst: &[PgNotification]) -> Plan {
    let mut plan = Plan::default();
    let mut ignored = 0u64;
    for n in burst {
        let Some(bell) = Doorbell::parse(n.payload()) else {
            ignored += 1;
            continue;
        };
        match (bell.k.as_str(), bell.id, bell.t, bell.u) {
            ("run", Some(id), _, _) => {
                let key = ItemKey::Run(id);
                if w.wanted(&key, &[bell.w, bell.ow]) {
                    plan.runs.insert(id);
                    let feeds = plan.feeds.entry(key).or_default();
                    feeds.extend([bell.w, bell.ow].into_iter().flatten());
                } else {
                    // ops (issue 17): re-read for the metrics, which count every run.
                    plan.counted_runs.insert(id);
                }
            }
            ("pack", pack, Some(tenant), _) => {
                plan.pack_rows.extend(pack); // ops (issue 17)
                                             // The card of the tenant it belongs to, and of the one it left; the
                                             // workspace feeds that show those cards.
                for tenant in [Some(tenant), bell.ot].into_iter().flatten() {
                    let key = ItemKey::Pack { tenant };
                    if w.wanted(&key, &[bell.w, bell.ow]) {
                        plan.packs.insert(tenant);
                        let feeds = plan.feeds.entry(key).or_default();
                        feeds.extend([bell.w, bell.ow].into_iter().flatten());
                    }
                }
            }
            ("member", _, _, Some(user)) => w.epochs.user_changed(user),
            ("tenant", _, Some(tenant), _) => {
                // Moved to another workspace, or deleted: anyone's access may differ.
                w.epochs.everyone_changed();
                if w.hub.items.contains(&ItemKey::Pack { tenant }) {
                    plan.packs.insert(tenant);
                }
            }
            ("access", _, _, _) => w.epochs.everyone_changed(),
            ("runs", _, _, _) => {
                w.metrics.ops.runs_truncated(); // ops (issue 17)
                                                // Truncated: every watched run may be gone, every feed re-reads.
                for key in w.hub.items.keys() {
                    if let ItemKey::Run(id) = key {
                        plan.runs.insert(id);
                    }
                }
                plan.resnapshot_feeds = true;
            }
            ("packs", _, _, _) => {
                w.metrics.ops.packs_truncated(); // ops (issue 17)
                for key in w.hub.items.keys() {
                    if let ItemKey::Pack { tenant } = key {
                        plan.packs.insert(tenant);
                    }
                }
                plan.resnapshot_feeds = true;
            }
            _ => ignored += 1,
        }
    }
    w.metrics.notifications.inc_by(burst.len() as u64);
    w.metrics.notifications_ignored.inc_by(ignored);
    plan
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
