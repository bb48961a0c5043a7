//! What runwire streams: the state of an operation run and of a tenant's latest review pack,
//! and the one place that decides what "active" and "terminal" mean.
//!
//! States are built once per database read and shared (`Arc`) by every subscriber, so their
//! JSON is rendered once here and never per stream.

use crate::stream::sse::FrameCache;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::FromRow;

/// Run statuses that keep a run streaming. Everything else, unknown values included, is
/// terminal: the host app stops polling on anything it does not recognise, and so do we.
pub const ACTIVE_RUN_STATUSES: [&str; 2] = ["queued", "running"];
/// Review-pack statuses that keep a pack streaming; "no pack" is terminal too.
pub const ACTIVE_PACK_STATUSES: [&str; 2] = ["queued", "generating"];

pub fn run_is_terminal(status: &str) -> bool {
    !ACTIVE_RUN_STATUSES.contains(&status)
}

pub fn pack_is_terminal(status: &str) -> bool {
    !ACTIVE_PACK_STATUSES.contains(&status)
}

/// `retry:` hint for a reconnecting client, by the item's age: fresh work changes fast.
pub fn retry_ms(created_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> u64 {
    match created_at.map(|c| (now - c).num_milliseconds()) {
        Some(age) if age < 10_000 => 1_000,
        Some(age) if age < 60_000 => 5_000,
        _ => 10_000,
    }
}

/// One row of `operation_runs`, as read by runwire.
#[derive(Debug, Clone, FromRow)]
pub struct RunRow {
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
pub struct PackRow {
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

/// A run as streamed: the row plus its rendered JSON.
#[derive(Debug)]
pub struct RunState {
    pub id: i64,
    pub workspace_id: i64,
    pub tenant_id: Option<i64>,
    pub version: i64,
    pub terminal: bool,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub json: Box<RawValue>,
    /// Its SSE frames, rendered once for all subscribers.
    pub frames: FrameCache,
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
}

impl RunState {
    pub fn from_row(row: &RunRow) -> Self {
        let terminal = run_is_terminal(&row.status);
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
        };
        RunState {
            id: row.id,
            workspace_id: row.workspace_id,
            tenant_id: row.tenant_id,
            version: row.version,
            terminal,
            created_at: row.created_at,
            updated_at: row.updated_at,
            json: render(&json),
            frames: FrameCache::default(),
        }
    }

    /// The SSE `id:` of this state: its version, strictly increasing per run.
    pub fn event_id(&self) -> String {
        self.version.to_string()
    }
}

/// The review-pack card of one tenant: its latest pack, or none.
#[derive(Debug)]
pub struct PackState {
    pub tenant_id: i64,
    /// (pack id, version) of the latest pack; None when the tenant has no pack.
    pub key: Option<(i64, i64)>,
    pub terminal: bool,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub json: Box<RawValue>,
    /// Its SSE frames, rendered once for all subscribers.
    pub frames: FrameCache,
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

impl PackState {
    pub fn new(tenant_id: i64, pack: Option<&PackRow>) -> Self {
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
        PackState {
            tenant_id,
            key: pack.map(|p| (p.id, p.version)),
            terminal,
            created_at: pack.and_then(|p| p.created_at),
            updated_at: pack.and_then(|p| p.updated_at),
            json: render(&json),
            frames: FrameCache::default(),
        }
    }

    /// The SSE `id:` of this state, `<pack id>.<version>` (`0.0` for "no pack"): it changes
    /// whenever the card changes, including when a newer pack replaces the old one.
    pub fn event_id(&self) -> String {
        let (id, version) = self.key.unwrap_or((0, 0));
        format!("{id}.{version}")
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
        let s = PackState::new(7, None);
        assert!(s.terminal);
        assert_eq!(s.event_id(), "0.0");
        assert_eq!(
            s.json.get(),
            r#"{"type":"review_pack","tenant_id":7,"terminal":true,"pack":null}"#
        );
    }
}
