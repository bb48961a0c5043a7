//! What runwire streams: the state of a watched item — an operation run, or the review-pack
//! card of a tenant (its latest pack) — and the one place that decides what "active" and
//! "terminal" mean.
//!
//! One type, [`State`], covers both kinds: everything downstream (the hub, the access gate,
//! the streams) needs only the item's key, its owner, its event id, whether it is terminal
//! and its JSON. States are built once per database read and shared (`Arc`) by every
//! subscriber, so their JSON is rendered once here and never per stream.

use crate::progress::{timing, Progress, Timing};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::FromRow;
use std::sync::OnceLock;

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

/// One row of `operation_runs`, as read by runwire.
#[derive(Debug, Clone, FromRow)]
pub(crate) struct RunRow {
    pub id: i64,
    pub workspace_id: i64,
    pub tenant_id: Option<i64>,
    pub run_type: String,
    pub status: String,
    pub outcome: String,
    pub summary_counts: sqlx::types::Json<Box<RawValue>>,
    pub created_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub version: i64,
}

/// The latest review pack of a tenant, if it has one.
#[derive(Debug, Clone, FromRow)]
pub(crate) struct PackRow {
    pub id: i64,
    pub status: String,
    pub created_at: Option<DateTime<Utc>>,
    pub generated_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub version: i64,
}

fn ts(t: &Option<DateTime<Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// An item as streamed: what access and delivery need, plus its rendered JSON.
#[derive(Debug)]
pub(crate) struct State {
    pub key: ItemKey,
    /// None once the item no longer exists (a deleted run, a deleted tenant): its streams
    /// end with `gone`.
    pub owner: Option<Owner>,
    /// The SSE `id:` of this state; a new id is a new state. Runs: the version; packs:
    /// `<pack id>.<version>` (`0.0` for "no pack"), so it changes when a newer pack replaces
    /// the old one.
    pub event_id: Box<str>,
    /// A run's version (0 for packs): lets the workspace feed skip states it already sent.
    pub version: i64,
    pub terminal: bool,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub json: Box<RawValue>,
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
    run_type: &'a str,
    status: &'a str,
    outcome: &'a str,
    terminal: bool,
    summary_counts: &'a RawValue,
    created_at: Option<String>,
    started_at: Option<String>,
    completed_at: Option<String>,
    updated_at: Option<String>,
    version: i64,
    // Progress and ETA (crate::progress), part of the state so they are rendered once too.
    elapsed_seconds: Option<f64>,
    progress: Option<Progress>,
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
    status: &'a str,
    created_at: Option<String>,
    generated_at: Option<String>,
    expires_at: Option<String>,
    updated_at: Option<String>,
    version: i64,
}

impl State {
    /// A run's state. `observed_rate`: its smoothed rate from `progress::Rates` (None: not
    /// observed moving; the average so far is used).
    pub(crate) fn run(row: &RunRow, observed_rate: Option<f64>) -> Self {
        let terminal = run_is_terminal(&row.status);
        let Timing {
            elapsed_seconds,
            progress,
        } = timing(row, observed_rate, Utc::now());
        let json = RunJson {
            kind: "operation_run",
            id: row.id,
            workspace_id: row.workspace_id,
            tenant_id: row.tenant_id,
            run_type: &row.run_type,
            status: &row.status,
            outcome: &row.outcome,
            terminal,
            summary_counts: &row.summary_counts.0,
            created_at: ts(&row.created_at),
            started_at: ts(&row.started_at),
            completed_at: ts(&row.completed_at),
            updated_at: ts(&row.updated_at),
            version: row.version,
            elapsed_seconds,
            progress,
        };
        State {
            key: ItemKey::Run(row.id),
            owner: Some(Owner::Run {
                workspace: row.workspace_id,
                tenant: row.tenant_id,
            }),
            event_id: row.version.to_string().into(),
            version: row.version,
            terminal,
            created_at: row.created_at,
            updated_at: row.updated_at,
            json: render(&json),
            update_wire: OnceLock::new(),
            feed_wire: OnceLock::new(),
        }
    }

    /// The review-pack card of `tenant_id`: its latest pack, or none.
    pub(crate) fn pack(tenant_id: i64, pack: Option<&PackRow>) -> Self {
        let terminal = pack.is_none_or(|p| pack_is_terminal(&p.status));
        let json = PackJson {
            kind: "review_pack",
            tenant_id,
            terminal,
            pack: pack.map(|p| PackInner {
                id: p.id,
                status: &p.status,
                created_at: ts(&p.created_at),
                generated_at: ts(&p.generated_at),
                expires_at: ts(&p.expires_at),
                updated_at: ts(&p.updated_at),
                version: p.version,
            }),
        };
        let (id, version) = pack.map_or((0, 0), |p| (p.id, p.version));
        State {
            key: ItemKey::Pack { tenant: tenant_id },
            owner: Some(Owner::Pack { tenant: tenant_id }),
            event_id: format!("{id}.{version}").into(),
            version,
            terminal,
            created_at: pack.and_then(|p| p.created_at),
            updated_at: pack.and_then(|p| p.updated_at),
            json: render(&json),
            update_wire: OnceLock::new(),
            feed_wire: OnceLock::new(),
        }
    }

    /// An item that no longer exists. It has no owner, so no access decision ever admits it:
    /// nothing of it is written, its streams end with `gone`.
    pub(crate) fn gone(key: ItemKey) -> Self {
        State {
            key,
            owner: None,
            event_id: "gone".into(),
            version: 0,
            terminal: true,
            created_at: None,
            updated_at: None,
            json: render(&serde_json::json!({ "gone": true })),
            update_wire: OnceLock::new(),
            feed_wire: OnceLock::new(),
        }
    }

    pub(crate) fn is_gone(&self) -> bool {
        self.owner.is_none()
    }

    /// Whether `self` says something new compared to `other` (a duplicate or forged
    /// notification re-reads an unchanged row, which sends nothing).
    pub(crate) fn differs_from(&self, other: &State) -> bool {
        self.event_id != other.event_id || self.owner != other.owner
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
        let s = State::pack(7, None);
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
        assert!(s.differs_from(&State::pack(3, None)));
    }
}
