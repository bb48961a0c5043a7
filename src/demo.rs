//! `runwire demo`: one command that shows runwire working. It seeds a demo workspace (if the
//! database has none), starts the service, and runs a simulator that plays the host app:
//! it creates operation runs and review packs and walks them through their lifecycles —
//! progress counts, failures and all — by writing to the tables, exactly as a host would.

use crate::access::token::check_secret;
use crate::access::Tokens;
use crate::app::connect_database;
use crate::app::{connect_options, prepare_database};
use crate::config::Settings;
use crate::http::Health;
use crate::Server;
use anyhow::Context;
use rand::Rng;
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WORKSPACE: &str = "Northwind Operations";
const RUN_TYPES: [&str; 6] = [
    "sync",
    "backup",
    "restore",
    "inventory",
    "compliance_scan",
    "policy_sync",
];

/// The seeded ids the simulator and the printed URL need.
#[derive(Debug, Clone)]
pub(crate) struct DemoWorld {
    pub workspace: i64,
    pub admin: i64,
    pub viewer: i64,
    pub tenants: Vec<i64>,
}

pub(crate) async fn run(mut settings: Settings) -> anyhow::Result<()> {
    // The secret is the caller's (RUNWIRE_JWT_SECRET / --jwt-secret; it must be strong
    // enough, as for `serve`) or a random one that is printed below, so `runwire token` can
    // mint more tokens for this demo.
    let chosen = settings.jwt_secret.clone().filter(|s| !s.is_empty());
    let secret = chosen.clone().unwrap_or_else(|| {
        format!(
            "{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        )
    });
    check_secret(&secret).context("RUNWIRE_JWT_SECRET (or --jwt-secret) is too short")?;
    settings.jwt_secret = Some(secret.clone());
    let (url, embedded) = crate::cli::demo_database(&settings.database).await?;
    // The demo owns its database: it migrates.
    let source = prepare_database(
        &connect_options(&url)?,
        true,
        settings.changes,
        settings.database_fail_fast,
        &Health::default(),
    )
    .await?;
    let pool = connect_database(&url, &settings).await?;
    let world = seed(&pool).await?;
    let running = Server::build(settings, pool.clone()).await?.start(source);
    let tokens = Tokens::new(secret.as_bytes());
    let admin = tokens.issue(world.admin, 12 * 3600);
    let viewer = tokens.issue(world.viewer, 12 * 3600);
    let base = format!("http://{}", running.addr);
    println!();
    println!("  runwire demo is live. Open the dashboard:");
    println!();
    println!("    {base}/#token={admin}&workspace={}", world.workspace);
    println!();
    println!("  As a read-only member (fewer tenants, no review packs):");
    println!("    {base}/#token={viewer}&workspace={}", world.workspace);
    println!();
    println!("  Or watch a stream from the terminal:");
    println!(
        "    curl -N '{base}/v1/workspaces/{}/runs/events?access_token={admin}'",
        world.workspace
    );
    println!();
    let shown = if chosen.is_some() {
        "<your RUNWIRE_JWT_SECRET>"
    } else {
        secret.as_str()
    };
    println!(
        "  Mint more tokens (user ids: admin {}, viewer {}):",
        world.admin, world.viewer
    );
    println!(
        "    RUNWIRE_JWT_SECRET={shown} runwire token --user {}",
        world.admin
    );
    if chosen.is_none() {
        println!("  (The secret is random: start the demo with RUNWIRE_JWT_SECRET set to keep");
        println!("  these URLs valid across restarts.)");
    }
    println!();
    println!("  Ctrl-C stops the demo.");
    println!();
    let stop = CancellationToken::new();
    let sim = tokio::spawn(simulate(pool, world, stop.clone()));
    crate::cli::shutdown_signal().await;
    stop.cancel();
    let _ = sim.await;
    running.shutdown().await;
    drop(embedded);
    Ok(())
}

/// Creates the demo workspace, tenants, users and memberships once; reuses them afterwards.
pub(crate) async fn seed(pool: &PgPool) -> anyhow::Result<DemoWorld> {
    let mut tx = pool.begin().await?;
    let existing: Option<i64> =
        sqlx::query_scalar("SELECT id FROM workspaces WHERE name = $1 ORDER BY id LIMIT 1")
            .bind(WORKSPACE)
            .fetch_optional(&mut *tx)
            .await?;
    let user = |email: &'static str, name: &'static str| {
        sqlx::query_scalar::<_, i64>(
            "INSERT INTO users (email, name) VALUES ($1, $2)
             ON CONFLICT (email) DO UPDATE SET name = EXCLUDED.name RETURNING id",
        )
        .bind(email)
        .bind(name)
    };
    let admin = user("admin@northwind.example", "Avery Admin")
        .fetch_one(&mut *tx)
        .await?;
    let viewer = user("viewer@northwind.example", "Riley Reviewer")
        .fetch_one(&mut *tx)
        .await?;
    let workspace = match existing {
        Some(id) => id,
        None => {
            let ws: i64 =
                sqlx::query_scalar("INSERT INTO workspaces (name) VALUES ($1) RETURNING id")
                    .bind(WORKSPACE)
                    .fetch_one(&mut *tx)
                    .await?;
            for (user, role) in [(admin, "owner"), (viewer, "member")] {
                grant(&mut tx, "workspace_memberships", ws, user, role).await?;
            }
            for (name, admin_role, viewer_role) in [
                ("Contoso Europe", "owner", Some("readonly")),
                ("Fabrikam US", "manager", None),
                ("Tailspin APAC", "operator", Some("readonly")),
                ("Woodgrove Bank", "owner", None),
            ] {
                let t: i64 = sqlx::query_scalar(
                    "INSERT INTO tenants (workspace_id, name) VALUES ($1, $2) RETURNING id",
                )
                .bind(ws)
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
                for (user, role) in [(admin, Some(admin_role)), (viewer, viewer_role)] {
                    if let Some(role) = role {
                        grant(&mut tx, "tenant_memberships", t, user, role).await?;
                    }
                }
            }
            ws
        }
    };
    let tenants: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM tenants WHERE workspace_id = $1 ORDER BY id")
            .bind(workspace)
            .fetch_all(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(DemoWorld {
        workspace,
        admin,
        viewer,
        tenants,
    })
}

/// A membership row: `user` has `role` in the workspace or tenant `scope`.
async fn grant(
    conn: &mut sqlx::PgConnection,
    memberships: &str,
    scope: i64,
    user: i64,
    role: &str,
) -> sqlx::Result<()> {
    sqlx::query(&format!("INSERT INTO {memberships} VALUES ($1, $2, $3)"))
        .bind(scope)
        .bind(user)
        .bind(role)
        .execute(conn)
        .await
        .map(drop)
}

fn between(lo: u64, hi: u64) -> u64 {
    rand::thread_rng().gen_range(lo..hi)
}

fn chance(p: f64) -> bool {
    rand::thread_rng().gen_bool(p)
}

async fn pause(stop: &CancellationToken, ms: u64) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(Duration::from_millis(ms)) => true,
    }
}

/// Plays the host application until `stop`: a steady trickle of runs, and a review pack per
/// tenant every so often. Errors (the database going away) pause the simulator, never crash.
pub(crate) async fn simulate(pool: PgPool, world: DemoWorld, stop: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    for tenant in world.tenants.clone() {
        let (pool, stop, ws) = (pool.clone(), stop.clone(), world.workspace);
        tasks.spawn(async move {
            // Stagger the tenants so the cards do not move in lockstep.
            if !pause(&stop, between(500, 6000)).await {
                return;
            }
            while !stop.is_cancelled() {
                if let Err(e) = pack_lifecycle(&pool, ws, tenant, &stop).await {
                    tracing::warn!(error = %e, "demo simulator: review pack step failed");
                }
                if !pause(&stop, between(15_000, 35_000)).await {
                    return;
                }
            }
        });
    }
    while !stop.is_cancelled() {
        let tenant = if chance(0.2) {
            None
        } else {
            Some(world.tenants[between(0, world.tenants.len() as u64) as usize])
        };
        let (pool, stop2, ws) = (pool.clone(), stop.clone(), world.workspace);
        tasks.spawn(async move {
            if let Err(e) = run_lifecycle(&pool, ws, tenant, &stop2).await {
                tracing::warn!(error = %e, "demo simulator: run step failed");
            }
        });
        if !pause(&stop, between(1_500, 4_000)).await {
            break;
        }
    }
    tasks.shutdown().await;
}

// The two lifecycles begin alike (insert the row, then pause): each is the host's writes for
// one kind, in order, so a reader follows one item from start to end.

/// One run as the host writes it: queued, running with progress, completed with an outcome.
async fn run_lifecycle(
    pool: &PgPool,
    ws: i64,
    tenant: Option<i64>,
    stop: &CancellationToken,
) -> sqlx::Result<()> {
    let kind = RUN_TYPES[between(0, RUN_TYPES.len() as u64) as usize];
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO operation_runs (workspace_id, tenant_id, type) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(ws)
    .bind(tenant)
    .bind(kind)
    .fetch_one(pool)
    .await?;
    if !pause(stop, between(800, 2_500)).await {
        return Ok(());
    }
    let total = between(20, 240) as i64;
    sqlx::query(
        "UPDATE operation_runs SET status = 'running', started_at = now(), updated_at = now(),
         summary_counts = jsonb_build_object('total', $2::bigint, 'processed', 0, 'failed', 0) WHERE id = $1",
    )
    .bind(id)
    .bind(total)
    .execute(pool)
    .await?;
    let (mut processed, mut failed) = (0i64, 0i64);
    let crash = chance(0.08);
    while processed + failed < total {
        if !pause(stop, between(300, 800)).await {
            return Ok(());
        }
        let step = between(1, (total as u64 / 6).max(2)) as i64;
        let bad = if chance(0.05) {
            between(1, 3) as i64
        } else {
            0
        };
        processed = (processed + step).min(total - failed);
        failed = (failed + bad).min(total - processed);
        if crash && processed > total / 2 {
            break;
        }
        sqlx::query(
            "UPDATE operation_runs SET updated_at = now(),
             summary_counts = jsonb_build_object('total', $2::bigint, 'processed', $3::bigint, 'failed', $4::bigint)
             WHERE id = $1",
        )
        .bind(id)
        .bind(total)
        .bind(processed)
        .bind(failed)
        .execute(pool)
        .await?;
    }
    let outcome = if crash || failed * 4 > total {
        "failed"
    } else if failed > 0 {
        "partially_succeeded"
    } else {
        "succeeded"
    };
    sqlx::query(
        "UPDATE operation_runs SET status = 'completed', outcome = $2, completed_at = now(), updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(outcome)
    .execute(pool)
    .await?;
    Ok(())
}

/// One review pack: queued, generating, then ready or failed.
async fn pack_lifecycle(
    pool: &PgPool,
    ws: i64,
    tenant: i64,
    stop: &CancellationToken,
) -> sqlx::Result<()> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO review_packs (workspace_id, tenant_id) VALUES ($1, $2) RETURNING id",
    )
    .bind(ws)
    .bind(tenant)
    .fetch_one(pool)
    .await?;
    if !pause(stop, between(1_000, 2_500)).await {
        return Ok(());
    }
    sqlx::query("UPDATE review_packs SET status = 'generating', updated_at = now() WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    if !pause(stop, between(4_000, 9_000)).await {
        return Ok(());
    }
    let sql = if chance(0.85) {
        "UPDATE review_packs SET status = 'ready', generated_at = now(),
         expires_at = now() + interval '30 days', updated_at = now() WHERE id = $1"
    } else {
        "UPDATE review_packs SET status = 'failed', updated_at = now() WHERE id = $1"
    };
    sqlx::query(sql).bind(id).execute(pool).await?;
    Ok(())
}
