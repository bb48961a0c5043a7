//! Coalesces the access reads of requests that arrive together into one query.
//!
//! Opening a stream needs one read (access and current state together). When thousands of
//! pages (re)connect at once — after a deploy, or a load balancer shifting traffic — one query
//! per stream would cost Postgres far more than the reads themselves. Each read is queued
//! here; a collector takes whatever has queued up, waits for one of a few query slots, and
//! runs a single `unnest`-based query for the whole batch. A lone request goes out at once,
//! so nothing waits on a timer; batches only grow while earlier queries are in flight.
//!
//! Each kind of read ([`Kind`]: runs, review packs) has its own collector and its own slots,
//! so a table that is locked or slow for one kind cannot starve the others: a host migration
//! holding `operation_runs` leaves review-pack requests untouched.
//!
//! Nothing waits without a bound. A request gives up after the [`Deadline`] (the query
//! timeout, which is also the `statement_timeout` of every query connection) and answers
//! 503, however long it queued; a batch whose callers all gave up is not run. While the listener is down the
//! database is known to be unreachable, and a request answers 503 at once instead of
//! queueing.

use crate::http::{database_unavailable, ApiError};
use crate::store::{self, PackForUser, RunForUser};
use crate::watch::ListenerStatus;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Most (user, item) pairs in one query.
const MAX_BATCH: usize = 1024;
/// Queries of one kind in flight at once. Two kinds take 8 of the default pool of 10,
/// leaving room for the watcher's re-reads and the workspace feed's reads.
const SLOTS_PER_KIND: usize = 4;

/// How long a request waits for its read in all: queueing for a slot, acquiring a pool
/// connection and the query. Each query connection carries a `statement_timeout` of the
/// same length, so Postgres cancels (and frees the connection of) a query that would outlive
/// its callers.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub Duration);

impl Deadline {
    fn total(&self) -> Duration {
        // A little beyond the statement timeout, so a query that Postgres cancels reports
        // its own error first.
        self.0 + Duration::from_millis(250)
    }
}

type Reply<T> = oneshot::Sender<Result<Vec<T>, ApiError>>;

struct Job<T> {
    user_id: i64,
    ids: Vec<i64>,
    reply: Reply<T>,
}

/// Handle for queueing reads; cheap to share.
pub struct Batcher {
    runs: mpsc::UnboundedSender<Job<RunForUser>>,
    packs: mpsc::UnboundedSender<Job<PackForUser>>,
    listener: Arc<ListenerStatus>,
    deadline: Deadline,
}

/// One query kind: how to run a batch, and which (user, item) pair a row answers. A new kind
/// gets its own queue and collector in [`Batcher::start`], and so its own slots.
trait Kind: Clone + Send + Sized + 'static {
    fn fetch(
        pool: PgPool,
        users: Vec<i64>,
        ids: Vec<i64>,
    ) -> impl std::future::Future<Output = sqlx::Result<Vec<Self>>> + Send;
    fn key(&self) -> (i64, i64);
}

impl Kind for RunForUser {
    async fn fetch(pool: PgPool, users: Vec<i64>, ids: Vec<i64>) -> sqlx::Result<Vec<Self>> {
        store::runs_for_users(&pool, &users, &ids).await
    }
    fn key(&self) -> (i64, i64) {
        (self.user_id, self.run.id)
    }
}

impl Kind for PackForUser {
    async fn fetch(pool: PgPool, users: Vec<i64>, ids: Vec<i64>) -> sqlx::Result<Vec<Self>> {
        store::packs_for_users(&pool, &users, &ids).await
    }
    fn key(&self) -> (i64, i64) {
        (self.user_id, self.tenant_id)
    }
}

impl Batcher {
    /// Starts the collectors (on the current tokio runtime). `listener` tells whether the
    /// database is reachable at all.
    pub fn start(pool: PgPool, listener: Arc<ListenerStatus>, deadline: Deadline) -> Batcher {
        Batcher {
            runs: spawn_collector(pool.clone(), deadline),
            packs: spawn_collector(pool, deadline),
            listener,
            deadline,
        }
    }

    /// Access and state of these runs for `user_id` (rows of runs that exist).
    pub async fn runs(&self, user_id: i64, ids: &[i64]) -> Result<Vec<RunForUser>, ApiError> {
        self.ask(&self.runs, user_id, ids).await
    }

    /// Access and latest pack of these tenants for `user_id` (rows of tenants that exist).
    pub async fn packs(
        &self,
        user_id: i64,
        tenant_ids: &[i64],
    ) -> Result<Vec<PackForUser>, ApiError> {
        self.ask(&self.packs, user_id, tenant_ids).await
    }

    async fn ask<T>(
        &self,
        queue: &mpsc::UnboundedSender<Job<T>>,
        user_id: i64,
        ids: &[i64],
    ) -> Result<Vec<T>, ApiError> {
        if !self.listener.is_connected() {
            return Err(ApiError::Unavailable);
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            user_id,
            ids: ids.to_vec(),
            reply,
        };
        queue.send(job).map_err(|_| ApiError::Unavailable)?;
        match tokio::time::timeout(self.deadline.total(), answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) | Err(_) => Err(ApiError::Unavailable),
        }
    }
}

fn spawn_collector<T: Kind>(pool: PgPool, deadline: Deadline) -> mpsc::UnboundedSender<Job<T>> {
    let (queue, jobs) = mpsc::unbounded_channel();
    tokio::spawn(collect::<T>(pool, jobs, deadline));
    queue
}

async fn collect<T: Kind>(
    pool: PgPool,
    mut queue: mpsc::UnboundedReceiver<Job<T>>,
    deadline: Deadline,
) {
    let slots = Arc::new(Semaphore::new(SLOTS_PER_KIND));
    while let Some(first) = queue.recv().await {
        // Waiting for a slot is what lets a batch grow under load.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut jobs = vec![first];
        let mut pairs = jobs[0].ids.len();
        while pairs < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => {
                    pairs += job.ids.len();
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
        let pool = pool.clone();
        tokio::spawn(async move {
            run_batch(pool, jobs, deadline).await;
            drop(slot);
        });
    }
}

async fn run_batch<T: Kind>(pool: PgPool, jobs: Vec<Job<T>>, deadline: Deadline) {
    let mut users = Vec::new();
    let mut ids = Vec::new();
    for job in &jobs {
        for id in &job.ids {
            users.push(job.user_id);
            ids.push(*id);
        }
    }
    let fetched = tokio::time::timeout(deadline.total(), T::fetch(pool, users, ids))
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut));
    match fetched {
        Ok(rows) => {
            let found: HashMap<(i64, i64), T> = rows.into_iter().map(|r| (r.key(), r)).collect();
            for job in jobs {
                let mine = job
                    .ids
                    .iter()
                    .filter_map(|id| found.get(&(job.user_id, *id)).cloned())
                    .collect();
                let _ = job.reply.send(Ok(mine));
            }
        }
        Err(e) => {
            let error = if database_unavailable(&e) {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::Unavailable
            } else {
                tracing::error!(error = %e, "database error");
                ApiError::Internal
            };
            for job in jobs {
                let _ = job.reply.send(Err(error.clone()));
            }
        }
    }
}
