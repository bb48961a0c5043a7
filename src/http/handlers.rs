//! Request handlers. Order of checks everywhere: the id (400), the token (401), the stream
//! limits (429/503), then access (404/403) — the last two in [`crate::stream`] and
//! [`crate::access`].

use super::auth::AuthUser;
use super::params::{parse_id, parse_item_lists};
use super::{sse, ApiError, AppState};
use crate::access::token::{now_secs, Wants};
use crate::access::{self, COOKIE_NAME};
use crate::metrics::StreamKind;
use crate::stream::items::{self, Opened};
use crate::stream::{combined, workspace};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

type Auth = Result<AuthUser, ApiError>;

fn last_event_id(headers: &HeaderMap) -> Option<&str> {
    headers.get("last-event-id").and_then(|v| v.to_str().ok())
}

/// The shared path of the item streams, after each handler parsed its ids: token, then
/// caps, access and the stream itself (`stream::items::open`).
async fn item_stream(
    app: &AppState,
    auth: Auth,
    headers: &HeaderMap,
    kind: StreamKind,
    runs: &[i64],
    tenants: &[i64],
) -> Result<Response, ApiError> {
    let claims = auth?.opening(Wants::Other)?;
    let topic = format!("runs:{runs:?} packs:{tenants:?}");
    let opened = items::open(
        &app.streams,
        claims,
        kind,
        topic,
        runs,
        tenants,
        last_event_id(headers),
    )
    .await?;
    Ok(match opened {
        Opened::AlreadySeen => StatusCode::NO_CONTENT.into_response(),
        Opened::Stream(stream) => sse::response(*stream),
    })
}

// One handler per stream route, alike on purpose: each names its own id in its 400, and the
// shared work is `item_stream`.
pub(super) async fn run_events(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    auth: Auth,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let run_id = parse_id(&raw, "run id")?;
    item_stream(&app, auth, &headers, StreamKind::run, &[run_id], &[]).await
}

pub(super) async fn pack_events(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    auth: Auth,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let tenant_id = parse_id(&raw, "tenant id")?;
    item_stream(
        &app,
        auth,
        &headers,
        StreamKind::review_pack,
        &[],
        &[tenant_id],
    )
    .await
}

pub(super) async fn multi_events(
    State(app): State<AppState>,
    uri: Uri,
    auth: Auth,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let lists = parse_item_lists(uri.query())?;
    let Some(&workspace_id) = lists.workspaces.first() else {
        // Without a feed: the item stream, byte for byte as before feeds could join it.
        return item_stream(
            &app,
            auth,
            &headers,
            StreamKind::multi,
            &lists.runs,
            &lists.tenants,
        )
        .await;
    };
    // A token scoped to the workspace opens its feed here too, as long as it is all it asks.
    let wants = match lists.runs.is_empty() && lists.tenants.is_empty() {
        true => Wants::Workspace(workspace_id),
        false => Wants::Other,
    };
    let claims = auth?.opening(wants)?;
    let topic = format!(
        "runs:{:?} packs:{:?} workspace:{workspace_id}",
        lists.runs, lists.tenants
    );
    let stream = combined::open(
        &app.streams,
        claims,
        topic,
        &lists.runs,
        &lists.tenants,
        workspace_id,
    )
    .await?;
    Ok(sse::response(stream))
}

pub(super) async fn workspace_events(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    auth: Auth,
) -> Result<Response, ApiError> {
    let workspace_id = parse_id(&raw, "workspace id")?;
    let claims = auth?.opening(Wants::Workspace(workspace_id))?;
    let stream = workspace::open(&app.streams, claims, workspace_id).await?;
    Ok(sse::response(stream))
}

fn json_body(raw: &str) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], raw.to_owned()).into_response()
}

pub(super) async fn run_snapshot(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    auth: Auth,
) -> Result<Response, ApiError> {
    let run_id = parse_id(&raw, "run id")?;
    item_snapshot(&app, auth, &[run_id], &[]).await
}

pub(super) async fn pack_snapshot(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    auth: Auth,
) -> Result<Response, ApiError> {
    let tenant_id = parse_id(&raw, "tenant id")?;
    item_snapshot(&app, auth, &[], &[tenant_id]).await
}

/// One item's current state as JSON, by the same rules (and the same read) as its stream.
async fn item_snapshot(
    app: &AppState,
    auth: Auth,
    runs: &[i64],
    tenants: &[i64],
) -> Result<Response, ApiError> {
    let claims = auth?.opening(Wants::Other)?;
    // Under the stream caps like a stream's first read: snapshots cannot flood the queues.
    let _permit = app.streams.permit(claims.user_id)?;
    let rates = &app.streams.hub.rates;
    let states =
        access::read_items(&app.streams.batcher, rates, claims.user_id, runs, tenants).await?;
    let (state, _) = &states[0];
    if let Some(bad) = &state.unreadable {
        return Err(ApiError::Unreadable(bad.to_string()));
    }
    Ok(json_body(state.json.get()))
}

/// The workspace as the caller sees it (name, their tenants and roles), for dashboards.
pub(super) async fn workspace_info(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    auth: Auth,
) -> Result<Response, ApiError> {
    let workspace_id = parse_id(&raw, "workspace id")?;
    let claims = auth?.opening(Wants::Workspace(workspace_id))?;
    let _permit = app.streams.permit(claims.user_id)?;
    let info = app
        .streams
        .batcher
        .workspace_info(claims.user_id, workspace_id)
        .await?
        .filter(|w| w.workspace_member)
        .ok_or(ApiError::NotFound)?;
    let tenants: Vec<serde_json::Value> = info
        .tenants
        .0
        .iter()
        .map(|t| {
            json!({
                "id": t.id,
                "name": t.name,
                "role": t.role,
                "can_view_review_pack": access::role_can_view_review_pack(&t.role),
            })
        })
        .collect();
    Ok(Json(json!({
        "type": "workspace",
        "id": info.id,
        "name": info.name,
        "user_id": claims.user_id,
        "tenants": tenants,
    }))
    .into_response())
}

/// Whom the request's credentials name, changing nothing (no cookie set): `runwire.js` keys
/// the connection its tabs share on this answer, never on a token it decoded itself.
pub(super) async fn session(auth: Auth) -> Result<Response, ApiError> {
    let claims = auth?.opening(Wants::Identity)?;
    let body = Json(json!({ "user_id": claims.user_id, "expires_at": claims.exp }));
    Ok(([(header::CACHE_CONTROL, "no-store")], body).into_response())
}

/// Trades a bearer token for an HttpOnly cookie, so pages need not put tokens in URLs.
pub(super) async fn create_session(
    State(app): State<AppState>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
) -> Result<Response, ApiError> {
    let token = access::bearer(&headers).ok_or(ApiError::Unauthorized("missing bearer token"))?;
    // A scoped token is for embedding, which needs no cookie; as a cookie it would stand in
    // for the user's own token on every page of this origin.
    let claims = AuthUser::verify(&app.tokens, token)?.opening(Wants::Other)?;
    // Accepted credentials, as on any other path: the connection keeps its slot.
    super::admission::authenticated(&extensions);
    let max_age = claims.exp.saturating_sub(now_secs());
    let cookie = format!(
        "{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{}",
        if app.settings.cookie_secure {
            "; Secure"
        } else {
            ""
        }
    );
    let value =
        HeaderValue::from_str(&cookie).map_err(|_| ApiError::Unauthorized("token is malformed"))?;
    let body = Json(json!({ "user_id": claims.user_id, "expires_at": claims.exp }));
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(header::SET_COOKIE, value);
    Ok(response)
}

pub(super) async fn delete_session(State(app): State<AppState>) -> Response {
    let secure = if app.settings.cookie_secure {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}");
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

pub(super) async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 when a new request would be served; else 503 and why (see [`super::health`]).
pub(super) async fn readyz(State(app): State<AppState>) -> Response {
    let ready = super::health::check(&app).await;
    let status = if ready.reason.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let (lag_seconds, lag_bytes) = app.listener.lag();
    let source = app.listener.source().map(|s| match s {
        crate::model::ChangeSource::Wal => "wal",
        crate::model::ChangeSource::Notify => "notify",
    });
    let mut body = json!({
        "status": if ready.reason.is_none() { "ready" } else { "not_ready" },
        "database": ready.database,
        "listener": ready.listener,
        "changes": { "source": source, "lag_seconds": lag_seconds, "lag_bytes": lag_bytes },
    });
    if let Some(reason) = ready.reason {
        body["reason"] = json!(reason);
    }
    (status, Json(body)).into_response()
}

/// OpenMetrics for clients that ask for it (Prometheus does), else the classic text format.
pub(super) async fn metrics(State(app): State<AppState>, headers: HeaderMap) -> Response {
    app.metrics.db_pool_connections.set(app.pool.size() as i64);
    app.metrics.db_pool_idle.set(app.pool.num_idle() as i64);
    app.metrics.observe_source(&app.listener);
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (content_type, body) = match openmetrics {
        true => (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            app.metrics.encode(),
        ),
        false => (
            "text/plain; version=0.0.4; charset=utf-8",
            app.metrics.encode_classic(),
        ),
    };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

pub(super) async fn not_found() -> ApiError {
    ApiError::NotFound
}

pub(super) async fn method_not_allowed() -> Response {
    let body =
        json!({ "error": { "code": "method_not_allowed", "message": "method not allowed" } });
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}
