//! Logging, set up once. `RUST_LOG` filters (default `info`); `--log-format json` for log
//! pipelines. Nothing logs a token: spans carry user ids and topics, never credentials.
//!
//! Logs go to stderr, so stdout stays for what a command prints (a token, the demo's URL);
//! colour codes only when stderr is a terminal, not into a file, a pipe or journald.

use crate::config::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

pub(crate) fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx::postgres::notice=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
