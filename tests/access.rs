//! Fail-closed access: no byte of a state reaches a stream unless the user's access to the
//! item, as the item is in that state, was decided at an access epoch no older than the
//! newest access change known. Moves, revocations racing with updates, re-checks that cannot
//! be made, revocations while the listener is away, deletes and truncates.
//!
//! A leak is any message carrying a state written after the revocation or move: every such
//! state here carries a marker (`leaked`) or the destination's ids, and every message a test
//! reads is checked for it.

mod common;

use common::*;
use std::time::{Duration, Instant};

const MARK: &str = "leaked";

/// Reads until `end`, failing on any message that carries `MARK` or `tenant`.
async fn expect_end_without_leak(s: &mut Sse, reason: &str, forbidden_tenant: Option<i64>) {
    loop {
        let msg = s.next().await.expect("stream ended without `end`");
        let text = msg.data.to_string();
        assert!(
            !text.contains(MARK),
            "leaked a post-revocation state: {msg:?}"
        );
        if let Some(t) = forbidden_tenant {
            assert_ne!(msg.data["tenant_id"], t, "leaked a moved state: {msg:?}");
        }
        if msg.event == "end" {
            assert_eq!(msg.data["reason"], reason, "{msg:?}");
            assert!(s.next().await.is_none(), "stream continued after end");
            return;
        }
    }
}

/// Reads the feed until a snapshot arrives, failing on any leak; returns the snapshot's
/// run ids.
async fn next_feed_snapshot_without_leak(s: &mut Sse, forbidden: Option<i64>) -> Vec<i64> {
    loop {
        let msg = s.next().await.expect("feed ended");
        let text = msg.data.to_string();
        assert!(
            !text.contains(MARK),
            "leaked a post-revocation state: {msg:?}"
        );
        if let Some(t) = forbidden {
            assert!(
                !text.contains(&format!("\"tenant_id\":{t}")),
                "leaked a moved state: {msg:?}"
            );
        }
        if msg.event == "snapshot" {
            return run_ids(&msg);
        }
    }
}

/// Makes the owner a member of `tenant` again (with a role that may view review packs).
async fn rejoin(app: &TestApp, w: &World) {
    app.exec(&format!(
        "INSERT INTO tenant_memberships VALUES ({}, {}, 'owner')
             ON CONFLICT (tenant_id, user_id) DO UPDATE SET role = 'owner'",
        w.tenant, w.owner
    ))
    .await;
}

fn leave_tenant(w: &World) -> String {
    format!(
        "DELETE FROM tenant_memberships WHERE tenant_id = {} AND user_id = {}",
        w.tenant, w.owner
    )
}

fn mark_run(run: i64) -> String {
    format!("UPDATE operation_runs SET outcome = '{MARK}', updated_at = now() WHERE id = {run}")
}

/// The owner leaves the tenant and the run gets a marked state, in one transaction.
async fn revoke_and_mark(app: &TestApp, w: &World, run: i64) {
    in_one_transaction(app, &[leave_tenant(w), mark_run(run)]).await;
}

/// `times` repetitions: the owner (a tenant member again) watches a new active run of the
/// tenant, `between` happens, then [`revoke_and_mark`]; the stream must end `forbidden`
/// without the mark.
async fn revoke_after(times: usize, between: impl AsyncFn(&TestApp, &World, i64)) {
    let (app, w, t) = TestApp::seeded().await;
    for _ in 0..times {
        rejoin(&app, &w).await;
        let run = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
        // A stream opened while the change source reconnects gets 503, and "connected" can
        // be stale: the previous round's stream may have ended from a notification the
        // killed backend still delivered (or the resync read) before its loss was noticed.
        // So each round opens its stream once the source is back, retrying a 503.
        let mut s = None;
        for _ in 0..50 {
            assert!(
                app.running.wait_ready(WAIT).await,
                "the listener reconnects"
            );
            let opened = app.sse(&run_events(run), &t).await;
            if opened.status != 503 {
                s = Some(opened);
                break;
            }
        }
        let mut s = s.expect("a stream opened within 50 tries");
        s.expect("snapshot").await;
        between(&app, &w, run).await;
        revoke_and_mark(&app, &w, run).await;
        expect_end_without_leak(&mut s, "forbidden", None).await;
    }
}

/// Runs these statements in one transaction.
async fn in_one_transaction(app: &TestApp, statements: &[String]) {
    let mut tx = app.pool().begin().await.unwrap();
    for sql in statements {
        sqlx::query(sql).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
}

fn feed(w: &World) -> String {
    format!("/v1/workspaces/{}/runs/events", w.workspace)
}

/// The three ways to watch `run`: its own stream, a set (with `others`), and the feed; each
/// past its snapshot(s). Returns them and the feed's first run ids.
async fn watch_three_ways(
    app: &TestApp,
    w: &World,
    t: &str,
    run: i64,
    others: &[i64],
) -> (Sse, Sse, Sse, Vec<i64>) {
    let mut single = app.sse(&run_events(run), t).await;
    let list: Vec<String> = std::iter::once(run)
        .chain(others.iter().copied())
        .map(|r| r.to_string())
        .collect();
    let mut set = app
        .sse(&format!("/v1/streams?runs={}", list.join(",")), t)
        .await;
    let mut ws = app.sse(&feed(w), t).await;
    single.expect("snapshot").await;
    for _ in 0..list.len() {
        set.expect("snapshot").await;
    }
    let first = run_ids(&ws.expect("snapshot").await);
    (single, set, ws, first)
}

/// How often each race and move is repeated in one test.
const REPEAT: usize = 20;

#[tokio::test]
async fn a_run_moved_to_a_tenant_the_user_cannot_see_ends_its_streams() {
    let (app, w, t) = TestApp::seeded().await;
    for _ in 0..REPEAT {
        let run = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
        let keep = create_run(app.pool(), w.workspace, None, "running").await;
        let (mut single, mut set, mut ws, first) =
            watch_three_ways(&app, &w, &t, run, &[keep]).await;
        assert!(first.contains(&run));

        set_run(app.pool(), run, &format!("tenant_id = {}", w.tenant_b)).await;
        set_run(app.pool(), run, &format!("outcome = '{MARK}'")).await;
        expect_end_without_leak(&mut single, "forbidden", Some(w.tenant_b)).await;
        expect_end_without_leak(&mut set, "forbidden", Some(w.tenant_b)).await;
        // The feed replaces its list: the run is gone from it, and nothing of it was sent.
        let now = next_feed_snapshot_without_leak(&mut ws, Some(w.tenant_b)).await;
        assert_eq!(now, vec![keep]);
        assert_eq!(app.status(&format!("/v1/runs/{run}"), &t).await, 403);
        set_run(app.pool(), keep, SUCCEEDED).await;
    }
}

#[tokio::test]
async fn a_run_moved_to_another_workspace_ends_its_streams() {
    let (app, w, t) = TestApp::seeded().await;
    for _ in 0..REPEAT {
        let run = create_run(app.pool(), w.workspace, None, "running").await;
        let (mut single, mut set, mut ws, first) = watch_three_ways(&app, &w, &t, run, &[]).await;
        assert_eq!(first, vec![run]);

        set_run(
            app.pool(),
            run,
            &format!("workspace_id = {}, outcome = '{MARK}'", w.other_workspace),
        )
        .await;
        expect_end_without_leak(&mut single, "forbidden", None).await;
        expect_end_without_leak(&mut set, "forbidden", None).await;
        assert!(next_feed_snapshot_without_leak(&mut ws, None)
            .await
            .is_empty());
        assert_eq!(app.status(&format!("/v1/runs/{run}"), &t).await, 404);
    }
}

/// One rule for a run whose tenant sits in another workspace than the run (docs/api.md):
/// nobody sees it, on any kind of stream, whatever their memberships.
#[tokio::test]
async fn a_tenant_moved_to_another_workspace_ends_every_stream_of_it_and_of_its_runs() {
    let (app, w, t) = TestApp::seeded().await;
    let move_tenant = |to: i64| {
        format!(
            "UPDATE tenants SET workspace_id = {to} WHERE id = {}",
            w.tenant
        )
    };
    let mut last_run = 0;
    for _ in 0..REPEAT {
        app.exec(&move_tenant(w.workspace)).await;
        let run = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
        last_run = run;
        let pack = create_pack(app.pool(), w.workspace, w.tenant, "generating").await;
        let mut ps = app.sse(&pack_events(w.tenant), &t).await;
        let mut ws = app.sse(&feed(&w), &t).await;
        let mut rs = app.sse(&run_events(run), &t).await;
        let mut set = app.sse(&format!("/v1/streams?runs={run}"), &t).await;
        ps.expect("snapshot").await;
        rs.expect("snapshot").await;
        set.expect("snapshot").await;
        assert_eq!(run_ids(&ws.expect("snapshot").await), vec![run]);

        app.exec(&move_tenant(w.other_workspace)).await;
        set_pack(app.pool(), pack, &format!("status = '{MARK}'")).await;
        set_run(app.pool(), run, &format!("outcome = '{MARK}'")).await;
        expect_end_without_leak(&mut ps, "forbidden", None).await;
        expect_end_without_leak(&mut rs, "forbidden", None).await;
        expect_end_without_leak(&mut set, "forbidden", None).await;
        assert!(next_feed_snapshot_without_leak(&mut ws, None)
            .await
            .is_empty());
        assert_eq!(app.status(&format!("/v1/runs/{run}"), &t).await, 403);
        assert_eq!(app.status(&run_events(run), &t).await, 403);
        // Out of sight, the run finishes and the pack fails, unmarked, before the tenant
        // comes back for the next repetition.
        drop(ws);
        set_run(app.pool(), run, "status = 'completed', outcome = 'done'").await;
        set_pack(app.pool(), pack, "status = 'failed'").await;
    }
    // Fail closed: a member of both workspaces, with a role in the tenant, still sees no run
    // of the tenant's old workspace (the feed of the run's workspace would not show it).
    app.exec(&format!(
        "INSERT INTO workspace_memberships (workspace_id, user_id, role)
         VALUES ({}, {}, 'owner')",
        w.other_workspace, w.owner
    ))
    .await;
    assert_eq!(app.status(&format!("/v1/runs/{last_run}"), &t).await, 403);
    let set = format!("/v1/streams?runs={last_run}");
    assert_eq!(app.status(&set, &t).await, 403);
    // …while the tenant's pack, which follows its tenant, is theirs to see.
    assert_eq!(app.status(&pack_events(w.tenant), &t).await, 200);
}

/// Which stream a race repetition watches.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Run,
    Pack,
    Set,
    Feed,
}

/// One repetition: open the stream, then revoke the owner's access to the tenant and write a
/// marked state, in one transaction or in two back to back. Nothing marked may arrive.
async fn revoke_while_updating(app: &TestApp, w: &World, kind: Kind, one_transaction: bool) {
    let t = token(w.owner);
    rejoin(app, w).await;
    let run = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
    let other = create_run(app.pool(), w.workspace, None, "running").await;
    let pack = create_pack(app.pool(), w.workspace, w.tenant, "generating").await;
    let path = match kind {
        Kind::Run => format!("/v1/runs/{run}/events"),
        Kind::Pack => format!("/v1/tenants/{}/review-pack/events", w.tenant),
        Kind::Set => format!("/v1/streams?runs={run}&review_pack_tenants={}", w.tenant),
        Kind::Feed => feed(w),
    };
    let mut s = app.sse(&path, &t).await;
    let first = s.expect("snapshot").await;
    if let Kind::Set = kind {
        s.expect("snapshot").await;
    }
    // Packs: a role without review_pack.view; otherwise the tenant membership goes.
    let revoke = match kind {
        Kind::Pack => format!(
            "UPDATE tenant_memberships SET role = 'readonly' WHERE tenant_id = {} AND user_id = {}",
            w.tenant, w.owner
        ),
        _ => leave_tenant(w),
    };
    let update = match kind {
        Kind::Pack => format!(
            "UPDATE review_packs SET status = '{MARK}', updated_at = now() WHERE id = {pack}"
        ),
        _ => mark_run(run),
    };
    if one_transaction {
        in_one_transaction(app, &[revoke, update]).await;
    } else {
        app.exec(&revoke).await;
        app.exec(&update).await;
    }
    // Both runs finish (and lose the mark) in one transaction, so once the feed has shown
    // `other` finish, nothing of this repetition is still on its way to the next one.
    let finish = format!(
        "UPDATE operation_runs SET status = 'completed', outcome = 'done' WHERE id IN ({run}, {other})"
    );
    match kind {
        Kind::Feed => {
            assert!(run_ids(&first).contains(&run));
            assert_eq!(
                next_feed_snapshot_without_leak(&mut s, None).await,
                vec![other]
            );
            // And it goes on with what the user may still see.
            app.exec(&finish).await;
            loop {
                let msg = s.expect_any().await;
                assert!(!msg.data.to_string().contains(MARK), "leaked: {msg:?}");
                assert_ne!(msg.data["id"], run, "leaked: {msg:?}");
                if msg.event == "update" && msg.data["id"] == other {
                    break;
                }
            }
        }
        _ => {
            expect_end_without_leak(&mut s, "forbidden", None).await;
            app.exec(&finish).await;
        }
    }
}

async fn race(kind: Kind) {
    let (app, w, _) = TestApp::seeded().await;
    for one_transaction in [true, false] {
        for _ in 0..REPEAT {
            revoke_while_updating(&app, &w, kind, one_transaction).await;
        }
    }
}

/// 20 revocations in one transaction with an update and 20 in the transaction just before
/// it, for each kind of stream: zero leaks.
#[tokio::test]
async fn revocation_racing_an_update_never_leaks() {
    for kind in [Kind::Run, Kind::Pack, Kind::Set, Kind::Feed] {
        race(kind).await;
    }
}

/// The re-check after a revocation blocks on a locked table: nothing is written meanwhile;
/// once the table is free the decision is made (forbidden), and a stream that cannot get a
/// decision for 10 s ends with `unavailable`.
#[tokio::test]
async fn a_recheck_that_cannot_be_made_writes_nothing_and_fails_closed() {
    let (app, w, t) = TestApp::seeded().await;
    for hold in [Duration::from_secs(2), Duration::from_secs(12)] {
        app.exec(&format!(
            "INSERT INTO workspace_memberships VALUES ({}, {}, 'owner') ON CONFLICT DO NOTHING",
            w.workspace, w.owner
        ))
        .await;
        let run = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
        let mut s = app.watch(&run_events(run), &t).await;
        // A migration holds the membership table: every access re-check waits on it.
        let lock = app.lock("tenant_memberships").await;
        app.exec(&format!(
            "DELETE FROM workspace_memberships WHERE workspace_id = {} AND user_id = {}",
            w.workspace, w.owner
        ))
        .await;
        set_run(app.pool(), run, &format!("outcome = '{MARK}'")).await;
        // Nothing arrives while the decision cannot be made.
        assert!(
            s.next_within(Duration::from_millis(1500)).await.is_none(),
            "a state was written before access was decided"
        );
        let released = tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            lock.rollback().await.unwrap();
        });
        let reason = if hold.as_secs() < 10 {
            "forbidden"
        } else {
            "unavailable"
        };
        expect_end_without_leak(&mut s, reason, None).await;
        released.await.unwrap();
    }
}

/// Revoked and updated while the change source is disconnected (the LISTEN connection, or
/// the walsender, terminated): the resync must not publish the new state to a stream whose
/// access was decided before the gap.
#[tokio::test]
async fn revocation_while_the_listener_is_away_never_leaks() {
    revoke_after(REPEAT, async |app, _, _| {
        assert!(app.running.wait_ready(WAIT).await);
        let pid = app.running.listener_backend_pid().unwrap();
        app.exec(&format!("SELECT pg_terminate_backend({pid})"))
            .await;
    })
    .await;
}

#[tokio::test]
async fn a_deleted_run_ends_its_streams_with_gone_and_frees_their_slots() {
    let (app, w, t) = TestApp::seeded_with(|s| s.max_streams_per_user = 2).await;
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    let mut single = app.sse(&run_events(run), &t).await;
    let mut set = app.sse(&format!("/v1/streams?runs={run}"), &t).await;
    single.expect("snapshot").await;
    set.expect("snapshot").await;
    let other = create_run(app.pool(), w.workspace, None, "running").await;
    assert_eq!(
        app.status(&run_events(other), &t).await,
        429,
        "both slots are taken"
    );
    app.exec(&format!("DELETE FROM operation_runs WHERE id = {run}"))
        .await;
    single.expect_end("gone").await;
    set.expect_end("gone").await;
    assert_eq!(app.status(&run_events(run), &t).await, 404);
    // The slots are free again.
    let mut s = app.sse(&run_events(other), &t).await;
    assert_eq!(s.status, 200);
    s.expect("snapshot").await;
    // Truncation ends every stream of a run too.
    app.exec("TRUNCATE operation_runs").await;
    s.expect_end("gone").await;
}

#[tokio::test]
async fn a_deleted_run_leaves_the_feed_and_a_deleted_tenant_ends_its_pack_stream() {
    let (app, w, t) = TestApp::seeded().await;
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    create_pack(app.pool(), w.workspace, w.tenant, "generating").await;
    let mut ws = app.sse(&feed(&w), &t).await;
    let mut ps = app.sse(&pack_events(w.tenant), &t).await;
    assert_eq!(run_ids(&ws.expect("snapshot").await), vec![run]);
    ps.expect("snapshot").await;
    app.exec(&format!("DELETE FROM operation_runs WHERE id = {run}"))
        .await;
    assert!(next_feed_snapshot_without_leak(&mut ws, None)
        .await
        .is_empty());
    // Deleting the tenant deletes the memberships too: whichever the stream learns first,
    // the tenant is gone or the access is, it ends without another state.
    app.exec(&format!("DELETE FROM tenants WHERE id = {}", w.tenant))
        .await;
    let end = ps.expect("end").await;
    assert!(
        end.data["reason"] == "gone" || end.data["reason"] == "forbidden",
        "{end:?}"
    );
    ps.expect_closed().await;
}

#[tokio::test]
async fn a_pack_moved_between_tenants_updates_both_cards() {
    let (app, w, t) = TestApp::seeded().await;
    app.exec(&format!(
        "INSERT INTO tenant_memberships VALUES ({}, {}, 'owner')",
        w.tenant_b, w.owner
    ))
    .await;
    let pack = create_pack(app.pool(), w.workspace, w.tenant, "generating").await;
    let mut a = app.sse(&pack_events(w.tenant), &t).await;
    let mut b = app.sse(&pack_events(w.tenant_b), &t).await;
    assert_eq!(a.expect("snapshot").await.data["pack"]["id"], pack);
    assert!(b.expect("snapshot").await.data["pack"].is_null());
    b.expect_end("terminal").await;
    let mut b = app.sse(&pack_events(w.tenant_b), &t).await;
    assert!(b.expect("snapshot").await.data["pack"].is_null());
    b.expect_end("terminal").await;

    // Watch B's card through a set that stays open on an active run.
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    let mut set = app
        .sse(
            &format!("/v1/streams?runs={run}&review_pack_tenants={}", w.tenant_b),
            &t,
        )
        .await;
    set.expect("snapshot").await;
    set.expect("snapshot").await;
    set_pack(app.pool(), pack, &format!("tenant_id = {}", w.tenant_b)).await;
    let left = a.expect("update").await;
    assert!(left.data["pack"].is_null(), "{left:?}");
    a.expect_end("terminal").await;
    let arrived = set.expect("update").await;
    assert_eq!(arrived.data["tenant_id"], w.tenant_b);
    assert_eq!(arrived.data["pack"]["id"], pack);
}

/// Streams that hyper serves (here: a request with a `Content-Length`, which the connection
/// front hands over) run the same driver behind the same gate.
#[tokio::test]
async fn a_hyper_served_stream_is_gated_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (app, w, t) = TestApp::seeded().await;
    for _ in 0..20 {
        rejoin(&app, &w).await;
        let run = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
        let mut socket = tokio::net::TcpStream::connect(app.running.addr)
            .await
            .unwrap();
        let request = format!(
            "GET /v1/runs/{run}/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {t}\r\ncontent-length: 0\r\n\r\n"
        );
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while !seen.contains("event: snapshot") {
            let n = tokio::time::timeout(WAIT, socket.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed before the snapshot: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
        revoke_and_mark(&app, &w, run).await;
        while !seen.contains("event: end") {
            let n = tokio::time::timeout(WAIT, socket.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed without end: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(!seen.contains(MARK), "leaked: {seen}");
        assert!(seen.contains(r#"{"reason":"forbidden"}"#), "{seen}");
    }
}

#[tokio::test]
async fn losing_workspace_membership_ends_every_affected_stream() {
    let (app, w, t) = TestApp::seeded().await;
    let run = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
    create_pack(app.pool(), w.workspace, w.tenant, "generating").await;
    let mut rs = app.sse(&run_events(run), &t).await;
    let mut ps = app.sse(&pack_events(w.tenant), &t).await;
    let mut ws = app
        .sse(&format!("/v1/workspaces/{}/runs/events", w.workspace), &t)
        .await;
    let mut ms = app.sse(&format!("/v1/streams?runs={run}"), &t).await;
    // Another user's stream must not be touched.
    let mut other = app.sse(&run_events(run), &token(w.readonly)).await;
    for s in [&mut rs, &mut ps, &mut ws, &mut ms, &mut other] {
        s.expect("snapshot").await;
    }
    let removed_at = Instant::now();
    sqlx::query("DELETE FROM workspace_memberships WHERE user_id = $1 AND workspace_id = $2")
        .bind(w.owner)
        .bind(w.workspace)
        .execute(app.pool())
        .await
        .unwrap();
    for s in [&mut rs, &mut ps, &mut ws, &mut ms] {
        s.expect_end("forbidden").await;
    }
    assert!(
        removed_at.elapsed() < Duration::from_secs(1),
        "ended within a second"
    );
    assert_eq!(app.status(&run_events(run), &t).await, 404);
    // The other user's stream goes on.
    set_run(app.pool(), run, "status = 'completed'").await;
    assert_eq!(other.expect("update").await.data["status"], "completed");
}

#[tokio::test]
async fn readonly_role_ends_pack_stream_but_not_run_stream() {
    let (app, w, t) = TestApp::seeded().await;
    let run = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
    create_pack(app.pool(), w.workspace, w.tenant, "generating").await;
    let mut rs = app.sse(&run_events(run), &t).await;
    let mut ps = app.sse(&pack_events(w.tenant), &t).await;
    rs.expect("snapshot").await;
    ps.expect("snapshot").await;
    sqlx::query(
        "UPDATE tenant_memberships SET role = 'readonly' WHERE user_id = $1 AND tenant_id = $2",
    )
    .bind(w.owner)
    .bind(w.tenant)
    .execute(app.pool())
    .await
    .unwrap();
    ps.expect_end("forbidden").await;
    assert_eq!(app.status(&pack_events(w.tenant), &t).await, 403);
    // Tenant members of any role may still watch the run.
    set_run(app.pool(), run, "status = 'completed'").await;
    assert_eq!(rs.expect("update").await.data["status"], "completed");
    rs.expect_end("terminal").await;

    // Removing the tenant membership altogether ends a run stream with 403 on reconnect.
    let run2 = create_run(app.pool(), w.workspace, Some(w.tenant), "running").await;
    let mut rs2 = app.watch(&run_events(run2), &t).await;
    sqlx::query("DELETE FROM tenant_memberships WHERE user_id = $1")
        .bind(w.owner)
        .execute(app.pool())
        .await
        .unwrap();
    rs2.expect_end("forbidden").await;
    assert_eq!(app.status(&run_events(run2), &t).await, 403);
}

/// A burst larger than one drain (a bulk job's thousands of notifications) between the
/// state's re-read and its revocation: every access change that arrived before the states
/// are published is applied, however many notifications came with it.
#[tokio::test]
async fn a_revocation_behind_a_bulk_burst_never_leaks() {
    // A change the watcher re-reads, then a bulk job, then the revocation with an update,
    // all committed back to back.
    revoke_after(10, async |app, w, run| {
        set_run(app.pool(), run, r#"summary_counts = '{"processed": 1}'"#).await;
        app.exec(&format!(
            "INSERT INTO operation_runs (workspace_id, type, status)
             SELECT {}, 'bulk', 'completed' FROM generate_series(1, 9000)",
            w.other_workspace
        ))
        .await;
    })
    .await;
}

/// 200 revocations racing an update (alternately in one transaction and in the one just
/// before it) while eight writers keep the database and the watcher busy with progress
/// updates of 50 runs in the other workspace (which another user's feed follows): zero
/// leaks.
#[tokio::test]
async fn revocation_racing_an_update_under_saturated_writes_never_leaks() {
    let (app, w, _) = TestApp::seeded().await;
    let busy: Vec<i64> = {
        let mut runs = Vec::new();
        for _ in 0..50 {
            runs.push(create_run(app.pool(), w.other_workspace, None, "running").await);
        }
        runs
    };
    let outsiders_feed = format!("/v1/workspaces/{}/runs/events", w.other_workspace);
    let mut watching = app.watch(&outsiders_feed, &token(w.outsider)).await;
    let drained = tokio::spawn(async move { while watching.next().await.is_some() {} });
    let stop = tokio_util::sync::CancellationToken::new();
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let (pool, stop, busy) = (app.pool().clone(), stop.clone(), busy.clone());
            tokio::spawn(async move {
                let mut n = 0i64;
                while !stop.is_cancelled() {
                    n += 1;
                    let run = busy[(n as usize * 7 + i) % busy.len()];
                    progress(&pool, run, n).await;
                }
                n
            })
        })
        .collect();
    let kinds = [Kind::Run, Kind::Pack, Kind::Set, Kind::Feed];
    for trial in 0..200 {
        revoke_while_updating(&app, &w, kinds[trial % 4], trial % 2 == 0).await;
    }
    stop.cancel();
    let mut writes = 0;
    for writer in writers {
        writes += writer.await.unwrap();
    }
    drained.abort();
    assert!(writes > 200, "the writers were not busy: {writes} updates");
}

/// A feed whose snapshot read fails once (a locked table) writes nothing meanwhile and goes
/// on once the read succeeds: the failure is not held against it later.
#[tokio::test]
async fn a_feed_snapshot_that_failed_once_does_not_end_the_feed_later() {
    let (app, w, t) = TestApp::seeded_with(|s| s.query_timeout_secs = 1).await;
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    let mut feed = app.sse(&feed(&w), &t).await;
    assert_eq!(run_ids(&feed.expect("snapshot").await), vec![run]);
    // A migration holds the runs table; meanwhile the owner joins tenant B, so the feed must
    // re-read its snapshot, which fails until the table is free.
    let lock = app.lock("operation_runs").await;
    app.exec(&format!(
        "INSERT INTO tenant_memberships VALUES ({}, {}, 'owner')",
        w.tenant_b, w.owner
    ))
    .await;
    assert!(
        feed.next_within(Duration::from_millis(2500))
            .await
            .is_none(),
        "nothing is written while the snapshot cannot be read"
    );
    lock.rollback().await.unwrap();
    assert_eq!(run_ids(&feed.expect("snapshot").await), vec![run]);
    // Well past the 10 s an undecided stream gets: still open, still live.
    tokio::time::sleep(Duration::from_secs(11)).await;
    set_run(app.pool(), run, "status = 'completed'").await;
    let u = feed.expect("update").await;
    assert_eq!(u.data["id"], run);
}
