//! Who may watch what. Tokens are verified in [`token`]; the rules are in [`rules`], written
//! once; [`epochs`] tracks when a decision goes stale and holds the gate ([`Grant::admits`])
//! that every delivery path asks. This module reads the facts (batched, [`batch`]) and turns
//! them into decisions, so a single stream, a multiplexed stream, a JSON snapshot, the
//! workspace feed and every re-check decide the same way (deny-as-not-found wherever
//! existence itself would leak).

pub(crate) mod batch;
pub(crate) mod epochs;
pub(crate) mod rules;
pub(crate) mod token;

use crate::model::{Owner, State};
use crate::progress::Rates;
use crate::store;
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use std::collections::HashMap;
use std::sync::Arc;

pub(crate) use batch::{Batcher, ReadError};
pub(crate) use epochs::{Epochs, Grant, Scope, UserAccess};
pub(crate) use rules::{role_can_view_review_pack, Denied};
pub(crate) use token::{Claims, InvalidToken, Tokens};

/// Why a user may not watch something: the rules refused, or the facts could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error(transparent)]
    Read(#[from] ReadError),
}

impl AccessError {
    /// Picks the refusal for a set of items: 404 wins over 403 so nothing leaks about items
    /// the caller may not even know exist; an undecidable item wins over both.
    pub fn worst(a: Option<AccessError>, b: impl Into<AccessError>) -> Option<AccessError> {
        let b = b.into();
        let rank = |e: &AccessError| match e {
            AccessError::Denied(Denied::Forbidden) => 0,
            AccessError::Denied(Denied::NotFound) => 1,
            AccessError::Read(_) => 2,
        };
        Some(match a {
            Some(a) if rank(&a) >= rank(&b) => a,
            _ => b,
        })
    }
}

/// Name of the cookie that carries the token for browsers (`POST /v1/session` sets it).
pub(crate) const COOKIE_NAME: &str = "runwire_token";

/// The raw token of a request: an explicit one first — `Authorization: Bearer`, then
/// `access_token` in the query (EventSource cannot send headers) — and only without either the
/// session cookie. The cookie is ambient: it names whoever last signed in on this browser, so
/// it must not decide for a page that says whom it is, nor spoil its token when it is stale.
/// An `Authorization` header of another scheme (Basic, added by a proxy in front) is not ours
/// and hides nothing.
pub(crate) fn token_from_parts(parts: &Parts) -> Option<String> {
    if let Some(token) = bearer(&parts.headers) {
        return Some(token.to_owned());
    }
    if let Some(token) = parts.uri.query().and_then(|query| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, v)| k == "access_token" && !v.is_empty())
            .map(|(_, v)| v.into_owned())
    }) {
        return Some(token);
    }
    for header in parts.headers.get_all(COOKIE) {
        let Ok(header) = header.to_str() else {
            continue;
        };
        for pair in header.split(';') {
            if let Some((name, value)) = pair.trim().split_once('=') {
                if name == COOKIE_NAME && !value.is_empty() {
                    return Some(value.to_owned());
                }
            }
        }
    }
    None
}

/// The token of an `Authorization: Bearer` header (the first such header, if several).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get_all(AUTHORIZATION).iter().find_map(|value| {
        let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    })
}

/// Reads and authorises items for `user_id`: their current states with the owners they were
/// authorised for, runs then packs in request order, or the one refusal for the whole set.
/// (A row that did not decode has a state without an owner; its stream ends `unreadable`.)
/// Runs are rendered with the pace `rates` observed (a read is not an observation).
pub(crate) async fn read_items(
    batcher: &Batcher,
    rates: &Rates,
    user_id: i64,
    run_ids: &[i64],
    tenant_ids: &[i64],
) -> Result<Vec<(State, Owner)>, AccessError> {
    let mut refusal = None;
    let mut states = Vec::with_capacity(run_ids.len() + tenant_ids.len());
    if !run_ids.is_empty() {
        let read = batcher.runs(user_id, run_ids).await?;
        let mut found: HashMap<i64, &store::RunForUser> = read
            .rows
            .iter()
            .filter_map(|r| Some((store::run_id(&r.run)?, r)))
            .collect();
        for id in run_ids {
            let Some(r) = found.remove(id) else {
                refusal = AccessError::worst(refusal, Denied::NotFound);
                continue;
            };
            match State::of_run(&r.run, read.seen.at, rates) {
                Some((state, owner)) => match rules::verdict(&owner, &r.facts()) {
                    Ok(()) => states.push((state.seen(&read.seen.snapshot), owner)),
                    Err(e) => refusal = AccessError::worst(refusal, e),
                },
                None => refusal = AccessError::worst(refusal, Denied::NotFound),
            }
        }
    }
    if !tenant_ids.is_empty() {
        let read = batcher.packs(user_id, tenant_ids).await?;
        let mut found: HashMap<i64, &store::PackForUser> =
            read.rows.iter().map(|p| (p.tenant_id, p)).collect();
        for id in tenant_ids {
            let Some(p) = found.remove(id) else {
                refusal = AccessError::worst(refusal, Denied::NotFound);
                continue;
            };
            let owner = Owner::Pack { tenant: *id };
            match rules::verdict(&owner, &p.facts) {
                Ok(()) => {
                    let card = State::of_card(*id, p.pack.as_ref(), read.seen.at);
                    states.push((card.seen(&read.seen.snapshot), owner));
                }
                Err(e) => refusal = AccessError::worst(refusal, e),
            }
        }
    }
    match refusal {
        Some(e) => Err(e),
        None => Ok(states),
    }
}

/// Decides afresh whether `user` may see items of each of `owners`: a grant for each, or
/// the refusal. The stamp is taken before the query, so a change that lands meanwhile makes
/// the grants stale rather than wrongly current.
pub(crate) async fn decide(
    batcher: &Batcher,
    user: &Arc<UserAccess>,
    owners: &[Owner],
) -> Result<Vec<Grant>, AccessError> {
    let stamp = user.now();
    let found: HashMap<Owner, store::OwnerFacts> = batcher
        .owners(user.user_id, owners)
        .await?
        .rows
        .into_iter()
        .map(|f| (f.owner, f))
        .collect();
    let mut refusal = None;
    let mut grants = Vec::with_capacity(owners.len());
    for owner in owners {
        let verdict = found
            .get(owner)
            .map_or(Err(Denied::NotFound), |f| rules::verdict(owner, &f.facts));
        match verdict {
            Ok(()) => grants.push(Grant::new(user, stamp, Scope::Owner(*owner))),
            Err(e) => refusal = AccessError::worst(refusal, e),
        }
    }
    match refusal {
        Some(e) => Err(e),
        None => Ok(grants),
    }
}

/// Reads a workspace feed's snapshot and decides, from the same read, what of it the user
/// may see (non-members: 404): a grant stamped before the read, and the read.
pub(crate) async fn read_feed(
    batcher: &Batcher,
    user: &Arc<UserAccess>,
    workspace_id: i64,
    recent_limit: i64,
) -> Result<(Grant, store::FeedRead, batch::Seen), AccessError> {
    let stamp = user.now();
    let (read, seen) = batcher
        .feed(user.user_id, workspace_id, recent_limit)
        .await?;
    let grant = workspace_grant(user, stamp, workspace_id, &read.view)?;
    Ok((grant, read, seen))
}

fn workspace_grant(
    user: &Arc<UserAccess>,
    stamp: u64,
    workspace_id: i64,
    view: &store::WorkspaceView,
) -> Result<Grant, AccessError> {
    if !view.workspace_member {
        return Err(Denied::NotFound.into());
    }
    let scope = Scope::Workspace {
        workspace: workspace_id,
        member: true,
        roles: Arc::new(view.tenant_roles.0.iter().cloned().collect()),
    };
    Ok(Grant::new(user, stamp, scope))
}

pub(crate) async fn decide_workspace(
    batcher: &Batcher,
    user: &Arc<UserAccess>,
    workspace_id: i64,
) -> Result<Grant, AccessError> {
    let stamp = user.now();
    let view = batcher.workspace(user.user_id, workspace_id).await?;
    workspace_grant(user, stamp, workspace_id, &view)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_wins_over_forbidden_and_an_undecided_item_over_both() {
        use Denied::*;
        let worst = |a: Option<AccessError>, b: Denied| AccessError::worst(a, b);
        let denied = |e: Option<AccessError>| match e {
            Some(AccessError::Denied(d)) => Some(d),
            _ => None,
        };
        assert_eq!(
            denied(worst(Some(NotFound.into()), Forbidden)),
            Some(NotFound)
        );
        assert_eq!(
            denied(worst(Some(Forbidden.into()), NotFound)),
            Some(NotFound)
        );
        assert_eq!(denied(worst(None, Forbidden)), Some(Forbidden));
        let down = Some(AccessError::Read(ReadError::SourceDown));
        assert!(matches!(worst(down, NotFound), Some(AccessError::Read(_))));
    }
}
