//! The embeddable live view, `/embed/workspaces/{id}`: a page for an iframe in another tool
//! (a Grafana text panel, a status page, a wall screen) showing a workspace's active runs
//! with progress and ETA and the recently finished ones.
//!
//! The page is static: its token travels in the URL fragment (or query) and is read by the
//! page's script, which streams the workspace feed with it — so the page itself needs no
//! token, sets no cookie and reads none. Who may frame it is `--embed-origins`, sent as
//! `Content-Security-Policy: frame-ancestors`; the rest of the policy keeps the page to its
//! own scripts and styles. Access is the token's business (a scoped token opens this one
//! workspace only, see `access::token`), decided by the feed like any other.

use super::params::parse_id;
use super::{ApiError, AppState};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/embed/workspaces/{workspace_id}", get(page))
}

/// The page for any valid id: whether the workspace exists, and whether the token may see
/// it, is the feed's answer (in the page), not this one's.
async fn page(State(app): State<AppState>, Path(raw): Path<String>) -> Result<Response, ApiError> {
    parse_id(&raw, "workspace id")?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CONTENT_SECURITY_POLICY, app.embed_policy.clone()),
            // The token may be in the query: no Referer carries it anywhere.
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        include_str!("../../static/embed.html"),
    )
        .into_response())
}

/// The page's `Content-Security-Policy`: its own scripts and styles only, connections
/// anywhere (the token refresh URL is the host's), framed by runwire's own origin and the
/// `--embed-origins`. Refuses anything that is not a bare `http(s)://host[:port]` origin,
/// which could otherwise widen or break the header.
pub(crate) fn policy(embed_origins: &[String]) -> anyhow::Result<HeaderValue> {
    let mut ancestors = vec!["'self'".to_string()];
    for origin in embed_origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
    {
        ancestors.push(bare_origin(origin).ok_or_else(|| {
            anyhow::anyhow!(
                "--embed-origins: {origin:?} is not an origin (scheme://host[:port], e.g. https://grafana.example.com)"
            )
        })?);
    }
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src *; base-uri 'none'; form-action 'none'; frame-ancestors {}",
        ancestors.join(" ")
    );
    Ok(HeaderValue::from_str(&policy)?)
}

/// `origin` as CSP writes it, if it is exactly a scheme, a host and maybe a port.
fn bare_origin(origin: &str) -> Option<String> {
    let uri: Uri = origin.parse().ok()?;
    let scheme = uri
        .scheme_str()
        .filter(|s| matches!(*s, "http" | "https"))?;
    let authority = uri.authority()?;
    let plain = authority
        .as_str()
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
    let bare = matches!(uri.path(), "" | "/") && uri.query().is_none() && !origin.ends_with('/');
    (plain && bare).then(|| format!("{scheme}://{}", authority.as_str().to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bare_origins_frame_the_page() {
        let p = policy(&[
            "https://grafana.example.com".into(),
            " http://127.0.0.1:3000 ".into(),
        ])
        .unwrap();
        assert!(p
            .to_str()
            .unwrap()
            .ends_with("frame-ancestors 'self' https://grafana.example.com http://127.0.0.1:3000"));
        assert!(policy(&[])
            .unwrap()
            .to_str()
            .unwrap()
            .ends_with("frame-ancestors 'self'"));
        for bad in [
            "grafana.example.com",
            "https://a.example/path",
            "https://a.example/",
            "https://a.example?x=1",
            "javascript:alert(1)",
            "https://a.example; script-src *",
            "ftp://a.example",
            "https://user@a.example",
            "*",
        ] {
            assert!(policy(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
