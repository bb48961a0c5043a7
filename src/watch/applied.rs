//! What the watcher has applied, so that a read (an access decision, a stream's first state,
//! a feed's snapshot) can tell whether it is at least as new — WAL mode only.
//!
//! Logical replication hands the watcher a transaction once its commit is in the WAL, which
//! is a moment *before* Postgres makes it visible to other sessions. So the watcher can apply
//! a revocation (mark every decision of that user stale) and a decision that starts right
//! after can still read the memberships as they were — and be taken as current. Likewise a
//! stream's first read can miss a change the watcher has already passed over.
//!
//! So every read checks the snapshot it saw (`pg_current_snapshot()`, read in the same
//! statement) against the transactions the watcher applied before the read began
//! ([`Applied::mark`] before, [`Applied::covers`] after): if one of them is not visible in
//! it, the read is repeated. A mark holds the transactions not yet known visible when it was
//! taken: once a transaction is visible to one snapshot it is visible to every later one,
//! so the list is kept short by forgetting what each check found visible — which only marks
//! taken afterwards may rely on (a read that began earlier can have an older snapshot).
//! Without reads for a while, the watcher reads a snapshot itself ([`Applied::needs_prune`]).
//!
//! In NOTIFY mode nothing is recorded and every read covers (a notification arrives only
//! after its transaction is visible).

pub(crate) use crate::model::Snapshot;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Transactions kept before the watcher reads a snapshot itself to forget the visible ones.
const PRUNE_AT: usize = 2_000;

#[derive(Default)]
pub(crate) struct Applied {
    /// The WAL position applied through (0 in NOTIFY mode, or before the first transaction).
    lsn: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Transactions applied so far (their count: the sequence number of the newest).
    seq: u64,
    /// Applied transactions not yet seen visible: (sequence number, 32-bit xid).
    pending: VecDeque<(u64, u32)>,
}

/// What a read must include: every transaction applied up to `seq`, of which `unseen` were
/// not yet known visible. `lsn` is the WAL position applied at that moment, which is the
/// stamp of the states the read returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mark {
    seq: u64,
    unseen: Vec<u32>,
    pub lsn: u64,
}

impl Mark {
    /// Whether the transaction applied as number `seq` came after this mark.
    pub(crate) fn is_before(&self, seq: u64) -> bool {
        seq > self.seq
    }
}

impl Applied {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Each critical section leaves the queue consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Taken before a read (after its access stamp).
    pub(crate) fn mark(&self) -> Mark {
        let inner = self.inner();
        Mark {
            seq: inner.seq,
            unseen: inner.pending.iter().map(|(_, xid)| *xid).collect(),
            lsn: self.lsn.load(Ordering::Acquire),
        }
    }

    /// How many transactions have been applied.
    pub(crate) fn seq(&self) -> u64 {
        self.inner().seq
    }

    /// Records a transaction the watcher is about to apply (before any of its effects);
    /// returns its sequence number.
    pub(crate) fn record(&self, xid: u32) -> u64 {
        let mut inner = self.inner();
        inner.seq += 1;
        let seq = inner.seq;
        inner.pending.push_back((seq, xid));
        seq
    }

    /// The WAL position applied through (after a transaction's effects are published).
    pub(crate) fn advance(&self, lsn: u64) {
        self.lsn.fetch_max(lsn, Ordering::AcqRel);
    }

    /// Whether a read that saw `snapshot` includes every transaction applied up to `mark`;
    /// forgets those it shows visible. A snapshot that does not parse covers nothing.
    pub(crate) fn covers(&self, mark: &Mark, snapshot: &str) -> bool {
        let Some(snapshot) = Snapshot::parse(snapshot) else {
            tracing::warn!(%snapshot, "a snapshot runwire cannot parse");
            return false;
        };
        self.inner()
            .pending
            .retain(|(_, xid)| !snapshot.sees_xid(*xid));
        mark.unseen.iter().all(|xid| snapshot.sees_xid(*xid))
    }

    /// Forgets what `snapshot` shows visible (the watcher's own occasional read).
    pub(crate) fn prune(&self, snapshot: &str) {
        if let Some(snapshot) = Snapshot::parse(snapshot) {
            self.inner()
                .pending
                .retain(|(_, xid)| !snapshot.sees_xid(*xid));
        }
    }

    /// Whether enough is kept that the watcher should read a snapshot to forget some.
    pub(crate) fn needs_prune(&self) -> bool {
        self.inner().pending.len() >= PRUNE_AT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_covers_what_was_applied_before_it_only_when_it_sees_it() {
        let applied = Applied::default();
        applied.record(100);
        let mark = applied.mark();
        applied.record(101);
        assert!(
            !applied.covers(&mark, "100:101:100"),
            "100 is not visible yet"
        );
        assert!(!applied.covers(&mark, "100:102:100,101"));
        assert!(
            applied.covers(&mark, "101:102:101"),
            "100 visible; 101 after the mark"
        );
        // A later mark no longer waits for 100: one snapshot saw it, every later one will.
        let later = applied.mark();
        assert!(
            !applied.covers(&later, "101:102:101"),
            "101 is not visible yet"
        );
        assert!(applied.covers(&later, "102:102:"));
    }

    /// Two reads at once: the newer one sees a transaction and forgets it; the older one,
    /// whose snapshot was taken before that transaction became visible, must not pass.
    #[test]
    fn a_read_that_began_earlier_is_not_covered_by_a_newer_reads_snapshot() {
        let applied = Applied::default();
        applied.record(100);
        let older = applied.mark();
        let newer = applied.mark();
        assert!(applied.covers(&newer, "101:101:"));
        assert!(
            !applied.covers(&older, "100:101:100"),
            "the older read missed 100"
        );
    }
}
