//! Running it: token expiry, caps, cookies and CORS, lifetimes, database faults (through a
//! proxy the test can break), lost listeners, shutdown, migrations, and the test harness.

mod common;

use common::*;
use runwire::Tokens;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_stream_ends_when_its_token_expires() {
    let (app, w, _) = TestApp::seeded().await;
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    let short = Tokens::new(SECRET.as_bytes()).issue(w.owner, 2);
    let mut s = app.watch(&run_events(run), &short).await;
    let started = Instant::now();
    s.expect_end("token_expired").await;
    assert!(started.elapsed() <= Duration::from_secs(3));
}

#[tokio::test]
async fn per_user_and_global_stream_caps() {
    let (app, w, t) = TestApp::seeded_with(|s| {
        s.max_streams_per_user = 2;
        s.max_streams = 3;
    })
    .await;
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    let path = format!("/v1/runs/{run}/events");
    let mut a = app.sse(&path, &t).await;
    let mut b = app.sse(&path, &t).await;
    a.expect("snapshot").await;
    b.expect("snapshot").await;
    let refused = app.get(&path, Some(&t)).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams");

    let mut c = app.sse(&path, &token(w.member)).await;
    c.expect("snapshot").await;
    let full = app.get(&path, Some(&token(w.readonly))).await;
    assert_eq!(full.status(), 503);
    assert!(full.headers().contains_key("retry-after"));

    // A closed stream frees its slot.
    drop(a);
    let mut reopened = None;
    for _ in 0..200 {
        let s = app.sse(&path, &t).await;
        if s.status == 200 {
            reopened = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reopened.expect("slot freed").expect("snapshot").await;
}

#[tokio::test]
async fn session_cookie_and_cors_allow_list() {
    let (app, w, t) = TestApp::seeded_with(|s| {
        s.allowed_origins = vec!["https://admin.example.com".into()];
        s.cookie_secure = true;
    })
    .await;
    let run = create_run(app.pool(), w.workspace, None, "running").await;

    let resp = app
        .http
        .post(app.url("/v1/session"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    for part in [
        "runwire_token=",
        "HttpOnly",
        "SameSite=Lax",
        "Secure",
        "Path=/",
        "Max-Age=",
    ] {
        assert!(cookie.contains(part), "{cookie} lacks {part}");
    }
    let pair = cookie.split(';').next().unwrap();
    let via_cookie = app
        .http
        .get(app.url(&format!("/v1/runs/{run}")))
        .header("cookie", pair)
        .send()
        .await
        .unwrap();
    assert_eq!(via_cookie.status(), 200);
    assert_eq!(
        app.http
            .post(app.url("/v1/session"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let bad = app
        .http
        .post(app.url("/v1/session"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);

    let allowed = app
        .http
        .get(app.url(&format!("/v1/runs/{run}")))
        .header("origin", "https://admin.example.com")
        .header("cookie", pair)
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://admin.example.com"
    );
    assert_eq!(
        allowed.headers()["access-control-allow-credentials"],
        "true"
    );
    let other = app
        .http
        .get(app.url(&format!("/v1/runs/{run}")))
        .header("origin", "https://evil.example.net")
        .send()
        .await
        .unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn streams_close_without_end_after_their_lifetime() {
    let (app, w, t) = TestApp::seeded_with(|s| s.max_stream_lifetime_secs = 1).await;
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    let mut s = app.watch(&run_events(run), &t).await;
    let started = Instant::now();
    s.expect_closed().await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

/// The host finishes the run and the pack, as it would write them.
async fn finish(app: &TestApp, run: i64, pack: i64) {
    set_run(app.pool(), run, SUCCEEDED).await;
    set_pack(app.pool(), pack, "status = 'ready'").await;
}

/// Both streams show what [`finish`] wrote, then end.
async fn expect_finished(rs: &mut Sse, ps: &mut Sse) {
    assert_eq!(rs.expect("update").await.data["status"], "completed");
    rs.expect_end("terminal").await;
    assert_eq!(ps.expect("update").await.data["pack"]["status"], "ready");
    ps.expect_end("terminal").await;
}

#[tokio::test]
async fn database_outage_keeps_streams_open_and_catches_up() {
    let db = TestDb::new().await;
    let proxy = proxy_to(&db).await;
    let via_proxy = db.options.clone().host("127.0.0.1").port(proxy.addr.port());
    let mut settings = settings();
    settings.keepalive_secs = 1;
    let app = TestApp::on(db, start_with(via_proxy, settings).await);
    let w = seed(app.pool()).await;
    let t = token(w.owner);
    let run = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
    let pack = create_pack(app.pool(), w.workspace, w.tenant, "generating").await;
    let mut rs = app.watch(&run_events(run), &t).await;
    let mut ps = app.watch(&pack_events(w.tenant), &t).await;

    proxy.cut();
    // Not ready, but up; new streams are refused quickly instead of hanging.
    app.await_status("/readyz", 503).await;
    assert_eq!(app.get("/healthz", None).await.status(), 200);
    let asked = Instant::now();
    assert_eq!(app.status(&run_events(run), &t).await, 503);
    assert!(asked.elapsed() < Duration::from_secs(5));

    // The host app keeps working against the database directly; runwire cannot see it.
    finish(&app, run, pack).await;

    proxy.restore();
    expect_finished(&mut rs, &mut ps).await;
    app.await_status("/readyz", 200).await;
}

#[tokio::test]
async fn every_runwire_backend_terminated_while_runs_finish() {
    let (app, w, t) = TestApp::seeded().await;
    let run = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
    let pack = create_pack(app.pool(), w.workspace, w.tenant, "generating").await;
    let mut rs = app.watch(&run_events(run), &t).await;
    let mut ps = app.watch(&pack_events(w.tenant), &t).await;
    let feed_path = format!("/v1/workspaces/{}/runs/events", w.workspace);
    let mut feed = app.watch(&feed_path, &t).await;

    // What a Postgres restart does to runwire: every one of its connections goes away — the
    // listener and the whole query pool — while the host keeps writing.
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'runwire'",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert!(killed >= 2, "listener and pool connections: {killed}");
    finish(&app, run, pack).await;

    expect_finished(&mut rs, &mut ps).await;
    // The feed catches up too: the terminal update, or a fresh snapshot without the run.
    let msg = feed.next().await.expect("feed still open");
    match msg.event.as_str() {
        "update" => assert_eq!(msg.data["terminal"], true),
        "snapshot" => assert!(msg.data["runs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["id"] != run)),
        other => panic!("unexpected {other}"),
    }
    // And new streams work again.
    let again = app.get(&format!("/v1/runs/{run}"), Some(&t)).await;
    assert_eq!(again.status(), 200);
}

#[tokio::test]
async fn a_silently_dead_listener_is_replaced_within_the_heartbeat() {
    let db = TestDb::new().await;
    let proxy = proxy_to(&db).await;
    let mut settings = settings();
    settings.heartbeat_secs = 2;
    // Only the LISTEN connection goes through the proxy.
    settings.listener_database_url = listener_through(&proxy, &db);
    let running = start(&db, settings).await;
    let app = TestApp::on(db, running);
    let w = seed(app.pool()).await;
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    let mut s = app.watch(&run_events(run), &token(w.owner)).await;
    // A round trip through the listener first: everything notified so far (the seeding) has
    // been received, so nothing is still on its way when the connection goes quiet.
    set_run(app.pool(), run, r#"summary_counts = '{"processed": 1}'"#).await;
    s.expect("update").await;
    let old_pid = app.running.listener_backend_pid().unwrap();

    proxy.blackhole(); // no FIN, no RST: the socket just goes quiet
    proxy.wait_all_stalled().await;
    let cut_at = Instant::now();
    set_run(app.pool(), run, "status = 'completed'").await;
    let u = s.expect("update").await;
    assert_eq!(u.data["status"], "completed");
    assert!(
        cut_at.elapsed() < Duration::from_secs(5),
        "detected in {:?}",
        cut_at.elapsed()
    );
    s.expect_end("terminal").await;
    assert_ne!(app.running.listener_backend_pid(), Some(old_pid));
}

#[tokio::test]
async fn graceful_shutdown_with_many_open_streams() {
    let (app, w, _) = TestApp::seeded().await;
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    let mut settings_note = Vec::new();
    let mut streams = Vec::new();
    for i in 0..40 {
        let s = app.sse(&run_events(run), &token(w.owner + (i % 3))).await;
        settings_note.push(s.status);
        streams.push(s);
    }
    for s in streams.iter_mut().filter(|s| s.status == 200) {
        s.expect("snapshot").await;
    }
    let TestApp { db, running, .. } = app;
    let started = Instant::now();
    running.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    for s in streams.iter_mut().filter(|s| s.status == 200) {
        s.expect_closed().await;
    }
    db.drop_db().await;
}

/// The harness itself: a test that panics still drops its database.
#[tokio::test]
async fn a_panicking_test_leaves_no_database() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let panicked = tokio::spawn(async move {
        let db = TestDb::new().await;
        tx.send(db.name.clone()).unwrap();
        panic!("a failing test");
    })
    .await;
    assert!(panicked.is_err());
    let name = rx.await.unwrap();
    let admin = TestDb::new().await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&admin.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "{name} was left behind");
}

/// NOTIFY mode: a card's re-read blocked by a host migration holding `review_packs` is
/// retried without dropping the listener, and run updates go on meanwhile. (WAL mode:
/// `wal.rs`, `a_locked_review_packs_does_not_stall_run_streams`.)
#[tokio::test]
async fn a_locked_review_packs_does_not_stall_run_updates() {
    if mode() == runwire::ChangeSource::Wal {
        eprintln!("NOTIFY mode only; the WAL source has its own test");
        return;
    }
    let (app, w, t) = TestApp::seeded_with(|s| s.query_timeout_secs = 1).await;
    let pack = create_pack(app.pool(), w.workspace, w.tenant, "generating").await;
    let mut card = app.watch(&pack_events(w.tenant), &t).await;
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    let mut s = app.watch(&run_events(run), &t).await;
    let pid = app.running.listener_backend_pid().unwrap();
    let migration = app.lock("review_packs").await;
    // A doorbell for the card: its re-read waits on the lock and times out, again and again.
    app.exec(&format!(
        r#"SELECT pg_notify('runwire', '{{"k":"pack","t":{},"w":{}}}')"#,
        w.tenant, w.workspace
    ))
    .await;
    for i in 1..=3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        progress(app.pool(), run, i).await;
        let u = s.expect("update").await;
        assert_eq!(u.data["summary_counts"]["processed"], i);
    }
    assert_eq!(
        app.running.listener_backend_pid(),
        Some(pid),
        "the listener was replaced"
    );
    migration.rollback().await.unwrap();
    // Once the table is free, the card's change arrives.
    set_pack(app.pool(), pack, "status = 'ready'").await;
    assert_eq!(card.expect("update").await.data["pack"]["status"], "ready");
}
