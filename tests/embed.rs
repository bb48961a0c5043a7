//! Scoped tokens and the embeddable view (issue 17): a token with `scope: workspace:W` opens
//! that workspace's feed and JSON snapshot and nothing else, wherever a token is accepted;
//! the user's membership still gates it; `/embed/workspaces/{id}` is framed only by
//! `--embed-origins` and sets no cookie.

mod common;

use common::*;
use runwire::{TokenScope, Tokens};

fn scoped(user: i64, workspace: i64) -> String {
    Tokens::new(SECRET.as_bytes()).issue_scoped(user, 3600, Some(TokenScope::Workspace(workspace)))
}

fn feed(workspace: i64) -> String {
    format!("/v1/workspaces/{workspace}/runs/events")
}

#[tokio::test]
async fn a_scoped_token_opens_its_workspace_feed_and_snapshot_and_nothing_else() {
    let (app, w, _) = TestApp::seeded().await;
    let run = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
    // The owner is a member of both workspaces, so every refusal below is the scope's.
    app.exec(&format!(
        "INSERT INTO workspace_memberships VALUES ({}, {}, 'owner')",
        w.other_workspace, w.owner
    ))
    .await;
    let t = scoped(w.owner, w.workspace);

    let mut s = app.sse(&feed(w.workspace), &t).await;
    assert_eq!(s.status, 200);
    assert_eq!(run_ids(&s.expect("snapshot").await), vec![run]);
    set_run(app.pool(), run, SUCCEEDED).await;
    assert_eq!(s.expect("update").await.data["terminal"], true);
    assert_eq!(
        app.status(&format!("/v1/workspaces/{}", w.workspace), &t)
            .await,
        200
    );
    // EventSource's way of sending it works the same.
    let by_query = format!("{}?access_token={t}", feed(w.workspace));
    assert_eq!(app.get(&by_query, None).await.status(), 200);

    let refused = [
        feed(w.other_workspace),
        format!("/v1/workspaces/{}", w.other_workspace),
        run_events(run),
        format!("/v1/runs/{run}"),
        pack_events(w.tenant),
        format!("/v1/tenants/{}/review-pack", w.tenant),
        format!("/v1/streams?runs={run}"),
        format!("{}?access_token={t}", feed(w.other_workspace)),
    ];
    for path in &refused {
        let resp = app.get(path, Some(&t)).await;
        assert_eq!(resp.status(), 403, "{path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden", "{path}");
    }
    // Nor can it become a session cookie.
    let session = app.session(&t).await;
    assert_eq!(session.status(), 403);
    assert!(session.headers().get("set-cookie").is_none());
    // The scope does not widen anything either: an id in no workspace is still 400 first.
    assert_eq!(app.status("/v1/workspaces/abc/runs/events", &t).await, 400);
}

#[tokio::test]
async fn removing_the_membership_revokes_the_embed() {
    let (app, w, _) = TestApp::seeded().await;
    let t = scoped(w.member, w.workspace);
    let mut s = app.watch(&feed(w.workspace), &t).await;
    app.exec(&format!(
        "DELETE FROM workspace_memberships WHERE workspace_id = {} AND user_id = {}",
        w.workspace, w.member
    ))
    .await;
    s.expect_end("forbidden").await;
    assert_eq!(app.status(&feed(w.workspace), &t).await, 404);
    // A scope never grants what the user lacks: the outsider's scoped token is a 404.
    let outsider = scoped(w.outsider, w.workspace);
    assert_eq!(app.status(&feed(w.workspace), &outsider).await, 404);
}

#[tokio::test]
async fn hand_minted_scopes_runwire_does_not_know_are_refused() {
    let (app, w, _) = TestApp::seeded().await;
    let exp = runwire::now_secs() + 600;
    for scope in [
        serde_json::json!("tenant:1"),
        serde_json::json!(format!(
            "workspace:{} workspace:{}",
            w.workspace, w.other_workspace
        )),
        serde_json::json!(["workspace:1"]),
    ] {
        let claims = serde_json::json!({"sub": w.owner.to_string(), "exp": exp, "scope": scope});
        let t = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(app.status(&feed(w.workspace), &t).await, 401, "{scope}");
    }
    // The host's own claim, as the PHP example mints it, works.
    let claims = serde_json::json!({
        "sub": w.owner.to_string(), "exp": exp, "iat": exp - 600,
        "scope": format!("workspace:{}", w.workspace),
    });
    let t = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(app.status(&feed(w.workspace), &t).await, 200);
}

#[tokio::test]
async fn the_embed_page_is_framed_only_by_the_listed_origins_and_sets_no_cookie() {
    let app = TestApp::configured(|s| {
        s.embed_origins = vec![
            "https://grafana.example.com".into(),
            "http://127.0.0.1:3000".into(),
        ];
    })
    .await;
    let resp = app.get("/embed/workspaces/1", None).await;
    assert_eq!(resp.status(), 200);
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(header("content-type").unwrap(), "text/html; charset=utf-8");
    let csp = header("content-security-policy").unwrap();
    assert!(
        csp.ends_with("frame-ancestors 'self' https://grafana.example.com http://127.0.0.1:3000"),
        "{csp}"
    );
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(header("referrer-policy").unwrap(), "no-referrer");
    assert!(header("set-cookie").is_none());
    assert!(
        header("x-frame-options").is_none(),
        "frame-ancestors decides, alone"
    );
    assert!(resp.text().await.unwrap().contains("runwire-feed"));
    // A bad id is the API's 400; the page needs no token (it carries its own).
    assert_eq!(app.get("/embed/workspaces/abc", None).await.status(), 400);
    assert_eq!(app.get("/embed/workspaces/0", None).await.status(), 400);
}

#[tokio::test]
async fn an_embed_origin_that_is_not_an_origin_stops_start_up() {
    let db = TestDb::new().await;
    let mut s = settings();
    s.embed_origins = vec![
        "https://ok.example".into(),
        "grafana.example.com/path".into(),
    ];
    let built = runwire::Server::build(s, db.pool.clone()).await;
    let err = built.err().expect("refused").to_string();
    assert!(err.contains("--embed-origins"), "{err}");
}

/// The PHP in docs/api.md that mints a scoped token, as a host would run it.
fn documented_php_minter() -> String {
    let api = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md")).unwrap();
    let blocks: Vec<&str> = api
        .split("```php\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    let minter = blocks
        .iter()
        .find(|b| b.contains("function runwireEmbedToken"));
    minter
        .expect("docs/api.md shows how to mint a scoped token in PHP")
        .to_string()
}

#[tokio::test]
async fn the_documented_php_minter_makes_a_token_runwire_scopes() {
    let (app, w, _) = TestApp::seeded().await;
    let program = format!(
        "{}\necho runwireEmbedToken({}, {}, 600);",
        documented_php_minter(),
        w.owner,
        w.workspace
    );
    let out = std::process::Command::new("php")
        .args(["-r", &program])
        .env("RUNWIRE_JWT_SECRET", SECRET)
        .output()
        .expect("php-cli (Debian's php-cli, which the browser tests need too)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = String::from_utf8(out.stdout).unwrap();
    assert_eq!(app.status(&feed(w.workspace), &t).await, 200);
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    assert_eq!(app.status(&run_events(run), &t).await, 403);
}
