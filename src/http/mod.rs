//! HTTP: the router, its shared state, handlers, the error type and the embedded static files.
//! Handlers only authenticate, parse and hand over to [`crate::stream`]; they never talk to
//! the listener.

mod assets;
mod error;
pub mod front;
mod handlers;
pub mod health;
pub mod params;

pub use error::{database_unavailable, ApiError};
pub use health::Health;

use crate::access::{Batcher, Tokens};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::stream::limits::StreamLimiter;
use crate::watch::hub::Hub;
use crate::watch::ListenerStatus;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sqlx::PgPool;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

/// Everything a request may need, cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub pool: PgPool,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub tokens: Tokens,
    /// Batches the access reads of streams opened together.
    pub batcher: Batcher,
    pub listener: Arc<ListenerStatus>,
    /// Start-up progress and readiness verdicts, for `/readyz`.
    pub health: Arc<Health>,
    pub limiter: Arc<StreamLimiter>,
    pub settings: Settings,
    /// Cancelled at shutdown: every open stream ends (without `end`, so clients reconnect to
    /// another instance).
    pub shutdown: CancellationToken,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(inner: Inner) -> Self {
        AppState(Arc::new(inner))
    }

    pub fn keepalive(&self) -> Duration {
        Duration::from_secs(self.settings.keepalive_secs.max(1))
    }
}

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    let cors = cors(&state.settings.allowed_origins);
    let router = Router::new()
        .route("/v1/runs/{run_id}/events", get(handlers::run_events))
        .route("/v1/runs/{run_id}", get(handlers::run_snapshot))
        .route(
            "/v1/tenants/{tenant_id}/review-pack/events",
            get(handlers::pack_events),
        )
        .route("/v1/tenants/{tenant_id}/review-pack", get(handlers::pack_snapshot))
        .route("/v1/streams", get(handlers::multi_events))
        .route(
            "/v1/workspaces/{workspace_id}/runs/events",
            get(handlers::workspace_events),
        )
        .route("/v1/workspaces/{workspace_id}", get(handlers::workspace_info))
        .route(
            "/v1/session",
            post(handlers::create_session).delete(handlers::delete_session),
        )
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .merge(assets::routes())
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .with_state(state)
        .layer(axum::middleware::map_response(json_errors))
        // The span names method and path only: the query may hold an access token. A 5xx is
        // logged where its cause is known (a database error, once per readiness change), not
        // again here at ERROR for every response: during an outage that was a line per probe
        // and per refused client.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &axum::http::Request<_>| {
                    tracing::debug_span!("http", method = %req.method(), path = %req.uri().path())
                })
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        );
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// Every refusal is JSON (`{"error":{"code","message"}}`), axum's own included: a path that
/// is not UTF-8 (`/v1/runs/%C0%B1`), a body the handler cannot take. Responses that are
/// already JSON, and every success, pass untouched.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // axum's rejections explain themselves in a short text; 5xx details stay in the logs.
    let text = axum::body::to_bytes(body, 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let reason = status.canonical_reason().unwrap_or("error");
    let message = match text.trim() {
        t if !t.is_empty() && status.is_client_error() => t.chars().take(300).collect(),
        _ => reason.to_lowercase(),
    };
    let code = match status {
        StatusCode::INTERNAL_SERVER_ERROR => "internal".to_string(),
        _ => reason.to_lowercase().replace([' ', '-'], "_"),
    };
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = Json(serde_json::json!({ "error": { "code": code, "message": message } }));
    (parts, body).into_response()
}

/// CORS for an explicit allow-list only; credentials (the cookie) only for those origins.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter(|o| !o.trim().is_empty())
        .filter_map(|o| HeaderValue::from_str(o.trim()).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_credentials(true)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("last-event-id"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}
