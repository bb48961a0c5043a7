//! Several instances share nothing but Postgres: each has its own listener, and every stream
//! on every instance gets every terminal state.

mod common;

use common::*;

#[tokio::test]
async fn two_instances_on_one_database_both_deliver_every_terminal_state() {
    let db = TestDb::new().await;
    let one = start(&db, settings()).await;
    let two = start(&db, settings()).await;
    let http = reqwest::Client::new();
    let w = seed(&db.pool).await;
    let t = token(w.owner);
    let mut runs = Vec::new();
    for _ in 0..4 {
        runs.push(create_run(&db.pool, w.workspace, Some(w.tenant), "queued").await);
    }
    let pack = create_pack(&db.pool, w.workspace, w.tenant, "queued").await;

    let mut streams = Vec::new();
    for base in [one.addr, two.addr] {
        for run in &runs {
            let url = format!("http://{base}/v1/runs/{run}/events");
            streams.push(Sse::open(&http, &url, Some(&t), None).await);
        }
        let url = format!("http://{base}/v1/tenants/{}/review-pack/events", w.tenant);
        streams.push(Sse::open(&http, &url, Some(&t), None).await);
        let url = format!(
            "http://{base}/v1/streams?runs={}",
            runs.iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        streams.push(Sse::open(&http, &url, Some(&t), None).await);
    }
    for s in streams.iter_mut() {
        assert_eq!(s.status, 200);
        s.expect("snapshot").await;
    }
    for run in &runs {
        set_run(&db.pool, *run, "status = 'running'").await;
        set_run(&db.pool, *run, SUCCEEDED).await;
    }
    set_pack(&db.pool, pack, "status = 'generating'").await;
    set_pack(&db.pool, pack, "status = 'ready'").await;

    // Every stream on both instances ends with its terminal state.
    for s in streams.iter_mut() {
        let mut last = None;
        loop {
            let msg = s.next().await.expect("stream ended before its end event");
            if msg.event == "end" {
                assert_eq!(msg.data["reason"], "terminal");
                break;
            }
            last = Some(msg);
        }
        let last = last.expect("a state before end");
        assert_eq!(last.data["terminal"], true, "{last:?}");
        assert!(s.next().await.is_none());
    }
    one.shutdown().await;
    two.shutdown().await;
    db.drop_db().await;
}
