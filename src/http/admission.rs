//! Admission: which connections may hold the connection cap's slots.
//!
//! The cap protects file descriptors; this keeps it from becoming a way to lock users out.
//! A connection is *unauthenticated* until a request on it presents credentials the auth
//! path accepts ([`Connection::authenticated`], called by the auth extractor through the
//! handle every request carries in its extensions, on the front's stream path and on
//! hyper's alike). Until then it is on probation:
//!
//! * it is closed once `--auth-timeout-secs` (and up to half as long again, at random, so a
//!   flood's connections opened together do not all reconnect together) have passed since
//!   it was accepted, whatever moves on it (HTTP/2 PINGs and SETTINGS keep no connection alive here), while public
//!   paths (`/healthz`, the dashboard, static files) are served to it meanwhile. One sweep
//!   a tenth of a second finds them, oldest first, so no connection carries a timer of its
//!   own for this (a stream keeps its connection's future for hours);
//! * when the cap is full, a new connection evicts an unauthenticated one instead of being
//!   refused: the oldest of the peer address that holds the most unauthenticated
//!   connections. So only authenticated connections can fill the cap, and a flood from a
//!   few addresses evicts its own connections, not a client's that has just connected from
//!   elsewhere and is about to authenticate. Only when every slot is authenticated is a new
//!   connection refused.
//!
//! Behind a reverse proxy every client has the proxy's address, so the per-peer choice
//! degenerates to "the oldest unauthenticated connection" (docs/operations.md says what to
//! configure there).
//!
//! It must not read or write a byte: it only counts and decides; the front acts.

use crate::metrics::Metrics;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How often unauthenticated connections are checked against the auth timeout.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

const UNAUTHENTICATED: u8 = 0;
const AUTHENTICATED: u8 = 1;
/// Out of time: the connection is being closed (counted in `Table::closing` until it is).
const CLOSING: u8 = 2;
/// Evicted for a new connection: likewise.
const EVICTED: u8 = 3;
/// Connections beyond the cap at most, while as many that are closing have not closed yet
/// (well inside the file descriptors the default cap leaves free). Admitting does not wait
/// for each closing connection's task to close its socket, so accepting keeps pace with a
/// flood.
const MAX_BEYOND_CAP: usize = 32;

/// The connection cap's slots and who holds them.
pub(crate) struct Admission {
    max: usize,
    auth_timeout: Duration,
    table: Mutex<Table>,
    metrics: Arc<Metrics>,
    /// Notified whenever a closing connection has closed.
    closed: Notify,
}

#[derive(Default)]
struct Table {
    /// Open connections, closing ones included.
    open: usize,
    /// Connections evicted or out of time that have not closed yet. `open - closing` never
    /// exceeds the cap.
    closing: usize,
    next_id: u64,
    /// Unauthenticated connections, oldest (lowest id) first, with when each is out of time.
    probation: BTreeMap<u64, (Instant, Arc<Connection>)>,
    /// The same, per peer address.
    by_peer: HashMap<IpAddr, BTreeSet<u64>>,
    /// (unauthenticated connections, peer): the heaviest peer last.
    weights: BTreeSet<(usize, IpAddr)>,
}

impl Table {
    fn reweigh(&mut self, peer: IpAddr, before: usize, after: usize) {
        if before > 0 {
            self.weights.remove(&(before, peer));
        }
        if after > 0 {
            self.weights.insert((after, peer));
        }
    }

    /// Takes a connection off probation (if it is on it).
    fn remove(&mut self, id: u64, peer: IpAddr) -> Option<Arc<Connection>> {
        let (_, conn) = self.probation.remove(&id)?;
        let of_peer = self.by_peer.get_mut(&peer)?;
        let before = of_peer.len();
        of_peer.remove(&id);
        let after = of_peer.len();
        if after == 0 {
            self.by_peer.remove(&peer);
        }
        self.reweigh(peer, before, after);
        Some(conn)
    }

    /// The oldest unauthenticated connection of the heaviest peer, taken off probation.
    fn victim(&mut self) -> Option<Arc<Connection>> {
        loop {
            let &(_, peer) = self.weights.last()?;
            let id = *self.by_peer.get(&peer)?.first()?;
            let conn = self.remove(id, peer)?;
            // Lost a race with its authentication: look further.
            if conn.close(EVICTED) {
                return Some(conn);
            }
        }
    }
}

/// What became of a new connection.
pub(crate) enum Admitted {
    /// It holds a slot while the [`Slot`] lives (perhaps one an evicted connection is
    /// giving up).
    Open(Slot),
    /// The cap is full and connections on their way out have not closed yet: admit again
    /// once one has ([`Admission::closed`]).
    Wait,
    /// The cap is full of authenticated connections.
    Refused,
}

impl Admission {
    pub(crate) fn new(max: usize, auth_timeout: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Admission {
            max,
            auth_timeout,
            table: Mutex::new(Table::default()),
            metrics,
            closed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Every critical section leaves the table consistent; a poisoned lock is usable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `peer`, or names the one to evict first.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Admitted {
        let mut table = self.lock();
        if table.open >= self.max + MAX_BEYOND_CAP {
            return Admitted::Wait; // (then `closing` > 0: `open - closing` <= max)
        }
        if table.open - table.closing >= self.max {
            let Some(victim) = table.victim() else {
                return match table.closing {
                    0 => Admitted::Refused,
                    _ => Admitted::Wait,
                };
            };
            table.closing += 1;
            self.metrics.connections_evicted.inc();
            victim.closing.notify_one();
        }
        table.open += 1;
        table.next_id += 1;
        let conn = Arc::new(Connection {
            id: table.next_id,
            peer,
            state: AtomicU8::new(UNAUTHENTICATED),
            closing: Notify::new(),
            admission: Arc::clone(self),
        });
        // Spread over half the timeout again: connections a flood opened at once do not all
        // run out, and reconnect, at once.
        let due = Instant::now() + self.auth_timeout.mul_f64(1.0 + rand::random::<f64>() / 2.0);
        table.probation.insert(conn.id, (due, Arc::clone(&conn)));
        let of_peer = table.by_peer.entry(peer).or_default();
        let before = of_peer.len();
        of_peer.insert(conn.id);
        table.reweigh(peer, before, before + 1);
        Admitted::Open(Slot(conn))
    }

    /// Resolves when a closing connection has closed (after [`Admitted::Wait`]).
    pub(crate) async fn closed(&self) {
        self.closed.notified().await
    }

    /// Closes every connection that has not authenticated within the auth timeout.
    pub(crate) fn sweep(&self, now: Instant) {
        let mut table = self.lock();
        while let Some((&id, (due, conn))) = table.probation.first_key_value() {
            if *due > now {
                break;
            }
            let peer = conn.peer;
            let Some(conn) = table.remove(id, peer) else {
                continue;
            };
            if conn.close(CLOSING) {
                table.closing += 1;
                self.metrics.connections_auth_timeouts.inc();
                conn.closing.notify_one();
            }
        }
    }

    /// Sweeps until `shutdown`.
    pub(crate) async fn run_sweeps(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                now = every.tick() => self.sweep(now),
            }
        }
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().open
    }
}

/// One open connection, as requests on it see it (a request extension) and as admission
/// sees it.
pub(crate) struct Connection {
    id: u64,
    peer: IpAddr,
    state: AtomicU8,
    /// Notified when admission closes it.
    closing: Notify,
    admission: Arc<Admission>,
}

impl Connection {
    /// Credentials on this connection were accepted: it keeps its slot for as long as it
    /// lives, and is no longer subject to the auth timeout or eviction.
    pub(crate) fn authenticated(&self) {
        if self
            .state
            .compare_exchange(
                UNAUTHENTICATED,
                AUTHENTICATED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            self.admission.lock().remove(self.id, self.peer);
        }
    }

    /// Whether credentials on this connection were accepted (before admission closed it).
    pub(crate) fn is_authenticated(&self) -> bool {
        self.state.load(Ordering::Acquire) == AUTHENTICATED
    }

    /// Whether admission closed it (evicted, or out of time).
    pub(crate) fn is_closed_by_admission(&self) -> bool {
        matches!(self.state.load(Ordering::Acquire), CLOSING | EVICTED)
    }

    /// Marks an unauthenticated connection as closing (`CLOSING` or `EVICTED`); false if it
    /// has authenticated or is closing already.
    fn close(&self, why: u8) -> bool {
        self.state
            .compare_exchange(UNAUTHENTICATED, why, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Resolves when admission closes this connection: evicted, or out of time.
    pub(crate) async fn closing(&self) {
        self.closing.notified().await
    }
}

/// A connection's hold on a slot; gives it back when dropped.
pub(crate) struct Slot(Arc<Connection>);

impl Slot {
    pub(crate) fn connection(&self) -> &Arc<Connection> {
        &self.0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let admission = &self.0.admission;
        let mut table = admission.lock();
        table.remove(self.0.id, self.0.peer);
        table.open -= 1;
        if matches!(self.0.state.load(Ordering::Acquire), CLOSING | EVICTED) {
            table.closing -= 1;
            drop(table);
            admission.closed.notify_one();
        }
    }
}

/// Marks the connection a request came on as authenticated (see the module comment); the
/// auth extractor calls this once it has accepted the request's credentials.
pub(crate) fn authenticated(extensions: &axum::http::Extensions) {
    if let Some(conn) = extensions.get::<Arc<Connection>>() {
        conn.authenticated();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTH: Duration = Duration::from_secs(5);

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn open(admission: &Arc<Admission>, peer: u8) -> Slot {
        match admission.admit(ip(peer)) {
            Admitted::Open(slot) => slot,
            _ => panic!("not admitted"),
        }
    }

    fn state(slot: &Slot) -> u8 {
        slot.connection().state.load(Ordering::Acquire)
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_heaviest_peers_oldest_unauthenticated_connection_goes() {
        let admission = Admission::new(4, AUTH, Arc::new(Metrics::default()));
        let flood: Vec<Slot> = (0..3).map(|_| open(&admission, 2)).collect();
        let user = open(&admission, 1);
        // The new connection takes the slot the flood's oldest is giving up.
        let second = open(&admission, 1);
        assert_eq!(state(&flood[0]), EVICTED);
        tokio::time::timeout(Duration::from_secs(1), flood[0].connection().closing())
            .await
            .expect("told to close");
        // Counted until it has closed.
        assert_eq!(admission.open(), 5);
        let mut flood = flood.into_iter();
        drop(flood.next());
        assert_eq!(admission.open(), 4);
        // Authenticated connections are never evicted; the flood's are, one by one.
        user.connection().authenticated();
        second.connection().authenticated();
        let rest: Vec<Slot> = flood.collect();
        // (Between peers with as many, the higher address goes first: 127.0.0.2 here.)
        let newer: Vec<Slot> = rest.iter().map(|_| open(&admission, 1)).collect();
        assert!(rest.iter().all(|s| state(s) == EVICTED));
        drop(rest);
        newer.iter().for_each(|s| s.connection().authenticated());
        assert!(matches!(admission.admit(ip(3)), Admitted::Refused));
        assert_eq!(admission.open(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn connections_beyond_the_cap_are_bounded() {
        let admission = Admission::new(1, AUTH, Arc::new(Metrics::default()));
        let mut held = vec![open(&admission, 2)];
        for _ in 0..MAX_BEYOND_CAP {
            held.push(open(&admission, 2));
        }
        assert!(matches!(admission.admit(ip(2)), Admitted::Wait));
        drop(held.remove(0));
        tokio::time::timeout(Duration::from_secs(1), admission.closed())
            .await
            .expect("notified");
        assert!(matches!(admission.admit(ip(2)), Admitted::Open(_)));
    }

    /// Connections out of time that have not closed yet make room like evicted ones; with
    /// none on probation and none closing, a new connection is refused.
    #[tokio::test(start_paused = true)]
    async fn connections_out_of_time_make_room_while_they_close() {
        let admission = Admission::new(2, AUTH, Arc::new(Metrics::default()));
        let a = open(&admission, 2);
        let b = open(&admission, 2);
        // (Out of time by one and a half timeouts at the latest.)
        admission.sweep(Instant::now() + AUTH.mul_f64(1.5));
        assert_eq!(state(&a), CLOSING);
        // Nobody left on probation, but two are on their way out.
        let c = open(&admission, 1);
        let d = open(&admission, 1);
        c.connection().authenticated();
        d.connection().authenticated();
        assert!(matches!(admission.admit(ip(1)), Admitted::Wait));
        drop((a, b));
        assert_eq!(admission.open(), 2);
        assert!(matches!(admission.admit(ip(1)), Admitted::Refused));
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweep_closes_only_connections_unauthenticated_past_the_timeout() {
        let metrics = Arc::new(Metrics::default());
        let admission = Admission::new(8, AUTH, Arc::clone(&metrics));
        let early = open(&admission, 1);
        let authed = open(&admission, 1);
        authed.connection().authenticated();
        tokio::time::advance(Duration::from_secs(3)).await;
        let late = open(&admission, 2);
        admission.sweep(Instant::now() + Duration::from_millis(1999));
        assert_eq!(metrics.connections_auth_timeouts.get(), 0);
        // Out of time between the timeout and half as long again (spread): `early` (opened
        // at 0) is by 7.5 s, `late` (at 3 s) not before 8 s.
        admission.sweep(Instant::now() + Duration::from_millis(4500));
        assert_eq!(metrics.connections_auth_timeouts.get(), 1);
        // Notified, so the connection's task closes it even if it was not waiting yet.
        tokio::time::timeout(Duration::from_secs(1), early.connection().closing())
            .await
            .expect("closing");
        // Out of time, it cannot authenticate any more.
        early.connection().authenticated();
        assert!(!early.connection().is_authenticated());
        assert!(authed.connection().is_authenticated());
        admission.sweep(Instant::now() + Duration::from_secs(60));
        assert_eq!(metrics.connections_auth_timeouts.get(), 2);
        drop(late);
        assert_eq!(admission.open(), 2);
    }
}
