//! The source of item streams: one run, one tenant's review pack, or a set of both on one
//! connection (`/v1/streams`). They end once every item is terminal, or as soon as one is
//! gone.
//!
//! Opening one: subscribe to each item's cell *first*, then read access and state in one
//! (batched) query and seed the cells that are still empty. A change that commits between
//! the subscription and the read reaches the cell through the watcher; versions make the
//! overlap harmless. The read's decisions become the items' first grants.

use super::driver::{Source, Step, Stream};
use super::sink::Sink;
use super::{sse, Deadlines, OpenError, StreamGuard, Streams};
use crate::access::{self, AccessError, Claims, Grant, Scope, UserAccess};
use crate::metrics::StreamKind;
use crate::model::{fnv1a, retry_ms, ItemKey, Owner, State};
use crate::watch::hub::{Cell, Direct, ItemSubscription};
use chrono::Utc;
use futures_util::future::select_all;
use futures_util::FutureExt;
use std::sync::Arc;

/// One watched item of a stream.
struct Entry {
    sub: ItemSubscription,
    /// The decision that covers the item's owner (as it was when decided).
    grant: Grant,
    /// The newest state written, None before its snapshot.
    sent: Option<Arc<State>>,
}

impl Entry {
    /// The cell's newest state and its publish counter. Cells are seeded before a stream
    /// starts, so the value is always there.
    fn newest(&mut self) -> (u64, Arc<State>) {
        self.sub.borrow_and_update();
        let (seq, state) = self.sub.channel().current();
        (seq, state.expect("cell seeded before streaming"))
    }

    fn unsent(&self, newest: &State) -> bool {
        self.sent.as_ref().is_none_or(|s| newest.differs_from(s))
    }
}

/// A sink's place in its cell; detaches (and stops direct delivery) on drop.
struct Attachment {
    cell: Arc<Cell>,
    slot: usize,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.cell.detach(self.slot);
    }
}

pub(crate) struct Items {
    entries: Vec<Entry>,
    /// Direct delivery, for a single item on a socket.
    direct: Option<(Arc<Sink>, Attachment)>,
}

/// What opening an item stream gave.
pub(crate) enum Opened {
    /// The client's `Last-Event-ID` is the final position already: 204, nothing to stream.
    AlreadySeen,
    Stream(Box<Stream>),
}

/// Opens a stream of these runs and tenants' review packs: caps (429/503), then access
/// (404/403 before anything streams, for the whole set), then the cells.
pub(crate) async fn open(
    streams: &Arc<Streams>,
    claims: Claims,
    kind: StreamKind,
    topic: String,
    run_ids: &[i64],
    tenant_ids: &[i64],
    last_event_id: Option<&str>,
) -> Result<Opened, OpenError> {
    let permit = streams.permit(claims.user_id)?;
    let user = streams.epochs.user(claims.user_id);
    let subs = subscribe(streams, run_ids, tenant_ids);
    let mut items = seed(streams, &user, subs, run_ids, tenant_ids).await?;
    let newest = items.newest();
    if newest.iter().all(|s| s.terminal) && already_seen(last_event_id, &position(&newest)) {
        return Ok(Opened::AlreadySeen);
    }
    let guard = StreamGuard::new(
        Arc::clone(&streams.metrics),
        kind,
        claims.user_id,
        topic,
        permit,
    );
    Ok(Opened::Stream(Box::new(Stream {
        streams: Arc::clone(streams),
        user,
        deadlines: Deadlines::new(claims.exp, streams.max_lifetime_secs),
        guard,
        retry_ms: pace(&newest),
        source: Source::Items(items),
    })))
}

/// Subscribes to each item's cell: the first step of opening, before anything is read.
pub(super) fn subscribe(
    streams: &Streams,
    run_ids: &[i64],
    tenant_ids: &[i64],
) -> Vec<ItemSubscription> {
    let keys = run_ids
        .iter()
        .map(|id| ItemKey::Run(*id))
        .chain(tenant_ids.iter().map(|t| ItemKey::Pack { tenant: *t }));
    keys.map(|k| streams.hub.items.subscribe(k)).collect()
}

/// Reads access and state of the subscribed items in one (batched) query, seeds the cells
/// that are still empty, and makes the read's decisions the items' first grants; or the one
/// refusal for the whole set.
pub(super) async fn seed(
    streams: &Streams,
    user: &Arc<UserAccess>,
    subs: Vec<ItemSubscription>,
    run_ids: &[i64],
    tenant_ids: &[i64],
) -> Result<Items, AccessError> {
    let stamp = user.now();
    let rates = &streams.hub.rates;
    let states =
        access::read_items(&streams.batcher, rates, user.user_id, run_ids, tenant_ids).await?;
    let mut entries = Vec::with_capacity(subs.len());
    for (sub, (state, owner)) in subs.into_iter().zip(states) {
        let grant = Grant::new(user, stamp, Scope::Owner(owner));
        sub.channel().publish_initial(Arc::new(state));
        entries.push(Entry {
            sub,
            grant,
            sent: None,
        });
    }
    Ok(Items {
        entries,
        direct: None,
    })
}

/// The `retry:` of a set: the youngest item sets the pace, fresh work changes fast.
pub(super) fn pace(newest: &[Arc<State>]) -> u64 {
    let now = Utc::now();
    newest
        .iter()
        .map(|s| retry_ms(s.created_at, now))
        .min()
        .unwrap_or(10_000)
}

/// Whether a reconnecting client's `Last-Event-ID` is exactly the stream's current position.
/// Anything else — stale, malformed, missing — means "send the state again".
pub fn already_seen(last_event_id: Option<&str>, position: &str) -> bool {
    // A WAL-mode id is `<position>-<digest>`: the digest is what identifies the state.
    last_event_id.is_some_and(|seen| {
        let seen = seen.trim();
        seen == position
            || seen
                .rsplit_once('-')
                .is_some_and(|(_, digest)| digest == position)
    })
}

/// What the 204 rule compares a reconnecting client's `Last-Event-ID` with: the item's
/// identity for a single item (NOTIFY mode: its id; WAL mode: the digest in its id, which
/// every instance computes alike whether it read the state or received it from the WAL), a
/// digest of every item's identity for a set (which is then also the set's id).
fn position(states: &[Arc<State>]) -> String {
    if let [state] = states {
        return state.identity.to_string();
    }
    let mut all = String::new();
    for state in states {
        let (kind, key) = match state.key {
            ItemKey::Run(id) => ('r', id),
            ItemKey::Pack { tenant } => ('p', tenant),
        };
        all.push_str(&format!("{kind}{key}:{};", state.identity));
    }
    format!("{:016x}", fnv1a(all.as_bytes()))
}

impl Items {
    /// A single item already subscribed, seeded and granted (for the driver's tests).
    #[cfg(test)]
    pub(super) fn seeded(sub: ItemSubscription, grant: Grant) -> Items {
        Items {
            entries: vec![Entry {
                sub,
                grant,
                sent: None,
            }],
            direct: None,
        }
    }

    /// Every item's newest state, in the order asked.
    pub(super) fn newest(&mut self) -> Vec<Arc<State>> {
        self.entries.iter_mut().map(|e| e.newest().1).collect()
    }

    fn single(&self) -> bool {
        self.entries.len() == 1
    }

    /// What is pending, in order: the end if an item is gone; a decision if any newest state
    /// is not admitted by its grant; else the next unsent state, as a snapshot (before the
    /// first) or an update; else the end once every item is terminal.
    pub(super) fn step(&mut self) -> Step {
        let newest: Vec<(u64, Arc<State>)> = self.entries.iter_mut().map(Entry::newest).collect();
        if newest.iter().any(|(_, s)| s.unreadable.is_some()) {
            return Step::End(super::driver::End::Unreadable);
        }
        if newest.iter().any(|(_, s)| s.is_gone()) {
            return Step::End(super::driver::End::Gone);
        }
        let admitted = |(e, (_, s)): (&Entry, &(u64, Arc<State>))| e.grant.admits(s.owner.as_ref());
        if !self.entries.iter().zip(&newest).all(admitted) {
            return Step::Decide;
        }
        let next = self
            .entries
            .iter()
            .zip(&newest)
            .position(|(e, (_, s))| e.unsent(s));
        let Some(i) = next else {
            if newest.iter().all(|(_, s)| s.terminal) {
                return Step::End(super::driver::End::Terminal);
            }
            return Step::Idle;
        };
        let (seq, state) = &newest[i];
        let name = if self.entries[i].sent.is_some() {
            "update"
        } else {
            "snapshot"
        };
        self.entries[i].sent = Some(Arc::clone(state));
        if self.single() {
            let frame = sse::event(name, Some(&state.event_id), state.json.get());
            return Step::Write(frame, Some(*seq));
        }
        // A set's id is its whole position, and only once every item has been sent: a
        // client cut off halfway through the snapshots must not claim to have seen them all.
        let sent: Option<Vec<Arc<State>>> = self.entries.iter().map(|e| e.sent.clone()).collect();
        let id = sent.map(|sent| position(&sent));
        Step::Write(sse::event(name, id.as_deref(), state.json.get()), None)
    }

    /// Decides afresh for the owners of the newest states that their grants do not admit.
    pub(super) async fn decide(
        &mut self,
        streams: &Streams,
        user: &Arc<UserAccess>,
    ) -> Result<(), AccessError> {
        let mut owners: Vec<Owner> = Vec::new();
        for entry in &mut self.entries {
            let (_, state) = entry.newest();
            if let Some(owner) = state.owner {
                if !entry.grant.admits(Some(&owner)) && !owners.contains(&owner) {
                    owners.push(owner);
                }
            }
        }
        if owners.is_empty() {
            return Ok(());
        }
        let grants = access::decide(&streams.batcher, user, &owners).await?;
        for entry in &mut self.entries {
            let (_, state) = entry.newest();
            let covering = grants
                .iter()
                .find(|g| state.owner.is_some_and(|o| g.scope == Scope::Owner(o)));
            if let Some(grant) = covering {
                entry.grant = grant.clone();
            }
        }
        if let Some((sink, _)) = &self.direct {
            sink.admit(Some(self.entries[0].grant.clone()));
        }
        Ok(())
    }

    /// Switches a single item on a socket to direct delivery, once its snapshot is written.
    pub(super) fn attach(&mut self, sink: &Arc<Sink>) {
        let [entry] = &mut self.entries[..] else {
            return;
        };
        if entry.sent.as_ref().is_none_or(|s| s.terminal) {
            return;
        }
        sink.admit(Some(entry.grant.clone()));
        let cell = Arc::clone(entry.sub.channel());
        let slot = cell.attach(Arc::clone(sink) as Arc<dyn Direct>);
        self.direct = Some((Arc::clone(sink), Attachment { cell, slot }));
        // Anything published before the attachment is the driver's: it looks again now.
        sink.hand_over();
    }

    /// Resolves when an item may have a new state (false: a cell closed, which only happens
    /// if the hub itself is gone). On direct delivery only the sink's hand-overs wake it.
    pub(super) async fn changed(&mut self) -> bool {
        if let Some((sink, _)) = &self.direct {
            // The driver flushes what the delivery left before it looks again.
            sink.handed_over().await;
            return true;
        }
        if let [only] = &mut self.entries[..] {
            return only.sub.changed().await.is_ok();
        }
        let waits = self.entries.iter_mut().map(|e| e.sub.changed().boxed());
        let (ok, _, _) = select_all(waits).await;
        ok.is_ok()
    }
}
