//! What the browser client gets from runwire besides streams: the client library (global
//! script, ES module, declarations) with validators that make a reload a 304, CORS for module
//! scripts of the allowed origins, and `GET /v1/session`, whom the credentials name.

mod common;

use common::*;

const ORIGIN: &str = "https://admin.example.com";

async fn app() -> (TestApp, World, String) {
    TestApp::seeded_with(|s| s.allowed_origins = vec![ORIGIN.into()]).await
}

#[tokio::test]
async fn the_client_is_served_as_module_global_script_and_declarations_each_revalidated_by_etag() {
    let (app, _, _) = app().await;
    let files = [
        (
            "/runwire.mjs",
            include_str!("../static/runwire.mjs"),
            "text/javascript",
        ),
        (
            "/runwire.js",
            include_str!("../static/runwire.js"),
            "text/javascript",
        ),
        (
            "/runwire.d.ts",
            include_str!("../static/runwire.d.ts"),
            "application/typescript",
        ),
    ];
    let mut etags = Vec::new();
    for (path, body, mime) in files {
        let first = app.get(path, None).await;
        assert_eq!(first.status(), 200, "{path}");
        let headers = first.headers().clone();
        assert!(
            headers["content-type"].to_str().unwrap().starts_with(mime),
            "{path}"
        );
        assert_eq!(
            headers["cache-control"], "no-cache",
            "{path}: kept, revalidated"
        );
        let etag = headers["etag"].to_str().unwrap().to_string();
        assert!(
            etag.starts_with('"') && etag.ends_with('"'),
            "a strong etag: {etag}"
        );
        assert_eq!(first.text().await.unwrap(), body, "{path}");

        // A reload with the copy it has: 304, no body, the same validator.
        for validator in [etag.clone(), format!("W/{etag}"), format!("\"x\", {etag}")] {
            let again = app.get_with(path, &[("if-none-match", &validator)]).await;
            assert_eq!(again.status(), 304, "{path} with {validator}");
            assert_eq!(again.headers()["etag"], etag.as_str());
            assert_eq!(again.bytes().await.unwrap().len(), 0);
        }
        // An older copy gets the file.
        let stale = app.get_with(path, &[("if-none-match", "\"0000\"")]).await;
        assert_eq!(stale.status(), 200);
        assert_eq!(stale.text().await.unwrap(), body);
        etags.push(etag);
    }
    etags.dedup();
    assert_eq!(etags.len(), 3, "each file its own validator");
    let module = app.get("/runwire.mjs", None).await;
    assert_eq!(module.headers()["x-typescript-types"], "/runwire.d.ts");
}

#[tokio::test]
async fn module_scripts_load_cross_origin_only_from_the_allowed_origins() {
    let (app, _, _) = app().await;
    let allowed = app.get_with("/runwire.mjs", &[("origin", ORIGIN)]).await;
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.headers()["access-control-allow-origin"], ORIGIN);
    let etag = allowed.headers()["etag"].to_str().unwrap().to_string();
    let revalidated = app
        .get_with(
            "/runwire.mjs",
            &[("origin", ORIGIN), ("if-none-match", &etag)],
        )
        .await;
    assert_eq!(revalidated.status(), 304);
    assert_eq!(
        revalidated.headers()["access-control-allow-origin"],
        ORIGIN,
        "a 304 to a module script needs CORS too"
    );
    let other = app
        .get_with("/runwire.mjs", &[("origin", "https://evil.example.net")])
        .await;
    assert!(other.headers().get("access-control-allow-origin").is_none());

    // The client sends its token in a header: the preflight of a stream allows it.
    let preflight = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/v1/streams?runs=1"))
        .header("origin", ORIGIN)
        .header("access-control-request-method", "GET")
        .header(
            "access-control-request-headers",
            "authorization, last-event-id",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    let allowed_headers = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    for header in ["authorization", "last-event-id"] {
        assert!(allowed_headers.contains(header), "{allowed_headers}");
    }
}

#[tokio::test]
async fn get_session_names_the_user_of_the_credentials_and_sets_nothing() {
    let (app, w, t) = app().await;
    let resp = app.get("/v1/session", Some(&t)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("set-cookie").is_none());
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["user_id"], w.owner);
    assert!(body["expires_at"].as_u64().unwrap() > 0);

    let member = app.get("/v1/session", Some(&token(w.member))).await;
    let body: serde_json::Value = member.json().await.unwrap();
    assert_eq!(body["user_id"], w.member);

    // The session cookie names its user the same way.
    let cookie = format!("runwire_token={}", token(w.readonly));
    let via_cookie = app.get_with("/v1/session", &[("cookie", &cookie)]).await;
    let body: serde_json::Value = via_cookie.json().await.unwrap();
    assert_eq!(body["user_id"], w.readonly);

    for bad in [None, Some("not.a.token")] {
        let refused = app.get("/v1/session", bad).await;
        assert_eq!(refused.status(), 401);
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
}

/// An explicit token (`Authorization`, then `access_token`) names the caller; the session
/// cookie only stands in when there is none. A page in token mode must not be served as
/// whoever last logged in on the same browser, nor be refused for a stale or garbage cookie.
#[tokio::test]
async fn an_explicit_token_wins_over_the_session_cookie() {
    let (app, w, _) = app().await;
    let user_of = |resp: reqwest::Response| async move {
        assert_eq!(resp.status(), 200);
        let body: serde_json::Value = resp.json().await.unwrap();
        body["user_id"].as_i64().unwrap()
    };
    let readonly_cookie = format!("runwire_token={}", token(w.readonly));
    let query = format!("/v1/session?access_token={}", token(w.member));

    let by_query = app.get_with(&query, &[("cookie", &readonly_cookie)]).await;
    assert_eq!(
        user_of(by_query).await,
        w.member,
        "access_token beats the cookie"
    );

    let bearer = format!("Bearer {}", token(w.owner));
    let by_header = app
        .get_with(
            &query,
            &[("cookie", &readonly_cookie), ("authorization", &bearer)],
        )
        .await;
    assert_eq!(
        user_of(by_header).await,
        w.owner,
        "Authorization beats both"
    );

    // Without an explicit token the cookie still authenticates.
    let by_cookie = app
        .get_with("/v1/session", &[("cookie", &readonly_cookie)])
        .await;
    assert_eq!(user_of(by_cookie).await, w.readonly);

    // A garbage or expired cookie does not spoil a valid token, on JSON and stream paths.
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    for cookie in ["runwire_token=garbage", "runwire_token=a.b.c; theme=dark"] {
        let session = app.get_with(&query, &[("cookie", cookie)]).await;
        assert_eq!(user_of(session).await, w.member, "{cookie}");
        let json = format!("/v1/runs/{run}?access_token={}", token(w.owner));
        let resp = app.get_with(&json, &[("cookie", cookie)]).await;
        assert_eq!(resp.status(), 200, "{cookie}");
        let stream = format!("/v1/runs/{run}/events?access_token={}", token(w.owner));
        let resp = app.get_with(&stream, &[("cookie", cookie)]).await;
        assert_eq!(resp.status(), 200, "{cookie}");
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
    }
    // A garbage cookie alone is still a 401, and so is a bad explicit token beside a good
    // cookie: the explicit one is what the caller meant.
    let garbage = app
        .get_with("/v1/session", &[("cookie", "runwire_token=garbage")])
        .await;
    assert_eq!(garbage.status(), 401);
    let bad_query = app
        .get_with(
            "/v1/session?access_token=garbage",
            &[("cookie", &readonly_cookie)],
        )
        .await;
    assert_eq!(bad_query.status(), 401);
}
