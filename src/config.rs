//! Command-line and environment configuration. Every flag is also an environment variable so
//! the service can be configured the twelve-factor way beside the host application.

use crate::schema::Changes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "runwire",
    version,
    about = "Postgres → Server-Sent Events for operation runs and review packs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check that the integration migration is applied (or apply it with --migrate), start
    /// the listener and serve HTTP. Needs only SELECT on the host tables, and LISTEN.
    Serve(Settings),
    /// Install what the change source needs (a publication for logical replication, or
    /// triggers for NOTIFY), remove what it does not, and exit. Creates the seven host tables
    /// only in a database that has none of them. Needs the host tables' owner.
    Migrate(MigrateArgs),
    /// Print a signed access token for a user (for testing and for hosts without a JWT library).
    Token(TokenArgs),
    /// Apply migrations, seed a demo workspace, start the service and a simulator, and print
    /// the dashboard URL and the secret (RUNWIRE_JWT_SECRET, random if unset).
    // The demo always migrates its database: `--migrate` is `serve`'s.
    #[command(mut_arg("migrate", |a| a.hide(true)))]
    Demo(Settings),
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Postgres connection URL (postgres://user@host/database); `serve` and `migrate` refuse
    /// to start without one. `demo` without it: if a PostgreSQL answers on 127.0.0.1:5432
    /// (user postgres, no password), the database `runwire` there, created if missing;
    /// otherwise a private PostgreSQL under ./.runwire/pg (needs PostgreSQL's binaries
    /// installed), stopped on exit.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// What to install: `wal` (a publication; needs wal_level = logical), `notify`
    /// (triggers), or `auto` (wal where the server has wal_level = logical).
    #[arg(long, env = "RUNWIRE_CHANGES", value_enum, default_value_t = Changes::Auto)]
    pub changes: Changes,
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// User id to put into `sub`.
    #[arg(long)]
    pub user: i64,
    /// Lifetime: seconds (`3600`) or a duration (`90m`, `12h`, `30d`).
    #[arg(long, default_value = "3600", value_parser = parse_ttl)]
    pub ttl: u64,
    /// Limit the token to one workspace's live feed and its JSON snapshot, for embedding a
    /// view (`workspace:ID`); every other stream refuses it with 403.
    #[arg(long)]
    pub scope: Option<crate::access::token::TokenScope>,
    /// HS256 secret shared with the host app: at least 32 bytes (`openssl rand -hex 32`).
    /// Required, here or in the environment variable.
    #[arg(long, env = "RUNWIRE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

/// A token lifetime in seconds: a plain number of seconds, or a duration such as `30d`.
fn parse_ttl(s: &str) -> Result<u64, String> {
    let secs = match s.parse::<u64>() {
        Ok(secs) => secs,
        Err(_) => humantime::parse_duration(s)
            .map(|d| d.as_secs())
            .map_err(|e| format!("{e}: give seconds (3600) or a duration (90m, 12h, 30d)"))?,
    };
    // A token that expires as it is made is never what was meant.
    if secs == 0 {
        return Err("a token must live at least one second".into());
    }
    Ok(secs)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything `serve` (and `demo`) needs.
#[derive(Debug, Clone, Parser)]
pub struct Settings {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// A separate URL for the LISTEN connection, for when DATABASE_URL points at a
    /// transaction-mode pooler (PgBouncer) that cannot carry LISTEN. Defaults to DATABASE_URL.
    #[arg(long, env = "RUNWIRE_LISTENER_DATABASE_URL", hide_env_values = true)]
    pub listener_database_url: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "RUNWIRE_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// HS256 secret shared with the host app, which mints the tokens: at least 32 bytes
    /// (generate one with `openssl rand -hex 32`).
    #[arg(long, env = "RUNWIRE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Seconds between SSE keep-alive comments.
    #[arg(long, env = "RUNWIRE_KEEPALIVE_SECS", default_value_t = 15)]
    pub keepalive_secs: u64,
    /// A listener connection that shows no sign of life for this long is replaced.
    #[arg(long, env = "RUNWIRE_HEARTBEAT_SECS", default_value_t = 15)]
    pub heartbeat_secs: u64,
    /// Open streams allowed per user (429 beyond).
    #[arg(long, env = "RUNWIRE_MAX_STREAMS_PER_USER", default_value_t = 64)]
    pub max_streams_per_user: usize,
    /// Open streams allowed per process (503 beyond).
    #[arg(long, env = "RUNWIRE_MAX_STREAMS", default_value_t = 19_000)]
    pub max_streams: usize,
    /// Close streams (without `end`) after about this many seconds, ±10 %, so clients
    /// reconnect and load rebalances across instances. 0 = never.
    #[arg(long, env = "RUNWIRE_MAX_STREAM_LIFETIME_SECS", default_value_t = 0)]
    pub max_stream_lifetime_secs: u64,
    /// Origins allowed to call runwire from a browser (comma separated); credentials are
    /// allowed only for these.
    #[arg(long, env = "RUNWIRE_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Origins allowed to frame the embeddable view `/embed/workspaces/{id}` (comma
    /// separated; its `Content-Security-Policy: frame-ancestors`). None: only runwire's own
    /// origin may frame it.
    #[arg(long, env = "RUNWIRE_EMBED_ORIGINS", value_delimiter = ',')]
    pub embed_origins: Vec<String>,
    /// Serve `/metrics` on this address only (a listener of its own: loopback, or an
    /// interface only Prometheus reaches); `--bind` then answers `/metrics` with 404. Without
    /// it `/metrics` is on `--bind`, open to whoever reaches that.
    #[arg(long, env = "RUNWIRE_METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,
    /// Label the operations metrics (`runwire_runs_active`, …) by workspace too: one series
    /// per workspace, type and status, so only for a bounded number of workspaces.
    #[arg(long, env = "RUNWIRE_METRICS_WORKSPACE_LABEL", default_value_t = false)]
    pub metrics_workspace_label: bool,
    /// Mark the session cookie `Secure` (serve over HTTPS).
    #[arg(long, env = "RUNWIRE_COOKIE_SECURE", default_value_t = false)]
    pub cookie_secure: bool,
    /// Maximum database connections in the query pool (the listener has its own).
    #[arg(long, env = "RUNWIRE_DB_POOL_SIZE", default_value_t = 10)]
    pub db_pool_size: u32,
    /// Open client connections allowed (streams included); beyond, new connections are
    /// closed as soon as they are accepted. Default: the open-files limit minus room for the
    /// query pool, the listener and files.
    #[arg(long, env = "RUNWIRE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds a client has to send each request head, counted from the moment the
    /// connection is ready for it (accepted, or idle after the previous response).
    #[arg(long, env = "RUNWIRE_REQUEST_HEAD_TIMEOUT_SECS", default_value_t = 10)]
    pub request_head_timeout_secs: u64,
    /// A connection (other than a stream) on which no byte moves for this many seconds is
    /// closed.
    #[arg(long, env = "RUNWIRE_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u64,
    /// Seconds a connection has to make a request whose credentials are accepted; until
    /// then it is closed at this deadline (public paths are served meanwhile), and at the
    /// connection cap it may be evicted for a new connection.
    #[arg(long, env = "RUNWIRE_AUTH_TIMEOUT_SECS", default_value_t = 5)]
    pub auth_timeout_secs: u64,
    /// Seconds a client may take none of the bytes written to it before its connection
    /// (or its stream, on HTTP/2) is given up.
    #[arg(long, env = "RUNWIRE_WRITE_TIMEOUT_SECS", default_value_t = 30)]
    pub write_timeout_secs: u64,
    /// Longest a request waits for its database read, queueing included; also the
    /// `statement_timeout` of every query connection. Beyond: 503 `database_unavailable`.
    #[arg(long, env = "RUNWIRE_QUERY_TIMEOUT_SECS", default_value_t = 5)]
    pub query_timeout_secs: u64,
    /// Longest a request waits for a free query connection (then 503).
    #[arg(long, env = "RUNWIRE_DB_ACQUIRE_TIMEOUT_SECS", default_value_t = 3)]
    pub db_acquire_timeout_secs: u64,
    /// Exit with the cause when the database cannot be reached at start-up, instead of
    /// waiting for it (with backoff, logging the cause of every failed attempt).
    #[arg(long, env = "RUNWIRE_DATABASE_FAIL_FAST", default_value_t = false)]
    pub database_fail_fast: bool,
    /// Log lines on stderr as `text` (for people) or `json` (one object a line, for log
    /// pipelines); `RUST_LOG` filters them (default `info`).
    #[arg(long, env = "RUNWIRE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// `serve`: apply migrations at start (needs DDL rights). Without it, `serve` changes no
    /// schema: it checks that the integration migration is in place and exits if not.
    #[arg(long, env = "RUNWIRE_MIGRATE", default_value_t = false)]
    pub migrate: bool,
    /// Where changes come from: `wal` (logical replication: nothing on the host's tables,
    /// needs wal_level = logical and a REPLICATION role), `notify` (triggers; serialises the
    /// host's commits), or `auto` (wal where possible, else notify with a warning).
    #[arg(long, env = "RUNWIRE_CHANGES", value_enum, default_value_t = Changes::Auto)]
    pub changes: Changes,
}

/// The allowed values of the numeric flags: one row per flag (`--flag`, its value, the
/// smallest and largest allowed), so a flag added later adds one row. Checked once at start,
/// before anything is changed, so that a typo is refused rather than run, and so that adding
/// any of these durations to an `Instant` (a keep-alive after the last write, twice the
/// heartbeat) cannot overflow anywhere downstream.
fn ranges(s: &Settings) -> Vec<(&'static str, Option<u64>, u64, u64)> {
    const HOUR: u64 = 3600;
    const DAY: u64 = 24 * HOUR;
    let count = |n: usize| Some(u64::try_from(n).unwrap_or(u64::MAX));
    vec![
        ("keepalive-secs", Some(s.keepalive_secs), 1, HOUR),
        ("heartbeat-secs", Some(s.heartbeat_secs), 1, HOUR),
        (
            "max-stream-lifetime-secs",
            Some(s.max_stream_lifetime_secs),
            0,
            365 * DAY,
        ),
        (
            "request-head-timeout-secs",
            Some(s.request_head_timeout_secs),
            1,
            HOUR,
        ),
        ("idle-timeout-secs", Some(s.idle_timeout_secs), 1, DAY),
        ("auth-timeout-secs", Some(s.auth_timeout_secs), 1, HOUR),
        ("write-timeout-secs", Some(s.write_timeout_secs), 1, HOUR),
        ("query-timeout-secs", Some(s.query_timeout_secs), 1, HOUR),
        (
            "db-acquire-timeout-secs",
            Some(s.db_acquire_timeout_secs),
            1,
            HOUR,
        ),
        (
            "max-streams-per-user",
            count(s.max_streams_per_user),
            1,
            1_000_000,
        ),
        ("max-streams", count(s.max_streams), 1, 10_000_000),
        (
            "max-connections",
            s.max_connections.and_then(count),
            1,
            10_000_000,
        ),
        ("db-pool-size", Some(u64::from(s.db_pool_size)), 1, 10_000),
    ]
}

/// A flag's value outside its range: one line naming the flag, its variable and the range.
#[derive(Debug, thiserror::Error)]
#[error("--{flag} (RUNWIRE_{env}) must be between {min} and {max}{unit}, not {value}")]
pub struct OutOfRange {
    flag: &'static str,
    env: String,
    value: u64,
    min: u64,
    max: u64,
    unit: &'static str,
}

impl Settings {
    /// Refuses any value outside its range (see [`ranges`]). `serve` and `demo` call it before
    /// they touch anything, and [`crate::Server::build`] again for callers of the library.
    pub fn validate(&self) -> Result<(), OutOfRange> {
        for (flag, value, min, max) in ranges(self) {
            match value {
                Some(value) if value < min || value > max => {
                    return Err(OutOfRange {
                        flag,
                        env: flag.to_uppercase().replace('-', "_"),
                        value,
                        min,
                        max,
                        unit: if flag.ends_with("-secs") {
                            " seconds"
                        } else {
                            ""
                        },
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Settings with every default, for tests and embedding. The environment is not read:
    /// a `RUNWIRE_*` variable set where tests run must not change what they test.
    pub fn defaults() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let command = Settings::command().mut_args(|arg| arg.env(None));
        let matches = command.get_matches_from(["runwire"]);
        Settings::from_arg_matches(&matches).expect("the defaults parse")
    }

    pub fn query_timeout(&self) -> Duration {
        Duration::from_secs(self.query_timeout_secs.max(1))
    }

    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_secs(self.db_acquire_timeout_secs.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lifetimes_and_scopes() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["runwire", "token", "--jwt-secret", "s"];
            argv.extend(args);
            match Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(Command::Token(t)) => Ok((t.user, t.ttl, t.scope.map(|s| s.to_string()))),
                Ok(_) => unreachable!(),
                Err(e) => Err(e.to_string()),
            }
        };
        assert_eq!(parse(&["--user", "1"]), Ok((1, 3600, None)));
        let scoped = parse(&["--user", "2", "--scope", "workspace:9", "--ttl", "30d"]);
        assert_eq!(scoped, Ok((2, 30 * 24 * 3600, Some("workspace:9".into()))));
        assert_eq!(parse(&["--user", "1", "--ttl", "90"]), Ok((1, 90, None)));
        assert!(parse(&["--user", "1", "--ttl", "soon"]).is_err());
        assert!(parse(&["--user", "1", "--scope", "tenant:9"]).is_err());
    }

    #[test]
    fn the_defaults_are_in_range_and_each_range_is_enforced() {
        let defaults = Settings::defaults();
        defaults.validate().expect("the defaults are valid");
        let mut s = defaults.clone();
        s.keepalive_secs = u64::MAX;
        let e = s.validate().unwrap_err().to_string();
        assert!(
            e.starts_with(
                "--keepalive-secs (RUNWIRE_KEEPALIVE_SECS) must be between 1 and 3600 seconds"
            ),
            "{e}"
        );
        let mut s = defaults;
        s.max_connections = Some(0);
        let e = s.validate().unwrap_err().to_string();
        assert_eq!(
            e,
            "--max-connections (RUNWIRE_MAX_CONNECTIONS) must be between 1 and 10000000, not 0"
        );
    }

    #[test]
    fn defaults_ignore_the_environment() {
        // Set for this process only; no other test reads this variable.
        std::env::set_var("RUNWIRE_KEEPALIVE_SECS", "99");
        assert_eq!(Settings::defaults().keepalive_secs, 15);
        std::env::remove_var("RUNWIRE_KEEPALIVE_SECS");
    }
}
