//! What runwire streams: the state of a watched item — an operation run, or the review-pack
//! card of a tenant (its latest pack) — and the one place that decides what "active" and
//! "terminal" mean.
//!
//! One type, [`State`], covers both kinds: everything downstream (the hub, the access gate,
//! the streams) needs only the item's key, its owner, its event id, whether it is terminal
//! and its JSON. States are built once per database read and shared (`Arc`) by every
//! subscriber, so their JSON is rendered once here and never per stream.

pub(crate) mod row;
pub(crate) mod snapshot;

pub(crate) use row::{BadColumn, Columns, Decoded, PackRow, RunRow};
pub(crate) use snapshot::Snapshot;

use crate::progress::{timing, Progress, Rates, Timing};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use std::sync::{Arc, OnceLock};

/// Where runwire learns of changes, and so what the host's tables carry: NOTIFY mode has
/// runwire's triggers and `version` columns on them; WAL mode (logical replication) nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeSource {
    Notify,
    Wal,
}

/// Run statuses that keep a run streaming. Everything else, unknown values included, is
/// terminal: the host app stops polling on anything it does not recognise, and so do we.
pub(crate) const ACTIVE_RUN_STATUSES: [&str; 2] = ["queued", "running"];
/// Review-pack statuses that keep a pack streaming; "no pack" is terminal too.
pub(crate) const ACTIVE_PACK_STATUSES: [&str; 2] = ["queued", "generating"];

pub(crate) fn run_is_terminal(status: &str) -> bool {
    !ACTIVE_RUN_STATUSES.contains(&status)
}

pub(crate) fn pack_is_terminal(status: &str) -> bool {
    !ACTIVE_PACK_STATUSES.contains(&status)
}

/// `retry:` hint for a reconnecting client, by the item's age: fresh work changes fast.
pub(crate) fn retry_ms(created_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> u64 {
    match created_at.map(|c| (now - c).num_milliseconds()) {
        Some(age) if age < 10_000 => 1_000,
        Some(age) if age < 60_000 => 5_000,
        _ => 10_000,
    }
}

/// A watched item: a run by id, or the review-pack card of a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum ItemKey {
    Run(i64),
    Pack { tenant: i64 },
}

/// Who an item belongs to, as far as access is concerned. A run belongs to a workspace and
/// maybe a tenant; a review-pack card to its tenant (whose workspace is looked up when access
/// is decided, since a tenant can move).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Owner {
    Run { workspace: i64, tenant: Option<i64> },
    Pack { tenant: i64 },
}

fn ts(t: &Option<DateTime<Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// Where a state stands in its item's history: what its event id and its `version` say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stamp {
    /// NOTIFY mode: the row's `version` column, which runwire's trigger bumps on every change.
    Version(i64),
    /// WAL mode: the WAL position of the commit that made the state — or, for a state read by
    /// a query, a position the read is known to include. The host's tables carry no version
    /// here, so the event id adds a digest of the state: equal states have equal digests
    /// whichever instance, and whichever way (query or replication), produced them.
    Wal(u64),
}

impl Stamp {
    /// The stamp of a row read by a query: its version column (NOTIFY mode) or the WAL
    /// position the read includes (WAL mode, `at`).
    pub(crate) fn of_read(version: Option<i64>, at: Option<u64>) -> Stamp {
        match (version, at) {
            (_, Some(lsn)) => Stamp::Wal(lsn),
            (v, None) => Stamp::Version(v.unwrap_or(0)),
        }
    }

    fn number(self) -> i64 {
        match self {
            Stamp::Version(v) => v,
            Stamp::Wal(lsn) => i64::try_from(lsn).unwrap_or(i64::MAX),
        }
    }
}

/// An item as streamed: what access and delivery need, plus its rendered JSON.
#[derive(Debug)]
pub(crate) struct State {
    pub key: ItemKey,
    /// None once the item no longer exists (a deleted run, a deleted tenant) or cannot be
    /// read: no access decision admits it, and its streams end with `gone` / `unreadable`.
    pub owner: Option<Owner>,
    /// The SSE `id:` of this state; a new id is a new state. NOTIFY mode: a run's version;
    /// a pack card's `<pack id>.<version>` (`0.0` for "no pack"). WAL mode:
    /// `<WAL position>-<digest>`.
    pub event_id: Box<str>,
    /// What makes two states the same state (the 204 rule compares it): the event id in
    /// NOTIFY mode, the digest in WAL mode.
    pub identity: Box<str>,
    pub terminal: bool,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub json: Box<RawValue>,
    /// Set for a row that could not be decoded: which column, and why.
    pub unreadable: Option<BadColumn>,
    /// A review-pack card's pack, if it has one.
    pub pack_id: Option<i64>,
    /// Where the state stands (its id and `version` come from it).
    pub stamp: Stamp,
    /// WAL mode: the transaction that made the state, for a state streamed from the WAL.
    pub xid: Option<u32>,
    /// WAL mode: what the read that made the state saw, for a state read by a query.
    pub seen: Option<Arc<Snapshot>>,
    /// This state's `update` as direct delivery writes it, rendered by the stream layer on
    /// first use and shared by every subscriber (10,000 viewers, one rendering).
    pub update_wire: OnceLock<Bytes>,
    /// The workspace feed's `update` (no id), likewise rendered once.
    pub feed_wire: OnceLock<Bytes>,
}

#[derive(Serialize)]
struct RunJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: i64,
    workspace_id: i64,
    tenant_id: Option<i64>,
    run_type: Option<&'a str>,
    status: Option<&'a str>,
    outcome: Option<&'a str>,
    terminal: bool,
    summary_counts: Option<&'a RawValue>,
    created_at: Option<String>,
    started_at: Option<String>,
    completed_at: Option<String>,
    updated_at: Option<String>,
    // Progress and ETA (crate::progress), part of the state so they are rendered once too.
    elapsed_seconds: Option<f64>,
    progress: Option<Progress>,
    version: i64,
}

#[derive(Serialize)]
struct PackJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    tenant_id: i64,
    terminal: bool,
    pack: Option<PackInner<'a>>,
}

#[derive(Serialize)]
struct PackInner<'a> {
    id: i64,
    status: Option<&'a str>,
    created_at: Option<String>,
    generated_at: Option<String>,
    expires_at: Option<String>,
    updated_at: Option<String>,
    version: i64,
}

/// The ids of a state: its event id and its identity, from its stamp. `json_at` renders the
/// state with a given `version`; in WAL mode the digest is taken of the rendering at version
/// 0, so that it depends on the content only.
fn ids(
    stamp: Stamp,
    notify_id: impl FnOnce() -> String,
    json_at: impl Fn(i64) -> Box<RawValue>,
) -> (Box<str>, Box<str>, Box<RawValue>) {
    match stamp {
        Stamp::Version(v) => {
            let id: Box<str> = notify_id().into();
            (id.clone(), id, json_at(v))
        }
        Stamp::Wal(lsn) => {
            let digest = format!("{:016x}", fnv1a(json_at(0).get().as_bytes()));
            let event_id = format!("{lsn}-{digest}").into();
            (event_id, digest.into(), json_at(stamp.number()))
        }
    }
}

/// FNV-1a, 64 bits: stable across processes, builds and instances (ids must agree).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf29ce484222325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    hash
}

impl State {
    /// A run's state. `observed_rate`: its smoothed pace from `progress::Rates` (None: not
    /// observed moving; the average so far is used).
    pub(crate) fn run(row: &RunRow, stamp: Stamp, observed_rate: Option<f64>) -> Self {
        let terminal = row.status.as_deref().is_none_or(run_is_terminal);
        let Timing {
            elapsed_seconds,
            progress,
        } = timing(row, observed_rate, Utc::now());
        let json_at = |version| {
            render(&RunJson {
                kind: "operation_run",
                id: row.id,
                workspace_id: row.workspace_id,
                tenant_id: row.tenant_id,
                run_type: row.run_type.as_deref(),
                status: row.status.as_deref(),
                outcome: row.outcome.as_deref(),
                terminal,
                summary_counts: row.summary_counts.as_deref(),
                created_at: ts(&row.created_at),
                started_at: ts(&row.started_at),
                completed_at: ts(&row.completed_at),
                updated_at: ts(&row.updated_at),
                elapsed_seconds,
                progress: progress.clone(),
                version,
            })
        };
        let (event_id, identity, json) = ids(stamp, || stamp.number().to_string(), json_at);
        State {
            key: ItemKey::Run(row.id),
            owner: Some(Owner::Run {
                workspace: row.workspace_id,
                tenant: row.tenant_id,
            }),
            event_id,
            identity,
            terminal,
            created_at: row.created_at,
            updated_at: row.updated_at,
            json,
            unreadable: None,
            pack_id: None,
            stamp,
            xid: None,
            seen: None,
            update_wire: OnceLock::new(),
            feed_wire: OnceLock::new(),
        }
    }

    /// The review-pack card of `tenant_id`: its latest pack, or none. In NOTIFY mode the
    /// stamp is the pack's own version (0 without a pack).
    pub(crate) fn pack(tenant_id: i64, pack: Option<&PackRow>, stamp: Stamp) -> Self {
        let terminal = pack.is_none_or(|p| p.status.as_deref().is_none_or(pack_is_terminal));
        let json_at = |version| {
            render(&PackJson {
                kind: "review_pack",
                tenant_id,
                terminal,
                pack: pack.map(|p| PackInner {
                    id: p.id,
                    status: p.status.as_deref(),
                    created_at: ts(&p.created_at),
                    generated_at: ts(&p.generated_at),
                    expires_at: ts(&p.expires_at),
                    updated_at: ts(&p.updated_at),
                    version,
                }),
            })
        };
        let pack_id = pack.map_or(0, |p| p.id);
        let notify_id = || format!("{pack_id}.{}", stamp.number());
        let (event_id, identity, json) = ids(stamp, notify_id, json_at);
        State {
            key: ItemKey::Pack { tenant: tenant_id },
            owner: Some(Owner::Pack { tenant: tenant_id }),
            event_id,
            identity,
            terminal,
            created_at: pack.and_then(|p| p.created_at),
            updated_at: pack.and_then(|p| p.updated_at),
            json,
            unreadable: None,
            pack_id: pack.map(|p| p.id),
            stamp,
            xid: None,
            seen: None,
            update_wire: OnceLock::new(),
            feed_wire: OnceLock::new(),
        }
    }

    /// An item that no longer exists. It has no owner, so no access decision ever admits it:
    /// nothing of it is written, its streams end with `gone`.
    pub(crate) fn gone(key: ItemKey) -> Self {
        Self::ownerless(key, "gone", None)
    }

    /// An item whose row cannot be decoded: like a gone one, nothing of it is written; its
    /// streams end with `unreadable`, and the log names the column.
    pub(crate) fn unreadable(key: ItemKey, bad: BadColumn) -> Self {
        tracing::warn!(item = ?key, column = %format!("{}.{}", bad.table, bad.column), why = %bad.why, "a row runwire cannot read");
        Self::ownerless(key, "unreadable", Some(bad))
    }

    fn ownerless(key: ItemKey, what: &str, unreadable: Option<BadColumn>) -> Self {
        State {
            key,
            owner: None,
            event_id: what.into(),
            identity: what.into(),
            terminal: true,
            created_at: None,
            updated_at: None,
            json: render(&serde_json::json!({ what: true })),
            unreadable,
            pack_id: None,
            stamp: Stamp::Version(0),
            xid: None,
            seen: None,
            update_wire: OnceLock::new(),
            feed_wire: OnceLock::new(),
        }
    }

    /// A run as a query read it, with its owner — also for a row that did not decode, whose
    /// state has none (None: not even its key decoded). `at`: see [`Stamp::of_read`]; its
    /// pace is the one `rates` observed.
    pub(crate) fn of_run(
        run: &Decoded<RunRow>,
        at: Option<u64>,
        rates: &Rates,
    ) -> Option<(State, Owner)> {
        match run {
            Ok(row) => {
                let rate = rates.rate(row.id);
                let state = State::run(row, Stamp::of_read(row.version, at), rate);
                let owner = state.owner?;
                Some((state, owner))
            }
            Err((Some(key), bad)) => {
                let owner = Owner::Run {
                    workspace: key.workspace_id?,
                    tenant: key.tenant_id,
                };
                Some((State::unreadable(ItemKey::Run(key.id), bad.clone()), owner))
            }
            Err((None, bad)) => {
                tracing::warn!(column = %format!("{}.{}", bad.table, bad.column), why = %bad.why, "a row runwire cannot read");
                None
            }
        }
    }

    /// A tenant's review-pack card as a query read it (`pack`: its latest pack, if any).
    pub(crate) fn of_card(tenant: i64, pack: Option<&Decoded<PackRow>>, at: Option<u64>) -> State {
        match pack {
            None => State::pack(tenant, None, Stamp::of_read(None, at)),
            Some(Ok(p)) => State::pack(tenant, Some(p), Stamp::of_read(p.version, at)),
            Some(Err((_, bad))) => State::unreadable(ItemKey::Pack { tenant }, bad.clone()),
        }
    }

    pub(crate) fn is_gone(&self) -> bool {
        self.owner.is_none()
    }

    /// The state, marked with the transaction that made it (WAL mode).
    pub(crate) fn made_by(mut self, xid: u32) -> Self {
        self.xid = Some(xid);
        self
    }

    /// The state, marked with what the read that made it saw.
    pub(crate) fn seen(mut self, snapshot: &Option<Arc<Snapshot>>) -> Self {
        self.seen = snapshot.clone();
        self
    }

    /// Whether `self` is a state `current` already includes, so it must not replace it: a
    /// change the read that made `current` already saw (WAL mode), or an older version of a
    /// run (NOTIFY mode; a re-read that began before a stream's read can finish after it).
    /// Gone and unreadable states are never older: they end streams.
    pub(crate) fn is_older_than(&self, current: &State) -> bool {
        if self.owner.is_none() || current.owner.is_none() {
            return false;
        }
        if let (Some(seen), Some(xid)) = (&current.seen, self.xid) {
            return seen.sees_xid(xid);
        }
        match (self.stamp, current.stamp, self.key) {
            (Stamp::Version(mine), Stamp::Version(theirs), ItemKey::Run(_)) => mine < theirs,
            _ => false,
        }
    }

    /// Whether `self` says something new compared to `other` (a duplicate or forged
    /// notification re-reads an unchanged row, and in WAL mode a read and a replicated change
    /// of the same row version are equal, which sends nothing).
    pub(crate) fn differs_from(&self, other: &State) -> bool {
        self.identity != other.identity || self.owner != other.owner
    }

    /// The run's id, for runs.
    pub(crate) fn run_id(&self) -> Option<i64> {
        match self.key {
            ItemKey::Run(id) => Some(id),
            ItemKey::Pack { .. } => None,
        }
    }

    /// The run's workspace, for runs that exist.
    pub(crate) fn workspace(&self) -> Option<i64> {
        match self.owner {
            Some(Owner::Run { workspace, .. }) => Some(workspace),
            _ => None,
        }
    }
}

fn render<T: Serialize>(value: &T) -> Box<RawValue> {
    // Serialising these plain structs cannot fail; RawValue keeps the text as rendered.
    serde_json::value::to_raw_value(value).expect("state serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_statuses_are_terminal() {
        assert!(!run_is_terminal("queued"));
        assert!(!run_is_terminal("running"));
        assert!(run_is_terminal("completed"));
        assert!(run_is_terminal("Running"));
        assert!(run_is_terminal("paused"));
        assert!(!pack_is_terminal("generating"));
        assert!(pack_is_terminal("ready"));
        assert!(pack_is_terminal("expired"));
        assert!(pack_is_terminal(""));
    }

    #[test]
    fn retry_follows_age() {
        let now = Utc::now();
        let ago = |s| Some(now - chrono::Duration::seconds(s));
        assert_eq!(retry_ms(ago(1), now), 1000);
        assert_eq!(retry_ms(ago(30), now), 5000);
        assert_eq!(retry_ms(ago(600), now), 10000);
        assert_eq!(retry_ms(None, now), 10000);
    }

    #[test]
    fn no_pack_is_terminal_with_null_pack() {
        let s = State::pack(7, None, Stamp::Version(0));
        assert!(s.terminal);
        assert_eq!(&*s.event_id, "0.0");
        assert_eq!(
            s.json.get(),
            r#"{"type":"review_pack","tenant_id":7,"terminal":true,"pack":null}"#
        );
    }

    #[test]
    fn a_gone_item_is_terminal_and_owned_by_nobody() {
        let s = State::gone(ItemKey::Run(3));
        assert!(s.terminal && s.is_gone());
        assert!(s.differs_from(&State::pack(3, None, Stamp::Version(0))));
    }

    #[test]
    fn wal_ids_carry_the_position_and_a_digest_of_the_content() {
        let row = RunRow::running(5, 1, None, r#"{"processed":3}"#);
        let a = State::run(&row, Stamp::Wal(1000), None);
        let b = State::run(&row, Stamp::Wal(2000), None);
        assert_eq!(&*a.event_id, &format!("1000-{}", a.identity));
        assert_eq!(
            a.identity, b.identity,
            "the same content, read at two positions"
        );
        assert!(!a.differs_from(&b));
        assert!(a.json.get().ends_with(r#""version":1000}"#));
        let c = State::run(
            &RunRow::running(5, 1, None, r#"{"processed":4}"#),
            Stamp::Wal(3000),
            None,
        );
        assert!(c.differs_from(&b));
        let none = State::pack(7, None, Stamp::Wal(9));
        assert!(none.event_id.starts_with("9-"));
    }

    #[test]
    fn notify_ids_are_versions() {
        let row = RunRow::running(5, 1, None, "{}");
        assert_eq!(&*State::run(&row, Stamp::Version(6), None).event_id, "6");
    }
}
