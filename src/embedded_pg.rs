//! The database when `DATABASE_URL` is not set, so the README's first command works on a
//! fresh machine with PostgreSQL installed and nothing configured:
//!
//! 1. a PostgreSQL already answering on the default port (127.0.0.1:5432, user `postgres`) is
//!    used, with a database `runwire` created on it if missing;
//! 2. otherwise a private PostgreSQL is started from the installed binaries (`initdb` and
//!    `postgres` on PATH or under /usr/lib/postgresql/*/bin) in `./.runwire/pg`, as the
//!    unprivileged user `nobody` when running as root (PostgreSQL refuses to run as root),
//!    with `wal_level = logical` (so runwire reads changes from the WAL), and stopped again
//!    when [`EmbeddedPostgres`] drops.
//!
//! Without either, it fails with one line that says what to install or set.

use anyhow::{bail, Context};
use sqlx::{Connection, PgConnection};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const DATABASE: &str = "runwire";

pub struct EmbeddedPostgres {
    url: String,
    /// Set when this process started the server (and so must stop it).
    private: Option<Private>,
}

struct Private {
    bin: PathBuf,
    data: PathBuf,
    run_as: Option<&'static str>,
    child: Child,
}

impl EmbeddedPostgres {
    /// Finds or starts a database; see the module comment.
    pub async fn start() -> anyhow::Result<Self> {
        if let Some(url) = default_server().await {
            tracing::info!(
                "no DATABASE_URL: using the PostgreSQL on 127.0.0.1:5432, database {DATABASE}"
            );
            return Ok(EmbeddedPostgres { url, private: None });
        }
        let private = tokio::task::spawn_blocking(start_private)
            .await
            .context("starting PostgreSQL")??;
        let (private, url) = private;
        wait_until_up(&url).await?;
        tracing::info!(
            data_dir = %private.data.display(),
            "no DATABASE_URL and nothing on 127.0.0.1:5432: started a private PostgreSQL (stopped on exit)"
        );
        Ok(EmbeddedPostgres {
            url,
            private: Some(private),
        })
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// A throwaway private PostgreSQL under `root` whose user `postgres` must give `password`
    /// (scram-sha-256), stopped when dropped: for testing how start-up reports a wrong
    /// password, which a server that trusts local connections never asks for. The URL
    /// carries the password.
    pub async fn start_with_password(root: &Path, password: &str) -> anyhow::Result<Self> {
        let root = root.to_path_buf();
        let password = password.to_string();
        let (private, url) = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&root)?;
            let pwfile = root.join("pwfile");
            std::fs::write(&pwfile, &password)?;
            let auth = format!("--pwfile={}", pwfile.display());
            let (private, port) = start_private_at(&root, &["--auth=scram-sha-256", &auth])?;
            anyhow::Ok((
                private,
                format!("postgres://postgres:{password}@127.0.0.1:{port}/postgres"),
            ))
        })
        .await
        .context("starting PostgreSQL")??;
        wait_until_up(&url).await?;
        Ok(EmbeddedPostgres {
            url,
            private: Some(private),
        })
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if let Some(p) = self.private.as_mut() {
            let pg_ctl = p.bin.join("pg_ctl");
            let data = p.data.display().to_string();
            let _ = as_user(
                p.run_as,
                &pg_ctl,
                &["-D", &data, "-m", "fast", "-w", "stop"],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
            let _ = p.child.wait();
            tracing::info!("private PostgreSQL stopped");
        }
    }
}

/// A server on the default port that lets us in: use (and if needed create) `runwire` there.
async fn default_server() -> Option<String> {
    let mut conn = tokio::time::timeout(Duration::from_secs(3), PgConnection::connect(DEFAULT_URL))
        .await
        .ok()?
        .ok()?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(DATABASE)
            .fetch_one(&mut conn)
            .await
            .ok()?;
    if !exists {
        sqlx::query(&format!("CREATE DATABASE {DATABASE}"))
            .execute(&mut conn)
            .await
            .ok()?;
    }
    Some(format!("postgres://postgres@127.0.0.1:5432/{DATABASE}"))
}

fn start_private() -> anyhow::Result<(Private, String)> {
    let root = std::env::current_dir()?.join(".runwire");
    let (private, port) = start_private_at(&root, &["--auth=trust"])?;
    Ok((
        private,
        format!("postgres://postgres@127.0.0.1:{port}/postgres"),
    ))
}

/// Starts a private server with its data in `root/pg` (initialised with `auth` if new);
/// returns it and its port.
fn start_private_at(root: &Path, auth: &[&str]) -> anyhow::Result<(Private, u16)> {
    let bin = find_binaries().context(
        "no DATABASE_URL set and no PostgreSQL found: install PostgreSQL (e.g. `apt-get install postgresql`) or set DATABASE_URL",
    )?;
    let run_as = running_as_root().then_some("nobody");
    let data = root.join("pg");
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
    if let Some(user) = run_as {
        let ok = Command::new("chown")
            .args(["-R", user, &root.display().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            bail!("cannot hand {} to the user {user}", root.display());
        }
    }
    let data_s = data.display().to_string();
    if !data.join("PG_VERSION").exists() {
        let mut args = vec!["-D", &data_s, "-U", "postgres", "-E", "UTF8"];
        args.extend_from_slice(auth);
        let out = as_user(run_as, &bin.join("initdb"), &args)
            .output()
            .context("cannot run initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let port = free_port()?;
    let log = std::fs::File::create(root.join("postgres.log"))?;
    let child = as_user(
        run_as,
        &bin.join("postgres"),
        &[
            "-D",
            &data_s,
            "-p",
            &port.to_string(),
            "-k",
            &data_s,
            "-c",
            "listen_addresses=127.0.0.1",
            // Logical replication, so runwire takes its changes from the WAL (the demo
            // included): nothing on the tables, nothing in the way of their writes.
            "-c",
            "wal_level=logical",
        ],
    )
    .stdout(log.try_clone()?)
    .stderr(log)
    .spawn()
    .context("cannot start postgres")?;
    Ok((
        Private {
            bin,
            data,
            run_as,
            child,
        },
        port,
    ))
}

async fn wait_until_up(url: &str) -> anyhow::Result<()> {
    for _ in 0..300 {
        if PgConnection::connect(url).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the private PostgreSQL did not start; see .runwire/postgres.log")
}

fn as_user(user: Option<&str>, program: &Path, args: &[&str]) -> Command {
    match user {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--"]).arg(program).args(args);
            c
        }
        None => {
            let mut c = Command::new(program);
            c.args(args);
            c
        }
    }
}

fn find_binaries() -> Option<PathBuf> {
    let has = |dir: &Path| {
        dir.join("initdb").is_file()
            && dir.join("postgres").is_file()
            && dir.join("pg_ctl").is_file()
    };
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has(&dir) {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| has(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
