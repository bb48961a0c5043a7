//! HTTP: the router, its shared state, handlers, the error type and the embedded static files.
//! Handlers only authenticate, parse and hand over to [`crate::stream`]; they never talk to
//! the listener.

pub(crate) mod admission;
mod assets;
mod auth;
mod embed;
mod error;
pub(crate) mod front;
mod handlers;
pub(crate) mod health;
pub(crate) mod params;
pub(crate) mod sse;

pub(crate) use embed::policy as embed_policy;
pub(crate) use error::ApiError;
pub(crate) use health::Health;

use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

pub(crate) use crate::app::AppState;

/// The stream routes (`GET`). The router serves them, and the connection front recognises
/// them by this same table: it serves them itself, to hand the socket to the stream driver.
const RUN_EVENTS: &str = "/v1/runs/{run_id}/events";
const PACK_EVENTS: &str = "/v1/tenants/{tenant_id}/review-pack/events";
const MULTI_EVENTS: &str = "/v1/streams";
const WORKSPACE_EVENTS: &str = "/v1/workspaces/{workspace_id}/runs/events";
const STREAM_ROUTES: [&str; 4] = [RUN_EVENTS, PACK_EVENTS, MULTI_EVENTS, WORKSPACE_EVENTS];

/// Whether a request is for one of the stream routes.
pub(crate) fn is_stream_route(method: &Method, path: &str) -> bool {
    static TABLE: std::sync::LazyLock<matchit::Router<()>> = std::sync::LazyLock::new(|| {
        let mut table = matchit::Router::new();
        for route in STREAM_ROUTES {
            table
                .insert(route, ())
                .expect("stream routes are valid and distinct");
        }
        table
    });
    method == Method::GET && TABLE.at(path).is_ok()
}

/// The whole HTTP API; `/metrics` too unless it has a listener of its own
/// (`--metrics-bind`, [`metrics_router`]).
pub(crate) fn router(state: AppState) -> Router {
    let cors = cors(&state.settings.allowed_origins);
    let metrics_here = state.settings.metrics_bind.is_none();
    let mut router = Router::new()
        .route(RUN_EVENTS, get(handlers::run_events))
        .route("/v1/runs/{run_id}", get(handlers::run_snapshot))
        .route(PACK_EVENTS, get(handlers::pack_events))
        .route(
            "/v1/tenants/{tenant_id}/review-pack",
            get(handlers::pack_snapshot),
        )
        .route(MULTI_EVENTS, get(handlers::multi_events))
        .route(WORKSPACE_EVENTS, get(handlers::workspace_events))
        .route(
            "/v1/workspaces/{workspace_id}",
            get(handlers::workspace_info),
        )
        .route(
            "/v1/session",
            get(handlers::session)
                .post(handlers::create_session)
                .delete(handlers::delete_session),
        )
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .merge(assets::routes())
        .merge(embed::routes());
    if metrics_here {
        router = router.route("/metrics", get(handlers::metrics));
    }
    let router = router
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

/// The `--metrics-bind` listener's routes: `/metrics` and nothing else.
pub(crate) fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(handlers::metrics))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .with_state(state)
        .layer(axum::middleware::map_response(json_errors))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_routes_are_one_table() {
        assert!(is_stream_route(&Method::GET, "/v1/runs/7/events"));
        assert!(is_stream_route(
            &Method::GET,
            "/v1/tenants/7/review-pack/events"
        ));
        assert!(is_stream_route(&Method::GET, "/v1/streams"));
        assert!(is_stream_route(
            &Method::GET,
            "/v1/workspaces/1/runs/events"
        ));
        assert!(!is_stream_route(&Method::POST, "/v1/streams"));
        assert!(!is_stream_route(&Method::GET, "/v1/runs/7"));
        // A future route that merely ends in /events is not a stream by accident.
        assert!(!is_stream_route(&Method::GET, "/v1/audit/events"));
    }
}
