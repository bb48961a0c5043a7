//! What only the WAL change source does, run in the WAL pass of the tests
//! (`RUNWIRE_TEST_CHANGES=wal` on a server with `wal_level = logical`; `scripts/test` runs
//! both passes): slots that cannot outlive runwire, no terminal state lost across replication
//! kills, an unchanged TOASTed value kept, ids that agree between instances, no query per
//! update. Every other test of the suite runs in both modes.

mod common;

use common::binary::{runwire, strong_secret};
use common::*;
use runwire::ChangeSource;
use std::time::Duration;

/// Whether this pass is the WAL one (the NOTIFY pass says so and skips).
fn wal_pass(test: &str) -> bool {
    let wal = mode() == ChangeSource::Wal;
    if !wal {
        eprintln!("{test}: WAL mode only; it runs in the WAL pass of scripts/test");
    }
    wal
}

/// runwire's replication slots on `db`: (slot name, active).
async fn slots(db: &TestDb) -> Vec<(String, bool)> {
    sqlx::query_as(
        "SELECT slot_name::text, active FROM pg_replication_slots
         WHERE database = current_database() ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

/// A runwire that stops, or is killed, leaves no slot behind: nothing holds WAL back.
#[tokio::test]
async fn a_stopped_or_killed_runwire_leaves_no_slot() {
    if !wal_pass("a_stopped_or_killed_runwire_leaves_no_slot") {
        return;
    }
    let db = TestDb::new().await;
    let url = db.url();
    for signal in ["TERM", "KILL"] {
        let p = runwire(
            &["serve", "--bind", "127.0.0.1:0", "--changes", "wal"],
            &[("DATABASE_URL", &url), strong_secret()],
        );
        let c = Client::to(p.addr().await);
        c.await_status("/readyz", 200).await;
        let held = slots(&db).await;
        assert_eq!(held.len(), 1, "{held:?}");
        assert!(held[0].0.starts_with("runwire_") && held[0].1, "{held:?}");
        let temporary: bool =
            sqlx::query_scalar("SELECT temporary FROM pg_replication_slots WHERE slot_name = $1")
                .bind(&held[0].0)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert!(temporary);
        let pid = p.child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        eventually("the slot to go", || async { slots(&db).await.is_empty() }).await;
        drop(p);
    }
}

/// The walsender is terminated again and again while runs finish: every terminal state
/// arrives, every stream ends, no slot is left over.
#[tokio::test]
async fn no_terminal_state_is_lost_across_replication_kills() {
    if !wal_pass("no_terminal_state_is_lost_across_replication_kills") {
        return;
    }
    let (app, w, t) = TestApp::seeded().await;
    for _ in 0..20 {
        let mut streams = Vec::new();
        for _ in 0..3 {
            let run = create_run(app.pool(), w.workspace, None, "running").await;
            streams.push((run, app.watch(&run_events(run), &t).await));
        }
        assert!(app.running.wait_ready(WAIT).await);
        let walsender = app.running.listener_backend_pid().unwrap();
        app.exec(&format!("SELECT pg_terminate_backend({walsender})"))
            .await;
        for (run, _) in &streams {
            set_run(app.pool(), *run, SUCCEEDED).await;
        }
        for (_, s) in streams.iter_mut() {
            let done = s.expect("update").await;
            assert_eq!(done.data["status"], "completed");
            s.expect_end("terminal").await;
        }
    }
    eventually("one slot", || async { slots(&app.db).await.len() == 1 }).await;
}

/// A `summary_counts` large enough to be TOASTed, which an update that does not touch it
/// leaves out of the replication message: watched streams and feeds still show it.
#[tokio::test]
async fn an_unchanged_toasted_summary_counts_keeps_its_value() {
    if !wal_pass("an_unchanged_toasted_summary_counts_keeps_its_value") {
        return;
    }
    let (app, w, t) = TestApp::seeded().await;
    // Random hex does not compress: well over the TOAST threshold.
    let big: String = (0..800)
        .map(|_| format!("{:016x}", rand::random::<u64>()))
        .collect();
    let counts = format!(r#"{{"processed": 1, "log": "{big}"}}"#);
    let watched = create_run(app.pool(), w.workspace, None, "running").await;
    let feed_only = create_run(app.pool(), w.workspace, None, "running").await;
    for run in [watched, feed_only] {
        set_run(app.pool(), run, &format!("summary_counts = '{counts}'")).await;
    }
    let mut single = app.watch(&run_events(watched), &t).await;
    let mut feed = app
        .sse(&format!("/v1/workspaces/{}/runs/events", w.workspace), &t)
        .await;
    feed.expect("snapshot").await;
    for run in [watched, feed_only] {
        set_run(app.pool(), run, "outcome = 'nearly'").await;
    }
    let u = single.expect("update").await;
    assert_eq!(u.data["outcome"], "nearly");
    assert_eq!(u.data["summary_counts"]["log"], big.as_str());
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 2 {
        let u = feed.expect("update").await;
        assert_eq!(u.data["outcome"], "nearly", "{:?}", u.data["id"]);
        assert_eq!(u.data["summary_counts"]["log"], big.as_str());
        seen.insert(u.data["id"].as_i64().unwrap());
    }
}

/// Two instances on one database give the same state the same id, whether they streamed it
/// from the WAL or read it: a client that saw a run finish on one is told 204 by the other.
#[tokio::test]
async fn ids_agree_between_instances() {
    if !wal_pass("ids_agree_between_instances") {
        return;
    }
    let (a, w, t) = TestApp::seeded().await;
    let b = Client::to(start(&a.db, settings()).await.addr);
    let run = create_run(a.pool(), w.workspace, None, "running").await;
    let mut on_a = a.watch(&run_events(run), &t).await;
    let mut on_b = b.watch(&run_events(run), &t).await;
    set_run(a.pool(), run, SUCCEEDED).await;
    let (done_a, done_b) = (on_a.expect("update").await, on_b.expect("update").await);
    assert_eq!(done_a.id, done_b.id, "the same WAL change, the same id");
    // A third instance that never streamed the change reads the state: same identity.
    let c = Client::to(start(&a.db, settings()).await.addr);
    for client in [&b, &c] {
        let again = Sse::open(
            &client.http,
            &client.url(&run_events(run)),
            Some(&t),
            Some(&done_a.id),
        )
        .await;
        assert_eq!(again.status, 204);
    }
}

/// A counter of runwire's `/metrics`.
async fn counter(app: &TestApp, name: &str) -> f64 {
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// The watcher's reads, as runwire counts them (`runwire_reread_seconds_count`).
async fn watcher_reads(app: &TestApp) -> f64 {
    counter(app, "runwire_reread_seconds_count").await
}

/// In WAL mode updates reach their streams without runwire reading anything (the row is in
/// the message); in NOTIFY mode each burst of doorbells costs a re-read.
#[tokio::test]
async fn updates_cost_no_read_in_wal_mode() {
    let (app, w, t) = TestApp::seeded().await;
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    let mut s = app.watch(&run_events(run), &t).await;
    let before = watcher_reads(&app).await;
    for i in 1..=100 {
        progress(app.pool(), run, i).await;
    }
    let mut last = 0;
    while last < 100 {
        last = s.expect("update").await.data["summary_counts"]["processed"]
            .as_i64()
            .unwrap();
    }
    let reads = watcher_reads(&app).await - before;
    match mode() {
        ChangeSource::Wal => assert_eq!(reads, 0.0),
        ChangeSource::Notify => assert!(reads > 0.0),
    }
}

/// A run nobody watches costs nothing when it changes, however large its `summary_counts`:
/// an update that leaves a TOASTed value out of the message must not make runwire read the
/// row (and write a marker into the WAL) for a run no stream and no feed shows. A card read
/// afterwards serves as the fence: once its update arrives, the reads runwire started for the
/// earlier transactions have been counted too.
#[tokio::test]
async fn an_unwatched_run_with_a_toasted_summary_costs_no_read() {
    if !wal_pass("an_unwatched_run_with_a_toasted_summary_costs_no_read") {
        return;
    }
    let (app, w, t) = TestApp::seeded().await;
    let big: String = (0..800)
        .map(|_| format!("{:016x}", rand::random::<u64>()))
        .collect();
    // In the other workspace: no feed of the seeded owner's shows it either.
    let unwatched = create_run(app.pool(), w.other_workspace, None, "running").await;
    set_run(
        app.pool(),
        unwatched,
        &format!(r#"summary_counts = '{{"log": "{big}"}}'"#),
    )
    .await;
    let pack = create_pack(app.pool(), w.workspace, w.tenant, "generating").await;
    let mut card = app.watch(&pack_events(w.tenant), &t).await;
    // The card's own reads so far are done (its insert may be applied after the stream
    // opened): this update's read starts after them, and has been counted once it arrives.
    set_pack(app.pool(), pack, "status = 'queued'").await;
    card.expect("update").await;
    let reconnects = "runwire_listener_reconnects_total";
    let before = (watcher_reads(&app).await, counter(&app, reconnects).await);
    for i in 0..20 {
        set_run(app.pool(), unwatched, &format!("outcome = 'step {i}'")).await;
    }
    set_pack(app.pool(), pack, "status = 'ready'").await;
    let ready = card.expect("update").await;
    assert_eq!(ready.data["pack"]["status"], "ready");
    let reads = watcher_reads(&app).await - before.0;
    // A reconnect (a heartbeat late on a busy machine) re-reads the watched card once.
    let resyncs = counter(&app, reconnects).await - before.1;
    assert_eq!(
        reads - resyncs,
        1.0,
        "only the card was read, not the unwatched run"
    );
}

/// Stops a process (the walsender) until dropped: the WAL source falls behind what every
/// other session already sees, as it does while the walsender decodes a large transaction or
/// the network is slow.
struct Paused(i32);

impl Paused {
    fn walsender(app: &TestApp) -> Paused {
        let pid = app.running.listener_backend_pid().expect("a walsender");
        signal("STOP", pid);
        Paused(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        signal("CONT", self.0);
    }
}

fn signal(name: &str, pid: i32) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// `processed` of a run state.
fn processed(state: &serde_json::Value) -> i64 {
    state["summary_counts"]["processed"].as_i64().unwrap_or(-1)
}

/// A stream opened while the WAL source is behind reads a state newer than the watcher has
/// applied. The watcher's older transactions that follow must not be sent after it: a
/// client never sees a run's states out of order (docs/api.md, "Streams"). Likewise for a
/// workspace feed's snapshot and its updates. (More transactions than one batch holds lie
/// between the two updates, so the watcher applies the first one on its own.)
#[tokio::test]
async fn a_stream_opened_ahead_of_the_wal_never_goes_back() {
    if !wal_pass("a_stream_opened_ahead_of_the_wal_never_goes_back") {
        return;
    }
    // A heartbeat that does not replace the paused connection meanwhile.
    let (app, w, t) = TestApp::seeded_with(|s| s.heartbeat_secs = 60).await;
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    // Everything so far applied: a watched run's update comes through after it.
    let fence = create_run(app.pool(), w.workspace, None, "running").await;
    let mut fenced = app.watch(&run_events(fence), &t).await;
    progress(app.pool(), fence, 1).await;
    fenced.expect("update").await;

    let paused = Paused::walsender(&app);
    progress(app.pool(), run, 1).await;
    let mut conn = app.pool().acquire().await.unwrap();
    for sql in [
        "SET synchronous_commit = off",
        "DO $$ BEGIN
             FOR i IN 1..1500 LOOP
                 PERFORM pg_logical_emit_message(true, 'filler', '');
                 COMMIT;
             END LOOP;
         END $$",
        "RESET synchronous_commit",
    ] {
        sqlx::raw_sql(sql).execute(&mut *conn).await.unwrap();
    }
    drop(conn);
    progress(app.pool(), run, 2).await;
    let mut single = app.sse(&run_events(run), &t).await;
    let snapshot = single.expect("snapshot").await;
    let mut feed = app
        .sse(&format!("/v1/workspaces/{}/runs/events", w.workspace), &t)
        .await;
    let feed_snapshot = feed.expect("snapshot").await;
    drop(paused);
    set_run(app.pool(), run, SUCCEEDED).await;

    assert_eq!(processed(&snapshot.data), 2, "the read sees both updates");
    let mut seen = vec![processed(&snapshot.data)];
    loop {
        let msg = single.expect_any().await;
        if msg.event == "end" {
            break;
        }
        seen.push(processed(&msg.data));
    }
    let shown = &feed_snapshot.data["runs"];
    let first = shown.as_array().unwrap().iter().find(|r| r["id"] == run);
    let mut feed_seen = vec![processed(first.expect("the run in the snapshot"))];
    loop {
        let msg = feed.expect("update").await;
        if msg.data["id"] != run {
            continue;
        }
        feed_seen.push(processed(&msg.data));
        if msg.data["terminal"] == true {
            break;
        }
    }
    let forward = |seen: &[i64]| seen.windows(2).all(|p| p[0] <= p[1]);
    assert!(
        forward(&seen) && forward(&feed_seen),
        "the run went back: stream {seen:?}, feed {feed_seen:?}"
    );
}

/// The publication dropped while runwire streams (an operator switching to NOTIFY, a host
/// migration): the walsender then fails at every change of any table. runwire must back off
/// instead of reconnecting — a new slot, every watched item re-read, every decision and feed
/// re-made — at every write of the host's.
#[tokio::test]
async fn a_dropped_publication_does_not_make_runwire_reconnect_at_every_write() {
    if !wal_pass("a_dropped_publication_does_not_make_runwire_reconnect_at_every_write") {
        return;
    }
    let (app, w, t) = TestApp::seeded().await;
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    let _watched = app.watch(&run_events(run), &t).await;
    app.exec("DROP PUBLICATION runwire").await;
    let before = counter(&app, "runwire_listener_reconnects_total").await;
    // The host writes ten times a second for three seconds.
    for i in 0..30 {
        progress(app.pool(), run, i).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let reconnects = counter(&app, "runwire_listener_reconnects_total").await - before;
    // Backing off from 100 ms, doubling: at most 5 attempts in 3 s (and a few to spare).
    assert!(reconnects <= 8.0, "{reconnects} reconnects in 3 s");
}

/// A host migration holds `review_packs` while runwire must read a card (a pack changed just
/// before). The run streams must go on meanwhile: a lock on one table does not stall, or
/// end, the streams of another (docs/operations.md: each kind of read has its own slots so
/// that review-pack requests go on while operation_runs is locked — and the other way round).
#[tokio::test]
async fn a_locked_review_packs_does_not_stall_run_streams() {
    if !wal_pass("a_locked_review_packs_does_not_stall_run_streams") {
        return;
    }
    let (app, w, t) = TestApp::seeded_with(|s| {
        s.heartbeat_secs = 60;
        s.query_timeout_secs = 1;
    })
    .await;
    let pack = create_pack(app.pool(), w.workspace, w.tenant, "generating").await;
    let _card = app.watch(&pack_events(w.tenant), &t).await;
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    let mut s = app.watch(&run_events(run), &t).await;
    // The pack changes; by the time runwire reads its card, the migration holds the table.
    let paused = Paused::walsender(&app);
    set_pack(app.pool(), pack, "status = 'ready'").await;
    let migration = app.lock("review_packs").await;
    drop(paused);
    // Well past the query timeout of the card's read, the host reports progress.
    for i in 1..=4 {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        progress(app.pool(), run, i).await;
    }
    // The last progress arrives within moments (earlier ones may come first).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let u = s
            .next_within(left)
            .await
            .expect("the last progress did not arrive while review_packs is locked")
            .expect("the run stream ended while review_packs is locked");
        assert_eq!(u.event, "update", "{u:?}");
        if processed(&u.data) == 4 {
            break;
        }
    }
    migration.rollback().await.unwrap();
}

/// Whether a backend whose query contains `query` waits for a lock.
async fn lock_waiter(app: &TestApp, query: &str) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                        WHERE wait_event_type = 'Lock' AND query LIKE '%' || $1 || '%'
                          AND pid <> pg_backend_pid())",
    )
    .bind(query)
    .fetch_one(app.pool())
    .await
    .unwrap()
}

/// Waits until a backend whose query contains `query` waits for a lock.
async fn waiting_on_a_lock(app: &TestApp, query: &str) {
    let what = format!("a query with {query:?} to wait for a lock");
    eventually(&what, || lock_waiter(app, query)).await;
}

/// The pack shown on a card goes — `TRUNCATE review_packs`, or a `DELETE` whose message
/// carries only the pack's id — while runwire reads the card, after the read's snapshot and
/// before its marker. The card read before must not be published after: a dashboard's feed
/// ends up showing no pack, as the table has. 20 rounds of each.
#[tokio::test]
async fn a_card_read_before_its_pack_goes_is_not_published_after_it() {
    if !wal_pass("a_card_read_before_its_pack_goes_is_not_published_after_it") {
        return;
    }
    let (app, w, t) = TestApp::seeded().await;
    let mut feed = app
        .sse(&format!("/v1/workspaces/{}/runs/events", w.workspace), &t)
        .await;
    feed.expect("snapshot").await;
    let mut stale = Vec::new();
    for truncate in [true, false] {
        for round in 0..20 {
            let pack = create_pack(app.pool(), w.workspace, w.tenant, "generating").await;
            // The card's read will wait for `tenants` after taking its snapshot and
            // review_packs' lock.
            let hold = app.lock("tenants").await;
            set_pack(app.pool(), pack, "status = 'queued'").await;
            waiting_on_a_lock(&app, "review_packs p WHERE p.tenant_id").await;
            let pool = app.pool().clone();
            let gone = match truncate {
                true => "TRUNCATE review_packs".to_string(),
                false => format!("DELETE FROM review_packs WHERE id = {pack}"),
            };
            let statement = gone.clone();
            let going = tokio::spawn(async move {
                sqlx::query(&statement).execute(&pool).await.unwrap();
            });
            // A truncation waits for the read's lock and commits right after it; a delete
            // commits at once.
            // (Whether or not it had to wait, the card must end up without the pack.)
            match truncate {
                true => {
                    let waits = "TRUNCATE review_packs";
                    eventually("the truncation to wait or be done", || async {
                        going.is_finished() || lock_waiter(&app, waits).await
                    })
                    .await
                }
                false => eventually("the delete", || async { going.is_finished() }).await,
            }
            hold.rollback().await.unwrap();
            going.await.unwrap();
            // What the dashboard shows for the tenant once the feed is quiet: the last
            // snapshot, then the card updates after it.
            let mut shown = None;
            while let Some(Some(msg)) = feed.next_within(Duration::from_millis(500)).await {
                let cards = match msg.event.as_str() {
                    "snapshot" => msg.data["review_packs"].as_array().unwrap().clone(),
                    _ if msg.data["type"] == "review_pack" => vec![msg.data.clone()],
                    _ => continue,
                };
                if let Some(card) = cards.into_iter().find(|c| c["tenant_id"] == w.tenant) {
                    shown = Some(card);
                }
            }
            if let Some(card) = shown.filter(|c| !c["pack"].is_null()) {
                stale.push((gone, round, card["pack"]["id"].clone()));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "a pack that is gone shown last: {stale:#?}"
    );
}

/// While runwire reads a card, another tenant's pack is deleted (its message carries only
/// its id, so it could be any card's). The card read must still reach its stream — read
/// again if need be: the card's terminal state is not lost. 20 rounds.
#[tokio::test]
async fn a_card_read_across_another_packs_delete_still_arrives() {
    if !wal_pass("a_card_read_across_another_packs_delete_still_arrives") {
        return;
    }
    let (app, w, t) = TestApp::seeded().await;
    for _ in 0..20 {
        let pack = create_pack(app.pool(), w.workspace, w.tenant, "generating").await;
        let other = create_pack(app.pool(), w.workspace, w.tenant_b, "ready").await;
        let mut card = app.watch(&pack_events(w.tenant), &t).await;
        let hold = app.lock("tenants").await;
        set_pack(app.pool(), pack, "status = 'ready'").await;
        waiting_on_a_lock(&app, "review_packs p WHERE p.tenant_id").await;
        app.exec(&format!("DELETE FROM review_packs WHERE id = {other}"))
            .await;
        hold.rollback().await.unwrap();
        let ready = card.expect("update").await;
        assert_eq!(ready.data["pack"]["status"], "ready");
        card.expect_end("terminal").await;
    }
}
