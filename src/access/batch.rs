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
//! Each kind of read has its own slots, so a table that is locked (runs, say) cannot starve
//! the reads of the others.

use super::rules::AccessError;
use crate::model::Owner;
use crate::store::{self, OwnerFacts, PackForUser, RunForUser};
use sqlx::PgPool;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Most (user, item) pairs in one query.
const MAX_BATCH: usize = 1024;
/// Queries of one kind in flight at once (the pool also serves the watcher's re-reads).
const SLOTS_PER_KIND: usize = 2;

type Reply<T> = oneshot::Sender<Result<Vec<T>, AccessError>>;

struct Job<T: Kind> {
    user_id: i64,
    asks: Vec<T::Ask>,
    reply: Reply<T>,
}

/// Handle for queueing reads; cheap to share.
pub struct Batcher {
    runs: mpsc::UnboundedSender<Job<RunForUser>>,
    packs: mpsc::UnboundedSender<Job<PackForUser>>,
    owners: mpsc::UnboundedSender<Job<OwnerFacts>>,
}

/// One kind of read: what a request asks about, how to run a batch, and which (user, ask)
/// pair a row answers.
trait Kind: Clone + Send + Sized + 'static {
    type Ask: Clone + Eq + Hash + Send + Sync + 'static;
    fn fetch(
        pool: PgPool,
        users: Vec<i64>,
        asks: Vec<Self::Ask>,
    ) -> impl std::future::Future<Output = sqlx::Result<Vec<Self>>> + Send;
    fn key(&self) -> (i64, Self::Ask);
}

impl Kind for RunForUser {
    type Ask = i64;
    async fn fetch(pool: PgPool, users: Vec<i64>, ids: Vec<i64>) -> sqlx::Result<Vec<Self>> {
        store::runs_for_users(&pool, &users, &ids).await
    }
    fn key(&self) -> (i64, i64) {
        (self.user_id, self.run.id)
    }
}

impl Kind for PackForUser {
    type Ask = i64;
    async fn fetch(pool: PgPool, users: Vec<i64>, ids: Vec<i64>) -> sqlx::Result<Vec<Self>> {
        store::packs_for_users(&pool, &users, &ids).await
    }
    fn key(&self) -> (i64, i64) {
        (self.user_id, self.tenant_id)
    }
}

impl Kind for OwnerFacts {
    type Ask = Owner;
    async fn fetch(pool: PgPool, users: Vec<i64>, owners: Vec<Owner>) -> sqlx::Result<Vec<Self>> {
        store::owner_facts(&pool, &users, &owners).await
    }
    fn key(&self) -> (i64, Owner) {
        (self.user_id, self.owner)
    }
}

impl Batcher {
    /// Starts the collectors (on the current tokio runtime).
    pub fn start(pool: PgPool) -> Batcher {
        Batcher {
            runs: spawn_collector(pool.clone()),
            packs: spawn_collector(pool.clone()),
            owners: spawn_collector(pool),
        }
    }

    /// Access facts and state of these runs for `user_id` (rows of runs that exist).
    pub async fn runs(&self, user_id: i64, ids: &[i64]) -> Result<Vec<RunForUser>, AccessError> {
        ask(&self.runs, user_id, ids).await
    }

    /// Access facts and latest pack of these tenants for `user_id` (tenants that exist).
    pub async fn packs(
        &self,
        user_id: i64,
        tenant_ids: &[i64],
    ) -> Result<Vec<PackForUser>, AccessError> {
        ask(&self.packs, user_id, tenant_ids).await
    }

    /// Access facts of `user_id` towards these owners.
    pub async fn owners(
        &self,
        user_id: i64,
        owners: &[Owner],
    ) -> Result<Vec<OwnerFacts>, AccessError> {
        ask(&self.owners, user_id, owners).await
    }
}

fn spawn_collector<T: Kind>(pool: PgPool) -> mpsc::UnboundedSender<Job<T>> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(collect::<T>(
        pool,
        rx,
        Arc::new(Semaphore::new(SLOTS_PER_KIND)),
    ));
    tx
}

async fn ask<T: Kind>(
    queue: &mpsc::UnboundedSender<Job<T>>,
    user_id: i64,
    asks: &[T::Ask],
) -> Result<Vec<T>, AccessError> {
    let (reply, answer) = oneshot::channel();
    let job = Job {
        user_id,
        asks: asks.to_vec(),
        reply,
    };
    queue.send(job).map_err(|_| AccessError::Unavailable)?;
    answer.await.map_err(|_| AccessError::Unavailable)?
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
        let pool = pool.clone();
        tokio::spawn(async move {
            run_batch(pool, jobs).await;
            drop(slot);
        });
    }
}

async fn run_batch<T: Kind>(pool: PgPool, jobs: Vec<Job<T>>) {
    let mut users = Vec::new();
    let mut asks = Vec::new();
    for job in &jobs {
        for ask in &job.asks {
            users.push(job.user_id);
            asks.push(ask.clone());
        }
    }
    match T::fetch(pool, users, asks).await {
        Ok(rows) => {
            let found: HashMap<(i64, T::Ask), T> = rows.into_iter().map(|r| (r.key(), r)).collect();
            for job in jobs {
                let mine = job
                    .asks
                    .iter()
                    .filter_map(|ask| found.get(&(job.user_id, ask.clone())).cloned())
                    .collect();
                let _ = job.reply.send(Ok(mine));
            }
        }
        Err(e) => {
            let error = unavailable_or_internal(&e);
            for job in jobs {
                let _ = job.reply.send(Err(error));
            }
        }
    }
}

/// Maps a database error to what a caller can do about it (logged once per batch).
pub fn unavailable_or_internal(e: &sqlx::Error) -> AccessError {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            tracing::warn!(error = %e, "database unavailable");
            AccessError::Unavailable
        }
        e => {
            tracing::error!(error = %e, "database error");
            AccessError::Internal
        }
    }
}
