//! Fair under floods (issue 16): 20,000 hostile connections — HTTP/2 with prior knowledge
//! that PINGs and never authenticates, and idle HTTP/1.1 that reconnects as soon as it is
//! closed — held against the built binary for 60 s, at the default connection cap and at
//! `--max-connections 3000`, while authenticated clients keep opening streams: at least
//! 99 % must get their snapshot within a second.
//!
//! A process may open 20,000 files, so the server runs as its own process (the built
//! `runwire serve`) and the hostile sockets come from eight helper processes — this test
//! binary run again, see [`hostile_helper`] — each bound to its own source address
//! (127.0.0.2–9), 2,500 sockets each. Loopback only. The two configurations run one after
//! the other (about 2.5 minutes in all).

mod common;

use common::binary::{runwire, strong_secret};
use common::*;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Hostile sockets per configuration.
const HOSTILE: usize = 20_000;
/// Helper processes (and source addresses 127.0.0.2 onwards) per configuration.
const HELPERS: usize = 8;
/// How long the flood is held while clients measure.
const HOLD: Duration = Duration::from_secs(60);
/// Clients opening streams one after another, each as soon as the last got its snapshot.
const CLIENTS: usize = 4;
/// What "served" means for a client.
const SERVED_WITHIN: Duration = Duration::from_secs(1);

/// Runs the flood against both configurations at once and asserts the figure for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_clients_are_served_through_a_flood_of_20000_connections() {
    // One after the other: at once, 40,000 hostile sockets, two servers and sixteen
    // helpers on a 2-core machine measured the machine (no request served at either cap).
    let default_cap = flood(None).await;
    let small_cap = flood(Some(3000)).await;
    for figures in [&default_cap, &small_cap] {
        eprintln!("{figures}");
    }
    for figures in [default_cap, small_cap] {
        assert!(
            figures.served_in_time * 100 >= figures.attempts * 99 && figures.attempts >= 100,
            "{figures}"
        );
    }
}

struct Figures {
    label: String,
    attempts: usize,
    served_in_time: usize,
    slowest: Duration,
    /// The median time to connect (the kernel's accept queue), of streams that were served.
    median_connect: Duration,
    failed: usize,
    hostile_connects: u64,
    evicted: u64,
    auth_timeouts: u64,
    refused: u64,
    /// How long the flood took to make as many connections as it can hold.
    ramp: Duration,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} of {} streams ({:.2} %) got their snapshot within {SERVED_WITHIN:?} \
             (slowest {:?}, median connect {:?}, {} failed) during {HOLD:?} of {HOSTILE} hostile sockets \
             ({} hostile connects, the first 90 % of the cap in {:?}; server: {} evicted, \
             {} auth timeouts, {} refused)",
            self.label,
            self.served_in_time,
            self.attempts,
            100.0 * self.served_in_time as f64 / self.attempts.max(1) as f64,
            self.slowest,
            self.median_connect,
            self.failed,
            self.hostile_connects,
            self.ramp,
            self.evicted,
            self.auth_timeouts,
            self.refused,
        )
    }
}

async fn flood(max_connections: Option<usize>) -> Figures {
    let db = TestDb::new().await;
    let w = seed(&db.pool).await;
    let run = create_run(&db.pool, w.workspace, Some(w.tenant), "running").await;
    let t = token(w.owner);
    let url = db.url();
    let changes = match mode() {
        runwire::ChangeSource::Wal => "wal",
        runwire::ChangeSource::Notify => "notify",
    };
    let mut env = vec![
        ("DATABASE_URL", url.as_str()),
        strong_secret(),
        ("RUNWIRE_BIND", "127.0.0.1:0"),
        ("RUNWIRE_CHANGES", changes),
        ("RUST_LOG", "warn,runwire=info"),
    ];
    let cap = max_connections.map(|c| c.to_string());
    if let Some(cap) = &cap {
        env.push(("RUNWIRE_MAX_CONNECTIONS", cap));
    }
    let server = runwire(&["serve"], &env);
    let listening: Value = serde_json::from_str(&server.line("runwire listening").await).unwrap();
    let addr: SocketAddr = listening["fields"]["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let cap = listening["fields"]["max_connections"].as_u64().unwrap();
    let label = match max_connections {
        Some(c) => format!("--max-connections {c}"),
        None => format!("default cap ({cap})"),
    };
    Client::to(addr).await_status("/readyz", 200).await;

    let connects = Arc::new(AtomicU64::new(0));
    let helpers: Vec<Child> = (0..HELPERS)
        .map(|i| helper(addr, IpAddr::from([127, 0, 0, 2 + i as u8]), &connects))
        .collect();
    // Measure once the flood has made (nearly) as many connections as it can hold. Counted
    // by the helpers: asking the server would be a request through the flood.
    let target = cap.min(HOSTILE as u64) * 9 / 10;
    let started = Instant::now();
    while connects.load(Ordering::Relaxed) < target {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{label}: the flood made only {} connections",
            connects.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ramp = started.elapsed();

    let samples = Arc::new(Mutex::new(Vec::new()));
    let until = Instant::now() + HOLD;
    let clients = (0..CLIENTS).map(|_| {
        let samples = Arc::clone(&samples);
        let (t, path) = (t.clone(), run_events(run));
        tokio::spawn(async move {
            while Instant::now() < until {
                let took = open_stream(addr, &path, &t).await;
                samples.lock().await.push(took);
            }
        })
    });
    for c in futures_util::future::join_all(clients).await {
        c.unwrap();
    }
    let hostile_connects = connects.load(Ordering::Relaxed);
    for mut helper in helpers {
        helper.kill().await.ok();
    }
    let evicted = counter(addr, "runwire_connections_evicted_total ").await;
    let auth_timeouts = counter(addr, "runwire_connections_auth_timeouts_total ").await;
    let refused = counter(addr, "runwire_connections_refused_total ").await;
    drop(server);
    let samples = samples.lock().await;
    let mut connects: Vec<Duration> = samples.iter().flatten().map(|s| s.1).collect();
    connects.sort();
    Figures {
        median_connect: connects
            .get(connects.len() / 2)
            .copied()
            .unwrap_or_default(),
        label,
        attempts: samples.len(),
        served_in_time: samples
            .iter()
            .filter(|s| s.is_some_and(|(d, _)| d <= SERVED_WITHIN))
            .count(),
        slowest: samples
            .iter()
            .flatten()
            .map(|s| s.0)
            .max()
            .unwrap_or_default(),
        failed: samples.iter().filter(|s| s.is_none()).count(),
        hostile_connects,
        evicted,
        auth_timeouts,
        refused,
        ramp,
    }
}

/// Opens a stream as a browser would (connect included) and reads up to its snapshot: how
/// long that took and how long of it connecting took, or None if it did not come within 5 s.
async fn open_stream(addr: SocketAddr, path: &str, token: &str) -> Option<(Duration, Duration)> {
    let started = Instant::now();
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n");
    let read = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let connected = started.elapsed();
        s.write_all(request.as_bytes()).await.ok()?;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(15).any(|w| w == b"event: snapshot") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        Some((started.elapsed(), connected))
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()
        .flatten()
}

/// A counter or gauge from `/metrics`.
async fn counter(addr: SocketAddr, name: &str) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = async {
            let mut s = TcpStream::connect(addr).await.ok()?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.ok()?;
            Some(String::from_utf8_lossy(&out).into_owned())
        };
        let value = tokio::time::timeout(Duration::from_secs(5), text)
            .await
            .ok()
            .flatten()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse().ok())
            });
        if let Some(value) = value {
            return value;
        }
        assert!(Instant::now() < deadline, "no {name} from /metrics");
    }
}

/// This test binary again, as [`hostile_helper`] flooding `addr` from `source`; adds the
/// connections it makes to `connects` as it reports them.
fn helper(addr: SocketAddr, source: IpAddr, connects: &Arc<AtomicU64>) -> Child {
    // At the lowest CPU priority: an attacker's processes run on the attacker's machines, not
    // on the server's two cores; here they would otherwise take most of them (the server
    // keeps its own priority, and the clients measuring share it).
    let mut child = Command::new("nice")
        .args(["-n", "19"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "hostile_helper",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FLOOD_TARGET", addr.to_string())
        .env("FLOOD_SOURCE", source.to_string())
        .env("FLOOD_SOCKETS", (HOSTILE / HELPERS).to_string())
        .env(
            "FLOOD_SECS",
            (HOLD + Duration::from_secs(90)).as_secs().to_string(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the helper process");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let connects = Arc::clone(connects);
    tokio::spawn(async move {
        let mut reported = 0;
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(Ok(n)) = line
                .strip_prefix("connects ")
                .map(|n| n.trim().parse::<u64>())
            {
                connects.fetch_add(n.saturating_sub(reported), Ordering::Relaxed);
                reported = n;
            }
        }
    });
    child
}

/// Not a test of its own: the hostile side of the flood test, when that test runs this
/// binary again with `FLOOD_TARGET` set (without it, it returns at once). Holds
/// `FLOOD_SOCKETS` connections from `FLOOD_SOURCE` for `FLOOD_SECS`: half HTTP/2 with prior
/// knowledge (preface, SETTINGS, a PING every 2 s), half idle HTTP/1.1 sending nothing;
/// each reconnects as soon as it is closed.
#[tokio::test]
async fn hostile_helper() {
    let Ok(target) = std::env::var("FLOOD_TARGET") else {
        return;
    };
    let target: SocketAddr = target.parse().unwrap();
    let source: IpAddr = std::env::var("FLOOD_SOURCE").unwrap().parse().unwrap();
    let sockets: usize = std::env::var("FLOOD_SOCKETS").unwrap().parse().unwrap();
    let secs: u64 = std::env::var("FLOOD_SECS").unwrap().parse().unwrap();
    let until = Instant::now() + Duration::from_secs(secs);
    let connects = Arc::new(AtomicU64::new(0));
    for i in 0..sockets {
        let connects = Arc::clone(&connects);
        tokio::spawn(async move {
            let http2 = i % 2 == 0;
            while Instant::now() < until {
                let socket = TcpSocket::new_v4().unwrap();
                socket.bind(SocketAddr::new(source, 0)).unwrap();
                let Ok(mut s) = socket.connect(target).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                connects.fetch_add(1, Ordering::Relaxed);
                if http2 && s.write_all(h2::PREFACE).await.is_err() {
                    continue;
                }
                let mut buf = [0u8; 256];
                let mut ping = tokio::time::interval(Duration::from_secs(2));
                for n in 0u64.. {
                    tokio::select! {
                        r = s.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { break },
                        _ = ping.tick(), if http2 => {
                            if s.write_all(&h2::ping(n)).await.is_err() { break }
                        }
                    }
                }
            }
        });
    }
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        println!("connects {}", connects.load(Ordering::Relaxed));
    }
}
