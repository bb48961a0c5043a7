//! The source of the workspace operations feed: a snapshot of what the user may see — the
//! active runs, the runs finished in the last 24 hours, and the review-pack card of every
//! tenant whose packs they may view — then an update for every change of any of them
//! (terminal runs, newer packs included). It never ends because runs or packs finish; it ends
//! on lost access, token expiry, lifetime or shutdown. A dashboard needs nothing else: no
//! stream per card, no timer.
//!
//! The feed's channel is a bounded broadcast. A subscriber that falls behind it, that missed
//! changes while the listener reconnected, whose visible tenants changed, or that sees a run
//! it showed move out of sight or disappear, re-reads and sends a fresh snapshot (clients
//! replace their list on every snapshot) instead of queueing without bound.

use super::driver::{End, Source, Step, Stream};
use super::{sse, Deadlines, OpenError, StreamGuard, Streams};
use crate::access::{self, AccessError, Claims, Grant, UserAccess};
use crate::metrics::StreamKind;
use crate::model::{ItemKey, State};
use crate::watch::hub::{Hub, WorkspaceSubscription};
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

pub(crate) struct Feed {
    workspace_id: i64,
    /// What the user may see of the workspace, and since when.
    grant: Grant,
    framing: Framing,
    rx: WorkspaceSubscription,
    resynced: watch::Receiver<u64>,
    /// Run and pack changes received and not yet looked at; at most [`MAX_PENDING`].
    queue: VecDeque<Arc<State>>,
    snapshot_due: bool,
    /// What the last snapshot's read saw (WAL mode): changes it included are not news.
    seen: Option<Arc<crate::model::Snapshot>>,
    /// What the client shows: active runs, the snapshot's recently finished runs and
    /// review-pack cards, as last sent, so duplicate re-reads send nothing and an item that
    /// goes out of sight is noticed.
    sent: Shown,
}

/// Most received changes a feed holds while it cannot look at them (a decision it is
/// waiting for, a database that does not answer). Beyond, it forgets them and sends a fresh
/// snapshot instead, as it does when it falls behind the broadcast.
const MAX_PENDING: usize = 256;

/// Most finished runs a snapshot carries.
const RECENTLY_FINISHED: usize = 50;

#[derive(Serialize)]
struct Snapshot<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    workspace_id: i64,
    runs: Vec<&'a RawValue>,
    recently_finished: Vec<&'a RawValue>,
    review_packs: Vec<&'a RawValue>,
}

/// What a feed shows, registered with the hub (`Hub::show`) so that a change of any of it
/// reaches this feed even after the item left the workspace; unregistered when dropped.
struct Shown {
    hub: Arc<Hub>,
    workspace: i64,
    items: HashMap<ItemKey, Arc<State>>,
}

impl Shown {
    fn get(&self, key: &ItemKey) -> Option<&Arc<State>> {
        self.items.get(key)
    }

    fn insert(&mut self, key: ItemKey, state: Arc<State>) {
        if self.items.insert(key, state).is_none() {
            self.hub.show(self.workspace, key);
        }
    }

    fn remove(&mut self, key: &ItemKey) -> Option<Arc<State>> {
        let removed = self.items.remove(key);
        if removed.is_some() {
            self.hub.unshow(self.workspace, *key);
        }
        removed
    }

    fn shows_pack_elsewhere(&self, card: &State) -> bool {
        self.items
            .iter()
            .any(|(key, shown)| *key != card.key && shown.pack_id == card.pack_id)
    }

    fn replace(&mut self, items: impl Iterator<Item = (ItemKey, Arc<State>)>) {
        self.clear();
        for (key, state) in items {
            self.insert(key, state);
        }
    }

    fn clear(&mut self) {
        for key in self.items.keys() {
            self.hub.unshow(self.workspace, *key);
        }
        self.items.clear();
    }
}

impl Drop for Shown {
    fn drop(&mut self) {
        self.clear();
    }
}

pub(crate) async fn open(
    streams: &Arc<Streams>,
    claims: Claims,
    workspace_id: i64,
) -> Result<Stream, OpenError> {
    let permit = streams.permit(claims.user_id)?;
    let user = streams.epochs.user(claims.user_id);
    // Subscribe before deciding and reading, so no change falls between them.
    let subscribed = Subscribed::new(streams, workspace_id);
    let grant = access::decide_workspace(&streams.batcher, &user, workspace_id).await?;
    let guard = StreamGuard::new(
        Arc::clone(&streams.metrics),
        StreamKind::workspace,
        claims.user_id,
        format!("workspace:{workspace_id}"),
        permit,
    );
    Ok(Stream {
        streams: Arc::clone(streams),
        user,
        deadlines: Deadlines::new(claims.exp, streams.max_lifetime_secs),
        guard,
        retry_ms: FEED_RETRY_MS,
        source: Source::Feed(Box::new(subscribed.feed(grant, Framing::Own))),
    })
}

/// What a feed sends its client to wait before reconnecting.
pub(super) const FEED_RETRY_MS: u64 = 1000;

/// How a feed's events are named on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// Its own stream: `snapshot` and `update` (the state itself).
    Own,
    /// On a `/v1/streams` stream, next to item events: `workspace_snapshot` and
    /// `workspace_update` (`{"type":"workspace_update","workspace_id":…,"state":…}`).
    Shared,
}

/// A feed's subscriptions, taken before its access is decided and its snapshot read, so no
/// change falls between them.
pub(super) struct Subscribed {
    hub: Arc<Hub>,
    workspace_id: i64,
    rx: WorkspaceSubscription,
    resynced: watch::Receiver<u64>,
}

impl Subscribed {
    pub(super) fn new(streams: &Streams, workspace_id: i64) -> Subscribed {
        Subscribed {
            hub: Arc::clone(&streams.hub),
            workspace_id,
            rx: streams.hub.workspaces.subscribe(workspace_id),
            resynced: streams.hub.resynced.subscribe(),
        }
    }

    /// The feed, once the workspace has been decided (`grant`); its snapshot comes first.
    pub(super) fn feed(self, grant: Grant, framing: Framing) -> Feed {
        Feed {
            workspace_id: self.workspace_id,
            grant,
            framing,
            rx: self.rx,
            resynced: self.resynced,
            queue: VecDeque::new(),
            snapshot_due: true,
            seen: None,
            sent: Shown {
                hub: self.hub,
                workspace: self.workspace_id,
                items: HashMap::new(),
            },
        }
    }
}

impl Feed {
    /// What is pending: a decision if the grant is stale; a snapshot if one is due; else the
    /// next received run change the grant admits and the client has not seen.
    pub(super) async fn step(&mut self, streams: &Streams, user: &Arc<UserAccess>) -> Step {
        loop {
            if !self.grant.current() {
                return Step::Decide;
            }
            if self.snapshot_due {
                let body = match self.snapshot(streams, user).await {
                    Ok(body) => body,
                    Err(AccessError::Denied(_)) => return Step::End(End::Forbidden),
                    Err(AccessError::Read(_)) => return Step::Failed,
                };
                if !self.grant.current() {
                    continue; // decide first, then read again
                }
                self.snapshot_due = false;
                let name = match self.framing {
                    Framing::Own => "snapshot",
                    Framing::Shared => "workspace_snapshot",
                };
                return Step::Write(sse::event(name, None, &body), None);
            }
            let Some(item) = self.queue.pop_front() else {
                return Step::Idle;
            };
            if !self.grant.admits(item.owner.as_ref()) {
                if !self.grant.current() {
                    self.queue.push_front(item);
                    return Step::Decide;
                }
                // Out of sight (moved, deleted): if the client shows it, replace its list.
                if self.sent.remove(&item.key).is_some() {
                    self.snapshot_due = true;
                }
                continue;
            }
            // Not news: what the client was sent already includes it — the snapshot's read
            // saw it (WAL), it is an older version (NOTIFY), or it is the same state.
            let news = match self.sent.get(&item.key) {
                None => !item
                    .xid
                    .is_some_and(|xid| self.seen.as_ref().is_some_and(|s| s.sees_xid(xid))),
                Some(sent) => !item.is_older_than(sent) && item.differs_from(sent),
            };
            if !news {
                continue;
            }
            // A pack now on this card, shown on another: it moved, and the card it left is
            // stale (a replication message names only where it went). Replace the list.
            if item.pack_id.is_some() && self.sent.shows_pack_elsewhere(&item) {
                self.snapshot_due = true;
            }
            // Finished runs are forgotten so a long-lived feed does not grow with every run
            // the workspace ever had (a repeated re-read of one would be sent again).
            if item.terminal && item.run_id().is_some() {
                self.sent.remove(&item.key);
            } else {
                self.sent.insert(item.key, Arc::clone(&item));
            }
            let frame = match self.framing {
                Framing::Own => sse::feed_update(&item).clone(),
                Framing::Shared => sse::workspace_update(self.workspace_id, &item),
            };
            return Step::Write(frame, None);
        }
    }

    /// Reads the snapshot and decides afresh, from the same read, what of it the user may
    /// see; renders it and resets what was sent.
    async fn snapshot(
        &mut self,
        streams: &Streams,
        user: &Arc<UserAccess>,
    ) -> Result<String, AccessError> {
        // Read more finished runs than shown: some may be out of sight.
        let limit = RECENTLY_FINISHED as i64 * 4;
        let (grant, read, seen) =
            access::read_feed(&streams.batcher, user, self.workspace_id, limit).await?;
        self.grant = grant;
        self.seen = seen.snapshot.clone();
        let at = seen.at;
        let grant = &self.grant;
        let visible = |state: &Arc<State>| grant.admits(state.owner.as_ref());
        // A run whose row does not decode is left out (its state has no owner, so no grant
        // admits it) and the log names the column: the feed goes on for everything else.
        let states = |rows: &[crate::model::Decoded<crate::model::RunRow>]| -> Vec<Arc<State>> {
            rows.iter()
                .filter_map(|r| State::of_run(r, at, &streams.hub.rates))
                .map(|(state, _)| Arc::new(state.seen(&seen.snapshot)))
                .filter(visible)
                .collect()
        };
        let active = states(&read.active);
        let mut recent = states(&read.recent);
        recent.truncate(RECENTLY_FINISHED);
        let packs: Vec<Arc<State>> = read
            .packs
            .iter()
            .filter(|p| p.exists)
            .map(|p| State::of_card(p.tenant_id, p.pack.as_ref(), at))
            .map(|card| Arc::new(card.seen(&seen.snapshot)))
            .filter(visible)
            .collect();
        // The recently finished too: a late re-read of one of them (NOTIFY mode: the change
        // committed before this read, its notification came after) is then seen to be the
        // same state, not sent again as news.
        let shown = active.iter().chain(&recent).chain(&packs);
        self.sent.replace(shown.map(|s| (s.key, Arc::clone(s))));
        let body = Snapshot {
            kind: "workspace_runs",
            workspace_id: self.workspace_id,
            runs: active.iter().map(|r| r.json.as_ref()).collect(),
            recently_finished: recent.iter().map(|r| r.json.as_ref()).collect(),
            review_packs: packs.iter().map(|p| p.json.as_ref()).collect(),
        };
        Ok(serde_json::to_string(&body).expect("snapshot serialises"))
    }

    /// Whether its decision covers what it may see now (else it asks for one).
    pub(super) fn decided(&self) -> bool {
        self.grant.current()
    }

    /// Decides afresh what the user may see; a different answer re-sends the snapshot.
    pub(super) async fn decide(
        &mut self,
        streams: &Streams,
        user: &Arc<UserAccess>,
    ) -> Result<(), AccessError> {
        let grant = access::decide_workspace(&streams.batcher, user, self.workspace_id).await?;
        if grant.scope != self.grant.scope {
            self.snapshot_due = true;
        }
        self.grant = grant;
        Ok(())
    }

    pub(super) async fn changed(&mut self) -> bool {
        tokio::select! {
            r = self.rx.recv() => match r {
                // A snapshot read after this change includes it.
                Ok(_) if self.snapshot_due => {}
                Ok(_) if self.queue.len() >= MAX_PENDING => {
                    self.queue.clear();
                    self.snapshot_due = true;
                }
                Ok(run) => self.queue.push_back(run),
                Err(RecvError::Lagged(_)) => self.snapshot_due = true,
                Err(RecvError::Closed) => return false,
            },
            r = self.resynced.changed() => match r {
                Ok(()) => self.snapshot_due = true,
                Err(_) => return false,
            },
        }
        true
    }
}
