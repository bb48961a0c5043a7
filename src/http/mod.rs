//! HTTP: the router, its shared state, handlers, the error type and the embedded static files.
//! Handlers only authenticate, parse and hand over to [`crate::stream`]; they never talk to
//! the listener.

mod assets;
mod error;
pub mod front;
mod handlers;
pub mod params;
pub mod sse;

pub use error::ApiError;

use crate::access::Tokens;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::stream::Streams;
use crate::watch::ListenerStatus;
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::routing::{get, post};
use axum::Router;
use sqlx::PgPool;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

/// Everything a request may need, cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub pool: PgPool,
    /// What every stream needs: the hub, access epochs, the batcher, the caps.
    pub streams: Streams,
    pub metrics: Arc<Metrics>,
    pub tokens: Tokens,
    pub listener: Arc<ListenerStatus>,
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
        // The span names method and path only: the query may hold an access token.
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                tracing::debug_span!("http", method = %req.method(), path = %req.uri().path())
            }),
        );
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
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
