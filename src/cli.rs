//! What each subcommand does.

use crate::access::token::check_secret;
use crate::access::Tokens;
use crate::app::{connect_options, pool_options, prepare_database, wait_for_database};
use crate::config::{Command, DatabaseArgs, LogFormat, Settings};
use crate::http::Health;
use crate::model::ChangeSource;
use crate::{telemetry, Server};
use anyhow::Context;

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(settings) => {
            settings.validate()?;
            required_database(&settings.database, "serve")?;
            telemetry::init(settings.log_format);
            serve(settings).await
        }
        Command::Migrate(args) => {
            // The same database `serve` would use, so "run `runwire migrate`" is right advice.
            let url = required_database(&args.database, "migrate")?;
            let options = connect_options(&url)?;
            telemetry::init(LogFormat::Text);
            let health = Health::default();
            let conn = wait_for_database(&options, true, &health).await?;
            let source = crate::schema::migrate(&mut { conn }, args.changes).await?;
            println!(
                "installed the {} integration",
                match source {
                    ChangeSource::Wal => "logical replication (wal)",
                    ChangeSource::Notify => "NOTIFY",
                }
            );
            Ok(())
        }
        Command::Token(args) => {
            let secret = args.jwt_secret.filter(|s| !s.is_empty()).context(
                "set RUNWIRE_JWT_SECRET (or --jwt-secret) to the secret runwire serves with: \
                 at least 32 bytes, e.g. `openssl rand -hex 32`",
            )?;
            check_secret(&secret).context("RUNWIRE_JWT_SECRET (or --jwt-secret) is too short")?;
            println!(
                "{}",
                Tokens::new(secret.as_bytes()).issue_scoped(args.user, args.ttl, args.scope)
            );
            Ok(())
        }
        Command::Demo(settings) => {
            settings.validate()?;
            telemetry::init(settings.log_format);
            crate::demo::run(settings).await
        }
    }
}

/// The database `serve` and `migrate` use: only the one they are told. A service that fell
/// back to some local database when `DATABASE_URL` is unset or misspelt would look healthy
/// while watching nothing of the host's; only `demo` picks a database itself.
fn required_database(args: &DatabaseArgs, command: &str) -> anyhow::Result<String> {
    match &args.database_url {
        Some(url) if !url.is_empty() => Ok(url.clone()),
        _ => anyhow::bail!(
            "{command} needs a database: set DATABASE_URL (or --database-url) to the host app's \
             Postgres, e.g. postgres://runwire@db.example.com/app (`runwire demo` runs on a local \
             database without one)"
        ),
    }
}

/// The demo's database: `DATABASE_URL`; else the database `runwire` on a PostgreSQL answering
/// on 127.0.0.1:5432 (created if missing); else a private PostgreSQL started for this process
/// (stopped again when the returned guard drops). See `embedded_pg`.
pub(crate) async fn demo_database(
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

/// Serves HTTP at once, then waits for the database and migrates it before watching it: see
/// [`crate::app`].
async fn serve(settings: Settings) -> anyhow::Result<()> {
    let url = required_database(&settings.database, "serve")?;
    let options = connect_options(&url)?;
    let pool = pool_options(&settings).connect_lazy_with(options.clone());
    let fail_fast = settings.database_fail_fast;
    let (migrate, changes) = (settings.migrate, settings.changes);
    let mut running = Server::build(settings, pool).await?.start_http();
    let health = &running.state.health;
    let prepared = tokio::select! {
        p = prepare_database(&options, migrate, changes, fail_fast, health) => Some(p),
        _ = shutdown_signal() => None,
    };
    match prepared {
        Some(Ok(source)) => {
            running.start_watcher(source);
            shutdown_signal().await;
        }
        Some(Err(e)) => {
            running.shutdown().await;
            return Err(e);
        }
        None => {}
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

/// Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
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
