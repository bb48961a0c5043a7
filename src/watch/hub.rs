//! The hub: one shared cell per watched item, created by the first subscriber and dropped
//! with the last one.
//!
//! A run or pack cell is a `tokio::sync::watch` channel holding the newest state only. Every
//! subscriber reads the same `Arc`, a slow subscriber simply skips to the newest state when it
//! next looks, and the cell's memory does not grow with subscribers or with updates.
//!
//! Workspace feeds are different: they report changes of *many* runs, so a state cell would
//! drop one run's change when another follows it. They use a bounded `broadcast` channel
//! instead; a subscriber that lags behind it re-reads a fresh snapshot instead of growing a
//! queue.
//!
//! Per-user access "epochs" (also watch channels) wake a user's streams when their
//! memberships change, so each stream re-checks its access.

use crate::model::{PackState, RunState};
use crate::stream::direct::{Delivery, Sink};
use bytes::Bytes;
use slab::Slab;
use std::collections::HashMap;
use std::hash::Hash;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, watch};

/// How many run changes a workspace feed may fall behind before it re-reads a snapshot.
const WORKSPACE_FEED_CAPACITY: usize = 256;

/// A channel kind that can live in a [`Registry`].
pub trait Channel: Send + Sync + 'static {
    type Rx: Send + Sync + 'static;
    fn create() -> Self;
    fn subscribe(&self) -> Self::Rx;
    fn receiver_count(&self) -> usize;
}

/// A state cell: the newest state of one item (None until first read), and the streams
/// that take its updates by direct delivery.
pub struct Cell<T> {
    tx: watch::Sender<Option<Arc<T>>>,
    direct: Mutex<Attached>,
}

/// The directly written streams of a cell and the cell's publish counter, under one lock so
/// that a stream attaching and a state being published see each other in one order.
#[derive(Default)]
struct Attached {
    seq: u64,
    sinks: Slab<Arc<Sink>>,
}

impl<T> Cell<T> {
    fn attached(&self) -> std::sync::MutexGuard<'_, Attached> {
        self.direct.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches a stream's sink and enables direct delivery to it; returns its slot.
    pub fn attach(&self, sink: &Arc<Sink>) -> usize {
        let mut attached = self.attached();
        sink.set_direct(true);
        attached.sinks.insert(Arc::clone(sink))
    }

    pub fn detach(&self, slot: usize) {
        let mut attached = self.attached();
        if let Some(sink) = attached.sinks.try_remove(slot) {
            sink.set_direct(false);
        }
    }

    /// The newest state and its publish counter.
    pub fn current(&self) -> (u64, Option<Arc<T>>) {
        let attached = self.attached();
        (attached.seq, self.tx.borrow().clone())
    }
}

impl<T: Send + Sync + 'static> Channel for Cell<T> {
    type Rx = watch::Receiver<Option<Arc<T>>>;
    fn create() -> Self {
        Cell {
            tx: watch::Sender::new(None),
            direct: Mutex::new(Attached::default()),
        }
    }
    fn subscribe(&self) -> Self::Rx {
        self.tx.subscribe()
    }
    fn receiver_count(&self) -> usize {
        self.tx.receiver_count()
    }
}

impl Channel for broadcast::Sender<Arc<RunState>> {
    type Rx = broadcast::Receiver<Arc<RunState>>;
    fn create() -> Self {
        broadcast::Sender::new(WORKSPACE_FEED_CAPACITY)
    }
    fn subscribe(&self) -> Self::Rx {
        broadcast::Sender::subscribe(self)
    }
    fn receiver_count(&self) -> usize {
        broadcast::Sender::receiver_count(self)
    }
}

impl Channel for watch::Sender<u64> {
    type Rx = watch::Receiver<u64>;
    fn create() -> Self {
        watch::Sender::new(0)
    }
    fn subscribe(&self) -> Self::Rx {
        watch::Sender::subscribe(self)
    }
    fn receiver_count(&self) -> usize {
        watch::Sender::receiver_count(self)
    }
}

/// Channels by key, each alive while it has subscribers.
pub struct Registry<K, C> {
    map: Mutex<HashMap<K, C>>,
}

impl<K: Eq + Hash + Copy + Send + 'static, C: Channel> Registry<K, C> {
    fn new() -> Arc<Self> {
        Arc::new(Registry {
            map: Mutex::new(HashMap::new()),
        })
    }

    pub fn subscribe(self: &Arc<Self>, key: K) -> Subscription<K, C> {
        let rx = self.lock().entry(key).or_insert_with(C::create).subscribe();
        Subscription {
            key,
            rx: Some(rx),
            registry: Arc::clone(self),
        }
    }

    /// Runs `f` on the channel of `key` if anyone watches it.
    pub fn with<R>(&self, key: &K, f: impl FnOnce(&C) -> R) -> Option<R> {
        self.lock().get(key).map(f)
    }

    pub fn contains(&self, key: &K) -> bool {
        self.lock().contains_key(key)
    }

    pub fn keys(&self) -> Vec<K> {
        self.lock().keys().copied().collect()
    }

    pub fn for_each(&self, mut f: impl FnMut(&C)) {
        self.lock().values().for_each(&mut f)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, C>> {
        // A panic while holding this lock cannot leave the map inconsistent (every critical
        // section is a single map operation), so a poisoned lock is still usable.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A subscriber's handle on a channel; dropping the last one removes the channel.
pub struct Subscription<K: Eq + Hash + Copy + Send + 'static, C: Channel> {
    key: K,
    rx: Option<C::Rx>,
    registry: Arc<Registry<K, C>>,
}

impl<K: Eq + Hash + Copy + Send + 'static, C: Channel> Subscription<K, C> {
    pub fn key(&self) -> K {
        self.key
    }
}

impl<K: Eq + Hash + Copy + Send + 'static, C: Channel> Deref for Subscription<K, C> {
    type Target = C::Rx;
    fn deref(&self) -> &C::Rx {
        self.rx.as_ref().expect("receiver lives until drop")
    }
}

impl<K: Eq + Hash + Copy + Send + 'static, C: Channel> DerefMut for Subscription<K, C> {
    fn deref_mut(&mut self) -> &mut C::Rx {
        self.rx.as_mut().expect("receiver lives until drop")
    }
}

impl<K: Eq + Hash + Copy + Send + 'static, C: Channel> Drop for Subscription<K, C> {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut map = self.registry.lock();
        if map.get(&self.key).is_some_and(|c| c.receiver_count() == 0) {
            map.remove(&self.key);
        }
    }
}

pub type RunCells = Registry<i64, Cell<RunState>>;
pub type PackCells = Registry<i64, Cell<PackState>>;
pub type WorkspaceFeeds = Registry<i64, broadcast::Sender<Arc<RunState>>>;
pub type AccessEpochs = Registry<i64, watch::Sender<u64>>;

pub type RunSubscription = Subscription<i64, Cell<RunState>>;
pub type PackSubscription = Subscription<i64, Cell<PackState>>;
pub type WorkspaceSubscription = Subscription<i64, broadcast::Sender<Arc<RunState>>>;
pub type AccessSubscription = Subscription<i64, watch::Sender<u64>>;

/// What decides whether a new state is a change worth sending.
pub trait Versioned {
    type Key: PartialEq;
    fn change_key(&self) -> Self::Key;
}

impl Versioned for RunState {
    type Key = i64;
    fn change_key(&self) -> i64 {
        self.version
    }
}

impl Versioned for PackState {
    type Key = Option<(i64, i64)>;
    fn change_key(&self) -> Option<(i64, i64)> {
        self.key
    }
}

/// A state with an `update` frame for direct delivery.
pub trait Deliverable {
    fn terminal(&self) -> bool;
    /// The `update` frame as an HTTP/1.1 chunk.
    fn update_chunk(&self) -> Bytes;
}

impl Deliverable for RunState {
    fn terminal(&self) -> bool {
        self.terminal
    }
    fn update_chunk(&self) -> Bytes {
        self.frames
            .update_chunk(|| self.event_id(), self.json.get())
    }
}

impl Deliverable for PackState {
    fn terminal(&self) -> bool {
        self.terminal
    }
    fn update_chunk(&self) -> Bytes {
        self.frames
            .update_chunk(|| self.event_id(), self.json.get())
    }
}

/// Publishes a state read by the watcher: replaces the cell's value when it differs, waking
/// its task-driven subscribers. Returns None when nothing changed (a duplicate or forged
/// notification re-reads an unchanged row, and sends nothing), else the delivery to its
/// direct subscribers, for the caller to run outside the hub's locks.
pub fn publish<T: Versioned + Deliverable>(cell: &Cell<T>, state: Arc<T>) -> Option<Delivery> {
    let mut attached = cell.attached();
    let changed = cell.tx.send_if_modified(|current| match current {
        Some(cur) if cur.change_key() == state.change_key() => false,
        _ => {
            *current = Some(Arc::clone(&state));
            true
        }
    });
    if !changed {
        return None;
    }
    attached.seq += 1;
    let sinks: Vec<Arc<Sink>> = attached.sinks.iter().map(|(_, s)| Arc::clone(s)).collect();
    let wire = (!sinks.is_empty() && !state.terminal()).then(|| state.update_chunk());
    Some(Delivery {
        seq: attached.seq,
        wire,
        sinks,
    })
}

/// Publishes a state read when a stream opened, only into a cell nobody has filled yet: once
/// the watcher has published, its value is at least as new as any read that raced with it.
pub fn publish_initial<T>(cell: &Cell<T>, state: Arc<T>) {
    let mut attached = cell.attached();
    let seeded = cell.tx.send_if_modified(|current| {
        if current.is_none() {
            *current = Some(state);
            true
        } else {
            false
        }
    });
    if seeded {
        attached.seq += 1;
    }
}

/// Every cell and channel of the process.
pub struct Hub {
    pub runs: Arc<RunCells>,
    pub packs: Arc<PackCells>,
    pub workspaces: Arc<WorkspaceFeeds>,
    pub access: Arc<AccessEpochs>,
    /// Bumped after the listener reconnected and every cell was re-read; workspace feeds
    /// re-snapshot on it.
    pub resynced: watch::Sender<u64>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            runs: Registry::new(),
            packs: Registry::new(),
            workspaces: Registry::new(),
            access: Registry::new(),
            resynced: watch::Sender::new(0),
        }
    }
}

impl Hub {
    /// Wakes every open stream of `user_id` to re-check its access.
    pub fn access_changed(&self, user_id: i64) {
        self.access
            .with(&user_id, |epoch| epoch.send_modify(|e| *e += 1));
    }

    /// Wakes every stream of every user to re-check access (membership notifications may have
    /// been lost while the listener was down).
    pub fn access_changed_for_all(&self) {
        self.access.for_each(|epoch| epoch.send_modify(|e| *e += 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_live_while_subscribed() {
        let hub = Hub::default();
        let a = hub.runs.subscribe(1);
        let b = hub.runs.subscribe(1);
        assert_eq!(hub.runs.len(), 1);
        drop(a);
        assert!(hub.runs.contains(&1));
        drop(b);
        assert!(hub.runs.is_empty());
    }
}
