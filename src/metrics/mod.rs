//! Prometheus metrics. Counters are atomics bumped on the hot path; everything derived (pool
//! usage, the process's own figures in [`process`]) is read at scrape time. The operations
//! metrics — what the watched tables say about the host's work — are [`crate::ops`]'s,
//! registered here and fed by the change source.

mod process;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

use crate::ops::Operations;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum StreamKind {
    run,
    review_pack,
    multi,
    workspace,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum CloseReason {
    terminal,
    forbidden,
    token_expired,
    lifetime,
    shutdown,
    client_gone,
    unavailable,
    gone,
    unreadable,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum SourceKind {
    wal,
    notify,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SourceLabel {
    pub source: SourceKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    pub kind: StreamKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub reason: CloseReason,
}

pub(crate) struct Metrics {
    registry: Registry,
    pub streams_open: Family<KindLabel, Gauge>,
    pub streams_opened: Family<KindLabel, Counter>,
    pub streams_closed: Family<ReasonLabel, Counter>,
    pub streams_rejected: Counter,
    pub events_sent: Counter,
    pub direct_handovers: Counter,
    pub notifications: Counter,
    pub notifications_ignored: Counter,
    pub listener_reconnects: Counter,
    pub reread_batch_size: Histogram,
    pub reread_seconds: Histogram,
    pub commit_to_publish_seconds: Histogram,
    pub db_pool_connections: Gauge,
    pub db_pool_idle: Gauge,
    pub connections_open: Gauge,
    pub connections_refused: Counter,
    pub connections_evicted: Counter,
    pub connections_auth_timeouts: Counter,
    /// Runs and packs of the host, by type and status (see `ops`).
    pub ops: Operations,
    pub change_source: Family<SourceLabel, Gauge>,
    pub change_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub change_lag_bytes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(false)
    }
}

impl Metrics {
    /// `workspace_label`: label the operations metrics by workspace
    /// (`--metrics-workspace-label`; one series per workspace and type).
    pub(crate) fn new(workspace_label: bool) -> Self {
        // Process metrics keep their conventional unprefixed names; everything else is
        // runwire's own.
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("runwire");
        let ops = Operations::new(registry, workspace_label);
        let m = Metrics {
            streams_open: Family::default(),
            streams_opened: Family::default(),
            streams_closed: Family::default(),
            streams_rejected: Counter::default(),
            events_sent: Counter::default(),
            direct_handovers: Counter::default(),
            notifications: Counter::default(),
            notifications_ignored: Counter::default(),
            listener_reconnects: Counter::default(),
            reread_batch_size: Histogram::new(exponential_buckets(1.0, 4.0, 8)),
            reread_seconds: Histogram::new(exponential_buckets(0.0001, 3.0, 12)),
            commit_to_publish_seconds: Histogram::new(exponential_buckets(0.0005, 2.5, 12)),
            db_pool_connections: Gauge::default(),
            db_pool_idle: Gauge::default(),
            connections_open: Gauge::default(),
            connections_refused: Counter::default(),
            connections_evicted: Counter::default(),
            connections_auth_timeouts: Counter::default(),
            ops,
            change_source: Family::default(),
            change_lag_seconds: Gauge::default(),
            change_lag_bytes: Gauge::default(),
            registry: Registry::default(),
        };
        let r = registry;
        r.register("streams_open", "Open SSE streams", m.streams_open.clone());
        r.register(
            "streams_opened",
            "SSE streams opened",
            m.streams_opened.clone(),
        );
        r.register(
            "streams_closed",
            "SSE streams closed, by reason",
            m.streams_closed.clone(),
        );
        r.register(
            "streams_rejected",
            "Streams refused by a stream limit",
            m.streams_rejected.clone(),
        );
        r.register(
            "events_sent",
            "SSE events written to clients",
            m.events_sent.clone(),
        );
        r.register(
            "direct_handovers",
            "Updates that direct delivery left to the stream's own task (a client not reading fast enough, a terminal state, a busy stream)",
            m.direct_handovers.clone(),
        );
        r.register(
            "notifications",
            "NOTIFY messages received",
            m.notifications.clone(),
        );
        r.register(
            "notifications_ignored",
            "NOTIFY messages whose payload was not understood",
            m.notifications_ignored.clone(),
        );
        r.register(
            "listener_reconnects",
            "Listener reconnections",
            m.listener_reconnects.clone(),
        );
        r.register(
            "reread_batch_size",
            "Items per re-read query",
            m.reread_batch_size.clone(),
        );
        r.register(
            "reread_seconds",
            "Duration of re-read queries",
            m.reread_seconds.clone(),
        );
        r.register(
            "commit_to_publish_seconds",
            "From the row's updated_at to the state reaching its subscribers",
            m.commit_to_publish_seconds.clone(),
        );
        r.register(
            "db_pool_connections",
            "Query pool connections",
            m.db_pool_connections.clone(),
        );
        r.register(
            "db_pool_idle",
            "Idle query pool connections",
            m.db_pool_idle.clone(),
        );
        r.register(
            "connections_open",
            "Open client connections, streams included",
            m.connections_open.clone(),
        );
        r.register(
            "connections_refused",
            "Connections closed at once because --max-connections were open",
            m.connections_refused.clone(),
        );
        r.register(
            "connections_evicted",
            "Unauthenticated connections closed at the connection cap to admit a new one",
            m.connections_evicted.clone(),
        );
        r.register(
            "connections_auth_timeouts",
            "Connections closed because no request on them was authenticated within --auth-timeout-secs",
            m.connections_auth_timeouts.clone(),
        );
        r.register(
            "change_source",
            "The change source in use: 1 for wal (logical replication) or notify",
            m.change_source.clone(),
        );
        r.register(
            "change_lag_seconds",
            "From the last applied transaction's commit to runwire applying it (wal)",
            m.change_lag_seconds.clone(),
        );
        r.register(
            "change_lag_bytes",
            "WAL the server has sent beyond what runwire applied (wal)",
            m.change_lag_bytes.clone(),
        );
        // Create every labelled series up front so dashboards see zeros, not gaps.
        for kind in [
            StreamKind::run,
            StreamKind::review_pack,
            StreamKind::multi,
            StreamKind::workspace,
        ] {
            let _ = m.streams_open.get_or_create(&KindLabel { kind });
            let _ = m.streams_opened.get_or_create(&KindLabel { kind });
        }
        for reason in [
            CloseReason::terminal,
            CloseReason::forbidden,
            CloseReason::token_expired,
            CloseReason::lifetime,
            CloseReason::shutdown,
            CloseReason::client_gone,
            CloseReason::unavailable,
            CloseReason::gone,
            CloseReason::unreadable,
        ] {
            let _ = m.streams_closed.get_or_create(&ReasonLabel { reason });
        }
        let build_info = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
        build_info
            .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        r.register(
            "build_info",
            "Always 1; the version of runwire running",
            build_info,
        );
        Metrics {
            registry: root,
            ..m
        }
    }

    pub(crate) fn observe_reread(&self, items: usize, took: Duration) {
        self.reread_batch_size.observe(items as f64);
        self.reread_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn observe_commit_lag(&self, updated_at: Option<DateTime<Utc>>) {
        if let Some(t) = updated_at {
            let lag = (Utc::now() - t).num_microseconds().unwrap_or(i64::MAX);
            // Host clocks and `updated_at` values set by hand can lie; only record sane lags.
            if (0..3_600_000_000).contains(&lag) {
                self.commit_to_publish_seconds.observe(lag as f64 / 1e6);
            }
        }
    }

    /// The change source's state, read at scrape time.
    pub(crate) fn observe_source(&self, status: &crate::watch::SourceStatus) {
        let active = status.source();
        for (kind, source) in [
            (SourceKind::wal, crate::model::ChangeSource::Wal),
            (SourceKind::notify, crate::model::ChangeSource::Notify),
        ] {
            let on = i64::from(active == Some(source));
            self.change_source
                .get_or_create(&SourceLabel { source: kind })
                .set(on);
        }
        let (seconds, bytes) = status.lag();
        self.change_lag_seconds.set(seconds);
        self.change_lag_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The exposition in OpenMetrics text, what Prometheus asks for.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The exposition in Prometheus's classic text format (0.0.4), for clients that do not
    /// ask for OpenMetrics: `promtool check metrics`, older scrapers, people with curl.
    pub(crate) fn encode_classic(&self) -> String {
        classic_text(&self.encode())
    }
}

/// OpenMetrics text → the classic text format. The samples are the same; the metadata
/// differs: a counter's family is named without `_total` in OpenMetrics and with it in the
/// classic format (whose parsers otherwise find no help or type for the samples), and there
/// is no `# UNIT` or `# EOF`. prometheus-client writes only OpenMetrics.
fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{suffix} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}
