//! Streams of individual items: one run, one tenant's review pack, or a set of both on one
//! connection (`/v1/streams`). They end once every item is terminal.
//!
//! Opening one: subscribe to each item's cell *first*, then read access and state in one
//! query per kind and seed the cells that are still empty. A change that commits between the
//! subscription and the read reaches the cell through the watcher; versions make the overlap
//! harmless.

use super::direct::{self, Sink};
use super::sse::{self, Frame};
use super::{Deadlines, StreamGuard};
use crate::access::{self, Claims};
use crate::http::{ApiError, AppState};
use crate::metrics::{CloseReason, StreamKind};
use crate::model::{retry_ms, PackState, RunState};
use crate::watch::hub::{AccessSubscription, Deliverable, PackSubscription, RunSubscription};
use crate::watch::publish_initial;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures_util::future::select_all;
use futures_util::FutureExt;
use std::sync::Arc;

/// One watched item of a stream.
pub enum Item {
    Run(RunSubscription),
    Pack(PackSubscription),
}

/// An item's current state.
enum View {
    Run(Arc<RunState>),
    Pack(Arc<PackState>),
}

impl View {
    fn id(&self) -> String {
        match self {
            View::Run(s) => s.event_id(),
            View::Pack(s) => s.event_id(),
        }
    }
    fn terminal(&self) -> bool {
        match self {
            View::Run(s) => s.terminal,
            View::Pack(s) => s.terminal,
        }
    }
    fn created_at(&self) -> Option<DateTime<Utc>> {
        match self {
            View::Run(s) => s.created_at,
            View::Pack(s) => s.created_at,
        }
    }
    fn json(&self) -> &str {
        match self {
            View::Run(s) => s.json.get(),
            View::Pack(s) => s.json.get(),
        }
    }
    /// The `update` frame as an HTTP/1.1 chunk, as direct delivery writes it.
    fn update_chunk(&self) -> bytes::Bytes {
        match self {
            View::Run(s) => s.update_chunk(),
            View::Pack(s) => s.update_chunk(),
        }
    }
    /// The frame for this state: a single item's stream carries the state's own id, a set's
    /// the position of the whole set.
    fn frame(&self, name: &str, position: Option<&str>, single: bool) -> Frame {
        if single {
            return sse::event(name, Some(&self.id()), self.json());
        }
        sse::event(name, position, self.json())
    }
}

impl Item {
    /// The newest state, marking it seen. Cells are seeded before a stream starts, so the
    /// value is always there.
    fn current(&mut self) -> View {
        const SEEDED: &str = "cell seeded before streaming";
        match self {
            Item::Run(rx) => View::Run(rx.borrow_and_update().clone().expect(SEEDED)),
            Item::Pack(rx) => View::Pack(rx.borrow_and_update().clone().expect(SEEDED)),
        }
    }

    fn tag(&self) -> (char, i64) {
        match self {
            Item::Run(s) => ('r', s.key()),
            Item::Pack(s) => ('p', s.key()),
        }
    }

    /// The cell's newest state and its publish counter (None only if the cell is gone).
    fn latest(&self, app: &AppState) -> Option<(u64, View)> {
        match self {
            Item::Run(s) => app
                .hub
                .runs
                .with(&s.key(), |c| c.current())
                .and_then(|(seq, state)| Some((seq, View::Run(state?)))),
            Item::Pack(s) => app
                .hub
                .packs
                .with(&s.key(), |c| c.current())
                .and_then(|(seq, state)| Some((seq, View::Pack(state?)))),
        }
    }

    /// Attaches `sink` to the item's cell for direct delivery until the returned guard drops.
    fn attach(&self, app: &AppState, sink: &Arc<Sink>) -> Attachment {
        let slot = match self {
            Item::Run(s) => app.hub.runs.with(&s.key(), |c| c.attach(sink)),
            Item::Pack(s) => app.hub.packs.with(&s.key(), |c| c.attach(sink)),
        };
        Attachment {
            app: app.clone(),
            tag: self.tag(),
            slot,
        }
    }

    /// Resolves when the cell holds a state this subscriber has not seen.
    async fn changed(&mut self) -> bool {
        match self {
            Item::Run(rx) => rx.changed().await.is_ok(),
            Item::Pack(rx) => rx.changed().await.is_ok(),
        }
    }
}

/// A sink's place in its cell; detaches (and stops direct delivery) on drop.
struct Attachment {
    app: AppState,
    tag: (char, i64),
    slot: Option<usize>,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let Some(slot) = self.slot else { return };
        match self.tag {
            ('r', key) => self.app.hub.runs.with(&key, |c| c.detach(slot)),
            (_, key) => self.app.hub.packs.with(&key, |c| c.detach(slot)),
        };
    }
}

/// Waits for any item to change; returns its index (None if a cell closed, which only
/// happens if the hub itself is gone).
async fn next_change(items: &mut [Item]) -> Option<usize> {
    if let [only] = items {
        return only.changed().await.then_some(0);
    }
    let (ok, index, _) = select_all(items.iter_mut().map(|i| i.changed().boxed())).await;
    ok.then_some(index)
}

/// The SSE `id:` of the stream's current position: the item's own id for a single item (a
/// run's version), a digest of every item's id for a set.
fn position(items: &[Item], views: &[View]) -> String {
    if let [view] = views {
        return view.id();
    }
    // FNV-1a: stable across processes and instances, so any instance can answer 204.
    let mut hash: u64 = 0xcbf29ce484222325;
    for (item, view) in items.iter().zip(views) {
        let (kind, key) = item.tag();
        for b in format!("{kind}{key}:{};", view.id()).bytes() {
            hash ^= b as u64;
            hash = hash.wrapping_mul(0x100000001b3);
        }
    }
    format!("{hash:016x}")
}

/// Subscribes to the cells of these runs and tenants' packs, checks access (404/403 before
/// anything streams) and seeds the cells.
pub async fn subscribe(
    app: &AppState,
    user_id: i64,
    run_ids: &[i64],
    tenant_ids: &[i64],
) -> Result<Vec<Item>, ApiError> {
    let mut items = Vec::with_capacity(run_ids.len() + tenant_ids.len());
    items.extend(
        run_ids
            .iter()
            .map(|id| Item::Run(app.hub.runs.subscribe(*id))),
    );
    items.extend(
        tenant_ids
            .iter()
            .map(|id| Item::Pack(app.hub.packs.subscribe(*id))),
    );
    if !run_ids.is_empty() {
        for row in access::authorize_runs(&app.batcher, user_id, run_ids).await? {
            let state = Arc::new(RunState::from_row(&row));
            app.hub
                .runs
                .with(&row.id, |cell| publish_initial(cell, state));
        }
    }
    if !tenant_ids.is_empty() {
        for (tenant_id, pack) in access::authorize_packs(&app.batcher, user_id, tenant_ids).await? {
            let state = Arc::new(PackState::new(tenant_id, pack.as_ref()));
            app.hub
                .packs
                .with(&tenant_id, |cell| publish_initial(cell, state));
        }
    }
    Ok(items)
}

/// Re-checks access to every item (after the user's memberships changed).
async fn still_allowed(app: &AppState, user_id: i64, items: &[Item]) -> Result<(), ApiError> {
    let (mut runs, mut tenants) = (Vec::new(), Vec::new());
    for item in items {
        match item {
            Item::Run(s) => runs.push(s.key()),
            Item::Pack(s) => tenants.push(s.key()),
        }
    }
    if !runs.is_empty() {
        access::authorize_runs(&app.batcher, user_id, &runs).await?;
    }
    if !tenants.is_empty() {
        access::authorize_packs(&app.batcher, user_id, &tenants).await?;
    }
    Ok(())
}

/// Whether a reconnecting client's `Last-Event-ID` is exactly the stream's current position.
/// Anything else — stale, malformed, missing — means "send the state again".
pub fn already_seen(last_event_id: Option<&str>, position: &str) -> bool {
    last_event_id.is_some_and(|seen| seen.trim() == position)
}

enum Wake {
    Changed(usize),
    AccessChanged,
    KeepAlive,
    TokenExpired,
    Lifetime,
    Shutdown,
    Gone,
}

/// A single-item stream on direct delivery: takes over when a delivery hands it the stream
/// (slow client, terminal state, contention), and does everything besides updates. Returns
/// how it ended; `end` is written here, the body's terminator by the connection front.
#[allow(clippy::too_many_arguments)]
async fn direct_stream(
    app: &AppState,
    user_id: i64,
    item: &Item,
    snapshot: &View,
    sink: &Arc<Sink>,
    deadlines: &Deadlines,
    keepalive: std::time::Duration,
    access_epoch: &mut AccessSubscription,
    guard: &StreamGuard,
) -> CloseReason {
    let _attachment = item.attach(app, sink);
    // The cell may have moved on since the snapshot was read.
    match item.latest(app) {
        Some((seq, latest)) if latest.id() == snapshot.id() => sink.advance(seq),
        _ => sink.hand_over(),
    }
    // One timer for the token's expiry, the lifetime and the keep-alive (the earliest of
    // them): a stream is mostly waiting, and every timer is memory per stream.
    let next_deadline = |last_write: tokio::time::Instant| {
        let mut at = deadlines.token_expires.min(last_write + keepalive);
        if let Some(ends) = deadlines.lifetime_ends {
            at = at.min(ends);
        }
        at
    };
    let shutdown = app.shutdown.cancelled();
    let timer = tokio::time::sleep_until(next_deadline(sink.last_write()));
    tokio::pin!(shutdown, timer);
    let end = |reason: &str| direct::chunk(&sse::end(reason));
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => return CloseReason::shutdown,
            _ = &mut timer => {
                let now = tokio::time::Instant::now();
                if now >= deadlines.token_expires {
                    sink.set_direct(false);
                    let _ = sink.write(&[&end("token_expired")], None).await;
                    return CloseReason::token_expired;
                }
                if deadlines.lifetime_ends.is_some_and(|ends| now >= ends) {
                    return CloseReason::lifetime;
                }
                // Keep-alive only after `keepalive` of silence: events count as traffic.
                if now >= sink.last_write() + keepalive
                    && sink.write(&[&direct::chunk(&sse::keepalive())], None).await.is_err()
                {
                    return CloseReason::client_gone;
                }
                timer.as_mut().reset(next_deadline(sink.last_write()));
            }
            r = access_epoch.changed() => {
                if r.is_err() {
                    return CloseReason::shutdown;
                }
                if let Err(ApiError::Forbidden | ApiError::NotFound) =
                    Box::pin(still_allowed(app, user_id, std::slice::from_ref(item))).await
                {
                    sink.set_direct(false);
                    let _ = sink.write(&[&end("forbidden")], None).await;
                    return CloseReason::forbidden;
                }
            }
            _ = sink.handed_over() => {
                // Finish what a delivery left, then skip to the newest state.
                if sink.flush().await.is_err() {
                    return CloseReason::client_gone;
                }
                let Some((seq, latest)) = item.latest(app) else {
                    return CloseReason::shutdown;
                };
                let terminal = latest.terminal();
                if terminal {
                    sink.set_direct(false);
                }
                match sink.write(&[&latest.update_chunk()], Some(seq)).await {
                    Ok(true) => guard.sent(1),
                    Ok(false) => {}
                    Err(_) => return CloseReason::client_gone,
                }
                if terminal {
                    let _ = sink.write(&[&end("terminal")], None).await;
                    return CloseReason::terminal;
                }
            }
        }
    }
}

/// Answers a stream request for already subscribed and authorised `items`: `204 No Content`
/// when the client already saw the final state (`Last-Event-ID`), the SSE stream otherwise.
#[allow(clippy::too_many_arguments)]
pub fn respond(
    app: &AppState,
    claims: Claims,
    kind: StreamKind,
    topic: String,
    mut items: Vec<Item>,
    last_event_id: Option<&str>,
    guard_permit: super::limits::StreamPermit,
    sink: Option<Arc<Sink>>,
) -> Response {
    let views: Vec<View> = items.iter_mut().map(Item::current).collect();
    let at = position(&items, &views);
    let all_terminal = views.iter().all(View::terminal);
    if all_terminal && already_seen(last_event_id, &at) {
        return StatusCode::NO_CONTENT.into_response();
    }
    // The youngest item sets the pace: fresh work changes fast.
    let now = Utc::now();
    let retry = views
        .iter()
        .map(|v| retry_ms(v.created_at(), now))
        .min()
        .unwrap_or(10_000);

    let app = app.clone();
    let mut guard = StreamGuard::new(
        Arc::clone(&app.metrics),
        kind,
        claims.user_id,
        topic,
        guard_permit,
    );
    let deadlines = Deadlines::new(claims.exp, app.settings.max_stream_lifetime_secs);
    let mut access_epoch = app.hub.access.subscribe(claims.user_id);
    let shutdown = app.shutdown.clone();
    let keepalive = app.keepalive();
    let single = items.len() == 1;
    // Direct delivery for single-item streams served by the connection front (which hands
    // over the socket's sink); sets and hyper-served streams wake their task per change.
    if let Some(sink) = sink.filter(|_| single && !all_terminal) {
        // Its own generator: a stream on direct delivery carries none of the loop below.
        let frames = async_stream::stream! {
            yield sse::retry(retry);
            yield views[0].frame("snapshot", None, true);
            guard.sent(1);
            // Both frames are on the wire (the front writes each before asking for the next):
            // from here on the socket is written through the sink, by deliveries and by
            // this task.
            let reason = direct_stream(
                &app, claims.user_id, &items[0], &views[0], &sink, &deadlines, keepalive,
                &mut access_epoch, &guard,
            )
            .await;
            guard.close(reason);
        };
        return sse::response(frames);
    }

    let frames = async_stream::stream! {
        yield sse::retry(retry);
        let mut views = views;
        for (i, view) in views.iter().enumerate() {
            // Only the last snapshot carries the position: a client cut off halfway through
            // a set must not claim to have seen all of it.
            let id = (i + 1 == views.len()).then_some(at.as_str());
            yield view.frame("snapshot", id, single);
        }
        guard.sent(views.len() as u64);
        let mut done = all_terminal;
        // Long-lived futures are created once, not on every wake-up: a stream may wake
        // thousands of times, and each of these registers with a timer or a shared list.
        let shutdown = shutdown.cancelled();
        let token_expiry = tokio::time::sleep_until(deadlines.token_expires);
        let lifetime = deadlines.lifetime();
        // The keep-alive timer is re-armed lazily from `last_sent` when it fires, not reset on
        // every event: a reset is a timer-wheel operation per event per stream.
        let mut last_sent = tokio::time::Instant::now();
        let idle = tokio::time::sleep(keepalive);
        tokio::pin!(shutdown, token_expiry, lifetime, idle);
        while !done {
            let wake = tokio::select! {
                biased;
                _ = &mut shutdown => Wake::Shutdown,
                _ = &mut token_expiry => Wake::TokenExpired,
                _ = &mut lifetime => Wake::Lifetime,
                r = access_epoch.changed() => if r.is_ok() { Wake::AccessChanged } else { Wake::Gone },
                i = next_change(&mut items) => i.map_or(Wake::Gone, Wake::Changed),
                _ = &mut idle => Wake::KeepAlive,
            };
            match wake {
                Wake::Changed(i) => {
                    views[i] = items[i].current();
                    let at = if single { None } else { Some(position(&items, &views)) };
                    yield views[i].frame("update", at.as_deref(), single);
                    guard.sent(1);
                    done = views.iter().all(View::terminal);
                }
                Wake::KeepAlive => {
                    let due = last_sent + keepalive;
                    if tokio::time::Instant::now() < due {
                        idle.as_mut().reset(due);
                        continue;
                    }
                    yield sse::keepalive();
                    idle.as_mut().reset(tokio::time::Instant::now() + keepalive);
                }
                Wake::AccessChanged => {
                    if let Err(ApiError::Forbidden | ApiError::NotFound) =
                        still_allowed(&app, claims.user_id, &items).await
                    {
                        yield sse::end("forbidden");
                        guard.close(CloseReason::forbidden);
                        return;
                    }
                    continue;
                }
                Wake::TokenExpired => {
                    yield sse::end("token_expired");
                    guard.close(CloseReason::token_expired);
                    return;
                }
                Wake::Lifetime => {
                    guard.close(CloseReason::lifetime);
                    return;
                }
                Wake::Shutdown | Wake::Gone => {
                    guard.close(CloseReason::shutdown);
                    return;
                }
            }
            last_sent = tokio::time::Instant::now();
        }
        yield sse::end("terminal");
        guard.close(CloseReason::terminal);
    };
    sse::response(frames)
}
