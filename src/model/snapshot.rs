//! What a read saw: a Postgres snapshot, as `pg_current_snapshot()::text` writes it. A state
//! read with it carries it, so a replicated change that the read already included is not
//! taken for a newer state (see `State::is_older_than`).

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
}
