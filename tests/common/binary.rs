//! The built `runwire` binary run as a subprocess, its JSON log collected line by line (for
//! start-up, configuration and crash tests).

use super::{SECRET, WAIT};
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// `runwire` run as a subprocess, its JSON log collected line by line.
pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

pub fn runwire(args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runwire"));
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("RUNWIRE_JWT_SECRET")
        .env("RUST_LOG", "info")
        .env("RUNWIRE_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("runwire binary");
    let lines = Arc::new(Mutex::new(Vec::new()));
    for out in [
        Box::new(child.stderr.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(child.stdout.take().unwrap()),
    ] {
        let lines = Arc::clone(&lines);
        tokio::spawn(async move {
            let mut reader = BufReader::new(out).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                lines.lock().unwrap().push(line);
            }
        });
    }
    Proc { child, lines }
}

impl Proc {
    /// Waits for a log line containing `needle`; returns it.
    pub async fn line(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no line with {needle:?} in {:#?}",
                self.lines.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits for the process to exit; returns whether it succeeded and its output.
    pub async fn exit(mut self) -> (bool, String) {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("exited in time")
            .unwrap();
        // Let the readers drain the pipes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        (status.success(), self.lines.lock().unwrap().join("\n"))
    }

    /// The address from the "runwire listening" line.
    pub async fn addr(&self) -> SocketAddr {
        let line = self.line("runwire listening").await;
        let v: Value = serde_json::from_str(&line).unwrap();
        v["fields"]["addr"].as_str().unwrap().parse().unwrap()
    }
}

pub fn strong_secret() -> (&'static str, &'static str) {
    ("RUNWIRE_JWT_SECRET", SECRET)
}
