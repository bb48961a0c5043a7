//! Coalesces the access reads of requests that arrive together into one query.
//!
//! Opening a stream needs one read (access facts and current state together); a stream whose
//! decision went stale needs one read of facts. When thousands of pages (re)connect at once —
//! after a deploy, or a load balancer shifting traffic — or thousands of streams re-check at
//! once after the listener reconnected, one query per stream would cost Postgres far more
//! than the reads themselves. Each read is queued here; a collector takes whatever has queued
//! up, waits for one of a few query slots, and runs a single `unnest`-based query for the
//! whole batch. A lone request goes out at once, so nothing waits on a timer; batches only
//! grow while earlier queries are in flight.
//!
//! Each kind of read has its own collector and its own slots, so a table that is locked or
//! slow for one kind cannot starve the others: a host migration holding `operation_runs`
//! leaves review-pack requests and access re-checks untouched.
//!
//! Nothing waits without a bound. A request gives up after the [`Deadline`] (the query
//! timeout, which is also the `statement_timeout` of every query connection) and answers
//! 503, however long it queued; a batch whose callers all gave up is not run. While the
//! change source is down the database is known to be unreachable, and a request answers 503
//! at once instead of queueing.
//!
//! Queues are bounded too: every read is made for a stream or a JSON snapshot holding a
//! stream permit (`stream::limits`), so permits bound them first; a full queue answers 503
//! `overloaded` at once rather than queueing without bound.
//!
//! In WAL mode every read is also checked against what the watcher has applied
//! (`watch::applied`): a read that does not yet see a transaction the watcher applied before
//! it began is run again (within the same deadline), so a decision never misses a revocation
//! the gate already knows of, and a stream's first state never misses a change the watcher
//! already passed over.

use crate::model::{ChangeSource, Owner, Snapshot};
use crate::store::{self, OwnerFacts, PackForUser, RunForUser};
use crate::watch::applied::Applied;
use crate::watch::SourceStatus;
use sqlx::PgPool;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Most (user, item) pairs in one query.
const MAX_BATCH: usize = 1024;
/// Queries of one kind in flight at once. Three kinds take 9 of the default pool of 10; the
/// watcher's re-reads and the workspace feed's reads wait for a connection at worst.
const SLOTS_PER_KIND: usize = 3;

/// Why a read gave no answer: infrastructure, never a verdict (those are
/// [`Denied`](super::rules::Denied)). Cheap to clone: one failed batch answers every caller
/// in it with the same cause.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// The change source is disconnected: the database is known to be unreachable.
    #[error("the database is unreachable (the change source is disconnected)")]
    SourceDown,
    /// The read did not finish within the deadline (queueing, connection and query).
    #[error("the read did not finish within {0:?}")]
    Deadline(Duration),
    /// The read queue is full.
    #[error("too many reads are queued")]
    Overloaded,
    /// The read queue is closed: the process is shutting down.
    #[error("the read queue is closed")]
    Closed,
    /// The database is unreachable or refusing for now (see [`database_unavailable`]).
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] Arc<sqlx::Error>),
    /// Any other database error: a bug here or a schema runwire cannot read.
    #[error("database error: {0}")]
    Database(#[source] Arc<sqlx::Error>),
}

impl ReadError {
    /// Classifies a failed read and logs it: the one place a read failure is logged (once
    /// per query, however many callers share it).
    fn failed(e: sqlx::Error) -> ReadError {
        if database_unavailable(&e) {
            tracing::warn!(error = %e, "database unavailable");
            ReadError::Unavailable(Arc::new(e))
        } else {
            tracing::error!(error = %e, "database error");
            ReadError::Database(Arc::new(e))
        }
    }

    /// Whether retrying later may help (the database is down or slow, or runwire is busy),
    /// as opposed to an error that will repeat.
    pub fn is_transient(&self) -> bool {
        !matches!(self, ReadError::Database(_))
    }
}

/// How long a request waits for its read in all: queueing for a slot, acquiring a pool
/// connection and the query. Each query connection carries a `statement_timeout` of the
/// same length, so Postgres cancels (and frees the connection of) a query that would outlive
/// its callers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline(pub Duration);

impl Deadline {
    fn total(&self) -> Duration {
        // A little beyond the statement timeout, so a query that Postgres cancels reports
        // its own error first.
        self.0 + Duration::from_millis(250)
    }
}

/// What a read answered: the rows for one caller, and where the read stands.
#[derive(Debug)]
pub(crate) struct Read<T> {
    pub rows: Vec<T>,
    pub seen: Seen,
}

/// Where a read stands against the change stream (WAL mode; NOTIFY: nothing): the WAL
/// position it is known to include (the stamp of the states it returns; see `model::Stamp`)
/// and the snapshot it saw (so a replicated change it already included is not taken for a
/// newer state; see `State::is_older_than`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Seen {
    pub at: Option<u64>,
    pub snapshot: Option<Arc<Snapshot>>,
}

type Reply<T> = oneshot::Sender<Result<Read<T>, ReadError>>;

struct Job<T: Kind> {
    user_id: i64,
    asks: Vec<T::Ask>,
    reply: Reply<T>,
}

/// Handle for queueing reads; cheap to share.
pub(crate) struct Batcher {
    runs: mpsc::Sender<Job<RunForUser>>,
    packs: mpsc::Sender<Job<PackForUser>>,
    owners: mpsc::Sender<Job<OwnerFacts>>,
    db: Db,
}

/// What every read needs: the pool, which source runs (and so which SQL), and what the
/// watcher has applied.
#[derive(Clone)]
struct Db {
    pool: PgPool,
    source: Arc<SourceStatus>,
    applied: Arc<Applied>,
    deadline: Deadline,
}

impl Db {
    fn mode(&self) -> ChangeSource {
        self.source.source().unwrap_or(ChangeSource::Notify)
    }

    /// Runs `read` until what it saw (`snapshot` of its result) includes every transaction
    /// the watcher applied before it began; returns the result and, in WAL mode, the WAL
    /// position it includes. The caller bounds the whole with its deadline.
    async fn consistent<T, F, Fut>(
        &self,
        mut read: F,
        snapshot: impl Fn(&T) -> Option<&str>,
    ) -> sqlx::Result<(T, Seen)>
    where
        F: FnMut(ChangeSource) -> Fut,
        Fut: std::future::Future<Output = sqlx::Result<T>>,
    {
        let mode = self.mode();
        if mode == ChangeSource::Notify {
            return Ok((read(mode).await?, Seen::default()));
        }
        let mut wait = Duration::from_millis(1);
        loop {
            let mark = self.applied.mark();
            let session = self.source.session();
            let result = read(mode).await?;
            // A read that overlapped a reconnect may be newer than the new session's first
            // state (its snapshot) or older: neither may seed what that session publishes.
            if self.source.session() != session || !self.source.is_connected() {
                return Err(sqlx::Error::Protocol(
                    "the change source reconnected during the read".into(),
                ));
            }
            let saw = snapshot(&result).map(str::to_owned);
            let covered = saw.as_deref().is_none_or(|s| self.applied.covers(&mark, s));
            if covered {
                let snapshot = saw.as_deref().and_then(Snapshot::parse).map(Arc::new);
                let seen = Seen {
                    at: Some(mark.lsn),
                    snapshot,
                };
                return Ok((result, seen));
            }
            // The watcher is a moment ahead of what this session sees: commits become
            // visible just after they reach the WAL.
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(50));
        }
    }
}

/// One kind of read: what a request asks about, how to run a batch, and which (user, ask)
/// pair a row answers.
trait Kind: Clone + Send + Sized + 'static {
    type Ask: Clone + Eq + Hash + Send + Sync + 'static;
    fn fetch(
        pool: PgPool,
        mode: ChangeSource,
        users: Vec<i64>,
        asks: Vec<Self::Ask>,
    ) -> impl std::future::Future<Output = sqlx::Result<Vec<Self>>> + Send;
    fn key(&self) -> (i64, Self::Ask);
    /// The snapshot the read saw (WAL mode).
    fn snapshot(&self) -> Option<&str>;
}

impl Kind for RunForUser {
    type Ask = i64;
    async fn fetch(
        pool: PgPool,
        mode: ChangeSource,
        users: Vec<i64>,
        ids: Vec<i64>,
    ) -> sqlx::Result<Vec<Self>> {
        store::runs_for_users(&pool, mode, &users, &ids).await
    }
    fn key(&self) -> (i64, i64) {
        (self.user_id, store::run_id(&self.run).unwrap_or_default())
    }
    fn snapshot(&self) -> Option<&str> {
        self.snap.as_deref()
    }
}

impl Kind for PackForUser {
    type Ask = i64;
    async fn fetch(
        pool: PgPool,
        mode: ChangeSource,
        users: Vec<i64>,
        ids: Vec<i64>,
    ) -> sqlx::Result<Vec<Self>> {
        store::packs_for_users(&pool, mode, &users, &ids).await
    }
    fn key(&self) -> (i64, i64) {
        (self.user_id, self.tenant_id)
    }
    fn snapshot(&self) -> Option<&str> {
        self.snap.as_deref()
    }
}

impl Kind for OwnerFacts {
    type Ask = Owner;
    async fn fetch(
        pool: PgPool,
        mode: ChangeSource,
        users: Vec<i64>,
        owners: Vec<Owner>,
    ) -> sqlx::Result<Vec<Self>> {
        store::owner_facts(&pool, mode, &users, &owners).await
    }
    fn key(&self) -> (i64, Owner) {
        (self.user_id, self.owner)
    }
    fn snapshot(&self) -> Option<&str> {
        self.snap.as_deref()
    }
}

impl Batcher {
    /// Starts the collectors (on the current tokio runtime). `source` tells whether the
    /// database is reachable at all, and which change source runs; `applied`, what the
    /// watcher has applied; `queue`, how many requests each kind may hold waiting.
    pub(crate) fn start(
        pool: PgPool,
        source: Arc<SourceStatus>,
        applied: Arc<Applied>,
        deadline: Deadline,
        queue: usize,
    ) -> Batcher {
        let db = Db {
            pool,
            source,
            applied,
            deadline,
        };
        Batcher {
            runs: spawn_collector(db.clone(), queue),
            packs: spawn_collector(db.clone(), queue),
            owners: spawn_collector(db.clone(), queue),
            db,
        }
    }

    // One typed method per kind, alike on purpose: each names its collector and row type;
    // the shared work is `ask`.

    /// Access facts and state of these runs for `user_id` (rows of runs that exist).
    pub(crate) async fn runs(
        &self,
        user_id: i64,
        ids: &[i64],
    ) -> Result<Read<RunForUser>, ReadError> {
        self.ask(&self.runs, user_id, ids).await
    }

    /// Access facts and latest pack of these tenants for `user_id` (tenants that exist).
    pub(crate) async fn packs(
        &self,
        user_id: i64,
        tenant_ids: &[i64],
    ) -> Result<Read<PackForUser>, ReadError> {
        self.ask(&self.packs, user_id, tenant_ids).await
    }

    /// Access facts of `user_id` towards these owners.
    pub(crate) async fn owners(
        &self,
        user_id: i64,
        owners: &[Owner],
    ) -> Result<Read<OwnerFacts>, ReadError> {
        self.ask(&self.owners, user_id, owners).await
    }

    /// What `user_id` may see of a workspace (one query: a feed's decisions are few and
    /// per workspace), under the same rules: 503 at once while the database is known to be
    /// unreachable, and a deadline.
    pub(crate) async fn workspace(
        &self,
        user_id: i64,
        workspace_id: i64,
    ) -> Result<store::WorkspaceView, ReadError> {
        let db = &self.db;
        let read = db.consistent(
            |mode| store::workspace_view(&db.pool, mode, user_id, workspace_id),
            |view| view.snap.as_deref(),
        );
        self.bounded(read).await.map(|(view, _)| view)
    }

    /// A workspace feed's snapshot with its facts (`store::feed_read`), under the same rules.
    pub(crate) async fn feed(
        &self,
        user_id: i64,
        workspace_id: i64,
        recent_limit: i64,
    ) -> Result<(store::FeedRead, Seen), ReadError> {
        let db = &self.db;
        let read = db.consistent(
            |mode| store::feed_read(&db.pool, mode, user_id, workspace_id, recent_limit),
            |read| read.view.snap.as_deref(),
        );
        self.bounded(read).await
    }

    /// The workspace as `user_id` sees it, for dashboards (`store::workspace_info`), under
    /// the same rules.
    pub(crate) async fn workspace_info(
        &self,
        user_id: i64,
        workspace_id: i64,
    ) -> Result<Option<store::WorkspaceInfo>, ReadError> {
        self.bounded(store::workspace_info(&self.db.pool, user_id, workspace_id))
            .await
    }

    /// A read under the rules every read keeps: 503 at once while the database is known to
    /// be unreachable, and the deadline.
    async fn bounded<T>(
        &self,
        read: impl std::future::Future<Output = sqlx::Result<T>>,
    ) -> Result<T, ReadError> {
        if !self.db.source.is_connected() {
            return Err(ReadError::SourceDown);
        }
        match tokio::time::timeout(self.db.deadline.total(), read).await {
            Ok(Ok(read)) => Ok(read),
            Ok(Err(e)) => Err(ReadError::failed(e)),
            Err(_) => Err(ReadError::Deadline(self.db.deadline.0)),
        }
    }

    async fn ask<T: Kind>(
        &self,
        queue: &mpsc::Sender<Job<T>>,
        user_id: i64,
        asks: &[T::Ask],
    ) -> Result<Read<T>, ReadError> {
        if !self.db.source.is_connected() {
            return Err(ReadError::SourceDown);
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            user_id,
            asks: asks.to_vec(),
            reply,
        };
        queue.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ReadError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => ReadError::Closed,
        })?;
        match tokio::time::timeout(self.db.deadline.total(), answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(ReadError::Closed),
            Err(_) => Err(ReadError::Deadline(self.db.deadline.0)),
        }
    }
}

fn spawn_collector<T: Kind>(db: Db, queue: usize) -> mpsc::Sender<Job<T>> {
    let (tx, rx) = mpsc::channel(queue.max(1));
    tokio::spawn(collect::<T>(db, rx));
    tx
}

async fn collect<T: Kind>(db: Db, mut queue: mpsc::Receiver<Job<T>>) {
    let slots = Arc::new(Semaphore::new(SLOTS_PER_KIND));
    while let Some(first) = queue.recv().await {
        // Waiting for a slot is what lets a batch grow under load.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut jobs = vec![first];
        let mut pairs = jobs[0].asks.len();
        while pairs < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => {
                    pairs += job.asks.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        // Callers that gave up (deadline, or the client went away) need no answer.
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let db = db.clone();
        tokio::spawn(async move {
            run_batch(&db, jobs).await;
            drop(slot);
        });
    }
}

async fn run_batch<T: Kind>(db: &Db, jobs: Vec<Job<T>>) {
    let mut users = Vec::new();
    let mut asks = Vec::new();
    for job in &jobs {
        for ask in &job.asks {
            users.push(job.user_id);
            asks.push(ask.clone());
        }
    }
    let read = db.consistent(
        |mode| T::fetch(db.pool.clone(), mode, users.clone(), asks.clone()),
        |rows: &Vec<T>| rows.first().and_then(T::snapshot),
    );
    let fetched = match tokio::time::timeout(db.deadline.total(), read).await {
        Ok(Ok(read)) => Ok(read),
        Ok(Err(e)) => Err(ReadError::failed(e)),
        Err(_) => Err(ReadError::Deadline(db.deadline.0)),
    };
    match fetched {
        Ok((rows, seen)) => {
            let found: HashMap<(i64, T::Ask), T> = rows.into_iter().map(|r| (r.key(), r)).collect();
            for job in jobs {
                let rows = job
                    .asks
                    .iter()
                    .filter_map(|ask| found.get(&(job.user_id, ask.clone())).cloned())
                    .collect();
                let seen = seen.clone();
                let _ = job.reply.send(Ok(Read { rows, seen }));
            }
        }
        Err(error) => {
            for job in jobs {
                let _ = job.reply.send(Err(error.clone()));
            }
        }
    }
}

/// Whether a database error means "unreachable or refusing for now" (503), as opposed to a
/// bug (500).
pub fn database_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // SQLSTATE classes: 08 connection exception, 28 invalid authorization, 53
            // insufficient resources (too many connections, disk full), 57 operator
            // intervention (statement timeout, admin shutdown, database dropped); 3D000 no
            // such database; 55P03 lock not available (lock_timeout).
            ["08", "28", "53", "57"]
                .iter()
                .any(|class| code.starts_with(class))
                || code == "3D000"
                || code == "55P03"
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::postgres::PgPoolOptions;

    /// A real Postgres whose one pool connection the test holds: every batch waits for it,
    /// so requests pile up in the queue, which must refuse beyond its bound at once.
    #[tokio::test]
    async fn a_full_queue_answers_overloaded_at_once() {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(60))
            .connect(&url)
            .await
            .expect("the test database");
        let held = pool.acquire().await.unwrap();
        let batcher = Arc::new(Batcher::start(
            pool.clone(),
            Arc::new(SourceStatus::connected(ChangeSource::Notify)),
            Arc::new(Applied::default()),
            Deadline(Duration::from_secs(60)),
            4,
        ));
        let asks: Vec<_> = (0..40)
            .map(|id| {
                let batcher = Arc::clone(&batcher);
                tokio::spawn(async move { batcher.runs(1, &[id]).await })
            })
            .collect();
        // "At once": refusals do not wait for anything, so half a second is plenty.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (mut refused, mut waiting) = (0, Vec::new());
        for ask in asks {
            if !ask.is_finished() {
                waiting.push(ask);
                continue;
            }
            match ask.await.unwrap() {
                Err(ReadError::Overloaded) => refused += 1,
                other => panic!("an answer while the database is held: {other:?}"),
            }
        }
        // The queue holds 4; three batches in flight and one waiting for a slot take what
        // they drained: at most 4 drains of 4, plus the one.
        assert!(refused >= 40 - 17, "{refused} of 40 refused");
        assert!(!waiting.is_empty(), "nothing was queued");
        // The queued ones are answered once the database is free (the test database has no
        // host tables: an error, but an answer).
        drop(held);
        for ask in waiting {
            let answer = tokio::time::timeout(Duration::from_secs(30), ask).await;
            assert!(
                !matches!(answer, Err(_) | Ok(Ok(Err(ReadError::Overloaded)))),
                "{answer:?}"
            );
        }
    }
}
