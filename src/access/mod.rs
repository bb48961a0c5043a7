//! Who may watch what. Tokens are verified in [`token`]; this module holds every
//! 401/403/404 rule, so a single stream, a multiplexed stream, a JSON snapshot and the re-check
//! after a membership change all decide the same way.
//!
//! Rules (deny-as-not-found wherever existence itself would leak):
//! * run: missing, or user not in its workspace → 404; run has a tenant the user is not a
//!   member of → 403; otherwise allowed (tenantless runs: any workspace member).
//! * review pack: tenant missing, user not in the workspace, or not in the tenant → 404;
//!   tenant role without `review_pack.view` (`readonly`) → 403.
//! * workspace feed: non-members → 404; runs of tenants the user is not in are never shown.

pub mod batch;
pub mod token;

use crate::http::{ApiError, AppState};
use crate::model::{PackRow, RunRow};
use crate::store;
use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use sqlx::PgPool;
use std::collections::HashMap;

pub use batch::Batcher;
pub use token::{Claims, Tokens};

/// Name of the cookie that carries the token for browsers (`POST /v1/session` sets it).
pub const COOKIE_NAME: &str = "runwire_token";

/// Capability `review_pack.view`, as the host app grants it per tenant role.
pub fn role_can_view_review_pack(role: &str) -> bool {
    matches!(role, "owner" | "manager" | "operator")
}

/// The raw token of a request: `Authorization: Bearer`, then the cookie, then `access_token`
/// in the query (EventSource cannot send headers). An `Authorization` header of another
/// scheme (Basic, added by a proxy in front) is not ours and hides nothing.
pub fn token_from_parts(parts: &Parts) -> Option<String> {
    if let Some(token) = bearer(&parts.headers) {
        return Some(token.to_owned());
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
    let query = parts.uri.query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
}

/// The token of an `Authorization: Bearer` header (the first such header, if several).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get_all(AUTHORIZATION).iter().find_map(|value| {
        let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    })
}

/// An authenticated caller. Extracting it answers 401 for a missing or bad token.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser(pub Claims);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = token_from_parts(parts).ok_or(ApiError::Unauthorized("missing token"))?;
        state.tokens.verify(&token).map(AuthUser)
    }
}

/// Picks the refusal for a set of items: 404 wins over 403 so nothing leaks about items
/// the caller may not even know exist.
fn worst(a: Option<ApiError>, b: ApiError) -> Option<ApiError> {
    match (a, b) {
        (Some(ApiError::NotFound), _) => Some(ApiError::NotFound),
        (_, b) => Some(b),
    }
}

/// Authorises `user` for every run in `ids` and returns their rows in the same order.
pub async fn authorize_runs(
    batcher: &Batcher,
    user_id: i64,
    ids: &[i64],
) -> Result<Vec<RunRow>, ApiError> {
    let mut found: HashMap<i64, store::RunForUser> = batcher
        .runs(user_id, ids)
        .await?
        .into_iter()
        .map(|r| (r.run.id, r))
        .collect();
    let mut refusal = None;
    let mut rows = Vec::with_capacity(ids.len());
    for id in ids {
        match found.remove(id) {
            None => refusal = worst(refusal, ApiError::NotFound),
            Some(r) if !r.workspace_member => refusal = worst(refusal, ApiError::NotFound),
            Some(r) if !r.tenant_member => refusal = worst(refusal, ApiError::Forbidden),
            Some(r) => rows.push(r.run),
        }
    }
    match refusal {
        Some(e) => Err(e),
        None => Ok(rows),
    }
}

/// Authorises `user` for the review pack of every tenant in `tenant_ids`; returns each
/// tenant's latest pack in the same order.
pub async fn authorize_packs(
    batcher: &Batcher,
    user_id: i64,
    tenant_ids: &[i64],
) -> Result<Vec<(i64, Option<PackRow>)>, ApiError> {
    let mut found: HashMap<i64, store::PackForUser> = batcher
        .packs(user_id, tenant_ids)
        .await?
        .into_iter()
        .map(|p| (p.tenant_id, p))
        .collect();
    let mut refusal = None;
    let mut packs = Vec::with_capacity(tenant_ids.len());
    for id in tenant_ids {
        match found.remove(id) {
            Some(p) if p.workspace_member => match p.tenant_role.as_deref() {
                None => refusal = worst(refusal, ApiError::NotFound),
                Some(role) if !role_can_view_review_pack(role) => {
                    refusal = worst(refusal, ApiError::Forbidden)
                }
                Some(_) => packs.push((p.tenant_id, p.pack)),
            },
            _ => refusal = worst(refusal, ApiError::NotFound),
        }
    }
    match refusal {
        Some(e) => Err(e),
        None => Ok(packs),
    }
}

/// Authorises `user` for a workspace feed; returns the tenants whose runs they may see.
pub async fn authorize_workspace(
    pool: &PgPool,
    user_id: i64,
    workspace_id: i64,
) -> Result<Vec<i64>, ApiError> {
    let view = store::workspace_view(pool, user_id, workspace_id).await?;
    if view.workspace_member {
        Ok(view.tenant_ids)
    } else {
        Err(ApiError::NotFound)
    }
}
