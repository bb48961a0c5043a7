//! Coalesces the access reads of requests that arrive together into one query.
//!
//! Opening a stream needs one read (access and current state together). When thousands of
//! pages (re)connect at once — after a deploy, or a load balancer shifting traffic — one query
//! per stream would cost Postgres far more than the reads themselves. Each read is queued
//! here; a collector takes whatever has queued up, waits for one of a few query slots, and
//! runs a single `unnest`-based query for the whole batch. A lone request goes out at once,
//! so nothing waits on a timer; batches only grow while earlier queries are in flight.

use crate::http::ApiError;
use crate::store::{self, PackForUser, RunForUser};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Most (user, item) pairs in one query.
const MAX_BATCH: usize = 1024;
/// Queries in flight at once (the pool also serves the watcher's re-reads).
const SLOTS: usize = 4;

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
}

/// One query kind: how to run a batch, and which (user, item) pair a row answers.
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
    /// Starts the collectors (on the current tokio runtime).
    pub fn start(pool: PgPool) -> Batcher {
        let slots = Arc::new(Semaphore::new(SLOTS));
        let (runs, run_rx) = mpsc::unbounded_channel();
        let (packs, pack_rx) = mpsc::unbounded_channel();
        tokio::spawn(collect::<RunForUser>(
            pool.clone(),
            run_rx,
            Arc::clone(&slots),
        ));
        tokio::spawn(collect::<PackForUser>(pool, pack_rx, slots));
        Batcher { runs, packs }
    }

    /// Access and state of these runs for `user_id` (rows of runs that exist).
    pub async fn runs(&self, user_id: i64, ids: &[i64]) -> Result<Vec<RunForUser>, ApiError> {
        ask(&self.runs, user_id, ids).await
    }

    /// Access and latest pack of these tenants for `user_id` (rows of tenants that exist).
    pub async fn packs(
        &self,
        user_id: i64,
        tenant_ids: &[i64],
    ) -> Result<Vec<PackForUser>, ApiError> {
        ask(&self.packs, user_id, tenant_ids).await
    }
}

async fn ask<T>(
    queue: &mpsc::UnboundedSender<Job<T>>,
    user_id: i64,
    ids: &[i64],
) -> Result<Vec<T>, ApiError> {
    let (reply, answer) = oneshot::channel();
    let job = Job {
        user_id,
        ids: ids.to_vec(),
        reply,
    };
    queue.send(job).map_err(|_| ApiError::Unavailable)?;
    answer.await.map_err(|_| ApiError::Unavailable)?
}

async fn collect<T: Kind>(
    pool: PgPool,
    mut queue: mpsc::UnboundedReceiver<Job<T>>,
    slots: Arc<Semaphore>,
) {
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
        let pool = pool.clone();
        tokio::spawn(async move {
            run_batch(pool, jobs).await;
            drop(slot);
        });
    }
}

async fn run_batch<T: Kind>(pool: PgPool, jobs: Vec<Job<T>>) {
    let mut users = Vec::new();
    let mut ids = Vec::new();
    for job in &jobs {
        for id in &job.ids {
            users.push(job.user_id);
            ids.push(*id);
        }
    }
    match T::fetch(pool, users, ids).await {
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
            let unavailable = matches!(
                e,
                sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed
            );
            if unavailable {
                tracing::warn!(error = %e, "database unavailable");
            } else {
                tracing::error!(error = %e, "database error");
            }
            for job in jobs {
                let error = if unavailable {
                    ApiError::Unavailable
                } else {
                    ApiError::Internal
                };
                let _ = job.reply.send(Err(error));
            }
        }
    }
}
