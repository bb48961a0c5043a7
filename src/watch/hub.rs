//! The hub: one shared cell per watched item, created by the first subscriber and dropped
//! with the last one.
//!
//! A cell is a `tokio::sync::watch` channel holding the item's newest [`State`] only. Every
//! subscriber reads the same `Arc`, a slow subscriber simply skips to the newest state when it
//! next looks, and the cell's memory does not grow with subscribers or with updates. A cell
//! also lists its *direct* subscribers ([`Direct`]): streams whose sockets the watcher writes
//! an update into itself instead of waking their tasks (see `stream::sink`). The hub knows
//! them only through that trait; it never sees a socket or a byte of HTTP.
//!
//! Workspace feeds are different: they report changes of *many* runs, so a state cell would
//! drop one run's change when another follows it. They use a bounded `broadcast` channel
//! instead; a subscriber that lags behind it re-reads a fresh snapshot instead of growing a
//! queue.
//!
//! Locks, in the only order they are ever taken: a registry's map (only to find, add or
//! remove a cell — never held while a cell is used), then a cell's `attached` (publishing,
//! attaching), then the watch channel's own. A direct subscriber's own lock is taken by
//! deliveries after the cell's is released.

use crate::model::{ItemKey, State};
use crate::progress::Rates;
use slab::Slab;
use std::collections::HashMap;
use std::hash::Hash;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, watch};

/// How many run changes a workspace feed may fall behind before it re-reads a snapshot.
const WORKSPACE_FEED_CAPACITY: usize = 256;
/// Direct subscribers one delivery task writes to: small enough that both cores share a
/// burst, large enough that a 10,000-subscriber update is a few dozen tasks, not 10,000.
const DELIVERY_BATCH: usize = 128;

/// What a delivery did for one direct subscriber.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    Sent,
    /// Not for this subscriber (not taking direct writes, or it has this state already).
    Skipped,
    /// Its task must take over (it blocks, the state is terminal, access must be decided…).
    Wake,
}

/// A stream that takes updates written by the watcher's deliveries.
pub(crate) trait Direct: Send + Sync + 'static {
    /// Writes `state` (the cell's publish number `seq`) if it can without waiting.
    fn offer(&self, state: &Arc<State>, seq: u64) -> Offer;
    /// Wakes the stream's task to take over.
    fn hand_over(&self);
}

/// A channel kind that can live in a [`Registry`].
pub(crate) trait Channel: Send + Sync + 'static {
    type Rx: Send + Sync + 'static;
    fn create() -> Self;
    fn subscribe(&self) -> Self::Rx;
    fn receiver_count(&self) -> usize;
}

/// A state cell: the newest state of one item (None until first read), and its direct
/// subscribers.
pub(crate) struct Cell {
    tx: watch::Sender<Option<Arc<State>>>,
    attached: Mutex<Attached>,
}

/// The direct subscribers of a cell and the cell's publish counter, under one lock so that a
/// stream attaching and a state being published see each other in one order.
#[derive(Default)]
struct Attached {
    seq: u64,
    subscribers: Slab<Arc<dyn Direct>>,
}

impl Cell {
    fn attached(&self) -> std::sync::MutexGuard<'_, Attached> {
        // Every critical section leaves this consistent; a poisoned lock is still usable.
        self.attached.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches a direct subscriber; returns its slot.
    pub(crate) fn attach(&self, subscriber: Arc<dyn Direct>) -> usize {
        self.attached().subscribers.insert(subscriber)
    }

    pub(crate) fn detach(&self, slot: usize) {
        self.attached().subscribers.try_remove(slot);
    }

    /// The newest state and its publish counter.
    pub(crate) fn current(&self) -> (u64, Option<Arc<State>>) {
        let attached = self.attached();
        (attached.seq, self.tx.borrow().clone())
    }

    /// Publishes a state from the watcher: replaces the cell's value when it differs and is
    /// not older (`State::is_older_than`), waking its task-driven subscribers. Returns None
    /// when nothing changed (a duplicate or forged notification re-reads an unchanged row, a
    /// change the stream's own read already included), else the delivery to the direct
    /// subscribers, for the caller to run outside the cell's lock.
    pub(crate) fn publish(&self, state: Arc<State>) -> Option<Delivery> {
        let mut attached = self.attached();
        let changed = self.tx.send_if_modified(|current| match current {
            Some(cur) if !state.differs_from(cur) || state.is_older_than(cur) => false,
            _ => {
                *current = Some(Arc::clone(&state));
                true
            }
        });
        if !changed {
            return None;
        }
        attached.seq += 1;
        let subscribers = attached.subscribers.iter().map(|(_, s)| Arc::clone(s));
        Some(Delivery {
            seq: attached.seq,
            subscribers: subscribers.collect(),
            state,
        })
    }

    /// Publishes a state read when a stream opened, only into a cell nobody has filled yet:
    /// once the watcher has published, its value is at least as new as any read that raced
    /// with it.
    pub(crate) fn publish_initial(&self, state: Arc<State>) {
        let mut attached = self.attached();
        let seeded = self.tx.send_if_modified(|current| {
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
}

impl Channel for Cell {
    type Rx = watch::Receiver<Option<Arc<State>>>;
    fn create() -> Self {
        Cell {
            tx: watch::Sender::new(None),
            attached: Mutex::new(Attached::default()),
        }
    }
    fn subscribe(&self) -> Self::Rx {
        self.tx.subscribe()
    }
    fn receiver_count(&self) -> usize {
        self.tx.receiver_count()
    }
}

impl Channel for broadcast::Sender<Arc<State>> {
    type Rx = broadcast::Receiver<Arc<State>>;
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

/// A new state for the direct subscribers of one cell.
pub(crate) struct Delivery {
    seq: u64,
    state: Arc<State>,
    subscribers: Vec<Arc<dyn Direct>>,
}

impl Delivery {
    /// Offers the state to every direct subscriber, a batch per task, and hands the rest to
    /// their tasks. Returns how many were written and handed over, counted by the tasks.
    pub(crate) fn deliver(self, counted: impl Fn(u64, u64) + Clone + Send + 'static) {
        let Delivery {
            seq,
            state,
            mut subscribers,
        } = self;
        while !subscribers.is_empty() {
            let batch = subscribers.split_off(subscribers.len().saturating_sub(DELIVERY_BATCH));
            let (state, counted) = (Arc::clone(&state), counted.clone());
            tokio::spawn(async move {
                let (mut sent, mut handed_over) = (0, 0);
                for subscriber in batch {
                    match subscriber.offer(&state, seq) {
                        Offer::Sent => sent += 1,
                        Offer::Skipped => {}
                        Offer::Wake => {
                            subscriber.hand_over();
                            handed_over += 1;
                        }
                    }
                }
                counted(sent, handed_over);
            });
        }
    }
}

/// Channels by key, each alive while it has subscribers.
pub(crate) struct Registry<K, C> {
    map: Mutex<HashMap<K, Arc<C>>>,
}

impl<K: Eq + Hash + Copy + Send + 'static, C: Channel> Registry<K, C> {
    fn new() -> Arc<Self> {
        Arc::new(Registry {
            map: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn subscribe(self: &Arc<Self>, key: K) -> Subscription<K, C> {
        let mut map = self.lock();
        let channel = map.entry(key).or_insert_with(|| Arc::new(C::create()));
        let rx = channel.subscribe();
        Subscription {
            key,
            channel: Arc::clone(channel),
            rx: Some(rx),
            registry: Arc::clone(self),
        }
    }

    /// The channel of `key` if anyone watches it.
    pub(crate) fn get(&self, key: &K) -> Option<Arc<C>> {
        self.lock().get(key).cloned()
    }

    pub(crate) fn contains(&self, key: &K) -> bool {
        self.lock().contains_key(key)
    }

    pub(crate) fn keys(&self) -> Vec<K> {
        self.lock().keys().copied().collect()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Arc<C>>> {
        // Every critical section is a single map operation, so a poisoned lock is still
        // consistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A subscriber's handle on a channel; dropping the last one removes the channel.
pub(crate) struct Subscription<K: Eq + Hash + Copy + Send + 'static, C: Channel> {
    key: K,
    channel: Arc<C>,
    rx: Option<C::Rx>,
    registry: Arc<Registry<K, C>>,
}

impl<K: Eq + Hash + Copy + Send + 'static, C: Channel> Subscription<K, C> {
    pub(crate) fn channel(&self) -> &Arc<C> {
        &self.channel
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
        if map
            .get(&self.key)
            .is_some_and(|c| Arc::ptr_eq(c, &self.channel) && c.receiver_count() == 0)
        {
            map.remove(&self.key);
        }
    }
}

pub(crate) type ItemCells = Registry<ItemKey, Cell>;
pub(crate) type WorkspaceFeeds = Registry<i64, broadcast::Sender<Arc<State>>>;
pub(crate) type ItemSubscription = Subscription<ItemKey, Cell>;
pub(crate) type WorkspaceSubscription = Subscription<i64, broadcast::Sender<Arc<State>>>;

/// Every cell and channel of the process.
pub(crate) struct Hub {
    pub items: Arc<ItemCells>,
    pub workspaces: Arc<WorkspaceFeeds>,
    /// Bumped when workspace feeds may have missed changes (the listener reconnected, a
    /// table was truncated); they re-snapshot on it.
    pub resynced: watch::Sender<u64>,
    /// The observed pace of active runs: fed once per published run state by the change
    /// source, looked up by every other read of a run (see `progress`).
    pub rates: Rates,
    /// Which workspace feeds show which items, so that a change reaches every feed that
    /// shows the item, also after the item moved out of the feed's workspace or was
    /// deleted (a replication message does not say where a row was before).
    shown: Mutex<HashMap<ItemKey, HashMap<i64, usize>>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            items: Registry::new(),
            workspaces: Registry::new(),
            rates: Rates::default(),
            resynced: watch::Sender::new(0),
            shown: Mutex::new(HashMap::new()),
        }
    }
}

impl Hub {
    fn shown(&self) -> std::sync::MutexGuard<'_, HashMap<ItemKey, HashMap<i64, usize>>> {
        // Every critical section is a few map operations: a poisoned lock is consistent.
        self.shown.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A feed of `workspace` shows `key` (counted: several feeds of a workspace may).
    pub(crate) fn show(&self, workspace: i64, key: ItemKey) {
        *self
            .shown()
            .entry(key)
            .or_default()
            .entry(workspace)
            .or_default() += 1;
    }

    /// A feed of `workspace` no longer shows `key`.
    pub(crate) fn unshow(&self, workspace: i64, key: ItemKey) {
        let mut shown = self.shown();
        if let Some(feeds) = shown.get_mut(&key) {
            if let Some(n) = feeds.get_mut(&workspace) {
                *n -= 1;
                if *n == 0 {
                    feeds.remove(&workspace);
                }
            }
            if feeds.is_empty() {
                shown.remove(&key);
            }
        }
    }

    /// The workspaces whose feeds show `key`.
    pub(crate) fn shown_in(&self, key: &ItemKey) -> Vec<i64> {
        self.shown()
            .get(key)
            .map(|feeds| feeds.keys().copied().collect())
            .unwrap_or_default()
    }

    pub(crate) fn is_shown(&self, key: &ItemKey) -> bool {
        self.shown().contains_key(key)
    }

    /// The tenants whose watched review-pack card shows pack `pack`.
    pub(crate) fn cards_showing(&self, pack: i64) -> Vec<i64> {
        let keys = self.items.keys();
        keys.into_iter()
            .filter_map(|key| match key {
                ItemKey::Pack { tenant } => {
                    let state = self.items.get(&key)?.current().1?;
                    (state.pack_id == Some(pack)).then_some(tenant)
                }
                ItemKey::Run(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_live_while_subscribed() {
        let hub = Hub::default();
        let a = hub.items.subscribe(ItemKey::Run(1));
        let b = hub.items.subscribe(ItemKey::Run(1));
        assert_eq!(hub.items.len(), 1);
        drop(a);
        assert!(hub.items.contains(&ItemKey::Run(1)));
        drop(b);
        assert!(hub.items.is_empty());
    }

    #[test]
    fn shown_items_are_counted_per_workspace() {
        let hub = Hub::default();
        let run = ItemKey::Run(1);
        hub.show(5, run);
        hub.show(5, run);
        hub.show(6, run);
        hub.unshow(5, run);
        let mut feeds = hub.shown_in(&run);
        feeds.sort_unstable();
        assert_eq!(feeds, vec![5, 6]);
        hub.unshow(5, run);
        hub.unshow(6, run);
        assert!(!hub.is_shown(&run));
    }

    #[test]
    fn publishing_sends_only_changes() {
        let cell = Cell::create();
        let rx = cell.subscribe();
        cell.publish_initial(Arc::new(State::pack(
            1,
            None,
            crate::model::Stamp::Version(0),
        )));
        assert_eq!(cell.current().0, 1);
        assert!(cell
            .publish(Arc::new(State::pack(
                1,
                None,
                crate::model::Stamp::Version(0)
            )))
            .is_none());
        assert!(cell
            .publish(Arc::new(State::gone(ItemKey::Pack { tenant: 1 })))
            .is_some());
        assert_eq!(cell.current().0, 2);
        assert!(rx.borrow().as_ref().unwrap().is_gone());
    }
}
