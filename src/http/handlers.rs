//! Request handlers. Order of checks everywhere: the id (400), the token (401), the stream
//! limits (429/503), then access (404/403) — the last in [`crate::access`].

use super::params::{parse_id, parse_item_lists};
use super::{ApiError, AppState};
use crate::access::{self, token::now_secs, AuthUser, COOKIE_NAME};
use crate::metrics::StreamKind;
use crate::model::{PackState, RunState};
use crate::stream::direct::Sink;
use crate::stream::{items, workspace};
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::Arc;

type Auth = Result<AuthUser, ApiError>;

fn last_event_id(headers: &HeaderMap) -> Option<&str> {
    headers.get("last-event-id").and_then(|v| v.to_str().ok())
}

/// The permit is taken before any database work, so an over-limit client costs nothing.
fn permit(app: &AppState, user_id: i64) -> Result<crate::stream::limits::StreamPermit, ApiError> {
    app.limiter.acquire(user_id).inspect_err(|_| {
        app.metrics.streams_rejected.inc();
    })
}

/// The shared path of the item streams, after each handler parsed its ids: token, caps,
/// subscribe-then-authorise, respond.
#[allow(clippy::too_many_arguments)]
async fn item_stream(
    app: AppState,
    auth: Auth,
    headers: HeaderMap,
    kind: StreamKind,
    topic: String,
    runs: &[i64],
    tenants: &[i64],
    sink: Option<Extension<Arc<Sink>>>,
) -> Result<Response, ApiError> {
    let AuthUser(claims) = auth?;
    let permit = permit(&app, claims.user_id)?;
    let items = items::subscribe(&app, claims.user_id, runs, tenants).await?;
    Ok(items::respond(
        &app,
        claims,
        kind,
        topic,
        items,
        last_event_id(&headers),
        permit,
        sink.map(|Extension(s)| s),
    ))
}

pub async fn run_events(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    auth: Auth,
    headers: HeaderMap,
    sink: Option<Extension<Arc<Sink>>>,
) -> Result<Response, ApiError> {
    let run_id = parse_id(&raw, "run id")?;
    let topic = format!("run:{run_id}");
    item_stream(
        app,
        auth,
        headers,
        StreamKind::run,
        topic,
        &[run_id],
        &[],
        sink,
    )
    .await
}

pub async fn pack_events(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    auth: Auth,
    headers: HeaderMap,
    sink: Option<Extension<Arc<Sink>>>,
) -> Result<Response, ApiError> {
    let tenant_id = parse_id(&raw, "tenant id")?;
    let topic = format!("review_pack:{tenant_id}");
    item_stream(
        app,
        auth,
        headers,
        StreamKind::review_pack,
        topic,
        &[],
        &[tenant_id],
        sink,
    )
    .await
}

pub async fn multi_events(
    State(app): State<AppState>,
    uri: Uri,
    auth: Auth,
    headers: HeaderMap,
    sink: Option<Extension<Arc<Sink>>>,
) -> Result<Response, ApiError> {
    let lists = parse_item_lists(uri.query())?;
    let topic = format!("runs:{:?} packs:{:?}", lists.runs, lists.tenants);
    item_stream(
        app,
        auth,
        headers,
        StreamKind::multi,
        topic,
        &lists.runs,
        &lists.tenants,
        sink,
    )
    .await
}

pub async fn workspace_events(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    auth: Auth,
) -> Result<Response, ApiError> {
    let workspace_id = parse_id(&raw, "workspace id")?;
    let AuthUser(claims) = auth?;
    let permit = permit(&app, claims.user_id)?;
    workspace::open(&app, claims, workspace_id, permit).await
}

fn json_body(raw: &str) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], raw.to_owned()).into_response()
}

pub async fn run_snapshot(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    auth: Auth,
) -> Result<Response, ApiError> {
    let run_id = parse_id(&raw, "run id")?;
    let AuthUser(claims) = auth?;
    let rows = access::authorize_runs(&app.batcher, claims.user_id, &[run_id]).await?;
    let state = RunState::from_row(&rows[0]);
    Ok(json_body(state.json.get()))
}

pub async fn pack_snapshot(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    auth: Auth,
) -> Result<Response, ApiError> {
    let tenant_id = parse_id(&raw, "tenant id")?;
    let AuthUser(claims) = auth?;
    let packs = access::authorize_packs(&app.batcher, claims.user_id, &[tenant_id]).await?;
    let (tenant_id, pack) = &packs[0];
    Ok(json_body(
        PackState::new(*tenant_id, pack.as_ref()).json.get(),
    ))
}

/// The workspace as the caller sees it (name, their tenants and roles), for dashboards.
pub async fn workspace_info(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    auth: Auth,
) -> Result<Response, ApiError> {
    let workspace_id = parse_id(&raw, "workspace id")?;
    let AuthUser(claims) = auth?;
    let info = crate::store::workspace_info(&app.pool, claims.user_id, workspace_id)
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

/// Trades a bearer token for an HttpOnly cookie, so pages need not put tokens in URLs.
pub async fn create_session(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = access::bearer(&headers).ok_or(ApiError::Unauthorized("missing bearer token"))?;
    let claims = app.tokens.verify(token)?;
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

pub async fn delete_session(State(app): State<AppState>) -> Response {
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

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 when a new request would be served; else 503 and why (see [`super::health`]).
pub async fn readyz(State(app): State<AppState>) -> Response {
    let ready = super::health::check(&app).await;
    let status = if ready.reason.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({
        "status": if ready.reason.is_none() { "ready" } else { "not_ready" },
        "database": ready.database,
        "listener": ready.listener,
    });
    if let Some(reason) = ready.reason {
        body["reason"] = json!(reason);
    }
    (status, Json(body)).into_response()
}

pub async fn metrics(State(app): State<AppState>) -> Response {
    app.metrics.db_pool_connections.set(app.pool.size() as i64);
    app.metrics.db_pool_idle.set(app.pool.num_idle() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

pub async fn method_not_allowed() -> Response {
    let body =
        json!({ "error": { "code": "method_not_allowed", "message": "method not allowed" } });
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}
