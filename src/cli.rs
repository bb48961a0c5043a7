//! What each subcommand does.

use crate::access::Tokens;
use crate::config::{Command, DatabaseArgs, LogFormat, Settings};
use crate::{connect_database, telemetry, Server, MIGRATOR};
use anyhow::Context;

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(settings) => {
            telemetry::init(settings.log_format);
            serve(settings).await
        }
        Command::Migrate(db) => {
            telemetry::init(LogFormat::Text);
            // The same database `serve` would use, so "run `runwire migrate`" is right advice.
            let (url, embedded) = database(&db).await?;
            let pool = connect_database(&url, 1).await?;
            MIGRATOR.run(&pool).await.context("migrations failed")?;
            pool.close().await;
            drop(embedded);
            println!("migrations applied");
            Ok(())
        }
        Command::Token(args) => {
            println!(
                "{}",
                Tokens::new(args.jwt_secret.as_bytes()).issue(args.user, args.ttl)
            );
            Ok(())
        }
        Command::Demo(settings) => {
            telemetry::init(settings.log_format);
            crate::demo::run(settings).await
        }
    }
}

/// The database to use: `DATABASE_URL`; else the database `runwire` on a PostgreSQL answering
/// on 127.0.0.1:5432 (created if missing); else a private PostgreSQL started for this process
/// (stopped again when the returned guard drops). See `embedded_pg`.
pub async fn database(
    args: &DatabaseArgs,
) -> anyhow::Result<(String, Option<crate::embedded_pg::EmbeddedPostgres>)> {
    match &args.database_url {
        Some(url) if !url.is_empty() => Ok((url.clone(), None)),
        _ => {
            let pg = crate::embedded_pg::EmbeddedPostgres::start().await?;
            Ok((pg.url(), Some(pg)))
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let (url, embedded) = database(&settings.database).await?;
    let pool = connect_database(&url, settings.db_pool_size).await?;
    if settings.migrate {
        MIGRATOR.run(&pool).await.context("migrations failed")?;
    } else {
        require_integration(&pool).await?;
    }
    let running = Server::build(settings, pool).await?.start();
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    drop(embedded);
    Ok(())
}

/// `serve` without `--migrate` changes no schema, so it can run as a role that may only read;
/// it refuses to start on a database without runwire's triggers, where no stream would ever
/// see a change.
pub async fn require_integration(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    let unreadable = crate::store::unreadable_tables(pool)
        .await
        .context("cannot check which tables runwire may read")?;
    if !unreadable.is_empty() {
        anyhow::bail!(
            "runwire needs SELECT on {} (missing table or grant); see docs/operations.md",
            unreadable.join(", ")
        );
    }
    let missing = crate::store::missing_integration(pool)
        .await
        .context("cannot check the database for runwire's integration migration")?;
    if !missing.is_empty() {
        anyhow::bail!(
            "the integration migration is not applied to this database (missing {}): run `runwire migrate` (or pass --migrate)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
