//! The browser side, embedded in the binary so runwire runs from anywhere without a build
//! step: the dashboard at `/`, and the client library as the global script `/runwire.js`, the
//! ES module `/runwire.mjs` and its TypeScript declarations `/runwire.d.ts` (one source,
//! `static/runwire.mjs`; `scripts/build-client` makes the global script from it).
//!
//! Caching: every asset carries a strong `ETag` (a hash of its bytes) and `Cache-Control:
//! no-cache`, so browsers and proxies keep a copy and revalidate it: a page load costs a 304
//! without a body until runwire is upgraded, and then the new client at once — no stale client
//! against a newer server. Pages of other origins load the module with CORS; the router's
//! CORS layer answers the `--allowed-origins` (see `super::cors`). This module must not decide
//! anything else about a request.

use super::AppState;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::LazyLock;

/// One embedded file and its validator.
struct Asset {
    body: &'static str,
    mime: &'static str,
    etag: HeaderValue,
}

impl Asset {
    fn new(body: &'static str, mime: &'static str) -> Self {
        let mut hasher = DefaultHasher::new();
        body.hash(&mut hasher);
        let etag = HeaderValue::from_str(&format!("\"{:016x}\"", hasher.finish()))
            .expect("a quoted hex digest is a valid header value");
        Asset { body, mime, etag }
    }

    /// 304 when the client's copy is current, else the file.
    fn respond(&self, request: &HeaderMap) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert(header::ETAG, self.etag.clone());
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        if self.mime.starts_with("text/javascript") {
            // Deno (and tools that follow it) find the module's types here.
            headers.insert(
                HeaderName::from_static("x-typescript-types"),
                HeaderValue::from_static("/runwire.d.ts"),
            );
        }
        if none_match(request, &self.etag) {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(self.mime));
        (headers, self.body).into_response()
    }
}

/// Whether `If-None-Match` names `etag` (RFC 9110 13.1.2: a list of entity tags or `*`,
/// compared weakly, so `W/"x"` matches `"x"`).
fn none_match(request: &HeaderMap, etag: &HeaderValue) -> bool {
    let ours = etag.as_bytes();
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim())
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == ours)
}

macro_rules! asset {
    ($path:literal, $mime:literal) => {{
        static ASSET: LazyLock<Asset> =
            LazyLock::new(|| Asset::new(include_str!(concat!("../../static/", $path)), $mime));
        get(|headers: HeaderMap| async move { ASSET.respond(&headers) })
    }};
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", asset!("index.html", "text/html; charset=utf-8"))
        .route(
            "/runwire.js",
            asset!("runwire.js", "text/javascript; charset=utf-8"),
        )
        .route(
            "/runwire.mjs",
            asset!("runwire.mjs", "text/javascript; charset=utf-8"),
        )
        .route(
            "/runwire.d.ts",
            asset!("runwire.d.ts", "application/typescript; charset=utf-8"),
        )
        .route(
            "/dashboard.js",
            asset!("dashboard.js", "text/javascript; charset=utf-8"),
        )
        .route(
            "/dashboard.css",
            asset!("dashboard.css", "text/css; charset=utf-8"),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(if_none_match: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(if_none_match).unwrap(),
        );
        headers
    }

    #[test]
    fn if_none_match_compares_weakly_and_takes_lists_and_star() {
        let etag = HeaderValue::from_static("\"abc\"");
        assert!(none_match(&request("\"abc\""), &etag));
        assert!(none_match(&request("W/\"abc\""), &etag));
        assert!(none_match(&request("\"x\", \"abc\""), &etag));
        assert!(none_match(&request("*"), &etag));
        assert!(!none_match(&request("\"abcd\""), &etag));
        assert!(
            !none_match(&request("abc"), &etag),
            "an unquoted tag is no tag"
        );
        assert!(!none_match(&HeaderMap::new(), &etag));
    }

    #[test]
    fn the_etag_follows_the_bytes() {
        let a = Asset::new("export const A = 1;", "text/javascript");
        let b = Asset::new("export const A = 2;", "text/javascript");
        assert_ne!(a.etag, b.etag);
        assert_eq!(a.etag, Asset::new("export const A = 1;", "x").etag);
    }
}
