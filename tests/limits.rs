//! Bounded under abuse (issue 10): every connection, request and query has a limit and a
//! clear answer. Real server, real sockets, real Postgres; start-up is tested on the built
//! binary, reading its log.

mod common;

use common::*;
use futures_util::future::join_all;
use jsonwebtoken::{encode, EncodingKey, Header};
use runwire::now_secs;
use serde_json::{json, Value};
use sqlx::Connection;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn signed(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Asserts the API's error shape and returns the code.
async fn error_code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    assert_eq!(
        resp.headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string()),
        Some("application/json".to_string()),
        "status {status}"
    );
    let body: Value = resp.json().await.expect("JSON body");
    let code = body["error"]["code"]
        .as_str()
        .expect("error.code")
        .to_string();
    assert!(body["error"]["message"].is_string(), "{body}");
    (status, code)
}

/// Sends raw bytes and reads until the server closes (bounded).
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, socket.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one HTTP/1.1 response with a `content-length` body from a kept-alive connection.
async fn read_response(socket: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text;
            }
        }
        let n = tokio::time::timeout(WAIT, socket.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0, "closed before a full response: {text}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";

/// A kept-alive connection that has had one `/healthz` answered.
async fn answered_connection(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(HEALTHZ).await.unwrap();
    let answer = read_response(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    s
}

/// A kept-alive connection that has had one authenticated request answered (by hyper).
async fn authenticated_connection(addr: SocketAddr, token: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET /v1/session HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let answer = read_response(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    s
}

/// Resolves when the server closes the connection (EOF or reset), with how long it took.
async fn closed_within(socket: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit, socket.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("still open after {limit:?}"),
        }
    }
}

// ---- inputs ----

#[tokio::test]
async fn token_timestamps_out_of_range_or_in_the_future_are_401() {
    let (app, w, _) = TestApp::seeded().await;
    let run = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
    let now = now_secs();
    for claims in [
        // Used to panic the request: "overflow when adding duration to instant".
        json!({"sub": w.owner, "exp": 10_000_000_000_000_000_000u64}),
        json!({"sub": w.owner, "exp": now + 600, "nbf": now + 300}),
        json!({"sub": w.owner, "exp": now + 600, "iat": now + 300}),
        json!({"sub": w.owner, "exp": now + 600, "nbf": 1e300}),
    ] {
        let t = signed(claims.clone());
        for path in [format!("/v1/runs/{run}/events"), format!("/v1/runs/{run}")] {
            let resp = app.get(&path, Some(&t)).await;
            assert_eq!(
                error_code(resp).await,
                (401, "unauthorized".into()),
                "{claims} {path}"
            );
        }
    }
    // A token valid until the year 9999 streams normally; nbf/iat a little ahead (clock
    // skew) are fine.
    let far = signed(
        json!({"sub": w.owner, "exp": 253_402_300_799u64, "nbf": now + 30, "iat": now + 30}),
    );
    let mut s = app.sse(&run_events(run), &far).await;
    assert_eq!(s.status, 200);
    s.expect("snapshot").await;
}

#[tokio::test]
async fn every_refusal_is_json_bad_utf8_and_malformed_heads_included() {
    let app = TestApp::spawn().await;
    let t = token(1);
    for path in [
        "/v1/runs/%C0%B1",
        "/v1/runs/%C0%B1/events",
        "/v1/tenants/%FF/review-pack",
        "/v1/workspaces/%C0%B1/runs/events",
    ] {
        let resp = app.get(path, Some(&t)).await;
        assert_eq!(
            error_code(resp).await,
            (400, "bad_request".into()),
            "{path}"
        );
    }
    let resp = app.http.post(app.url("/v1/runs/1")).send().await.unwrap();
    assert_eq!(error_code(resp).await.0, 405);
    // Heads the front cannot parse get the same shape.
    let addr = app.running.addr;
    for head in [
        &b"GET /v1/runs/1/events HTTP/1.1\r\nbad header\r\n\r\n"[..],
        b"GET /v1/runs/\xff/events HTTP/1.1\r\nhost: x\r\n\r\n",
    ] {
        let answer = raw(addr, head).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(
            answer.contains(r#"{"error":{"code":"bad_request""#),
            "{answer}"
        );
    }
    let huge = format!("GET /v1/streams?runs={} HTTP/1.1\r\n", "1,".repeat(10_000));
    let answer = raw(addr, huge.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(answer.contains("application/json"), "{answer}");
    // A complete head past the limit, its end arriving while the head's buffer has little
    // room left: refused all the same (a read must not take more than the limit leaves).
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /v1/streams?runs=1 HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    s.write_all(&head.as_bytes()[..16_000]).await.unwrap();
    // Nothing to await from outside: time for the server to read the first part.
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(&head.as_bytes()[16_000..]).await.unwrap();
    let answer = read_response(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

#[tokio::test]
async fn a_non_bearer_authorization_header_hides_neither_cookie_nor_query_token() {
    let (app, w, t) = TestApp::seeded().await;
    let run = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
    let basic = "Basic dXNlcjpwYXNz"; // what a Basic-auth proxy in front adds
    let cookie = format!("runwire_token={t}");
    let via_cookie = app
        .get_with(
            &format!("/v1/runs/{run}"),
            &[("authorization", basic), ("cookie", &cookie)],
        )
        .await;
    assert_eq!(via_cookie.status(), 200);
    let via_query = app
        .get_with(
            &format!("/v1/runs/{run}/events?access_token={t}"),
            &[("authorization", basic)],
        )
        .await;
    assert_eq!(via_query.status(), 200);
    // A Bearer header is still the one that counts.
    let bad_bearer = app
        .get_with(
            &format!("/v1/runs/{run}?access_token={t}"),
            &[("authorization", "Bearer nope")],
        )
        .await;
    assert_eq!(error_code(bad_bearer).await.0, 401);
}

#[tokio::test]
async fn the_item_limit_counts_ids_as_sent() {
    let (app, w, t) = TestApp::seeded().await;
    let run = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
    let copies = vec![run.to_string(); 5001].join(",");
    let resp = app
        .get(&format!("/v1/streams?runs={copies}"), Some(&t))
        .await;
    assert_eq!(error_code(resp).await, (400, "bad_request".into()));
    let hundred = vec![run.to_string(); 100].join(",");
    let mut s = app.sse(&format!("/v1/streams?runs={hundred}"), &t).await;
    assert_eq!(s.status, 200);
    s.expect("snapshot").await;
}

// ---- connections ----

#[tokio::test]
async fn thousands_of_idle_connections_leave_healthz_and_new_streams_answering() {
    // Held past the auth timeout, which is not what this is about.
    let (app, w, t) = TestApp::seeded_with(|s| s.auth_timeout_secs = 3600).await;
    let run = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
    let addr = app.running.addr;
    // Each connection is two files in this process (both ends), under its 20,000.
    const IDLE: usize = 4000;
    let mut idle = Vec::with_capacity(IDLE);
    for batch in 0..IDLE / 500 {
        // Spread over source addresses, as many clients would be.
        let source = format!("127.0.0.{}:0", 2 + batch % 8);
        let opened = join_all((0..500).map(|_| {
            let source: SocketAddr = source.parse().unwrap();
            async move {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind(source).unwrap();
                let mut s = socket.connect(addr).await.unwrap();
                s.write_all(HEALTHZ).await.unwrap();
                let answer = read_response(&mut s).await;
                assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
                s
            }
        }))
        .await;
        idle.extend(opened);
    }
    let asked = Instant::now();
    assert_eq!(app.get("/healthz", None).await.status(), 200);
    let _s = app.watch(&run_events(run), &t).await;
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "took {:?} with {IDLE} idle connections",
        asked.elapsed()
    );
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    let open: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix("runwire_connections_open "))
        .expect("connections metric")
        .parse()
        .unwrap();
    assert!(open > IDLE, "{open} open connections counted");
    drop(idle);
}

#[tokio::test]
async fn beyond_the_connection_cap_new_connections_are_closed_at_once() {
    let app = TestApp::configured(|s| s.max_connections = Some(20)).await;
    let addr = app.running.addr;
    // Authenticated: unauthenticated ones would be evicted for the new one instead.
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(authenticated_connection(addr, &token(1)).await);
    }
    // The 21st is accepted and closed without a byte.
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let _ = extra.write_all(HEALTHZ).await;
    let took = closed_within(&mut extra, Duration::from_secs(2)).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    // A slot frees as soon as a connection closes.
    held.pop();
    let deadline = Instant::now() + WAIT;
    let metrics = loop {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out).into_owned();
        if text.starts_with("HTTP/1.1 200") {
            break text;
        }
        assert!(Instant::now() < deadline, "no slot freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        metrics.contains("runwire_connections_refused_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_slow_second_head_on_a_kept_alive_connection_is_cut_off() {
    let app = TestApp::configured(|s| s.request_head_timeout_secs = 1).await;
    let s = answered_connection(app.running.addr).await;
    // The second head trickles in, a byte every 200 ms.
    let started = Instant::now();
    let (mut rd, mut wr) = s.into_split();
    let trickle = tokio::spawn(async move {
        for b in HEALTHZ {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut out)).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "second head still read after {took:?}"
    );
    assert!(
        !String::from_utf8_lossy(&out).contains("200 OK"),
        "the slow request was served"
    );
    trickle.abort();
    // The same limit closes a kept-alive connection that sends nothing more.
    let mut quiet = answered_connection(app.running.addr).await;
    closed_within(&mut quiet, Duration::from_secs(3)).await;
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    let app = TestApp::configured(|s| s.idle_timeout_secs = 1).await;
    let mut s = app.connect().await;
    // HTTP/2 with prior knowledge: the preface and an empty SETTINGS frame, then nothing.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let took = closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(900), "closed early: {took:?}");
}

// ---- queries ----

#[tokio::test]
async fn a_locked_runs_table_answers_503_in_time_and_packs_are_not_held_up() {
    let (app, w, t) = TestApp::seeded().await;
    let run = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
    create_pack(app.pool(), w.workspace, w.tenant, "generating").await;
    // A host migration holds the table.
    let migration = app.lock("operation_runs").await;
    let started = Instant::now();
    // Enough run requests, a little apart, to occupy every run query slot.
    let mut runs = Vec::new();
    for i in 0..8 {
        let path = if i % 2 == 0 {
            format!("/v1/runs/{run}")
        } else {
            format!("/v1/runs/{run}/events")
        };
        let (http, url, t) = (app.http.clone(), app.url(&path), t.clone());
        runs.push(tokio::spawn(async move {
            let resp = http.get(url).bearer_auth(t).send().await.unwrap();
            (error_code(resp).await, started.elapsed())
        }));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // Review packs live in another table: they answer at once meanwhile.
    let asked = Instant::now();
    let pack = app
        .get(&format!("/v1/tenants/{}/review-pack", w.tenant), Some(&t))
        .await;
    assert_eq!(pack.status(), 200);
    let _ps = app.watch(&pack_events(w.tenant), &t).await;
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "packs waited {:?}",
        asked.elapsed()
    );
    // Not ready while the table is locked, and it says why.
    let ready = app.get("/readyz", None).await;
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert!(
        body["reason"].as_str().unwrap().starts_with("database"),
        "{body}"
    );
    for r in runs {
        let ((status, code), took) = r.await.unwrap();
        assert_eq!((status, code.as_str()), (503, "database_unavailable"));
        // The query timeout (5 s by default), however long the lock is held.
        assert!(took < Duration::from_secs(6), "answered after {took:?}");
    }
    migration.rollback().await.unwrap();
    assert_eq!(app.status(&format!("/v1/runs/{run}"), &t).await, 200);
}

/// A JSON snapshot reads under the stream caps like a stream's first read, so snapshots
/// cannot pile up reads without bound behind a slow table: beyond the cap, 503 `overloaded`
/// at once, for snapshots and streams alike; the places come back when the reads end.
#[tokio::test]
async fn json_snapshots_take_a_place_under_the_stream_caps_while_they_read() {
    let (app, w, t) = TestApp::seeded_with(|s| s.max_streams = 2).await;
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    let migration = app.lock("operation_runs").await;
    let path = format!("/v1/runs/{run}");
    let held: Vec<_> = (0..2)
        .map(|_| {
            let (http, url, t) = (app.http.clone(), app.url(&path), t.clone());
            tokio::spawn(async move { http.get(url).bearer_auth(t).send().await.unwrap() })
        })
        .collect();
    // Once both places are taken, a third read is refused without waiting for the table.
    let deadline = Instant::now() + WAIT;
    loop {
        let asked = Instant::now();
        let (status, code) = error_code(app.get(&path, Some(&t)).await).await;
        if (status, code.as_str()) == (503, "overloaded") {
            assert!(
                asked.elapsed() < Duration::from_secs(1),
                "{:?}",
                asked.elapsed()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never refused at the cap: {status} {code}"
        );
    }
    let (status, code) = error_code(app.get(&run_events(run), Some(&t)).await).await;
    assert_eq!((status, code.as_str()), (503, "overloaded"));
    migration.rollback().await.unwrap();
    // (A held read may itself have lost its place to one of the loop's.)
    for h in held {
        let status = h.await.unwrap().status().as_u16();
        assert!(status == 200 || status == 503, "{status}");
    }
    assert_eq!(app.status(&path, &t).await, 200);
    let mut s = app.sse(&run_events(run), &t).await;
    s.expect("snapshot").await;
}

#[tokio::test]
async fn a_statement_timeout_elsewhere_is_503_not_500() {
    let (app, w, t) = TestApp::seeded_with(|s| s.query_timeout_secs = 1).await;
    let migration = app.lock("workspaces").await;
    let asked = Instant::now();
    let resp = app
        .get(&format!("/v1/workspaces/{}", w.workspace), Some(&t))
        .await;
    assert_eq!(error_code(resp).await, (503, "database_unavailable".into()));
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    migration.rollback().await.unwrap();
}

#[tokio::test]
async fn database_errors_that_mean_unavailable() {
    use runwire::database_unavailable;
    let db = TestDb::new().await;
    // Statement timeout (57014).
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL statement_timeout = 50")
        .execute(&mut *tx)
        .await
        .unwrap();
    let e = sqlx::query("SELECT pg_sleep(1)")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(database_unavailable(&e), "{e}");
    drop(tx);
    // A missing database (3D000), a role that does not exist (28000), a closed port.
    for url in [
        db.options.clone().database("runwire_no_such_database"),
        db.options.clone().username("runwire_no_such_role"),
        db.options.clone().port(1),
    ] {
        let e = sqlx::PgConnection::connect_with(&url).await.unwrap_err();
        assert!(database_unavailable(&e), "{e}");
    }
    // A backend terminated by an administrator (57P01) or a restart.
    let mut conn = sqlx::PgConnection::connect_with(&db.options).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&db.pool)
        .await
        .unwrap();
    let e = sqlx::query("SELECT 1")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(database_unavailable(&e), "{e}");
    // A bug in a query is not.
    let e = sqlx::query("SELECT nope FROM nowhere")
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert!(!database_unavailable(&e), "{e}");
    db.drop_db().await;
}

#[tokio::test]
async fn while_the_listener_is_down_requests_get_503_at_once() {
    let db = TestDb::new().await;
    let proxy = proxy_to(&db).await;
    let mut settings = settings();
    // Only the LISTEN connection goes through the proxy; queries would still work.
    settings.listener_database_url = listener_through(&proxy, &db);
    let running = start(&db, settings).await;
    let app = TestApp::on(db, running);
    let w = seed(app.pool()).await;
    let run = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
    let t = token(w.owner);
    proxy.cut();
    eventually("the listener to notice", || async {
        !app.running.listener_connected()
    })
    .await;
    for path in [
        format!("/v1/runs/{run}"),
        format!("/v1/runs/{run}/events"),
        format!("/v1/tenants/{}/review-pack", w.tenant),
        format!("/v1/workspaces/{}/runs/events", w.workspace),
    ] {
        let asked = Instant::now();
        let resp = app.get(&path, Some(&t)).await;
        assert_eq!(error_code(resp).await, (503, "database_unavailable".into()));
        assert!(
            asked.elapsed() < Duration::from_millis(300),
            "{path}: {:?}",
            asked.elapsed()
        );
    }
    proxy.restore();
    assert!(app.running.wait_ready(WAIT).await);
    assert_eq!(app.status(&format!("/v1/runs/{run}"), &t).await, 200);
}

// ---- start-up and secrets: the built binary ----

use common::binary::{runwire, strong_secret};

#[tokio::test]
async fn short_secrets_are_refused_by_serve_demo_and_token() {
    let url = ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/x");
    for (args, env) in [
        (
            vec!["serve", "--bind", "127.0.0.1:0"],
            vec![url, ("RUNWIRE_JWT_SECRET", "x")],
        ),
        (
            vec!["demo", "--bind", "127.0.0.1:0"],
            vec![url, ("RUNWIRE_JWT_SECRET", "x")],
        ),
        (
            vec!["token", "--user", "1"],
            vec![("RUNWIRE_JWT_SECRET", "")],
        ),
        (
            vec![
                "token",
                "--user",
                "1",
                "--jwt-secret",
                "thirty-one-bytes-is-not-enough",
            ],
            vec![],
        ),
    ] {
        let (ok, out) = runwire(&args, &env).exit().await;
        assert!(!ok, "{args:?} accepted a short secret");
        assert!(out.contains("at least 32 bytes"), "{args:?}: {out}");
        assert!(out.contains("openssl rand -hex 32"), "{args:?}: {out}");
    }
    let (ok, out) = runwire(&["token", "--user", "7"], &[strong_secret()])
        .exit()
        .await;
    assert!(ok, "{out}");
    assert_eq!(out.split('.').count(), 3, "{out}");
}

#[tokio::test]
async fn start_up_with_fail_fast_exits_with_the_real_cause() {
    let db = TestDb::new().await;
    let base = |o: sqlx::postgres::PgConnectOptions| {
        format!(
            "postgres://{}@{}:{}/{}",
            o.get_username(),
            o.get_host(),
            o.get_port(),
            o.get_database().unwrap_or("postgres")
        )
    };
    for (url, cause) in [
        (base(db.options.clone().port(1)), "Connection refused"),
        (
            base(db.options.clone().database("runwire_no_such_database")),
            "runwire_no_such_database\" does not exist",
        ),
        (
            base(db.options.clone().username("runwire_no_such_role")),
            "runwire_no_such_role\" does not exist",
        ),
        (
            "postgres://postgres@runwire-no-such-host.invalid/x".to_string(),
            "failed to lookup address",
        ),
    ] {
        let p = runwire(
            &["serve", "--bind", "127.0.0.1:0", "--database-fail-fast"],
            &[("DATABASE_URL", &url), strong_secret()],
        );
        let (ok, out) = p.exit().await;
        assert!(!ok, "{url}");
        assert!(out.contains(cause), "{url}: {out}");
        assert!(!out.contains("pool timed out"), "{out}");
    }
    db.drop_db().await;
}

#[tokio::test]
async fn start_up_waits_for_the_database_answering_healthz_and_saying_why_not_ready() {
    // A database that does not exist yet; it appears while runwire waits.
    let name = format!("runwire_test_late_{}", rand::random::<u32>());
    let admin = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    // The database will be new: serve migrates it once it can connect.
    let p = runwire(
        &["serve", "--migrate", "--bind", "127.0.0.1:0"],
        &[("DATABASE_URL", &url), strong_secret()],
    );
    let c = Client::to(p.addr().await);
    p.line("does not exist").await;
    assert_eq!(c.get("/healthz", None).await.status(), 200);
    for _ in 0..3 {
        let r = c.get("/readyz", None).await;
        assert_eq!(r.status(), 503);
        let body: Value = r.json().await.unwrap();
        let reason = body["reason"].as_str().unwrap();
        assert!(reason.contains("does not exist"), "{reason}");
    }
    // Requests that need the database answer 503 at once meanwhile.
    let t = runwire::Tokens::new(SECRET.as_bytes()).issue(1, 60);
    let r = c.get("/v1/runs/1", Some(&t)).await;
    assert_eq!(error_code(r).await, (503, "database_unavailable".into()));
    // Readiness failures are logged once per change, not per probe, and nothing at ERROR.
    assert_eq!(p.count("not ready"), 1, "{:#?}", p.lines.lock().unwrap());
    assert_eq!(
        p.count(r#""level":"ERROR""#),
        0,
        "{:#?}",
        p.lines.lock().unwrap()
    );
    assert!(p.count("cannot connect to Postgres; waiting") >= 1);

    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    c.await_status("/readyz", 200).await;
    // Migrated: the tables are there.
    let r = c.get("/v1/runs/1", Some(&t)).await;
    assert_eq!(error_code(r).await, (404, "not_found".into()));
    drop(p);
    drop_database(&mut conn, &name).await.unwrap();
}

#[tokio::test]
async fn start_up_with_a_wrong_password_logs_the_cause() {
    // The shared cluster trusts local connections and never asks for a password; a private
    // one does.
    let root = std::env::temp_dir().join(format!("runwire-pw-{}", rand::random::<u32>()));
    let pg = runwire::EmbeddedPostgres::start_with_password(&root, "right-password")
        .await
        .expect("a private PostgreSQL (needs its binaries installed)");
    let wrong = pg.url().replace("right-password", "wrong-password");
    // Waiting: the cause is logged on every attempt.
    let waiting = runwire(
        &["serve", "--bind", "127.0.0.1:0"],
        &[("DATABASE_URL", &wrong), strong_secret()],
    );
    let line = waiting.line("cannot connect to Postgres; waiting").await;
    assert!(
        line.contains(r#"password authentication failed for user \"postgres\""#),
        "{line}"
    );
    drop(waiting);
    // Failing fast: the same cause, and the exit.
    let (ok, out) = runwire(
        &["serve", "--bind", "127.0.0.1:0", "--database-fail-fast"],
        &[("DATABASE_URL", &wrong), strong_secret()],
    )
    .exit()
    .await;
    assert!(!ok);
    assert!(out.contains("password authentication failed"), "{out}");
    drop(pg);
    let _ = std::fs::remove_dir_all(root);
}

// ---- malformed heads ----

/// httparse takes a bare LF as a line end and hyper does not: such heads used to get no
/// answer on every path the front hands to hyper.
#[tokio::test]
async fn a_bare_lf_head_gets_a_json_400_on_every_path() {
    let app = TestApp::spawn().await;
    let t = token(1);
    for head in [
        "GET /healthz HTTP/1.1\nhost: x\n\n".to_string(),
        "GET /v1/runs/1 HTTP/1.1\r\nhost: x\n\r\n".to_string(),
        format!("GET /v1/runs/1 HTTP/1.1\nauthorization: Bearer {t}\n\n"),
        format!("GET /v1/runs/1/events HTTP/1.1\nauthorization: Bearer {t}\n\n"),
        "GET /v1/streams?runs=1 HTTP/1.1\r\nhost: x\r\n\n".to_string(),
    ] {
        let answer = raw(app.running.addr, head.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{head:?}: {answer:?}");
        assert!(
            answer.contains(r#"{"error":{"code":"bad_request""#),
            "{head:?}: {answer}"
        );
    }
}

// ---- write deadlines ----

/// `--write-timeout-secs` in these tests.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// What a client that stops reading may hold beyond the write timeout.
const SLACK: Duration = Duration::from_secs(5);

/// Open streams and open connections, as `/metrics` counts them (this request's own
/// connection included).
async fn open_counts(addr: SocketAddr) -> (u64, u64) {
    let text = raw(
        addr,
        b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    let sum = |prefix: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    (
        sum("runwire_streams_open{"),
        sum("runwire_connections_open "),
    )
}

/// Waits until `want` (streams, connections) is what `/metrics` sees; returns how long.
async fn counts_become(addr: SocketAddr, want: (u64, u64), limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let counts = open_counts(addr).await;
        if counts == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{counts:?} (streams, connections) open after {limit:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A connection with a small receive buffer that sends `request` and never reads.
async fn never_reading(addr: SocketAddr, request: &[u8]) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    s
}

/// Large states written to a client that stops reading: 12 MB in all.
const STATES: usize = 24;

/// A large state: summary_counts padded to 512 KB.
async fn large_update(app: &TestApp, run: i64, n: usize) {
    let pad = format!("{n}{}", "x".repeat(512 * 1024));
    set_run(
        app.pool(),
        run,
        &format!(r#"summary_counts = '{{"pad": "{pad}"}}'"#),
    )
    .await;
}

#[derive(Clone, Copy, Debug)]
enum Path {
    /// The front's own stream path: events, then keep-alives only.
    Events,
    /// The same, ending with a terminal state: the `end` event and the terminator.
    End,
    /// A stream served by hyper over HTTP/1.1 (a request with a body length goes to hyper).
    Hyper1,
    /// A stream served by hyper over HTTP/2.
    Hyper2,
}

/// A client opens a stream on `path` and stops reading while large states are written:
/// its stream and its connection are gone within the write timeout and a few seconds.
async fn stops_reading(path: Path) {
    let (app, w, t) = TestApp::seeded_with(|s| {
        s.write_timeout_secs = WRITE_TIMEOUT.as_secs();
        s.keepalive_secs = 1;
        // An HTTP/2 connection whose stream was given up goes when nothing moves on it.
        s.idle_timeout_secs = 2;
    })
    .await;
    let addr = app.running.addr;
    let run = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
    let events = run_events(run);
    let request = match path {
        Path::Events | Path::End => {
            format!("GET {events} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {t}\r\n\r\n")
                .into_bytes()
        }
        Path::Hyper1 => format!(
            "GET {events} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {t}\r\ncontent-length: 0\r\n\r\n"
        )
        .into_bytes(),
        Path::Hyper2 => [h2::PREFACE.to_vec(), h2::get(&events, &t)].concat(),
    };
    let _client = never_reading(addr, &request).await;
    counts_become(addr, (1, 2), WAIT).await;
    // More than the kernel's buffers hold (tcp_wmem's maximum is 4 MB by default), so writes
    // must wait for the client.
    for n in 0..STATES {
        large_update(&app, run, n).await;
    }
    if matches!(path, Path::End) {
        set_run(app.pool(), run, SUCCEEDED).await;
    }
    let took = counts_become(addr, (0, 1), WRITE_TIMEOUT + SLACK + Duration::from_secs(1)).await;
    eprintln!("{path:?}: stream and connection gone {took:?} after the last update");
    assert!(took <= WRITE_TIMEOUT + SLACK, "{path:?}: {took:?}");
}

#[tokio::test]
async fn a_client_that_stops_reading_frees_its_slot_events_then_keepalives() {
    stops_reading(Path::Events).await
}

#[tokio::test]
async fn a_client_that_stops_reading_frees_its_slot_end_event() {
    stops_reading(Path::End).await
}

#[tokio::test]
async fn a_client_that_stops_reading_frees_its_slot_hyper_http1() {
    stops_reading(Path::Hyper1).await
}

#[tokio::test]
async fn a_client_that_stops_reading_frees_its_slot_hyper_http2() {
    stops_reading(Path::Hyper2).await
}

/// Shutdown ends every stream at once; a client that stopped reading (with the default
/// 30 s write timeout) must not hold it.
#[tokio::test]
async fn shutdown_is_not_held_by_clients_that_stop_reading() {
    let (app, w, t) = TestApp::seeded().await;
    let addr = app.running.addr;
    let run = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
    let events = run_events(run);
    let front = format!("GET {events} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {t}\r\n\r\n");
    let hyper = format!(
        "GET {events} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {t}\r\ncontent-length: 0\r\n\r\n"
    );
    let _a = never_reading(addr, front.as_bytes()).await;
    let _b = never_reading(addr, hyper.as_bytes()).await;
    counts_become(addr, (2, 3), WAIT).await;
    for n in 0..STATES {
        large_update(&app, run, n).await;
    }
    let TestApp { db, running, .. } = app;
    let started = Instant::now();
    running.shutdown().await;
    let took = started.elapsed();
    // Held, shutdown gives up after its 3 s grace; not held, it takes the connections' 1 s.
    assert!(took < Duration::from_millis(2500), "shutdown took {took:?}");
    drop(db);
}

// ---- authentication deadline and eviction ----

/// Unauthenticated connections go at the auth timeout whatever they send: HTTP/2 PINGs, or
/// public requests (which are served meanwhile). Authenticated ones stay.
#[tokio::test]
async fn unauthenticated_connections_are_closed_at_the_auth_timeout() {
    let (app, w, t) = TestApp::seeded_with(|s| s.auth_timeout_secs = 1).await;
    let addr = app.running.addr;
    let run = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
    let pinging = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(h2::PREFACE).await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 1024];
        for n in 0.. {
            tokio::select! {
                r = s.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { break },
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if s.write_all(&h2::ping(n)).await.is_err() { break }
                }
            }
            assert!(started.elapsed() < WAIT);
        }
        started.elapsed()
    });
    let public = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let mut served = 0;
        loop {
            if s.write_all(HEALTHZ).await.is_err() {
                break;
            }
            let mut buf = [0u8; 4096];
            match tokio::time::timeout(WAIT, s.read(&mut buf)).await.unwrap() {
                Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 200") => served += 1,
                _ => break,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (started.elapsed(), served)
    });
    let mut authed = authenticated_connection(addr, &t).await;
    let mut stream = app.watch(&run_events(run), &t).await;
    let pinged_for = pinging.await.unwrap();
    let (public_for, served) = public.await.unwrap();
    for took in [pinged_for, public_for] {
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
            "{took:?}"
        );
    }
    assert!(served >= 3, "{served} public requests served");
    tokio::time::sleep(Duration::from_millis(500)).await;
    authed.write_all(HEALTHZ).await.unwrap();
    let answer = read_response(&mut authed).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    progress(app.pool(), run, 1).await;
    stream.expect("update").await;
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("runwire_connections_auth_timeouts_total 2"),
        "{metrics}"
    );
}

/// Trading a token for the session cookie is a request with accepted credentials like any
/// other: its connection keeps its slot past the auth timeout.
#[tokio::test]
async fn a_connection_that_created_a_session_stays_past_the_auth_timeout() {
    let (app, _w, t) = TestApp::seeded_with(|s| s.auth_timeout_secs = 1).await;
    let mut s = TcpStream::connect(app.running.addr).await.unwrap();
    let request = format!(
        "POST /v1/session HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {t}\r\ncontent-length: 0\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let answer = read_response(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Past the timeout with its spread (1 to 1.5 s) and a sweep's period: nothing to await,
    // the point is that nothing happens.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.write_all(HEALTHZ).await.unwrap();
    let answer = read_response(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "closed: {answer:?}");
}

/// With the cap full of unauthenticated connections from one address, a client from
/// another gets its stream every time (the flood's oldest connections make room), and the
/// cap holds. Repeated: eviction races with the new connection's authentication.
#[tokio::test]
async fn at_the_cap_unauthenticated_connections_make_room() {
    const CAP: usize = 10;
    const ROUNDS: usize = 25;
    let (app, w, t) = TestApp::seeded_with(|s| s.max_connections = Some(CAP)).await;
    let addr = app.running.addr;
    let run = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
    let mut slow = Vec::new();
    for round in 0..ROUNDS {
        // Twice the cap, all connected before the client: the server accepts in order, so
        // the cap is full of them when the client comes, and at least CAP + 1 evictions.
        let mut flood = Vec::new();
        for _ in 0..2 * CAP {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            flood.push(socket.connect(addr).await.unwrap());
        }
        let started = Instant::now();
        let mut s = app.sse(&run_events(run), &t).await;
        s.expect("snapshot").await;
        let took = started.elapsed();
        if took > Duration::from_secs(1) {
            slow.push((round, took));
        }
    }
    assert!(slow.is_empty(), "slow: {slow:?}");
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
            .trim()
            .parse()
            .unwrap()
    };
    let evicted = counter("runwire_connections_evicted_total ");
    assert!(evicted >= (ROUNDS * (CAP + 1)) as u64, "{evicted} evicted");
    assert_eq!(counter("runwire_connections_refused_total "), 0);
    let (_, open) = open_counts(addr).await;
    assert!(open <= CAP as u64, "{open} open");
}
