//! A workspace feed on `/v1/streams` (issue 18): items and one feed on one stream, told
//! apart by event name (`snapshot`/`update` for items, `workspace_snapshot`/
//! `workspace_update` for the feed); the access rule exactly as for the separate streams
//! (one refusal for the whole request, re-snapshots, ends); items that finish do not end a
//! stream that carries a feed.

mod common;

use common::*;
use runwire::{TokenScope, Tokens};
use std::collections::HashSet;
use std::time::{Duration, Instant};

const MARK: &str = "leaked";

fn combined(runs: &[i64], tenants: &[i64], workspace: i64) -> String {
    let list = |ids: &[i64]| ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let mut query = vec![];
    if !runs.is_empty() {
        query.push(format!("runs={}", list(runs)));
    }
    if !tenants.is_empty() {
        query.push(format!("review_pack_tenants={}", list(tenants)));
    }
    query.push(format!("workspaces={workspace}"));
    format!("/v1/streams?{}", query.join("&"))
}

fn feed(workspace: i64) -> String {
    format!("/v1/workspaces/{workspace}/runs/events")
}

async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app.get("/metrics", None).await.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// What a message is about: ("item" | "feed", "r" | "p", run id or tenant id).
fn about(msg: &Msg) -> (&'static str, &'static str, i64) {
    let (part, state) = match msg.event.as_str() {
        "snapshot" | "update" => ("item", &msg.data),
        "workspace_update" => ("feed", &msg.data["state"]),
        other => panic!("not about one item: {other} {msg:?}"),
    };
    match state["type"].as_str() {
        Some("operation_run") => (part, "r", state["id"].as_i64().unwrap()),
        Some("review_pack") => (part, "p", state["tenant_id"].as_i64().unwrap()),
        _ => panic!("unexpected state {msg:?}"),
    }
}

/// A feed opened first, read until it has shown each of these runs and cards in a state
/// `done` accepts: then the watcher has published them, and a stream opened now cannot get
/// a late re-read of them (NOTIFY mode: a change committed before a snapshot whose
/// notification comes after it).
async fn settle(witness: &mut Sse, mut wanted: Vec<(&str, i64)>) {
    while !wanted.is_empty() {
        let msg = witness.expect_any().await;
        if msg.event != "update" {
            continue;
        }
        let key = match msg.data["type"].as_str() {
            Some("operation_run") => ("r", msg.data["id"].as_i64().unwrap()),
            _ => ("p", msg.data["tenant_id"].as_i64().unwrap()),
        };
        wanted.retain(|w| *w != key);
    }
}

/// Reads until every one of `wanted` (part, kind, id) has a message that `done` accepts;
/// fails on `end` or on a message no part of `wanted` explains.
async fn collect(s: &mut Sse, wanted: &[(&str, &str, i64)], done: impl Fn(&Msg) -> bool) {
    let mut left: HashSet<(&str, &str, i64)> = wanted.iter().copied().collect();
    while !left.is_empty() {
        let msg = s.expect_any().await;
        assert_ne!(msg.event, "end", "{msg:?}");
        let key = about(&msg);
        assert!(wanted.contains(&key), "{msg:?} is none of {wanted:?}");
        if done(&msg) {
            left.remove(&key);
        }
    }
}

fn state(msg: &Msg) -> &serde_json::Value {
    match msg.event.as_str() {
        "workspace_update" => &msg.data["state"],
        _ => &msg.data,
    }
}

#[tokio::test]
async fn items_and_a_feed_share_one_stream_told_apart_and_it_outlives_its_items() {
    let (app, w, t) = TestApp::seeded().await;
    let mut witness = app.sse(&feed(w.workspace), &t).await;
    witness.expect("snapshot").await;
    let a = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
    let b = create_run(app.pool(), w.workspace, None, "queued").await;
    let pack = create_pack(app.pool(), w.workspace, w.tenant, "generating").await;
    settle(&mut witness, vec![("r", a), ("r", b), ("p", w.tenant)]).await;

    let path = combined(&[a, b], &[w.tenant], w.workspace);
    let mut s = app.sse(&path, &t).await;
    assert_eq!(s.status, 200);
    // The items' snapshots in the order asked, as without a feed, then the feed's.
    let snaps = [
        s.expect("snapshot").await,
        s.expect("snapshot").await,
        s.expect("snapshot").await,
    ];
    assert_eq!(
        snaps.each_ref().map(about),
        [("item", "r", a), ("item", "r", b), ("item", "p", w.tenant)]
    );
    assert!(snaps[0].id.is_empty() && snaps[1].id.is_empty() && !snaps[2].id.is_empty());
    let f = s.expect("workspace_snapshot").await;
    assert_eq!(
        (f.data["type"].as_str(), f.data["workspace_id"].as_i64()),
        (Some("workspace_runs"), Some(w.workspace))
    );
    assert_eq!(run_ids(&f), vec![b, a], "newest first");
    assert_eq!(f.data["review_packs"][0]["pack"]["id"], pack);
    // (The parser reports the last id seen, as EventSource does.)
    assert_eq!(f.id, snaps[2].id, "feed events set no id");
    // On the wire: the feed's pace (items an hour old would say 10 s), and no `id:` of its own.
    set_run(app.pool(), a, "created_at = now() - interval '1 hour'").await;
    set_run(app.pool(), b, "created_at = now() - interval '1 hour'").await;
    let raw = app.raw_start(&path, &t, "event: workspace_snapshot").await;
    assert!(raw.starts_with("retry: 1000\n\n"), "{raw}");
    let feed_frame = &raw[raw.find("event: workspace_snapshot").unwrap()..];
    assert!(!feed_frame.contains("\nid:"), "{feed_frame}");
    collect(
        &mut s,
        &[
            ("item", "r", a),
            ("item", "r", b),
            ("feed", "r", a),
            ("feed", "r", b),
        ],
        |m| {
            state(m)["created_at"] != snaps[0].data["created_at"]
                && state(m)["created_at"] != snaps[1].data["created_at"]
        },
    )
    .await;
    // One stream, counted as a set's.
    assert_eq!(
        metric(&app, r#"runwire_streams_open{kind="multi"}"#).await,
        1.0
    );
    assert_eq!(
        metric(&app, r#"runwire_streams_open{kind="workspace"}"#).await,
        1.0,
        "the witness"
    );

    // A change reaches both parts, each in its own words.
    progress(app.pool(), a, 1).await;
    let processed = |m: &Msg| state(m)["summary_counts"]["processed"] == 1;
    collect(&mut s, &[("item", "r", a), ("feed", "r", a)], processed).await;
    // (The feed's update, looked at whole.)
    set_pack(app.pool(), pack, "status = 'ready'").await;
    let (mut feed_pack, mut item_id) = (None, None);
    let ready = |m: &Msg| state(m)["pack"]["status"] == "ready";
    while feed_pack.is_none() || item_id.is_none() {
        let m = s.expect_any().await;
        assert!(ready(&m), "{m:?}");
        match m.event.as_str() {
            "workspace_update" => feed_pack = Some(m),
            _ => item_id = Some(m.id),
        }
    }
    let u = feed_pack.unwrap();
    assert_eq!(u.data["type"], "workspace_update");
    assert_eq!(u.data["workspace_id"], w.workspace);
    assert_eq!(u.data["state"]["tenant_id"], w.tenant);
    assert_eq!(s.last_id, item_id, "the position is the items' alone");

    // Every item finishes: the items get their terminal states, and no `end`: the feed is on.
    set_run(app.pool(), a, SUCCEEDED).await;
    set_run(app.pool(), b, "status = 'failed'").await;
    let terminal = |m: &Msg| state(m)["terminal"] == true;
    collect(
        &mut s,
        &[
            ("item", "r", a),
            ("item", "r", b),
            ("feed", "r", a),
            ("feed", "r", b),
        ],
        terminal,
    )
    .await;
    let final_id = s.last_id.clone().expect("the set's position");

    // Reconnecting at the items' final position: no 204 while a feed is asked for; the
    // items' (terminal) states again, then the feed's snapshot.
    let mut again = Sse::open(&app.http, &app.url(&path), Some(&t), Some(&final_id)).await;
    assert_eq!(again.status, 200);
    for _ in 0..3 {
        assert_eq!(again.expect("snapshot").await.data["terminal"], true);
    }
    let f = again.expect("workspace_snapshot").await;
    assert!(run_ids(&f).is_empty());
    assert_eq!(f.data["recently_finished"].as_array().unwrap().len(), 2);
    // Without the feed, the same set at that position is over: 204, as ever.
    let items_only = format!("/v1/streams?runs={a},{b}&review_pack_tenants={}", w.tenant);
    let items = Sse::open(&app.http, &app.url(&items_only), Some(&t), Some(&final_id)).await;
    assert_eq!(items.status, 204);

    // Both go on with the feed alone: a new run, a newer pack (not an item update: the pack
    // item is over).
    let c = create_run(app.pool(), w.workspace, None, "queued").await;
    for stream in [&mut s, &mut again] {
        let u = stream.expect("workspace_update").await;
        assert_eq!(u.data["state"]["id"], c);
    }
    let newer = create_pack(app.pool(), w.workspace, w.tenant, "queued").await;
    for stream in [&mut s, &mut again] {
        let u = stream.expect("workspace_update").await;
        assert_eq!(u.data["state"]["pack"]["id"], newer);
    }
    // (The raw read's stream goes once the server sees it gone.)
    eventually("two combined streams open", || async {
        metric(&app, r#"runwire_streams_open{kind="multi"}"#).await == 2.0
    })
    .await;
    assert_eq!(
        metric(&app, r#"runwire_streams_closed_total{reason="terminal"}"#).await,
        0.0
    );
    set_run(app.pool(), c, SUCCEEDED).await;
}

#[tokio::test]
async fn a_feed_alone_on_streams_and_scoped_tokens() {
    let (app, w, t) = TestApp::seeded().await;
    let run = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
    let mut s = app
        .sse(&format!("/v1/streams?workspaces={}", w.workspace), &t)
        .await;
    assert_eq!(run_ids(&s.expect("workspace_snapshot").await), vec![run]);
    set_run(app.pool(), run, SUCCEEDED).await;
    loop {
        let u = s.expect("workspace_update").await;
        if u.data["state"]["terminal"] == true {
            break;
        }
    }
    // The member (no tenant) sees nothing of the tenant's runs, here as on the feed.
    let mut m = app
        .sse(
            &format!("/v1/streams?workspaces={}", w.workspace),
            &token(w.member),
        )
        .await;
    assert!(run_ids(&m.expect("workspace_snapshot").await).is_empty());

    // A token scoped to the workspace opens its feed here too, but nothing more.
    let scoped = Tokens::new(SECRET.as_bytes()).issue_scoped(
        w.owner,
        3600,
        Some(TokenScope::Workspace(w.workspace)),
    );
    let mut e = app
        .sse(&format!("/v1/streams?workspaces={}", w.workspace), &scoped)
        .await;
    assert_eq!(e.status, 200);
    e.expect("workspace_snapshot").await;
    for path in [
        combined(&[run], &[], w.workspace),
        combined(&[], &[w.tenant], w.workspace),
        format!("/v1/streams?workspaces={}", w.other_workspace),
    ] {
        let resp = app.get(&path, Some(&scoped)).await;
        assert_eq!(resp.status(), 403, "{path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden", "{path}");
    }
}

#[tokio::test]
async fn a_combined_stream_is_refused_as_a_whole_and_validates_its_lists() {
    let (app, w, _) = TestApp::seeded().await;
    let (mine, tenantless, elsewhere) = runs_each_way(app.pool(), &w).await;
    let ws = w.workspace;
    let hundred = vec![tenantless.to_string(); 100].join(",");
    let cases = [
        // An item refused, the workspace allowed.
        (combined(&[tenantless, mine], &[], ws), w.member, 403),
        (combined(&[tenantless], &[w.tenant], ws), w.readonly, 403),
        (combined(&[elsewhere], &[], ws), w.owner, 404),
        (combined(&[], &[w.tenant_b], ws), w.owner, 404),
        // The items allowed, the workspace not.
        (
            combined(&[tenantless], &[], w.other_workspace),
            w.owner,
            404,
        ),
        (combined(&[], &[], ws), w.outsider, 404),
        // Both refused: 404 before 403.
        (combined(&[mine], &[], w.other_workspace), w.member, 404),
        (
            combined(&[], &[w.tenant], w.other_workspace),
            w.readonly,
            404,
        ),
        // Bad input.
        (
            format!("/v1/streams?workspaces={ws},{}", w.other_workspace),
            w.owner,
            400,
        ),
        (
            format!(
                "/v1/streams?workspaces={ws}&workspaces={}",
                w.other_workspace
            ),
            w.owner,
            400,
        ),
        ("/v1/streams?workspaces=".to_string(), w.owner, 400),
        ("/v1/streams?workspaces=0".to_string(), w.owner, 400),
        ("/v1/streams?workspaces=abc".to_string(), w.owner, 400),
        (
            format!("/v1/streams?runs={tenantless}&workspaces=-{ws}"),
            w.owner,
            400,
        ),
        (
            format!("/v1/streams?runs={hundred}&workspaces={ws}"),
            w.owner,
            400,
        ),
    ];
    let opened = r#"runwire_streams_opened_total{kind="multi"}"#;
    let before = metric(&app, opened).await;
    for (path, user, want) in cases {
        let resp = app.get(&path, Some(&token(user))).await;
        assert_eq!(resp.status().as_u16(), want, "{path}");
        let body = resp.text().await.unwrap();
        let json: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
        assert!(json["error"]["code"].is_string(), "{body}");
        // Nothing of any item or the workspace in a refusal.
        assert_eq!(json.as_object().unwrap().len(), 1, "{body}");
        assert!(
            !body.contains("operation_run") && !body.contains("workspace_runs"),
            "{body}"
        );
    }
    assert_eq!(metric(&app, opened).await, before, "no stream opened");
    let three_workspaces = format!("/v1/streams?workspaces={ws},{ws},{}", w.other_workspace);
    let body: serde_json::Value = app
        .get(&three_workspaces, Some(&token(w.owner)))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 1 workspace"),
        "{body}"
    );
    assert_eq!(app.get(&combined(&[], &[], ws), None).await.status(), 401);
    // Repeats of the one workspace are one.
    let mut s = app
        .sse(
            &format!("/v1/streams?workspaces={ws},{ws}"),
            &token(w.owner),
        )
        .await;
    s.expect("workspace_snapshot").await;
}

/// Makes the owner a member of `tenant` again.
async fn rejoin(app: &TestApp, w: &World) {
    app.exec(&format!(
        "INSERT INTO tenant_memberships VALUES ({}, {}, 'owner')
             ON CONFLICT (tenant_id, user_id) DO UPDATE SET role = 'owner'",
        w.tenant, w.owner
    ))
    .await;
}

/// One round: the owner watches a tenantless run and the feed, which shows a run of the
/// tenant; the owner leaves the tenant and that run gets a marked state (in one transaction,
/// or back to back). The feed sends a fresh snapshot without it, the item goes on, and
/// nothing marked or of that run arrives after the revocation.
async fn revoke_while_updating(app: &TestApp, w: &World, one_transaction: bool) {
    let t = token(w.owner);
    rejoin(app, w).await;
    let run = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
    let other = create_run(app.pool(), w.workspace, None, "running").await;
    let mut s = app.sse(&combined(&[other], &[], w.workspace), &t).await;
    assert_eq!(about(&s.expect("snapshot").await), ("item", "r", other));
    let first = s.expect("workspace_snapshot").await;
    assert!(run_ids(&first).contains(&run));
    let leave = format!(
        "DELETE FROM tenant_memberships WHERE tenant_id = {} AND user_id = {}",
        w.tenant, w.owner
    );
    let mark = format!(
        "UPDATE operation_runs SET outcome = '{MARK}', updated_at = now() WHERE id = {run}"
    );
    if one_transaction {
        let mut tx = app.pool().begin().await.unwrap();
        for sql in [&leave, &mark] {
            sqlx::query(sql).execute(&mut *tx).await.unwrap();
        }
        tx.commit().await.unwrap();
    } else {
        app.exec(&leave).await;
        app.exec(&mark).await;
    }
    let no_leak = |msg: &Msg| {
        let text = msg.data.to_string();
        assert!(
            !text.contains(MARK),
            "leaked a post-revocation state: {msg:?}"
        );
        assert_ne!(msg.event, "end", "{msg:?}");
    };
    loop {
        let msg = s.expect_any().await;
        no_leak(&msg);
        if msg.event == "workspace_snapshot" {
            assert_eq!(run_ids(&msg), vec![other]);
            break;
        }
    }
    // Both finish in one statement: the item gets its terminal state, the feed shows only
    // `other`, and the stream goes on.
    app.exec(&format!(
        "UPDATE operation_runs SET status = 'completed', outcome = 'done' WHERE id IN ({run}, {other})"
    ))
    .await;
    let mut left: HashSet<&str> = ["update", "workspace_update"].into();
    while !left.is_empty() {
        let msg = s.expect_any().await;
        no_leak(&msg);
        assert_eq!(about(&msg).2, other, "only `other`: {msg:?}");
        if state(&msg)["terminal"] == true {
            left.remove(msg.event.as_str());
        }
    }
    assert!(
        s.next_within(Duration::from_millis(50)).await.is_none(),
        "still open, quiet"
    );
}

/// 20 revocations in one transaction with an update of a run the feed shows, and 20 in the
/// transaction just before it: the feed re-snapshots without it, zero leaks, the item goes on.
#[tokio::test]
async fn the_feed_resnapshots_on_lost_access_without_a_leak_while_the_items_go_on() {
    let (app, w, _) = TestApp::seeded().await;
    for one_transaction in [true, false] {
        for _ in 0..20 {
            revoke_while_updating(&app, &w, one_transaction).await;
        }
    }
}

#[tokio::test]
async fn a_combined_stream_ends_on_a_lost_workspace_a_lost_item_and_token_expiry() {
    let (app, w, t) = TestApp::seeded().await;
    // The owner's run in the other workspace stays theirs when they lose this one.
    app.exec(&format!(
        "INSERT INTO workspace_memberships VALUES ({}, {}, 'owner')",
        w.other_workspace, w.owner
    ))
    .await;
    let away = create_run(app.pool(), w.other_workspace, None, "running").await;
    let mut s = app.sse(&combined(&[away], &[], w.workspace), &t).await;
    s.expect("snapshot").await;
    s.expect("workspace_snapshot").await;
    let removed_at = Instant::now();
    app.exec(&format!(
        "DELETE FROM workspace_memberships WHERE workspace_id = {} AND user_id = {}",
        w.workspace, w.owner
    ))
    .await;
    s.expect_end("forbidden").await;
    assert!(
        removed_at.elapsed() < Duration::from_secs(1),
        "ended within a second"
    );
    assert_eq!(
        app.status(&combined(&[away], &[], w.workspace), &t).await,
        404
    );
    assert_eq!(
        app.status(&format!("/v1/streams?runs={away}"), &t).await,
        200
    );

    // An item deleted ends the stream `gone`, as it ends a set (the feed re-snapshots
    // without the run if it sees the delete first).
    let run = create_run(app.pool(), w.other_workspace, None, "running").await;
    let mut s = app.sse(&combined(&[run], &[], w.other_workspace), &t).await;
    s.expect("snapshot").await;
    s.expect("workspace_snapshot").await;
    app.exec(&format!("DELETE FROM operation_runs WHERE id = {run}"))
        .await;
    loop {
        let msg = s.expect_any().await;
        if msg.event == "end" {
            assert_eq!(msg.data["reason"], "gone");
            s.expect_closed().await;
            break;
        }
        assert_eq!(msg.event, "workspace_snapshot", "{msg:?}");
        assert!(!run_ids(&msg).contains(&run));
    }

    // At the token's expiry, whatever the parts.
    let short = Tokens::new(SECRET.as_bytes()).issue(w.owner, 2);
    let mut s = app
        .sse(&combined(&[away], &[], w.other_workspace), &short)
        .await;
    s.expect("snapshot").await;
    s.expect("workspace_snapshot").await;
    let started = Instant::now();
    s.expect_end("token_expired").await;
    assert!(started.elapsed() <= Duration::from_secs(3));
    set_run(app.pool(), away, SUCCEEDED).await;
}
