//! Access epochs: how a stream knows that a decision it holds may be out of date.
//!
//! Every access change the watcher learns of (a membership notification, a tenant moved or
//! deleted, a lost listener connection) takes a new stamp from one process-wide clock and
//! records it — for one user, or for everyone. A decision is stamped with the clock as it
//! was *before* its query ran. It is current while its stamp is no older than the newest
//! change recorded for its user and for everyone; a change recorded after the stamp was
//! taken makes it stale, whether or not the query happened to see that change.
//!
//! [`Grant`] is such a decision: "this user may see items of this owner (or of this
//! workspace, for a feed), decided at this stamp". [`Grant::admits`] is the one gate every
//! delivery path asks before a state's bytes go out.

use super::rules::{self, Facts};
use crate::model::Owner;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The process-wide access clock and the newest change per open user.
#[derive(Default)]
pub(crate) struct Epochs {
    clock: AtomicU64,
    /// Stamp of the newest change that concerns everyone.
    everyone: AtomicU64,
    /// Users with open streams. Created by their first stream, removed with their last.
    users: Mutex<HashMap<i64, Arc<UserEpoch>>>,
}

struct UserEpoch {
    /// Open `UserAccess` handles (streams) of this user; counted under the map's lock.
    handles: std::sync::atomic::AtomicUsize,
    /// Stamp of the newest change of this user's access.
    changed: AtomicU64,
    /// Wakes the user's streams (the value is the stamp, for nobody in particular).
    wake: watch::Sender<u64>,
}

impl Epochs {
    fn users(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<UserEpoch>>> {
        // Every critical section is one map operation: a poisoned lock is still consistent.
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stamp a decision takes before its query runs.
    pub(crate) fn now(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// `user_id`'s access changed: their decisions are stale, their streams wake.
    pub(crate) fn user_changed(&self, user_id: i64) {
        let stamp = self.tick();
        if let Some(user) = self.users().get(&user_id) {
            user.changed.store(stamp, Ordering::SeqCst);
            user.wake.send_replace(stamp);
        }
    }

    /// Everyone's access may have changed (a tenant moved, the listener reconnected).
    pub(crate) fn everyone_changed(&self) {
        let stamp = self.tick();
        // Stored before the wake-ups, and read by every freshness check: a user whose first
        // stream registers concurrently is covered too.
        self.everyone.store(stamp, Ordering::SeqCst);
        for user in self.users().values() {
            user.wake.send_replace(stamp);
        }
    }

    /// How many users have open streams.
    #[cfg(test)]
    pub(crate) fn users_open(&self) -> usize {
        self.users().len()
    }

    /// The access handle of one stream's user.
    pub(crate) fn user(self: &Arc<Self>, user_id: i64) -> Arc<UserAccess> {
        let mut users = self.users();
        let entry = users.entry(user_id).or_insert_with(|| {
            Arc::new(UserEpoch {
                handles: std::sync::atomic::AtomicUsize::new(0),
                changed: AtomicU64::new(0),
                wake: watch::Sender::new(0),
            })
        });
        entry.handles.fetch_add(1, Ordering::SeqCst);
        Arc::new(UserAccess {
            user_id,
            entry: Arc::clone(entry),
            epochs: Arc::clone(self),
        })
    }
}

/// One stream's view of its user's access epoch.
pub(crate) struct UserAccess {
    pub user_id: i64,
    entry: Arc<UserEpoch>,
    epochs: Arc<Epochs>,
}

impl UserAccess {
    /// Whether a decision stamped `stamp` is still current.
    pub(crate) fn current(&self, stamp: u64) -> bool {
        stamp >= self.entry.changed.load(Ordering::SeqCst)
            && stamp >= self.epochs.everyone.load(Ordering::SeqCst)
    }

    /// The stamp a new decision takes before its query runs.
    pub(crate) fn now(&self) -> u64 {
        self.epochs.now()
    }

    /// A receiver that wakes when this user's (or everyone's) access changes.
    pub(crate) fn wake(&self) -> watch::Receiver<u64> {
        self.entry.wake.subscribe()
    }
}

impl Drop for UserAccess {
    fn drop(&mut self) {
        let mut users = self.epochs.users();
        // Handles are counted under this lock, so the last one out removes the entry.
        if self.entry.handles.fetch_sub(1, Ordering::SeqCst) == 1 {
            users.remove(&self.user_id);
        }
    }
}

/// What a decision covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Items of exactly this owner.
    Owner(Owner),
    /// A workspace feed: the facts of the user in that workspace, so that every run's owner
    /// is judged by the same rule as a single run's.
    Workspace {
        workspace: i64,
        member: bool,
        /// The user's tenant roles in the workspace (shared: a grant is cloned per check
        /// site, and kept small).
        roles: Arc<HashMap<i64, String>>,
    },
}

/// A decision that the user may see what `scope` covers, made at `stamp`.
#[derive(Clone)]
pub(crate) struct Grant {
    pub scope: Scope,
    stamp: u64,
    user: Arc<UserAccess>,
}

impl Grant {
    pub(crate) fn new(user: &Arc<UserAccess>, stamp: u64, scope: Scope) -> Self {
        Grant {
            scope,
            stamp,
            user: Arc::clone(user),
        }
    }

    /// Whether the decision is still current (no access change since its stamp).
    pub(crate) fn current(&self) -> bool {
        self.user.current(self.stamp)
    }

    /// The gate. A state of an item owned by `owner` may be written only if this is true:
    /// the decision is current, and it covers that owner as the state has it. An item that
    /// no longer exists has no owner and is never admitted.
    pub(crate) fn admits(&self, owner: Option<&Owner>) -> bool {
        let Some(owner) = owner else { return false };
        self.current()
            && match &self.scope {
                Scope::Owner(granted) => granted == owner,
                Scope::Workspace {
                    workspace,
                    member,
                    roles,
                } => {
                    // The user's facts towards the owner, as far as this workspace goes: its
                    // runs, and the tenants it holds (the only ones with a role here: a run
                    // whose tenant sits in another workspace has no role, and is refused).
                    let (in_workspace, tenant) = match *owner {
                        Owner::Run {
                            workspace: w,
                            tenant,
                        } => (w == *workspace, tenant),
                        Owner::Pack { tenant } => (roles.contains_key(&tenant), Some(tenant)),
                    };
                    let facts = Facts {
                        workspace_member: *member && in_workspace,
                        tenant_exists: true,
                        tenant_in_workspace: true,
                        tenant_role: tenant.and_then(|t| roles.get(&t).cloned()),
                    };
                    rules::verdict(owner, &facts).is_ok()
                }
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(workspace: i64, tenant: Option<i64>) -> Owner {
        Owner::Run { workspace, tenant }
    }

    #[test]
    fn a_change_after_the_stamp_makes_a_grant_stale() {
        let epochs = Arc::new(Epochs::default());
        let user = epochs.user(7);
        let other = epochs.user(8);
        let grant = Grant::new(&user, user.now(), Scope::Owner(run(1, None)));
        assert!(grant.admits(Some(&run(1, None))));
        assert!(!grant.admits(Some(&run(1, Some(2)))), "another owner");
        assert!(!grant.admits(None), "a gone item");
        epochs.user_changed(8);
        assert!(grant.current(), "another user's change");
        epochs.user_changed(7);
        assert!(!grant.admits(Some(&run(1, None))));
        let again = Grant::new(&user, user.now(), Scope::Owner(run(1, None)));
        assert!(again.current());
        epochs.everyone_changed();
        assert!(!again.current());
        drop((grant, again, other));
        drop(user);
        assert_eq!(epochs.users_open(), 0);
    }

    #[test]
    fn a_changed_user_wakes() {
        let epochs = Arc::new(Epochs::default());
        let user = epochs.user(1);
        let mut wake = user.wake();
        epochs.user_changed(1);
        assert!(wake.has_changed().unwrap());
        wake.mark_unchanged();
        epochs.everyone_changed();
        assert!(wake.has_changed().unwrap());
    }

    #[test]
    fn a_workspace_grant_judges_runs_by_the_run_rule() {
        let epochs = Arc::new(Epochs::default());
        let user = epochs.user(1);
        let roles = Arc::new(HashMap::from([
            (5, "readonly".to_string()),
            (6, "owner".to_string()),
        ]));
        let scope = Scope::Workspace {
            workspace: 1,
            member: true,
            roles,
        };
        let grant = Grant::new(&user, user.now(), scope);
        assert!(grant.admits(Some(&run(1, None))));
        assert!(grant.admits(Some(&run(1, Some(5)))));
        assert!(!grant.admits(Some(&run(1, Some(7)))));
        assert!(!grant.admits(Some(&run(2, None))));
        // Review packs by the pack rule: a role with review_pack.view, in this workspace.
        assert!(!grant.admits(Some(&Owner::Pack { tenant: 5 })), "readonly");
        assert!(grant.admits(Some(&Owner::Pack { tenant: 6 })));
        assert!(
            !grant.admits(Some(&Owner::Pack { tenant: 7 })),
            "another workspace's"
        );
    }
}
