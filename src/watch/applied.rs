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
//! it, the read is repeated. Once a transaction is visible to one snapshot it is visible to
//! every later one, so each check also forgets the transactions it found visible; what is
//! kept is the few the watcher applied since the last read, bounded by an occasional
//! snapshot the watcher reads itself ([`Applied::needs_prune`]).
//!
//! In NOTIFY mode nothing is recorded and every read covers (a notification arrives only
//! after its transaction is visible).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Transactions kept before the watcher reads a snapshot itself to forget the visible ones.
const PRUNE_AT: usize = 20_000;

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

/// What a read must include: every transaction applied up to `seq`. `lsn` is the WAL
/// position applied at that moment, which is the stamp of the states the read returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    seq: u64,
    pub lsn: u64,
}

impl Mark {
    /// Whether the transaction applied as number `seq` came after this mark.
    pub(crate) fn is_before(&self, seq: u64) -> bool {
        seq > self.seq
    }
}

/// A snapshot as `pg_current_snapshot()::text` writes it: `xmin:xmax:xip,xip,...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    xmax: u32,
    xip: Vec<u32>,
}

impl Snapshot {
    pub(crate) fn parse(text: &str) -> Option<Snapshot> {
        let mut parts = text.trim().split(':');
        let _xmin: u64 = parts.next()?.parse().ok()?;
        let xmax: u64 = parts.next()?.parse().ok()?;
        let xip = match parts.next()? {
            "" => Vec::new(),
            list => list
                .split(',')
                .map(|x| x.parse::<u64>().ok().map(low32))
                .collect::<Option<_>>()?,
        };
        parts.next().is_none().then_some(Snapshot {
            xmax: low32(xmax),
            xip,
        })
    }

    /// Whether a committed transaction is visible in this snapshot (32-bit xids compared as
    /// Postgres does, modulo 2^32: the ones compared here are all recent).
    pub(crate) fn sees_xid(&self, xid: u32) -> bool {
        (xid.wrapping_sub(self.xmax) as i32) < 0 && !self.xip.contains(&xid)
    }
}

fn low32(xid8: u64) -> u32 {
    // Intended truncation: the epoch is dropped, xids compare modulo 2^32.
    (xid8 & 0xffff_ffff) as u32
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
            lsn: self.lsn.load(Ordering::Acquire),
        }
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
    pub(crate) fn covers(&self, mark: Mark, snapshot: &str) -> bool {
        let Some(snapshot) = Snapshot::parse(snapshot) else {
            tracing::warn!(%snapshot, "a snapshot runwire cannot parse");
            return false;
        };
        let mut inner = self.inner();
        inner.pending.retain(|(_, xid)| !snapshot.sees_xid(*xid));
        inner.pending.front().is_none_or(|(seq, _)| *seq > mark.seq)
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
    fn parses_snapshots() {
        let s = Snapshot::parse("100:105:100,103").unwrap();
        assert!(s.sees_xid(99) && s.sees_xid(101) && s.sees_xid(104));
        assert!(!s.sees_xid(100) && !s.sees_xid(103) && !s.sees_xid(105) && !s.sees_xid(200));
        assert_eq!(Snapshot::parse("7:7:").unwrap().xip, Vec::<u32>::new());
        assert!(Snapshot::parse("junk").is_none());
        assert!(Snapshot::parse("1:2:3:4").is_none());
        // Across the 32-bit wrap, with an epoch in the 64-bit form.
        let wrapped = Snapshot::parse("4294967290:4294967302:").unwrap();
        assert!(wrapped.sees_xid(4294967295) && wrapped.sees_xid(5) && !wrapped.sees_xid(6));
    }

    #[test]
    fn a_read_covers_what_was_applied_before_it_only_when_it_sees_it() {
        let applied = Applied::default();
        applied.record(100);
        let mark = applied.mark();
        applied.record(101);
        assert!(
            !applied.covers(mark, "100:101:100"),
            "100 is not visible yet"
        );
        assert!(!applied.covers(mark, "100:102:100,101"));
        assert!(
            applied.covers(mark, "101:102:101"),
            "100 visible; 101 came after the mark"
        );
        // 100 is forgotten: visible to one snapshot, visible to all later ones.
        assert!(applied.covers(mark, "1:2:"));
        assert!(!applied.covers(applied.mark(), "101:102:101"));
        assert!(applied.covers(applied.mark(), "102:102:"));
    }
}
