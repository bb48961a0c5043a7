//! The stream contract against a real Postgres and the real server: lifecycles, events, ids,
//! the 204 rule, retry hints, the access table, keep-alives, slow clients.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test]
async fn run_streams_its_lifecycle_then_ends() {
    let (app, w, t) = TestApp::seeded().await;
    let run = create_run(app.pool(), w.workspace, Some(w.tenant), "queued").await;
    let mut s = app.sse(&run_events(run), &t).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.headers["content-type"], "text/event-stream");
    assert_eq!(s.headers["cache-control"], "no-cache");
    assert_eq!(s.headers["x-accel-buffering"], "no");

    let snap = s.expect("snapshot").await;
    assert_eq!(snap.data["type"], "operation_run");
    assert_eq!(snap.data["id"], run);
    assert_eq!(snap.data["status"], "queued");
    assert_eq!(snap.data["terminal"], false);
    assert_eq!(snap.data["run_type"], "sync");
    assert_eq!(snap.data["tenant_id"], w.tenant);
    assert!(is_id_of(&snap.id, &snap.data["version"]), "{}", snap.id);
    for key in [
        "workspace_id",
        "outcome",
        "summary_counts",
        "created_at",
        "started_at",
        "completed_at",
        "updated_at",
    ] {
        assert!(snap.data.get(key).is_some(), "missing {key}");
    }

    set_run(app.pool(), run, "status = 'running', started_at = now()").await;
    let u = s.expect("update").await;
    assert_eq!(u.data["status"], "running");
    assert!(u.data["started_at"].is_string());

    set_run(
        app.pool(),
        run,
        r#"summary_counts = '{"total": 10, "processed": 4}'"#,
    )
    .await;
    let u2 = s.expect("update").await;
    assert_eq!(u2.data["summary_counts"]["processed"], 4);
    assert!(u2.data["version"].as_i64() > u.data["version"].as_i64());
    assert!(is_id_of(&u2.id, &u2.data["version"]));

    set_run(app.pool(), run, SUCCEEDED).await;
    let done = s.expect("update").await;
    assert_eq!(done.data["status"], "completed");
    assert_eq!(done.data["outcome"], "succeeded");
    assert_eq!(done.data["terminal"], true);
    s.expect_end("terminal").await;
}

#[tokio::test]
async fn retry_hint_comes_first_and_follows_age() {
    let (app, w, t) = TestApp::seeded().await;
    for (age_secs, want) in [(0, 1000), (30, 5000), (3600, 10000)] {
        let run = create_run(app.pool(), w.workspace, None, "running").await;
        set_run(
            app.pool(),
            run,
            &format!("created_at = now() - interval '{age_secs} seconds'"),
        )
        .await;
        let text = app.raw_start(&run_events(run), &t, "event: snapshot").await;
        assert!(
            text.starts_with(&format!("retry: {want}\n\n")),
            "{age_secs}s: {text}"
        );
    }
}

#[tokio::test]
async fn review_pack_goes_generating_to_ready() {
    let (app, w, t) = TestApp::seeded().await;
    let pack = create_pack(app.pool(), w.workspace, w.tenant, "queued").await;
    let mut s = app.sse(&pack_events(w.tenant), &t).await;
    assert_eq!(s.status, 200);
    let snap = s.expect("snapshot").await;
    assert_eq!(snap.data["type"], "review_pack");
    assert_eq!(snap.data["tenant_id"], w.tenant);
    assert_eq!(snap.data["terminal"], false);
    assert_eq!(snap.data["pack"]["id"], pack);
    assert_eq!(snap.data["pack"]["status"], "queued");

    set_pack(app.pool(), pack, "status = 'generating'").await;
    let u = s.expect("update").await;
    assert_eq!(u.data["pack"]["status"], "generating");
    assert_ne!(u.id, snap.id);

    set_pack(
        app.pool(),
        pack,
        "status = 'ready', generated_at = now(), expires_at = now() + interval '30 days'",
    )
    .await;
    let r = s.expect("update").await;
    assert_eq!(r.data["pack"]["status"], "ready");
    assert_eq!(r.data["terminal"], true);
    assert!(r.data["pack"]["generated_at"].is_string());
    s.expect_end("terminal").await;
}

#[tokio::test]
async fn pack_stream_follows_a_newer_pack() {
    let (app, w, t) = TestApp::seeded().await;
    let old = create_pack(app.pool(), w.workspace, w.tenant, "generating").await;
    let mut s = app.sse(&pack_events(w.tenant), &t).await;
    assert_eq!(s.expect("snapshot").await.data["pack"]["id"], old);
    let newer = create_pack(app.pool(), w.workspace, w.tenant, "queued").await;
    let u = s.expect("update").await;
    assert_eq!(u.data["pack"]["id"], newer);
    set_pack(app.pool(), old, "status = 'failed'").await; // not the latest any more: no event
    set_pack(app.pool(), newer, "status = 'ready'").await;
    let r = s.expect("update").await;
    assert_eq!(r.data["pack"]["id"], newer);
    assert_eq!(r.data["pack"]["status"], "ready");
    s.expect_end("terminal").await;
}

#[tokio::test]
async fn terminal_on_connect_no_pack_and_unknown_status() {
    let (app, w, t) = TestApp::seeded().await;

    let done = create_run(app.pool(), w.workspace, Some(w.tenant), "completed").await;
    let mut s = app.sse(&run_events(done), &t).await;
    assert_eq!(s.expect("snapshot").await.data["terminal"], true);
    s.expect_end("terminal").await;

    let mut s = app.sse(&pack_events(w.tenant), &t).await;
    let snap = s.expect("snapshot").await;
    assert_eq!(snap.data["pack"], serde_json::Value::Null);
    assert_eq!(snap.data["terminal"], true);
    s.expect_end("terminal").await;

    let weird = create_run(app.pool(), w.workspace, None, "paused_by_host").await;
    let mut s = app.sse(&run_events(weird), &t).await;
    assert_eq!(s.expect("snapshot").await.data["terminal"], true);
    s.expect_end("terminal").await;

    // An active run that moves to a status runwire does not know ends too.
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    let mut s = app.watch(&run_events(run), &t).await;
    set_run(app.pool(), run, "status = 'cancelled_by_magic'").await;
    assert_eq!(s.expect("update").await.data["terminal"], true);
    s.expect_end("terminal").await;
}

#[tokio::test]
async fn reconnect_after_terminal_gets_204_like_eventsource() {
    let (app, w, t) = TestApp::seeded().await;
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    let url = app.url(&run_events(run));
    let mut s = Sse::open(&app.http, &url, Some(&t), None).await;
    s.expect("snapshot").await;
    set_run(app.pool(), run, "status = 'completed', outcome = 'failed'").await;
    s.expect("update").await;
    s.expect_end("terminal").await;
    // What EventSource does next: reconnect with the last id it saw.
    let last = s.last_id.clone().expect("an id was sent");
    let again = Sse::open(&app.http, &url, Some(&t), Some(&last)).await;
    assert_eq!(again.status, 204);
    // A stale or malformed Last-Event-ID is ignored: the client gets the state again.
    for stale in ["1", "garbage", "", "99999999999999999999999"] {
        let mut s = Sse::open(&app.http, &url, Some(&t), Some(stale)).await;
        assert_eq!(s.status, 200, "{stale}");
        assert_eq!(s.expect("snapshot").await.data["terminal"], true);
        s.expect_end("terminal").await;
    }
    // Packs: the same, with their own ids.
    let pack = create_pack(app.pool(), w.workspace, w.tenant, "ready").await;
    let purl = app.url(&pack_events(w.tenant));
    let mut s = Sse::open(&app.http, &purl, Some(&t), None).await;
    assert_eq!(s.expect("snapshot").await.data["pack"]["id"], pack);
    s.expect_end("terminal").await;
    let again = Sse::open(&app.http, &purl, Some(&t), s.last_id.as_deref()).await;
    assert_eq!(again.status, 204);
}

#[tokio::test]
async fn access_table_for_streams_and_json() {
    let (app, w, t) = TestApp::seeded().await;
    let (tenant_run, tenantless, other_run) = runs_each_way(app.pool(), &w).await;
    create_pack(app.pool(), w.workspace, w.tenant, "generating").await;

    let cases: Vec<(String, Option<String>, u16)> = vec![
        // runs
        (format!("/v1/runs/{tenant_run}"), Some(t.clone()), 200),
        (
            format!("/v1/runs/{tenant_run}"),
            Some(token(w.readonly)),
            200,
        ),
        (format!("/v1/runs/{tenant_run}"), Some(token(w.member)), 403),
        (
            format!("/v1/runs/{tenant_run}"),
            Some(token(w.outsider)),
            404,
        ),
        (format!("/v1/runs/{tenantless}"), Some(token(w.member)), 200),
        (format!("/v1/runs/{other_run}"), Some(t.clone()), 404),
        ("/v1/runs/999999".into(), Some(t.clone()), 404),
        (format!("/v1/runs/{tenant_run}"), None, 401),
        (
            format!("/v1/runs/{tenant_run}"),
            Some("garbage".into()),
            401,
        ),
        (
            format!("/v1/runs/{tenant_run}"),
            Some(Tokens::new(b"wrong").issue(w.owner, 60)),
            401,
        ),
        (
            format!("/v1/runs/{tenant_run}"),
            Some(expired_token(w.owner)),
            401,
        ),
        ("/v1/runs/abc".into(), Some(t.clone()), 400),
        ("/v1/runs/-1".into(), Some(t.clone()), 400),
        (
            "/v1/runs/99999999999999999999999".into(),
            Some(t.clone()),
            400,
        ),
        // review packs
        (
            format!("/v1/tenants/{}/review-pack", w.tenant),
            Some(t.clone()),
            200,
        ),
        (
            format!("/v1/tenants/{}/review-pack", w.tenant),
            Some(token(w.readonly)),
            403,
        ),
        (
            format!("/v1/tenants/{}/review-pack", w.tenant),
            Some(token(w.member)),
            404,
        ),
        (
            format!("/v1/tenants/{}/review-pack", w.tenant),
            Some(token(w.outsider)),
            404,
        ),
        (
            "/v1/tenants/424242/review-pack".into(),
            Some(t.clone()),
            404,
        ),
        (format!("/v1/tenants/{}/review-pack", w.tenant), None, 401),
        ("/v1/tenants/abc/review-pack".into(), Some(t.clone()), 400),
        ("/v1/tenants/-5/review-pack".into(), Some(t.clone()), 400),
    ];
    for (path, tok, want) in cases {
        for p in [path.clone(), stream_path(&path)] {
            let resp = app.get(&p, tok.as_deref()).await;
            assert_eq!(resp.status().as_u16(), want, "{p}");
            if want != 200 {
                assert_eq!(resp.headers()["content-type"], "application/json", "{p}");
                let body: serde_json::Value = resp.json().await.unwrap();
                assert!(body["error"]["code"].is_string(), "{p}: {body}");
                assert!(body["error"]["message"].is_string(), "{p}: {body}");
            }
        }
    }
    // The token may also come from the query (EventSource) or the cookie.
    let q = app
        .get(&format!("/v1/runs/{tenant_run}?access_token={}", t), None)
        .await;
    assert_eq!(q.status(), 200);
    let c = app
        .http
        .get(app.url(&format!("/v1/runs/{tenant_run}")))
        .header("cookie", format!("theme=dark; runwire_token={}", t))
        .send()
        .await
        .unwrap();
    assert_eq!(c.status(), 200);
}

fn stream_path(json_path: &str) -> String {
    format!("{json_path}/events")
}

fn expired_token(user: i64) -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let claims = serde_json::json!({ "sub": user.to_string(), "exp": runwire::now_secs() - 10 });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

use runwire::Tokens;

#[tokio::test]
async fn forged_notify_cannot_fake_a_state() {
    let (app, w, t) = TestApp::seeded().await;
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    let mut s = app.sse(&run_events(run), &t).await;
    let snap = s.expect("snapshot").await;
    for payload in [
        format!(
            r#"{{"k":"run","id":{run},"w":{},"v":999,"status":"completed"}}"#,
            w.workspace
        ),
        "not json at all".to_string(),
        r#"{"k":"run"}"#.to_string(),
        r#"{"k":"run","id":"1; DROP TABLE users"}"#.to_string(),
        r#"{"k":"pack","t":-1}"#.to_string(),
        r#"{"k":"member","u":99999999}"#.to_string(),
        "{}".to_string(),
        "".to_string(),
    ] {
        sqlx::query("SELECT pg_notify('runwire', $1)")
            .bind(&payload)
            .execute(app.pool())
            .await
            .unwrap();
    }
    // The next event must be the real change, not anything the forged payloads claimed.
    set_run(app.pool(), run, r#"summary_counts = '{"processed": 1}'"#).await;
    let u = s.expect("update").await;
    assert_eq!(u.data["status"], "running");
    assert_eq!(u.data["terminal"], false);
    let (before, now) = (snap.data["version"].as_i64(), u.data["version"].as_i64());
    match mode() {
        runwire::ChangeSource::Notify => assert_eq!(now, before.map(|v| v + 1)),
        runwire::ChangeSource::Wal => assert!(now > before),
    }
    // And the service is still healthy.
    assert_eq!(app.get("/healthz", None).await.status(), 200);
}

#[tokio::test]
async fn fifty_rapid_updates_arrive_in_order() {
    let (app, w, t) = TestApp::seeded().await;
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    let mut s = app.sse(&run_events(run), &t).await;
    let mut last_version = s.expect("snapshot").await.data["version"].as_i64().unwrap();
    for i in 1..=50 {
        progress(app.pool(), run, i).await;
    }
    // State, not a log: bursts may be coalesced, but never reordered, and the last state
    // always arrives.
    let mut last_processed = 0;
    while last_processed < 50 {
        let u = s.expect("update").await;
        let v = u.data["version"].as_i64().unwrap();
        assert!(
            v > last_version,
            "versions must increase: {v} after {last_version}"
        );
        assert!(is_id_of(&u.id, &u.data["version"]), "{}", u.id);
        last_version = v;
        let p = u.data["summary_counts"]["processed"].as_i64().unwrap();
        assert!(
            p > last_processed,
            "out of order: {p} after {last_processed}"
        );
        last_processed = p;
    }
    set_run(app.pool(), run, "status = 'completed'").await;
    assert_eq!(
        s.expect("update").await.data["summary_counts"]["processed"],
        50
    );
    s.expect_end("terminal").await;
}

#[tokio::test]
async fn listener_killed_while_runs_finish() {
    let (app, w, t) = TestApp::seeded().await;
    let mut runs = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..5 {
        let run = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
        let s = app.watch(&run_events(run), &t).await;
        runs.push(run);
        streams.push(s);
    }
    let pack = create_pack(app.pool(), w.workspace, w.tenant, "generating").await;
    let mut ps = app.watch(&pack_events(w.tenant), &t).await;

    let pid = app
        .running
        .listener_backend_pid()
        .expect("listener connected");
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert!(killed);
    // Finish everything while the listener is (probably) still gone.
    for run in &runs {
        set_run(app.pool(), *run, SUCCEEDED).await;
    }
    set_pack(app.pool(), pack, "status = 'ready'").await;

    for s in streams.iter_mut() {
        // Whatever was missed, the terminal state arrives (possibly straight after a resync).
        let u = s.expect("update").await;
        assert_eq!(u.data["status"], "completed");
        s.expect_end("terminal").await;
    }
    assert_eq!(ps.expect("update").await.data["pack"]["status"], "ready");
    ps.expect_end("terminal").await;
    let new_pid = app.running.listener_backend_pid().expect("reconnected");
    assert_ne!(new_pid, pid);
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("runwire_listener_reconnects_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = TestApp::spawn().await;
    assert_eq!(app.get("/healthz", None).await.status(), 200);
    let ready = app.get("/readyz", None).await;
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["listener"], true);
    assert_eq!(body["database"], true);
    // Which change source runs, and how far behind it is.
    let (source, other) = match mode() {
        runwire::ChangeSource::Wal => ("wal", "notify"),
        runwire::ChangeSource::Notify => ("notify", "wal"),
    };
    assert_eq!(body["changes"]["source"], source);
    assert!(body["changes"]["lag_seconds"].as_f64().unwrap() >= 0.0);
    assert!(body["changes"]["lag_bytes"].as_u64().is_some());
    let m = app.get("/metrics", None).await.text().await.unwrap();
    for name in [
        "runwire_streams_open",
        "runwire_notifications_total",
        "runwire_events_sent_total",
        "runwire_listener_reconnects_total",
        "runwire_change_lag_seconds",
        "runwire_change_lag_bytes",
    ] {
        assert!(m.contains(name), "{name} missing");
    }
    assert!(
        m.contains(&format!("runwire_change_source{{source=\"{source}\"}} 1")),
        "{m}"
    );
    assert!(
        m.contains(&format!("runwire_change_source{{source=\"{other}\"}} 0")),
        "{m}"
    );
    let nf = app.get("/v1/nope", None).await;
    assert_eq!(nf.status(), 404);
    assert_eq!(nf.headers()["content-type"], "application/json");
}

#[tokio::test]
async fn shutdown_ends_open_streams_without_end_event() {
    let (app, w, t) = TestApp::seeded().await;
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    let mut s = app.watch(&run_events(run), &t).await;
    let started = std::time::Instant::now();
    let TestApp { db, running, .. } = app;
    running.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    s.expect_closed().await;
    db.drop_db().await;
}

#[tokio::test]
async fn the_connection_front_guards_its_inputs() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (app, w, t) = TestApp::seeded().await;
    let run = create_run(app.pool(), w.workspace, None, "completed").await;
    let addr = app.running.addr;
    let raw = |req: Vec<u8>| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&req).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).to_string()
    };
    // A huge request head is refused, not buffered without bound.
    let huge = format!(
        "GET /v1/runs/{run}/events HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    assert!(raw(huge.into_bytes()).await.starts_with("HTTP/1.1 431"));
    // Garbage gets a 400 from hyper; HTTP/1.0 and requests with bodies are served by hyper.
    assert!(raw(b"\x16\x03\x01garbage\r\n\r\n".to_vec())
        .await
        .contains("400"));
    let v10 = raw(
        format!("GET /v1/runs/{run} HTTP/1.0\r\nAuthorization: Bearer {t}\r\n\r\n").into_bytes(),
    )
    .await;
    assert!(v10.starts_with("HTTP/1.0 200"), "{v10}");
    let with_body = raw(format!("GET /v1/runs/{run}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi").into_bytes()).await;
    assert!(with_body.starts_with("HTTP/1.1 200"), "{with_body}");
    assert!(with_body.contains("event: end"));
    // A terminal stream over the front: chunked SSE, then the connection closes.
    let sse = raw(format!(
        "GET /v1/runs/{run}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\r\n"
    )
    .into_bytes())
    .await;
    assert!(sse.starts_with("HTTP/1.1 200 OK\r\n"), "{sse}");
    assert!(sse.contains("transfer-encoding: chunked"));
    assert!(
        sse.contains("event: snapshot") && sse.ends_with("0\r\n\r\n"),
        "{sse}"
    );
    // JSON requests keep their connection (hyper, keep-alive): several on one client.
    for _ in 0..3 {
        assert_eq!(app.status(&format!("/v1/runs/{run}"), &t).await, 200);
    }
}

#[tokio::test]
async fn concurrent_opens_batched_together_keep_each_users_answer() {
    let (app, w, _) = TestApp::seeded().await;
    let run = create_run(app.pool(), w.workspace, Some(w.tenant), "completed").await;
    create_pack(app.pool(), w.workspace, w.tenant, "ready").await;
    // Many opens at once land in the same batched access query; answers must not mix users.
    let mut requests = Vec::new();
    for i in 0..120 {
        let (user, want_run, want_pack) = match (i / 2) % 4 {
            0 => (w.owner, 200, 200),
            1 => (w.readonly, 200, 403),
            2 => (w.member, 403, 404),
            _ => (w.outsider, 404, 404),
        };
        let path = if i % 2 == 0 {
            (format!("/v1/runs/{run}/events"), want_run)
        } else {
            (
                format!("/v1/tenants/{}/review-pack/events", w.tenant),
                want_pack,
            )
        };
        let http = app.http.clone();
        let url = app.url(&path.0);
        requests.push(tokio::spawn(async move {
            let status = http
                .get(url)
                .bearer_auth(token(user))
                .send()
                .await
                .unwrap()
                .status();
            (status.as_u16(), path.1, path.0, user)
        }));
    }
    for r in requests {
        let (got, want, path, user) = r.await.unwrap();
        assert_eq!(got, want, "user {user} on {path}");
    }
}

/// Reads raw stream bytes until `needle` appears in what arrives after this call.
async fn read_until<S>(body: &mut S, text: &mut String, needle: &str)
where
    S: futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
{
    use futures_util::StreamExt;
    let from = text.len();
    while !text[from..].contains(needle) {
        let chunk = tokio::time::timeout(WAIT, body.next())
            .await
            .expect("timed out")
            .expect("stream ended")
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn keep_alive_comments_follow_silence_not_events() {
    let (app, w, t) = TestApp::seeded_with(|s| s.keepalive_secs = 1).await;
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    let resp = app.get(&run_events(run), Some(&t)).await;
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    read_until(&mut body, &mut text, "event: snapshot").await;
    // Silence: a comment arrives after about a second.
    read_until(&mut body, &mut text, ":\n\n").await;
    // An event, then silence again: the next comment comes a second after the event.
    set_run(app.pool(), run, r#"summary_counts = '{"processed": 1}'"#).await;
    read_until(&mut body, &mut text, "event: update").await;
    let after_event = std::time::Instant::now();
    read_until(&mut body, &mut text, ":\n\n").await;
    let gap = after_event.elapsed();
    assert!(
        gap >= Duration::from_millis(700),
        "comment too soon after an event: {gap:?}"
    );
    assert!(gap < Duration::from_secs(3), "comment too late: {gap:?}");
}

/// A client that stops reading fills its socket: direct delivery hands its stream to the
/// stream's own task, which writes what is left once the client reads again and then skips
/// to the newest state. Nothing arrives out of order, the final state arrives, then `end`.
#[tokio::test]
async fn a_client_that_stops_reading_gets_the_newest_state_in_order() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (app, w, t) = TestApp::seeded().await;
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket.connect(app.running.addr).await.unwrap();
    let request = format!(
        "GET /v1/runs/{run}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        t
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    while !String::from_utf8_lossy(&raw).contains("event: snapshot") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, conn.read(&mut buf))
            .await
            .expect("snapshot in time")
            .unwrap();
        assert!(n > 0, "closed before the snapshot");
        raw.extend_from_slice(&buf[..n]);
    }

    // Stop reading and update until the server had to hand the stream over.
    let padding = "x".repeat(64 * 1024);
    let update = |i: usize| {
        format!("summary_counts = jsonb_build_object('processed', {i}, 'pad', '{padding}')")
    };
    let mut i = 0;
    while metric(&app, "runwire_direct_handovers_total").await == 0.0 {
        i += 1;
        assert!(i <= 300, "the client's socket never filled");
        set_run(app.pool(), run, &update(i)).await;
    }
    // Read again while more updates arrive (the socket now fills and drains, so deliveries
    // meet partly written frames), then the end: the stream ends by itself.
    let updater = {
        let pool = app.pool().clone();
        async move {
            for _ in 0..40 {
                i += 1;
                set_run(&pool, run, &update(i)).await;
            }
            set_run(&pool, run, "status = 'completed'").await;
            i
        }
    };
    let reader = tokio::time::timeout(WAIT * 4, conn.read_to_end(&mut raw));
    let (i, read) = tokio::join!(updater, reader);
    read.expect("stream ended in time").unwrap();
    let events = sse_events(dechunk(&raw)).await;
    assert_eq!(events[0].0, "snapshot");
    let (last, updates) = events[1..].split_last().expect("updates and end");
    assert_eq!(last.0, "end");
    assert_eq!(last.1["reason"], "terminal");
    let (mut version, mut processed) = (events[0].1["version"].as_i64().unwrap(), 0);
    for (name, data) in updates {
        assert_eq!(name, "update");
        let v = data["version"].as_i64().unwrap();
        let p = data["summary_counts"]["processed"].as_i64().unwrap();
        assert!(
            v > version && p >= processed,
            "out of order: {p} after {processed}"
        );
        (version, processed) = (v, p);
    }
    let final_state = &updates.last().expect("the final state").1;
    assert_eq!(final_state["status"], "completed");
    assert_eq!(final_state["summary_counts"]["processed"], i as i64);
}

async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app.get("/metrics", None).await.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The body of a chunked HTTP/1.1 response.
fn dechunk(raw: &[u8]) -> Vec<u8> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    let (mut rest, mut body) = (&raw[head_end..], Vec::new());
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("size line");
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16)
            .expect("hex chunk size");
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
        rest = &rest[line_end + 2 + size + 2..];
    }
}

/// Many viewers of one run span several delivery batches: every one of them gets each state
/// in order (or skips to a newer one), the terminal state and `end`.
#[tokio::test]
async fn two_hundred_viewers_of_one_run_all_get_the_final_state_and_end() {
    let (app, w, t) = TestApp::seeded_with(|s| s.max_streams_per_user = 500).await;
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    let path = format!("/v1/runs/{run}/events");
    let mut viewers = Vec::new();
    for _ in 0..200 {
        let s = app.watch(&path, &t).await;
        viewers.push(s);
    }
    for i in 1..=3 {
        progress(app.pool(), run, i).await;
    }
    set_run(app.pool(), run, "status = 'completed'").await;
    let checks = viewers.into_iter().map(|mut s| async move {
        let mut last = 0;
        loop {
            let u = s.expect("update").await;
            let p = u.data["summary_counts"]["processed"].as_i64().unwrap();
            assert!(p >= last, "out of order: {p} after {last}");
            last = p;
            if u.data["status"] == "completed" {
                assert_eq!(p, 3);
                break;
            }
        }
        s.expect_end("terminal").await;
    });
    futures_util::future::join_all(checks).await;
}

/// A row that cannot be decoded (a `text` summary_counts that is not JSON) never stalls a
/// stream: it ends with `unreadable`, the JSON snapshot answers 500 naming the column, and
/// the log names it; the feed goes on without it.
#[tokio::test]
async fn an_unreadable_row_ends_its_stream_with_a_reason() {
    let (app, w, t) = TestApp::seeded().await;
    app.exec("ALTER TABLE operation_runs ALTER COLUMN summary_counts TYPE text")
        .await;
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    let fine = create_run(app.pool(), w.workspace, None, "running").await;
    let mut s = app.watch(&run_events(run), &t).await;
    let mut feed = app
        .sse(&format!("/v1/workspaces/{}/runs/events", w.workspace), &t)
        .await;
    feed.expect("snapshot").await;
    set_run(app.pool(), run, "summary_counts = '{not json'").await;
    s.expect_end("unreadable").await;
    let r = app.get(&format!("/v1/runs/{run}"), Some(&t)).await;
    assert_eq!(r.status(), 500);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unreadable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("operation_runs.summary_counts"),
        "{message}"
    );
    // A new stream of it opens and ends at once, with the reason.
    let mut again = app.sse(&run_events(run), &t).await;
    again.expect_end("unreadable").await;
    // The feed replaces its list without the unreadable run, and is not stalled: the next
    // change of another run arrives.
    let snapshot = feed.expect("snapshot").await;
    assert_eq!(run_ids(&snapshot), vec![fine]);
    progress(app.pool(), fine, 5).await;
    let u = feed.expect("update").await;
    assert_eq!(u.data["id"], fine);
}

/// `char(n)` is one of the text types of the column contract (`$table->char('status', 16)`):
/// its padding is not part of the value. A running run stays running whether its state was
/// read by a query or came in a replication message.
#[tokio::test]
async fn char_columns_read_alike_from_queries_and_changes() {
    let (app, w, t) = TestApp::seeded().await;
    app.exec(
        "ALTER TABLE operation_runs ALTER COLUMN status TYPE char(16),
                                    ALTER COLUMN outcome TYPE char(16)",
    )
    .await;
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    let mut s = app.watch(&run_events(run), &t).await;
    progress(app.pool(), run, 1).await;
    let u = s.expect("update").await;
    assert_eq!(
        (&u.data["status"], &u.data["outcome"], &u.data["terminal"]),
        (&"running".into(), &"pending".into(), &false.into())
    );
    set_run(app.pool(), run, SUCCEEDED).await;
    let done = s.expect("update").await;
    assert_eq!(done.data["outcome"], "succeeded");
    s.expect_end("terminal").await;
}

/// A host may partition its largest table. Its rows must stream like any other's: in WAL
/// mode the publication must name the partitioned table, and its changes must arrive under
/// that name, not the partition's.
#[tokio::test]
async fn a_partitioned_operation_runs_streams_like_any_other() {
    let db = TestDb::empty().await;
    let mut conn = db.pool.acquire().await.unwrap();
    runwire::create_host_tables(&mut conn).await.unwrap();
    sqlx::raw_sql(
        "DROP TABLE operation_runs;
         CREATE TABLE operation_runs (
             id BIGSERIAL PRIMARY KEY,
             workspace_id BIGINT NOT NULL,
             tenant_id BIGINT NULL,
             type TEXT NOT NULL,
             status TEXT NOT NULL DEFAULT 'queued',
             outcome TEXT NOT NULL DEFAULT 'pending',
             summary_counts JSONB NOT NULL DEFAULT '{}',
             created_at TIMESTAMPTZ DEFAULT now(),
             started_at TIMESTAMPTZ,
             completed_at TIMESTAMPTZ,
             updated_at TIMESTAMPTZ DEFAULT now()
         ) PARTITION BY RANGE (id);
         CREATE TABLE operation_runs_1 PARTITION OF operation_runs
             FOR VALUES FROM (1) TO (1000000);",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    runwire::migrate(&mut conn, changes()).await.unwrap();
    drop(conn);
    let running = start(&db, settings()).await;
    let app = TestApp::on(db, running);
    let w = seed(app.pool()).await;
    let t = token(w.owner);
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    let mut s = app.watch(&run_events(run), &t).await;
    progress(app.pool(), run, 1).await;
    let u = s.expect("update").await;
    assert_eq!(u.data["summary_counts"]["processed"], 1);
    set_run(app.pool(), run, SUCCEEDED).await;
    s.expect("update").await;
    s.expect_end("terminal").await;
}
