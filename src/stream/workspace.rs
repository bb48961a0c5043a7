//! The workspace operations feed: a snapshot of the active runs the user may see, then an
//! update for every change of any visible run (terminal ones included). It never ends
//! because runs finish; it ends on lost access, token expiry, lifetime or shutdown.
//!
//! The feed's channel is a bounded broadcast. A subscriber that falls behind it, or that
//! missed changes while the listener reconnected, re-reads and sends a fresh snapshot
//! (clients replace their list on every snapshot) instead of queueing without bound.

use super::{sse, Deadlines, StreamGuard};
use crate::access::{self, Claims};
use crate::http::{ApiError, AppState};
use crate::metrics::{CloseReason, StreamKind};
use crate::model::RunState;
use crate::store;
use axum::response::Response;
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

/// What the user may see of the workspace, and what they have been sent.
struct Visible {
    workspace_id: i64,
    tenants: HashSet<i64>,
    /// active run id → newest version sent, so duplicate re-reads send nothing.
    sent: HashMap<i64, i64>,
}

impl Visible {
    fn may_see(&self, run: &RunState) -> bool {
        run.workspace_id == self.workspace_id
            && run.tenant_id.is_none_or(|t| self.tenants.contains(&t))
    }

    /// Whether `run` is news to this subscriber; records it as sent if so.
    fn take(&mut self, run: &RunState) -> bool {
        if !self.may_see(run) {
            return false;
        }
        if self.sent.get(&run.id).is_some_and(|v| *v >= run.version) {
            return false;
        }
        // Terminal runs are forgotten so a long-lived feed does not grow with every run the
        // workspace ever had (a repeated re-read of one would be sent again, unchanged).
        if run.terminal {
            self.sent.remove(&run.id);
        } else {
            self.sent.insert(run.id, run.version);
        }
        true
    }
}

#[derive(Serialize)]
struct Snapshot<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    workspace_id: i64,
    runs: Vec<&'a RawValue>,
}

/// Reads the active runs the user may see and renders the snapshot, resetting what was sent.
async fn snapshot(app: &AppState, visible: &mut Visible) -> Result<String, ApiError> {
    let tenants: Vec<i64> = visible.tenants.iter().copied().collect();
    let rows = store::active_runs(&app.pool, visible.workspace_id, &tenants).await?;
    let runs: Vec<RunState> = rows.iter().map(RunState::from_row).collect();
    visible.sent = runs.iter().map(|r| (r.id, r.version)).collect();
    let body = Snapshot {
        kind: "workspace_runs",
        workspace_id: visible.workspace_id,
        runs: runs.iter().map(|r| r.json.as_ref()).collect(),
    };
    Ok(serde_json::to_string(&body).expect("snapshot serialises"))
}

enum Wake {
    Run(Arc<RunState>),
    Resnapshot,
    KeepAlive,
    AccessChanged,
    TokenExpired,
    Lifetime,
    Shutdown,
}

pub async fn open(
    app: &AppState,
    claims: Claims,
    workspace_id: i64,
    permit: super::limits::StreamPermit,
) -> Result<Response, ApiError> {
    // Subscribe before reading the snapshot, so no change falls between the two.
    let mut feed = app.hub.workspaces.subscribe(workspace_id);
    let mut resynced = app.hub.resynced.subscribe();
    let tenants = access::authorize_workspace(&app.pool, claims.user_id, workspace_id).await?;
    let mut visible = Visible {
        workspace_id,
        tenants: tenants.into_iter().collect(),
        sent: HashMap::new(),
    };
    let first = snapshot(app, &mut visible).await?;

    let app = app.clone();
    let mut guard = StreamGuard::new(
        Arc::clone(&app.metrics),
        StreamKind::workspace,
        claims.user_id,
        format!("workspace:{workspace_id}"),
        permit,
    );
    let deadlines = Deadlines::new(claims.exp, app.settings.max_stream_lifetime_secs);
    let mut access_epoch = app.hub.access.subscribe(claims.user_id);
    let shutdown = app.shutdown.clone();
    let keepalive = app.keepalive();

    let frames = async_stream::stream! {
        yield sse::retry(1000);
        yield sse::event("snapshot", None, &first);
        guard.sent(1);
        // Created once (see items.rs): wake-ups must not re-register timers and waiters.
        let shutdown = shutdown.cancelled();
        let token_expiry = tokio::time::sleep_until(deadlines.token_expires);
        let lifetime = deadlines.lifetime();
        // Re-armed lazily from `last_sent` (see items.rs).
        let mut last_sent = Instant::now();
        let idle = tokio::time::sleep(keepalive);
        tokio::pin!(shutdown, token_expiry, lifetime, idle);
        loop {
            let wake = tokio::select! {
                biased;
                _ = &mut shutdown => Wake::Shutdown,
                _ = &mut token_expiry => Wake::TokenExpired,
                _ = &mut lifetime => Wake::Lifetime,
                r = access_epoch.changed() => if r.is_ok() { Wake::AccessChanged } else { Wake::Shutdown },
                r = resynced.changed() => if r.is_ok() { Wake::Resnapshot } else { Wake::Shutdown },
                r = feed.recv() => match r {
                    Ok(run) => Wake::Run(run),
                    Err(RecvError::Lagged(_)) => Wake::Resnapshot,
                    Err(RecvError::Closed) => Wake::Shutdown,
                },
                _ = &mut idle => Wake::KeepAlive,
            };
            match wake {
                Wake::Run(run) => {
                    if !visible.take(&run) {
                        continue;
                    }
                    yield run.frames.feed_update(run.json.get());
                    guard.sent(1);
                }
                Wake::KeepAlive => {
                    let due = last_sent + keepalive;
                    if Instant::now() < due {
                        idle.as_mut().reset(due);
                        continue;
                    }
                    yield sse::keepalive();
                    idle.as_mut().reset(Instant::now() + keepalive);
                }
                Wake::Resnapshot => {
                    // A failed read (database down) leaves the stream open; the next resync
                    // after the database returns sends the snapshot.
                    let Ok(body) = snapshot(&app, &mut visible).await else { continue };
                    yield sse::event("snapshot", None, &body);
                    guard.sent(1);
                }
                Wake::AccessChanged => {
                    match access::authorize_workspace(&app.pool, claims.user_id, workspace_id).await {
                        Ok(tenants) => {
                            let tenants: HashSet<i64> = tenants.into_iter().collect();
                            if tenants == visible.tenants {
                                continue;
                            }
                            visible.tenants = tenants;
                            let Ok(body) = snapshot(&app, &mut visible).await else { continue };
                            yield sse::event("snapshot", None, &body);
                            guard.sent(1);
                        }
                        Err(ApiError::NotFound | ApiError::Forbidden) => {
                            yield sse::end("forbidden");
                            guard.close(CloseReason::forbidden);
                            return;
                        }
                        Err(_) => continue,
                    }
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
                Wake::Shutdown => {
                    guard.close(CloseReason::shutdown);
                    return;
                }
            }
            last_sent = Instant::now();
        }
    };
    Ok(sse::response(frames))
}
