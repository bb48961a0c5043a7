//! Operations metrics on `/metrics` (issue 17): active runs and packs, finishes and run
//! durations, kept from the change stream and exact after a listener reconnect; process
//! metrics; the exposition passes `promtool check metrics`, a real Prometheus scrapes it,
//! and the shipped alert rules pass their `promtool test rules` unit tests.

mod common;

use common::*;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Every sample of a `/metrics` scrape: series (name and labels, as written) → value.
async fn scrape(client: &Client) -> HashMap<String, f64> {
    let text = client.get("/metrics", None).await.text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn sample(metrics: &HashMap<String, f64>, series: &str) -> f64 {
    metrics.get(series).copied().unwrap_or(0.0)
}

/// Waits at most `limit` for `check` to hold on a scrape.
async fn within(
    client: &Client,
    limit: Duration,
    what: &str,
    check: impl Fn(&HashMap<String, f64>) -> bool,
) {
    let started = Instant::now();
    loop {
        let metrics = scrape(client).await;
        if check(&metrics) {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{what} not seen within {limit:?}; /metrics has:\n{:#?}",
            metrics
                .iter()
                .filter(|(k, _)| k.contains("runs_") || k.contains("review_packs_"))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const RUNNING: &str = r#"runwire_runs_active{type="sync",status="running"}"#;
const SUCCEEDED: &str = r#"runwire_runs_finished_total{type="sync",outcome="succeeded"}"#;

#[tokio::test]
async fn three_runs_start_one_completes_and_the_metrics_show_it_within_a_second() {
    let (app, w, _) = TestApp::seeded().await;
    let runs = [
        create_run(app.pool(), w.workspace, Some(w.tenant), "running").await,
        create_run(app.pool(), w.workspace, None, "running").await,
        create_run(app.pool(), w.other_workspace, None, "running").await,
    ];
    within(&app, Duration::from_secs(1), "three running", |m| {
        sample(m, RUNNING) == 3.0
    })
    .await;
    app.exec(&format!(
        "UPDATE operation_runs SET status = 'completed', outcome = 'succeeded',
             started_at = now() - interval '42 seconds', completed_at = now() WHERE id = {}",
        runs[0]
    ))
    .await;
    within(&app, Duration::from_secs(1), "one finished", |m| {
        sample(m, RUNNING) == 2.0
            && sample(m, SUCCEEDED) == 1.0
            && sample(m, r#"runwire_run_duration_seconds_count{type="sync",outcome="succeeded"}"#) == 1.0
            // 42 s falls in the (30, 60] bucket.
            && sample(m, r#"runwire_run_duration_seconds_bucket{le="30.0",type="sync",outcome="succeeded"}"#) == 0.0
            && sample(m, r#"runwire_run_duration_seconds_bucket{le="60.0",type="sync",outcome="succeeded"}"#) == 1.0
    })
    .await;

    // Review packs likewise.
    let pack = create_pack(app.pool(), w.workspace, w.tenant, "generating").await;
    let generating = r#"runwire_review_packs_active{status="generating"}"#;
    within(&app, Duration::from_secs(1), "a pack generating", |m| {
        sample(m, generating) == 1.0
    })
    .await;
    set_pack(app.pool(), pack, "status = 'ready', generated_at = now()").await;
    within(&app, Duration::from_secs(1), "a pack ready", |m| {
        sample(m, generating) == 0.0
            && sample(m, r#"runwire_review_packs_finished_total{status="ready"}"#) == 1.0
    })
    .await;

    // A run deleted while running is no longer active and did not finish; a repeated
    // report of a finished run counts nothing.
    app.exec(&format!(
        "DELETE FROM operation_runs WHERE id = {}",
        runs[1]
    ))
    .await;
    set_run(app.pool(), runs[0], r#"summary_counts = '{"note": 1}'"#).await;
    within(&app, Duration::from_secs(1), "the delete", |m| {
        sample(m, RUNNING) == 1.0
    })
    .await;
    assert_eq!(sample(&scrape(&app).await, SUCCEEDED), 1.0);
}

#[tokio::test]
async fn process_and_build_metrics_are_there() {
    let app = TestApp::spawn().await;
    let m = scrape(&app).await;
    for series in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_cpu_seconds_total",
        "process_start_time_seconds",
    ] {
        assert!(sample(&m, series) > 0.0, "{series}");
    }
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        sample(&m, &format!(r#"runwire_build_info{{version="{version}"}}"#)),
        1.0
    );
    let now = runwire::now_secs() as f64;
    let started = sample(&m, "process_start_time_seconds");
    assert!(started <= now + 1.0 && started > now - 3600.0, "{started}");
}

/// The truth, read from the tables: active runs by type and status, finished runs, active
/// packs by status, finished packs.
async fn truth(app: &TestApp) -> (HashMap<String, f64>, f64, HashMap<String, f64>, f64) {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT type, status, count(*) FROM operation_runs
         WHERE status IN ('queued', 'running') GROUP BY 1, 2",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    let runs = rows
        .into_iter()
        .map(|(t, s, n)| {
            (
                format!(r#"runwire_runs_active{{type="{t}",status="{s}"}}"#),
                n as f64,
            )
        })
        .collect();
    let finished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM operation_runs WHERE status = 'completed'")
            .fetch_one(app.pool())
            .await
            .unwrap();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM review_packs
         WHERE status IN ('queued', 'generating') GROUP BY 1",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    let packs = rows
        .into_iter()
        .map(|(s, n)| {
            (
                format!(r#"runwire_review_packs_active{{status="{s}"}}"#),
                n as f64,
            )
        })
        .collect();
    let ready: i64 = sqlx::query_scalar("SELECT count(*) FROM review_packs WHERE status = 'ready'")
        .fetch_one(app.pool())
        .await
        .unwrap();
    (runs, finished as f64, packs, ready as f64)
}

/// What the metrics say about the same.
fn claimed(m: &HashMap<String, f64>) -> (HashMap<String, f64>, f64, HashMap<String, f64>, f64) {
    let nonzero = |prefix: &str| -> HashMap<String, f64> {
        m.iter()
            .filter(|(k, v)| k.starts_with(prefix) && **v != 0.0)
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    };
    let finished: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("runwire_runs_finished_total{"))
        .map(|(_, v)| v)
        .sum();
    (
        nonzero("runwire_runs_active{"),
        finished,
        nonzero("runwire_review_packs_active{"),
        sample(m, r#"runwire_review_packs_finished_total{status="ready"}"#),
    )
}

/// The host's work going on: runs of two types start, progress, finish or are deleted;
/// packs are queued and become ready. Returns the number of changes made.
async fn host_work(pool: sqlx::PgPool, w: World, stop: Arc<AtomicBool>) -> u64 {
    let mut changes = 0u64;
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let kind = if i.is_multiple_of(3) {
            "backup"
        } else {
            "sync"
        };
        let status = if i.is_multiple_of(4) {
            "queued"
        } else {
            "running"
        };
        let statements = [
            format!(
                "INSERT INTO operation_runs (workspace_id, type, status, started_at)
                 VALUES ({}, '{kind}', '{status}', now())",
                w.workspace
            ),
            "UPDATE operation_runs SET status = 'running'
             WHERE id = (SELECT min(id) FROM operation_runs WHERE status = 'queued')"
                .to_string(),
            "UPDATE operation_runs SET status = 'completed', outcome = 'succeeded', completed_at = now()
             WHERE id = (SELECT min(id) FROM operation_runs WHERE status = 'running')"
                .to_string(),
            format!(
                "INSERT INTO review_packs (workspace_id, tenant_id, status)
                 VALUES ({}, {}, 'generating')",
                w.workspace, w.tenant
            ),
            "UPDATE review_packs SET status = 'ready', generated_at = now()
             WHERE id = (SELECT min(id) FROM review_packs WHERE status = 'generating')"
                .to_string(),
        ];
        // Runs pile up (a third of the rounds finish none); every other round readies a pack.
        let skip = |n: usize| (n == 2 && i.is_multiple_of(3)) || (n == 4 && !i.is_multiple_of(2));
        for (_, sql) in statements.iter().enumerate().filter(|(n, _)| !skip(*n)) {
            sqlx::query(sql).execute(&pool).await.unwrap();
            changes += 1;
        }
        if i.is_multiple_of(7) {
            sqlx::query(
                "DELETE FROM operation_runs
                 WHERE id = (SELECT max(id) FROM operation_runs WHERE status = 'running')",
            )
            .execute(&pool)
            .await
            .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    changes
}

#[tokio::test]
async fn gauges_and_counters_stay_exact_across_listener_reconnects_under_load() {
    // Changes made while the listener's proxy is cut are never announced to this instance.
    let (app, proxy) = TestApp::listening_through_proxy().await;
    let w = seed(app.pool()).await;
    // The first count is in place once a change shows.
    create_run(app.pool(), w.workspace, None, "running").await;
    within(&app, WAIT, "the first run", |m| sample(m, RUNNING) == 1.0).await;

    let stop = Arc::new(AtomicBool::new(false));
    let work = tokio::spawn(host_work(app.pool().clone(), w.clone(), Arc::clone(&stop)));
    let rounds = 20;
    for round in 0..rounds {
        let reconnects = sample(&scrape(&app).await, "runwire_listener_reconnects_total");
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(30)).await; // the host goes on meanwhile
        proxy.restore();
        within(&app, WAIT, &format!("reconnect {round}"), |m| {
            sample(m, "runwire_listener_reconnects_total") > reconnects
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    let changes = work.await.unwrap();
    assert!(changes > 100, "the host was busy: {changes} changes");

    let expected = truth(&app).await;
    assert!(expected.1 > 10.0 && !expected.0.is_empty(), "{expected:?}");
    let started = Instant::now();
    loop {
        let got = claimed(&scrape(&app).await);
        if got == expected {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "after {rounds} reconnects under load the metrics say {got:?}, the tables {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A command from Debian's `prometheus` package (CI installs it).
fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{name} is not installed: `apt-get install prometheus` (Debian's package brings \
         prometheus and promtool)"
    );
    Command::new(name)
}

/// Fails the test with the command's output unless it succeeded.
fn succeeded(what: &str, out: std::process::Output) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn promtool_accepts_the_exposition() {
    let (app, w, _) = TestApp::seeded().await;
    // Every kind of series present: active, finished (with a duration), packs.
    let run = create_run(app.pool(), w.workspace, None, "running").await;
    create_run(app.pool(), w.workspace, None, "queued").await;
    app.exec(&format!(
        "UPDATE operation_runs SET status = 'completed', outcome = 'failed',
             started_at = now() - interval '5 seconds', completed_at = now() WHERE id = {run}"
    ))
    .await;
    create_pack(app.pool(), w.workspace, w.tenant, "generating").await;
    within(&app, WAIT, "the failure", |m| {
        sample(
            m,
            r#"runwire_runs_finished_total{type="sync",outcome="failed"}"#,
        ) == 1.0
    })
    .await;
    let body = app.get("/metrics", None).await.bytes().await.unwrap();
    let mut check = tool("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check.stdin.take().unwrap().write_all(&body).unwrap();
    succeeded("promtool check metrics", check.wait_with_output().unwrap());
}

#[test]
fn the_shipped_alert_rules_pass_their_unit_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/monitoring");
    for args in [
        vec!["check", "rules", "runwire-rules.yml"],
        vec!["test", "rules", "runwire-rules.test.yml"],
    ] {
        let out = tool("promtool").args(&args).current_dir(&root).output();
        succeeded(&format!("promtool {args:?}"), out.unwrap());
    }
}

#[test]
fn the_grafana_dashboard_is_valid_json_over_runwire_metrics() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/monitoring/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    for metric in [
        "runwire_runs_active",
        "runwire_runs_finished_total",
        "runwire_run_duration_seconds_bucket",
        "runwire_review_packs_active",
        "runwire_commit_to_publish_seconds_bucket",
        "process_resident_memory_bytes",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "no panel shows {metric}"
        );
    }
}

/// A Prometheus server of its own, scraping one runwire every second, stopped on drop.
struct Prometheus {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: runwire\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tool("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// The value of an instant query with one result, if it has one.
    async fn query(&self, http: &reqwest::Client, q: &str) -> Option<f64> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let resp = http.get(url).query(&[("query", q)]).send().await.ok()?;
        let body: serde_json::Value = resp.json().await.ok()?;
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_prometheus_scrapes_runwire_and_sees_the_operations() {
    let (app, w, _) = TestApp::seeded().await;
    for _ in 0..3 {
        create_run(app.pool(), w.workspace, None, "running").await;
    }
    let prometheus = Prometheus::start(app.addr);
    let queries = [
        (r#"up{job="runwire"}"#, 1.0),
        (r#"sum(runwire_runs_active{status="running"})"#, 3.0),
        (r#"runwire_build_info"#, 1.0),
    ];
    for (q, want) in queries {
        let what = format!("Prometheus to answer {q} = {want}");
        eventually(&what, || async {
            prometheus.query(&app.http, q).await == Some(want)
        })
        .await;
    }
}

/// `--metrics-bind`: `/metrics` on a listener of its own (one only Prometheus reaches), and
/// no longer on the public one; that listener serves nothing else.
#[tokio::test]
async fn metrics_bind_moves_metrics_to_a_listener_of_its_own() {
    let app = TestApp::configured(|s| s.metrics_bind = Some("127.0.0.1:0".parse().unwrap())).await;
    let private = app.running.metrics_addr.expect("a metrics listener");
    assert_ne!(private, app.addr);
    let metrics = Client::to(private);
    let scrape = metrics.get("/metrics", None).await;
    assert_eq!(scrape.status(), 200);
    assert!(scrape
        .text()
        .await
        .unwrap()
        .contains("runwire_streams_open"));
    for path in ["/metrics", "/metrics/"] {
        assert_eq!(app.get(path, None).await.status(), 404, "{path} on --bind");
    }
    for path in ["/healthz", "/v1/session", "/", "/runwire.js"] {
        assert_eq!(
            metrics.get(path, None).await.status(),
            404,
            "{path} on --metrics-bind"
        );
    }
    // The public listener goes on serving everything else.
    assert_eq!(app.get("/healthz", None).await.status(), 200);

    // Without the flag, /metrics stays where it was.
    let plain = TestApp::spawn().await;
    assert!(plain.running.metrics_addr.is_none());
    assert_eq!(plain.get("/metrics", None).await.status(), 200);
}
