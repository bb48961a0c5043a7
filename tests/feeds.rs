//! Multiplexed streams and the workspace feed (issue: dashboards and browsers).

mod common;

use common::*;

#[tokio::test]
async fn multiplexed_stream_snapshots_updates_and_ends_when_all_terminal() {
    let (app, w, t) = TestApp::seeded().await;
    let a = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
    let b = create_run(app.pool(), w.workspace, None, "queued").await;
    let pack = create_pack(app.pool(), w.workspace, w.tenant, "generating").await;
    let path = format!("/v1/streams?runs={a},{b}&review_pack_tenants={}", w.tenant);
    let mut s = app.sse(&path, &t).await;
    assert_eq!(s.status, 200);
    let s1 = s.expect("snapshot").await;
    let s2 = s.expect("snapshot").await;
    let s3 = s.expect("snapshot").await;
    assert_eq!(
        (s1.data["id"].as_i64(), s2.data["id"].as_i64()),
        (Some(a), Some(b))
    );
    assert_eq!(s3.data["type"], "review_pack");
    assert!(
        s1.id.is_empty() && s2.id.is_empty() && !s3.id.is_empty(),
        "only the last snapshot carries the position"
    );

    set_run(app.pool(), a, "status = 'completed'").await;
    let u = s.expect("update").await;
    assert_eq!(
        (u.data["id"].as_i64(), u.data["terminal"].as_bool()),
        (Some(a), Some(true))
    );
    set_pack(app.pool(), pack, "status = 'ready'").await;
    assert_eq!(s.expect("update").await.data["pack"]["status"], "ready");
    set_run(app.pool(), b, "status = 'running'").await;
    assert_eq!(s.expect("update").await.data["status"], "running");
    set_run(app.pool(), b, "status = 'failed'").await;
    assert_eq!(s.expect("update").await.data["status"], "failed");
    s.expect_end("terminal").await;

    // Reconnecting at the final position gets 204; the same set opened fresh ends at once.
    let again = Sse::open(&app.http, &app.url(&path), Some(&t), s.last_id.as_deref()).await;
    assert_eq!(again.status, 204);
    let mut fresh = app.sse(&path, &t).await;
    for _ in 0..3 {
        fresh.expect("snapshot").await;
    }
    fresh.expect_end("terminal").await;
}

#[tokio::test]
async fn multiplexed_stream_refuses_as_a_whole_and_validates_lists() {
    let (app, w, _) = TestApp::seeded().await;
    let (mine, tenantless, elsewhere) = runs_each_way(app.pool(), &w).await;
    let hundred: Vec<String> = (1..=101).map(|i| i.to_string()).collect();
    let cases = [
        (
            format!("/v1/streams?runs={mine},{tenantless}"),
            w.member,
            403,
        ),
        (
            format!("/v1/streams?runs={tenantless},{elsewhere}"),
            w.owner,
            404,
        ),
        (
            format!(
                "/v1/streams?runs={tenantless}&review_pack_tenants={}",
                w.tenant
            ),
            w.readonly,
            403,
        ),
        (
            format!(
                "/v1/streams?runs={tenantless}&review_pack_tenants={}",
                w.tenant_b
            ),
            w.owner,
            404,
        ),
        ("/v1/streams".to_string(), w.owner, 400),
        ("/v1/streams?runs=".to_string(), w.owner, 400),
        ("/v1/streams?runs=1,abc".to_string(), w.owner, 400),
        ("/v1/streams?runs=1,,2".to_string(), w.owner, 400),
        (
            "/v1/streams?review_pack_tenants=-3".to_string(),
            w.owner,
            400,
        ),
        (
            format!("/v1/streams?runs={}", hundred.join(",")),
            w.owner,
            400,
        ),
    ];
    for (path, user, want) in cases {
        let resp = app.get(&path, Some(&token(user))).await;
        assert_eq!(resp.status().as_u16(), want, "{path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(body["error"]["code"].is_string());
    }
    assert_eq!(
        app.get(&format!("/v1/streams?runs={mine}"), None)
            .await
            .status(),
        401
    );
}

#[tokio::test]
async fn workspace_feed_shows_only_visible_runs_and_never_ends_on_terminal() {
    let (app, w, t) = TestApp::seeded().await;
    let visible = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
    let tenantless = create_run(app.pool(), w.workspace, None, "queued").await;
    let hidden = create_run(app.pool(), w.workspace, Some(w.tenant_b), "running").await;
    let finished = create_run(app.pool(), w.workspace, Some(w.tenant), "completed").await;

    let mut owner = app
        .sse(&format!("/v1/workspaces/{}/runs/events", w.workspace), &t)
        .await;
    let mut member = app
        .sse(
            &format!("/v1/workspaces/{}/runs/events", w.workspace),
            &token(w.member),
        )
        .await;
    let snap = owner.expect("snapshot").await;
    assert_eq!(snap.data["type"], "workspace_runs");
    assert_eq!(snap.data["workspace_id"], w.workspace);
    let ids = run_ids(&snap);
    assert!(
        ids.contains(&visible) && ids.contains(&tenantless),
        "{ids:?}"
    );
    assert!(
        !ids.contains(&hidden),
        "runs of other tenants must never appear"
    );
    assert_eq!(ids.len(), 2, "only active runs");
    let msnap = member.expect("snapshot").await;
    let mids = run_ids(&msnap);
    assert_eq!(mids, vec![tenantless]);

    // A change to a hidden run sends nothing; the next visible change is what arrives.
    set_run(app.pool(), hidden, "status = 'completed'").await;
    let created = create_run(app.pool(), w.workspace, Some(w.tenant), "queued").await;
    let mut u = owner.expect("update").await;
    if u.data["id"] == finished {
        // The notification of a run that finished just before the feed opened may reach the
        // watcher after the snapshot was read: the feed then reports it (as finished) once.
        assert_eq!(u.data["terminal"], true);
        u = owner.expect("update").await;
    }
    assert_eq!(u.data["id"], created);
    set_run(app.pool(), visible, SUCCEEDED).await;
    let done = owner.expect("update").await;
    assert_eq!(
        (done.data["id"].as_i64(), done.data["terminal"].as_bool()),
        (Some(visible), Some(true))
    );
    // Still open after terminal runs: the feed goes on.
    set_run(app.pool(), tenantless, "status = 'running'").await;
    assert_eq!(owner.expect("update").await.data["id"], tenantless);
    // The member sees the tenantless run only.
    let mu = member.expect("update").await;
    assert_eq!(mu.data["id"], tenantless);

    // Non-members get 404.
    let resp = app
        .get(
            &format!("/v1/workspaces/{}/runs/events", w.workspace),
            Some(&token(w.outsider)),
        )
        .await;
    assert_eq!(resp.status(), 404);
    assert_eq!(app.status("/v1/workspaces/abc/runs/events", &t).await, 400);
}

/// The feed carries everything a dashboard shows: runs finished in the last day (so "recently
/// finished" is filled on load), and the review-pack card of every tenant whose packs the
/// user may view, pushed as packs change — no stream per card, no timer.
/// The next update that is not a late duplicate: in NOTIFY mode a change that committed
/// before a feed's snapshot may be re-read and published after it (its notification was
/// still on its way), and is sent again — the same state, harmless to a client that
/// replaces what it shows. Only runs of `before` (written before the snapshot) are skipped.
async fn next_update_but_late_duplicates(feed: &mut Sse, before: &[i64]) -> Msg {
    loop {
        let u = feed.expect("update").await;
        let late = u.data["type"] == "operation_run" && before.iter().any(|id| u.data["id"] == *id);
        if !late {
            return u;
        }
    }
}

#[tokio::test]
async fn workspace_feed_carries_recent_runs_and_review_pack_cards() {
    let (app, w, t) = TestApp::seeded().await;
    let finished = create_run(app.pool(), w.workspace, Some(w.tenant), "completed").await;
    set_run(
        app.pool(),
        finished,
        "completed_at = now() - interval '1 hour'",
    )
    .await;
    let old = create_run(app.pool(), w.workspace, None, "failed").await;
    set_run(
        app.pool(),
        old,
        "completed_at = now() - interval '25 hours'",
    )
    .await;
    let hidden = create_run(app.pool(), w.workspace, Some(w.tenant_b), "completed").await;
    let pack = create_pack(app.pool(), w.workspace, w.tenant, "generating").await;
    let path = format!("/v1/workspaces/{}/runs/events", w.workspace);
    let mut owner = app.sse(&path, &t).await;
    let mut readonly = app.sse(&path, &token(w.readonly)).await;

    let snap = owner.expect("snapshot").await;
    let ids = |key: &str, field: &str| -> Vec<i64> {
        snap.data[key]
            .as_array()
            .unwrap_or_else(|| panic!("no {key} in {:?}", snap.data))
            .iter()
            .map(|r| r[field].as_i64().unwrap())
            .collect()
    };
    assert_eq!(
        ids("recently_finished", "id"),
        vec![finished],
        "not {old}, not {hidden}"
    );
    assert_eq!(ids("review_packs", "tenant_id"), vec![w.tenant]);
    assert_eq!(snap.data["review_packs"][0]["pack"]["id"], pack);
    // A readonly tenant member sees the tenant's runs but not its review packs.
    let rsnap = readonly.expect("snapshot").await;
    assert_eq!(rsnap.data["review_packs"], serde_json::json!([]));
    assert_eq!(rsnap.data["recently_finished"][0]["id"], finished);

    set_pack(app.pool(), pack, "status = 'ready'").await;
    // (A run's change that committed before the snapshot may still be on its way, NOTIFY
    // mode: a late duplicate, not what this test is about.)
    let u = next_update_but_late_duplicates(&mut owner, &[finished, old, hidden]).await;
    assert_eq!(
        (u.data["type"].as_str(), u.data["pack"]["status"].as_str()),
        (Some("review_pack"), Some("ready"))
    );
    // A newer pack replaces the card, on the same stream.
    let newer = create_pack(app.pool(), w.workspace, w.tenant, "queued").await;
    let u = owner.expect("update").await;
    assert_eq!(u.data["pack"]["id"], newer);
    set_pack(app.pool(), newer, "status = 'generating'").await;
    assert_eq!(
        owner.expect("update").await.data["pack"]["status"],
        "generating"
    );
    // The readonly member got none of it: their next message is a run's change.
    let run = create_run(app.pool(), w.workspace, Some(w.tenant), "queued").await;
    for feed in [&mut readonly, &mut owner] {
        let u = next_update_but_late_duplicates(feed, &[finished, old, hidden]).await;
        assert_eq!(u.data["id"], run, "{u:?}");
    }
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains(r#"runwire_streams_opened_total{kind="workspace"} 2"#),
        "{metrics}"
    );
}

/// A feed that cannot look at the changes it receives (its decision is stale and the
/// database does not answer the re-check) holds at most a bounded number of them; beyond,
/// it forgets them and sends a fresh snapshot once it can, as it does when it falls behind.
#[tokio::test]
async fn a_feed_waiting_for_a_decision_holds_a_bounded_backlog_then_sends_a_snapshot() {
    let (app, w, t) = TestApp::seeded_with(|s| s.query_timeout_secs = 1).await;
    let elsewhere: i64 = sqlx::query_scalar(&format!(
        "INSERT INTO tenants (workspace_id, name) VALUES ({}, 'Elsewhere') RETURNING id::int8",
        w.other_workspace
    ))
    .fetch_one(app.pool())
    .await
    .unwrap();
    let mut feed = app
        .sse(&format!("/v1/workspaces/{}/runs/events", w.workspace), &t)
        .await;
    assert!(run_ids(&feed.expect("snapshot").await).is_empty());
    // The re-check reads the workspace's memberships: a host migration holds them.
    let migration = app.lock("workspace_memberships").await;
    // An access change of the owner that changes nothing they see here: the feed's decision
    // goes stale and cannot be made again while the table is held.
    app.exec(&format!(
        "INSERT INTO tenant_memberships (tenant_id, user_id, role) VALUES ({elsewhere}, {}, 'owner')",
        w.owner
    ))
    .await;
    // More changes than a feed may hold, a few at a time (fewer than its broadcast holds).
    const RUNS: usize = 360;
    for _ in 0..RUNS / 30 {
        app.exec(&format!(
            "INSERT INTO operation_runs (workspace_id, tenant_id, type, status)
             SELECT {}, NULL, 'inventory.sync', 'running' FROM generate_series(1, 30)",
            w.workspace
        ))
        .await;
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    migration.rollback().await.unwrap();
    // Once decided: at most the bound of updates, then a snapshot with every run.
    let mut updates = 0;
    loop {
        let msg = feed.expect_any().await;
        match msg.event.as_str() {
            "update" => updates += 1,
            "snapshot" => {
                assert_eq!(run_ids(&msg).len(), RUNS, "the snapshot holds every run");
                break;
            }
            other => panic!("unexpected {other}: {msg:?}"),
        }
        assert!(updates <= 256, "{updates} updates held and sent");
    }
}
