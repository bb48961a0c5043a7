//! Configuration as a new operator meets it, against the real binary: every flag's value is
//! either refused at start with one clear line (the flag, the allowed range) and a nonzero
//! exit, or runs without a panic.

mod common;

use common::binary::{runwire, strong_secret, Proc};
use common::*;
use std::time::Duration;

/// What became of a start: refused (its output), or listening at an address.
enum Start {
    Refused(String),
    Listening(std::net::SocketAddr),
}

async fn started(p: &mut Proc) -> Start {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            // Let the readers drain the pipes.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let out = p.lines.lock().unwrap().join("\n");
            assert!(!status.success(), "exited successfully: {out}");
            return Start::Refused(out);
        }
        let listening = p
            .lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("runwire listening"))
            .cloned();
        if let Some(line) = listening {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            return Start::Listening(v["fields"]["addr"].as_str().unwrap().parse().unwrap());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "neither exit nor listening"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Exercises a running instance where time is added to instants: a stream's keep-alive and
/// lifetime, the change source's heartbeat, request and idle timeouts, a query.
async fn exercise(addr: std::net::SocketAddr, db: &TestDb, run: i64, t: &str) {
    let c = Client::to(addr);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // A refused connection (a tiny --max-connections) is an answer too; a panic is not.
    if let Ok(resp) = http
        .get(c.url(&run_events(run)))
        .bearer_auth(t)
        .send()
        .await
    {
        if resp.status() == 200 {
            use eventsource_stream::Eventsource;
            use futures_util::StreamExt;
            let mut events = resp.bytes_stream().eventsource();
            let first = tokio::time::timeout(WAIT, events.next()).await;
            let first = first.expect("a snapshot in time");
            assert!(
                matches!(first, Some(Ok(ref e)) if e.event == "snapshot"),
                "{first:?}"
            );
        }
    }
    let _ = http
        .get(c.url(&format!("/v1/runs/{run}")))
        .bearer_auth(t)
        .send()
        .await;
    sqlx::query("UPDATE operation_runs SET summary_counts = '{\"processed\": 1}' WHERE id = $1")
        .bind(run)
        .execute(&db.pool)
        .await
        .unwrap();
    let _ = http.get(c.url("/readyz")).send().await;
}

#[tokio::test]
async fn no_value_of_any_flag_panics_each_is_refused_clearly_or_runs() {
    let db = TestDb::new().await;
    let w = seed(&db.pool).await;
    let run = create_run(&db.pool, w.workspace, None, "running").await;
    let t = token(w.owner);
    let url = db.url();
    let huge = [
        "0",
        "1",
        "-1",
        "4294967295",
        "18446744073709551615",
        "18446744073709551616",
    ];
    let flags = [
        "keepalive-secs",
        "heartbeat-secs",
        "max-stream-lifetime-secs",
        "request-head-timeout-secs",
        "idle-timeout-secs",
        "auth-timeout-secs",
        "write-timeout-secs",
        "query-timeout-secs",
        "db-acquire-timeout-secs",
        "max-streams-per-user",
        "max-streams",
        "max-connections",
        "db-pool-size",
    ];
    for flag in flags {
        for value in huge {
            let arg = format!("--{flag}={value}");
            let mut p = runwire(
                &["serve", "--bind", "127.0.0.1:0", &arg],
                &[("DATABASE_URL", &url), strong_secret()],
            );
            match started(&mut p).await {
                Start::Refused(out) => {
                    assert!(!out.contains("panicked"), "{arg}: {out}");
                    let first = out
                        .lines()
                        .find(|l| l.contains("runwire:") || l.contains("error:"));
                    let first = first.unwrap_or_else(|| panic!("{arg}: no error line in {out}"));
                    assert!(first.contains(&format!("--{flag}")), "{arg}: {out}");
                }
                Start::Listening(addr) => {
                    exercise(addr, &db, run, &t).await;
                    assert!(p.child.try_wait().unwrap().is_none(), "{arg}: exited");
                    let out = p.lines.lock().unwrap().join("\n");
                    assert!(!out.contains("panicked"), "{arg}: {out}");
                }
            }
        }
    }
    // `token`'s numbers: a lifetime past year 9999 is cut there, a user id is any i64.
    for (flag, value) in huge
        .iter()
        .map(|v| ("--ttl", *v))
        .chain(huge.iter().map(|v| ("--user", *v)))
    {
        let arg = format!("{flag}={value}");
        let mut args = vec!["token", arg.as_str()];
        if flag == "--ttl" {
            args.push("--user=1");
        }
        let (ok, out) = runwire(&args, &[strong_secret()]).exit().await;
        assert!(!out.contains("panicked"), "{arg}: {out}");
        match ok {
            true => assert_eq!(out.trim().split('.').count(), 3, "{arg}: {out}"),
            false => assert!(out.contains(flag), "{arg}: {out}"),
        }
    }
    // A token that would expire as it is made is refused.
    let (ok, out) = runwire(&["token", "--ttl=0", "--user=1"], &[strong_secret()])
        .exit()
        .await;
    assert!(
        !ok && out.contains("--ttl") && out.contains("at least one second"),
        "{out}"
    );
    // The same ranges hold for the environment variables.
    let mut p = runwire(
        &["serve", "--bind", "127.0.0.1:0"],
        &[
            ("DATABASE_URL", &url),
            strong_secret(),
            ("RUNWIRE_KEEPALIVE_SECS", "18446744073709551615"),
        ],
    );
    let Start::Refused(out) = started(&mut p).await else {
        panic!("a keep-alive of u64::MAX seconds ran");
    };
    assert!(out.contains("--keepalive-secs"), "{out}");
    db.drop_db().await;
}

/// Out-of-range values are refused in one line that says what is allowed.
#[tokio::test]
async fn a_value_out_of_range_is_refused_in_one_line_naming_the_flag_and_the_range() {
    for (arg, range) in [
        ("--keepalive-secs=0", "between 1 and 3600"),
        (
            "--heartbeat-secs=18446744073709551615",
            "between 1 and 3600",
        ),
        (
            "--max-stream-lifetime-secs=99999999999",
            "between 0 and 31536000",
        ),
        ("--max-streams=0", "between 1 and"),
    ] {
        let p = runwire(
            &["serve", "--bind", "127.0.0.1:0", arg],
            &[
                ("DATABASE_URL", "postgres://127.0.0.1:1/x"),
                strong_secret(),
            ],
        );
        let (ok, out) = p.exit().await;
        assert!(!ok, "{arg}");
        let flag = arg.split('=').next().unwrap();
        assert_eq!(out.lines().count(), 1, "{arg}: {out}");
        assert!(out.starts_with("runwire: "), "{arg}: {out}");
        assert!(out.contains(flag) && out.contains(range), "{arg}: {out}");
    }
}

/// `serve` without a database URL refuses at once instead of serving some local database;
/// a URL of another database is refused at once instead of retried forever as a host name.
#[tokio::test]
async fn serve_refuses_a_missing_or_non_postgres_database_url_at_once() {
    let serve = ["serve", "--bind", "127.0.0.1:0"];
    for env in [vec![], vec![("DATABASE_URL", "")]] {
        let mut env = env;
        env.push(strong_secret());
        let (ok, out) = runwire(&serve, &env).exit().await;
        assert!(!ok, "{env:?}: {out}");
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(
            out.starts_with("runwire: serve needs a database: set DATABASE_URL"),
            "{out}"
        );
        assert!(out.contains("runwire demo"), "{out}");
    }
    for (var, url) in [
        ("DATABASE_URL", "mysql://x"),
        ("DATABASE_URL", "mysql://root:hunter2@db.example.com/app"),
        ("DATABASE_URL", "db.example.com"),
        ("RUNWIRE_LISTENER_DATABASE_URL", "mysql://x"),
    ] {
        let mut env = vec![strong_secret(), (var, url)];
        if var != "DATABASE_URL" {
            env.push(("DATABASE_URL", "postgres://127.0.0.1:1/x"));
        }
        let (ok, out) = runwire(&serve, &env).exit().await;
        assert!(!ok, "{url}: {out}");
        assert_eq!(out.lines().count(), 1, "{url}: {out}");
        assert!(
            out.contains(var) && out.contains("postgres://"),
            "{url}: {out}"
        );
        assert!(
            !out.contains("hunter2"),
            "a password is never printed: {out}"
        );
    }
    // `migrate` has the same rule: it prepares the database `serve` will use.
    let (ok, out) = runwire(&["migrate"], &[]).exit().await;
    assert!(!ok, "{out}");
    assert!(out.contains("DATABASE_URL"), "{out}");
}

/// Logs go to stderr (stdout is for what a command prints: a token, the demo's URL), and
/// without colour codes when stderr is not a terminal (a file, a pipe, journald).
#[tokio::test]
async fn logs_go_to_stderr_without_colour_when_it_is_not_a_terminal() {
    for format in ["text", "json"] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_runwire"))
            .args(["serve", "--bind", "127.0.0.1:0", "--database-fail-fast"])
            .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/x")
            .env("RUNWIRE_JWT_SECRET", SECRET)
            .env("RUNWIRE_LOG_FORMAT", format)
            .env("RUST_LOG", "info")
            .output()
            .await
            .unwrap();
        assert!(!out.status.success());
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(stdout, "", "{format}: nothing on stdout");
        assert!(stderr.contains("runwire listening"), "{format}: {stderr}");
        assert!(
            !stderr.contains('\u{1b}'),
            "{format}: no ANSI codes: {stderr}"
        );
    }
}

/// `--help` says what each command takes: `token` does not demand `--jwt-secret` (the
/// variable suffices), `demo` does not offer `--migrate` (it always migrates), and every flag
/// has a description.
#[tokio::test]
async fn help_texts_say_what_each_command_takes() {
    let help = |args: &'static [&'static str]| async move {
        let (ok, out) = runwire(args, &[]).exit().await;
        assert!(ok, "{args:?}: {out}");
        out
    };
    let token = help(&["token", "--help"]).await;
    let usage = token.lines().find(|l| l.starts_with("Usage:")).unwrap();
    assert!(usage.contains("--user <USER>"), "{usage}");
    assert!(!usage.contains("--jwt-secret"), "not required: {usage}");
    assert!(token.contains("RUNWIRE_JWT_SECRET"), "{token}");

    let demo = help(&["demo", "--help"]).await;
    assert!(!demo.contains("--migrate"), "{demo}");
    assert!(help(&["serve", "--help"]).await.contains("--migrate"));

    for command in [
        &["serve", "--help"][..],
        &["demo", "--help"],
        &["migrate", "--help"],
    ] {
        let text = help(command).await;
        // In the long help a flag's description is on the lines under it; an undescribed
        // flag goes straight to `[env: …]` / `[default: …]`.
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim_start().starts_with("--") {
                let next = lines.get(i + 1).map_or("", |l| l.trim());
                let described = !next.is_empty() && !next.starts_with('[');
                assert!(described, "{command:?}: no description for {line:?}");
            }
        }
    }
    let serve = help(&["serve", "--help"]).await;
    let described = serve
        .lines()
        .skip_while(|l| !l.contains("--log-format"))
        .nth(1)
        .unwrap();
    assert!(described.contains("json"), "{described}");

    // The token command without a secret says how to make one.
    let (ok, out) = runwire(&["token", "--user", "1"], &[]).exit().await;
    assert!(!ok);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains("RUNWIRE_JWT_SECRET") && out.contains("openssl rand -hex 32"),
        "{out}"
    );
}
