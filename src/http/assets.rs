//! The browser side, embedded in the binary so runwire runs from anywhere without a build
//! step: the dashboard at `/`, the client library at `/runwire.js`, its web components at
//! `/runwire-elements.js`, and the embeddable view's script and style.

use super::AppState;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

macro_rules! asset {
    ($path:literal, $mime:literal) => {
        get(|| async {
            (
                [
                    (header::CONTENT_TYPE, $mime),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                include_str!(concat!("../../static/", $path)),
            )
                .into_response()
        })
    };
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", asset!("index.html", "text/html; charset=utf-8"))
        .route(
            "/runwire.js",
            asset!("runwire.js", "text/javascript; charset=utf-8"),
        )
        .route(
            "/dashboard.js",
            asset!("dashboard.js", "text/javascript; charset=utf-8"),
        )
        .route(
            "/dashboard.css",
            asset!("dashboard.css", "text/css; charset=utf-8"),
        )
        // The web components and the embeddable view (`http::embed` serves its page).
        .route(
            "/runwire-elements.js",
            asset!("runwire-elements.js", "text/javascript; charset=utf-8"),
        )
        .route(
            "/embed.js",
            asset!("embed.js", "text/javascript; charset=utf-8"),
        )
        .route("/embed.css", asset!("embed.css", "text/css; charset=utf-8"))
}
