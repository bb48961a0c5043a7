//! The source of the workspace operations feed: a snapshot of the active runs the user may
//! see, then an update for every change of any visible run (terminal ones included). It
//! never ends because runs finish; it ends on lost access, token expiry, lifetime or
//! shutdown.
//!
//! The feed's channel is a bounded broadcast. A subscriber that falls behind it, that missed
//! changes while the listener reconnected, whose visible tenants changed, or that sees a run
//! it showed move out of sight or disappear, re-reads and sends a fresh snapshot (clients
//! replace their list on every snapshot) instead of queueing without bound.

use super::driver::{Source, Step, Stream};
use super::{sse, Deadlines, OpenError, StreamGuard, Streams};
use crate::access::{self, AccessError, Claims, Grant, UserAccess};
use crate::metrics::StreamKind;
use crate::model::State;
use crate::store;
use crate::watch::hub::WorkspaceSubscription;
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

pub struct Feed {
    workspace_id: i64,
    /// What the user may see of the workspace, and since when.
    grant: Grant,
    rx: WorkspaceSubscription,
    resynced: watch::Receiver<u64>,
    /// Run changes received and not yet looked at.
    queue: VecDeque<Arc<State>>,
    snapshot_due: bool,
    /// Active run id → newest version sent, so duplicate re-reads send nothing.
    sent: HashMap<i64, i64>,
}

#[derive(Serialize)]
struct Snapshot<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    workspace_id: i64,
    runs: Vec<&'a RawValue>,
}

pub async fn open(
    streams: &Arc<Streams>,
    claims: Claims,
    workspace_id: i64,
) -> Result<Stream, OpenError> {
    let permit = streams.permit(claims.user_id)?;
    let user = streams.epochs.user(claims.user_id);
    // Subscribe before deciding and reading, so no change falls between them.
    let rx = streams.hub.workspaces.subscribe(workspace_id);
    let resynced = streams.hub.resynced.subscribe();
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
        retry_ms: 1000,
        source: Source::Feed(Box::new(Feed {
            workspace_id,
            grant,
            rx,
            resynced,
            queue: VecDeque::new(),
            snapshot_due: true,
            sent: HashMap::new(),
        })),
    })
}

impl Feed {
    /// What is pending: a decision if the grant is stale; a snapshot if one is due; else the
    /// next received run change the grant admits and the client has not seen.
    pub(super) async fn step(&mut self, streams: &Streams) -> Step {
        loop {
            if !self.grant.current() {
                return Step::Decide;
            }
            if self.snapshot_due {
                let Ok(rows) = store::active_runs(&streams.pool, self.workspace_id).await else {
                    return Step::Failed;
                };
                if !self.grant.current() {
                    continue; // decide first, then read again
                }
                let runs: Vec<State> = rows
                    .iter()
                    .map(State::run)
                    .filter(|r| self.grant.admits(r.owner.as_ref()))
                    .collect();
                self.sent = runs
                    .iter()
                    .map(|r| (r.run_id().unwrap_or(0), r.version))
                    .collect();
                self.snapshot_due = false;
                let body = Snapshot {
                    kind: "workspace_runs",
                    workspace_id: self.workspace_id,
                    runs: runs.iter().map(|r| r.json.as_ref()).collect(),
                };
                let body = serde_json::to_string(&body).expect("snapshot serialises");
                return Step::Write(sse::event("snapshot", None, &body), None);
            }
            let Some(run) = self.queue.pop_front() else {
                return Step::Idle;
            };
            let id = run.run_id().unwrap_or(0);
            if !self.grant.admits(run.owner.as_ref()) {
                if !self.grant.current() {
                    self.queue.push_front(run);
                    return Step::Decide;
                }
                // Out of sight (moved, deleted): if the client shows it, replace its list.
                if self.sent.remove(&id).is_some() {
                    self.snapshot_due = true;
                }
                continue;
            }
            if self.sent.get(&id).is_some_and(|v| *v >= run.version) {
                continue;
            }
            // Terminal runs are forgotten so a long-lived feed does not grow with every run
            // the workspace ever had (a repeated re-read of one would be sent again).
            if run.terminal {
                self.sent.remove(&id);
            } else {
                self.sent.insert(id, run.version);
            }
            return Step::Write(sse::feed_update(&run).clone(), None);
        }
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
