//! Load generator for runwire: opens many real streams against a running service, drives
//! updates through Postgres, and measures what a user and an operator care about.
//!
//! ```text
//! cargo run --release -p loadgen -- --url http://127.0.0.1:8080 \
//!     --database-url postgres://postgres@127.0.0.1/runwire_bench --jwt-secret S \
//!     --streams 10000 --runs 100 --updates 10000 --rate 1000
//! ```
//!
//! Phases: create a workspace, a user and K runs; open N streams (raw HTTP/1.1, spread over
//! worker processes and source addresses 127.0.0.x so no process nears its file limit) and
//! wait for every snapshot; sample the server's RSS; stay idle and count the database
//! transactions the server made; then perform U updates at R/s, each stamping its send time
//! into `summary_counts`, and measure commit→receipt latency per event, events delivered vs
//! expected, server CPU and database transactions per update. `--poll SECS` instead makes each
//! client fetch the JSON snapshot on a timer, to compare with what runwire replaces.
//! `--hold` only watches: it opens the streams on runs that already exist, holds them while
//! something else writes (pgbench in `scripts/bench host-writes`), and reports what arrived
//! when it gets SIGTERM or Ctrl-C.
//!
//! Prints a human summary and one JSON line.

use clap::Parser;
use runwire::Tokens;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Parser, Debug, Clone)]
#[command(about = "Load generator for runwire")]
struct Args {
    /// Base URL of the running service.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The service's database (to create fixtures, drive updates and read pg_stat_database).
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    #[arg(long, env = "RUNWIRE_JWT_SECRET")]
    jwt_secret: Option<String>,
    /// Open streams.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Runs the streams are spread over.
    #[arg(long, default_value_t = 100)]
    runs: usize,
    /// Updates to perform.
    #[arg(long, default_value_t = 2000)]
    updates: usize,
    /// Updates per second.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Seconds to stay idle while counting the server's database transactions.
    #[arg(long, default_value_t = 12)]
    idle_secs: u64,
    /// Poll the JSON snapshot every SECS instead of streaming (what runwire replaces).
    #[arg(long)]
    poll: Option<f64>,
    /// The server's pid (RSS and CPU); found by name when omitted.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Streams per worker process.
    #[arg(long, default_value_t = 6000)]
    per_worker: usize,
    /// Streams opened concurrently per worker.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Send this many NOTIFYs for items nobody watches and measure intake, then exit.
    #[arg(long)]
    notify_flood: Option<usize>,
    /// Watch the first `--runs` runs already in the database (lowest ids; one user per 32
    /// streams is made a member of their workspaces), print `HOLDING` once every stream has
    /// its snapshot, and hold them until SIGTERM or Ctrl-C; then report what they received.
    /// Writes nothing to the runs: another program drives the updates (stamped with
    /// `sent_us` and `seq` in summary_counts for latencies).
    #[arg(long)]
    hold: bool,
    /// Internal: run as a worker process.
    #[arg(long, hide = true)]
    worker: Option<String>,
}

/// What a worker is told to do (one JSON line on its command line).
#[derive(Serialize, Deserialize, Debug, Clone)]
struct WorkerPlan {
    addr: SocketAddr,
    host: String,
    /// The signing secret: workers mint each user's token themselves.
    secret: String,
    source: IpAddr,
    /// (run id, user id) per stream.
    streams: Vec<(i64, i64)>,
    poll: Option<f64>,
    concurrency: usize,
    samples_path: String,
}

/// What a worker reports.
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
struct WorkerReport {
    opened: usize,
    failed: usize,
    connect_secs: f64,
    events: u64,
    final_seen: usize,
    polls: u64,
    /// Streams that ended after they opened (the server closed them, or the connection broke).
    #[serde(default)]
    ended: u64,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Latencies in microseconds, as one worker records them.
type Samples = Arc<std::sync::Mutex<Vec<u32>>>;

/// The `seq` runwire's loadgen stamps last: when every stream has seen it, nothing was lost.
// 2^53 - 1: exact in every JSON implementation (JavaScript numbers included).
const FINAL_SEQ: i64 = 9_007_199_254_740_991;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.worker.is_some() {
        // The plan is the first line on stdin (it can be larger than a command-line argument).
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let plan: WorkerPlan = serde_json::from_str(&line)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        return rt.block_on(worker(plan));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(coordinator(args))
}

// ---- worker: holds streams or polls, and records latencies --------------------------------

/// What a worker's connections count, shared by all of them.
#[derive(Clone, Default)]
struct Tally {
    samples: Samples,
    events: Arc<AtomicU64>,
    finals: Arc<AtomicU64>,
    polls: Arc<AtomicU64>,
    ended: Arc<AtomicU64>,
}

async fn worker(plan: WorkerPlan) -> anyhow::Result<()> {
    let tally = Tally::default();
    let sem = Arc::new(tokio::sync::Semaphore::new(plan.concurrency));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let started = Instant::now();
    let plan = Arc::new(plan);
    let minter = Tokens::new(plan.secret.as_bytes());
    let mut tokens = std::collections::HashMap::new();
    for (i, (run, user)) in plan.streams.iter().copied().enumerate() {
        let token: Arc<str> = Arc::clone(
            tokens
                .entry(user)
                .or_insert_with(|| Arc::from(minter.issue(user, 6 * 3600))),
        );
        let (plan, sem, ready, tally) = (
            Arc::clone(&plan),
            Arc::clone(&sem),
            ready_tx.clone(),
            tally.clone(),
        );
        tokio::spawn(async move {
            let permit = sem.acquire_owned().await;
            let conn = connect(&plan).await;
            let Ok(stream) = conn else {
                let _ = ready.send(false);
                return;
            };
            match plan.poll {
                None => {
                    let _ = stream_one(stream, &plan, run, &token, permit, ready, tally).await;
                }
                Some(secs) => {
                    drop(permit);
                    let _ = ready.send(true);
                    // Spread the polls over the interval like independent pages would be.
                    let offset = Duration::from_secs_f64(secs * (i % 1000) as f64 / 1000.0);
                    tokio::time::sleep(offset).await;
                    let _ = poll_one(stream, &plan, run, &token, secs, tally).await;
                }
            }
        });
    }
    drop(ready_tx);
    let (mut opened, mut failed) = (0, 0);
    while opened + failed < plan.streams.len() {
        match ready_rx.recv().await {
            Some(true) => opened += 1,
            Some(false) => failed += 1,
            None => break,
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    println!(
        "READY {}",
        serde_json::to_string(&WorkerReport {
            opened,
            failed,
            connect_secs,
            ..Default::default()
        })?
    );
    std::io::stdout().flush()?;

    // Answer REPORT until told to STOP, then write the samples for the coordinator.
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = stdin.next_line().await {
        if line.trim() == "REPORT" {
            let report = WorkerReport {
                opened,
                failed,
                connect_secs,
                events: tally.events.load(Ordering::Relaxed),
                final_seen: tally.finals.load(Ordering::Relaxed) as usize,
                polls: tally.polls.load(Ordering::Relaxed),
                ended: tally.ended.load(Ordering::Relaxed),
            };
            println!("REPORT {}", serde_json::to_string(&report)?);
            std::io::stdout().flush()?;
        }
        if line.trim() == "STOP" {
            break;
        }
    }
    let bytes: Vec<u8> = tally
        .samples
        .lock()
        .map(|v| v.iter().flat_map(|s| s.to_le_bytes()).collect())
        .unwrap_or_default();
    std::fs::write(&plan.samples_path, bytes)?;
    std::process::exit(0);
}

async fn connect(plan: &WorkerPlan) -> std::io::Result<TcpStream> {
    let socket = match plan.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if plan.addr.ip().is_loopback() {
        socket.bind(SocketAddr::new(plan.source, 0))?;
    }
    socket.set_recv_buffer_size(16 * 1024)?;
    socket.set_send_buffer_size(16 * 1024)?;
    socket.connect(plan.addr).await
}

/// Decodes an HTTP/1.1 chunked body incrementally, byte slices in, body bytes out.
#[derive(Default)]
struct Dechunker {
    state: ChunkState,
}

#[derive(Default, Clone, Copy)]
enum ChunkState {
    /// Reading the hex size line (value so far).
    #[default]
    Size,
    SizeValue(usize),
    /// Skipping a chunk extension up to the end of the size line.
    Ext(usize),
    Data(usize),
    /// Skipping the CRLF after a chunk's data.
    Crlf(u8),
    Done,
}

impl Dechunker {
    /// Appends the body bytes in `input` to `out`; false once the last chunk was seen.
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> bool {
        use ChunkState::*;
        while let Some(&b) = input.first() {
            match self.state {
                Data(n) => {
                    let take = n.min(input.len());
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.state = if take == n { Crlf(2) } else { Data(n - take) };
                    continue;
                }
                Crlf(k) => self.state = if k <= 1 { Size } else { Crlf(k - 1) },
                Size | SizeValue(_) | Ext(_) => {
                    let value = match self.state {
                        SizeValue(v) | Ext(v) => v,
                        _ => 0,
                    };
                    self.state = match (self.state, b) {
                        (_, b'\n') if value == 0 => Done,
                        (_, b'\n') => Data(value),
                        (Ext(v), _) => Ext(v),
                        (_, b';') => Ext(value),
                        (_, b'\r' | b' ') => SizeValue(value),
                        (_, _) => match (b as char).to_digit(16) {
                            Some(d) => SizeValue(value * 16 + d as usize),
                            None => Done,
                        },
                    };
                }
                Done => return false,
            }
            input = &input[1..];
        }
        !matches!(self.state, Done)
    }
}

/// What an SSE line tells the stream client.
enum SseLine<'a> {
    Event(&'a [u8]),
    Data(&'a [u8]),
    Other,
}

fn sse_line(line: &[u8]) -> SseLine<'_> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if let Some(e) = line.strip_prefix(b"event: ") {
        SseLine::Event(e)
    } else if let Some(d) = line.strip_prefix(b"data: ") {
        SseLine::Data(d)
    } else {
        SseLine::Other
    }
}

async fn read_head(reader: &mut BufReader<TcpStream>) -> std::io::Result<(u16, bool, usize)> {
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (mut chunked, mut length) = (false, 0);
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    Ok((status, chunked, length))
}

/// Pulls `sent_us` and `seq` out of a run state's summary_counts without a full JSON parse
/// (the client shares two cores with the server; parsing must stay cheap).
fn stamp(data: &[u8]) -> Option<(i64, i64)> {
    fn number_after(data: &[u8], key: &[u8]) -> Option<i64> {
        let at = data.windows(key.len()).position(|w| w == key)? + key.len();
        let mut rest = &data[at..];
        while let Some((b':' | b' ', tail)) = rest.split_first() {
            rest = tail;
        }
        let mut n: i64 = 0;
        let mut digits = 0;
        for &b in rest.iter().take_while(|b| b.is_ascii_digit()) {
            n = n.checked_mul(10)?.checked_add((b - b'0') as i64)?;
            digits += 1;
        }
        (digits > 0).then_some(n)
    }
    Some((
        number_after(data, b"\"sent_us\"")?,
        number_after(data, b"\"seq\"")?,
    ))
}

async fn stream_one(
    stream: TcpStream,
    plan: &WorkerPlan,
    run: i64,
    token: &str,
    permit: Result<tokio::sync::OwnedSemaphorePermit, tokio::sync::AcquireError>,
    ready: tokio::sync::mpsc::UnboundedSender<bool>,
    tally: Tally,
) -> std::io::Result<()> {
    let Tally {
        samples,
        events,
        finals,
        ended,
        ..
    } = tally;
    let req = format!(
        "GET /v1/runs/{run}/events HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n",
        plan.host
    );
    let mut stream = stream;
    stream.write_all(req.as_bytes()).await?;
    let mut reader = BufReader::with_capacity(2048, stream);
    let (status, chunked, _) = read_head(&mut reader).await?;
    if status != 200 {
        let _ = ready.send(false);
        return Ok(());
    }
    // Open from here: however this function returns, the stream has ended.
    struct Ended(Arc<AtomicU64>);
    impl Drop for Ended {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ended = Ended(ended);
    // Whatever the head's reader already holds is the start of the body; after that, one
    // read per wake-up into a reused buffer, decoded without allocating per event.
    let mut raw = reader.buffer().to_vec();
    let mut stream = reader.into_inner();
    let mut dechunk = Dechunker::default();
    let mut body: Vec<u8> = Vec::with_capacity(4096);
    let mut permit = Some(permit);
    let mut is_update = false;
    let mut seen_final = false;
    raw.reserve(8192);
    loop {
        let more = if chunked {
            dechunk.feed(&raw, &mut body)
        } else {
            body.extend_from_slice(&raw);
            true
        };
        let mut used = 0;
        while let Some(nl) = body[used..].iter().position(|b| *b == b'\n') {
            let line = &body[used..used + nl];
            used += nl + 1;
            match sse_line(line) {
                SseLine::Event(e) => is_update = e == b"update",
                SseLine::Data(_) if !is_update => {
                    if permit.take().is_some() {
                        let _ = ready.send(true); // snapshotted: let the next one connect
                    }
                }
                SseLine::Data(data) => {
                    events.fetch_add(1, Ordering::Relaxed);
                    if let Some((sent, seq)) = stamp(data) {
                        let lat = (now_us() - sent).clamp(0, u32::MAX as i64) as u32;
                        if seq != FINAL_SEQ {
                            samples.lock().map(|mut v| v.push(lat)).ok();
                        } else if !seen_final {
                            // Once per stream: a server may send the same state twice.
                            seen_final = true;
                            finals.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                SseLine::Other => is_update = is_update && !line.is_empty(),
            }
        }
        body.drain(..used);
        if !more {
            return Ok(());
        }
        raw.clear();
        if stream.read_buf(&mut raw).await? == 0 {
            return Ok(());
        }
    }
}

async fn poll_one(
    stream: TcpStream,
    plan: &WorkerPlan,
    run: i64,
    token: &str,
    every: f64,
    tally: Tally,
) -> std::io::Result<()> {
    let Tally {
        samples,
        polls,
        finals,
        ..
    } = tally;
    let req = format!(
        "GET /v1/runs/{run} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\r\n",
        plan.host
    );
    let mut reader = BufReader::with_capacity(4096, stream);
    let mut last_seq = -1;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(every));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        reader.get_mut().write_all(req.as_bytes()).await?;
        let (status, _, length) = read_head(&mut reader).await?;
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).await?;
        polls.fetch_add(1, Ordering::Relaxed);
        if status != 200 {
            continue;
        }
        if let Some((sent, seq)) = stamp(&body) {
            if seq != last_seq {
                last_seq = seq;
                if seq == FINAL_SEQ {
                    finals.fetch_add(1, Ordering::Relaxed);
                } else {
                    // Staleness: how long after the commit this page first saw the state.
                    let lat = (now_us() - sent).clamp(0, u32::MAX as i64) as u32;
                    samples.lock().map(|mut v| v.push(lat)).ok();
                }
            }
        }
    }
}

// ---- coordinator ------------------------------------------------------------------------

struct Worker {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    samples_path: String,
}

impl Worker {
    async fn expect(&mut self, prefix: &str) -> anyhow::Result<WorkerReport> {
        while let Some(line) = self.lines.next_line().await? {
            if let Some(json) = line.strip_prefix(prefix) {
                return Ok(serde_json::from_str(json.trim())?);
            }
        }
        anyhow::bail!("worker exited before {prefix}")
    }

    async fn report(&mut self) -> anyhow::Result<WorkerReport> {
        self.stdin.write_all(b"REPORT\n").await?;
        self.expect("REPORT ").await
    }
}

fn find_server_pid() -> Option<u32> {
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("runwire")
            && (cmd.contains(" serve") || cmd.contains(" demo"))
            && !cmd.contains("loadgen")
        {
            return Some(pid);
        }
    }
    None
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// Reads another database's transaction counter, so the reading is not counted in it.
struct Stats {
    pool: PgPool,
    datname: String,
}

impl Stats {
    /// Committed + rolled-back transactions of the service's database.
    async fn xacts(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = $1",
        )
        .bind(&self.datname)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The counter once every backend has flushed: an idle backend reports its statistics
    /// within PGSTAT_IDLE_INTERVAL (10 s), so wait a little longer than that.
    async fn settled(&self) -> anyhow::Result<i64> {
        tokio::time::sleep(Duration::from_secs(11)).await;
        self.xacts().await
    }
}

/// p50, p99 and max of sorted latencies, in milliseconds.
fn latency_ms(sorted: &[u32]) -> (f64, f64, f64) {
    let max = sorted.last().map(|m| *m as f64 / 1000.0);
    (
        percentile(sorted, 0.5),
        percentile(sorted, 0.99),
        max.unwrap_or(f64::NAN),
    )
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn notify_flood(args: &Args, pool: &PgPool, n: usize) -> anyhow::Result<()> {
    let metrics = format!("{}/metrics", args.url.trim_end_matches('/'));
    let read = || async { metric(&metrics, "runwire_notifications_total").await as u64 };
    let before = read().await;
    let started = Instant::now();
    let mut sent = 0;
    while sent < n {
        let batch = (n - sent).min(10_000);
        sqlx::query(
            "SELECT pg_notify('runwire', json_build_object('k','run','id', g + 1000000000, 'w', 999999999, 't', null, 'v', 1)::text)
             FROM generate_series(1, $1) g",
        )
        .bind(batch as i64)
        .execute(pool)
        .await?;
        sent += batch;
    }
    let sent_secs = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut got = read().await - before;
    while got < n as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        got = read().await - before;
    }
    let secs = started.elapsed().as_secs_f64();
    println!("notify flood: {n} NOTIFYs for unwatched runs, committed in {sent_secs:.2} s; runwire took {got} of them in {secs:.2} s = {:.0}/s", got as f64 / secs);
    println!(
        "{}",
        serde_json::json!({"mode": "notify_flood", "notifications": n, "received": got, "secs": secs, "per_sec": got as f64 / secs})
    );
    Ok(())
}

/// One sample value from the service's /metrics (0 when absent).
async fn metric(url: &str, name: &str) -> f64 {
    let text = reqwest_lite(url).await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0)
}

/// A tiny GET for /metrics (no HTTP client dependency in the binary).
async fn reqwest_lite(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("http:// URLs only"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = TcpStream::connect(host).await?;
    s.write_all(
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// A workspace of `n` new running runs, with `users` as its members.
async fn new_runs(pool: &PgPool, n: usize, users: &[i64], tag: &str) -> anyhow::Result<Vec<i64>> {
    let ws: i64 = sqlx::query_scalar("INSERT INTO workspaces (name) VALUES ($1) RETURNING id")
        .bind(tag)
        .fetch_one(pool)
        .await?;
    sqlx::query(
        "INSERT INTO workspace_memberships SELECT $1, u, 'operator' FROM unnest($2::bigint[]) u",
    )
    .bind(ws)
    .bind(users)
    .execute(pool)
    .await?;
    Ok(sqlx::query_scalar(
        "INSERT INTO operation_runs (workspace_id, type, status) SELECT $1, 'sync', 'running' FROM generate_series(1, $2) RETURNING id",
    )
    .bind(ws)
    .bind(n as i64)
    .fetch_all(pool)
    .await?)
}

/// `--hold`: the `n` lowest-numbered runs there are, with `users` made members of their
/// workspaces.
async fn existing_runs(pool: &PgPool, n: usize, users: &[i64]) -> anyhow::Result<Vec<i64>> {
    let runs: Vec<i64> =
        sqlx::query_scalar("SELECT id::bigint FROM operation_runs ORDER BY id LIMIT $1")
            .bind(n as i64)
            .fetch_all(pool)
            .await?;
    anyhow::ensure!(
        !runs.is_empty(),
        "--hold: operation_runs has no runs to watch"
    );
    sqlx::query(
        "INSERT INTO workspace_memberships (workspace_id, user_id, role)
         SELECT DISTINCT r.workspace_id, u, 'operator'
         FROM operation_runs r, unnest($2::bigint[]) u WHERE r.id = ANY($1)",
    )
    .bind(&runs)
    .bind(users)
    .execute(pool)
    .await?;
    Ok(runs)
}

/// Tells the workers to stop and gathers their latency samples, sorted.
async fn stop_workers(workers: &mut [Worker]) -> Vec<u32> {
    for w in workers.iter_mut() {
        let _ = w.stdin.write_all(b"STOP\n").await;
    }
    let mut samples: Vec<u32> = Vec::new();
    for w in workers.iter_mut() {
        let _ = w.child.wait().await;
        if let Ok(bytes) = std::fs::read(&w.samples_path) {
            samples.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
            let _ = std::fs::remove_file(&w.samples_path);
        }
    }
    samples.sort_unstable();
    samples
}

/// `--hold`: every stream has its snapshot; say so, hold them until told to stop, and report
/// what arrived meanwhile.
async fn hold(mut workers: Vec<Worker>, opened: usize, failed: usize) -> anyhow::Result<()> {
    println!("HOLDING {opened} streams ({failed} failed)");
    std::io::stdout().flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let mut reports = Vec::new();
    for w in workers.iter_mut() {
        reports.push(w.report().await?);
    }
    let events: u64 = reports.iter().map(|r| r.events).sum();
    let ended: u64 = reports.iter().map(|r| r.ended).sum();
    let samples = stop_workers(&mut workers).await;
    let (p50, p99, max) = latency_ms(&samples);
    println!("  held {opened} streams: {events} events received, {ended} streams ended while held; commit→receipt latency p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms ({} samples)", samples.len());
    let json = serde_json::json!({
        "mode": "hold", "opened": opened, "failed": failed, "events": events, "ended": ended,
        "latency_ms": {"p50": p50, "p99": p99, "max": max, "samples": samples.len()},
    });
    println!("{json}");
    Ok(())
}

async fn coordinator(args: Args) -> anyhow::Result<()> {
    let db_url = args
        .database_url
        .clone()
        .ok_or_else(|| anyhow::anyhow!("--database-url (or DATABASE_URL) is required"))?;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .after_connect(|conn, _| {
            Box::pin(async move {
                // The host's write cost is not what we measure; don't wait for fsync.
                sqlx::query("SET synchronous_commit = off")
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .connect(&db_url)
        .await?;
    if let Some(n) = args.notify_flood {
        return notify_flood(&args, &pool, n).await;
    }
    let options: sqlx::postgres::PgConnectOptions = db_url.parse()?;
    let datname = options.get_database().unwrap_or("postgres").to_string();
    let stats = Stats {
        pool: PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.database("postgres"))
            .await?,
        datname,
    };
    let secret = args
        .jwt_secret
        .clone()
        .ok_or_else(|| anyhow::anyhow!("--jwt-secret (or RUNWIRE_JWT_SECRET) is required"))?;
    let server_pid = args.server_pid.or_else(find_server_pid);
    let rest = args
        .url
        .trim_end_matches('/')
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("http:// URLs only"))?;
    let addr: SocketAddr = tokio::net::lookup_host(rest)
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("cannot resolve {rest}"))?;

    // Fixtures.
    let tag = format!("loadgen-{}-{}", std::process::id(), now_us());
    // One user per 32 clients, like many people each with a few tabs (and under the per-user cap).
    let n_users = args.streams.div_ceil(32).max(1) as i64;
    let users: Vec<i64> = sqlx::query_scalar("INSERT INTO users (email) SELECT $1 || '-' || g FROM generate_series(1, $2) g RETURNING id")
        .bind(&tag)
        .bind(n_users)
        .fetch_all(&pool)
        .await?;
    let runs = if args.hold {
        existing_runs(&pool, args.runs, &users).await?
    } else {
        new_runs(&pool, args.runs, &users, &tag).await?
    };
    let rss_before = server_pid.map(rss_kb).unwrap_or(0);

    // Workers: each takes a slice of the streams and a source address of its own.
    let assignments: Vec<(i64, i64)> = (0..args.streams)
        .map(|i| (runs[i % runs.len()], users[i / 32]))
        .collect();
    let mut workers = Vec::new();
    let exe = std::env::current_exe()?;
    let tmp = std::env::temp_dir();
    // (--hold counts nothing: no need to wait for the counters to settle.)
    let xacts_before_open = if args.hold { 0 } else { stats.settled().await? };
    for (w, chunk) in assignments.chunks(args.per_worker.max(1)).enumerate() {
        let plan = WorkerPlan {
            addr,
            host: rest.to_string(),
            secret: secret.clone(),
            source: format!("127.0.0.{}", 2 + (w % 8)).parse()?,
            streams: chunk.to_vec(),
            poll: args.poll,
            concurrency: args.connect_concurrency,
            samples_path: tmp.join(format!("{tag}-{w}.samples")).display().to_string(),
        };
        let mut child = tokio::process::Command::new(&exe)
            .args(["--worker", "1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut stdin = child.stdin.take().expect("piped");
        stdin
            .write_all(format!("{}\n", serde_json::to_string(&plan)?).as_bytes())
            .await?;
        let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        workers.push(Worker {
            child,
            stdin,
            lines,
            samples_path: plan.samples_path,
        });
    }
    let open_started = Instant::now();
    let mut opened = 0;
    let mut failed = 0;
    for w in workers.iter_mut() {
        let r = w.expect("READY ").await?;
        opened += r.opened;
        failed += r.failed;
    }
    let connect_secs = open_started.elapsed().as_secs_f64();
    let mode = if args.poll.is_some() {
        "poll"
    } else {
        "stream"
    };
    println!("{mode}: {opened} of {} clients connected in {connect_secs:.2} s ({:.0}/s), {failed} failed", args.streams, opened as f64 / connect_secs);
    if args.hold {
        return hold(workers, opened, failed).await;
    }

    // Memory and idle cost.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_open = server_pid.map(rss_kb).unwrap_or(0);
    let x_open = stats.settled().await?;
    let idle_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let x_idle = stats.settled().await?;
    let idle_secs = idle_started.elapsed().as_secs_f64();
    let idle_server_xacts = x_idle - x_open;
    let open_xacts = x_open - xacts_before_open;

    // Updates at the set rate, round-robin over the runs; each stamps its send time.
    let metrics_url = format!("http://{rest}/metrics");
    let rereads_before = metric(&metrics_url, "runwire_reread_batch_size_count").await;
    let ticks_before = server_pid.map(cpu_ticks).unwrap_or(0);
    let client_ticks_before: u64 = workers
        .iter()
        .filter_map(|w| w.child.id())
        .map(cpu_ticks)
        .sum();
    eprintln!("loadgen: update phase");
    let x_before = stats.xacts().await?;
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let mut next = tokio::time::Instant::now();
    let mut in_flight = tokio::task::JoinSet::new();
    for i in 0..args.updates {
        next += interval;
        tokio::time::sleep_until(next).await;
        let (pool, run) = (pool.clone(), runs[i % runs.len()]);
        in_flight.spawn(async move {
            sqlx::query("UPDATE operation_runs SET summary_counts = jsonb_build_object('sent_us', $2::bigint, 'seq', $3::bigint), updated_at = now() WHERE id = $1")
                .bind(run)
                .bind(now_us())
                .bind(i as i64)
                .execute(&pool)
                .await
        });
        while in_flight.len() > 64 {
            in_flight.join_next().await;
        }
    }
    while in_flight.join_next().await.is_some() {}
    let update_secs = started.elapsed().as_secs_f64();
    // One final stamp per run: a stream that sees it missed no final state.
    sqlx::query("UPDATE operation_runs SET summary_counts = jsonb_build_object('sent_us', $2::bigint, 'seq', $3::bigint) WHERE id = ANY($1)")
        .bind(&runs)
        .bind(now_us())
        .bind(FINAL_SEQ)
        .execute(&pool)
        .await?;
    let deadline = Instant::now()
        + Duration::from_secs(if args.poll.is_some() {
            args.poll.unwrap_or(0.0) as u64 * 2 + 10
        } else {
            30
        });
    let mut reports;
    loop {
        reports = Vec::new();
        for w in workers.iter_mut() {
            reports.push(w.report().await?);
        }
        let seen: usize = reports.iter().map(|r| r.final_seen).sum();
        if seen >= opened || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let active_secs = started.elapsed().as_secs_f64();
    let ticks_after = server_pid.map(cpu_ticks).unwrap_or(0);
    let client_ticks: u64 = workers
        .iter()
        .filter_map(|w| w.child.id())
        .map(cpu_ticks)
        .sum::<u64>()
        - client_ticks_before;
    let client_cores = client_ticks as f64 / 100.0 / active_secs;
    let rereads = metric(&metrics_url, "runwire_reread_batch_size_count").await - rereads_before;
    let cpu_cores = (ticks_after - ticks_before) as f64 / 100.0 / active_secs;
    let x_after = stats.settled().await?;
    // Our own transactions in that window: the updates and the final stamp.
    let server_xacts = x_after - x_before - args.updates as i64 - 1;
    let final_seen: usize = reports.iter().map(|r| r.final_seen).sum();
    let events: u64 = reports.iter().map(|r| r.events).sum();
    let polls: u64 = reports.iter().map(|r| r.polls).sum();
    let rss_end = server_pid.map(rss_kb).unwrap_or(0);

    let samples = stop_workers(&mut workers).await;
    let mut per_run = vec![0u64; runs.len()];
    for i in 0..args.streams {
        per_run[i % runs.len()] += 1;
    }
    // Every update reaches the streams of its run; the final stamp reaches every stream.
    let expected_events: u64 = if args.poll.is_some() {
        0
    } else {
        (0..args.updates)
            .map(|i| per_run[i % runs.len()])
            .sum::<u64>()
            + args.streams as u64
    };
    let per_stream_kb = (rss_open as f64 - rss_before as f64) / opened.max(1) as f64;
    let (p50, p99, max) = latency_ms(&samples);

    println!("  server RSS: {rss_before} kB before, {rss_open} kB with clients open → {per_stream_kb:.2} kB per {mode} client ({rss_end} kB at the end)");
    println!("  idle: {idle_server_xacts} server transactions in {idle_secs:.1} s; opening cost {open_xacts} transactions for {opened} clients ({:.2} each)", open_xacts as f64 / opened.max(1) as f64);
    println!(
        "  updates: {} in {update_secs:.2} s ({:.0}/s)",
        args.updates,
        args.updates as f64 / update_secs
    );
    if args.poll.is_some() {
        println!("  polls: {polls} ({:.0}/s); staleness of first sight: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms", polls as f64 / active_secs);
    } else {
        println!("  events: {events} delivered of {expected_events} sent (fewer when a burst of one run's updates is coalesced); final state seen by {final_seen} of {opened} streams");
        println!("  commit→receipt latency: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms ({} samples)", samples.len());
    }
    println!(
        "  server CPU: {cpu_cores:.2} cores (load generator workers: {client_cores:.2}); re-read queries: {rereads:.0} ({:.3} per update)",
        rereads / args.updates.max(1) as f64
    );
    println!(
        "  database transactions in the service's database besides ours: {server_xacts} ({:.3} per update; see BENCHMARKS.md on NOTIFY accounting)",
        server_xacts as f64 / args.updates.max(1) as f64
    );
    let json = serde_json::json!({
        "mode": mode, "streams": args.streams, "runs": args.runs, "updates": args.updates, "rate": args.rate,
        "opened": opened, "failed": failed, "connect_secs": connect_secs, "connects_per_sec": opened as f64 / connect_secs,
        "rss_kb_before": rss_before, "rss_kb_open": rss_open, "rss_kb_end": rss_end, "kb_per_stream": per_stream_kb,
        "idle_secs": idle_secs, "idle_server_xacts": idle_server_xacts, "open_xacts": open_xacts,
        "events": events, "expected_events": expected_events, "final_seen": final_seen, "polls": polls,
        "latency_ms": {"p50": p50, "p99": p99, "max": max, "samples": samples.len()},
        "server_cpu_cores": cpu_cores, "client_cpu_cores": client_cores, "reread_queries": rereads, "queries_per_update": rereads / args.updates.max(1) as f64, "server_xacts": server_xacts, "xacts_per_update": server_xacts as f64 / args.updates.max(1) as f64,
    });
    println!("{json}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_across_any_split() {
        let wire = b"7\r\nevent: \r\n5;x=1\r\nhello\r\n0\r\n\r\n";
        for cut in 0..wire.len() {
            let (mut d, mut out) = (Dechunker::default(), Vec::new());
            let more = d.feed(&wire[..cut], &mut out) && d.feed(&wire[cut..], &mut out);
            assert!(!more, "cut at {cut}");
            assert_eq!(out, b"event: hello", "cut at {cut}");
        }
    }

    #[test]
    fn reads_the_stamp() {
        let data = br#"{"summary_counts":{"seq": 12, "sent_us":1700000000000000}}"#;
        assert_eq!(stamp(data), Some((1_700_000_000_000_000, 12)));
        assert_eq!(stamp(br#"{"summary_counts":{}}"#), None);
    }
}
