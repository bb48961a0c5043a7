//! Progress and ETA in every run state (issue 17): computed by runwire from the rows, the
//! same in a run's stream, the workspace feed and the JSON snapshot.

mod common;

use common::*;
use serde_json::Value;

/// A run of `tenant` that started `ago` seconds before its last change, at this progress.
async fn started_run(app: &TestApp, w: &World, ago: i64, processed: i64, total: i64) -> i64 {
    let sql = format!(
        "INSERT INTO operation_runs (workspace_id, tenant_id, type, status, started_at,
             updated_at, summary_counts)
         VALUES ({}, {}, 'inventory_sync', 'running', now() - interval '{ago} seconds', now(),
             '{{\"processed\": {processed}, \"total\": {total}, \"failed\": 0}}')
         RETURNING id",
        w.workspace, w.tenant
    );
    sqlx::query_scalar(&sql)
        .fetch_one(app.pool())
        .await
        .unwrap()
}

/// An update that sets `updated_at` itself (the host's clock, moved on by the test).
async fn update(app: &TestApp, run: i64, set: &str) {
    app.exec(&format!("UPDATE operation_runs SET {set} WHERE id = {run}"))
        .await;
}

fn eta(state: &Value) -> f64 {
    state["progress"]["eta_seconds"].as_f64().expect("an ETA")
}

#[tokio::test]
async fn a_run_streams_its_progress_and_eta_and_ends_with_its_final_elapsed_time() {
    let (app, w, t) = TestApp::seeded().await;
    let run = started_run(&app, &w, 10, 20, 100).await;

    let mut s = app.sse(&run_events(run), &t).await;
    let snap = s.expect("snapshot").await.data;
    assert_eq!(snap["elapsed_seconds"], 10.0);
    let p = &snap["progress"];
    assert_eq!((&p["processed"], &p["total"]), (&20.into(), &100.into()));
    assert_eq!(p["fraction"], 0.2);
    assert_eq!(p["rate_per_second"], 2.0);
    assert!((eta(&snap) - 40.0).abs() <= 1.0, "{snap}");
    // The JSON snapshot and the workspace feed say the same.
    let json = app.json(&format!("/v1/runs/{run}"), &t).await;
    assert_eq!(json["progress"], snap["progress"]);
    let feed = format!("/v1/workspaces/{}/runs/events", w.workspace);
    let mut feed = app.sse(&feed, &t).await;
    let feed_snap = feed.expect("snapshot").await.data;
    assert_eq!(feed_snap["runs"][0]["progress"], snap["progress"]);

    // Three times as far 10 s later (as the host's clock says): the ETA follows.
    let later = r#"summary_counts = '{"processed": 60, "total": 100}', updated_at = now() + interval '10 seconds'"#;
    update(&app, run, later).await;
    let u = s.expect("update").await.data;
    assert_eq!(u["progress"]["fraction"], 0.6);
    assert!(eta(&u) < 40.0 && eta(&u) > 0.0, "{u}");
    assert!(u["elapsed_seconds"].as_f64().unwrap() >= 19.0, "{u}");
    assert_eq!(feed.expect("update").await.data["progress"], u["progress"]);

    // Finished 25 s after it started: the final elapsed time, no ETA.
    set_run(
        app.pool(),
        run,
        "status = 'completed', outcome = 'succeeded', completed_at = started_at + interval '25 seconds', \
         summary_counts = '{\"processed\": 100, \"total\": 100}'",
    )
    .await;
    let done = s.expect("update").await.data;
    assert_eq!(done["terminal"], true);
    assert_eq!(done["elapsed_seconds"], 25.0);
    assert_eq!(done["progress"]["fraction"], 1.0);
    assert_eq!(done["progress"]["eta_seconds"], Value::Null);
    s.expect_end("terminal").await;
}

#[tokio::test]
async fn observed_changes_smooth_the_rate_and_a_new_viewer_gets_the_same() {
    let (app, w, t) = TestApp::seeded().await;
    let run = started_run(&app, &w, 100, 100, 1000).await;
    let mut s = app.watch(&run_events(run), &t).await;
    // From 1/s on average to 10/s (the insert was the first observation): the observed rate
    // moves towards 10/s with each change, and not all the way at once.
    let mut last_rate = 1.0;
    for step in 1..=3 {
        let set = format!(
            r#"summary_counts = '{{"processed": {}, "total": 1000}}', updated_at = updated_at + interval '10 seconds'"#,
            100 + step * 100
        );
        update(&app, run, &set).await;
        let u = s.expect("update").await.data;
        let rate = u["progress"]["rate_per_second"].as_f64().unwrap();
        assert!(rate > last_rate && rate < 10.0, "step {step}: {u}");
        last_rate = rate;
        // A new viewer's snapshot renders with the same observed rate.
        let fresh = app.json(&format!("/v1/runs/{run}"), &t).await;
        assert_eq!(fresh["progress"], u["progress"], "step {step}");
    }
}

#[tokio::test]
async fn runs_without_counts_carry_elapsed_time_and_no_progress() {
    let (app, w, t) = TestApp::seeded().await;
    let queued = create_run(app.pool(), w.workspace, None, "queued").await;
    let s = app.json(&format!("/v1/runs/{queued}"), &t).await;
    assert!(s["elapsed_seconds"].as_f64().unwrap() >= 0.0, "{s}");
    assert_eq!(s["progress"], Value::Null);
    // Counts the host writes oddly never break a stream.
    let odd = r#"summary_counts = '{"processed": "many", "total": -1}'"#;
    let mut st = app.watch(&run_events(queued), &t).await;
    set_run(app.pool(), queued, odd).await;
    assert_eq!(st.expect("update").await.data["progress"], Value::Null);
}
